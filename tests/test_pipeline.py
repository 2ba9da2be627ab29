"""A toy study end to end: sample -> embed -> atlas -> report, and a rerun that redoes nothing."""

import json

import numpy as np
import pytest
import zarr

from ganscale.pipeline import STAGES, run_study, stage_status

pytestmark = pytest.mark.slow  # whole studies end to end


def test_every_stage_ran_and_wrote_the_store(toy_run):
    study, tmp, results = toy_run
    assert list(results) == ["sample", "embed", "atlas", "icons", "metrics", "dissect", "report"]
    assert "skipped" in results["icons"] and "skipped" in results["dissect"]  # not configured in this study
    root = zarr.open_group(study.store, mode="r")
    for layer in study.layers:
        for grid in (10, 20):
            group = root[f"atlas/{layer}/g{grid}"]
            assert group.attrs["datasets"] == ["real", "full", "no_tree"]
            counts = group["counts"][:]
            assert counts.shape == (3, grid, grid) and counts.sum(axis=(1, 2)).tolist() == [600, 600, 600]
            assert group["mean"].shape == (grid, grid, {"block2": 64, "block3": 128}[layer])
            kl = group["kl"][:]
            assert np.allclose(np.diag(kl), 0) and (kl + np.eye(3) > 0).all()
        umap = root[f"datasets/real/layers/{layer}/umap"][:]
        assert umap.shape == (600, 2) and 0 <= umap.min() and umap.max() <= 1


def test_the_generator_that_misses_a_class_is_further_from_the_real_scenes(toy_run):
    study, _, _ = toy_run
    kl = zarr.open_group(study.store, mode="r")["atlas/block3/g10/kl"][:]
    real, full, no_tree = 0, 1, 2
    assert kl[real, no_tree] > kl[real, full]


def test_report_and_summary(toy_run):
    study, tmp, _ = toy_run
    report = tmp / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["schema"] == "ganscale.summary/1" and summary["config_hash"] == study.config_hash()
    assert summary["datasets"]["no_tree"] == {"kind": "generator", "samples": 600, "reference": False,
                                               "image_size": [32, 32], "probe_input": 32}
    assert summary["datasets"]["real"]["reference"] is True
    assert len(summary["kl"]) == 2 * 2 * 6  # layers x grids x ordered pairs
    assert set(summary["stages"]) == {"sample", "embed", "atlas", "metrics", "report"}
    assert all(stage["seconds"] >= 0 for stage in summary["stages"].values())
    html = (report / "index.html").read_text()
    for picture in ("atlas/block3_real_vs_no_tree_g20.png", "kl/real_vs_no_tree.png",
                    "examples/block3_real_vs_no_tree.png"):
        assert picture in html and (report / picture).stat().st_size > 5000
    assert "href='viewer/index.html'" in html and (report / "viewer" / "index.html").is_file()
    assert any((report / "viewer" / "data").glob("*_g20.js"))
    assert "<a href='atlas/block3_real_vs_no_tree_g20.png'><img" in html  # thumbnails link to the full size


def test_the_verdict_ranks_the_generators_from_the_data(toy_run):
    _, tmp, _ = toy_run
    report = tmp / "report"
    summary = json.loads((report / "summary.json").read_text())
    verdict = summary["verdict"]["references"]["real"]
    rankings = {r["metric"]: r for r in verdict["rankings"]}
    assert {"frechet", "kid", "precision", "recall", "coverage", "c2st"} <= set(rankings)
    fid = rankings["frechet"]
    assert fid["best"] == "full" and fid["best_is_significant"]  # the generator that draws trees, as every metric says
    values = {o["dataset"]: o for o in fid["order"]}
    frechet = {r["b"]: r for r in summary["metrics"]["frechet"] if r["a"] == "real" and r["features"] == fid["features"]}
    assert values["full"]["value"] == frechet["full"]["value"] and values["full"]["ci95"] == frechet["full"]["ci95"]
    assert verdict["sentences"] and all(s.endswith(".") for s in verdict["sentences"])
    html = (report / "index.html").read_text()
    assert html.index("id='verdict'") < html.index("KL divergence between datasets")
    assert verdict["sentences"][0].replace("'", "&#x27;") in html


def test_a_rerun_redoes_nothing(toy_run):
    study, _, _ = toy_run
    again = run_study(study)
    assert again == {name: {"skipped": "not in this study"} if name in ("icons", "dissect") else
                     {"done": [], "skipped": STAGES[name].items(study)} for name in again}


def test_status_reports_every_stage_complete_and_a_changed_layer_stale(toy_run):
    study, _, _ = toy_run
    rows = stage_status(study)
    assert [r["stage"] for r in rows].count("embed") == 2
    assert all(r["state"].startswith("complete") for r in rows), rows
    changed = study.model_copy(update={"embed": study.embed.model_copy(update={"layers": {}})})
    states = {(r["stage"], r["item"]): r["state"] for r in stage_status(changed)}
    assert states["embed", "block2"].startswith("stale") and states["sample", "real"].startswith("complete")


def _fewer_real_samples(study):
    datasets = dict(study.datasets)
    datasets["real"] = datasets["real"].model_copy(update={"samples": 400})
    return study.model_copy(update={"datasets": datasets})


def test_a_study_change_upstream_shows_every_stage_downstream_stale_with_what_changed(toy_run):
    study, _, _ = toy_run
    states = {(r["stage"], r["item"]): r["state"] for r in stage_status(_fewer_real_samples(study))}
    assert states["sample", "real"] == "stale: dataset.samples changed"
    assert states["sample", "full"].startswith("complete")
    assert states["embed", "block2"] == "stale: sample/real changed"
    assert states["atlas", "block2"] == "stale: embed/block2 changed"  # no longer "complete" beside a stale embed
    assert states["metrics", "all"] == "stale: sample/real changed"
    assert states["report", "all"].startswith("stale: atlas/block2, atlas/block3, config changed")


def test_a_stage_refuses_inputs_that_are_not_complete_in_one_line(toy_run, tmp_path):
    import pytest
    import yaml
    from typer.testing import CliRunner

    from ganscale.cli import app
    from ganscale.errors import RERUN, GanscaleError

    study, _, _ = toy_run
    before = dict(zarr.open_group(study.store, mode="r").attrs["stages"])
    with pytest.raises(GanscaleError) as refused:
        run_study(_fewer_real_samples(study), stages=["atlas", "report"])
    assert str(refused.value) == ("atlas: embed of layer block2 is not complete (stale: sample/real changed); "
                                  "run embed first")
    spec = _fewer_real_samples(study).model_dump(mode="json")
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "changed.yaml"), "--stages", "atlas,report"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines == [f"error: {refused.value}; {RERUN}"]
    assert dict(zarr.open_group(study.store, mode="r").attrs["stages"]) == before  # nothing recorded


def test_status_on_the_command_line_says_what_changed(toy_run, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from ganscale.cli import app

    study, _, _ = toy_run
    spec = _fewer_real_samples(study).model_dump(mode="json")
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = CliRunner().invoke(app, ["status", str(tmp_path / "changed.yaml")])
    assert result.exit_code == 0
    assert "atlas   block2                   stale: embed/block2 changed" in result.output.splitlines()
