"""The classifier two-sample test (seed 000 section 4.1) on toy scenes: it tells different
distributions apart and not equal ones, its tables add up, early stopping keeps the best
validation epoch's weights, runs are reproducible; SmoothGrad (section 6.3) points at what differs.

Small on purpose (120 images per source at 32x32, a few epochs): one module-scoped c2st serves
most checks; one rerun trains a single classifier for a couple of epochs."""

import json

import matplotlib.image
import numpy as np
import pytest
import torch
from scipy.stats import norm

from ganscale.metrics.c2st import (GENERATED, REAL, C2STClassifier, C2STResult, c2st, correct_examples,
                                   null_log10_p_value, null_p_value, predict, smoothgrad, smoothgrad_figure,
                                   split_indices)
from ganscale.toyworld.scenes import render_batch

N = 120  # images per source
SETTINGS = dict(epochs=4, patience=2, batch_size=32, lr=1e-3, seed=1)


def tinted(images):
    """The same kind of scene with the top-left quadrant washed towards magenta: a local generator artifact."""
    out = images.clone()
    out[:, 0, :16, :16] = (out[:, 0, :16, :16] + 0.5).clamp(0, 1)
    out[:, 2, :16, :16] = (out[:, 2, :16, :16] + 0.5).clamp(0, 1)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these nets are tiny, and on a busy machine a second OpenMP thread mostly
    spins at barriers (measured here: 5x the CPU time, 3x the wall time of one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sets():
    images, _, _ = render_batch(range(3 * N))
    # "same": other real scenes (disjoint seeds), i.e. a perfect generator
    return {"real": images[:N], "tinted": tinted(images[N:2 * N]), "same": images[2 * N:]}


@pytest.fixture(scope="module")
def result(sets) -> C2STResult:
    return c2st(sets["real"], {"tinted": sets["tinted"], "same": sets["same"]}, **SETTINGS)


def rerun(sets, name, **overrides):
    """Train again just the classifier `name` of the `result` fixture."""
    settings = {**SETTINGS, **overrides}
    if name == "pooled":
        out = c2st(sets["real"], {"tinted": sets["tinted"], "same": sets["same"]}, per_source=False, **settings)
    else:
        out = c2st(sets["real"], {name: sets[name]}, pooled=False, **settings)
    assert list(out.classifiers) == [name]
    return out.classifiers[name]


def split_images(sets, run, part):
    images = torch.cat([sets[s][idx[part]] for s, idx in run.split.items()])
    labels = torch.cat([torch.full((len(idx[part]),), run.labels[s]) for s, idx in run.split.items()])
    return images, labels


def test_classifier_is_the_dcgan_discriminator_with_seed_000_settings():
    model = C2STClassifier(32)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (3, 64, (3, 3), (2, 2), (1, 1)), (64, 128, (3, 3), (2, 2), (1, 1)), (128, 256, (3, 3), (2, 2), (1, 1)),
        (256, 512, (3, 3), (2, 2), (1, 1))]
    relus = [m for m in model.features if isinstance(m, torch.nn.LeakyReLU)]
    assert len(relus) == 4 and all(r.negative_slope == 0.2 for r in relus)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.head.in_features == 512 * 2 * 2 and model.head.out_features == 2
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 2)
    # any square side: the seed's 256 (16x16 last map) and one that is no power of two
    big = C2STClassifier(256)
    assert big.head.in_features == 512 * 16 * 16 and big(torch.rand(1, 3, 256, 256)).shape == (1, 2)
    assert C2STClassifier(48)(torch.rand(2, 3, 48, 48)).shape == (2, 2)


def test_null_p_value_is_the_one_sided_normal_tail():
    assert null_p_value(0.5, 100) == pytest.approx(0.5)
    assert null_p_value(0.6, 100) == pytest.approx(norm.sf(2.0)) == pytest.approx(0.02275, rel=1e-3)
    assert null_p_value(0.4, 100) == pytest.approx(norm.sf(-2.0))  # below 1/2: large, one-sided
    assert null_log10_p_value(0.6, 100) == pytest.approx(np.log10(norm.sf(2.0)))
    # where the p-value underflows the log stays finite: z = 100
    assert null_p_value(1.0, 10_000) == 0.0 and -2200 < null_log10_p_value(1.0, 10_000) < -2100


def test_different_distributions_are_told_apart(result):
    run = result.classifiers["tinted"]
    assert run.test_accuracy > 0.9 and run.p_value < 1e-6 and run.log10_p_value < -6
    assert run.per_source["real"]["accuracy"] > 0.85 and run.per_source["tinted"]["accuracy"] > 0.85
    # the pooled classifier catches the tinted generator but not the perfect one
    pooled = result.classifiers["pooled"].per_source
    assert pooled["tinted"]["accuracy"] > 0.9 and pooled["same"]["accuracy"] < pooled["tinted"]["accuracy"] - 0.3


def test_equal_distributions_are_not(result):
    run = result.classifiers["same"]
    assert abs(run.test_accuracy - 0.5) < 3 * np.sqrt(0.25 / run.n_test)  # within 3 standard errors of 1/2
    assert run.p_value > 1e-3


def test_tables_add_up_and_are_json(sets, result):
    assert list(result.classifiers) == ["pooled", "tinted", "same"]
    tables = json.loads(json.dumps(result.to_dict()))  # plain JSON, nothing lost
    assert tables == result.to_dict() and tables["real"] == "real"
    pooled = tables["classifiers"]["pooled"]
    # pooled: N real against N/2 of each generator, every source split 50/25/25
    assert {s: (v["n_train"], v["n_validation"], v["n"]) for s, v in pooled["per_source"].items()} == {
        "real": (60, 30, 30), "tinted": (30, 15, 15), "same": (30, 15, 15)}
    assert (pooled["n_train"], pooled["n_validation"], pooled["n_test"]) == (120, 60, 60)
    assert {s: v["label"] for s, v in pooled["per_source"].items()} == {"real": "real", "tinted": "generated",
                                                                         "same": "generated"}
    for name, table in tables["classifiers"].items():
        per = table["per_source"]
        assert sum(v["n"] for v in per.values()) == table["n_test"]
        assert sum(v["correct"] for v in per.values()) == round(table["test_accuracy"] * table["n_test"])
        weighted = sum(v["accuracy"] * v["n"] for v in per.values()) / table["n_test"]
        assert weighted == pytest.approx(table["test_accuracy"])
        assert table["p_value"] == pytest.approx(null_p_value(table["test_accuracy"], table["n_test"]))
        if name != "pooled":
            assert {s: v["n"] for s, v in per.items()} == {"real": N // 4, name: N // 4}
    # the splits of every source are disjoint, cover the images used, and the pooled run used the first ones
    for run in result.classifiers.values():
        for source, parts in run.split.items():
            used = np.concatenate([parts["train"], parts["validation"], parts["test"]])
            assert sorted(used) == list(range(len(used)))
            assert sorted(run.test_index[run.test_sources == source]) == sorted(parts["test"])
    assert len(result.classifiers["pooled"].split["tinted"]["train"]) == N // 4


def test_early_stopping_keeps_the_best_validation_epoch(sets, result):
    for name, run in result.classifiers.items():
        history = [h["validation_accuracy"] for h in run.history]
        assert len(history) == run.epochs and run.best_epoch == 1 + int(np.argmax(history))  # first best
        assert run.validation_accuracy == max(history)
        saturated = run.validation_accuracy == 1.0  # nothing later could replace it: stopped there
        assert run.epochs == (run.best_epoch if saturated else min(SETTINGS["epochs"], run.best_epoch + SETTINGS["patience"]))
        # the returned model is the one that scored: re-evaluating it gives the recorded accuracies
        for part, recorded in (("validation", run.validation_accuracy), ("test", run.test_accuracy)):
            images, labels = split_images(sets, run, part)
            correct = (predict(run.model, images) == labels).numpy()
            assert correct.mean() == recorded
        assert np.array_equal(correct, run.test_correct)


def test_best_weights_are_restored_and_runs_are_reproducible(sets, result):
    """A classifier that reaches its best validation accuracy early and trains on for `patience`
    epochs (the tinted one is perfect at once and stops there). Training it anew (alone, without the
    other generator beside it) for exactly best_epoch epochs gives bit-identical weights to the ones
    `c2st` returned: the returned model is the best epoch's, not the last one, and training is
    deterministic given the seed and independent of the other generators."""
    name = next(name for name in ("same", "pooled") if result.classifiers[name].epochs > result.classifiers[name].best_epoch)
    run = result.classifiers[name]
    again = rerun(sets, name, epochs=run.best_epoch, patience=100)
    assert again.epochs == run.best_epoch and again.history == run.history[:run.best_epoch]
    kept, fresh = run.model.state_dict(), again.model.state_dict()
    assert kept.keys() == fresh.keys() and all(torch.equal(kept[k], fresh[k]) for k in kept)
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy", "p_value", "per_source", "best_epoch"):
        assert again.table()[key] == run.table()[key], key
    assert np.array_equal(again.test_index, run.test_index) and np.array_equal(again.test_correct, run.test_correct)


def test_splits_are_seeded_stratified_50_25_25():
    a, b, c = (split_indices({"real": 100, "gan": 41}, seed) for seed in (0, 0, 1))
    assert all(np.array_equal(a[s][p], b[s][p]) for s in a for p in a[s])
    assert not np.array_equal(a["real"]["test"], c["real"]["test"])
    assert {s: tuple(len(a[s][p]) for p in ("train", "validation", "test")) for s in a} == {
        "real": (50, 25, 25), "gan": (20, 10, 11)}
    assert sorted(np.concatenate(list(a["gan"].values()))) == list(range(41))


def test_correct_examples_are_correctly_classified_test_images(sets, result):
    for name in ("pooled", "tinted"):
        run = result.classifiers[name]
        for source, target in (("real", REAL), ("tinted", GENERATED)):
            ids = correct_examples(result, source, 6, classifier=name)
            assert len(ids) == 6 and list(ids) == sorted(ids) and set(ids) <= set(run.split[source]["test"])
            assert (predict(run.model, sets[source][ids]) == target).all()
    with pytest.raises(KeyError):
        correct_examples(result, "same", 3, classifier="tinted")


def test_smoothgrad_concentrates_on_the_region_that_differs(sets, result, tmp_path):
    run = result.classifiers["tinted"]
    fake = sets["tinted"][correct_examples(result, "tinted", 8, classifier="tinted")]
    maps = smoothgrad(run.model, fake, target=GENERATED, samples=20, sigma=0.1, seed=0)
    assert maps.shape == (8, 32, 32) and maps.dtype == torch.float32 and (maps >= 0).all() and maps.sum() > 0
    assert torch.equal(maps, smoothgrad(run.model, fake, target=GENERATED, samples=20, sigma=0.1, seed=0))
    assert not torch.equal(maps, smoothgrad(run.model, fake, target=GENERATED, samples=20, sigma=0.1, seed=1))
    # the noise does not depend on how the noisy copies are batched
    assert torch.allclose(maps, smoothgrad(run.model, fake, target=GENERATED, samples=20, sigma=0.1, seed=0, batch=8),
                          rtol=1e-4, atol=1e-7)
    quadrants = torch.stack([maps[:, :16, :16].sum(), maps[:, :16, 16:].sum(), maps[:, 16:, :16].sum(),
                             maps[:, 16:, 16:].sum()]) / maps.sum()
    assert quadrants.argmax() == 0 and quadrants[0] > 0.5  # the tinted quarter holds most of the sensitivity
    # the pooled classifier too, on its real test images
    pooled = result.classifiers["pooled"]
    real = sets["real"][correct_examples(result, "real", 8)]
    real_maps = smoothgrad(pooled.model, real, target=REAL, samples=20, seed=0, reduce="mean", objective="loss")
    assert real_maps.shape == (8, 32, 32) and real_maps[:, :16, :16].sum() / real_maps.sum() > 0.5
    path = smoothgrad_figure({"real": real, "tinted": fake}, {"real": real_maps, "tinted": maps},
                             tmp_path / "c2st" / "smoothgrad.png", "SmoothGrad of the pooled classifier")
    picture = matplotlib.image.imread(path)
    assert picture.ndim == 3 and picture.shape[0] > 200 and picture.shape[1] > 500 and picture[..., :3].std() > 0.05


def test_smoothgrad_without_noise_is_the_input_gradient():
    torch.manual_seed(0)
    model = C2STClassifier(32)
    images = torch.rand(3, 3, 32, 32)
    x = images.clone().requires_grad_(True)
    grad, = torch.autograd.grad(model(x)[:, REAL].sum(), x)
    plain = smoothgrad(model, images, target=REAL, samples=1, sigma=0.0)
    assert torch.allclose(plain, grad.abs().amax(1), rtol=1e-5, atol=1e-9)
    assert torch.allclose(smoothgrad(model, images, REAL, samples=1, sigma=0.0, reduce="mean"), grad.abs().mean(1),
                          rtol=1e-5, atol=1e-9)
    # per-image targets
    mixed = smoothgrad(model, images, torch.tensor([REAL, GENERATED, REAL]), samples=1, sigma=0.0)
    x = images.clone().requires_grad_(True)
    grad0, = torch.autograd.grad(model(x)[:, GENERATED].sum(), x)
    assert torch.allclose(mixed[1], grad0[1].abs().amax(0), rtol=1e-5, atol=1e-9)
    assert torch.allclose(mixed[0], plain[0], rtol=1e-5, atol=1e-9)


def test_bad_input_is_refused():
    real = torch.rand(8, 3, 32, 32)
    with pytest.raises(ValueError, match="no generated"):
        c2st(real, {})
    with pytest.raises(ValueError, match="real ones"):
        c2st(real, {"g": torch.rand(8, 3, 16, 16)})
    with pytest.raises(ValueError, match=r"\[N, 3, H, H\]"):
        c2st(real, {"g": torch.rand(8, 32, 32)})
    with pytest.raises(ValueError, match="named like the real"):
        c2st(real, {"real": real})
    with pytest.raises(ValueError, match="at least 4"):
        c2st(real, {"g": torch.rand(3, 3, 32, 32)}, pooled=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_the_gpu_from_cpu_images(sets):
    result = c2st(sets["real"][:60], {"tinted": sets["tinted"][:60]}, pooled=False, device="cuda", **SETTINGS)
    run = result.classifiers["tinted"]
    assert next(run.model.parameters()).is_cuda and run.test_accuracy > 0.8
    images = sets["tinted"][correct_examples(result, "tinted", 4, classifier="tinted")]
    maps = smoothgrad(run.model, images, GENERATED, samples=4)
    assert maps.shape == (len(images), 32, 32) and maps.device.type == "cpu"
    json.dumps(result.to_dict())
