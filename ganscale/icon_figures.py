"""The report's pictures of the activation-atlas icons (written by ganscale.icons): the icon atlas
of each layer and grid, and each pair of datasets' density comparison beside it. Read from the store."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ganscale import schema
from ganscale.study import Study


class IconFigure(NamedTuple):
    layer: str
    grid: int
    path: Path


def _share(counts_a: np.ndarray, counts_b: np.ndarray) -> np.ndarray:
    """Share of dataset a in each cell's density (`ganscale.render.density_share`); NaN where both are empty."""
    from ganscale.render import density_share

    return density_share(counts_a, counts_b)


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
                                a over-represented, blue: b, white: equal, grey: empty, pale: not
                                significant (the colours and test of `ganscale.render.comparison_atlas`)

    `pairs` (dataset names) defaults to every pair of the study's datasets. Returns
    IconFigure(layer, grid, path) tuples, the icon atlas of a layer and grid first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from PIL import Image

    from ganscale import render
    folder = Path(out) / "icons"
    written: list[IconFigure] = []
    for layer in study.icon_layers():
        for grid in study.icon_grids():
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
            counts, names = group["counts"][...], list(group.attrs["datasets"])  # the atlas's order
            for a, b in (pairs if pairs is not None else itertools.combinations(names, 2)):
                ia, ib = names.index(a), names.index(b)
                colours = render.cell_colours(counts[ia], counts[ib], render.cell_significance(counts[ia], counts[ib]))
                framed = icon_canvas(stored, (colours[..., :3] * 255).round().astype(np.uint8),
                                     width=max(1, size // 10), has=has)
                fig, axes = plt.subplots(1, 2, figsize=(13, 7.2), gridspec_kw={"width_ratios": [1, 1.08]},
                                         layout="constrained")
                axes[0].imshow(framed, extent=(0, grid, 0, grid),
                               interpolation="nearest" if zoom > 1 else "antialiased")
                axes[0].set_title(render._wrap(f"{layer}, {grid}x{grid}: icons framed by the cell's density share",
                                               6, 9), fontsize=9)
                axes[1].imshow(colours, origin="lower", extent=(0, grid, 0, grid), interpolation="nearest")
                axes[1].set_title(render._wrap(f"{layer}, {grid}x{grid}: density share (cells with icons outlined)",
                                               6, 9), fontsize=9)
                for iy, ix in np.argwhere(has):
                    axes[1].add_patch(plt.Rectangle((ix, iy), 1, 1, fill=False, lw=0.6, ec="black"))
                bar = fig.colorbar(ScalarMappable(render.NORM, render.CMAP), ax=axes[1], fraction=0.046, pad=0.03)
                bar.set_label(f"{a}'s share of the cell's density (1: only {a}, 0: only {b})")
                fig.legend(handles=render.atlas_legend(a, b, outlined=False),
                           loc="outside lower center", ncol=2, fontsize=8, frameon=False)
                for ax in axes:
                    render._cell_ticks(ax, grid)
                path = folder / f"{layer}_g{grid}_{a}_vs_{b}.png"
                fig.savefig(path, dpi=110)
                plt.close(fig)
                written.append(IconFigure(layer, grid, path))
    return written
