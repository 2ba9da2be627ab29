"""Pictures from the atlas statistics (matplotlib, no screen needed)."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def comparison_atlas(counts_a: np.ndarray, counts_b: np.ndarray, name_a: str, name_b: str, title: str,
                     path: Path) -> Path:
    """Cells coloured by the share of dataset a in the cell's density (each dataset normalised to
    its own total, so sample counts do not bias it): red where a is over-represented, blue where b
    is, white where they agree, grey where both are empty. Counts a/b printed on grids up to 20
    (on finer grids the numbers would be under 4 points high at this size: unreadable, and a
    thousand text artists cost matplotlib seconds per figure)."""
    grid = counts_a.shape[0]
    pa, pb = counts_a / max(counts_a.sum(), 1), counts_b / max(counts_b.sum(), 1)
    with np.errstate(invalid="ignore"):
        share = np.where(pa + pb > 0, pa / (pa + pb), np.nan)
    fig, ax = plt.subplots(figsize=(7.5, 7))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    image = ax.imshow(share, cmap=cmap, norm=TwoSlopeNorm(0.5, 0, 1), origin="lower", extent=(0, grid, 0, grid))
    if grid <= 20:
        for iy, ix in zip(*np.nonzero(counts_a + counts_b)):
            ax.text(ix + 0.5, iy + 0.5, f"{counts_a[iy, ix]}\n{counts_b[iy, ix]}", ha="center", va="center",
                    fontsize=7, linespacing=0.9)
    ax.set_xticks([])
    ax.set_yticks([])
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(f"share of {name_a} (red) vs {name_b} (blue)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kl_heatmap(table: np.ndarray, layers: list[str], grids: list[int], title: str, path: Path) -> Path:
    """Layers (rows) by grid sizes (columns), KL values written in the cells."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(grids), 1.2 + 0.45 * len(layers)))
    image = ax.imshow(table, cmap="magma_r", aspect="auto")
    for i in range(len(layers)):
        for j in range(len(grids)):
            ax.text(j, i, f"{table[i, j]:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if table[i, j] > 0.6 * np.nanmax(table) else "black")
    ax.set_xticks(range(len(grids)), [f"{g}x{g}" for g in grids])
    ax.set_yticks(range(len(layers)), layers)
    fig.colorbar(image, ax=ax)
    ax.set_title(title, fontsize=9)
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
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * n_cols + 1.6, 1.15 * len(rows) + 0.6), squeeze=False)
    for ax, (label, canvas) in zip(axes[:, 0], rows):
        ax.imshow(canvas, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
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
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        if log_y:
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def html_table(header: list[str], rows: list[list]) -> str:
    """A plain HTML table; floats to 4 significant digits."""
    def cell(v):
        return html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
