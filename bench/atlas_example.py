"""Example comparison atlases with realistic counts, to look at: two 2-d Gaussian clouds
(2000 points of "real" around the origin, 500 of "fake" shifted and narrower) binned on a 16 x 16
and an 8 x 8 grid -> bench/results/atlas_example_{16,8}.png.

    PYTHONPATH=. python bench/atlas_example.py
"""

from pathlib import Path

import numpy as np

from ganscale import render

OUT = Path(__file__).parent / "results"


def counts(points: np.ndarray, grid: int) -> np.ndarray:
    """[grid, grid] counts (row iy, column ix) of the points in the square [-3, 3]^2."""
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=grid, range=[[-3, 3], [-3, 3]])
    return counts.astype(np.int64)


def main() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (2000, 2)).clip(-2.999, 2.999)
    fake = (rng.normal(0, 0.7, (500, 2)) + [0.6, 0.3]).clip(-2.999, 2.999)
    for grid in (16, 8):
        a, b = counts(real, grid), counts(fake, grid)
        significant = render.cell_significance(a, b)
        path = render.comparison_atlas(
            a, b, "real", "fake",
            f"block3, {grid}x{grid}: example of two Gaussian clouds, real (2000 samples) against a narrower, "
            f"shifted fake (500 samples): KL(real||fake) and KL(fake||real) would go here",
            OUT / f"atlas_example_{grid}.png")
        print(path, f"{significant.sum()} of {((a + b) > 0).sum()} non-empty cells significant")


if __name__ == "__main__":
    main()
