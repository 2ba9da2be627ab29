"""Artifact units (Bau et al. 2019, section 4.3 and table 1), the arithmetic between the workers'
forward passes: which seeds rank the units and which score them, which images each unit is scored
on, which units win and which random units they are compared with, and the results table. Pure
numpy; the stage runs the passes (`DissectWorker.unit_peaks`, `artifact_scores`, `artifact_table`).

The `artifact_samples` seeds are split in halves. Ranking half: each unit's peak activation per
image; for each unit, the `artifact_share` of those images where it peaks highest; its score is
the diagonal Fréchet distance of those images to the real features minus the distance with the
unit ablated alone (the improvement). The `artifact_units` best units are then scored on the
held-out half, against as many random units, on the images where the chosen units are most
active (the paper's table) and on all held-out images."""

from __future__ import annotations

import numpy as np

BLOCK = 32  # units per artifact-ranking task


def split(seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranking half, held-out half) of the artifact seeds."""
    half = len(seeds) // 2
    return seeds[:half], seeds[half:]


def images_per_unit(share: float, n: int) -> int:
    """How many of n images are 'where a unit is most active': the `share` of them, at least 2."""
    return max(2, int(np.ceil(share * n)))


def top_seeds(peaks: np.ndarray, seeds: np.ndarray, per_unit: int) -> list[list[int]]:
    """Per unit (column of peaks [n, U]): the `per_unit` seeds where it peaks highest (ties: first seed)."""
    return [seeds[np.argsort(-peaks[:, u], kind="stable")[:per_unit]].tolist() for u in range(peaks.shape[1])]


def most_active(peaks: np.ndarray, units: list[int], high: np.ndarray, seeds: list[int], share: float) -> np.ndarray:
    """The seeds where any of `units` is most active, activation relative to each unit's high quantile."""
    strength = (peaks[:, units] / np.maximum(np.asarray(high)[units], 1e-12)).max(1)
    return np.asarray(seeds)[np.argsort(-strength, kind="stable")[:images_per_unit(share, len(seeds))]]


def blocks(units: int, size: int = BLOCK) -> list[list[int]]:
    return [list(range(u0, min(units, u0 + size))) for u0 in range(0, units, size)]


def choose(scores: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From per-unit [distance, distance with the unit ablated] scores [U, 2]: (improvement [U],
    the k most improving units, as many random units among the others, sorted)."""
    units = len(scores)
    improvement = scores[:, 0] - scores[:, 1]
    k = min(k, units)
    top = np.argsort(-improvement, kind="stable")[:k]
    others = np.setdiff1d(np.arange(units), top)
    random_units = np.sort(np.random.default_rng(seed).choice(others, size=min(k, len(others)), replace=False))
    return improvement, top, random_units


def results(score: str, scores: np.ndarray, improvement: np.ndarray, top: np.ndarray, random_units: np.ndarray,
            rank_samples: int, per_unit: int, table: dict) -> tuple[dict, dict]:
    """(attrs.results["artifacts"], {array name: (values, dims)}) from the ranking and the held-out
    `table` (`DissectWorker.artifact_table`, its pictures go to the arrays)."""
    table = dict(table)
    pictures = table.pop("pictures")
    out = {"score": score, "k": int(len(top)), "units": top.tolist(), "improvement": improvement[top].tolist(),
           "top_images_distance": scores[top, 0].tolist(), "random_units": random_units.tolist(),
           "rank_samples": int(rank_samples), "images_per_unit": per_unit,
           "units_improving": int((improvement > 0).sum()), **table}
    arrays = {"artifact_before": (scores[:, 0].astype(np.float32), ("unit",)),
              "artifact_after": (scores[:, 1].astype(np.float32), ("unit",)),
              "artifact_images": (pictures, ("switch", "image", "y", "x", "rgb"))}
    return out, arrays
