"""The interactive atlas viewer: a self-contained static page in the report (report/viewer/), usable
from a local folder or a bucket, with no server and no network.

Files: index.html (the manifest inline), viewer.js, data/{layer}_g{G}.js (per cell: counts per
dataset, KL terms per ordered pair, top labels, example thumbnails with the receptive-field box of
the sampled position), sprites/{layer}_{dataset}.png (the thumbnails of one layer and dataset) and
icons/{layer}_g{G}.png (the icon atlas, when the icons stage ran). Data files are scripts that assign
into window.GANSCALE.data, because browsers refuse fetch() of local files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ganscale import schema, sources
from ganscale.study import Study

HERE = Path(__file__).parent
THUMB_MAX = 64  # thumbnail side in the sprites
SPRITE_COLUMNS = 32
MAX_THUMBS = 2048  # per layer and dataset: example ids of the smaller grids first


def _example_ids(root, layer: str, grids: list[int], dataset_index: int) -> list[int]:
    chosen: dict[int, None] = {}
    for i, grid in enumerate(sorted(grids)):
        examples = root[f"{schema.atlas_path(layer, grid)}/examples"][dataset_index]  # [G, G, E]
        per_cell = examples.shape[-1] if i == 0 else min(2, examples.shape[-1])
        for ids in examples.reshape(-1, examples.shape[-1])[:, :per_cell]:
            for sample in ids[ids >= 0]:
                if len(chosen) >= MAX_THUMBS:
                    return list(chosen)
                chosen.setdefault(int(sample))
    return list(chosen)


def _sprite(images: np.ndarray, path: Path) -> None:
    from PIL import Image

    n, t = len(images), images.shape[1]
    rows = max(1, -(-n // SPRITE_COLUMNS))
    sheet = np.full((rows * t, SPRITE_COLUMNS * t, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, SPRITE_COLUMNS)
        sheet[r * t:(r + 1) * t, c * t:(c + 1) * t] = image
    Image.fromarray(sheet).save(path, optimize=True)


def write_viewer(study: Study, root, folder: Path, probe=None) -> Path:
    """Write folder/viewer/ for the study's atlas and return the path of its index.html."""
    import torch

    from ganscale.icons import icon_canvas
    from ganscale.models import registry
    from ganscale.report import _fmap_sizes, patch_box, receptive_field_size
    from ganscale.sample import images_by_id

    out = folder / "viewer"
    for sub in ("data", "sprites", "icons"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "viewer.js", out / "viewer.js")
    names, grids = list(study.datasets), sorted(study.atlas.grids)
    probe = probe or registry.build_probe(study.probe, study.storage_options)
    class_names = list(getattr(probe.module, "class_names", []) or [])
    fmap_sizes = _fmap_sizes(probe.only(study.layers))
    size = probe.input_size
    thumb = min(size, THUMB_MAX)
    generators: dict = {}
    for layer in study.layers:
        field = receptive_field_size(probe, layer)
        sprites, index_of = [], []
        for d, name in enumerate(names):
            ids = _example_ids(root, layer, grids, d)
            positions = root[f"{schema.layer_path(name, layer)}/position"]
            boxes, pictures = {}, []
            for start in range(0, len(ids), 256):
                part = ids[start:start + 256]
                images = sources.resize_square(images_by_id(study, root, name, part, generators), thumb)
                pictures.append((images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
                for sample, pos in zip(part, positions.get_orthogonal_selection((np.asarray(part, dtype=np.int64),
                                                                                   slice(None)))):
                    y0, x0, y1, x1 = patch_box(pos, fmap_sizes[layer], field, size)
                    boxes[sample] = [round(v * thumb / size, 1) for v in (y0, x0, y1, x1)]
            file = f"sprites/{layer}_{name}.png"
            if pictures:
                _sprite(np.concatenate(pictures), out / file)
            sprites.append({"file": file, "thumb": thumb, "columns": SPRITE_COLUMNS})
            index_of.append({sample: (i, boxes[sample]) for i, sample in enumerate(ids)})
        for grid in grids:
            group = root[schema.atlas_path(layer, grid)]
            counts = group["counts"][...].reshape(len(names), -1)
            kl_cells = group["kl_cells"][...]
            examples = group["examples"][...].reshape(len(names), grid * grid, -1)
            data = {
                "layer": layer, "grid": grid, "datasets": names, "class_names": class_names,
                "counts": counts.tolist(), "totals": counts.sum(1).tolist(), "kl": group["kl"][...].tolist(),
                "kl_cells": {f"{a}_{b}": [float(f"{v:.6g}") for v in kl_cells[a, b].ravel()]
                             for a in range(len(names)) for b in range(len(names)) if a != b},
                "top_labels": group["top_labels"][...].reshape(len(names), grid * grid, -1).tolist(),
                "label_counts": group["label_counts"][...].reshape(len(names), grid * grid, -1).tolist(),
                "examples": [[[[index_of[d][s][0], *index_of[d][s][1]] for s in cell if s in index_of[d]]
                              for cell in examples[d]] for d in range(len(names))],
                "sprites": sprites, "icons": None, "icon_cells": None,
            }
            if "icons" in group:
                from PIL import Image

                stored = group["icons"][...]
                Image.fromarray(icon_canvas(stored)).save(out / "icons" / f"{layer}_g{grid}.png")
                data["icons"] = f"icons/{layer}_g{grid}.png"
                data["icon_cells"] = (stored.reshape(grid * grid, -1).max(1) > 0).tolist()
            key = f"{layer}_g{grid}"
            (out / "data" / f"{key}.js").write_text(
                f"window.GANSCALE.data[{json.dumps(key)}] = {json.dumps(data, separators=(',', ':'))};\n")
    manifest = {"study": study.name, "layers": study.layers, "grids": grids, "datasets": names}
    page = (HERE / "index.html").read_text().replace("__MANIFEST__", json.dumps(manifest)).replace(
        "__TITLE__", study.name)
    (out / "index.html").write_text(page)
    return out / "index.html"
