"""Stage 3b, icons: a feature visualisation of each atlas cell's mean activation (Carter et al. 2019).

For each layer of the study and each grid of `atlas.icons.grids` (default: the smallest atlas
grid), every cell with at least `min_count` samples (all datasets together) gets an icon: an image
optimised (`ganscale.fv`: Fourier parameterisation with decorrelated colour, lucent's standard
transforms, Adam) so that the probe's activation h at the centre position of the layer's
featuremap maximises (h . v / |v|) * max(0.1, cos(h, v))^cosine_power, v the cell's mean
activation, whitened (v <- inv(A^T A / N) v) when `whiten`, A the layer's stored activations of
every dataset; A^T A is reduced from per-chunk sums in a Dask tree. Icons are optimised at the
probe's input size (where the atlas activations were sampled) and resized to `size`.

Cells render in batches of `batch` on Ray actors that build the probe once: one actor per GPU
when the cluster has GPUs (and `sample.device` is not `cpu`), else CPU actors sharing the CPUs,
as the sample stage places its workers. Best of `tries` per icon.

Stored beside the atlas statistics, under atlas/{layer}/g{G}/:

    icons           uint8   [G, G, S, S, 3]   the icon of each cell (zeros: no icon), S = icons.size
    icon_objective  float32 [G, G]            its objective value (NaN: no icon)

with attrs on `icons`: steps, tries, size, lr, cosine_power, whiten, min_count, cells. The stage
driver skips a layer whose inputs (the layer's atlas, the probe, the icon settings) did not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np
import torch

from ganscale import schema
from ganscale.errors import GanscaleError
from ganscale.fv.render import LayerTap
from ganscale.partials import reduce_stored
from ganscale.runtime import Actors, Task, init_ray, run_on_actors, worker_resources
from ganscale.runtime import device as runtime_device
from ganscale.study import Study

log = logging.getLogger("ganscale.icons")

# Bumped when the rendering changes in a way that changes the icons (stored icons are then stale).
ALGORITHM = 2
# Ridge of the whitening, relative to the mean eigenvalue of A^T A / N (fv.objectives.whitening).
WHITEN_RIDGE = 1e-4


NAME, ITEM, READS = "icons", "layer", ("atlas",)


def items(study: Study) -> list[str]:
    return study.icon_layers()


def reads(study: Study, layer: str) -> list[tuple[str, str]]:
    return [("atlas", layer)]


def settings(study: Study, layer: str) -> dict:
    """What a layer's icons depend on besides its atlas: the probe, the icon settings, the algorithm."""
    return {"icons": study.atlas.icons.model_dump(mode="json"), "grids": study.icon_grids(),
            "probe": study.probe.model_dump(mode="json"), "algorithm": ALGORITHM, "ridge": WHITEN_RIDGE}


# ---------------------------------------------------------------------------------------------
# Whitening: A^T A / N of the layer's stored activations, from mergeable per-chunk moments

def second_moment(study: Study, root, layer: str) -> np.ndarray:
    """A^T A / N [C, C] (float64) over the stored activations of every dataset (Dask tree of
    per-chunk sums, on the atlas stage's scheduler)."""
    from ganscale.metrics.features import FeatureMoments
    from ganscale.runtime import dask_scheduler

    total = reduce_stored(study, root, list(study.datasets), f"layers/{layer}/activations", FeatureMoments.of,
                          dask_scheduler())
    return total.outer / total.n


# ---------------------------------------------------------------------------------------------
# Rendering

class IconRenderer:
    """Renders batches of icons for one study: the probe is built once (weights loaded and
    checked once per worker), a LayerTap per layer. Used as a Ray actor by `run`, and directly."""

    def __init__(self, study: Study, threads: int | None = None, device: str | torch.device | None = None):
        from ganscale.models import registry

        if threads:
            torch.set_num_threads(threads)
        self.study = study
        self.device = torch.device(device) if device is not None else runtime_device()
        self.probe = registry.build_probe(study.probe, study.storage_options).to(self.device).only([])
        self._taps: dict = {}

    def tap(self, layer: str):
        if layer not in self._taps:
            self._taps[layer] = _StoppingTap(self.probe.module, [layer])
        return self._taps[layer]

    def render(self, layer: str, vectors: np.ndarray, whiten: np.ndarray | None, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Icons [B, S, S, 3] uint8 and objective values [B] float32 for mean activations `vectors` [B, C]."""
        from ganscale.fv import objectives, param, render, transforms

        settings = self.study.atlas.icons
        side = settings.render_size or self.probe.input_size
        # (arrays from Ray's object store are read-only: copied)
        w = None if whiten is None else torch.from_numpy(np.array(whiten, dtype=np.float32)).to(self.device)
        targets = torch.from_numpy(np.array(vectors, dtype=np.float32)).to(self.device)
        objective = objectives.direction_cosine(layer, targets, power=settings.cosine_power, whiten=w)
        result = render.render(self.tap(layer), objective, lambda s: param.fourier_image(len(vectors), side, seed=s),
                               transforms.standard(side), steps=settings.steps, lr=settings.lr, tries=settings.tries,
                               input_size=side, seed=seed, device=self.device)
        icons = render.resize(result.images, settings.size).clamp(0, 1)
        icons = (icons * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return icons, result.objective.float().cpu().numpy()


class _StopForward(Exception):
    pass


class _StoppingTap(LayerTap):
    """A LayerTap of one layer that stops the forward pass once that layer has run: the icon
    objective reads that layer only, so the probe's later layers and head would be computed for
    nothing (same activations and gradients, bit for bit)."""

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        (name, module), = self._modules.items()
        captured = {}

        def hook(_module, _inputs, out):
            captured[name] = out
            raise _StopForward

        handle = module.register_forward_hook(hook)
        try:
            self.module(images)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured


@dataclasses.dataclass
class _Plan:
    """What the icons of the layers to do need: per (layer, grid) the cells with enough samples and
    their mean activations, and the actors that render them (started when first needed)."""
    cells: dict
    vectors: dict
    actors: Actors
    icons: int = 0  # rendered so far

    def summary(self) -> dict:
        return {"icons": self.icons}


@contextlib.contextmanager
def workers(study: Study, root, todo: list[str], address: str | None = None):
    settings = study.atlas.icons
    cells, vectors = {}, {}
    for layer in todo:
        for grid in study.icon_grids():
            group = root.get(schema.atlas_path(layer, grid))
            if group is None or "counts" not in group or "mean" not in group:
                raise GanscaleError(f"atlas.icons.grids: no atlas of layer {layer} at grid {grid} in the store (the "
                                    f"icon grids must be among atlas.grids {study.atlas.grids}; run the atlas stage)")
            counts = group["counts"][...].sum(0)
            cells[layer, grid] = np.argwhere(counts >= settings.min_count)
            vectors[layer, grid] = group["mean"][...][cells[layer, grid][:, 0], cells[layer, grid][:, 1]]
    init_ray(address)
    jobs = sum(-(-len(c) // settings.batch) for c in cells.values())
    n, resources = worker_resources(study.sample.device, study.sample.workers)
    threads = max(1, int(resources["num_cpus"]))
    with Actors(IconRenderer, max(1, min(n, jobs)), resources, study, threads, what="icons: starting the workers",
                restarts=1, task_retries=2) as actors:
        yield _Plan(cells, vectors, actors)


def run_item(study: Study, root, layer: str, plan: _Plan) -> dict:
    """Render the icons of one layer at every icon grid (two batches in flight per worker), and write
    them once all are done: an interrupted layer reruns."""
    import ray

    from ganscale.fv.objectives import whitening
    from ganscale.progress import Progress

    settings = study.atlas.icons
    grids = study.icon_grids()
    w = None
    if settings.whiten:
        w = whitening(torch.as_tensor(second_moment(study, root, layer)), eps=WHITEN_RIDGE).float().numpy()
    whiten = ray.put(w)
    icons = {g: np.zeros((g, g, settings.size, settings.size, 3), dtype=np.uint8) for g in grids}
    values = {g: np.full((g, g), np.nan, dtype=np.float32) for g in grids}
    tasks = []
    for grid in grids:
        for start in range(0, len(plan.cells[layer, grid]), settings.batch):
            batch = plan.vectors[layer, grid][start:start + settings.batch]
            seed = study.seed * 1_000_003 + grid * 10_007 + start
            tasks.append(Task("render", (layer, batch, whiten, seed), f"icons: rendering layer {layer} grid {grid}",
                              key=(grid, start)))
    total = sum(len(plan.cells[layer, g]) for g in grids)
    progress = Progress(f"icons {layer}", total, unit="icons")

    def rendered(task: Task, result) -> None:
        grid, start = task.key
        rows = plan.cells[layer, grid][start:start + settings.batch]
        icons[grid][rows[:, 0], rows[:, 1]], values[grid][rows[:, 0], rows[:, 1]] = result
        progress.advance(len(rows))

    try:
        if tasks:
            run_on_actors(plan.actors.get(), tasks, rendered, in_flight_per_actor=2, kill=False, collect=False)
    finally:
        progress.close()
    for grid in grids:
        _write_icons(study, root, layer, grid, icons[grid], values[grid], len(plan.cells[layer, grid]))
    plan.icons += int(total)
    return {"icons": int(total)}


def _write_icons(study: Study, root, layer: str, grid: int, icons: np.ndarray, values: np.ndarray, n_cells: int):
    settings = study.atlas.icons
    group = root[schema.atlas_path(layer, grid)]
    array = group.create_array("icons", shape=icons.shape, dtype=np.uint8, overwrite=True,
                               chunks=(1, grid, settings.size, settings.size, 3),
                               dimension_names=("iy", "ix", "y", "x", "rgb"))
    array[...] = icons
    array.attrs.update({**settings.model_dump(mode="json", include={"steps", "tries", "size", "lr", "cosine_power",
                                                                    "whiten", "min_count"}), "cells": int(n_cells)})
    group.create_array("icon_objective", shape=(grid, grid), dtype=np.float32, overwrite=True,
                       fill_value=np.nan, dimension_names=("iy", "ix"))[...] = values
