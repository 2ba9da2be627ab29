"""Reducing mergeable partial results (counts, sums, histograms) in a tree of Dask tasks, so no task
holds more than `fan_in` partials; the stages pass the scheduler (Dask-on-Ray on a cluster)."""

from __future__ import annotations

from typing import Any, Callable

import dask


def merge_all(parts: list) -> Any:
    """Merge partials that have a .merge(other) method, left to right."""
    out = parts[0]
    for part in parts[1:]:
        out = out.merge(part)
    return out


def tree_reduce(parts: list, combine: Callable[[list], Any] = merge_all, fan_in: int = 8):
    """A delayed merge of delayed (or plain) partials: combine(list of parts) -> one part."""
    while len(parts) > 1:
        parts = [dask.delayed(combine)(parts[i:i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]
