"""Stage 3b, icons: a feature visualisation of each atlas cell's mean activation (Carter et al. 2019).

For each layer and grid of `atlas.icons` (default: the smallest atlas grid), every cell with at
least `min_count` samples (all datasets together) gets an icon: an image optimised so the probe's
activation at the centre of the layer aligns with the cell's mean activation v
(`fv.objectives.direction_cosine`, power `cosine_power`), v whitened by inv(A^T A / N) of the
layer's stored activations when `whiten` (A^T A reduced chunk by chunk with Dask). Icons render in
batches of `batch` cells as Ray tasks (on a GPU when there is one).

Stored beside the atlas statistics, under atlas/{layer}/g{G}/:

    icons           uint8   [G, G, S, S, 3]   the icon of each cell (zeros: no icon), S = icons.size
    icon_objective  float32 [G, G]            its objective value (NaN: no icon)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import dask
import numpy as np
import torch

from ganscale import schema
from ganscale.study import Study, digest

log = logging.getLogger("ganscale.icons")


def grids_of(study: Study) -> list[int]:
    if study.atlas.icons is None:
        return []
    return study.atlas.icons.grids or [min(study.atlas.grids)]


def layer_fingerprint(study: Study, root, layer: str) -> str:
    atlas = root.attrs.get("stages", {}).get("atlas", {}).get("layers", {}).get(layer, {})
    return digest({"atlas": atlas.get("fingerprint"), "icons": study.atlas.icons.model_dump(mode="json"),
                   "grids": grids_of(study)})


def _chunk_moments(store: str, storage_options: dict, path: str, start: int, stop: int):
    from ganscale.metrics.features import FeatureMoments

    return FeatureMoments.of(schema.open_store(store, storage_options, mode="r")[path][start:stop])


def _sum(parts):
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def second_moment(study: Study, root, layer: str) -> np.ndarray:
    """A^T A / N over the stored activations of every dataset (Dask tree of per-chunk sums)."""
    from ganscale.atlas import dask_scheduler

    parts = []
    for name in study.datasets:
        path = f"{schema.layer_path(name, layer)}/activations"
        n, step = root[path].shape[0], root[path].chunks[0]
        parts += [dask.delayed(_chunk_moments)(study.store, study.storage_options, path, s, min(s + step, n))
                  for s in range(0, n, step)]
    while len(parts) > 1:
        parts = [dask.delayed(_sum)(parts[i:i + 8]) for i in range(0, len(parts), 8)]
    total = dask.compute(parts[0], scheduler=dask_scheduler())[0]
    return total.outer / total.n


def render_icons(study: Study, layer: str, vectors: np.ndarray, whiten: np.ndarray | None, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Icons [B, S, S, 3] uint8 and objective values [B] for mean activations `vectors` [B, C]."""
    from ganscale.fv import objectives, param, render, transforms
    from ganscale.metrics.stage import _device, _threads
    from ganscale.models import registry

    try:
        _threads()
    except Exception:  # not inside Ray
        pass
    settings = study.atlas.icons
    device = _device()
    probe = registry.build_probe(study.probe, study.storage_options).to(device)
    tap = render.LayerTap(probe.module, [layer])
    w = torch.as_tensor(whiten, dtype=torch.float32) if whiten is not None else None
    objective = objectives.direction_cosine(layer, torch.as_tensor(vectors, dtype=torch.float32, device=device),
                                            power=settings.cosine_power, whiten=w.to(device) if w is not None else None)
    size = settings.size
    result = render.render(tap, lambda s: param.fourier_image(len(vectors), size, seed=s).to(device), objective,
                           transforms.standard(size), steps=settings.steps, lr=settings.lr, tries=settings.tries,
                           input_size=probe.input_size, seed=seed)
    icons = (result.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return icons, result.objective.cpu().numpy().astype(np.float32)


def run(study: Study, *, address: str | None = None) -> dict:
    import ray

    from ganscale.fv.objectives import whitening
    from ganscale.metrics.stage import _task_options
    from ganscale.progress import Progress
    from ganscale.sample import init_ray

    settings = study.atlas.icons
    if settings is None:
        return {"skipped": "atlas.icons is not set"}
    t_start = time.time()
    root = schema.open_store(study.store, study.storage_options)
    init_ray(address)
    stages = dict(root.attrs.get("stages", {}))
    done = dict(stages.get("icons", {}).get("layers", {}))
    computed = []
    remote = ray.remote(render_icons).options(**_task_options())
    for layer in study.layers:
        fp = layer_fingerprint(study, root, layer)
        if done.get(layer, {}).get("fingerprint") == fp:
            continue
        t0 = time.time()
        whiten = None
        if settings.whiten:
            whiten = whitening(torch.as_tensor(second_moment(study, root, layer))).numpy()
        for grid in grids_of(study):
            group = root[schema.atlas_path(layer, grid)]
            counts = group["counts"][...].sum(0)
            cells = np.argwhere(counts >= settings.min_count)
            vectors = group["mean"][...][cells[:, 0], cells[:, 1]]
            progress = Progress(f"icons {layer} g{grid}", len(cells), unit="icons")
            refs = [(i, remote.remote(study, layer, vectors[i:i + settings.batch], whiten, study.seed + i))
                    for i in range(0, len(cells), settings.batch)]
            icons = np.zeros((grid, grid, settings.size, settings.size, 3), dtype=np.uint8)
            values = np.full((grid, grid), np.nan, dtype=np.float32)
            for i, ref in refs:
                batch_icons, batch_values = ray.get(ref)
                rows = cells[i:i + settings.batch]
                icons[rows[:, 0], rows[:, 1]] = batch_icons
                values[rows[:, 0], rows[:, 1]] = batch_values
                progress.advance(len(rows))
            progress.close()
            group.create_array("icons", shape=icons.shape, dtype=np.uint8, overwrite=True,
                               dimension_names=("iy", "ix", "y", "x", "rgb"))[...] = icons
            group.create_array("icon_objective", shape=values.shape, dtype=np.float32, overwrite=True,
                               fill_value=np.nan, dimension_names=("iy", "ix"))[...] = values
        done[layer] = {"fingerprint": fp, "seconds": round(time.time() - t0, 2)}
        computed.append(layer)
        stages = dict(root.attrs.get("stages", {}))
        stages["icons"] = {"layers": done, "seconds": round(time.time() - t_start, 2), "fingerprint": digest(done)}
        root.attrs["stages"] = stages
    return {"computed": computed, "skipped": [layer for layer in study.layers if layer not in computed]}


def icon_canvas(icons: np.ndarray) -> np.ndarray:
    """[G, G, S, S, 3] -> one image [G*S, G*S, 3], row iy = 0 at the bottom (as the atlas plots)."""
    g, _, s, _, _ = icons.shape
    empty = icons.reshape(g, g, -1).max(2) == 0
    canvas = np.where(empty[:, :, None, None, None], 255, icons)
    return canvas[::-1].transpose(0, 2, 1, 3, 4).reshape(g * s, g * s, 3)


def icon_atlas_figures(study: Study, root, out: Path) -> list[tuple[str, int, Path]]:
    """Per layer and grid with icons: the icon atlas beside the density comparison of the first
    dataset against each other one (red: over-represented in the first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    folder = out / "icons"
    folder.mkdir(exist_ok=True)
    names = list(study.datasets)
    written = []
    for layer in study.layers:
        for grid in grids_of(study):
            group = root.get(schema.atlas_path(layer, grid))
            if group is None or "icons" not in group:
                continue
            canvas = icon_canvas(group["icons"][...])
            counts = group["counts"][...]
            for b in range(1, len(names)):
                pa, pb = counts[0] / max(counts[0].sum(), 1), counts[b] / max(counts[b].sum(), 1)
                with np.errstate(invalid="ignore"):
                    share = np.where(pa + pb > 0, pa / (pa + pb), np.nan)
                fig, axes = plt.subplots(1, 2, figsize=(13, 6.4))
                axes[0].imshow(canvas, extent=(0, grid, 0, grid))
                axes[0].set_title(f"{layer}, {grid}x{grid}: icons of the cells' mean activations", fontsize=9)
                cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
                axes[1].imshow(share, cmap=cmap, norm=TwoSlopeNorm(0.5, 0, 1), origin="lower", extent=(0, grid, 0, grid))
                axes[1].set_title(f"share of {names[0]} (red) vs {names[b]} (blue)", fontsize=9)
                for ax in axes:
                    ax.set_xticks([])
                    ax.set_yticks([])
                fig.tight_layout()
                path = folder / f"{layer}_g{grid}_{names[0]}_vs_{names[b]}.png"
                fig.savefig(path, dpi=110)
                plt.close(fig)
                written.append((layer, grid, path))
    return written
