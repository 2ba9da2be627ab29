"""What the dissect stage works on, as pure functions of the study and of stored statistics: the
generators, the reference dataset of the artifact units, the candidate thresholds, the units that
are switched off and on and those shown in the report; and the interventions' results table built
from the workers' answers. No store, no Ray, no models."""

from __future__ import annotations

import numpy as np

PANEL_UNITS = 12  # units shown in the report per layer
# Candidate thresholds for the IQR search: each unit's quantiles at these levels, the top 0.1% to
# the top 90% of its pixels, log-spaced (gandissect: 100 levels, logspace(-3, 0)).
CANDIDATE_LEVELS = tuple(sorted(set(np.round(1 - np.logspace(-3, np.log10(0.9), 48), 6))))


def candidate_levels(quantile: float) -> list[float]:
    return sorted(set(CANDIDATE_LEVELS) | {round(quantile, 6)})


def top_units(iou_all: np.ndarray, cls: int, k: int) -> np.ndarray:
    """The k units with the highest IoU for class `cls` (ties: lower unit first)."""
    return np.argsort(-iou_all[:, cls], kind="stable")[:k]


def panel_units(label: np.ndarray, iou: np.ndarray, n: int) -> list[int]:
    """Units for the report: the best unit of each concept first (by IoU), then the rest by IoU."""
    order = [int(u) for u in np.argsort(-iou, kind="stable")]
    best: dict[int, int] = {}
    for u in order:
        best.setdefault(int(label[u]), u)
    first = sorted(best.values(), key=lambda u: -iou[u])
    return (first + [u for u in order if u not in first])[:n]


def random_units(n_units: int, exclude, seed: int) -> np.ndarray:
    """As many units as `exclude` holds, drawn at random (seeded) from the others: the baseline that
    says whether ablating a class's top units does more than ablating any units."""
    exclude = np.asarray(exclude, dtype=np.int64)
    others = np.setdiff1d(np.arange(n_units), exclude)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(others, size=min(len(exclude), len(others)), replace=False))


def intervention_units(settings, iou_all: np.ndarray, high: np.ndarray,
                       class_mean: np.ndarray) -> tuple[list[int], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """(classes with an interpretable unit, {class: its top-k units}, {class: the values those units
    get when inserted}) for the study's `dissect` settings: `insertion` quantile takes each unit's
    quantile value `high`, class_mean its mean activation where the class is."""
    classes = [c for c in range(iou_all.shape[1]) if iou_all[:, c].max() > settings.iou_min]
    unit_sets = {c: top_units(iou_all, c, settings.top_k) for c in classes}
    inserted = {c: high[unit_sets[c]] if settings.insertion == "quantile" else class_mean[unit_sets[c], c]
                for c in classes}
    return classes, unit_sets, inserted


def intervention_results(labels: dict, class_names: list[str], classes: list[int], unit_sets: dict,
                         inserted: dict, iou_all: np.ndarray, effects: list[dict]) -> dict:
    """The layer's results (attrs.results but the artifacts) from the `class_effects` answers, one
    per class of `classes`; each switch effect gets its units' IoUs and inserted values."""
    results = {"labels": labels, "interventions": {}, "insertion_maps": {}, "downstream": {}}
    for c, res in zip(classes, effects):
        res["effect"]["ious"] = iou_all[unit_sets[c], c].tolist()
        res["effect"]["inserted_values"] = inserted[c].tolist()
        results["interventions"][class_names[c]] = res["effect"]
        results["insertion_maps"][class_names[c]] = res["insertion_map"]
        results["downstream"][class_names[c]] = res["downstream"]
    return results
