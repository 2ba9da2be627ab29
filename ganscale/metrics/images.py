"""Metrics over images [B, 3, H, W] in [0, 1] (numpy or torch): sharpness, colour histograms and
their spikes (seed 000, sections 4.2, 4.3 and 6.1), MS-SSIM and the MS-SSIM diversity of a set
(seed 001's mode-collapse signal).

Histograms are kept per image (counts), so they sum to a dataset's histogram across workers and
the images that contain a colour spike can be found afterwards.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as PIL's convert("L")
CHANNELS = ("red", "green", "blue", "gray")
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def _numpy(images) -> np.ndarray:
    """The images as a numpy array [B, C, H, W] in their own floating dtype (no float64 copy)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        images = (images if images.is_floating_point() and images.dtype != torch.bfloat16 else images.float()).numpy()
    x = np.asarray(images)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images: expected [B, 3, H, W] (or [B, 1, H, W]), got shape {x.shape}")
    return x


def _gray(x: np.ndarray) -> np.ndarray:
    """Gray [B, H, W] float64: ITU-R BT.601 luma of RGB (the channel itself for one channel)."""
    if x.shape[1] == 1:
        return x[:, 0].astype(np.float64)
    gray = LUMA[0] * x[:, 0].astype(np.float64)
    gray += LUMA[1] * x[:, 1].astype(np.float64)
    gray += LUMA[2] * x[:, 2].astype(np.float64)
    return gray


# --- sharpness ---------------------------------------------------------------------------------

def sharpness(images) -> np.ndarray:
    """Mean image sharpness per image [B] (float64), from the directional gradients along x and y
    (seed 000, 4.2), the common "average gradient magnitude" recipe:

        gray = 255 * (0.299 R + 0.587 G + 0.114 B)          (ITU-R BT.601, in 0..255, not rounded)
        gy, gx = np.gradient(gray)                           (central differences inside, one-sided
                                                              at the borders, per pixel)
        sharpness = mean over pixels of sqrt(gx^2 + gy^2)

    0 for a flat image; a ramp rising 255/(W-1) per pixel gives 255/(W-1); blur lowers it. (The
    recipe on PIL images rounds gray to integers first; this one keeps it exact. Images under
    2 px on a side have no gradient: 0.)"""
    gray = _gray(_numpy(images)) * 255.0
    if min(gray.shape[1:]) < 2:
        return np.zeros(len(gray))
    gy, gx = np.gradient(gray, axis=(1, 2))
    return np.sqrt(gx * gx + gy * gy).mean((1, 2))


# --- colour histograms -------------------------------------------------------------------------

def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each value in `bins` equal bins over [0, 1], as np.histogram(values, bins, (0, 1))
    assigns them (edges from np.linspace, last bin closed); values outside [0, 1] go to the end bins."""
    v = values.astype(np.float64, copy=False)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.floor(v * bins), 0, bins - 1).astype(np.intp)
    index -= (v < edges[index]) & (index > 0)  # the float product can land one bin off: fix it by the edges
    index += (v >= edges[index + 1]) & (index < bins - 1)
    return index


def colour_histograms(images, bins: int = 25) -> np.ndarray:
    """Pixel counts per image [B, 4, bins] (int64) of R, G, B and gray (ITU-R BT.601 luma) in `bins`
    equal bins over [0, 1], binned as np.histogram(channel, bins, range=(0, 1)) bins them (the last
    bin includes 1). Values outside [0, 1] are counted in the end bins, so every image's counts sum
    to H x W per channel; NaN is refused. Summed over images: the dataset histogram of seed 000 (4.3)."""
    x = _numpy(images)
    if x.shape[1] != 3:
        raise ValueError(f"colour_histograms: expected RGB images [B, 3, H, W], got shape {x.shape}")
    if bins < 1:
        raise ValueError("colour_histograms: bins must be at least 1")
    b = len(x)
    out = np.empty((b, 4, bins), dtype=np.int64)
    offsets = (np.arange(b, dtype=np.intp) * bins)[:, None]
    for c in range(4):
        channel = (x[:, c] if c < 3 else _gray(x)).reshape(b, -1)
        if np.isnan(channel).any():
            raise ValueError(f"colour_histograms: images contain NaN ({CHANNELS[c]} channel)")
        index = _bin_index(channel, bins) + offsets
        out[:, c] = np.bincount(index.ravel(), minlength=b * bins).reshape(b, bins)
    return out


def sharpness_torch(images: torch.Tensor) -> torch.Tensor:
    """`sharpness` computed by torch where the images are (a GPU: the images stay there), float64
    [B] on the images' device. The same recipe in the same float64 arithmetic (torch.gradient
    is np.gradient's rule); only the order of the final mean's sum differs: equal to `sharpness`
    to float64 rounding."""
    gray = _gray_torch(_checked_torch(images)) * 255.0
    if min(gray.shape[1:]) < 2:
        return torch.zeros(len(gray), dtype=torch.float64, device=gray.device)
    gy, gx = torch.gradient(gray, dim=(1, 2))
    return torch.sqrt(gx * gx + gy * gy).mean((1, 2))


def colour_histograms_torch(images: torch.Tensor, bins: int = 25) -> torch.Tensor:
    """`colour_histograms` computed by torch where the images are: the same counts exactly (same
    float64 binning against numpy's edges), int64 [B, 4, bins] on the images' device."""
    x = _checked_torch(images)
    if x.shape[1] != 3:
        raise ValueError(f"colour_histograms: expected RGB images [B, 3, H, W], got shape {tuple(x.shape)}")
    if bins < 1:
        raise ValueError("colour_histograms: bins must be at least 1")
    b = len(x)
    edges = torch.as_tensor(np.linspace(0.0, 1.0, bins + 1), device=x.device)  # numpy's edges, bit for bit
    channels = torch.stack([x[:, 0].double(), x[:, 1].double(), x[:, 2].double(), _gray_torch(x)], 1).reshape(b, 4, -1)
    if torch.isnan(channels).any():
        raise ValueError("colour_histograms: images contain NaN")
    index = torch.clamp(torch.floor(channels * bins), 0, bins - 1).long()
    index -= ((channels < edges[index]) & (index > 0)).long()
    index += ((channels >= edges[index + 1]) & (index < bins - 1)).long()
    index += torch.arange(b * 4, device=x.device).view(b, 4, 1) * bins
    return torch.bincount(index.ravel(), minlength=b * 4 * bins).view(b, 4, bins)


def _checked_torch(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected a tensor [B, 3, H, W] (or [B, 1, H, W]), got {getattr(images, 'shape', type(images))}")
    return images if images.is_floating_point() and images.dtype != torch.bfloat16 else images.float()


def _gray_torch(x: torch.Tensor) -> torch.Tensor:
    """`_gray` in torch: float64 [B, H, W], the same sum in the same order."""
    if x.shape[1] == 1:
        return x[:, 0].double()
    gray = LUMA[0] * x[:, 0].double()
    gray += LUMA[1] * x[:, 1].double()
    gray += LUMA[2] * x[:, 2].double()
    return gray


def histogram_kl(p_counts, q_counts, smoothing: float = 0.5):
    """KL(p || q) of two histograms along their last axis, after adding `smoothing` to every bin
    and normalising: scipy.stats.entropy(p + smoothing, q + smoothing). The pseudo-count keeps the
    divergence finite where q has an empty bin. A float for 1-d histograms, an array for stacks
    (e.g. [4, bins] gives the KL of R, G, B and gray)."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histogram_kl: shapes differ ({p.shape} and {q.shape})")
    if (p < 0).any() or (q < 0).any() or smoothing < 0:
        raise ValueError("histogram_kl: counts and smoothing must be non-negative")
    p, q = p + smoothing, q + smoothing
    p = p / p.sum(-1, keepdims=True)
    q = q / q.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    kl = terms.sum(-1)
    return float(kl) if kl.ndim == 0 else kl


def colour_spikes(real_counts, fake_counts, min_ratio: float = 2.0, min_share: float = 0.005,
                  smoothing: float = 0.5) -> list[dict]:
    """Colour spikes (seed 000, 6.1): bins where a generated set has far more of its pixels than the
    real set, from dataset histograms [4, bins] (channels R, G, B, gray; e.g. the sums of
    `colour_histograms`). A bin is a spike when the generated share of that channel's pixels is at
    least `min_share` and at least `min_ratio` times the real share; the ratio is taken after adding
    `smoothing` to every bin of both histograms, so a bin the real set never uses has a finite ratio.

    Returns dicts sorted by ratio, largest first: channel (0..3), bin, low, high (the bin's range in
    [0, 1]), fake_share and real_share (unsmoothed shares of the channel's pixels) and ratio."""
    real = np.asarray(real_counts, dtype=np.float64)
    fake = np.asarray(fake_counts, dtype=np.float64)
    if real.shape != fake.shape or real.ndim != 2:
        raise ValueError(f"colour_spikes: expected two [channels, bins] histograms, got {real.shape} and {fake.shape}")
    bins = real.shape[1]
    real_share = real / np.maximum(real.sum(1, keepdims=True), 1)
    fake_share = fake / np.maximum(fake.sum(1, keepdims=True), 1)
    smoothed_real = (real + smoothing) / (real + smoothing).sum(1, keepdims=True)
    smoothed_fake = (fake + smoothing) / (fake + smoothing).sum(1, keepdims=True)
    ratio = smoothed_fake / smoothed_real
    found = [{"channel": int(c), "bin": int(b), "low": b / bins, "high": (b + 1) / bins,
              "fake_share": float(fake_share[c, b]), "real_share": float(real_share[c, b]),
              "ratio": float(ratio[c, b])}
             for c, b in zip(*np.nonzero((ratio >= min_ratio) & (fake_share >= min_share)))]
    return sorted(found, key=lambda s: (-s["ratio"], s["channel"], s["bin"]))


def images_with_bin(per_image_counts, channel: int, bin: int, top: int) -> np.ndarray:
    """Indices of (at most) the `top` images with the largest share of their pixels in (channel,
    bin) of per-image histograms [B, 4, bins], largest first (ties in image order); images with no
    pixel in the bin are left out. With a spike from `colour_spikes`: the images that make it."""
    counts = np.asarray(per_image_counts, dtype=np.float64)
    if counts.ndim != 3:
        raise ValueError(f"images_with_bin: expected per-image histograms [B, channels, bins], got {counts.shape}")
    share = counts[:, channel, bin] / np.maximum(counts[:, channel].sum(1), 1)
    order = np.argsort(-share, kind="stable")[:top]
    return order[share[order] > 0]


# --- MS-SSIM -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _without_onednn():
    """torch.backends.mkldnn.enabled off inside, its value restored after (the flag alone: the
    backend's own `flags()` context also resets its TF32 and precision settings)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_and_cs(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, data_range: float,
                 k: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel [B, C]: mean SSIM and mean contrast-structure term, filtered with the
    separable gaussian window without padding ('valid'), as pytorch-msssim and Wang et al. The five
    maps to blur go through one single-channel convolution per direction."""
    n, channels, h, w = a.shape
    stack = torch.cat([a, b, a * a, b * b, a * b]).reshape(5 * n * channels, 1, h, w)
    blurred = F.conv2d(F.conv2d(stack, window.view(1, 1, -1, 1)), window.view(1, 1, 1, -1))
    mu_a, mu_b, aa, bb, ab = blurred.reshape(5, n, channels, *blurred.shape[2:])
    c1, c2 = (k[0] * data_range) ** 2, (k[1] * data_range) ** 2
    var_a = aa - mu_a ** 2
    var_b = bb - mu_b ** 2
    cov = ab - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    ssim = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1) * cs
    return ssim.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def _side_at_scale(side: int, scale: int) -> int:
    for _ in range(scale):  # 2x2 average pooling, odd sides padded: ceil(side / 2)
        side = (side + 1) // 2
    return side


def ms_ssim_scales(size: int, win_size: int = 11, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many scales fit an image side: scale s has side ceil(side / 2^s), and the window must fit
    it. 5 scales from 161 px on with the 11 px window (pytorch-msssim asks for more than 160), 4 from
    81, 3 from 41, 2 from 21, 1 from 11."""
    scales = 0
    while scales < max_scales and _side_at_scale(size, scales) >= win_size:
        scales += 1
    return scales


def ms_ssim(a, b, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
            weights: tuple[float, ...] | None = None, k: tuple[float, float] = (0.01, 0.03),
            batch_size: int | None = 256) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) of image pairs a[i], b[i] [B, C, H, W] -> [B], the mean of
    the per-channel MS-SSIM, computed in torch on a's device (a tensor on that device comes back).
    Same computation as pytorch-msssim's ms_ssim: gaussian window `win_size` (11), `sigma` 1.5,
    valid filtering, contrast-structure terms of the first scales and the SSIM of the last, each
    clipped at 0 and raised to its weight, 2x2 average pooling between scales.

    `weights` default: the standard five (0.0448, 0.2856, 0.3001, 0.2363, 0.1333; they sum to
    1.0001 as published and are used as they are), which need a side of at least 161 px. Smaller
    images use as many scales as fit (`ms_ssim_scales`: 4 from 81 px, 3 from 41 px (64 px), 2 from
    21 px (32 px), 1 (plain SSIM) from 11 px), with the first weights renormalised to sum to 1. Pass
    `weights` to choose (they must fit). Floating inputs keep their dtype (float64 stays float64),
    others become float32. Pairs are processed `batch_size` at a time to bound memory."""
    a = torch.as_tensor(a)
    b = torch.as_tensor(b).to(a.device)
    if not a.is_floating_point():
        a = a.float()
    b = b.to(a.dtype)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ms_ssim: expected two image batches [B, C, H, W] of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    side = min(a.shape[-2:])
    fit = ms_ssim_scales(side, win_size)
    if weights is None:
        if fit == 0:
            raise ValueError(f"ms_ssim: images of {side} px are smaller than the {win_size} px window")
        weights = MS_SSIM_WEIGHTS if fit == len(MS_SSIM_WEIGHTS) else tuple(
            w / sum(MS_SSIM_WEIGHTS[:fit]) for w in MS_SSIM_WEIGHTS[:fit])
    elif ms_ssim_scales(side, win_size, len(weights)) < len(weights):
        raise ValueError(f"ms_ssim: {len(weights)} scales need a side of at least "
                         f"{win_size * 2 ** (len(weights) - 1) - 2 ** (len(weights) - 1) + 1} px, got {side}")
    window = _gaussian_window(win_size, sigma, a.device, a.dtype)
    w = torch.as_tensor(weights, dtype=a.dtype, device=a.device).view(-1, 1, 1)
    step = batch_size or max(len(a), 1)
    # oneDNN's CPU convolutions cost a fixed ~10 ms per call on small inputs (100x the plain kernel, worse
    # on a loaded machine) and were no faster on large ones here: off for this computation on the CPU
    with _without_onednn() if a.device.type == "cpu" else contextlib.nullcontext():
        out = [_ms_ssim_batch(a[i:i + step], b[i:i + step], window, w, data_range, k) for i in range(0, len(a), step)]
    return torch.cat(out) if out else torch.zeros(0, dtype=a.dtype, device=a.device)


def _ms_ssim_batch(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, w: torch.Tensor, data_range: float,
                   k: tuple[float, float]) -> torch.Tensor:
    terms = []
    for level in range(len(w)):
        ssim, cs = _ssim_and_cs(x, y, window, data_range, k)
        if level < len(w) - 1:
            terms.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, 2, padding=padding)
            y = F.avg_pool2d(y, 2, padding=padding)
    terms.append(torch.relu(ssim))
    return torch.prod(torch.stack(terms) ** w, dim=0).mean(1)  # [levels, B, C] -> [B]


def distinct_pairs(n: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`pairs` distinct unordered pairs (i < j) of n items drawn without replacement, or all
    n(n-1)/2 of them when there are no more; sorted."""
    total = n * (n - 1) // 2
    if total == 0:
        raise ValueError("distinct_pairs: needs at least 2 items")
    rng = np.random.default_rng(seed)
    chosen = np.arange(total) if pairs >= total else np.sort(rng.choice(total, pairs, replace=False))
    # the pair of linear index t in the row-major upper triangle: row i starts at i*n - i(i+1)/2
    i = np.floor((2 * n - 1 - np.sqrt((2 * n - 1) ** 2 - 8 * chosen.astype(np.float64))) / 2).astype(np.int64)
    start = lambda r: r * n - r * (r + 1) // 2  # noqa: E731
    i -= start(i) > chosen  # exact integer fix-up of the float estimate
    i += start(i + 1) <= chosen
    j = chosen - start(i) + i + 1
    return i, j


def ms_ssim_diversity(images, pairs: int = 500, seed: int = 0, batch_size: int = 256,
                      **ms_ssim_args) -> tuple[float, float]:
    """Mean and std (ddof=0) of MS-SSIM over `pairs` random distinct pairs of different images of
    one set (self-pairs excluded; all pairs when the set has no more than `pairs`): higher means
    less diverse, the mode-collapse signal of seed 001 (Odena et al. 2017). Runs on the images'
    device; other arguments go to `ms_ssim`."""
    images = torch.as_tensor(images)
    i, j = distinct_pairs(len(images), pairs, seed)
    scores = []
    for start in range(0, len(i), batch_size):
        a = torch.as_tensor(i[start:start + batch_size], device=images.device)
        b = torch.as_tensor(j[start:start + batch_size], device=images.device)
        scores.append(ms_ssim(images[a], images[b], batch_size=None, **ms_ssim_args).double().cpu().numpy())
    values = np.concatenate(scores)
    return float(values.mean()), float(values.std())
