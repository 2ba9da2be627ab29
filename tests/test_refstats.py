"""FID reference statistics (.npz with mu, sigma): our files are pytorch-fid's format both ways, bad
files give one-line errors, and a study measures its datasets against named statistics files.

pytorch-fid's fid_score.py imports torchvision at module level, which does not install beside this
project's torch (nor does clean-fid's, whose cleanfid.utils imports it too), so the module is never
imported: its real source is fetched from the pytorch-fid 0.3.0 wheel on the package registry (a
`pypi:` file, sha256-pinned; skipped when the registry is unreachable) and only the functions that
read, write and compare statistics are compiled from it with ast. Its InceptionV3 and
get_activations are replaced by stubs, so `save_fid_stats` runs its own code on features given here.
"""

from __future__ import annotations

import ast
import os
import pathlib
import pickle

import numpy as np
import pytest
import zarr

from ganscale.errors import GanscaleError
from ganscale.metrics import features as fm
from ganscale.metrics.refstats import read_stats, write_stats

FID_SCORE = "pypi:pytorch-fid==0.3.0/pytorch_fid/fid_score.py"
FID_SCORE_SHA256 = "4efb9a4fc112989f3f1849e84d52c21f35458ae47aad756b340a651c74cd6e68"
PYTORCH_FID_NAMES = ("IMAGE_EXTENSIONS", "calculate_frechet_distance", "calculate_activation_statistics",
                     "compute_statistics_of_path", "save_fid_stats")


@pytest.fixture(scope="module")
def pytorch_fid():
    """pytorch-fid 0.3.0's statistics functions, compiled from the wheel's fid_score.py (not imported)."""
    from scipy import linalg

    from ganscale import assets, weights

    try:
        path = weights.resolve(FID_SCORE, FID_SCORE_SHA256, field="test")
    except assets.RegistryUnreachable as e:
        pytest.skip(f"package registry unreachable: {e}")
    tree = ast.parse(path.read_text())
    body = [node for node in tree.body
            if (isinstance(node, ast.FunctionDef) and node.name in PYTORCH_FID_NAMES)
            or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) in PYTORCH_FID_NAMES for t in node.targets))]
    assert len(body) == len(PYTORCH_FID_NAMES)

    class InceptionV3:  # the model is never run: get_activations below hands out the features
        BLOCK_INDEX_BY_DIM = {64: 0, 192: 1, 768: 2, 2048: 3}

        def __init__(self, blocks):
            pass

        def to(self, device):
            return self

    features = {}
    namespace = {"np": np, "linalg": linalg, "os": os, "pathlib": pathlib, "InceptionV3": InceptionV3,
                 "get_activations": lambda files, *args, **kwargs: features["rows"]}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
    namespace["features"] = features
    return namespace


def _features(n: int = 300, d: int = 2048, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 16)) @ rng.normal(size=(16, d)) + rng.normal(size=(n, d)) * 0.3
            + rng.normal(size=d)).astype(np.float32)


def _stats(feats):
    m = fm.FeatureMoments.of(feats)
    return m.mean, m.cov


def test_round_trip(tmp_path):
    mu, sigma = _stats(_features())
    path = write_stats(tmp_path / "stats", mu, sigma)  # the name is kept: no .npz appended
    assert path == tmp_path / "stats" and path.exists()
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["mu", "sigma"] and f["mu"].dtype == f["sigma"].dtype == np.float64
    got_mu, got_sigma = read_stats(path, dims=2048)
    assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma)


def test_our_file_is_read_by_pytorch_fid_and_its_file_by_us(pytorch_fid, tmp_path):
    a, b = _features(seed=1), _features(seed=2)
    ours = write_stats(tmp_path / "ours.npz", *_stats(a))
    # pytorch-fid's own loading (compute_statistics_of_path reads an .npz path without the model)
    mu, sigma = pytorch_fid["compute_statistics_of_path"](str(ours), None, 50, 2048, "cpu")
    assert np.array_equal(mu, _stats(a)[0]) and np.array_equal(sigma, _stats(a)[1])

    # pytorch-fid's save_fid_stats (`python -m pytorch_fid --save-stats images out.npz`) on features b
    images = tmp_path / "images"
    images.mkdir()
    (images / "0.png").write_bytes(b"")
    pytorch_fid["features"]["rows"] = b
    theirs = tmp_path / "theirs.npz"
    pytorch_fid["save_fid_stats"]([str(images), str(theirs)], 50, "cpu", 2048)
    mu_b, sigma_b = read_stats(theirs, dims=2048)
    np.testing.assert_allclose(mu_b, _stats(b)[0], rtol=1e-6, atol=1e-6)  # float32 mean there, float64 here
    np.testing.assert_allclose(sigma_b, _stats(b)[1], rtol=1e-6, atol=1e-6)

    # the distance between the two files' statistics: pytorch-fid's (scipy sqrtm) equals ours (eigenvalues),
    # on their first 256 dimensions (sqrtm of a 2048 x 2048 product takes a minute on two cores)
    mu_a, sigma_a = read_stats(ours)
    k = slice(0, 256)
    theirs_fid = pytorch_fid["calculate_frechet_distance"](mu[k], sigma[k, k], mu_b[k], sigma_b[k, k])
    assert fm.frechet_distance_from_stats(mu_a[k], sigma_a[k, k], mu_b[k], sigma_b[k, k]) == \
        pytest.approx(theirs_fid, rel=1e-6)


def _one_line_error(path, match, **kwargs):
    with pytest.raises(GanscaleError, match=match) as e:
        read_stats(path, field="metrics.reference_stats.x.path", **kwargs)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"metrics.reference_stats.x.path: {path}: ")
    return text


def _npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


class _Marker:
    """Unpickling this creates the marker file: it must never happen."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_bad_files_give_one_line_errors(tmp_path):
    d = 8
    mu, sigma = np.zeros(d), np.eye(d)
    _one_line_error(_npz(tmp_path / "a.npz", mu=mu), "no array 'sigma' \\(has: mu\\)")
    _one_line_error(_npz(tmp_path / "b.npz", m=mu, s=sigma), "no array 'mu'")
    _one_line_error(_npz(tmp_path / "c.npz", mu=mu[None], sigma=sigma), "mu has shape \\[1, 8\\], expected \\[D\\]")
    _one_line_error(_npz(tmp_path / "d.npz", mu=mu, sigma=sigma[:, :7]), "sigma has shape \\[8, 7\\], expected \\[8, 8\\]")
    _one_line_error(_npz(tmp_path / "e.npz", mu=mu, sigma=sigma), "statistics of 8-d features, but the FID "
                    "features are 2048-d", dims=2048)
    _one_line_error(_npz(tmp_path / "f.npz", mu=mu + np.nan, sigma=sigma), "mu has non-finite values")
    _one_line_error(_npz(tmp_path / "g.npz", mu=mu, sigma=sigma + np.triu(np.ones((d, d)), 1)), "not symmetric")
    _one_line_error(_npz(tmp_path / "h.npz", mu=mu.astype(str), sigma=sigma), "mu has dtype <U32, not numbers")
    marker = tmp_path / "unpickled"
    objects = np.array([_Marker(marker)] * d, dtype=object)
    _one_line_error(_npz(tmp_path / "i.npz", mu=objects, sigma=sigma), "holds pickled objects, which are never loaded")
    (tmp_path / "j.npz").write_bytes(pickle.dumps({"mu": _Marker(marker), "sigma": sigma}))
    _one_line_error(tmp_path / "j.npz", "holds pickled objects, which are never loaded")
    assert not marker.exists()
    np.save(tmp_path / "k.npy", sigma)
    _one_line_error(tmp_path / "k.npy", "not an .npz file of FID statistics")
    (tmp_path / "l.npz").write_bytes(b"PK\x03\x04 not really a zip")
    _one_line_error(tmp_path / "l.npz", "not a readable .npz file")
    _one_line_error(tmp_path / "missing.npz", "file not found")


def _study(tmp_path, metrics, **overrides):
    from conftest import toy_study
    from ganscale.study import load_study

    return load_study(toy_study(tmp_path, layers=["block3"], metrics=metrics, **overrides))


def test_the_study_checks_reference_stats(tmp_path):
    stats = write_stats(tmp_path / "ref.npz", np.zeros(4), np.eye(4))
    with pytest.raises(GanscaleError, match="metrics.reference_stats.ref: .*set metrics.fid_inception"):
        _study(tmp_path, {"reference_stats": {"ref": {"path": str(stats)}}})
    fid = {"weights": str(stats)}  # any existing file: nothing is loaded at study load
    with pytest.raises(GanscaleError, match="metrics.reference_stats.real: 'real' is also a dataset name"):
        _study(tmp_path, {"fid_inception": fid, "reference_stats": {"real": {"path": str(stats)}}})
    with pytest.raises(GanscaleError, match="metrics.reference_stats.ref.path: file not found"):
        _study(tmp_path, {"fid_inception": fid, "reference_stats": {"ref": {"path": "nope.npz"}}})
    study = _study(tmp_path, {"fid_inception": fid, "reference_stats": {"ref": {"path": "ref.npz"}}})
    assert study.metrics.reference_stats["ref"].path == str(stats)  # relative to the study file

    from ganscale.metrics.stage import comparisons, reference_stats_rows

    with pytest.raises(GanscaleError, match="^metrics.reference_stats.ref.path: .*ref.npz: statistics of 4-d "
                                            "features, but the FID features are 2048-d$"):
        reference_stats_rows(study, comparisons(study), {"full": (np.zeros(2048), np.eye(2048))}, {}, None)
    bad_pin = _study(tmp_path, {"fid_inception": fid,
                                "reference_stats": {"ref": {"path": str(stats), "sha256": "0" * 64}}})
    with pytest.raises(GanscaleError, match="metrics.reference_stats.ref.path: sha256 mismatch"):
        reference_stats_rows(bad_pin, comparisons(bad_pin), {"full": (np.zeros(4), np.eye(4))}, {}, None)


def test_a_study_is_measured_against_reference_stats_and_the_report_writes_its_own(ray_local, tmp_path):
    """Sample and metrics on a small toy study with FID Inception weights made here: the FID to a
    statistics file equals the distance computed here, the stage stores each dataset's mu and sigma,
    and the report section writes them as fid_stats/{dataset}.npz next to a FID table that states the
    network's resize."""
    import torch

    from ganscale.metrics.figures import fid_stats_files, uncertainty_html
    from ganscale.models.fid_inception import FIDInception, RESIZE_NOTE
    from ganscale.pipeline import run_study
    from ganscale.weights import sha256_of

    torch.manual_seed(0)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(FIDInception().eval().state_dict(), weights)
    ref_mu, ref_sigma = _stats(_features(n=100, seed=3))
    ref = write_stats(tmp_path / "imagenet.npz", ref_mu, ref_sigma)
    study = _study(tmp_path, {"fid_inception": {"weights": str(weights), "sha256": sha256_of(weights)},
                              "reference_stats": {"imagenet": {"path": str(ref), "sha256": sha256_of(ref)}},
                              "c2st": None, "kid_subset_size": 16, "kid_subsets": 5, "msssim_pairs": 8,
                              "images_shown": 2},
                   sample={"chunk_size": 16, "batch_size": 8},
                   datasets={"real": {"kind": "toyworld", "samples": 32},
                             "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                                      "samples": 32}})
    run_study(study, stages=["sample", "metrics"])
    root = zarr.open_group(study.store, mode="r")
    results = root["metrics"].attrs["results"]
    rows = [r for r in results["frechet"] if "reference_stats" in r]
    assert [(r["features"], r["a"], r["b"], r["reference_stats"]) for r in rows] == [
        ("fid_pool3", "imagenet", "full", str(ref))]  # the non-reference dataset only
    full = root["datasets/full/features/fid_pool3"][:]
    assert rows[0]["value"] == pytest.approx(fm.frechet_distance_from_stats(ref_mu, ref_sigma, *_stats(full)),
                                             rel=1e-9)
    assert results["fid_resize"] == RESIZE_NOTE
    assert rows[0]["ci95"][0] < rows[0]["ci95"][1] and rows[0]["interval"] == "basic bootstrap"  # resampling the dataset only

    out = tmp_path / "report"
    out.mkdir()
    written = fid_stats_files(study, root["metrics"], out)
    assert written == {"fid_stats": {n: f"fid_stats/{n}.npz" for n in ("real", "full")}}
    for name in ("real", "full"):
        mu, sigma = read_stats(out / "fid_stats" / f"{name}.npz", dims=2048)
        want_mu, want_sigma = _stats(root[f"datasets/{name}/features/fid_pool3"][:])
        np.testing.assert_allclose(mu, want_mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sigma, want_sigma, rtol=1e-12, atol=1e-12)
    page = uncertainty_html({**results, **written})
    assert "FID network (fid_pool3) resize:" in page and "no antialiasing" in page
    assert "imagenet (statistics file)" in page and "fid_stats/full.npz" in page
