"""GAN dissection: known answers on a synthetic generator, merged partial statistics equal one
pass, and on the toy world the object units are found and switching them off and on works."""

import numpy as np
import pytest
import torch
import zarr

from conftest import toy_study
from ganscale import dissect, sources
from ganscale.dissect import intervene, stats
from ganscale.errors import GanscaleError
from ganscale.models import registry
from ganscale.study import load_study


def test_a_unit_that_is_a_class_mask_gets_iou_one(ray_local, tmp_path):
    path = toy_study(tmp_path, datasets={"synth": {"kind": "generator", "name": "plugins:mask_generator", "samples": 8}},
                     dissect={"layers": ["masks"], "segmenter": {"name": "plugins:palette_segmenter"},
                              "samples": 200, "chunk_size": 50, "intervention_samples": 16, "top_k": 1,
                              "iou_min": 0.5})
    study = load_study(path)
    assert dissect.run(study)["computed"] == ["synth"]
    group = zarr.open_group(study.store, mode="r")["dissect/synth/masks"]
    assert group["label"][:].tolist() == [1, 2, 3, 4]  # unit u is class u + 1
    np.testing.assert_allclose(group["iou"][:], 1.0)
    np.testing.assert_allclose(group["iqr"][:], 1.0)
    results = group.attrs["results"]
    assert results["labels"]["interpretable"] == 4 and results["labels"]["distinct_concepts"] == 4
    red = results["interventions"]["red"]
    assert red["units"] == [0] and red["ablated_fraction"] == 0 and red["removed_share"] == 1
    assert red["inserted_fraction"] > red["base_fraction"]
    # a rerun with nothing changed does nothing
    assert dissect.run(study)["skipped"] == ["synth"]


def _toy_maps(n=120):
    generator = registry.build_generator(load_study(_toy_path()).datasets["full"], "full")
    seeds = sources.dataset_seeds(0, "t", n).tolist()
    images, maps = intervene.featuremaps(generator, seeds, ["layer2"])
    segmentation = registry.build_segmenter("toy_segmenter")(images)
    return stats.upsample(maps["layer2"], (32, 32)), segmentation


def _toy_path(tmp=None):
    import tempfile
    from pathlib import Path

    return toy_study(Path(tmp or tempfile.mkdtemp()))


def test_thresholds_and_iou_from_merged_partials_equal_one_pass():
    maps, segmentation = _toy_maps()
    ids = np.arange(len(maps))
    one = stats.UnitRange.of(maps, ids, 5)
    parts = [stats.UnitRange.of(maps[s:s + 25], ids[s:s + 25], 5) for s in range(0, len(maps), 25)]
    merged = parts[2].merge(parts[0]).merge(parts[4]).merge(parts[1]).merge(parts[3])
    for key in ("low", "high", "top_values", "top_ids"):
        np.testing.assert_array_equal(getattr(merged, key), getattr(one, key))
    hist_one = stats.UnitHistogram.of(maps, one.low, one.high)
    hist_parts = [stats.UnitHistogram.of(maps[s:s + 25], one.low, one.high) for s in range(0, len(maps), 25)]
    hist = hist_parts[0]
    for part in hist_parts[1:]:
        hist = hist.merge(part)
    np.testing.assert_array_equal(hist.counts, hist_one.counts)
    levels = dissect.candidate_levels(0.99)
    thresholds = hist.quantiles(levels)
    np.testing.assert_array_equal(thresholds, hist_one.quantiles(levels))
    # the 0.99 threshold leaves about 1% of each unit's pixels above it
    q99 = thresholds[:, levels.index(0.99)]
    above = (maps.flatten(2) > torch.as_tensor(q99, dtype=torch.float32).view(1, -1, 1)).float().mean((0, 2))
    active = one.high > one.low
    assert np.all(np.abs(above.numpy()[active] - 0.01) < 0.004)
    c_one = stats.Contingency.of(maps, segmentation, thresholds, 6)
    c_parts = [stats.Contingency.of(maps[s:s + 40], segmentation[s:s + 40], thresholds, 6) for s in (0, 40, 80)]
    c_merged = c_parts[1].merge(c_parts[0]).merge(c_parts[2])
    np.testing.assert_array_equal(c_merged.iou(), c_one.iou())
    np.testing.assert_array_equal(c_merged.iqr(), c_one.iqr())


def test_iou_by_hand():
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, :2, :2] = 1  # 4 pixels active in image 0
    segmentation = torch.zeros(2, 4, 4, dtype=torch.long)
    segmentation[0, :2, :] = 1  # 8 pixels of class 1 in image 0
    segmentation[1, 0, 0] = 1  # 1 in image 1
    c = stats.Contingency.of(maps, segmentation, np.array([[0.5]]), 2)
    assert c.iou()[0, 1, 0] == pytest.approx(4 / 9)  # pooled over images: |A&S| = 4, |A|S| = 4 + 9 - 4
    assert c.iou()[0, 0, 0] == 0


def test_two_workers_give_the_statistics_of_one(ray_local, tmp_path):
    path = toy_study(tmp_path, dissect={"layers": ["layer2"], "samples": 120, "chunk_size": 120})
    study = load_study(path)
    seeds = sources.dataset_seeds(study.seed, "x", 120)
    one = dissect.unit_statistics(study, "full", [dissect.DissectWorker(study, "full")], seeds)
    split = study.model_copy(update={"dissect": study.dissect.model_copy(update={"chunk_size": 30})})
    actor = ray_local.remote(dissect.DissectWorker).options(num_cpus=0.25)
    workers = [actor.remote(split, "full", 1) for _ in range(2)]
    two = dissect.unit_statistics(split, "full", workers, seeds)
    np.testing.assert_array_equal(two["histograms"]["layer2"].counts, one["histograms"]["layer2"].counts)
    np.testing.assert_array_equal(two["contingency"]["layer2"].iou(), one["contingency"]["layer2"].iou())
    np.testing.assert_array_equal(two["ranges"]["layer2"].top_ids, one["ranges"]["layer2"].top_ids)


def test_a_generator_with_free_noise_is_refused():
    class Noisy:
        def generate(self, seeds):
            return torch.rand(len(seeds), 3, 8, 8), None

    with pytest.raises(GanscaleError, match="datasets.noisy: the generator gives different images"):
        intervene.check_deterministic(Noisy(), [1, 2], "datasets.noisy")


def test_an_unknown_layer_is_named(ray_local, tmp_path):
    generator = registry.build_generator(load_study(toy_study(tmp_path)).datasets["full"], "full")
    with pytest.raises(GanscaleError, match="dissect.layers: the generator has no layer 'layer9'.*layer1"):
        intervene.layer_module(generator, "layer9")


@pytest.fixture(scope="module")
def toy_dissection(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dissect")
    path = toy_study(tmp, layers=["block3"], sample={"chunk_size": 200, "batch_size": 100},
                     datasets={"real": {"kind": "toyworld", "samples": 400},
                               "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                                        "samples": 200}},
                     dissect={"layers": ["layer2"], "samples": 600, "chunk_size": 200, "intervention_samples": 120,
                              "artifact_units": 5})
    study = load_study(path)
    from ganscale.pipeline import run_study

    run_study(study, stages=["sample", "dissect"])
    return study, zarr.open_group(study.store, mode="r")["dissect/full/layer2"].attrs["results"]


def test_toy_world_object_units_are_found_and_switching_them_works(toy_dissection):
    _, results = toy_dissection
    concepts = results["labels"]["concepts"]
    assert {"sky", "ground"} <= set(concepts) and len(set(concepts) & {"sun", "box", "tree", "ball"}) >= 2
    for cls, effect in results["interventions"].items():
        if cls in ("sun", "box", "tree", "ball"):
            assert effect["removed_share"] > 0.5, (cls, effect)  # ablation removes most of the class
            assert effect["inserted_fraction"] > 2 * effect["base_fraction"] and effect["ace"] > 0
    gains = np.asarray(results["insertion_maps"]["ground"]["gain"])
    assert gains.max() > 0  # inserting ground units somewhere adds ground
    assert set(results["downstream"]["ground"]) == {"layer3", "output"}
    artifacts = results["artifacts"]
    assert artifacts["k"] == 5 and np.isfinite([artifacts["before"], artifacts["after_top"], artifacts["after_random"]]).all()


def test_report_shows_the_dissection(toy_dissection):
    study, _ = toy_dissection
    from ganscale.pipeline import run_study
    from ganscale.report import report_location
    import json
    from pathlib import Path

    run_study(study, stages=["embed", "atlas", "report"])
    report = Path(report_location(study))
    html = (report / "index.html").read_text()
    for picture in ("dissect/concepts_full_layer2.png", "dissect/units_full_layer2.png",
                    "dissect/interventions_full_layer2.png", "dissect/insertion_full_layer2.png"):
        assert picture in html and (report / picture).stat().st_size > 3000
    summary = json.loads((report / "summary.json").read_text())
    assert summary["dissect"]["full"]["layer2"]["labels"]["interpretable"] > 0
