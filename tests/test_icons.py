"""The icons stage on a small toy study: an icon for every cell with enough samples, whitening from
merged chunk moments, rerun skipped, and the icon atlas in the report."""

import numpy as np
import pytest
import torch
import zarr

from conftest import toy_study
from ganscale import icons
from ganscale.fv.objectives import whitening
from ganscale.pipeline import run_study
from ganscale.study import load_study


@pytest.fixture(scope="module")
def iconed(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("icons")
    path = toy_study(tmp, layers=["block3"], sample={"chunk_size": 100, "batch_size": 50},
                     datasets={"real": {"kind": "toyworld", "samples": 300},
                               "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                                        "samples": 300}},
                     embed={"layers": {"block3": {"n_neighbors": 15}}},
                     atlas={"grids": [6], "icons": {"min_count": 15, "size": 32, "steps": 24, "batch": 8}},
                     metrics={"enabled": False})
    study = load_study(path)
    results = run_study(study, stages=["sample", "embed", "atlas", "icons", "report"])
    return study, results, tmp


def test_every_cell_with_enough_samples_has_an_icon(iconed):
    study, results, _ = iconed
    assert results["icons"]["computed"] == ["block3"]
    group = zarr.open_group(study.store, mode="r")["atlas/block3/g6"]
    counts = group["counts"][:].sum(0)
    stored, values = group["icons"][:], group["icon_objective"][:]
    assert stored.shape == (6, 6, 32, 32, 3) and stored.dtype == np.uint8
    has = counts >= 15
    assert has.sum() >= 4
    assert np.isfinite(values[has]).all() and np.isnan(values[~has]).all()
    assert (stored[has].reshape(has.sum(), -1).std(1) > 1).all() and (stored[~has] == 0).all()


def test_whitening_comes_from_merged_chunk_moments(iconed):
    study, _, _ = iconed
    root = zarr.open_group(study.store, mode="r")
    acts = np.concatenate([root[f"datasets/{n}/layers/block3/activations"][:] for n in ("real", "full")]).astype(float)
    merged = icons.second_moment(study, root, "block3")
    np.testing.assert_allclose(merged, acts.T @ acts / len(acts), rtol=1e-9)
    w = whitening(torch.as_tensor(merged)).numpy()
    assert np.allclose(w @ (merged + 1e-4 * np.trace(merged) / 128 * np.eye(128)), np.eye(128), atol=1e-6)


def test_a_rerun_skips_and_the_report_shows_the_icon_atlas(iconed):
    study, _, tmp = iconed
    assert icons.run(study)["computed"] == []
    html = (tmp / "report" / "index.html").read_text()
    assert "icons/block3_g6_real_vs_full.png" in html
    assert (tmp / "report" / "icons" / "block3_g6_real_vs_full.png").stat().st_size > 10000
