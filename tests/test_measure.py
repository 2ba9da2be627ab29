"""Every source measured the same way (issue 11): an image folder and a generator holding the same
pixels give the same sharpness, colour histograms, FID pool3 and probe outputs; two image folders
are compared with each other; a study marks its reference datasets, or has none."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from conftest import toy_study
from ganscale import sources
from ganscale.errors import GanscaleError
from ganscale.metrics import images as image_metrics
from ganscale.pipeline import run_study
from ganscale.study import load_study
from plugins import scene_pixels

SAMPLES = 6
SIDE = 64  # toy scenes upsampled: larger than the toy world, smaller than the probe's 224


@pytest.fixture(scope="module")
def measured(ray_local, tmp_path_factory):
    """One study sampled and measured: `photos`, a folder of PNGs of toy scenes at 64 px; `scenes`,
    a generator plugin giving exactly those pixels for the same samples; `saved`, a second folder
    whose files differ in size (48x48 first, then 64x40). Probe: InceptionV1 (224 px, random weights);
    the FID network with random weights."""
    from ganscale.models.fid_inception import FIDInception
    from ganscale.models.inception_v1 import InceptionV1

    tmp = tmp_path_factory.mktemp("measure")
    torch.manual_seed(0)
    probe_path, fid_path = tmp / "inception5h.pth", tmp / "pt_inception.pth"
    torch.save(InceptionV1().state_dict(), probe_path)
    fid_model = FIDInception().eval()
    torch.save(fid_model.state_dict(), fid_path)
    seed = 7
    seeds = sources.dataset_seeds(seed, "scenes", SAMPLES)
    (tmp / "photos").mkdir()
    (tmp / "saved").mkdir()
    for i, s in enumerate(seeds):  # sample i of the folder is sample i of the generator
        Image.fromarray(scene_pixels(s, SIDE)).save(tmp / "photos" / f"{i:03d}.png")
    for i in range(SAMPLES):
        pixels = scene_pixels(1000 + i, 48) if i == 0 else scene_pixels(1000 + i, 64, height=40)
        Image.fromarray(pixels).save(tmp / "saved" / f"{i:03d}.png")
    path = toy_study(tmp, probe={"name": "inception_v1", "weights": str(probe_path)}, layers=["mixed3a"],
                     sample={"chunk_size": 4, "batch_size": 4}, seed=seed, datasets={
                         "photos": {"kind": "images", "path": str(tmp / "photos"), "samples": SAMPLES},
                         "scenes": {"kind": "generator", "name": "plugins:pixel_scenes", "samples": SAMPLES,
                                    "options": {"side": SIDE}},
                         "saved": {"kind": "images", "path": str(tmp / "saved"), "samples": SAMPLES}},
                     metrics={"fid_inception": {"weights": str(fid_path)}, "c2st": None, "prdc_samples": SAMPLES,
                              "kid_subsets": 3, "kid_subset_size": 3, "msssim_pairs": 3, "images_shown": 2})
    study = load_study(path)
    run_study(study, stages=["sample", "metrics"])
    native = torch.from_numpy(np.stack([scene_pixels(s, SIDE) for s in seeds])).permute(0, 3, 1, 2).float() / 255
    return study, tmp, fid_model, native


def _arrays(study, dataset: str, key: str) -> np.ndarray:
    return zarr.open_group(study.store, mode="r")[f"datasets/{dataset}/{key}"][:]


def test_a_folder_and_a_generator_of_the_same_pixels_give_the_same_image_statistics(measured):
    """Defect 1: folders were resized to the probe's 224 px before sharpness and colour histograms."""
    study, _, _, native = measured
    folder, generated = (_arrays(study, n, "image/sharpness") for n in ("photos", "scenes"))
    np.testing.assert_array_equal(folder, generated)
    np.testing.assert_allclose(folder, image_metrics.sharpness(native), rtol=1e-6)
    np.testing.assert_array_equal(_arrays(study, "photos", "image/colour_hist"),
                                  _arrays(study, "scenes", "image/colour_hist"))
    assert (_arrays(study, "photos", "image/colour_hist").sum(2) == SIDE * SIDE).all()  # every native pixel
    at_probe_size = image_metrics.sharpness(sources.resize_square(native, 224))  # what the folder used to give
    assert (np.abs(at_probe_size / folder - 1) > 0.3).all()
    root = zarr.open_group(study.store, mode="r")
    assert root["datasets/photos"].attrs["image_size"] == [SIDE, SIDE]
    assert root["datasets/photos"].attrs["resize"] == sources.RESIZE_NOTE
    np.testing.assert_allclose(_arrays(study, "photos", "logits"), _arrays(study, "scenes", "logits"), rtol=1e-5,
                               atol=1e-6)  # the probe, too, sees the same pixels resized once


def test_the_fid_network_sees_a_folders_own_pixels(measured):
    """Defect 2: a 224 px probe sent folder images to the FID network via 224, then 299."""
    study, _, fid_model, native = measured
    stored = _arrays(study, "photos", "features/fid_pool3").astype(np.float64)
    direct = fid_model.features(native).numpy().astype(np.float64)
    assert np.linalg.norm(direct, axis=1).min() > 0

    def relative(a, b):  # random weights give tiny features (~1e-8): compare against their own scale
        return float((np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)).max())

    assert relative(stored, direct) < 1e-5
    assert relative(_arrays(study, "scenes", "features/fid_pool3"), stored) < 1e-5
    via_probe_size = fid_model.features(sources.resize_square(native, 224)).numpy()  # the old folder path
    assert relative(via_probe_size, direct) > 1e-3


def test_a_folder_of_mixed_sizes_is_read_at_its_first_files_side(measured):
    study, tmp, _, _ = measured
    from ganscale.images import images_by_id

    root = zarr.open_group(study.store, mode="r")
    assert root["datasets/saved"].attrs["image_size"] == [48, 48]
    images = images_by_id(study, root, "saved", [0, 1])
    assert images.shape == (2, 3, 48, 48)
    first = torch.from_numpy(np.array(Image.open(tmp / "saved" / "000.png"))).permute(2, 0, 1).float() / 255
    assert torch.equal(images[0], first)  # a file at the folder's side keeps its own pixels
    assert (_arrays(study, "saved", "image/colour_hist").sum(2) == 48 * 48).all()


def test_two_image_folders_are_compared_with_each_other(measured):
    """Defect 3: two image folders got no Fréchet distance or KID at all."""
    study, _, _, _ = measured
    results = zarr.open_group(study.store, mode="r")["metrics"].attrs["results"]
    assert results["comparisons"]["reference"] == ["photos", "saved"]  # default: the kind != generator ones
    pairs = {(r["features"], r["a"], r["b"]): r["value"] for r in results["frechet"]}
    kid = {(r["features"], r["a"], r["b"]): r["mean"] for r in results["kid"]}
    for fs in ("pooled:mixed3a", "fid_pool3"):
        assert set(p[1:] for p in pairs if p[0] == fs) == {("photos", "scenes"), ("saved", "scenes"),
                                                           ("photos", "saved")}
        assert pairs[fs, "photos", "saved"] > 0 and np.isfinite(kid[fs, "photos", "saved"])
        assert pairs[fs, "photos", "scenes"] == pytest.approx(0, abs=1e-3 * pairs[fs, "photos", "saved"])
    assert {(r["real"], r["fake"]) for r in results["prdc"]} == {("photos", "scenes"), ("saved", "scenes")}
    assert results["sizes"]["saved"] == {"source": [48, 48], "probe": 224, "fid": 299}


def test_a_study_names_its_reference(measured, tmp_path):
    study, _, _, _ = measured
    chosen = study.model_copy(update={"metrics": study.metrics.model_copy(update={"reference": ["photos"]})})
    run_study(chosen, stages=["metrics"])
    results = zarr.open_group(study.store, mode="r")["metrics"].attrs["results"]
    assert results["comparisons"]["reference"] == ["photos"]
    assert {(r["real"], r["fake"]) for r in results["prdc"]} == {("photos", "scenes"), ("photos", "saved")}
    assert set(results["images"]["saved"]["colour_kl"]) == {"photos"}
    assert ("scenes", "saved") in {(r["a"], r["b"]) for r in results["frechet"]}
    from ganscale.metrics.figures import measurement_html

    html = measurement_html(chosen, results)
    assert "reference: photos (metrics.reference)" in html and "224x224 (from 48x48)" in html
    assert "299x299 (from 64x64)" in html


def test_a_study_without_a_reference_compares_all_pairs(ray_local, tmp_path):
    path = toy_study(tmp_path, layers=["block3"], sample={"chunk_size": 20, "batch_size": 20}, datasets={
        "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 20},
        "no_tree": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_no_tree.pt", "samples": 20}},
        metrics={"c2st": None, "kid_subsets": 3, "kid_subset_size": 10, "msssim_pairs": 3, "images_shown": 2})
    study = load_study(path)
    run_study(study, stages=["sample", "metrics"])
    results = zarr.open_group(study.store, mode="r")["metrics"].attrs["results"]
    assert [(r["a"], r["b"]) for r in results["frechet"]] == [("full", "no_tree")]
    assert results["frechet"][0]["value"] > 0 and len(results["kid"]) == 1 and results["prdc"] == []
    assert results["comparisons"]["note"].startswith("no reference dataset")


def test_an_unknown_reference_is_named(tmp_path):
    with pytest.raises(GanscaleError, match="metrics.reference: no dataset named 'nope'"):
        load_study(toy_study(tmp_path, metrics={"reference": ["nope"]}))


def test_preprocess_degrades_every_source_alike():
    """grey: luma in three equal channels; size: center crop and antialiased resize; off: unchanged."""
    import torch

    from ganscale import sources

    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 40, 64, generator=g)
    grey = sources.preprocess(images, grayscale=True)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    torch.testing.assert_close(grey[:, 0], 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])
    small = sources.preprocess(images, grayscale=True, size=25)
    assert small.shape == (3, 3, 25, 25) and 0 <= small.min() and small.max() <= 1
    assert torch.equal(sources.preprocess(images), images)
    assert "grey" in sources.preprocess_note(True, 25) and "25x25" in sources.preprocess_note(True, 25)
    assert sources.preprocess_note(False, None) == ""


def test_preprocess_is_part_of_a_dataset_fingerprint(tmp_path):
    from conftest import toy_study
    from ganscale import sample
    from ganscale.study import load_study

    plain = load_study(toy_study(tmp_path / "a"))
    degraded = load_study(toy_study(tmp_path / "b", preprocess={"grayscale": True, "size": 16}))
    assert sample.fingerprint(plain, "real") != sample.fingerprint(degraded, "real")
