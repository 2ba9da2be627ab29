"""Metrics over images [B, 3, H, W] in [0, 1]: sharpness, colour histograms and their spikes
(seed 000), MS-SSIM and the MS-SSIM diversity of a set (seed 001's mode-collapse signal).

Histograms are kept per image (counts), so they sum to a dataset's histogram across workers and
the images that contain a colour spike can be found afterwards.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 gray
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def _numpy(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float64)


def _gray(x: np.ndarray) -> np.ndarray:
    return np.tensordot(np.asarray(LUMA), x, axes=([0], [1]))  # [B, H, W]


def sharpness(images) -> np.ndarray:
    """Mean gradient magnitude per image [B]: gray in 0..255, central differences along y and x
    (np.gradient), mean over pixels of sqrt(gx^2 + gy^2). 0 for a flat image; blur lowers it."""
    gray = _gray(_numpy(images)) * 255.0
    gy, gx = np.gradient(gray, axis=(1, 2))
    return np.sqrt(gx ** 2 + gy ** 2).mean((1, 2))


def colour_histograms(images, bins: int = 25) -> np.ndarray:
    """Pixel counts per image [B, 4, bins] of R, G, B and gray over [0, 1] (the last bin includes 1)."""
    x = _numpy(images)
    channels = np.concatenate([x, _gray(x)[:, None]], axis=1)  # [B, 4, H, W]
    index = np.clip((channels * bins).astype(np.int64), 0, bins - 1).reshape(len(x), 4, -1)
    offsets = (np.arange(len(x))[:, None] * 4 + np.arange(4)[None, :])[:, :, None] * bins
    return np.bincount((index + offsets).ravel(), minlength=len(x) * 4 * bins).reshape(len(x), 4, bins)


def histogram_kl(p_counts, q_counts, smoothing: float = 0.5) -> float:
    """KL(p || q) of two histograms after adding `smoothing` to every bin and normalising
    (equal to scipy.stats.entropy of the smoothed histograms)."""
    p = np.asarray(p_counts, dtype=np.float64) + smoothing
    q = np.asarray(q_counts, dtype=np.float64) + smoothing
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def colour_spikes(real_counts, fake_counts, min_ratio: float = 2.0, min_share: float = 0.005,
                  smoothing: float = 0.5) -> list[dict]:
    """Bins [4, bins] where the generated set has at least `min_ratio` times the real set's share
    of pixels and at least `min_share` of its own pixels: colours a generator has and the real set
    lacks. Sorted by ratio, largest first. Channels 0..3 = R, G, B, gray."""
    real = np.asarray(real_counts, dtype=np.float64) + smoothing
    fake = np.asarray(fake_counts, dtype=np.float64) + smoothing
    real_share = real / real.sum(1, keepdims=True)
    fake_share = fake / fake.sum(1, keepdims=True)
    ratio = fake_share / real_share
    bins = real.shape[1]
    found = [{"channel": int(c), "bin": int(b), "low": b / bins, "high": (b + 1) / bins,
              "fake_share": float(fake_share[c, b]), "real_share": float(real_share[c, b]), "ratio": float(ratio[c, b])}
             for c, b in zip(*np.nonzero((ratio >= min_ratio) & (fake_share >= min_share)))]
    return sorted(found, key=lambda s: -s["ratio"])


def images_with_bin(per_image_counts, channel: int, bin: int, top: int) -> np.ndarray:
    """Indices of the `top` images with the largest share of their pixels in (channel, bin)."""
    counts = np.asarray(per_image_counts, dtype=np.float64)
    share = counts[:, channel, bin] / counts[:, channel].sum(1)
    return np.argsort(-share, kind="stable")[:top]


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_and_cs(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, data_range: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel [B, C]: mean SSIM and mean contrast-structure term (valid filtering)."""
    channels = a.shape[1]
    wy = window.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    wx = window.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, wy, groups=channels), wx, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    ssim = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1) * cs
    return ssim.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ms_ssim_scales(size: int, win_size: int = 11) -> int:
    """How many of the 5 scales fit an image side: each scale halves it and the window must fit."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and size // 2 ** scales >= win_size:
        scales += 1
    return scales


def ms_ssim(a, b, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
            weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) of image pairs a[i], b[i] [B, 3, H, W] -> [B] (mean over
    channels), as pytorch-msssim computes it. Images too small for the 5 standard scales (under
    176 px) use the first `ms_ssim_scales(side)` weights, renormalised to sum to 1."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float().to(torch.as_tensor(a).device)
    if weights is None:
        n = ms_ssim_scales(min(a.shape[-2:]), win_size)
        weights = tuple(w / sum(MS_SSIM_WEIGHTS[:n]) for w in MS_SSIM_WEIGHTS[:n])
    window = _gaussian_window(win_size, sigma, a.device, a.dtype)
    terms = []
    for level in range(len(weights)):
        ssim, cs = _ssim_and_cs(a, b, window, data_range)
        if level < len(weights) - 1:
            terms.append(torch.relu(cs))
            padding = [s % 2 for s in a.shape[2:]]
            a = F.avg_pool2d(a, 2, padding=padding)
            b = F.avg_pool2d(b, 2, padding=padding)
    terms.append(torch.relu(ssim))
    stacked = torch.stack(terms)  # [levels, B, C]
    w = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device).view(-1, 1, 1)
    return torch.prod(stacked ** w, dim=0).mean(1)


def ms_ssim_diversity(images, pairs: int = 500, seed: int = 0) -> tuple[float, float]:
    """Mean and std of MS-SSIM over random pairs of distinct images of one set: higher means less
    diverse (the mode-collapse signal of Odena et al. 2017, seed 001)."""
    images = torch.as_tensor(images)
    n = len(images)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n
    scores = ms_ssim(images[i], images[j]).double().cpu().numpy()
    return float(scores.mean()), float(scores.std())
