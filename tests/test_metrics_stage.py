"""The metrics stage on the pipeline test's toy study: results equal the plain computation on the
whole stored arrays, the generators are ranked as the atlas ranks them, and the report shows them."""

import json

import numpy as np
import pytest
import zarr

from ganscale.metrics import features as fm
from ganscale.metrics import images as im
from ganscale.metrics.stage import inception_score_from_partial, chunk_partial, split_of




def _results(study):
    return zarr.open_group(study.store, mode="r")["metrics"].attrs["results"]


def test_frechet_from_merged_chunk_moments_equals_the_whole_array(toy_run):
    study, _, _ = toy_run
    root = zarr.open_group(study.store, mode="r")
    whole = {n: root[f"datasets/{n}/layers/block3/pooled"][:] for n in study.datasets}
    rows = {(r["a"], r["b"]): r["value"] for r in _results(study)["frechet"] if r["features"] == "pooled:block3"}
    assert set(rows) == {("real", "full"), ("real", "no_tree"), ("full", "no_tree")}
    for (a, b), value in rows.items():
        assert value == pytest.approx(fm.frechet_distance(whole[a], whole[b]), rel=1e-6, abs=1e-9)


def test_inception_score_partials_equal_the_function_on_all_logits(toy_run):
    study, _, _ = toy_run
    root = zarr.open_group(study.store, mode="r")
    logits = root["datasets/full/logits"][:]
    parts = [chunk_partial(study.store, {}, "full", s, min(s + 200, 600), {}, 10) for s in range(0, 600, 200)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    mean, std = inception_score_from_partial(merged)
    ref_mean, ref_std = fm.inception_score(logits, splits=10)
    assert mean == pytest.approx(ref_mean, rel=1e-9) and std == pytest.approx(ref_std, rel=1e-6, abs=1e-12)
    assert np.bincount(split_of(np.arange(600), 600, 10)).tolist() == [60] * 10
    stored = _results(study)["inception_score"]["full"]
    assert stored["mean"] == pytest.approx(ref_mean, rel=1e-9)


def test_metrics_rank_the_generators_as_the_atlas_does(toy_run):
    study, _, _ = toy_run
    results = _results(study)
    fd = {(r["a"], r["b"]): r["value"] for r in results["frechet"]}
    kid = {(r["a"], r["b"]): r["mean"] for r in results["kid"]}
    assert fd["real", "no_tree"] > fd["real", "full"] and kid["real", "no_tree"] > kid["real", "full"]
    kl = zarr.open_group(study.store, mode="r")["atlas/block3/g10/kl"][:]
    assert kl[0, 2] > kl[0, 1]  # the atlas says the same
    prdc = {r["fake"]: r for r in results["prdc"]}
    assert prdc["full"]["coverage"] > prdc["no_tree"]["coverage"]
    assert 0 <= prdc["full"]["precision"] <= 1 and 0 <= prdc["full"]["recall"] <= 1


def test_image_statistics_are_the_sums_of_the_stored_per_image_values(toy_run):
    study, _, _ = toy_run
    root = zarr.open_group(study.store, mode="r")
    images = _results(study)["images"]
    for name in study.datasets:
        sharp = root[f"datasets/{name}/image/sharpness"][:]
        hist = root[f"datasets/{name}/image/colour_hist"][:]
        assert images[name]["sharpness_mean"] == pytest.approx(float(sharp.astype(np.float64).mean()), rel=1e-9)
        assert np.array_equal(np.asarray(images[name]["histogram"]), hist.sum(0))
        assert (hist.sum(2) == 32 * 32).all()
    kl = images["no_tree"]["colour_kl"]["real"]
    real_hist = np.asarray(images["real"]["histogram"], dtype=float)
    fake_hist = np.asarray(images["no_tree"]["histogram"], dtype=float)
    assert kl["gray"]["value"] == pytest.approx(im.histogram_kl(fake_hist[3], real_hist[3]), rel=1e-9)
    assert kl["gray"]["ci95"][0] <= kl["gray"]["value"] <= kl["gray"]["ci95"][1]


def test_every_comparison_carries_its_interval_and_the_significant_differences(toy_run):
    study, _, _ = toy_run
    results = _results(study)
    for row in results["frechet"] + results["kid"]:
        lo, hi = row["ci95"]
        value = row.get("value", row.get("mean"))
        assert lo <= value <= hi and row["resamples"] == study.metrics.bootstrap.resamples
    for row in results["prdc"]:
        for key in ("precision", "recall", "density", "coverage"):
            lo, hi = row["ci95"][key]  # basic intervals: the resampling's shift is reflected
            assert lo < hi and lo - (hi - lo) <= row[key] <= hi + (hi - lo)
    for table in results["c2st"]["classifiers"].values():
        assert table["ci95"][0] < table["test_accuracy"] < table["ci95"][1]
    floor = results["noise_floor"]["real"]
    assert all(entry["frechet"]["ci95"][0] <= entry["frechet"]["value"] for entry in floor.values())
    # "full" draws the whole scene and "no_tree" leaves trees out: against the real scenes, the full
    # generator is significantly closer on the Fréchet distance of every feature set
    frechet = [d for d in results["significance"] if d["metric"] == "frechet"]
    assert frechet and all(d["better"] == "full" for d in frechet)


def test_c2st_tells_the_generators_from_real_scenes_and_the_sweep_improves(toy_run):
    study, _, _ = toy_run
    results = _results(study)
    classifiers = results["c2st"]["classifiers"]
    assert {"pooled", "full", "no_tree"} <= set(classifiers)
    for table in classifiers.values():
        assert table["test_accuracy"] > 0.5 and 0 <= table["p_value"] <= 1
    sweep = results["sweep"]["checkpoints"]
    assert [r["label"] for r in sweep] == ["step500", "step4000"]
    assert sweep[-1]["frechet"] < sweep[0]["frechet"]
    ms = results["ms_ssim"]
    assert all(0 < ms[n]["mean"] < 1 for n in study.datasets)


def test_report_shows_the_metrics(toy_run):
    study, tmp, _ = toy_run
    summary = json.loads((tmp / "report" / "summary.json").read_text())
    assert summary["metrics"]["frechet"] == _results(study)["frechet"]
    html = (tmp / "report" / "index.html").read_text()
    for picture in ("metrics/colour_histograms.png", "metrics/sharpest.png", "metrics/neighbours_real.png",
                    "metrics/interpolation_full.png", "metrics/c2st_smoothgrad.png", "metrics/sweep.png"):
        assert picture in html and (tmp / "report" / picture).stat().st_size > 3000


def test_the_pipeline_stores_pool3_features_and_reports_the_standard_fid(ray_local, tmp_path):
    """The sample stage stores FID Inception pool3 features (weights made here) and the metrics stage
    reports the standard FID on them."""
    import torch

    from conftest import toy_study
    from ganscale.metrics import frechet_distance
    from ganscale.models.fid_inception import FIDInception
    from ganscale.weights import sha256_of

    torch.manual_seed(0)
    model = FIDInception().eval()
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(model.state_dict(), weights)
    saved = {"model": model, "path": weights, "sha256": sha256_of(weights)}
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
    images, _, _ = __import__("ganscale.images", fromlist=["load_images"]).load_images(study, "real", np.arange(2))
    np.testing.assert_allclose(real[:2], saved["model"].features(images).numpy(), rtol=1e-4, atol=1e-5)
    fid = next(r["value"] for r in root["metrics"].attrs["results"]["frechet"]
               if r["features"] == "fid_pool3" and r["a"] == "real" and r["b"] == "full")
    assert fid == pytest.approx(frechet_distance(real, full), rel=1e-6)
