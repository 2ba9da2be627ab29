"""Stage 3, atlas: grid statistics of each layer's UMAP layout, reduced with Dask.

Per layer, grid size G and dataset, every zarr chunk yields a mergeable partial result (cell
counts, per-cell activation sums, per-cell top-1 label counts, the smallest sample ids per cell);
Dask merges them in a tree, on the Ray cluster's workers (Dask-on-Ray) when there is a cluster,
with local threads otherwise. Nothing bigger than one chunk is ever held by a worker.

Written to the store, under atlas/{layer}/g{G}/ (cells are indexed [iy, ix], iy = floor(y * G)):

    counts       int64   [D, G, G]       samples per cell, per dataset (D in the study's order)
    mean         float32 [G, G, C]       mean activation of the cell over all datasets (NaN if empty)
    top_labels   int32   [D, G, G, T]    most frequent top-1 probe labels (-1: none, always for a probe without classes)
    label_counts int64   [D, G, G, T]    how often each of them
    examples     int64   [D, G, G, E]    smallest sample ids in the cell (-1: none)
    kl           float64 [D, D]          KL(p_a || p_b) of the smoothed cell distributions
    kl_cells     float32 [D, D, G, G]    the per-cell terms p_a log(p_a / p_b), summing to kl

Smoothing: every cell gets `atlas.smoothing` pseudo-counts (default 0.5) before normalising, so
empty cells have a small non-zero probability and KL stays finite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

import dask
import numpy as np
from scipy import sparse

from ganscale import schema
from ganscale.partials import ArrayFields, tree_reduce
from ganscale.runtime import dask_scheduler, init_ray
from ganscale.study import Study

log = logging.getLogger("ganscale.atlas")


@dataclasses.dataclass
class CellStats(ArrayFields):
    """Mergeable statistics of samples binned into a G x G grid."""
    counts: np.ndarray  # [G*G] int64
    sums: np.ndarray  # [G*G, C] float64
    labels: np.ndarray  # [G*G, K] int64, top-1 label counts
    examples: np.ndarray  # [G*G, E] int64 smallest sample ids, -1 padded

    def merge(self, other: "CellStats") -> "CellStats":
        both = np.concatenate([self.examples, other.examples], axis=1)
        return CellStats(self.counts + other.counts, self.sums + other.sums, self.labels + other.labels,
                         _smallest_ids(both, self.examples.shape[1]))


def _smallest_ids(ids: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k smallest non-negative ids, ascending, -1 padded."""
    big = np.iinfo(np.int64).max
    keyed = np.where(ids < 0, big, ids)
    keyed.sort(axis=1)
    keyed = keyed[:, :k]
    return np.where(keyed == big, -1, keyed)


def cell_index(xy: np.ndarray, grid: int) -> np.ndarray:
    """Row-major cell of each point of a [0, 1] layout: iy * grid + ix."""
    ij = np.clip(np.floor(np.asarray(xy, dtype=np.float64) * grid).astype(np.int64), 0, grid - 1)
    return ij[:, 1] * grid + ij[:, 0]


def partial_stats(xy: np.ndarray, acts: np.ndarray, logits: np.ndarray, first_id: int, grid: int,
                  n_examples: int) -> CellStats:
    """The statistics of one chunk of samples (ids first_id ...)."""
    cells = cell_index(xy, grid)
    n_cells = grid * grid
    counts = np.bincount(cells, minlength=n_cells)
    membership = sparse.csr_matrix((np.ones(len(cells)), (cells, np.arange(len(cells)))), shape=(n_cells, len(cells)))
    sums = np.asarray(membership @ acts.astype(np.float64))
    k = logits.shape[1]  # 0: a probe without a class head, no labels
    labels = (np.bincount(cells * k + logits.argmax(1), minlength=n_cells * k).reshape(n_cells, -1) if k
              else np.zeros((n_cells, 0), dtype=np.int64))
    examples = np.full((n_cells, n_examples), -1, dtype=np.int64)
    order = np.argsort(cells, kind="stable")  # ids ascending within each cell
    sorted_cells = cells[order]
    starts = np.searchsorted(sorted_cells, np.arange(n_cells))
    rank = np.arange(len(cells)) - starts[sorted_cells]
    keep = rank < n_examples
    examples[sorted_cells[keep], rank[keep]] = first_id + order[keep]
    return CellStats(counts, sums, labels, examples)


def _merge_all(parts: list[dict[int, CellStats]]) -> dict[int, CellStats]:
    """Merge per-grid partial results ({grid: CellStats})."""
    out = dict(parts[0])
    for part in parts[1:]:
        out = {grid: out[grid].merge(stats) for grid, stats in part.items()}
    return out


def chunk_stats(store: str, storage_options: dict, dataset: str, layer: str, start: int, stop: int,
                grids: list[int], n_examples: int) -> dict[int, CellStats]:
    """Read one block of samples from the store where the task runs, and bin it into every grid.
    (Tasks open the store themselves: zarr arrays are not shipped through the graph, which also
    keeps Dask-on-Ray from having to serialise them.)"""
    root = schema.open_store(store, storage_options, mode="r")
    group = root[schema.dataset_path(dataset)]
    xy = schema.read_rows(group, f"layers/{layer}/umap", start, stop)
    acts = schema.read_rows(group, f"layers/{layer}/activations", start, stop)
    logits = schema.read_rows(group, "logits", start, stop)
    return {grid: partial_stats(xy, acts, logits, start, grid, n_examples) for grid in grids}


def dataset_stats(study: Study, root, dataset: str, layer: str):
    """A delayed {grid: CellStats} for one dataset and layer: one partial per zarr chunk of
    samples, merged in a tree."""
    blocks = schema.row_blocks(root[schema.dataset_path(dataset)], f"layers/{layer}/activations")
    parts = [dask.delayed(chunk_stats)(study.store, study.storage_options, dataset, layer, start, stop,
                                       study.atlas.grids, study.atlas.examples) for start, stop in blocks]
    return tree_reduce(parts, _merge_all)


def smoothed(counts: np.ndarray, alpha: float) -> np.ndarray:
    c = counts.astype(np.float64) + alpha
    return c / c.sum()


def kl_terms(p_counts: np.ndarray, q_counts: np.ndarray, alpha: float) -> np.ndarray:
    """Per-cell terms of KL(p || q) between smoothed cell distributions."""
    p, q = smoothed(p_counts, alpha), smoothed(q_counts, alpha)
    return p * np.log(p / q)


def top_labels(label_counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[cells, K] counts -> the k most frequent labels and their counts (-1 / 0 where absent; all
    absent, k of them, for a probe without classes)."""
    if label_counts.shape[1] == 0:
        return np.full((len(label_counts), k), -1, dtype=np.int32), np.zeros((len(label_counts), k), dtype=np.int64)
    k = min(k, label_counts.shape[1])
    order = np.argsort(-label_counts, axis=1, kind="stable")[:, :k]
    counts = np.take_along_axis(label_counts, order, axis=1)
    return np.where(counts > 0, order, -1).astype(np.int32), counts


NAME, ITEM, READS = "atlas", "layer", ("embed",)


def items(study: Study) -> list[str]:
    return list(study.layers)


def reads(study: Study, layer: str) -> list[tuple[str, str]]:
    return [("embed", layer)]


def settings(study: Study, layer: str) -> dict:
    return {"atlas": study.atlas.model_dump(mode="json", exclude={"icons"}), "datasets": list(study.datasets)}


def compute_layer(study: Study, root, layer: str, scheduler="threads") -> dict:
    names = list(study.datasets)
    settings = study.atlas
    lazy = {name: dataset_stats(study, root, name, layer) for name in names}
    (merged,) = dask.compute(lazy, scheduler=scheduler)
    results = {(name, grid): merged[name][grid] for name in names for grid in settings.grids}
    out = {}
    for grid in settings.grids:
        stats = [results[name, grid] for name in names]
        counts = np.stack([s.counts for s in stats])
        total = stats[0]
        for other in stats[1:]:
            total = total.merge(other)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (total.sums / total.counts[:, None]).astype(np.float32)
        labels = [top_labels(s.labels, settings.top_labels) for s in stats]
        d = len(names)
        kl = np.zeros((d, d))
        kl_cells = np.zeros((d, d, grid * grid), dtype=np.float32)
        for a in range(d):
            for b in range(d):
                terms = kl_terms(counts[a], counts[b], settings.smoothing)
                kl[a, b], kl_cells[a, b] = terms.sum(), terms
        g = (grid, grid)
        out[grid] = {
            "counts": counts.reshape(d, *g),
            "mean": mean.reshape(*g, -1),
            "top_labels": np.stack([t for t, _ in labels]).reshape(d, *g, -1),
            "label_counts": np.stack([c for _, c in labels]).reshape(d, *g, -1),
            "examples": np.stack([s.examples for s in stats]).reshape(d, *g, -1),
            "kl": kl,
            "kl_cells": kl_cells.reshape(d, d, *g),
        }
    return out


def write_layer(root, layer: str, names: list[str], results: dict) -> None:
    for grid, arrays in results.items():
        group = root.require_group(schema.atlas_path(layer, grid))
        group.attrs.update({"datasets": names, "grid": grid})
        for key, value in arrays.items():
            group.create_array(key, shape=value.shape, dtype=value.dtype, overwrite=True)[...] = value


@contextlib.contextmanager
def workers(study: Study, root, todo: list[str], address: str | None = None):
    """The Dask scheduler the layers reduce on (Dask-on-Ray)."""
    init_ray(address)
    yield dask_scheduler()


def run_item(study: Study, root, layer: str, scheduler) -> dict:
    t0 = time.time()
    results = compute_layer(study, root, layer, scheduler)
    write_layer(root, layer, list(study.datasets), results)
    log.info("atlas %s: %s grids in %.1f s", layer, study.atlas.grids, time.time() - t0)
    return {"kl": {str(g): r["kl"].tolist() for g, r in results.items()}}
