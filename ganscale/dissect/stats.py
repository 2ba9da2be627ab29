"""Unit statistics of GAN dissection as mergeable partial results (pure functions of tensors).

Featuremaps [B, U, h, w] are upsampled (bilinear) to the segmentation's [H, W] first, as gandissect
does. Three passes, each a sum over chunks of samples, so any split across workers merges to the
same numbers as one pass:

1. `UnitRange`: per-unit minimum and maximum, and the top-k images by each unit's peak activation.
2. `UnitHistogram`: per-unit histograms over [min, max] -> quantile thresholds (exact to a bin,
   identical however the samples were split).
3. `Contingency`: per (unit, class, candidate threshold) the pixels where the unit is above the
   threshold and the class is present, plus the per-unit and per-class pixel counts -> IoU and the
   information quality ratio (IQR = I(A; S) / H(A, S)) of Bau et al. 2019.

IoU(u, c) = sum over images |A_u & S_c| / |A_u | S_c| (pooled over all images, not averaged).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

HISTOGRAM_BINS = 1024


def upsample(featuremaps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(featuremaps.shape[-2:]) == tuple(size):
        return featuremaps.float()
    return F.interpolate(featuremaps.float(), size=size, mode="bilinear", align_corners=False)


@dataclasses.dataclass
class UnitRange:
    low: np.ndarray  # [U]
    high: np.ndarray  # [U]
    top_values: np.ndarray  # [U, k] peak activation of the top images, descending
    top_ids: np.ndarray  # [U, k] their sample ids (-1: none)

    @classmethod
    def of(cls, maps: torch.Tensor, ids: np.ndarray, k: int) -> "UnitRange":
        """maps: upsampled featuremaps [B, U, H, W] of samples `ids`."""
        flat = maps.flatten(2)
        peaks = flat.amax(2).T.double().cpu().numpy()  # [U, B]
        return cls(flat.amin((0, 2)).double().cpu().numpy(), flat.amax((0, 2)).double().cpu().numpy(),
                   *_top(peaks, np.broadcast_to(np.asarray(ids), peaks.shape), k))

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
class UnitHistogram:
    low: np.ndarray  # [U] range the bins cover (from the merged UnitRange)
    high: np.ndarray
    counts: np.ndarray  # [U, bins] int64

    @classmethod
    def of(cls, maps: torch.Tensor, low: np.ndarray, high: np.ndarray, bins: int = HISTOGRAM_BINS) -> "UnitHistogram":
        units = maps.shape[1]
        lo = torch.as_tensor(np.array(low), dtype=torch.float64, device=maps.device).view(1, -1, 1)
        width = torch.as_tensor(np.maximum(high - low, 1e-12), dtype=torch.float64, device=maps.device).view(1, -1, 1)
        index = ((maps.flatten(2).double() - lo) / width * bins).floor().clamp(0, bins - 1).long()
        index = index + torch.arange(units, device=maps.device).view(1, -1, 1) * bins
        counts = torch.bincount(index.flatten(), minlength=units * bins).view(units, bins)
        return cls(low, high, counts.cpu().numpy().astype(np.int64))

    def merge(self, other: "UnitHistogram") -> "UnitHistogram":
        return UnitHistogram(self.low, self.high, self.counts + other.counts)

    def quantiles(self, levels) -> np.ndarray:
        """[U, L] values below which a fraction `level` of each unit's pixels lie (linear within a bin)."""
        levels = np.atleast_1d(np.asarray(levels, dtype=np.float64))
        bins = self.counts.shape[1]
        cumulative = np.cumsum(self.counts, 1).astype(np.float64)
        total = cumulative[:, -1:]
        target = levels[None, :] * total  # [U, L]
        out = np.empty((len(self.counts), len(levels)))
        for u in range(len(self.counts)):
            b = np.searchsorted(cumulative[u], target[u], side="left").clip(0, bins - 1)
            before = np.where(b > 0, cumulative[u][b - 1], 0.0)
            inside = np.maximum(self.counts[u][b], 1)
            fraction = np.clip((target[u] - before) / inside, 0, 1)
            out[u] = self.low[u] + (b + fraction) / bins * (self.high[u] - self.low[u])
        return out


@dataclasses.dataclass
class Contingency:
    thresholds: np.ndarray  # [U, J]
    unit_area: np.ndarray  # [U, J] pixels above threshold
    class_area: np.ndarray  # [C] pixels of each class
    intersection: np.ndarray  # [U, C, J]
    pixels: int

    @classmethod
    def of(cls, maps: torch.Tensor, segmentation: torch.Tensor, thresholds: np.ndarray, classes: int) -> "Contingency":
        """maps [B, U, H, W] (upsampled), segmentation [B, H, W] class indices."""
        flat = maps.flatten(2)  # [B, U, P]
        onehot = F.one_hot(segmentation.flatten(1).long(), classes).to(flat.dtype)  # [B, P, C]
        t = torch.as_tensor(thresholds, dtype=flat.dtype, device=flat.device)
        areas, inters = [], []
        for j in range(t.shape[1]):
            above = (flat > t[:, j].view(1, -1, 1)).to(flat.dtype)
            areas.append(above.sum((0, 2)))
            inters.append(torch.einsum("bup,bpc->uc", above, onehot))
        return cls(np.asarray(thresholds), torch.stack(areas, 1).double().cpu().numpy(),
                   onehot.sum((0, 1)).double().cpu().numpy(), torch.stack(inters, 2).double().cpu().numpy(),
                   int(flat.shape[0] * flat.shape[2]))

    def merge(self, other: "Contingency") -> "Contingency":
        return Contingency(self.thresholds, self.unit_area + other.unit_area, self.class_area + other.class_area,
                           self.intersection + other.intersection, self.pixels + other.pixels)

    def iou(self) -> np.ndarray:
        """[U, C, J]"""
        union = self.unit_area[:, None, :] + self.class_area[None, :, None] - self.intersection
        return np.where(union > 0, self.intersection / np.maximum(union, 1), 0.0)

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
    candidate that maximises the IQR (the paper's choice). The best class has the highest IoU."""
    iou, iqr = contingency.iou(), contingency.iqr()
    units, classes, _ = iou.shape
    if method == "quantile":
        chosen = np.full((units, classes), quantile_index)
    else:
        chosen = iqr.argmax(2)
    iou_at = np.take_along_axis(iou, chosen[..., None], 2)[..., 0]  # [U, C]
    iqr_at = np.take_along_axis(iqr, chosen[..., None], 2)[..., 0]
    best = iou_at.argmax(1)
    rows = np.arange(units)
    return {"class": best, "iou": iou_at[rows, best], "iqr": iqr_at[rows, best],
            "threshold": contingency.thresholds[rows, chosen[rows, best]], "iou_all": iou_at}
