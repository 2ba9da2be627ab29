"""GAN dissection: known answers on a synthetic generator, merged partial statistics equal one pass
(and two workers equal one), hooks on TorchScript and noisy generators, and on the toy world the
object units are found, switching them off and on works, a stopped stage resumes, and the report
section draws it all."""


import numpy as np
import pytest
import torch
import zarr

from conftest import toy_study
from ganscale.pipeline import run_stage
from ganscale import ledger, sources
from ganscale.dissect import artifacts, intervene, plan, stats, worker
from ganscale.dissect import stage as dissect
from ganscale.errors import GanscaleError
from ganscale.models import registry
from ganscale.models.dcgan import DCGAN
from ganscale.study import load_study
from ganscale.weights import load_state_dict


def test_a_unit_that_is_a_class_mask_gets_iou_one(ray_local, tmp_path):
    path = toy_study(tmp_path,
                     datasets={"synth": {"kind": "generator", "name": "plugins:mask_generator", "samples": 8}},
                     sample={"batch_size": 25},
                     dissect={"layers": ["masks"], "segmenter": {"name": "plugins:palette_segmenter"},
                              "samples": 200, "chunk_size": 50, "intervention_samples": 16, "top_k": 1,
                              "iou_min": 0.5})
    study = load_study(path)
    assert run_stage(study, "dissect")["done"] == ["synth"]
    group = zarr.open_group(study.store, mode="r")["dissect/synth/masks"]
    assert group["label"][:].tolist() == [1, 2, 3, 4]  # unit u is class u + 1
    np.testing.assert_allclose(group["iou"][:], 1.0)
    np.testing.assert_allclose(group["iqr"][:], 1.0)
    assert group["class_area"][:].sum() == 200 * 16 * 16 and group["class_area"].dtype == np.int64
    results = group.attrs["results"]
    assert results["labels"]["interpretable"] == 4 and results["labels"]["distinct_concepts"] == 4
    red = results["interventions"]["red"]
    assert red["units"] == [0] and red["ablated_fraction"] == 0 and red["removed_share"] == 1
    assert red["images_cleared"] == red["images_with_class"] > 0
    assert red["inserted_fraction"] > red["base_fraction"] and red["ace"] > 0
    # inserting the red unit at one pixel paints that pixel red wherever it is
    red_map = results["insertion_maps"]["red"]
    assert np.all(np.asarray(red_map["gain"]) >= 0) and red_map["success_rate"] > 0.5
    # a rerun with nothing changed does nothing
    assert run_stage(study, "dissect")["skipped"] == ["synth"]


def test_a_planted_artifact_unit_is_found_and_ablating_it_brings_the_images_closer_to_real(ray_local, tmp_path):
    from PIL import Image

    from plugins import ArtifactGenerator

    folder = tmp_path / "real"
    folder.mkdir()
    clean = ArtifactGenerator(artifacts=False).generate(list(range(10_000, 10_300)))[0]
    for i, image in enumerate(clean):
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{i:03d}.png")
    path = toy_study(tmp_path, layers=["block3"],
                     datasets={"real": {"kind": "images", "path": str(folder), "samples": 300},
                               "synth": {"kind": "generator", "name": "plugins:artifact_generator", "samples": 8}},
                     sample={"batch_size": 50},
                     dissect={"layers": ["units"], "segmenter": {"name": "plugins:palette_segmenter"},
                              "samples": 100, "chunk_size": 50, "intervention_samples": 8, "top_k": 1,
                              "artifact_units": 1, "artifact_samples": 400, "artifact_share": 0.2,
                              "map_side": 4, "map_images": 16})
    study = load_study(path)
    from ganscale.pipeline import run_study

    run_study(study, stages=["sample", "dissect"])
    group = zarr.open_group(study.store, mode="r")["dissect/synth/units"]
    artifacts = group.attrs["results"]["artifacts"]
    assert artifacts["units"] == [4] and artifacts["random_units"] != [4]  # the magenta unit, found
    assert artifacts["improvement"][0] > 0 and artifacts["images_per_unit"] == 40
    before = group["artifact_before"][...] - group["artifact_after"][...]
    assert before.argmax() == 4 and (before[:4] < before[4] / 4).all()
    active = artifacts["active"]  # held-out images where unit 4 is most active: all have the square
    assert active["after_top"] < active["before"] / 2 and active["after_random"] > active["after_top"]
    shown = group["artifact_images"][...].astype(int)
    magenta = lambda im: ((im[..., 0] > 200) & (im[..., 1] < 50) & (im[..., 2] > 200)).sum()  # noqa: E731
    assert all(magenta(im) >= 16 for im in shown[0]) and all(magenta(im) == 0 for im in shown[1])


def _toy_generator():
    module = DCGAN()
    module.load_state_dict(load_state_dict("builtin:dcgan_full.pt"))
    return module.eval()


def _toy_maps(n=120):
    generator = _toy_generator()
    seeds = sources.dataset_seeds(0, "t", n).tolist()
    images, maps = intervene.featuremaps(generator, seeds, ["layer2"])
    segmentation = registry.build_segmenter("toy_segmenter")(images)
    return stats.upsample(maps["layer2"], (32, 32)), segmentation


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
    hist = hist_parts[3].merge(hist_parts[0]).merge(hist_parts[4]).merge(hist_parts[2]).merge(hist_parts[1])
    np.testing.assert_array_equal(hist.counts, hist_one.counts)
    assert hist.counts.sum() == maps.numel()
    levels = plan.candidate_levels(0.99)
    thresholds = hist.quantiles(levels)
    np.testing.assert_array_equal(thresholds, hist_one.quantiles(levels))
    assert np.all(np.diff(thresholds, axis=1) >= 0)
    # the 0.99 threshold leaves about 1% of each unit's pixels above it (exact to a histogram bin)
    q99 = thresholds[:, levels.index(0.99)]
    above = (maps.flatten(2) > torch.as_tensor(q99, dtype=torch.float32).view(1, -1, 1)).float().mean((0, 2)).numpy()
    exact = np.quantile(maps.transpose(0, 1).flatten(1).double().numpy(), 0.99, axis=1)
    bin_width = (one.high - one.low) / stats.HISTOGRAM_BINS
    active = one.high > one.low
    assert np.all(np.abs(above[active] - 0.01) < 0.004)
    assert np.all(np.abs(q99 - exact)[active] <= bin_width[active] + 1e-6)
    c_one = stats.Contingency.of(maps, segmentation, thresholds, 6)
    c_parts = [stats.Contingency.of(maps[s:s + 40], segmentation[s:s + 40], thresholds, 6) for s in (0, 40, 80)]
    c_merged = c_parts[1].merge(c_parts[0]).merge(c_parts[2])
    for key in ("intersection", "unit_area", "class_area"):
        np.testing.assert_array_equal(getattr(c_merged, key), getattr(c_one, key))
    np.testing.assert_array_equal(c_merged.iou(), c_one.iou())
    np.testing.assert_array_equal(c_merged.iqr(), c_one.iqr())
    np.testing.assert_allclose(c_merged.class_mean(), c_one.class_mean(), rtol=1e-12)
    # the bucketed counts equal a direct count at every candidate threshold
    u, j = 7, levels.index(0.99)
    above_uj = maps[:, u] > float(thresholds[u, j])
    for c in range(6):
        assert c_one.intersection[u, c, j] == int((above_uj & (segmentation == c)).sum())
    assert c_one.unit_area[u, j] == int(above_uj.sum())


def test_iou_and_iqr_by_hand():
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, :2, :2] = 1  # 4 pixels active in image 0
    segmentation = torch.zeros(2, 4, 4, dtype=torch.long)
    segmentation[0, :2, :] = 1  # 8 pixels of class 1 in image 0
    segmentation[1, 0, 0] = 1  # 1 in image 1
    c = stats.Contingency.of(maps, segmentation, np.array([[0.5]]), 2)
    assert c.iou()[0, 1, 0] == pytest.approx(4 / 9)  # pooled over images: |A&S| = 4, |A|S| = 4 + 9 - 4
    assert c.iou()[0, 0, 0] == 0
    # the unit's mean activation where each class is: 4 of class 1's 9 pixels are active
    np.testing.assert_allclose(c.class_mean(), [[0.0, 4 / 9]])
    # IQR = I(A;S)/H(A,S): 1 when the unit is the class, 0 when it is independent of it
    same = stats.Contingency.of(segmentation[:, None].float(), segmentation, np.array([[0.5]]), 2)
    assert same.iqr()[0, 1, 0] == pytest.approx(1.0)
    half = torch.zeros(1, 1, 4, 4)
    half[0, 0, :, :2] = 1
    rows = torch.zeros(1, 4, 4, dtype=torch.long)
    rows[0, :2] = 1
    independent = stats.Contingency.of(half, rows, np.array([[0.5]]), 2)
    assert independent.iqr()[0, 1, 0] == pytest.approx(0.0, abs=1e-12)


def _ready(worker_):
    worker_.ready()
    return worker_


def test_two_workers_give_the_statistics_of_one(ray_local, tmp_path):
    path = toy_study(tmp_path, sample={"batch_size": 30}, dissect={"layers": ["layer2"], "samples": 120,
                                                                    "chunk_size": 120})
    study = load_study(path)
    seeds = sources.dataset_seeds(study.seed, "x", 120)
    one = dissect.unit_statistics(study, "full", [_ready(worker.DissectWorker(study, "full"))], seeds)
    split = study.model_copy(update={"dissect": study.dissect.model_copy(update={"chunk_size": 30})})
    actor = ray_local.remote(worker.DissectWorker).options(num_cpus=0.25)
    workers = [actor.remote(split, "full", 1) for _ in range(2)]
    ray_local.get([w.ready.remote() for w in workers])
    two = dissect.unit_statistics(split, "full", workers, seeds)
    np.testing.assert_array_equal(two["histograms"]["layer2"].counts, one["histograms"]["layer2"].counts)
    np.testing.assert_array_equal(two["contingency"]["layer2"].intersection, one["contingency"]["layer2"].intersection)
    np.testing.assert_array_equal(two["contingency"]["layer2"].iou(), one["contingency"]["layer2"].iou())
    np.testing.assert_array_equal(two["ranges"]["layer2"].top_ids, one["ranges"]["layer2"].top_ids)


class _NumpyNoise:
    """A generator with noise from numpy's global RNG: not reproducible, refused."""
    def generate(self, seeds):
        return torch.as_tensor(np.random.rand(len(seeds), 3, 8, 8), dtype=torch.float32), None


class _StyleNoise(torch.nn.Module):
    """StyleGAN-like: the toy DCGAN with noise drawn from torch's RNG added after layer2."""
    def __init__(self):
        super().__init__()
        self.net = _toy_generator()
        self.net.layer2.register_forward_hook(lambda _m, _i, out: out + 0.3 * torch.randn_like(out))
        self.z_dim = 64

    def from_latents(self, z):
        return self.net(z)


def test_noise_inputs_are_pinned_and_other_randomness_is_refused():
    with pytest.raises(GanscaleError, match="datasets.noisy: the generator gives different images"):
        intervene.check_deterministic(_NumpyNoise(), [1, 2], "datasets.noisy")
    noisy = _StyleNoise()
    seeds = [3, 4, 5]
    intervene.check_deterministic(noisy, seeds, "datasets.style")
    state = torch.random.get_rng_state()
    a = intervene.render(noisy, seeds)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    with intervene.intervention(noisy, "net.layer3", [1, 2], 0.0):
        ablated = intervene.render(noisy, seeds)
    assert torch.equal(intervene.render(noisy, seeds), a) and not torch.equal(ablated, a)


def test_torchscript_sequential_generators_are_hooked(tmp_path):
    net = _toy_generator()
    sequential = torch.nn.Sequential(torch.nn.Unflatten(1, (64, 1, 1)), net.layer1, net.layer2, net.layer3, net.output)
    torch.jit.script(sequential).save(str(tmp_path / "g.pt"))
    study = load_study(toy_study(tmp_path, datasets={"ts": {"kind": "generator", "name": "torchscript",
                                                            "path": str(tmp_path / "g.pt"), "z_dim": 64,
                                                            "resolution": 32, "samples": 8}}))
    scripted = registry.build_generator(study.datasets["ts"], "datasets.ts")
    seeds = [1, 2, 3, 4]
    images, maps = intervene.featuremaps(scripted, seeds, ["2", "3.0"])  # layer2, layer3's conv
    ref_images, ref_maps = intervene.featuremaps(net, seeds, ["layer2", "layer3.0"])
    torch.testing.assert_close(maps["2"], ref_maps["layer2"])
    torch.testing.assert_close(maps["3.0"], ref_maps["layer3.0"])
    torch.testing.assert_close(images, ref_images)
    assert intervene.later_layers(scripted, "2", intervene.layer_order(scripted, "2")) == ["3", "4"]
    assert intervene.layer_order(scripted, "3.0") == ["3.0", "3.1", "3.2"]  # a nested layer's siblings
    # a scripted module with its own forward cannot be hooked: said in one line
    torch.jit.trace(net, torch.randn(2, 64)).save(str(tmp_path / "traced.pt"))
    traced = registry.build_generator(study.datasets["ts"].model_copy(update={"path": str(tmp_path / "traced.pt")}),
                                      "datasets.ts")
    with pytest.raises(GanscaleError, match="TorchScript module .* cannot be hooked"):
        intervene.layer_module(traced, "layer2")


def test_an_unknown_layer_is_named():
    with pytest.raises(GanscaleError, match="dissect.layers: the generator has no layer 'layer9'.*layer1"):
        intervene.layer_module(_toy_generator(), "layer9")


def test_pixel_interventions_change_only_their_neighbourhood():
    net = _toy_generator()
    seeds = [11, 12]
    base = intervene.render(net, seeds)
    with intervene.intervention(net, "layer2", range(64), 0.0, intervene.pixel_mask((8, 8), 0, 0)):
        changed = intervene.render(net, seeds)
    diff = (changed - base).abs().amax((0, 1))  # [32, 32]
    assert diff[:8, :8].max() > 0.05 and diff[16:, 16:].max() == 0  # layer3 and output spread it by a few pixels


@pytest.fixture(scope="module")
def toy_dissection(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dissect")
    path = toy_study(tmp, layers=["block3"], sample={"chunk_size": 200, "batch_size": 100},
                     datasets={"real": {"kind": "toyworld", "samples": 400},
                               "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                                        "samples": 200}},
                     dissect={"layers": ["layer2"], "samples": 600, "chunk_size": 200, "intervention_samples": 120,
                              "artifact_units": 5, "artifact_samples": 200, "map_side": 4, "map_images": 16})
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
    sun = results["insertion_maps"]["sun"]
    assert np.asarray(sun["gain"]).shape == (4, 4) and np.asarray(sun["gain"]).max() > 0  # adds sun somewhere
    assert sun["local_share"] > 0.5  # ... where it was inserted
    assert {"sky", "ground"} <= set(sun["by_context"]) and 0 < sun["success_rate"] <= 1
    assert set(results["downstream"]["sun"]["insertion"]) == {"layer3", "output"}
    assert set(sun["downstream_by_visibility"]) == {"layer3", "output"}
    artifacts = results["artifacts"]
    assert artifacts["k"] == 5 and len(artifacts["units"]) == 5 and not set(artifacts["units"]) & set(artifacts["random_units"])
    for images in ("active", "all"):
        assert np.isfinite(list(artifacts[images].values())).all()
    assert artifacts["improvement"] == sorted(artifacts["improvement"], reverse=True)  # ranked by improvement
    assert artifacts["images_per_unit"] == 10 and artifacts["images_active"] == 10  # 10% of 100 samples


def test_a_stopped_stage_resumes_at_the_first_unfinished_pass(toy_dissection):
    study, results = toy_dissection
    root = zarr.open_group(study.store, mode="a")
    group, layer = root["dissect/full"], root["dissect/full/layer2"]
    intersection = layer["intersection"][...]
    layer["top_values"][0, 0] = -7.0  # a mark: the ranges pass must not run again
    group.attrs["passes"] = ["ranges", "histograms"]  # as if stopped during the contingency pass
    del layer.attrs["results"]
    ledger.forget(root, "dissect", "full")
    assert run_stage(study, "dissect")["done"] == ["full"]
    layer = zarr.open_group(study.store, mode="r")["dissect/full/layer2"]
    assert layer["top_values"][0, 0] == -7.0
    np.testing.assert_array_equal(layer["intersection"][...], intersection)
    assert layer.attrs["results"]["labels"] == results["labels"]
    assert layer.attrs["results"]["interventions"] == results["interventions"]
    assert layer.attrs["results"]["insertion_maps"] == results["insertion_maps"]


def test_report_section_shows_the_dissection(toy_dissection, tmp_path):
    study, _ = toy_dissection
    from ganscale import schema
    from ganscale.dissect.figures import dissect_section

    fragment, summary = dissect_section(study, schema.open_store(study.store, mode="r"), tmp_path)
    for picture in ("dissect/concepts_full_layer2.png", "dissect/units_full_layer2.png",
                    "dissect/interventions_full_layer2.png", "dissect/insertion_full_layer2.png",
                    "dissect/downstream_full_layer2.png"):
        assert picture in fragment and (tmp_path / picture).stat().st_size > 3000
    assert "Artifact units" in fragment
    assert summary["generators"]["full"]["layer2"]["labels"]["interpretable"] > 0
    assert summary["architectures"][0]["units"] == summary["generators"]["full"]["layer2"]["labels"]["units"]
    effect = next(iter(summary["generators"]["full"]["layer2"]["interventions"].values()))
    low, high = effect["removed_ci95"]
    assert low <= effect["removed_share"] <= high and "random" in effect


def test_upernet_weights_load_from_a_path_and_segment(tmp_path):
    from ganscale.dissect.worker import build_segmenter
    from ganscale.models import upernet

    module = upernet.UPerNet(num_classes=5, fpn_dim=16)
    names = ["wall", "sky", "floor", "tree", "ceiling"]
    torch.save({"encoder": module.encoder.state_dict(), "decoder": module.decoder.state_dict(), "class_names": names},
               tmp_path / "upernet.pth")
    study = load_study(toy_study(tmp_path, dissect={"layers": ["layer2"], "segmenter": {
        "name": "ganscale.dissect.upernet:ade20k_upernet", "weights": str(tmp_path / "upernet.pth")}}))
    segmenter = build_segmenter(study)
    assert segmenter.class_names == names
    images = torch.rand(2, 3, 40, 56)
    classes = segmenter(images)
    assert classes.shape == (2, 40, 56) and classes.dtype == torch.int64 and int(classes.max()) < 5
    assert torch.equal(classes, module.eval()(images).argmax(1))
    broken = module.decoder.state_dict()
    del broken["fpn_in.0.0.weight"]
    torch.save({"encoder": module.encoder.state_dict(), "decoder": broken}, tmp_path / "broken.pth")
    with pytest.raises(GanscaleError, match=r"dissect.segmenter.weights \(decoder\): weights do not fit UPerNet: "
                                            r"missing keys \['fpn_in.0.0.weight'\]"):
        upernet.load_upernet(str(tmp_path / "broken.pth"))


def test_the_artifact_significance_separates_a_real_improvement_from_none():
    from ganscale.dissect.stats import artifact_significance, diagonal_frechet

    rng = np.random.default_rng(0)
    real = rng.normal(size=(5000, 128))
    real_mean, real_var = real.mean(0), real.var(0, ddof=1)
    # 100 images, fewer than dimensions: the diagonal distance is still near 0 for real-like features
    assert diagonal_frechet(rng.normal(size=(100, 128)), real_mean, real_var) < 3
    before = rng.normal(size=(100, 128)) + 0.5  # an artifact shifts every feature
    fixed = before - 0.5 + rng.normal(scale=0.05, size=before.shape)  # ablating the artifact units removes it
    untouched = before + rng.normal(scale=0.05, size=before.shape)  # random units change nothing that matters
    yes = artifact_significance(before, fixed, untouched, real_mean, real_var, resamples=300)
    assert yes["significant"] and yes["difference"] > 20 and yes["ci95"][0] > 0 and yes["p_value"] < 0.01
    no = artifact_significance(before, untouched, before + rng.normal(scale=0.05, size=before.shape), real_mean,
                               real_var, resamples=300)
    assert not no["significant"] and no["ci95"][0] < 0 < no["ci95"][1]


def test_the_units_shown_and_the_artifact_choices_follow_from_the_statistics():
    # report panels: the best unit of each concept first (by IoU), then the others by IoU
    assert plan.panel_units(np.array([1, 1, 2, 2, 3]), np.array([0.5, 0.9, 0.2, 0.3, 0.1]), 4) == [1, 3, 4, 0]
    # artifact units: the most improving k, against as many of the others drawn from the study seed
    scores = np.array([[5.0, 5.0], [5.0, 1.0], [5.0, 4.0], [5.0, 6.0], [5.0, 2.0]])
    improvement, top, random_units = artifacts.choose(scores, 2, seed=0)
    assert improvement.tolist() == [0, 4, 1, -1, 3] and top.tolist() == [1, 4]
    assert len(random_units) == 2 and not {1, 4} & set(random_units.tolist())
    assert artifacts.choose(scores, 2, seed=0)[2].tolist() == random_units.tolist()
    # held-out images: where any top unit is strongest relative to its high quantile, at least 2
    peaks = np.array([[1.0, 10.0], [3.0, 0.0], [0.0, 30.0], [2.0, 2.0]])
    assert artifacts.most_active(peaks, [0, 1], np.array([1.0, 10.0]), [10, 11, 12, 13], 0.1).tolist() == [11, 12]
    rank, held = artifacts.split(np.arange(7))
    assert rank.tolist() == [0, 1, 2] and held.tolist() == [3, 4, 5, 6]


@pytest.mark.parametrize("segmenter", ["dying_segmenter", "segmenter_dying_in_a_pass"])
def test_a_dissect_worker_that_dies_is_one_line_exit_1_naming_the_worker(segmenter, ray_local, tmp_path):
    """The worker process exits (os._exit) while it builds the segmenter, or in a statistics pass:
    the environment (exit 1, as the README says), not bad input; one line naming the worker."""
    import re

    from ganscale.errors import describe

    path = toy_study(tmp_path,
                     datasets={"synth": {"kind": "generator", "name": "plugins:mask_generator", "samples": 8}},
                     sample={"batch_size": 25, "workers": 1},
                     dissect={"layers": ["masks"], "segmenter": {"name": f"plugins:{segmenter}"},
                              "samples": 50, "chunk_size": 50, "intervention_samples": 16, "top_k": 1})
    with pytest.raises(Exception) as info:
        run_stage(load_study(path), "dissect")
    line, code = describe(info.value)
    assert code == 1 and "\n" not in line, line
    assert re.match(r"dissect: .*: worker \(pid \d+, node [0-9a-f.:]+\) died for good \(ActorDiedError\)", line), line
