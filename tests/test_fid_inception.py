"""The FID Inception network: torchvision's Inception3 layout with pytorch-fid's FID patches, loaded
strictly from a file, s3:// and http:// with sha256 checks, and its pool3 features in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from conftest import toy_study
from ganscale.errors import GanscaleError
from ganscale.metrics import frechet_distance
from ganscale.models.fid_inception import FIDInception, load_fid_inception
from ganscale.weights import sha256_of
from test_inception_v1 import cache, http_root  # noqa: F401  (fixtures)

# From torchvision's documentation: inception_v3 has 27,161,264 parameters with its auxiliary head
# (InceptionAux(768, 1000): 98,560 + 2,459,136 + 769,000 = 3,326,696) and a 1000-class fc. The FID
# graph has no auxiliary head and a 1008-class fc (+8 x 2049).
EXPECTED_PARAMETERS = 27_161_264 - 3_326_696 + 8 * 2049
# A few keys and shapes of torchvision's Inception3 (as pytorch-fid builds it) that pin the layout.
KNOWN_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1), "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7), "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1), "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048), "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = FIDInception().eval()
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(model.state_dict(), path)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return {"model": model, "path": path, "sha256": sha256_of(path), "images": images,
            "features": model.features(images)}


def test_layout_matches_torchvisions_inception3_without_the_auxiliary_head():
    model = FIDInception()
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMETERS
    for key, shape in KNOWN_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    assert all(m.eps == 0.001 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_the_fid_patches_change_the_pooling():
    """Average pools leave the zero padding out (TensorFlow), and Mixed_7c pools with a max."""
    from ganscale.models import fid_inception

    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(fid_inception._avg_pool(x), x)  # with the padding counted the border would drop below 1
    assert FIDInception().Mixed_7c.max_pool and not FIDInception().Mixed_7b.max_pool


def test_pool3_features_of_any_input_size(saved):
    features = saved["features"]
    assert features.shape == (2, 2048) and (features >= 0).all()
    assert torch.equal(saved["model"].features(saved["images"]), features)
    big = saved["model"].features(torch.nn.functional.interpolate(saved["images"], size=(299, 299), mode="bilinear",
                                                                   align_corners=False))
    assert big.shape == (2, 2048)


def test_weights_round_trip_from_a_file_s3_and_http(saved, s3_endpoint, http_root, cache):  # noqa: F811
    import s3fs

    model = load_fid_inception(str(saved["path"]), saved["sha256"])
    assert torch.equal(model.features(saved["images"]), saved["features"])
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    s3fs.S3FileSystem(**options).put(str(saved["path"]), "ganscale-test/fid/pt_inception.pth")
    model = load_fid_inception("s3://ganscale-test/fid/pt_inception.pth", saved["sha256"], options)
    assert torch.equal(model.features(saved["images"]), saved["features"])
    root, url = http_root
    (root / "pt_inception.pth").write_bytes(saved["path"].read_bytes())
    model = load_fid_inception(f"{url}/pt_inception.pth", saved["sha256"])
    assert torch.equal(model.features(saved["images"]), saved["features"])
    with pytest.raises(GanscaleError, match="metrics.fid_inception.weights.*sha256"):
        load_fid_inception(f"{url}/pt_inception.pth", "0" * 64)


def test_weights_of_another_network_are_refused_in_one_line(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(GanscaleError) as info:
        load_fid_inception(str(path))
    assert "metrics.fid_inception.weights" in str(info.value) and "\n" not in str(info.value)


def test_the_pipeline_stores_pool3_features_and_reports_the_standard_fid(ray_local, saved, tmp_path):
    from ganscale.pipeline import run_study
    from ganscale.study import load_study

    path = toy_study(tmp_path, layers=["block3"], sample={"chunk_size": 16, "batch_size": 8},
                     datasets={"real": {"kind": "toyworld", "samples": 32},
                               "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                                        "samples": 32}},
                     metrics={"fid_inception": {"weights": str(saved["path"]), "sha256": saved["sha256"]},
                              "c2st": None, "kid_subset_size": 16, "kid_subsets": 5, "msssim_pairs": 8,
                              "images_shown": 2})
    study = load_study(path)
    run_study(study, stages=["sample", "metrics"])
    root = zarr.open_group(study.store, mode="r")
    real, full = (root[f"datasets/{n}/features/fid_pool3"][:] for n in ("real", "full"))
    assert real.shape == (32, 2048) and np.isfinite(real).all()
    images, _, _ = __import__("ganscale.sample", fromlist=["load_images"]).load_images(study, "real", np.arange(2))
    np.testing.assert_allclose(real[:2], saved["model"].features(images).numpy(), rtol=1e-4, atol=1e-5)
    fid = next(r["value"] for r in root["metrics"].attrs["results"]["frechet"]
               if r["features"] == "fid_pool3" and r["a"] == "real" and r["b"] == "full")
    assert fid == pytest.approx(frechet_distance(real, full), rel=1e-6)
