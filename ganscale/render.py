"""Pictures from the atlas statistics (matplotlib, no screen needed)."""

from __future__ import annotations

import html
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402


CMAP = plt.get_cmap("RdBu_r")  # a's share of the cell's density: 0 (only b) blue, 0.5 white, 1 (only a) red
NORM = Normalize(0, 1)
EMPTY = (0.867, 0.867, 0.867, 1.0)  # #dddddd: cells where both datasets are empty (as the viewer)
MUTE = 0.35  # a not significant cell keeps this much of its colour, blended onto white


def _muted(share: np.ndarray) -> np.ndarray:
    """The pale RGBA of not significant cells: MUTE of the colour at `share` (clipped to 0.15..0.85,
    as the dark ends blended onto white would look grey, like empty cells) blended onto white."""
    colours = np.array(CMAP(NORM(np.clip(np.nan_to_num(share, nan=0.5), 0.15, 0.85))))
    colours[..., :3] = MUTE * colours[..., :3] + (1 - MUTE)
    return colours


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """`text` wrapped to lines that fit `width_in` inches at `fontsize` (a character is about 0.6 em)."""
    chars = max(12, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def density_share(counts_a: np.ndarray, counts_b: np.ndarray) -> np.ndarray:
    """Share of dataset a in each cell's density, each dataset normalised to its own total (so
    sample counts do not bias it): 1 only a, 0.5 equal, 0 only b; NaN where both are empty."""
    pa, pb = counts_a / max(counts_a.sum(), 1), counts_b / max(counts_b.sum(), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pa + pb > 0, pa / np.where(pa + pb > 0, pa + pb, 1), np.nan)


def _binom_two_sided(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """`scipy.stats.binomtest(k, n, p).pvalue` for arrays, in one vectorised pass (binomtest costs
    ~0.5 ms a call: seconds for an 80 x 80 atlas). Two-sided as binomtest: P(k) plus the other
    tail's outcomes no likelier than k (found by a binary search on the monotone side of the mode)."""
    from scipy.stats import binom

    k, n = np.asarray(k, np.int64), np.asarray(n, np.int64)
    limit = binom.pmf(k, n, p) * (1 + 1e-7)
    low = k < p * n  # k left of the mode: the other tail is the upper one
    # upper tail: the first j in [ceil(pn), n] with pmf(j) <= limit; lower: the first j in [0, floor(pn)] above it
    lo = np.where(low, np.ceil(p * n), 0).astype(np.int64)
    hi = np.where(low, n + 1, np.floor(p * n) + 1).astype(np.int64)
    while (active := lo < hi).any():
        mid = (lo + hi) // 2
        found = (binom.pmf(mid, n, p) <= limit) == low
        hi, lo = np.where(active & found, mid, hi), np.where(active & ~found, mid + 1, lo)
    other = np.where(low, binom.sf(lo - 1, n, p), binom.cdf(lo - 1, n, p))
    own = np.where(low, binom.cdf(k, n, p), binom.sf(k - 1, n, p))
    return np.where(k == p * n, 1.0, np.minimum(1.0, own + other))


def cell_significance(counts_a: np.ndarray, counts_b: np.ndarray, alpha: float = 0.05,
                      min_count: int = 10) -> np.ndarray:
    """Which cells hold significantly more of one dataset than the pooled share predicts (bool,
    shape of the counts). Per non-empty cell a two-sided binomial test of k = count_a among
    n = count_a + count_b samples against p = N_a / (N_a + N_b) (the datasets' totals), as
    scipy.stats.binomtest; the p-values Benjamini-Hochberg corrected over the non-empty cells
    (scipy.stats.false_discovery_control), significant below `alpha`. Cells with fewer than
    `min_count` samples in all are never significant (too few to tell), empty cells neither."""
    from scipy.stats import false_discovery_control

    a, b = np.asarray(counts_a, np.int64), np.asarray(counts_b, np.int64)
    n = a + b
    significant = np.zeros(n.shape, dtype=bool)
    filled = n > 0
    if filled.any():
        q = false_discovery_control(_binom_two_sided(a[filled], n[filled], a.sum() / n.sum()))
        significant[filled] = (q < alpha) & (n[filled] >= min_count)
    return significant


def cell_colours(counts_a: np.ndarray, counts_b: np.ndarray, significant: np.ndarray | None = None) -> np.ndarray:
    """RGBA [G, G, 4] of the comparison atlas: CMAP of `density_share`, EMPTY grey where both are
    empty, and cells not `significant` (default: all significant) pale (`_muted`)."""
    share = density_share(counts_a, counts_b)
    colours = CMAP(NORM(np.nan_to_num(share, nan=0.5)))
    if significant is not None:
        mute = ~np.asarray(significant, dtype=bool)
        colours[mute] = _muted(share[mute])
    colours[np.isnan(share)] = EMPTY
    return colours


def _dark(rgba: np.ndarray) -> np.ndarray:
    """Colours that need white text: Rec. 601 luma under 0.47 (the viewer's rule)."""
    return rgba[..., :3] @ np.array([0.299, 0.587, 0.114]) < 0.47


def atlas_legend(name_a: str, name_b: str, min_count: int = 10, alpha: float = 0.05,
                 outlined: bool = True) -> list[Patch]:
    """The legend entries of the comparison atlas's colours (`outlined`: significant cells framed in black)."""
    edge, note = ("black", ", outlined") if outlined else ("none", "")
    return [Patch(facecolor=CMAP(0.85), edgecolor=edge, label=f"more {name_a} than {name_b} (significant{note})"),
            Patch(facecolor=CMAP(0.15), edgecolor=edge, label=f"more {name_b} than {name_a} (significant{note})"),
            Patch(color=tuple(_muted(np.array(1.0))),
                  label=f"pale: not significant (BH q >= {alpha:g}, or < {min_count} samples)"),
            Patch(color=EMPTY, label="grey: no samples")]


def _cell_ticks(ax, grid: int) -> None:
    """Cell indices 0..grid-1 at the cell centres, at most ~16 per axis."""
    ticks = np.arange(0, grid, max(1, -(-grid // 16)))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(ticks + 0.5, [str(t) for t in ticks], fontsize=7)
    ax.set_xlabel("cell x (column)", fontsize=8)
    ax.set_ylabel("cell y (row)", fontsize=8)


def comparison_atlas_figure(counts_a: np.ndarray, counts_b: np.ndarray, name_a: str, name_b: str, title: str,
                            alpha: float = 0.05, min_count: int = 10):
    """The figure of `comparison_atlas` (not saved; close it after use)."""
    grid = counts_a.shape[0]
    significant = cell_significance(counts_a, counts_b, alpha, min_count)
    colours = cell_colours(counts_a, counts_b, significant)
    fig, ax = plt.subplots(figsize=(7.5, 7.4), layout="constrained")
    ax.imshow(colours, origin="lower", extent=(0, grid, 0, grid), interpolation="nearest")
    ax.add_collection(PatchCollection([Rectangle((ix, iy), 1, 1) for iy, ix in zip(*np.nonzero(significant))],
                                      facecolor="none", edgecolor="black", linewidth=1.0 if grid <= 20 else 0.5))
    if grid <= 20:
        dark = _dark(colours)
        for iy, ix in zip(*np.nonzero(counts_a + counts_b)):
            ax.text(ix + 0.5, iy + 0.5, f"{counts_a[iy, ix]}\n{counts_b[iy, ix]}", ha="center", va="center",
                    fontsize=min(10, 123 / grid), linespacing=0.9, color="white" if dark[iy, ix] else "black")
    _cell_ticks(ax, grid)
    bar = fig.colorbar(ScalarMappable(NORM, CMAP), ax=ax, fraction=0.046, pad=0.03, ticks=[0, 0.25, 0.5, 0.75, 1])
    bar.ax.set_yticklabels([f"0: only {name_b}", "0.25", "0.5: equal", "0.75", f"1: only {name_a}"], fontsize=7)
    bar.set_label(f"{name_a}'s share of the cell's density\n(each dataset divided by its own total)", fontsize=8)
    n_filled, n_sig = int(((counts_a + counts_b) > 0).sum()), int(significant.sum())
    legend_title = f"{n_sig} of {n_filled} non-empty cells significant"
    if grid <= 20:
        legend_title += f"; numbers: {name_a} count above {name_b} count"
    fig.legend(handles=atlas_legend(name_a, name_b, min_count, alpha), loc="outside lower center", ncol=2,
               fontsize=7, title=_wrap(legend_title, 6.5, 7.5), title_fontsize=7.5, frameon=False)
    fig.suptitle(_wrap(title, 7.0, 10), fontsize=10)
    return fig


def comparison_atlas(counts_a: np.ndarray, counts_b: np.ndarray, name_a: str, name_b: str, title: str,
                     path: Path, alpha: float = 0.05, min_count: int = 10) -> Path:
    """Cells coloured by the share of dataset a in the cell's density (`density_share`, 0..1; the
    colourbar shows this share, not a log ratio): red where a is over-represented, blue where b is,
    white where they agree, grey where both are empty. Cells whose difference is significant
    (`cell_significance` at `alpha`, at least `min_count` samples) are outlined in black, the others
    pale. A legend outside the axes names the colours; the axes number the cells (x column, y row,
    from the bottom left; thinned to ~16 on finer grids). Counts a above b printed on grids up
    to 20, white on dark cells (on finer grids the numbers would be under 4 points high at this
    size: unreadable, and a thousand text artists cost matplotlib seconds per figure)."""
    fig = comparison_atlas_figure(counts_a, counts_b, name_a, name_b, title, alpha, min_count)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kl_heatmap(table: np.ndarray, layers: list[str], grids: list[int], title: str, path: Path) -> Path:
    """Layers (rows) by grid sizes (columns), KL values written in the cells."""
    width = 1.6 + 1.1 * len(grids)
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.45 * len(layers)))
    image = ax.imshow(table, cmap="magma_r", aspect="auto")
    for i in range(len(layers)):
        for j in range(len(grids)):
            ax.text(j, i, f"{table[i, j]:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if table[i, j] > 0.6 * np.nanmax(table) else "black")
    ax.set_xticks(range(len(grids)), [f"{g}x{g}" for g in grids])
    ax.set_yticks(range(len(layers)), layers)
    fig.colorbar(image, ax=ax)
    fig.suptitle(_wrap(title, width - 0.2, 9), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


GAP = 2  # white pixels between the pictures of a row


def _fit(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int, int, int]:
    """`image` (HWC) enlarged by the largest whole factor that fits, centred on a white
    height x width cell: (cell, factor, top, left)."""
    h, w = image.shape[:2]
    factor = max(1, min(height // h, width // w))
    image = image.repeat(factor, 0).repeat(factor, 1)[:height, :width]
    cell = np.ones((height, width, 3), np.float32)
    top, left = (height - image.shape[0]) // 2, (width - image.shape[1]) // 2
    cell[top:top + image.shape[0], left:left + image.shape[1]] = image
    return cell, factor, top, left


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    return np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]


def _row_figure(rows: list[tuple[str, np.ndarray]], n_cols: int, title: str):
    """One axes per row showing that row's pictures composed into one image (one axes per picture
    made the report's figures cost seconds each: matplotlib lays out every axes and its ticks).
    Returns the figure and the row axes, for drawing on before `_save`."""
    width = 1.1 * n_cols + 1.6
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, 1.15 * len(rows) + 0.6), squeeze=False)
    for ax, (label, canvas) in zip(axes[:, 0], rows):
        ax.imshow(canvas, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(_wrap(title, width - 0.2, 9), fontsize=9)
    return fig, axes[:, 0]


def _save(fig, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _compose(cells: list[np.ndarray], n_cols: int, height: int, width: int) -> np.ndarray:
    canvas = np.ones((height, n_cols * (width + GAP) - GAP, 3), np.float32)
    for i, cell in enumerate(cells):
        canvas[:, i * (width + GAP):i * (width + GAP) + width] = cell
    return canvas


def example_panel(rows: list[tuple[str, list[np.ndarray], list[tuple[int, int, int, int]]]], title: str,
                  path: Path) -> Path:
    """One row per (cell, dataset): example images with the receptive-field box of the sampled
    position, and the patch itself (enlarged) beside each image."""
    n_cols = max((2 * len(images) for _, images, _ in rows), default=2)
    pictures = [image for _, images, _ in rows for image in images]
    height = max((p.shape[0] for p in pictures), default=1)
    width = max((p.shape[1] for p in pictures), default=1)
    composed, placed = [], []
    for label, images, boxes in rows:
        cells, row_boxes = [], []
        for i, (image, (y0, x0, y1, x1)) in enumerate(zip(images, boxes)):
            image = _rgb(image)
            cell, factor, top, left = _fit(image, height, width)
            cells += [cell, _fit(image[y0:y1, x0:x1], height, width)[0]]
            x = 2 * i * (width + GAP) + left
            row_boxes.append((x + x0 * factor - 0.5, top + y0 * factor - 0.5, (x1 - x0) * factor, (y1 - y0) * factor))
        composed.append((label, _compose(cells, n_cols, height, width)))
        placed.append(row_boxes)
    fig, axes = _row_figure(composed, n_cols, title)
    for ax, row_boxes in zip(axes, placed):
        for x, y, w, h in row_boxes:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, color="yellow", linewidth=1.2))
    return _save(fig, path, 100)


def _overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The heat map (normalised to its own range, as imshow does) in the inferno colours over the
    image, stretched bilinearly to the image's size."""
    from scipy.ndimage import zoom

    h, w = image.shape[:2]
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != (h, w):
        heat = zoom(heat, (h / heat.shape[0], w / heat.shape[1]), order=1, grid_mode=True, mode="nearest")
    span = heat.max() - heat.min()
    colours = plt.get_cmap("inferno")((heat - heat.min()) / span if span > 0 else np.zeros_like(heat))[..., :3]
    return ((1 - alpha) * image + alpha * colours).astype(np.float32)


def image_rows(rows: list[tuple[str, list[np.ndarray]]], title: str, path: Path,
               overlays: list[list[np.ndarray | None]] | None = None) -> Path:
    """One labelled row of images (HWC in [0, 1]) per entry; optional heat maps drawn over them."""
    n_cols = max((len(images) for _, images in rows), default=1)
    pictures = [image for _, images in rows for image in images]
    height = max((p.shape[0] for p in pictures), default=1)
    width = max((p.shape[1] for p in pictures), default=1)
    composed = []
    for r, (label, images) in enumerate(rows):
        cells = []
        for c, image in enumerate(images):
            image = _rgb(image)
            heat = overlays[r][c] if overlays else None
            cells.append(_fit(image if heat is None else _overlay(image, heat), height, width)[0])
        composed.append((label, _compose(cells, n_cols, height, width)))
    fig, _ = _row_figure(composed, n_cols, title)
    return _save(fig, path, 100)


def line_panels(panels: list[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]], title: str, path: Path,
                xlabel: str = "", log_y: bool = False) -> Path:
    """Side-by-side line plots: each panel maps a series name to (x, y)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.0), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels):
        for label, (x, y) in series.items():
            ax.plot(x, y, marker="o" if len(x) < 20 else None, markersize=3, label=label)
        ax.set_title(_wrap(name, 3.2, 9), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        if log_y:
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(_wrap(title, 3.4 * len(panels) - 0.2, 9), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def distributions(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path, xlabel: str = "",
                  ylabel: str = "") -> Path:
    """Histograms (bin centres, shares) drawn as steps on one axis, the legend below it."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, (x, y) in series.items():
        ax.step(x, y, where="mid", label=label, linewidth=1.6)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
    ax.set_title(_wrap(title, 7.3, 10), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def img_link(src, width: int | None = None, alt: str = "") -> str:
    """An image shown at `width` (or at most the page's width) that links to its full size."""
    src = html.escape(str(src), quote=True)
    size = f" width='{width}'" if width else " style='max-width:100%'"
    return f"<a href='{src}'><img src='{src}'{size} alt='{html.escape(alt, quote=True)}'></a>"


def html_table(header: list[str], rows: list[list]) -> str:
    """A plain HTML table; floats to 4 significant digits."""
    def cell(v):
        return html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
