"""The interactive atlas viewer: a self-contained static page in the report (report/viewer/) that
works from a local folder (file://) or a bucket: no server, no network, no libraries.

    viewer/index.html            the page; the manifest (layers, grids, datasets, files, colours) inline
    viewer/viewer.js             the viewer (canvas drawing, zoom/pan, cell details)
    viewer/data/L{l}_g{G}.js     per layer l and grid G, per cell: counts per dataset, KL terms per
                                 ordered pair, top labels and their counts, examples (thumbnail index,
                                 receptive-field box, sample id) and, when the icons stage ran, icons
    viewer/sprites/D{d}_{k}.png  sheets of example thumbnails of dataset d (shared by layers and
                                 grids; .jpg for thumbnails over 32 px)
    viewer/icons/L{l}_g{G}.png   the icon atlas of a layer and grid (row iy = 0 at the bottom)

Data files are scripts that assign into window.GANSCALE.data (browsers refuse fetch() of file://
URLs). Files are named by index, so any layer or dataset name makes a valid URL.

Thumbnails: at most MAX_THUMBS example ids per layer and dataset are drawn, chosen so that every
non-empty cell of every grid gets its first example before any cell gets a second (fullest cells
first); cells beyond that list their sample ids only.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np

from ganscale import schema
from ganscale.errors import GanscaleError
from ganscale.study import Study

HERE = Path(__file__).parent
THUMB_MAX = 64  # thumbnail side in the sprite sheets (smaller probes: their input size)
SHEET_COLUMNS = 32  # thumbnails per row of a sheet
SHEET_THUMBS = 1024  # thumbnails per sheet (32 x 32: 2048 px square at 64 px)
MAX_THUMBS = 2048  # example thumbnails per layer and dataset
ICON_ATLAS_MAX = 4096  # side of an icon atlas picture; bigger atlases are downscaled to fit
BATCH = 256  # images regenerated per call


def _class_names(probe) -> list[str]:
    names = getattr(probe, "class_names", None) or getattr(getattr(probe, "module", None), "class_names", None)
    return [str(n) for n in names] if names else []


def _colormap() -> list[str]:
    """render.comparison_atlas's colours (render.CMAP, RdBu_r) sampled at 256 shares of dataset a
    (0: all b). The viewer colours every cell at full strength: it does not pale the cells that
    render.cell_significance finds not significant (its cell details give the counts)."""
    from ganscale.render import CMAP as cmap

    return ["#%02x%02x%02x" % tuple(int(round(255 * c)) for c in cmap(x)[:3]) for x in np.linspace(0, 1, 256)]


def _chosen_ids(groups: dict[int, dict], d: int) -> list[int]:
    """The example ids of one layer and dataset that get thumbnails (see the module docstring)."""
    chosen: dict[int, None] = {}
    ranks = max(g["examples"].shape[-1] for g in groups.values())
    for rank in range(ranks):
        for grid, g in sorted(groups.items()):
            examples = g["examples"][d].reshape(grid * grid, -1)
            if rank >= examples.shape[1]:
                continue
            counts = g["counts"][d].ravel()
            cells = np.nonzero(examples[:, rank] >= 0)[0]
            cells = cells[np.argsort(-counts[cells], kind="stable")]
            for sample in examples[cells, rank]:
                chosen.setdefault(int(sample))
                if len(chosen) >= MAX_THUMBS:
                    return list(chosen)
    return list(chosen)


def _thumbnails(dataset: str, ids: list[int], thumb: int, out: Path, d: int, images_of) -> dict:
    """Regenerate the images of `ids` once (those the report has not made already), write them as
    sheets; the sprite entry of the manifest."""
    import torch
    from PIL import Image

    from ganscale import sources

    ext = "png" if thumb <= 32 else "jpg"
    files = []
    rows = -(-SHEET_THUMBS // SHEET_COLUMNS)
    sheet = None
    for start in range(0, len(ids), BATCH):
        part = ids[start:start + BATCH]
        images = sources.resize_square(images_of(dataset, part, keep=False), thumb)
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, picture in enumerate(pixels, start):
            k, slot = divmod(i, SHEET_THUMBS)
            if slot == 0:
                used = min(SHEET_THUMBS, len(ids) - i)
                sheet = np.full((min(rows, -(-used // SHEET_COLUMNS)) * thumb, SHEET_COLUMNS * thumb, 3), 255, np.uint8)
            r, c = divmod(slot, SHEET_COLUMNS)
            sheet[r * thumb:(r + 1) * thumb, c * thumb:(c + 1) * thumb] = picture
            if slot == SHEET_THUMBS - 1 or i == len(ids) - 1:
                name = f"sprites/D{d}_{k}.{ext}"
                image = Image.fromarray(sheet)
                # PIL's default PNG level: optimize=True (level 9) took 1.6 s more of the demo report for 1% smaller files
                image.save(out / name, **({} if ext == "png" else {"quality": 90}))
                files.append(name)
    return {"files": files, "thumb": thumb, "columns": SHEET_COLUMNS, "per_sheet": SHEET_THUMBS}


def _icons(group, grid: int, out: Path, name: str) -> dict | None:
    """The icon atlas of one layer and grid as a picture, and per cell whether it has an icon and
    its objective; None when the icons stage has not written this grid."""
    from PIL import Image

    if "icons" not in group:
        return None
    icons = np.asarray(group["icons"][...], dtype=np.uint8)  # [G, G, S, S, 3]
    size = icons.shape[2]
    has = icons.reshape(grid * grid, -1).max(1) > 0
    picture = icons[::-1].transpose(0, 2, 1, 3, 4).reshape(grid * size, grid * size, 3)  # row iy = 0 at the bottom
    image = Image.fromarray(picture)
    if grid * size > ICON_ATLAS_MAX:
        size = max(1, ICON_ATLAS_MAX // grid)
        image = image.resize((grid * size, grid * size), Image.LANCZOS)
    image.save(out / name)
    objective = [None] * (grid * grid)
    if "icon_objective" in group:
        values = np.asarray(group["icon_objective"][...], dtype=np.float64).ravel()
        objective = [float(f"{v:.6g}") if np.isfinite(v) else None for v in values]
    return {"file": name, "size": size, "cells": has.astype(int).tolist(), "objective": objective}


def write_viewer(study: Study, root, folder: Path, probe=None, images=None, fields: dict | None = None) -> Path:
    """Write folder/viewer/ (replacing an older one) from the study's atlas (and icons, when the
    store has them) and return the path of its index.html. What the report has made already, when
    it calls: `probe` (class names, featuremap sizes), `images` (its ImageCache), `fields` (the
    receptive field of each layer)."""
    from ganscale.models import registry
    from ganscale.images import ImageCache, featuremap_sizes, patch_box, receptive_field_size

    out = Path(folder) / "viewer"
    if out.exists():
        shutil.rmtree(out)
    for sub in ("data", "sprites", "icons"):
        (out / sub).mkdir(parents=True)
    grids = sorted(study.atlas.grids)
    layers = [layer for layer in study.layers
              if all(root.get(schema.atlas_path(layer, g)) is not None for g in grids)]
    if not layers:
        raise GanscaleError("viewer: the store has no atlas; run the atlas stage first")
    names = list(root[schema.atlas_path(layers[0], grids[0])].attrs["datasets"])  # the atlas's order
    probe = probe or registry.build_probe(study.probe, study.storage_options)
    class_names = _class_names(probe)
    fmap_sizes = featuremap_sizes(study, root, probe, layers)
    size = probe.input_size
    thumb = min(size, THUMB_MAX)

    # Which examples get thumbnails: per layer and dataset; each image is then regenerated once.
    stats = {layer: {g: {key: root[f"{schema.atlas_path(layer, g)}/{key}"][...] for key in ("counts", "examples")}
                     for g in grids} for layer in layers}
    union: list[dict[int, None]] = [{} for _ in names]
    for layer in layers:
        for d in range(len(names)):
            union[d].update(dict.fromkeys(_chosen_ids(stats[layer], d)))
    images = images or ImageCache(study, root)
    sprites, thumb_index = [], []
    for d, name in enumerate(names):
        ids = list(union[d])
        sprites.append(_thumbnails(name, ids, thumb, out, d, images))
        thumb_index.append({sample: i for i, sample in enumerate(ids)})

    files: dict[str, dict[str, str]] = {}
    for li, layer in enumerate(layers):
        field = fields[layer] if fields and layer in fields else receptive_field_size(probe, layer)
        positions = [schema.read_rows(root[schema.dataset_path(name)], f"layers/{layer}/position") for name in names]
        scale = thumb / size
        boxes: dict[tuple[int, int], list[float]] = {}

        def example(d: int, sample: int) -> list:
            if (d, sample) not in boxes:
                y0, x0, y1, x1 = patch_box(positions[d][sample], fmap_sizes[layer], field, size)
                boxes[d, sample] = [round(v * scale, 2) for v in (y0, x0, y1, x1)]
            return [thumb_index[d][sample], *boxes[d, sample], sample]

        files[layer] = {}
        for grid in grids:
            group = root[schema.atlas_path(layer, grid)]
            n_cells = grid * grid
            counts = stats[layer][grid]["counts"].reshape(len(names), n_cells)
            examples = stats[layer][grid]["examples"].reshape(len(names), n_cells, -1)
            kl_cells = group["kl_cells"][...]
            data = {
                "layer": layer, "grid": grid,
                "counts": counts.tolist(), "totals": counts.sum(1).tolist(), "kl": group["kl"][...].tolist(),
                "kl_cells": {f"{a}_{b}": [float(f"{v:.6g}") for v in kl_cells[a, b].ravel()]
                             for a in range(len(names)) for b in range(len(names)) if a != b},
                "top_labels": group["top_labels"][...].reshape(len(names), n_cells, -1).tolist(),
                "label_counts": group["label_counts"][...].reshape(len(names), n_cells, -1).tolist(),
                "examples": [[[example(d, int(s)) for s in cell if s >= 0 and int(s) in thumb_index[d]]
                              for cell in examples[d]] for d in range(len(names))],
                "example_ids": [[[int(s) for s in cell if s >= 0] for cell in examples[d]] for d in range(len(names))],
                "icons": _icons(group, grid, out, f"icons/L{li}_g{grid}.png"),
            }
            file = f"data/L{li}_g{grid}.js"
            (out / file).write_text(f"window.GANSCALE.data[{json.dumps(file)}] = "
                                    f"{json.dumps(data, separators=(',', ':'))};\n")
            files[layer][str(grid)] = file

    manifest = {"study": study.name, "layers": layers, "grids": grids, "datasets": names,
                "class_names": class_names, "files": files, "sprites": sprites, "colormap": _colormap()}
    shutil.copy(HERE / "viewer.js", out / "viewer.js")
    page = (HERE / "index.html").read_text()
    page = page.replace("__MANIFEST__", json.dumps(manifest).replace("</", "<\\/")).replace(
        "__TITLE__", html.escape(study.name))
    (out / "index.html").write_text(page)
    return out / "index.html"
