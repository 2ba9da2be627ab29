"""ganscale.metrics: known answers, merged partials, and reference implementations on the same inputs:
torchmetrics (FID, KID, IS, fed features through an identity `feature` module), torch-fidelity's
functions over features (skipped where it cannot import: it needs torchvision), the `prdc` package,
pytorch-msssim. Reference checks skip when their package is not installed."""

import importlib

import numpy as np
import pytest
import scipy.stats
import torch

from ganscale.metrics import (FeatureMoments, colour_histograms, colour_spikes, frechet_distance,
                              frechet_distance_from_moments, frechet_distance_from_stats, histogram_kl,
                              images_with_bin, inception_score, kid, ms_ssim, ms_ssim_diversity, nearest_neighbours,
                              polynomial_mmd, prdc, sharpness)
from ganscale.metrics.images import (MS_SSIM_WEIGHTS, colour_histograms_torch, distinct_pairs, ms_ssim_scales,
                                     sharpness_torch)

TORCH_FIDELITY_SKIP = ("torch-fidelity imports torchvision when imported (package __init__ and utils), and "
                       "torchvision does not install beside this torch")


def gaussian(n, d, shift=0.0, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(shift, scale, size=(n, d))


def correlated(n, d, shift=0.0, seed=0):
    """Correlated non-negative features (a ReLU of a random projection), pool3-like."""
    mixing = np.random.default_rng(100).normal(size=(d, d)) / np.sqrt(d)
    return np.maximum(gaussian(n, d, shift, seed=seed) @ mixing, 0)


class Identity(torch.nn.Module):
    """Feeds features straight into torchmetrics' metrics (their `feature` argument takes a module
    with a `num_features` attribute)."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def torchmetrics_module(name):
    return pytest.importorskip(f"torchmetrics.image.{name}")


def torch_fidelity_module(name):
    """torch-fidelity's functions over features; skipped where it is not installed, or installed but
    not importable (it imports torchvision when imported)."""
    try:
        return importlib.import_module(f"torch_fidelity.{name}")
    except ModuleNotFoundError as e:
        if e.name == "torch_fidelity":
            pytest.skip("torch-fidelity is not installed")
        pytest.skip(f"torch-fidelity does not import here ({e}): {TORCH_FIDELITY_SKIP}")


# --- Fréchet distance --------------------------------------------------------------------------

def test_frechet_distance_of_known_gaussians_equals_the_closed_form():
    mu1, mu2 = np.arange(4.0), np.arange(4.0) + 0.5
    s1, s2 = np.array([1.0, 2, 3, 4]), np.array([4.0, 1, 2, 9])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)
    # the same covariances in a rotated basis (full matrices, same eigenvectors): the same distance
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    rotated = frechet_distance_from_stats(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)
    # samples of those Gaussians: close to the closed form (the estimate is biased by O(d/n))
    rng = np.random.default_rng(2)
    a = rng.normal(mu1, np.sqrt(s1), size=(40_000, 4))
    b = rng.normal(mu2, np.sqrt(s2), size=(40_000, 4))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_distance_of_identical_and_shifted_sets():
    x = correlated(2000, 8, seed=3)
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(x, x + 0.3) == pytest.approx(8 * 0.09, rel=1e-9)  # only the mean term moves
    # fewer rows than dimensions: singular covariances, whose product's zero eigenvalues come out as
    # round-off of either sign (~1e-15); negatives count as 0: finite, and 0 up to the square roots of round-off
    few = gaussian(20, 64, seed=4)
    value = frechet_distance(few, few.copy())
    assert np.isfinite(value) and abs(value) < 1e-7 * 2 * np.trace(FeatureMoments.of(few).cov)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(x, x[:, :4])


def test_frechet_from_merged_chunk_moments_equals_one_array():
    a, b = correlated(3000, 16, seed=1), correlated(2500, 16, shift=0.2, seed=2)
    chunks = [FeatureMoments.of(a[i:i + 700]) for i in range(0, len(a), 700)]  # uneven last chunk
    merged = chunks[0]
    for part in reversed(chunks[1:]):  # any order
        merged = merged + part
    whole = FeatureMoments.of(a)
    assert merged.n == whole.n == 3000
    np.testing.assert_allclose(merged.mean, a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.cov, np.cov(a, rowvar=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged.outer, whole.outer, rtol=1e-12)
    summed = sum(chunks[::-1]) + FeatureMoments.zeros(16)  # python's sum (from 0) and the neutral element
    assert summed.n == 3000 and np.allclose(summed.sum, whole.sum, rtol=1e-12)
    fd_merged = frechet_distance_from_moments(merged, FeatureMoments.of(b))
    assert fd_merged == pytest.approx(frechet_distance_from_moments(whole, FeatureMoments.of(b)), rel=1e-9)
    assert fd_merged == pytest.approx(frechet_distance(a, b), rel=1e-9) and fd_merged > 0
    # float32 features converted in blocks give the moments of their float64 values
    a32 = a.astype(np.float32)
    blocked, direct = FeatureMoments.of(a32, block=256), FeatureMoments.of(a32.astype(np.float64))
    np.testing.assert_allclose(blocked.outer, direct.outer, rtol=1e-12)
    with pytest.raises(ValueError, match="dimensions differ"):
        merged.merge(FeatureMoments.of(a[:, :3]))


def test_frechet_distance_equals_torchmetrics():
    fid = torchmetrics_module("fid")
    a, b = correlated(1500, 64, seed=3), correlated(1200, 64, shift=0.1, seed=4)
    metric = fid.FrechetInceptionDistance(feature=Identity(64), normalize=True)
    metric.set_dtype(torch.float64)
    for start in range(0, 1500, 500):  # its running sums over batches, like our chunk moments
        metric.update(torch.as_tensor(a[start:start + 500]), real=True)
    metric.update(torch.as_tensor(b), real=False)
    assert frechet_distance(a, b) == pytest.approx(float(metric.compute()), rel=1e-9)


def test_frechet_distance_equals_torch_fidelity():
    metric_fid = torch_fidelity_module("metric_fid")
    a, b = correlated(1500, 64, seed=3), correlated(1200, 64, shift=0.1, seed=4)
    stats = [metric_fid.fid_features_to_statistics(torch.as_tensor(x)) for x in (a, b)]
    ref = metric_fid.fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-9)


# --- KID ---------------------------------------------------------------------------------------

def test_kid_near_zero_for_one_distribution_and_positive_for_a_shift():
    same = kid(gaussian(600, 32, seed=5), gaussian(600, 32, seed=6), subsets=10, subset_size=300)
    shifted = kid(gaussian(600, 32, seed=5), gaussian(600, 32, shift=0.5, seed=6), subsets=10, subset_size=300)
    assert abs(same[0]) < 3 * same[1] + 1e-3
    assert shifted[0] > 0 and shifted[0] > 10 * abs(same[0]) and shifted[0] > 5 * shifted[1]
    # same seed, same subsets; the subset size is capped at the smaller set
    a, b = gaussian(300, 8, seed=7), gaussian(200, 8, shift=0.3, seed=8)
    assert kid(a, b, subsets=3, subset_size=1000, seed=1) == kid(a, b, subsets=3, subset_size=200, seed=1)
    assert kid(a, b, subsets=3, subset_size=100, seed=1) != kid(a, b, subsets=3, subset_size=100, seed=2)


def test_polynomial_mmd_is_the_unbiased_estimator():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(5, 3))

    def k(x, y):
        return (x @ y / 3 + 1) ** 3

    within_a = np.mean([k(a[i], a[j]) for i in range(7) for j in range(7) if i != j])
    within_b = np.mean([k(b[i], b[j]) for i in range(5) for j in range(5) if i != j])
    across = np.mean([k(x, y) for x in a for y in b])
    assert polynomial_mmd(a, b) == pytest.approx(within_a + within_b - 2 * across, rel=1e-12)


def test_kid_equals_torchmetrics():
    kid_module = torchmetrics_module("kid")
    a, b = gaussian(300, 16, seed=7), gaussian(300, 16, shift=0.3, seed=8)
    metric = kid_module.KernelInceptionDistance(feature=Identity(16), subsets=1, subset_size=300, normalize=True)
    metric.update(torch.as_tensor(a), real=True)
    metric.update(torch.as_tensor(b), real=False)
    ref_mean, _ = metric.compute()
    ours, std = kid(a, b, subsets=1, subset_size=300)  # one subset of all rows: no randomness left
    assert ours == pytest.approx(float(ref_mean), rel=1e-10) and std == 0
    for seed in range(3):  # its per-subset estimator on random subsets
        x, y = gaussian(200, 16, seed=seed), gaussian(200, 16, shift=0.2, seed=seed + 10)
        ref = kid_module.poly_mmd(torch.as_tensor(x), torch.as_tensor(y))
        assert polynomial_mmd(x, y) == pytest.approx(float(ref), rel=1e-10)


def test_kid_equals_torch_fidelity_subset_for_subset():
    metric_kid = torch_fidelity_module("metric_kid")
    a, b = correlated(800, 32, seed=11), correlated(700, 32, shift=0.2, seed=12)
    ref = metric_kid.kid_features_to_metric(torch.as_tensor(a), torch.as_tensor(b), kid_subsets=10,
                                            kid_subset_size=300, rng_seed=2020, verbose=False)
    mean, std = kid(a, b, subsets=10, subset_size=300, seed=2020)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-10)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-8)


# --- Inception Score ---------------------------------------------------------------------------

def test_inception_score_known_answers():
    k = 10
    one_hot = np.repeat(np.eye(k) * 50, 20, axis=0)  # confident and spread evenly over all classes
    assert inception_score(one_hot, splits=1)[0] == pytest.approx(k, rel=1e-6)
    shuffled = one_hot[np.random.default_rng(0).permutation(200)]
    assert inception_score(shuffled, splits=1)[0] == pytest.approx(k, rel=1e-6)
    one_class = np.tile(np.eye(k)[3] * 50, (50, 1))  # confident but always the same class
    assert inception_score(one_class, splits=1)[0] == pytest.approx(1, rel=1e-6)
    assert inception_score(np.zeros((200, k)), splits=2) == pytest.approx((1.0, 0.0))
    # one-hot rows in class order (20 per class): every split of 40 rows holds two classes -> 2, no spread
    assert inception_score(one_hot, splits=5) == pytest.approx((2.0, 0.0), rel=1e-6, abs=1e-9)


def test_inception_score_equals_torchmetrics():
    inception = torchmetrics_module("inception")
    logits = gaussian(1000, 10, scale=3, seed=9)
    metric = inception.InceptionScore(feature=Identity(10), splits=1, normalize=False)
    metric.update(torch.as_tensor(logits))
    assert inception_score(logits, splits=1)[0] == pytest.approx(float(metric.compute()[0]), rel=1e-10)
    # five splits: it shuffles with torch.randperm first and reports std with ddof=1
    metric = inception.InceptionScore(feature=Identity(10), splits=5, normalize=False)
    metric.update(torch.as_tensor(logits))
    torch.manual_seed(123)
    ref_mean, ref_std = metric.compute()
    torch.manual_seed(123)
    order = torch.randperm(1000).numpy()
    mean, std = inception_score(logits[order], splits=5)
    assert mean == pytest.approx(float(ref_mean), rel=1e-10)
    assert std * np.sqrt(5 / 4) == pytest.approx(float(ref_std), rel=1e-8)


def test_inception_score_equals_torch_fidelity():
    metric_isc = torch_fidelity_module("metric_isc")
    logits = gaussian(1000, 10, scale=3, seed=9)
    ref = metric_isc.isc_features_to_metric(torch.as_tensor(logits), splits=10, shuffle=False)
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-8)


# --- precision, recall, density, coverage ---------------------------------------------------

def test_prdc_of_identical_sets():
    real = gaussian(400, 8, seed=10)
    ours = prdc(real, real.copy(), k=5)
    assert ours["precision"] == 1 and ours["recall"] == 1 and ours["coverage"] == 1
    assert ours["density"] == pytest.approx(1, abs=0.1)  # each row sits in ~k balls of its neighbours
    far = prdc(real, real + 100, k=3)  # disjoint supports
    assert far == {"precision": 0, "recall": 0, "density": 0, "coverage": 0}
    with pytest.raises(ValueError, match="k must be"):
        prdc(real[:5], real[:5], k=5)


def test_prdc_equals_the_prdc_package():
    prdc_package = pytest.importorskip("prdc")
    real = gaussian(400, 8, seed=10)
    fake = gaussian(300, 8, shift=0.4, scale=0.8, seed=11)
    for k in (3, 5):
        ref = prdc_package.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
        for block in (None, 37):  # the real-vs-fake distances in blocks of rows change nothing
            ours = prdc(real, fake, k=k, block=block)
            for key in ("precision", "recall", "density", "coverage"):
                assert ours[key] == pytest.approx(ref[key], abs=1e-12), (k, block, key)


def test_nearest_neighbours_in_blocks_equal_brute_force():
    x = gaussian(500, 6, seed=12)
    full = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(full, np.inf)
    for block in (64, None):
        idx, dist = nearest_neighbours(x, x, 4, exclude_self=True, block=block)
        np.testing.assert_array_equal(idx, np.argsort(full, axis=1, kind="stable")[:, :4])
        np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :4], rtol=1e-9)
    queries = gaussian(30, 6, seed=13)
    idx, dist = nearest_neighbours(torch.as_tensor(queries), x, 500, block=7)  # every row of the pool, sorted
    brute = np.linalg.norm(queries[:, None] - x[None], axis=2)
    np.testing.assert_array_equal(idx, np.argsort(brute, axis=1, kind="stable"))
    np.testing.assert_allclose(dist, np.sort(brute, axis=1), rtol=1e-9)
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(x, x, 500, exclude_self=True)


# --- sharpness ---------------------------------------------------------------------------------

def test_sharpness_orders_flat_blurred_and_sharp_images():
    flat = np.full((1, 3, 32, 32), 0.4)
    checker = np.indices((32, 32)).sum(0) % 2 * np.ones((1, 3, 1, 1))
    blurred = torch.nn.functional.avg_pool2d(torch.as_tensor(checker), 3, 1, 1, count_include_pad=False).numpy()
    values = sharpness(np.concatenate([flat, blurred, checker]))
    assert values.shape == (3,) and values[0] == 0 and 0 < values[1] < values[2]
    ramp = np.tile(np.linspace(0, 1, 32), (1, 3, 32, 1))  # gray rises 255/31 per pixel along x
    assert sharpness(ramp)[0] == pytest.approx(255 / 31, rel=1e-9)
    # the common recipe on the 0..255 gray image, and torch float32 input
    images = np.random.default_rng(14).random((4, 3, 20, 24))
    gray = np.tensordot([0.299, 0.587, 0.114], images, axes=([0], [1])) * 255
    expected = [np.sqrt(np.sum(np.square(np.gradient(g)), axis=0)).mean() for g in gray]
    np.testing.assert_allclose(sharpness(images), expected, rtol=1e-12)
    np.testing.assert_allclose(sharpness(torch.as_tensor(images, dtype=torch.float32)), expected, rtol=1e-5)


# --- colour histograms, KL, spikes ----------------------------------------------------------

def test_colour_histograms_count_every_pixel_as_np_histogram_bins_them():
    rng = np.random.default_rng(15)
    images = rng.random((6, 3, 10, 12))
    images[0, :, 0, :5] = [[0.0], [0.04], [0.6]]  # values on bin edges (0.04 = 1/25, 0.6 = 15/25)
    images[1, :, 1, :3] = 1.0
    hist = colour_histograms(images)
    assert hist.shape == (6, 4, 25) and hist.dtype == np.int64 and (hist.sum(2) == 120).all()
    gray = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    for i in range(6):
        for c, channel in enumerate([images[i, 0], images[i, 1], images[i, 2], gray[i]]):
            np.testing.assert_array_equal(hist[i, c], np.histogram(channel, bins=25, range=(0, 1))[0])
    assert hist[0, 1, 1] >= 5 and hist[0, 2, 15] >= 5  # edge values open their bin
    assert colour_histograms(torch.as_tensor(images, dtype=torch.float32), bins=8).sum() == 6 * 4 * 120
    out_of_range = colour_histograms(np.full((1, 3, 2, 2), 1.5))  # clipped into the last bin, still counted
    assert out_of_range[0, :, -1].tolist() == [4, 4, 4, 4]
    with pytest.raises(ValueError, match="NaN"):
        colour_histograms(np.full((1, 3, 2, 2), np.nan))


@pytest.mark.parametrize("shape", [(6, 3, 33, 31), (2, 3, 1, 5), (3, 1, 8, 8)])
def test_torch_sharpness_and_histograms_equal_the_numpy_reference(shape):
    """The sample stage computes both on the worker's device with torch: the same counts exactly,
    the same sharpness to float64 rounding (and the same float32 as stored)."""
    rng = np.random.default_rng(17)
    images = torch.as_tensor(rng.random(shape), dtype=torch.float32)
    if shape[1] == 3:
        images[0, :, 0, :5] = torch.tensor([[0.0], [0.04], [0.6]])  # bin edges
        images[1, :, 0, :3] = torch.tensor([[1.0], [1.5], [-0.2]])  # 1 and outside [0, 1]
        hist = colour_histograms_torch(images, bins=25)
        assert hist.dtype == torch.int64
        np.testing.assert_array_equal(hist.numpy(), colour_histograms(images, bins=25))
        np.testing.assert_array_equal(colour_histograms_torch(images, bins=7).numpy(), colour_histograms(images, bins=7))
    got = sharpness_torch(images)
    assert got.dtype == torch.float64 and got.shape == (shape[0],)
    np.testing.assert_allclose(got.numpy(), sharpness(images), rtol=1e-13, atol=0)
    np.testing.assert_array_equal(got.numpy().astype(np.float32), sharpness(images).astype(np.float32))
    with pytest.raises(ValueError, match="NaN"):
        colour_histograms_torch(torch.full((1, 3, 2, 2), float("nan")))


def test_histogram_kl_equals_scipy_entropy():
    rng = np.random.default_rng(16)
    p, q = rng.integers(0, 50, (4, 25)), rng.integers(0, 50, (4, 25))
    q[2, 3] = 0  # an empty bin: finite thanks to the pseudo-count
    for c in range(4):
        assert histogram_kl(p[c], q[c]) == pytest.approx(scipy.stats.entropy(p[c] + 0.5, q[c] + 0.5), rel=1e-12)
    np.testing.assert_allclose(histogram_kl(p, q, smoothing=1.0), scipy.stats.entropy(p + 1.0, q + 1.0, axis=1),
                               rtol=1e-12)
    assert histogram_kl(p[0], p[0]) == pytest.approx(0, abs=1e-15)


def test_a_planted_colour_spike_is_found_with_the_images_that_make_it():
    rng = np.random.default_rng(13)
    real = rng.random((40, 3, 16, 16))
    fake = rng.random((40, 3, 16, 16))
    fake[5:8, :, :12, :] = [[[0.3]], [[0.61]], [[0.61]]]  # seed 000's (0.3, 0.6, 0.6) colour in 3 images
    h_real, h_fake = colour_histograms(real), colour_histograms(fake)
    spikes = colour_spikes(h_real.sum(0), h_fake.sum(0))
    found = {(s["channel"], s["bin"]) for s in spikes}
    assert {(0, 7), (1, 15), (2, 15)} <= found  # 0.3 -> bin 7, 0.61 -> bin 15
    assert all(s["ratio"] >= 2 for s in spikes) and [s["ratio"] for s in spikes] == sorted(
        (s["ratio"] for s in spikes), reverse=True)
    green = next(s for s in spikes if (s["channel"], s["bin"]) == (1, 15))
    assert green["low"] == pytest.approx(0.6) and green["high"] == pytest.approx(0.64)
    assert green["fake_share"] == pytest.approx(h_fake.sum(0)[1, 15] / (40 * 256))
    assert green["real_share"] == pytest.approx(h_real.sum(0)[1, 15] / (40 * 256))
    assert colour_spikes(h_real.sum(0), h_real.sum(0)) == []  # a set has no spike against itself
    assert sorted(images_with_bin(h_fake, 1, 15, 3).tolist()) == [5, 6, 7]
    planted = np.zeros((3, 3, 4, 4))
    planted[1, :, 0, 0] = 0.61
    assert images_with_bin(colour_histograms(planted), 1, 15, 5).tolist() == [1]  # images without it are left out


# --- MS-SSIM -----------------------------------------------------------------------------------

def test_ms_ssim_of_identical_images_is_one_and_falls_with_noise():
    torch.manual_seed(0)
    a = torch.rand(3, 3, 64, 64)
    assert torch.allclose(ms_ssim(a, a), torch.ones(3), atol=1e-6)
    scores = [ms_ssim(a, (a + s * torch.randn_like(a)).clamp(0, 1)) for s in (0.05, 0.15, 0.4)]
    assert (scores[0] < 1).all() and (scores[1] < scores[0]).all() and (scores[2] < scores[1]).all()
    assert ms_ssim(a.double(), a.double()).dtype == torch.float64
    assert torch.allclose(ms_ssim(a, a.flip(0), batch_size=1), ms_ssim(a, a.flip(0)), atol=1e-6)


def test_ms_ssim_scales_for_small_images_renormalise_the_weights():
    assert [ms_ssim_scales(s) for s in (10, 11, 21, 32, 41, 64, 81, 160, 161, 256)] == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    torch.manual_seed(1)
    a = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    b = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    two = tuple(w / (MS_SSIM_WEIGHTS[0] + MS_SSIM_WEIGHTS[1]) for w in MS_SSIM_WEIGHTS[:2])
    torch.testing.assert_close(ms_ssim(a, b), ms_ssim(a, b, weights=two), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="3 scales need a side of at least 41"):
        ms_ssim(a, b, weights=(0.2, 0.3, 0.5))


def gaussian_window(size, sigma, channels=3):
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).view(1, 1, 1, -1).repeat(channels, 1, 1, 1)  # its shape: [C, 1, 1, size]


def test_ms_ssim_equals_pytorch_msssim():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    torch.manual_seed(0)
    a = torch.rand(2, 3, 161, 161, dtype=torch.float64)  # five scales (its minimum), odd sides padded when pooled
    b = (a + 0.15 * torch.randn_like(a)).clamp(0, 1)
    ref32 = pytorch_msssim.ms_ssim(a.float(), b.float(), data_range=1.0, size_average=False)
    torch.testing.assert_close(ms_ssim(a.float(), b.float()), ref32, rtol=1e-5, atol=1e-6)
    # in float64 (it builds its window in float32 unless given one: pass the float64 gaussian)
    ref = pytorch_msssim.ms_ssim(a, b, data_range=1.0, size_average=False, win=gaussian_window(11, 1.5))
    torch.testing.assert_close(ms_ssim(a, b), ref, rtol=1e-10, atol=1e-12)
    # fewer scales through its `weights`, a smaller window, on 64 px images
    small_a, small_b = a[:, :, :64, :64], b[:, :, :64, :64]
    weights = (0.2, 0.3, 0.5)
    ref = pytorch_msssim.ms_ssim(small_a, small_b, data_range=1.0, size_average=False, win=gaussian_window(3, 1.5),
                                 weights=weights)
    torch.testing.assert_close(ms_ssim(small_a, small_b, win_size=3, weights=weights), ref, rtol=1e-10, atol=1e-12)


def test_distinct_pairs_are_distinct_and_never_self_pairs():
    i, j = distinct_pairs(50, 10_000)  # more than there are: all 1225 of them
    ti, tj = np.triu_indices(50, 1)
    np.testing.assert_array_equal(i, ti)
    np.testing.assert_array_equal(j, tj)
    i, j = distinct_pairs(50_000, 500, seed=3)
    assert (i < j).all() and (j < 50_000).all() and len(set(zip(i.tolist(), j.tolist()))) == 500
    assert distinct_pairs(50_000, 500, seed=3)[0].tolist() == i.tolist()  # deterministic from the seed


def test_ms_ssim_diversity_detects_mode_collapse():
    from ganscale.toyworld.scenes import render_batch

    images, _, _ = render_batch(range(60))
    collapsed = images[:3].repeat(20, 1, 1, 1)  # three images over and over
    diverse, diverse_std = ms_ssim_diversity(images, pairs=100)
    mode_collapse, _ = ms_ssim_diversity(collapsed, pairs=100, batch_size=32)
    assert 0 < diverse < 1 and diverse_std > 0
    assert mode_collapse > diverse + 0.2
    one_image = images[:1].repeat(5, 1, 1, 1)
    assert ms_ssim_diversity(one_image, pairs=100) == pytest.approx((1.0, 0.0), abs=1e-6)
