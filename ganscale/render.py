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
    is, white where they agree, grey where both are empty. Counts a/b printed on grids up to 40."""
    grid = counts_a.shape[0]
    pa, pb = counts_a / max(counts_a.sum(), 1), counts_b / max(counts_b.sum(), 1)
    with np.errstate(invalid="ignore"):
        share = np.where(pa + pb > 0, pa / (pa + pb), np.nan)
    fig, ax = plt.subplots(figsize=(7.5, 7))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    image = ax.imshow(share, cmap=cmap, norm=TwoSlopeNorm(0.5, 0, 1), origin="lower", extent=(0, grid, 0, grid))
    if grid <= 40:
        size = 7 if grid <= 20 else 3.6
        for iy, ix in zip(*np.nonzero(counts_a + counts_b)):
            ax.text(ix + 0.5, iy + 0.5, f"{counts_a[iy, ix]}\n{counts_b[iy, ix]}", ha="center", va="center",
                    fontsize=size, linespacing=0.9)
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


def example_panel(rows: list[tuple[str, list[np.ndarray], list[tuple[int, int, int, int]]]], title: str,
                  path: Path) -> Path:
    """One row per (cell, dataset): example images with the receptive-field box of the sampled
    position, and the patch itself beside each image."""
    n_cols = max((2 * len(images) for _, images, _ in rows), default=2)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.1 * n_cols + 1.5, 1.15 * len(rows) + 0.6),
                             squeeze=False)
    for r, (label, images, boxes) in enumerate(rows):
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
        for c in range(n_cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            for spine in axes[r, c].spines.values():
                spine.set_visible(c < 2 * len(images))
        for i, (image, (y0, x0, y1, x1)) in enumerate(zip(images, boxes)):
            axes[r, 2 * i].imshow(image, interpolation="nearest")
            axes[r, 2 * i].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="yellow",
                                               linewidth=1.2))
            axes[r, 2 * i + 1].imshow(image[y0:y1, x0:x1], interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_rows(rows: list[tuple[str, list[np.ndarray]]], title: str, path: Path,
               overlays: list[list[np.ndarray | None]] | None = None) -> Path:
    """One labelled row of images (HWC in [0, 1]) per entry; optional heat maps drawn over them."""
    n_cols = max((len(images) for _, images in rows), default=1)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.1 * n_cols + 1.6, 1.15 * len(rows) + 0.6), squeeze=False)
    for r, (label, images) in enumerate(rows):
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.axis("off")
                continue
            ax.imshow(np.clip(images[c], 0, 1), interpolation="nearest")
            heat = overlays[r][c] if overlays else None
            if heat is not None:
                h, w = images[c].shape[:2]
                ax.imshow(heat, cmap="inferno", alpha=0.55, interpolation="bilinear", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
