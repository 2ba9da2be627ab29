"""The uncertainty module against the plain metrics and against known distributions."""

import numpy as np
import pytest

from ganscale.metrics import features as fm
from ganscale.metrics import images as im
from ganscale.metrics import uncertainty as un


def gaussian(rng, n, mean, scale):
    return rng.normal(size=(n, len(mean))) * scale + mean


def test_frechet_routes_agree_with_repeated_rows():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 40)), rng.normal(size=(25, 40)) + 0.3
    distance = un.FrechetResampler(a, b)
    assert distance() == pytest.approx(fm.frechet_distance(a, b), rel=1e-6)  # eigvals of a rank-deficient product: ~1e-8 round-off
    wa, wb = rng.multinomial(30, np.full(30, 1 / 30)), rng.multinomial(25, np.full(25, 1 / 25))
    repeated = fm.frechet_distance(np.repeat(a, wa, 0), np.repeat(b, wb, 0))
    ia, ib = np.flatnonzero(wa), np.flatnonzero(wb)
    gram = distance._gram_route(wa[ia].astype(float), ia, wb[ib].astype(float), ib)
    moments = distance._moments_route(wa.astype(float), wb.astype(float))
    assert gram == pytest.approx(repeated, rel=1e-6)
    assert moments == pytest.approx(repeated, rel=1e-6)


def test_frechet_interval_covers_the_large_sample_value():
    """50 seeded trials of two 8-d Gaussians with known parameters: the 95% interval must cover the
    population Fréchet distance |mu_a - mu_b|^2 + sum (s_a - s_b)^2 (diagonal covariances) in at
    least 90% of them."""
    dims = 8
    mu_b = np.full(dims, 0.25)
    scale_b = np.linspace(0.8, 1.3, dims)
    truth = float(mu_b @ mu_b + ((1 - scale_b) ** 2).sum())
    covered = 0
    for trial in range(50):
        rng = np.random.default_rng(trial)
        a, b = gaussian(rng, 400, np.zeros(dims), 1.0), gaussian(rng, 300, mu_b, scale_b)
        estimate = un.frechet_bootstrap(a, b, un.Resampling(seed=trial, resamples=200))
        covered += estimate.ci95[0] <= truth <= estimate.ci95[1]
    assert covered >= 45, f"covered {covered}/50"


def test_kid_and_prdc_values_match_the_plain_metrics():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(60, 16)), rng.normal(size=(50, 16)) * 1.2 + 0.2
    kid = un.kid_bootstrap(real, fake, un.Resampling(resamples=50))
    assert kid.value == pytest.approx(fm.polynomial_mmd(real, fake), rel=1e-9)
    assert kid.ci95[0] < kid.value < kid.ci95[1]
    estimates = un.prdc_bootstrap(real, fake, un.Resampling(resamples=50), k_precision=3, k_density=5)
    pr, dc = fm.prdc(real, fake, k=3), fm.prdc(real, fake, k=5)
    for key, plain in (("precision", pr), ("recall", pr), ("density", dc), ("coverage", dc)):
        assert estimates[key].value == pytest.approx(plain[key]), key
        lo, hi = estimates[key].ci95
        assert lo < hi and lo - (hi - lo) <= estimates[key].value <= hi + (hi - lo), key


def test_paired_difference_detects_the_closer_set():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(200, 6))
    near, far = rng.normal(size=(200, 6)) + 0.1, rng.normal(size=(200, 6)) + 0.8
    res = un.Resampling(resamples=200)
    d_near = un.frechet_bootstrap(ref, near, res, ("ref", "near"))
    d_far = un.frechet_bootstrap(ref, far, res, ("ref", "far"))
    diff = un.difference(d_far, d_near)
    assert diff["significant"] and diff["ci95"][0] > 0
    same = un.difference(d_near, un.frechet_bootstrap(ref, rng.normal(size=(200, 6)) + 0.1, res, ("ref", "near2")))
    assert not same["significant"]


def test_matched_infinity_and_noise_floor():
    rng = np.random.default_rng(3)
    ref, other = rng.normal(size=(600, 12)), rng.normal(size=(150, 12)) + 0.5
    res = un.Resampling(resamples=50)
    matched = un.frechet_matched(ref, other, res, ("ref", "other"))
    assert matched["n"] == 150 and matched["ci95"][0] <= matched["value"] <= matched["ci95"][1]
    assert un.frechet_matched(ref[:150], other, res) is None
    assert "reason" in un.frechet_infinity(ref, other, res)
    inf = un.frechet_infinity(other, ref, res, name="ref")  # 600 rows vary: the bias-free intercept
    population = 12 * 0.25
    assert abs(inf["value"] - population) < abs(inf["values"][-1] - population) + 0.1
    floor = un.noise_floor(ref, res, "ref")
    assert floor["n"] == 300 and floor["frechet"]["value"] < matched["value"]


def test_histogram_kl_mean_difference_and_accuracy():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 5, size=(40, 2, 8))
    b = rng.integers(0, 5, size=(30, 2, 8))
    kl = un.histogram_kl_bootstrap(a, b, un.Resampling(resamples=100))
    plain = im.histogram_kl(a.sum(0), b.sum(0))
    assert [e.value for e in kl] == pytest.approx(list(plain))
    diff = un.mean_difference(np.ones(20) * 2 + rng.normal(size=20) * 0.1, np.ones(25), un.Resampling())
    assert diff.value == pytest.approx(1.0, abs=0.1) and diff.ci95[0] > 0.9
    lo, hi = un.accuracy_interval(60, 100)
    assert lo < 0.6 < hi and hi - lo == pytest.approx(0.19, abs=0.01)


def test_large_sets_are_bootstrapped_on_a_subset_with_scaled_width():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(3000, 5)), rng.normal(size=(3000, 5)) + 0.3
    res = un.Resampling(resamples=100, rows=1000)
    ia, ib = res.subset("a", 3000), res.subset("b", 3000)
    assert len(ia) == 1000 and np.array_equal(res.subset("a", 500), np.arange(500))
    small = un.frechet_bootstrap(a[ia], b[ib], res)
    value = fm.frechet_distance(a, b)
    large = un.frechet_bootstrap(a[ia], b[ib], res, value=value, sizes=(3000, 3000))
    assert large.value == value
    width = lambda e: e.ci95[1] - e.ci95[0]  # noqa: E731
    assert width(large) == pytest.approx(width(small) / np.sqrt(3))


def test_frechet_to_fixed_statistics_matches_the_formula():
    rng = np.random.default_rng(6)
    x, ref = rng.normal(size=(300, 10)), rng.normal(size=(500, 10)) * 1.1 + 0.2
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    estimate = un.frechet_to_stats_bootstrap(x, mu, sigma, un.Resampling(resamples=50))
    plain = fm.frechet_distance_from_stats(x.mean(0), np.cov(x, rowvar=False), mu, sigma)
    assert estimate.value == pytest.approx(plain, rel=1e-6)
    assert estimate.ci95[0] < estimate.value < estimate.ci95[1]


def test_tiny_sets_give_no_interval_instead_of_failing():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    kid = un.kid_bootstrap(a, b, un.Resampling(resamples=50))
    assert np.isfinite(kid.value) and (np.isnan(kid.ci95[0]) or kid.ci95[0] <= kid.ci95[1])
    assert all(np.isnan(un.interval(np.array([np.nan, np.nan]), 1.0)))  # no defined resample: no interval
