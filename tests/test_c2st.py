"""The classifier two-sample test on toy scenes: it separates different distributions, not equal
ones; early stopping keeps the best weights; SmoothGrad points at what differs."""

import numpy as np
import pytest
import torch

from ganscale.metrics.c2st import C2STClassifier, c2st, null_p_value, smoothgrad
from ganscale.toyworld.scenes import render_batch


@pytest.fixture(scope="module")
def scenes():
    images, _, _ = render_batch(range(1200))
    return images


def tinted(images):
    """The same kind of scene with the top-left quadrant washed towards magenta: what a generator artifact looks like."""
    out = images.clone()
    out[:, 0, :16, :16] = (out[:, 0, :16, :16] + 0.5).clamp(0, 1)
    out[:, 2, :16, :16] = (out[:, 2, :16, :16] + 0.5).clamp(0, 1)
    return out


def test_classifier_architecture_follows_the_dcgan_discriminator():
    model = C2STClassifier(32)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (3, 64, (3, 3), (2, 2), (1, 1)), (64, 128, (3, 3), (2, 2), (1, 1)), (128, 256, (3, 3), (2, 2), (1, 1))]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    assert len([m for m in C2STClassifier(256).features if isinstance(m, torch.nn.Conv2d)]) == 6


def test_different_distributions_are_told_apart_and_equal_ones_are_not(scenes):
    real, other_real = scenes[:400], scenes[400:800]
    result = c2st(real, {"tinted": tinted(scenes[800:1200]), "same": other_real}, epochs=8, patience=3, seed=1)
    tinted_run, same_run = result.classifiers["tinted"], result.classifiers["same"]
    assert tinted_run.test_accuracy > 0.95 and tinted_run.p_value < 1e-6
    # same distribution: within ~3 standard errors of 1/2, not significant
    assert abs(same_run.test_accuracy - 0.5) < 3 * np.sqrt(0.25 / same_run.n_test)
    assert same_run.p_value > 0.001
    pooled = result.classifiers["pooled"]
    table = result.to_dict()["classifiers"]["pooled"]
    assert sum(v["n"] for v in table["per_source"].values()) == pooled.n_test == 200
    weighted = sum(v["accuracy"] * v["n"] for v in table["per_source"].values()) / pooled.n_test
    assert weighted == pytest.approx(pooled.test_accuracy)
    assert table["per_source"]["tinted"]["accuracy"] > table["per_source"]["same"]["accuracy"]


def test_early_stopping_keeps_the_best_validation_epoch_and_runs_are_reproducible(scenes):
    real, fake = scenes[:200], tinted(scenes[200:400])
    a = c2st(real, {"fake": fake}, pooled=False, epochs=6, patience=2, seed=3).classifiers["fake"]
    b = c2st(real, {"fake": fake}, pooled=False, epochs=6, patience=2, seed=3).classifiers["fake"]
    assert a.test_accuracy == b.test_accuracy and a.best_epoch == b.best_epoch
    assert 1 <= a.best_epoch <= a.epochs <= 6 and (a.epochs == 6 or a.epochs - a.best_epoch == 2)
    # the returned model is the best epoch's: evaluating it again gives the recorded test accuracy
    assert a.test_accuracy == pytest.approx(float(np.mean(a.test_correct)))
    assert null_p_value(0.5, 100) == pytest.approx(0.5) and null_p_value(0.6, 100) == pytest.approx(0.02275, rel=1e-3)


def test_smoothgrad_concentrates_on_the_region_that_differs(scenes):
    real, fake = scenes[:400], tinted(scenes[400:800])
    run = c2st(real, {"fake": fake}, pooled=False, epochs=6, patience=2, seed=0).classifiers["fake"]
    images = fake[:8]
    maps = smoothgrad(run.model, images, target=0, samples=20, sigma=0.1, seed=0)
    again = smoothgrad(run.model, images, target=0, samples=20, sigma=0.1, seed=0)
    assert maps.shape == (8, 32, 32) and torch.equal(maps, again)
    quadrants = torch.stack([maps[:, :16, :16].sum(), maps[:, :16, 16:].sum(), maps[:, 16:, :16].sum(),
                             maps[:, 16:, 16:].sum()]) / maps.sum()
    assert quadrants.argmax() == 0 and quadrants[0] > 0.3  # the tinted quarter holds the most sensitivity
