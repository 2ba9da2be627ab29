"""The icons stage on a small toy study (Ray actors on the session's local cluster): an icon for
every cell with enough samples and nothing elsewhere, whitening from merged chunk moments, reruns
skipped and changed settings re-rendered, icons that hit their cells' directions, bad grids
refused, and the icon atlases (alone, and beside/framed by the density comparison)."""

import shutil

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from conftest import toy_study
from ganscale.pipeline import STAGES, run_stage
from ganscale import icon_figures, ledger, icons
from ganscale.errors import GanscaleError
from ganscale.fv.objectives import whitening
from ganscale.fv.render import LayerTap
from ganscale.models import registry
from ganscale.pipeline import run_study
from ganscale.study import load_study

ICONS = {"grids": [4, 6], "min_count": 15, "size": 32, "steps": 24, "batch": 8}
DATASETS = {"real": {"kind": "toyworld", "samples": 300},
            "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 300}}


def _study(tmp, store=None, **icon_settings):
    return load_study(toy_study(tmp, store=store, layers=["block3"], sample={"chunk_size": 100, "batch_size": 50},
                                datasets=DATASETS, embed={"layers": {"block3": {"n_neighbors": 15}}},
                                atlas={"grids": [4, 6], "icons": {**ICONS, **icon_settings}},
                                metrics={"enabled": False}))


@pytest.fixture(scope="module")
def iconed(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("icons")
    study = _study(tmp)
    results = run_study(study, stages=["sample", "embed", "atlas", "icons", "report"])
    return study, results, tmp


def test_every_cell_with_enough_samples_has_an_icon(iconed):
    study, results, _ = iconed
    assert results["icons"]["done"] == ["block3"]
    group = zarr.open_group(study.store, mode="r")["atlas/block3/g6"]
    counts = group["counts"][:].sum(0)
    stored, values = group["icons"][:], group["icon_objective"][:]
    assert stored.shape == (6, 6, 32, 32, 3) and stored.dtype == np.uint8 and values.dtype == np.float32
    has = counts >= 15
    coarse = zarr.open_group(study.store, mode="r")["atlas/block3/g4"]
    assert 4 <= has.sum() < 36 and results["icons"]["icons"] == has.sum() + (coarse["counts"][:].sum(0) >= 15).sum()
    assert coarse["icons"].shape == (4, 4, 32, 32, 3)
    assert np.isfinite(values[has]).all() and np.isnan(values[~has]).all()
    assert (stored[has].reshape(has.sum(), -1).std(1) > 5).all() and (stored[~has] == 0).all()
    attrs = dict(group["icons"].attrs)
    assert {k: attrs[k] for k in ("steps", "tries", "size", "whiten", "cells")} == \
        {"steps": 24, "tries": 1, "size": 32, "whiten": True, "cells": int(has.sum())}
    root = zarr.open_group(study.store, mode="r")
    assert ledger.entry(root, "icons", "block3")["fingerprint"] == STAGES.fingerprint(study, root, "icons", "block3")


def test_whitening_comes_from_merged_chunk_moments(iconed):
    study, _, _ = iconed
    root = zarr.open_group(study.store, mode="r")
    acts = np.concatenate([root[f"datasets/{n}/layers/block3/activations"][:] for n in ("real", "full")]).astype(float)
    assert root["datasets/real/layers/block3/activations"].chunks[0] < 300  # several chunks per dataset
    merged = icons.second_moment(study, root, "block3")
    np.testing.assert_allclose(merged, acts.T @ acts / len(acts), rtol=1e-9)
    w = whitening(torch.as_tensor(merged)).numpy()
    assert np.allclose(w @ (merged + 1e-4 * np.trace(merged) / 128 * np.eye(128)), np.eye(128), atol=1e-6)


def test_a_rerun_skips_and_the_report_shows_the_icon_atlases(iconed):
    study, _, tmp = iconed
    assert run_stage(study, "icons")["done"] == []
    html = (tmp / "report" / "index.html").read_text()
    assert "icons/block3_g6.png" in html and "icons/block3_g6_real_vs_full.png" in html
    assert (tmp / "report" / "icons" / "block3_g6_real_vs_full.png").stat().st_size > 10000


def test_icon_atlas_figures(iconed, tmp_path):
    study, _, _ = iconed
    root = zarr.open_group(study.store, mode="r")
    figures = icon_figures.icon_atlas_figures(study, root, tmp_path)
    assert [(f.layer, f.grid, f.path.name) for f in figures] == [
        ("block3", 4, "block3_g4.png"), ("block3", 4, "block3_g4_real_vs_full.png"),
        ("block3", 6, "block3_g6.png"), ("block3", 6, "block3_g6_real_vs_full.png")]
    figures = figures[2:]
    group = root["atlas/block3/g6"]
    stored, counts = group["icons"][:], group["counts"][:]
    atlas = np.asarray(Image.open(figures[0].path).convert("RGB"))
    zoom = atlas.shape[0] // (6 * 32)
    assert atlas.shape == (6 * 32 * zoom, 6 * 32 * zoom, 3)
    for iy in range(6):
        for ix in range(6):  # row iy = 0 at the bottom; the icon itself, or white
            cell = atlas[(5 - iy) * 32 * zoom:(6 - iy) * 32 * zoom:zoom, ix * 32 * zoom:(ix + 1) * 32 * zoom:zoom]
            expected = stored[iy, ix] if stored[iy, ix].any() else np.full_like(cell, 255)
            np.testing.assert_array_equal(cell, expected)
    # the framed icons: a cell with icon where only `real` has samples gets a red frame, only `full` blue
    canvas = icon_figures.icon_canvas(stored, np.array([[[200, 0, 0]] * 6] * 6, dtype=np.uint8), width=3)
    has = stored.reshape(36, -1).max(1).reshape(6, 6) > 0
    iy, ix = np.argwhere(has)[0]
    top = canvas[(5 - iy) * 32, ix * 32:(ix + 1) * 32]
    assert (top == [200, 0, 0]).all()
    share = icon_figures._share(counts[0], counts[1])
    assert np.isnan(share[counts.sum(0) == 0]).all() and ((share >= 0) & (share <= 1))[counts.sum(0) > 0].all()
    assert [f.path.name for f in icon_figures.icon_atlas_figures(study, root, tmp_path / "other", pairs=[])] == \
        ["block3_g4.png", "block3_g6.png"]


def test_changed_settings_rerender_and_icons_hit_their_cells_direction(iconed, tmp_path):
    """Unwhitened icons with a few more steps: the probe's centre activation of each icon points
    along its own cell's mean activation (cosine), more than along the other cells' on average."""
    study, _, tmp = iconed
    shutil.copytree(study.store, tmp_path / "store.zarr")
    changed = _study(tmp_path, store=str(tmp_path / "store.zarr"), whiten=False, steps=48, cosine_power=2)
    assert run_stage(changed, "icons")["done"] == ["block3"]
    group = zarr.open_group(changed.store, mode="r")["atlas/block3/g6"]
    assert group["icons"].attrs["whiten"] is False and group["icons"].attrs["steps"] == 48
    has = group["counts"][:].sum(0) >= 15
    stored, means = group["icons"][:][has], group["mean"][:][has]
    probe = registry.build_probe(changed.probe)
    images = torch.as_tensor(stored).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        reached = LayerTap(probe.module, ["block3"])(images)["block3"][:, :, 2, 2].numpy()
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    cos = unit(reached) @ unit(means).T
    own = np.diag(cos)
    others = (cos.sum(1) - own) / (len(own) - 1)
    assert (own > 0.7).all() and (own > others).all()


def test_icon_grids_must_be_atlas_grids(iconed, tmp_path):
    study, _, _ = iconed
    wrong = _study(tmp_path, store=study.store, grids=[7])
    with pytest.raises(GanscaleError, match="atlas.icons.grids"):
        run_stage(wrong, "icons")


def test_grids_without_any_cell_above_min_count_get_empty_arrays(iconed, tmp_path):
    study, _, _ = iconed
    shutil.copytree(study.store, tmp_path / "store.zarr")
    empty = _study(tmp_path, store=str(tmp_path / "store.zarr"), min_count=100_000)
    assert run_stage(empty, "icons")["done"] == ["block3"]
    for grid in (4, 6):
        group = zarr.open_group(empty.store, mode="r")[f"atlas/block3/g{grid}"]
        assert not group["icons"][:].any() and np.isnan(group["icon_objective"][:]).all()
        assert group["icons"].attrs["cells"] == 0
    assert run_stage(empty, "icons")["done"] == []
