"""Mergeable partial results (counts, sums, histograms): the shape they share, and reducing them in
a tree of Dask tasks so no task holds more than `fan_in` partials (the stages pass the scheduler:
Dask-on-Ray on a cluster).

A `Partial` is computed where the data is, merged with others of its kind in any order, and turned
into named arrays and back (as davidbau/dissect's running statistics have `state_dict`), so it can be
stored, sent or compared as plain arrays:

    part.merge(other) -> Partial          the statistics of both inputs together
    part.to_arrays() -> {name: ndarray}   its state as plain arrays (no pickles)
    cls.from_arrays(arrays) -> Partial    the same partial back

`ArrayFields` gives the last two to a dataclass whose fields are arrays or numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import dask
import numpy as np


@runtime_checkable
class Partial(Protocol):
    def merge(self, other: "Partial") -> "Partial": ...

    def to_arrays(self) -> dict[str, np.ndarray]: ...

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Partial": ...


class ArrayFields:
    """to_arrays/from_arrays of a dataclass whose fields are arrays or numbers (numbers come back as
    Python ints or floats)."""

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]):
        values = {}
        for f in dataclasses.fields(cls):
            value = np.asarray(arrays[f.name])
            values[f.name] = value.item() if value.ndim == 0 else value
        return cls(**values)


def merge_all(parts: list) -> Any:
    """Merge partials left to right."""
    out = parts[0]
    for part in parts[1:]:
        out = out.merge(part)
    return out


def tree_reduce(parts: list, combine: Callable[[list], Any] = merge_all, fan_in: int | None = 8):
    """A delayed merge of delayed (or plain) partials: combine(list of parts) -> one part. `fan_in`
    None merges them all in one task, left to right (the order a plain loop adds them in)."""
    fan_in = fan_in or max(1, len(parts))
    while len(parts) > 1:
        parts = [dask.delayed(combine)(parts[i:i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]


def _chunk_partial(of: Callable[[np.ndarray], Any], store: str, storage_options: dict, dataset: str, path: str,
                   start: int, stop: int):
    from ganscale import schema

    group = schema.open_store(store, storage_options, mode="r")[schema.dataset_path(dataset)]
    return of(schema.read_rows(group, path, start, stop))


def reduce_stored(study, root, datasets: list[str], path: str, of: Callable[[np.ndarray], Any],
                  scheduler="threads", fan_in: int | None = 8):
    """`of(rows)` (a Partial) of every stored chunk of the per-sample array `path` of `datasets`,
    read and computed where each task runs, merged in a tree: e.g. the FeatureMoments of a layer's
    activations over every dataset, without ever holding more than one chunk of rows."""
    from ganscale import schema

    parts = []
    for name in datasets:
        parts += [dask.delayed(_chunk_partial)(of, study.store, study.storage_options, name, path, start, stop)
                  for start, stop in schema.row_blocks(root[schema.dataset_path(name)], path)]
    return dask.compute(tree_reduce(parts, fan_in=fan_in), scheduler=scheduler)[0]
