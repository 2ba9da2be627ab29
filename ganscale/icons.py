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

with attrs on `icons`: steps, tries, size, lr, cosine_power, whiten, min_count, cells, fingerprint.
A layer is skipped when the fingerprint of its inputs (the layer's atlas, the probe, the icon
settings) is the one the ledger recorded for the layer.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import NamedTuple

import dask
import numpy as np
import torch

from ganscale import ledger, schema, stage
from ganscale.errors import GanscaleError
from ganscale.fv.render import LayerTap
from ganscale.partials import tree_reduce
from ganscale.runtime import Task, init_ray, run_on_actors, worker_resources
from ganscale.study import Study, digest

log = logging.getLogger("ganscale.icons")

# Bumped when the rendering changes in a way that changes the icons (stored icons are then stale).
ALGORITHM = 2
# Ridge of the whitening, relative to the mean eigenvalue of A^T A / N (fv.objectives.whitening).
WHITEN_RIDGE = 1e-4


def grids_of(study: Study) -> list[int]:
    if study.atlas.icons is None:
        return []
    return study.atlas.icons.grids or [min(study.atlas.grids)]


def layers_of(study: Study) -> list[str]:
    if study.atlas.icons is None:
        return []
    return study.atlas.icons.layers or list(study.layers)


NAME, ITEM, READS = "icons", "layer", ("atlas",)


def items(study: Study) -> list[str]:
    return layers_of(study)


def reads(study: Study, layer: str) -> list[tuple[str, str]]:
    return [("atlas", layer)]


def settings(study: Study, root, layer: str) -> dict:
    """What a layer's icons depend on besides its atlas: the probe, the icon settings, the algorithm."""
    return {"icons": study.atlas.icons.model_dump(mode="json"), "grids": grids_of(study),
            "probe": study.probe.model_dump(mode="json"), "algorithm": ALGORITHM, "ridge": WHITEN_RIDGE}


def layer_fingerprint(study: Study, root, layer: str) -> str:
    return stage.fingerprint(study, root, NAME, layer)


# ---------------------------------------------------------------------------------------------
# Whitening: A^T A / N of the layer's stored activations, from mergeable per-chunk moments

def _chunk_moments(store: str, storage_options: dict, dataset: str, path: str, start: int, stop: int):
    from ganscale.metrics.features import FeatureMoments

    group = schema.open_store(store, storage_options, mode="r")[schema.dataset_path(dataset)]
    return FeatureMoments.of(schema.read_rows(group, path, start, stop))


def second_moment(study: Study, root, layer: str) -> np.ndarray:
    """A^T A / N [C, C] (float64) over the stored activations of every dataset (Dask tree of
    per-chunk sums, on the atlas stage's scheduler)."""
    from ganscale.runtime import dask_scheduler

    parts = []
    for name in study.datasets:
        path = f"layers/{layer}/activations"
        array = root[schema.dataset_path(name)][path]
        n, step = array.shape[0], array.chunks[0]
        parts += [dask.delayed(_chunk_moments)(study.store, study.storage_options, name, path, s, min(s + step, n))
                  for s in range(0, n, step)]
    total = dask.compute(tree_reduce(parts), scheduler=dask_scheduler())[0]
    return total.outer / total.n


# ---------------------------------------------------------------------------------------------
# Rendering

def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class IconRenderer:
    """Renders batches of icons for one study: the probe is built once (weights loaded and
    checked once per worker), a LayerTap per layer. Used as a Ray actor by `run`, and directly."""

    def __init__(self, study: Study, threads: int | None = None, device: str | torch.device | None = None):
        from ganscale.models import registry

        if threads:
            torch.set_num_threads(threads)
        self.study = study
        self.device = torch.device(device) if device is not None else _device()
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


class _Job(NamedTuple):
    layer: str
    grid: int
    start: int  # index of the batch's first cell in the grid's cell list


def _workers(study: Study, jobs: int) -> tuple[int, dict]:
    n, resources = worker_resources(study.sample.device, study.sample.workers)
    return max(1, min(n, jobs)), resources


def run(study: Study, *, address: str | None = None) -> dict:
    """Render the icons of every layer whose inputs changed since the last run (see the module
    docstring); returns {"computed": [layers], "skipped": [layers], "icons": n, "seconds": s}."""
    import ray

    from ganscale.fv.objectives import whitening
    from ganscale.progress import Progress

    settings = study.atlas.icons
    if settings is None:
        return {"skipped": "atlas.icons is not set"}
    t_start = time.time()
    root = schema.open_store(study.store, study.storage_options)
    inputs = {layer: stage.inputs(study, root, NAME, layer) for layer in layers_of(study)}
    fingerprints = {layer: digest(inputs[layer]) for layer in layers_of(study)}
    todo = [layer for layer in layers_of(study)
            if (ledger.entry(root, NAME, layer) or {}).get("fingerprint") != fingerprints[layer]]
    if not todo:
        return {"computed": [], "skipped": layers_of(study), "icons": 0, "seconds": round(time.time() - t_start, 2)}

    # what to render: per (layer, grid) the cells with enough samples and their mean activations
    cells, vectors = {}, {}
    for layer in todo:
        for grid in grids_of(study):
            group = root.get(schema.atlas_path(layer, grid))
            if group is None or "counts" not in group or "mean" not in group:
                raise GanscaleError(f"atlas.icons.grids: no atlas of layer {layer} at grid {grid} in the store (the "
                                    f"icon grids must be among atlas.grids {study.atlas.grids}; run the atlas stage)")
            counts = group["counts"][...].sum(0)
            cells[layer, grid] = np.argwhere(counts >= settings.min_count)
            vectors[layer, grid] = group["mean"][...][cells[layer, grid][:, 0], cells[layer, grid][:, 1]]

    init_ray(address)
    whiten_refs = {}
    for layer in todo:
        w = None
        if settings.whiten:
            w = whitening(torch.as_tensor(second_moment(study, root, layer)), eps=WHITEN_RIDGE).float().numpy()
        whiten_refs[layer] = ray.put(w)

    icons = {key: np.zeros((key[1], key[1], settings.size, settings.size, 3), dtype=np.uint8) for key in cells}
    values = {key: np.full((key[1], key[1]), np.nan, dtype=np.float32) for key in cells}
    left = {key: -(-len(c) // settings.batch) for key, c in cells.items()}  # batches to go
    computed = []
    last_finish = [time.time()]

    def write_grid(layer: str, grid: int) -> None:
        group = root[schema.atlas_path(layer, grid)]
        array = group.create_array("icons", shape=icons[layer, grid].shape, dtype=np.uint8, overwrite=True,
                                   chunks=(1, grid, settings.size, settings.size, 3),
                                   dimension_names=("iy", "ix", "y", "x", "rgb"))
        array[...] = icons[layer, grid]
        array.attrs.update({**settings.model_dump(mode="json", include={"steps", "tries", "size", "lr", "cosine_power",
                                                                        "whiten", "min_count"}),
                            "cells": int(len(cells[layer, grid])), "fingerprint": fingerprints[layer]})
        group.create_array("icon_objective", shape=(grid, grid), dtype=np.float32, overwrite=True,
                           fill_value=np.nan, dimension_names=("iy", "ix"))[...] = values[layer, grid]

    def finish_layer(layer: str) -> None:
        # recorded only once every grid of the layer is in the store: an interrupted layer reruns.
        # Its seconds: since the previous layer finished (layers render interleaved; the sum is the stage's).
        n_icons = int(sum(len(cells[k]) for k in cells if k[0] == layer))
        ledger.record(root, NAME, layer, inputs[layer], time.time() - last_finish[0], icons=n_icons)
        last_finish[0] = time.time()
        computed.append(layer)

    def finish_if_done(layer: str) -> None:
        if all(left[layer, grid] == 0 for grid in grids_of(study)):
            for grid in grids_of(study):
                write_grid(layer, grid)
            finish_layer(layer)

    for layer in todo:  # layers where no cell reaches min_count
        finish_if_done(layer)

    total = sum(len(c) for c in cells.values())
    jobs = [_Job(layer, grid, s) for (layer, grid), c in cells.items() for s in range(0, len(c), settings.batch)]
    if jobs:
        n_workers, resources = _workers(study, len(jobs))
        threads = max(1, int(resources["num_cpus"]))
        actor_cls = ray.remote(max_restarts=1, max_task_retries=2)(IconRenderer)
        actors = [actor_cls.options(**resources).remote(study, threads) for _ in range(n_workers)]
        log.info("icons: %d icons of %d layer(s) on %d worker(s)", total, len(todo), n_workers)
        progress = Progress("icons", total, unit="icons")

        def task(job: _Job) -> Task:
            batch = vectors[job.layer, job.grid][job.start:job.start + settings.batch]
            seed = study.seed * 1_000_003 + job.grid * 10_007 + job.start
            return Task("render", (job.layer, batch, whiten_refs[job.layer], seed),
                        f"icons: rendering layer {job.layer} grid {job.grid}", key=job)

        def rendered(task: Task, result) -> None:
            batch_icons, batch_values = result
            job = task.key
            key = (job.layer, job.grid)
            rows = cells[key][job.start:job.start + settings.batch]
            icons[key][rows[:, 0], rows[:, 1]] = batch_icons
            values[key][rows[:, 0], rows[:, 1]] = batch_values
            progress.advance(len(rows))
            left[key] -= 1
            finish_if_done(job.layer)

        try:  # two batches in flight per worker: no idle gap between batches
            run_on_actors(actors, [task(job) for job in jobs], rendered, in_flight_per_actor=2)
        finally:
            progress.close()
    return {"computed": computed, "skipped": [layer for layer in layers_of(study) if layer not in computed],
            "icons": int(total), "seconds": round(time.time() - t_start, 2)}


# ---------------------------------------------------------------------------------------------
# Figures

class IconFigure(NamedTuple):
    layer: str
    grid: int
    path: Path


def _share(counts_a: np.ndarray, counts_b: np.ndarray) -> np.ndarray:
    """Share of dataset a in each cell's density, each dataset normalised to its own total (as
    `ganscale.render.comparison_atlas`); NaN where both are empty."""
    pa, pb = counts_a / max(counts_a.sum(), 1), counts_b / max(counts_b.sum(), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pa + pb > 0, pa / np.where(pa + pb > 0, pa + pb, 1), np.nan)


def icon_canvas(icons: np.ndarray, frame: np.ndarray | None = None, width: int = 0, has: np.ndarray | None = None
                ) -> np.ndarray:
    """[G, G, S, S, 3] -> one image [G*S, G*S, 3] uint8, cell (iy, ix) at column ix and row iy
    counted from the bottom (as the atlas plots); cells without an icon (`has` [G, G] False; by
    default the all-zero icons) white. `frame` [G, G, 3] (uint8 colours) draws a border `width` px
    wide inside each cell with an icon."""
    g, _, s, _, _ = icons.shape
    has = icons.reshape(g, g, -1).max(2) > 0 if has is None else np.asarray(has, dtype=bool)
    canvas = np.where(has[:, :, None, None, None], icons, np.uint8(255)).copy()
    if frame is not None and width > 0:
        border = np.zeros((s, s), dtype=bool)
        border[:width], border[-width:], border[:, :width], border[:, -width:] = True, True, True, True
        for iy, ix in zip(*np.nonzero(has)):
            canvas[iy, ix][border] = frame[iy, ix]
    return canvas[::-1].transpose(0, 2, 1, 3, 4).reshape(g * s, g * s, 3)


def icon_atlas_figures(study: Study, root, out: Path, pairs: list[tuple[str, str]] | None = None) -> list[IconFigure]:
    """Per layer and grid with icons in the store, written under out/icons/:

    {layer}_g{G}.png            the icon atlas: each cell's icon at its grid position, empty cells blank
    {layer}_g{G}_{a}_vs_{b}.png the density comparison of datasets a and b beside it: left the icons,
                                each framed in its cell's colour; right the cells coloured alone. Red:
                                a over-represented, blue: b, white: equal, grey: empty (the colours of
                                `ganscale.render.comparison_atlas`)

    `pairs` (dataset names) defaults to every pair of the study's datasets. Returns
    IconFigure(layer, grid, path) tuples, the icon atlas of a layer and grid first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from PIL import Image

    names = list(study.datasets)
    pairs = pairs if pairs is not None else list(itertools.combinations(names, 2))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    norm = TwoSlopeNorm(0.5, 0, 1)
    folder = Path(out) / "icons"
    written: list[IconFigure] = []
    for layer in layers_of(study):
        for grid in grids_of(study):
            group = root.get(schema.atlas_path(layer, grid))
            if group is None or "icons" not in group:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            stored = np.asarray(group["icons"][...], dtype=np.uint8)
            size = stored.shape[2]
            has = (np.isfinite(group["icon_objective"][...]) if "icon_objective" in group
                   else stored.reshape(grid, grid, -1).max(2) > 0)
            plain = icon_canvas(stored, has=has)
            zoom = max(1, -(-720 // plain.shape[0]))  # small atlases enlarged (nearest) to ~720 px or more
            path = folder / f"{layer}_g{grid}.png"
            Image.fromarray(plain.repeat(zoom, 0).repeat(zoom, 1)).save(path)
            written.append(IconFigure(layer, grid, path))
            counts = group["counts"][...]
            for a, b in pairs:
                ia, ib = names.index(a), names.index(b)
                share = _share(counts[ia], counts[ib])
                colours = (cmap(norm(np.nan_to_num(share, nan=0.5)))[..., :3] * 255).round().astype(np.uint8)
                framed = icon_canvas(stored, colours, width=max(1, size // 10), has=has)
                fig, axes = plt.subplots(1, 2, figsize=(13, 6.6), gridspec_kw={"width_ratios": [1, 1.08]})
                axes[0].imshow(framed, extent=(0, grid, 0, grid),
                               interpolation="nearest" if zoom > 1 else "antialiased")
                axes[0].set_title(f"{layer}, {grid}x{grid}: icons framed by the cell's density share", fontsize=9)
                image = axes[1].imshow(share, cmap=cmap, norm=norm, origin="lower", extent=(0, grid, 0, grid))
                axes[1].set_title(f"{layer}, {grid}x{grid}: density share (cells with icons outlined)", fontsize=9)
                for iy, ix in np.argwhere(has):
                    axes[1].add_patch(plt.Rectangle((ix, iy), 1, 1, fill=False, lw=0.6, ec="black"))
                bar = fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.03)
                bar.set_label(f"share of {a} (red) vs {b} (blue)")
                for ax in axes:
                    ax.set_xticks([])
                    ax.set_yticks([])
                fig.tight_layout()
                path = folder / f"{layer}_g{grid}_{a}_vs_{b}.png"
                fig.savefig(path, dpi=110)
                plt.close(fig)
                written.append(IconFigure(layer, grid, path))
    return written
