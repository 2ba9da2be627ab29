"""Unit statistics of GAN dissection as mergeable partial results (pure functions of tensors).

A layer's featuremaps [B, U, h, w] are upsampled (bilinear, as gandissect) to the statistics
resolution [S, S'] of the segmentation (the segmenter's output, subsampled to at most
`dissect.stats_side` pixels a side, as gandissect's `downsample`). Three passes, each a sum over
chunks of samples, so any split of the samples across workers and chunks merges to the same
numbers, bit for bit, as one pass (all counts are int64):

1. `UnitRange`: per-unit minimum and maximum, and the top-k images by each unit's peak activation.
2. `UnitHistogram`: per-unit histograms of 1024 bins over [min, max] -> quantiles (exact to a
   bin, linear inside it), used as the top-quantile threshold and as candidate thresholds.
3. `Contingency`: per (unit, class, candidate threshold) the pixels where the unit is above the
   threshold and the class is present, the per-(unit, threshold) and per-class pixel counts ->
   IoU and the information quality ratio IQR = I(A; S) / H(A, S) of Bau et al. 2019.

IoU(u, c) = sum over images |A_u & S_c| / sum over images |A_u | S_c| (pooled, not averaged).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ganscale.partials import ArrayFields
import torch.nn.functional as F

HISTOGRAM_BINS = 1024
BLOCK_ELEMENTS = 1 << 23  # per-unit work is done in blocks of units of about this many values


def upsample(featuremaps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, U, h, w] -> [B, U, *size] float32 (bilinear, align_corners=False)."""
    if tuple(featuremaps.shape[-2:]) == tuple(size):
        return featuremaps.float()
    return F.interpolate(featuremaps.float(), size=tuple(size), mode="bilinear", align_corners=False)


def stats_size(image_size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The statistics resolution: the image size divided by the smallest integer factor that
    brings the longer side to at most `max_side`."""
    h, w = image_size
    factor = max(1, -(-max(h, w) // max_side))
    return -(-h // factor), -(-w // factor)


def subsample_segmentation(segmentation: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, H, W] class map -> [B, *size]: the class at the centre of each block (nearest)."""
    H, W = segmentation.shape[-2:]
    if (H, W) == tuple(size):
        return segmentation
    ys = ((torch.arange(size[0], device=segmentation.device) + 0.5) * H / size[0]).long().clamp(max=H - 1)
    xs = ((torch.arange(size[1], device=segmentation.device) + 0.5) * W / size[1]).long().clamp(max=W - 1)
    return segmentation[:, ys][:, :, xs]


def _unit_blocks(units: int, per_unit: int):
    step = max(1, BLOCK_ELEMENTS // max(1, per_unit))
    for u0 in range(0, units, step):
        yield u0, min(units, u0 + step)


@dataclasses.dataclass
class UnitRange(ArrayFields):
    low: np.ndarray  # [U] float64
    high: np.ndarray  # [U]
    top_values: np.ndarray  # [U, k] peak activation of the top images, descending
    top_ids: np.ndarray  # [U, k] their sample ids (-1: none)

    @classmethod
    def of(cls, maps: torch.Tensor, ids: np.ndarray, k: int) -> "UnitRange":
        """maps: upsampled featuremaps [B, U, H, W] of samples `ids`."""
        flat = maps.flatten(2)
        peaks = flat.amax(2).T.double().cpu().numpy()  # [U, B]
        return cls(flat.amin((0, 2)).double().cpu().numpy(), flat.amax((0, 2)).double().cpu().numpy(),
                   *_top(peaks, np.broadcast_to(np.asarray(ids, dtype=np.int64), peaks.shape), k))

    def merge(self, other: "UnitRange") -> "UnitRange":
        k = self.top_ids.shape[1]
        values, ids = _top(np.concatenate([self.top_values, other.top_values], 1),
                           np.concatenate([self.top_ids, other.top_ids], 1), k)
        return UnitRange(np.minimum(self.low, other.low), np.maximum(self.high, other.high), values, ids)


def _top(values: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row the k largest values (ties: smaller id first), -inf/-1 padded."""
    values = np.where(ids < 0, -np.inf, values)
    order = np.lexsort((ids, -values), axis=1)[:, :k]
    top_v, top_i = np.take_along_axis(values, order, 1), np.take_along_axis(ids, order, 1)
    if top_v.shape[1] < k:
        pad = k - top_v.shape[1]
        top_v = np.pad(top_v, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
    return top_v, np.where(np.isinf(top_v), -1, top_i)


@dataclasses.dataclass
class UnitHistogram(ArrayFields):
    low: np.ndarray  # [U] range the bins cover (from the merged UnitRange)
    high: np.ndarray
    counts: np.ndarray  # [U, bins] int64

    @classmethod
    def of(cls, maps: torch.Tensor, low: np.ndarray, high: np.ndarray, bins: int = HISTOGRAM_BINS) -> "UnitHistogram":
        """maps [B, U, H, W]; values outside [low, high] go to the end bins."""
        units = maps.shape[1]
        low, high = np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
        lo = torch.as_tensor(low, dtype=torch.float32, device=maps.device)
        scale = torch.as_tensor(bins / np.maximum(high - low, 1e-12), dtype=torch.float32, device=maps.device)
        flat = maps.flatten(2)  # [B, U, P]
        counts = torch.zeros(units * bins, dtype=torch.int64, device=maps.device)
        for u0, u1 in _unit_blocks(units, flat.shape[0] * flat.shape[2]):
            x = flat[:, u0:u1]
            index = ((x - lo[u0:u1].view(1, -1, 1)) * scale[u0:u1].view(1, -1, 1)).floor().clamp_(0, bins - 1).long()
            index += torch.arange(u0, u1, device=maps.device).view(1, -1, 1) * bins
            counts += torch.bincount(index.flatten(), minlength=units * bins)
        return cls(low, high, counts.view(units, bins).cpu().numpy())

    def merge(self, other: "UnitHistogram") -> "UnitHistogram":
        return UnitHistogram(self.low, self.high, self.counts + other.counts)

    def quantiles(self, levels) -> np.ndarray:
        """[U, L] values below which a fraction `level` of each unit's pixels lie (linear within a
        bin); non-decreasing in `level` when the levels are sorted."""
        levels = np.atleast_1d(np.asarray(levels, dtype=np.float64))
        bins = self.counts.shape[1]
        cumulative = np.cumsum(self.counts, 1).astype(np.float64)
        target = levels[None, :] * cumulative[:, -1:]  # [U, L]
        out = np.empty((len(self.counts), len(levels)))
        for u in range(len(self.counts)):
            b = np.searchsorted(cumulative[u], target[u], side="left").clip(0, bins - 1)
            before = np.where(b > 0, cumulative[u][b - 1], 0.0)
            inside = np.maximum(self.counts[u][b], 1)
            fraction = np.clip((target[u] - before) / inside, 0, 1)
            out[u] = self.low[u] + (b + fraction) / bins * (self.high[u] - self.low[u])
        return out


@dataclasses.dataclass
class Contingency(ArrayFields):
    thresholds: np.ndarray  # [U, J] candidate thresholds, non-decreasing along J
    unit_area: np.ndarray  # [U, J] int64: pixels with the unit above threshold j
    class_area: np.ndarray  # [C] int64: pixels of each class
    intersection: np.ndarray  # [U, C, J] int64: both
    pixels: int  # pixels counted (images x statistics resolution)
    class_sum: np.ndarray  # [U, C] float64: the unit's activation summed over the pixels of each class

    @classmethod
    def of(cls, maps: torch.Tensor, segmentation: torch.Tensor, thresholds: np.ndarray, classes: int) -> "Contingency":
        """maps [B, U, H, W] (upsampled), segmentation [B, H, W] class indices. A pixel counts as
        above threshold j when its value is > thresholds[u, j]. One bucketize and one bincount per
        unit block: the cost barely grows with the number of thresholds or classes."""
        units, J = thresholds.shape
        flat = maps.flatten(2)  # [B, U, P]
        seg = segmentation.flatten(1).long().to(flat.device)  # [B, P]
        t = torch.as_tensor(np.array(thresholds), dtype=torch.float32, device=flat.device).contiguous()
        cells = classes * (J + 1)
        counts = torch.zeros(units * cells, dtype=torch.int64, device=flat.device)
        class_sum = torch.zeros(units, classes, dtype=torch.float64, device=flat.device)
        seg_key = (seg * (J + 1)).view(1, -1)  # [1, B*P]
        for u0, u1 in _unit_blocks(units, flat.shape[0] * flat.shape[2]):
            x = flat[:, u0:u1].transpose(0, 1).reshape(u1 - u0, -1).contiguous()  # [u, B*P]
            # number of thresholds strictly below each value = how many thresholds it is above
            above = torch.searchsorted(t[u0:u1], x, side="left")
            key = above + seg_key + torch.arange(u0, u1, device=flat.device).view(-1, 1) * cells
            counts += torch.bincount(key.flatten(), minlength=units * cells)
            class_sum[u0:u1].index_add_(1, seg.flatten(), x.double())
        counts = counts.view(units, classes, J + 1).cpu().numpy()
        # above threshold j <=> bucket > j: reverse cumulative sum over buckets j+1..J
        intersection = np.cumsum(counts[:, :, ::-1], 2)[:, :, ::-1][:, :, 1:]
        class_area = np.bincount(seg.flatten().cpu().numpy(), minlength=classes).astype(np.int64)
        return cls(np.asarray(thresholds, dtype=np.float64), intersection.sum(1), class_area,
                   np.ascontiguousarray(intersection), int(seg.numel()), class_sum.cpu().numpy())

    def merge(self, other: "Contingency") -> "Contingency":
        return Contingency(self.thresholds, self.unit_area + other.unit_area, self.class_area + other.class_area,
                           self.intersection + other.intersection, self.pixels + other.pixels,
                           self.class_sum + other.class_sum)

    def class_mean(self) -> np.ndarray:
        """[U, C] each unit's mean activation where each class is (0 for a class never seen): the
        other insertion value of Bau et al."""
        return np.where(self.class_area > 0, self.class_sum / np.maximum(self.class_area, 1), 0.0)

    def iou(self) -> np.ndarray:
        """[U, C, J]"""
        inter = self.intersection.astype(np.float64)
        union = self.unit_area[:, None, :] + self.class_area[None, :, None] - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)

    def iqr(self) -> np.ndarray:
        """[U, C, J] information quality ratio I(A; S) / H(A, S) of the unit's mask A and class mask S."""
        n = float(self.pixels)
        p11 = self.intersection / n
        p10 = self.unit_area[:, None, :] / n - p11
        p01 = self.class_area[None, :, None] / n - p11
        p00 = 1 - p11 - p10 - p01
        pa1, ps1 = p11 + p10, p11 + p01
        cells = [(p11, pa1, ps1), (p10, pa1, 1 - ps1), (p01, 1 - pa1, ps1), (p00, 1 - pa1, 1 - ps1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            mutual = sum(np.where(p > 0, p * np.log(p / (pa * ps)), 0.0) for p, pa, ps in cells)
            joint = -sum(np.where(p > 0, p * np.log(p), 0.0) for p, _, _ in cells)
            return np.where(joint > 0, mutual / joint, 0.0)


def label_units(contingency: Contingency, method: str, quantile_index: int) -> dict[str, np.ndarray]:
    """Per unit: the best class, its IoU, threshold and IQR. `method`: "quantile" uses the candidate
    threshold at `quantile_index` for every (unit, class); "iqr" uses, per (unit, class), the
    candidate that maximises the IQR (the paper's choice). The best class has the highest IoU.
    Also `iou_all`/`iqr_all` [U, C] and `threshold_all` [U, C] at the chosen thresholds."""
    iou, iqr = contingency.iou(), contingency.iqr()
    units, classes, _ = iou.shape
    if method == "quantile":
        chosen = np.full((units, classes), quantile_index)
    else:
        chosen = iqr.argmax(2)
    iou_at = np.take_along_axis(iou, chosen[..., None], 2)[..., 0]  # [U, C]
    iqr_at = np.take_along_axis(iqr, chosen[..., None], 2)[..., 0]
    threshold_at = np.take_along_axis(contingency.thresholds, chosen, 1)  # [U, C]
    best = iou_at.argmax(1)
    rows = np.arange(units)
    return {"class": best, "iou": iou_at[rows, best], "iqr": iqr_at[rows, best],
            "threshold": threshold_at[rows, best], "iou_all": iou_at, "iqr_all": iqr_at,
            "threshold_all": threshold_at}


IQR_MIN = 0.01  # gandissect's second condition for an interpretable unit


def _concepts(classes: np.ndarray, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in classes:
        counts[names[int(c)]] = counts.get(names[int(c)], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def layer_summary(label: dict, class_names: list[str], iou_min: float, top: int = 10) -> dict:
    """Per layer: the number of interpretable units (IoU > iou_min), units per concept, distinct
    concepts, and the top units by IoU; also the same counts with gandissect's stricter rule
    (IoU > iou_min and IQR > 0.01), which discounts the units that match a class covering much of
    every image (sky, ground) only because they are active over much of every image."""
    iou, iqr = np.asarray(label["iou"]), np.asarray(label["iqr"])
    interpretable = iou > iou_min
    strict = interpretable & (iqr > IQR_MIN)
    concepts = _concepts(np.asarray(label["class"])[interpretable], class_names)
    concepts_iqr = _concepts(np.asarray(label["class"])[strict], class_names)
    order = np.argsort(-iou, kind="stable")
    best_per_class = {}
    for c, name in enumerate(class_names):
        column = np.asarray(label["iou_all"])[:, c]
        u = int(np.argmax(column))
        best_per_class[name] = {"unit": u, "iou": float(column[u])}
    return {"units": int(len(iou)), "interpretable": int(interpretable.sum()), "concepts": concepts,
            "distinct_concepts": len(concepts), "iou_min": iou_min,
            "interpretable_iqr": int(strict.sum()), "concepts_iqr": concepts_iqr,
            "distinct_concepts_iqr": len(concepts_iqr), "iqr_min": IQR_MIN, "best_unit_per_class": best_per_class,
            "top_units": [{"unit": int(u), "class": class_names[int(label["class"][u])],
                           "iou": float(label["iou"][u]), "iqr": float(label["iqr"][u]),
                           "threshold": float(label["threshold"][u])} for u in order[:top]]}


# --- artifact units -------------------------------------------------------------------------------

def diagonal_frechet(features: np.ndarray, real_mean: np.ndarray, real_var: np.ndarray) -> float:
    """Fréchet distance between diagonal Gaussians: |mu - mu_r|^2 + sum(v + v_r - 2 sqrt(v v_r)),
    mu, v the per-dimension mean and variance (ddof=1) of `features` [n, D]. The artifact units are
    scored on ~100 images of 128-d features, fewer than dimensions: a full covariance is then
    singular and the full Fréchet distance is dominated by its estimation noise; D means and D
    variances are stable at that size."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) < 2:
        raise ValueError(f"diagonal_frechet: needs at least 2 rows, has {len(x)}")
    mu, var = x.mean(0), x.var(0, ddof=1)
    return float(((mu - real_mean) ** 2).sum() + (var + real_var - 2 * np.sqrt(var * real_var)).sum())


def artifact_significance(before: np.ndarray, after_top: np.ndarray, after_random: np.ndarray,
                          real_mean: np.ndarray, real_var: np.ndarray, resamples: int = 1000,
                          seed: int = 0) -> dict:
    """Is ablating the top artifact units a bigger improvement than ablating random units? Features
    [n, D] of the same n held-out images (row i: one seed) as they are and with either set ablated.
    The statistic is improvement(top) - improvement(random) = d(after_random) - d(after_top), d the
    diagonal Fréchet distance to the real features; a paired bootstrap over the images (each
    resample takes the same rows from the three sets) gives its 95% interval and the one-sided
    p-value (share of resamples <= 0, with the +1 correction)."""
    def gap(rows):
        return (diagonal_frechet(after_random[rows], real_mean, real_var)
                - diagonal_frechet(after_top[rows], real_mean, real_var))

    n = len(before)
    rng = np.random.default_rng(seed)
    everything = np.arange(n)
    boot = np.array([gap(rng.integers(0, n, n)) for _ in range(resamples)])
    low, high = np.percentile(boot, [2.5, 97.5])
    p = (1 + int((boot <= 0).sum())) / (resamples + 1)
    return {"difference": gap(everything), "ci95": [float(low), float(high)], "p_value": float(p),
            "resamples": int(resamples), "significant": bool(p < 0.05),
            "test": "paired bootstrap over held-out images of d(random units ablated) - d(top units ablated), "
                    "d the diagonal Fréchet distance; one-sided p (share of resamples <= 0)"}
