"""ganscale.metrics: known answers, merged partials, and reference implementations on the same inputs
(torchmetrics for FID/KID/IS, the `prdc` package, pytorch-msssim)."""

import numpy as np
import pytest
import scipy.stats
import torch

from ganscale.metrics import (FeatureMoments, colour_histograms, colour_spikes, frechet_distance,
                              frechet_distance_from_moments, histogram_kl, images_with_bin, inception_score, kid,
                              ms_ssim, ms_ssim_diversity, nearest_neighbours, prdc, sharpness)


def gaussian(n, d, shift=0.0, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(shift, scale, size=(n, d))


class Identity(torch.nn.Module):
    """Feeds features straight into torchmetrics' metrics (its `feature` argument takes a module)."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


# --- Fréchet distance --------------------------------------------------------------------------

def test_frechet_distance_known_answers():
    x = gaussian(2000, 8)
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-8)
    mu1, mu2 = np.arange(4.0), np.arange(4.0) + 0.5
    s1, s2 = np.array([1.0, 2, 3, 4]), np.array([4.0, 1, 2, 9])
    from ganscale.metrics import frechet_distance_from_stats
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)
    # a pure shift of the same sample moves only the mean term
    assert frechet_distance(x, x + 0.3) == pytest.approx(8 * 0.09, rel=1e-9)


def test_frechet_from_merged_chunk_moments_equals_one_array():
    a, b = gaussian(3000, 16, seed=1), gaussian(2500, 16, shift=0.2, seed=2)
    chunks = [FeatureMoments.of(a[i:i + 700]) for i in range(0, len(a), 700)]
    merged = chunks[0]
    for part in reversed(chunks[1:]):  # any order
        merged = merged + part
    whole = FeatureMoments.of(a)
    assert merged.n == 3000
    np.testing.assert_allclose(merged.mean, a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.cov, np.cov(a, rowvar=False), rtol=1e-9, atol=1e-12)
    assert frechet_distance_from_moments(merged, FeatureMoments.of(b)) == pytest.approx(
        frechet_distance_from_moments(whole, FeatureMoments.of(b)), rel=1e-9)


def test_frechet_distance_equals_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = gaussian(1500, 64, seed=3), gaussian(1200, 64, shift=0.1, scale=1.2, seed=4)
    metric = FrechetInceptionDistance(feature=Identity(64), normalize=True)
    metric.set_dtype(torch.float64)
    metric.update(torch.as_tensor(a), real=True)
    metric.update(torch.as_tensor(b), real=False)
    assert frechet_distance(a, b) == pytest.approx(float(metric.compute()), rel=1e-6)


# --- KID, IS ----------------------------------------------------------------------------------

def test_kid_near_zero_for_one_distribution_and_positive_for_a_shift():
    same = kid(gaussian(1000, 32, seed=5), gaussian(1000, 32, seed=6), subsets=20, subset_size=500)
    shifted = kid(gaussian(1000, 32, seed=5), gaussian(1000, 32, shift=0.5, seed=6), subsets=20, subset_size=500)
    assert abs(same[0]) < 3 * same[1] + 1e-3
    assert shifted[0] > 10 * abs(same[0]) and shifted[0] > 0


def test_kid_equals_torchmetrics_on_whole_sets():
    from torchmetrics.image.kid import KernelInceptionDistance

    a, b = gaussian(300, 16, seed=7), gaussian(300, 16, shift=0.3, seed=8)
    metric = KernelInceptionDistance(feature=Identity(16), subsets=1, subset_size=300, normalize=True)
    metric.update(torch.as_tensor(a, dtype=torch.float32), real=True)
    metric.update(torch.as_tensor(b, dtype=torch.float32), real=False)
    ref_mean, _ = metric.compute()
    # one subset of all rows: no randomness left, the unbiased MMD^2 of the two sets
    ours, std = kid(a, b, subsets=1, subset_size=300)
    assert ours == pytest.approx(float(ref_mean), rel=1e-4) and std == 0


def test_inception_score_known_answers_and_torchmetrics():
    from torchmetrics.image.inception import InceptionScore

    k = 10
    one_hot = np.repeat(np.eye(k) * 50, 20, axis=0)  # confident and spread over all classes
    assert inception_score(one_hot, splits=1)[0] == pytest.approx(k, rel=1e-6)
    assert inception_score(np.zeros((200, k)), splits=2) == pytest.approx((1.0, 0.0))
    logits = gaussian(1000, k, scale=3, seed=9)
    metric = InceptionScore(feature=Identity(k), splits=1, normalize=False)
    metric.update(torch.as_tensor(logits))
    ref_mean, _ = metric.compute()
    assert inception_score(logits, splits=1)[0] == pytest.approx(float(ref_mean), rel=1e-5)


# --- precision, recall, density, coverage ---------------------------------------------------

def test_prdc_known_answers_and_the_prdc_package():
    prdc_package = pytest.importorskip("prdc")
    real = gaussian(400, 8, seed=10)
    ours = prdc(real, real.copy(), k=5)
    assert ours["precision"] == 1 and ours["recall"] == 1 and ours["coverage"] == 1
    fake = gaussian(300, 8, shift=0.4, scale=0.8, seed=11)
    for k in (3, 5):
        ref = prdc_package.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
        ours = prdc(real, fake, k=k, block=128)
        for key in ("precision", "recall", "density", "coverage"):
            assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_nearest_neighbours_in_blocks_equal_brute_force():
    x = gaussian(500, 6, seed=12)
    idx, dist = nearest_neighbours(x, x, 4, exclude_self=True, block=64)
    full = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :4], rtol=1e-9)


# --- images ----------------------------------------------------------------------------------

def test_sharpness_orders_flat_blurred_and_sharp_images():
    flat = np.full((1, 3, 32, 32), 0.4)
    checker = np.indices((32, 32)).sum(0) % 2 * np.ones((1, 3, 1, 1))
    blurred = torch.nn.functional.avg_pool2d(torch.as_tensor(checker), 3, 1, 1, count_include_pad=False).numpy()
    values = sharpness(np.concatenate([flat, blurred, checker]))
    assert values[0] == 0 and values[1] < values[2]
    ramp = np.tile(np.linspace(0, 1, 32), (1, 3, 32, 1))  # gray rises 255/31 per pixel along x
    assert sharpness(ramp)[0] == pytest.approx(255 / 31, rel=1e-9)


def test_colour_histograms_count_every_pixel_and_find_a_planted_spike():
    rng = np.random.default_rng(13)
    real = rng.random((40, 3, 16, 16))
    fake = rng.random((40, 3, 16, 16))
    fake[5:8, :, :12, :] = [[[0.3]], [[0.61]], [[0.61]]]  # seed 000's (0.3, 0.6, 0.6) colour in 3 images
    h_real, h_fake = colour_histograms(real), colour_histograms(fake)
    assert h_real.shape == (40, 4, 25) and (h_real.sum(2) == 256).all()
    spikes = colour_spikes(h_real.sum(0), h_fake.sum(0))
    found = {(s["channel"], s["bin"]) for s in spikes}
    assert {(0, 7), (1, 15), (2, 15)} <= found  # 0.3 -> bin 7, 0.61 -> bin 15
    assert sorted(images_with_bin(h_fake, 1, 15, 3).tolist()) == [5, 6, 7]
    p, q = h_fake.sum(0)[3], h_real.sum(0)[3]
    assert histogram_kl(p, q) == pytest.approx(scipy.stats.entropy(p + 0.5, q + 0.5), rel=1e-12)


def test_ms_ssim_known_answers_and_pytorch_msssim():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    torch.manual_seed(0)
    a = torch.rand(3, 3, 192, 192)
    b = (a + 0.15 * torch.randn_like(a)).clamp(0, 1)
    c = (a + 0.4 * torch.randn_like(a)).clamp(0, 1)
    assert torch.allclose(ms_ssim(a, a), torch.ones(3), atol=1e-6)
    ours = ms_ssim(a, b)
    assert (ms_ssim(a, c) < ours).all() and (ours < 1).all()
    ref = pytorch_msssim.ms_ssim(a, b, data_range=1.0, size_average=False)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_ms_ssim_diversity_detects_mode_collapse():
    from ganscale.toyworld.scenes import render_batch

    images, _, _ = render_batch(range(60))
    collapsed = images[:3].repeat(20, 1, 1, 1)  # three images over and over
    diverse, _ = ms_ssim_diversity(images, pairs=100)
    mode_collapse, _ = ms_ssim_diversity(collapsed, pairs=100)
    assert mode_collapse > diverse + 0.2
