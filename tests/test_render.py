"""Report pictures: image rows and example panels draw every picture, its patch and its heat map."""

import numpy as np
from PIL import Image

from ganscale import render


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)


def _has(pixels: np.ndarray, colour, tolerance: int = 8) -> bool:
    return bool((np.abs(pixels - np.asarray(colour)) <= tolerance).all(1).any())


def test_image_rows_draw_every_image_and_the_heat_maps_over_them(tmp_path):
    red = np.zeros((16, 16, 3)); red[..., 0] = 1
    green = np.zeros((8, 8)); green[:] = 0.5  # grey, and of another size than the red image
    path = render.image_rows([("a", [red]), ("b", [red, green])], "t", tmp_path / "rows.png")
    pixels = _pixels(path)
    assert _has(pixels, (255, 0, 0)) and _has(pixels, (128, 128, 128))
    heat = np.outer(np.arange(4), np.ones(4))  # dark at the top, bright at the bottom
    overlaid = _pixels(render.image_rows([("a", [red])], "t", tmp_path / "heat.png", [[heat]]))
    assert not _has(overlaid, (255, 0, 0))  # the heat map covers the whole image
    top = render._overlay(red.astype(np.float32), heat)[0, 8]
    bottom = render._overlay(red.astype(np.float32), heat)[-1, 8]
    assert bottom[1] > top[1]  # inferno runs from black to yellow


def test_example_panel_shows_each_image_its_receptive_field_and_the_patch(tmp_path):
    image = np.zeros((32, 32, 3), np.float32)
    image[8:16, 8:16] = [0, 0, 1]  # a blue square inside the receptive field
    path = render.example_panel([("cell (0,0)\nreal: 3", [image, image], [(8, 8, 16, 16)] * 2),
                                 ("cell (0,0)\nfull: 0", [], [])], "title", tmp_path / "panel.png")
    pixels = _pixels(path)
    assert _has(pixels, (0, 0, 255)) and _has(pixels, (255, 255, 0), tolerance=40)  # the patch; the yellow box
    cell, factor, top, left = render._fit(image[8:16, 8:16], 32, 32)
    assert factor == 4 and (top, left) == (0, 0) and (cell == [0, 0, 1]).all()  # the patch fills its cell


def test_cell_significance_hand_computed_cells():
    """Pooled share 0.5 (equal totals): 50/50 agrees with it, 90/10 does not (binomial p ~ 2e-17),
    a cell of 3 samples is never significant, an empty cell neither."""
    a = np.array([[50, 90, 0], [3, 0, 0]])
    b = np.array([[50, 10, 83], [0, 0, 0]])  # 0/83: equal totals (143), so the pooled share is 0.5
    assert a.sum() == b.sum() == 143
    significant = render.cell_significance(a, b)
    assert significant.tolist() == [[False, True, True], [False, False, False]]
    # min_count: 3 samples, 3 of a (p = 0.25 at pooled 0.5, not significant anyway) stay muted even at alpha 1
    assert not render.cell_significance(a, b, alpha=1.0)[1, 0]
    assert render.cell_significance(a, b, alpha=1.0, min_count=1)[1, 0]


def test_binomial_p_values_are_scipys():
    from scipy.stats import binomtest

    rng = np.random.default_rng(1)
    for p in (0.5, 0.8, 1 / 3, 0.02):
        n = rng.integers(1, 300, 200)
        k = rng.binomial(n, np.clip(p + rng.normal(0, 0.1, n.size), 0, 1))
        expected = [binomtest(int(ki), int(ni), p).pvalue for ki, ni in zip(k, n)]
        np.testing.assert_allclose(render._binom_two_sided(k, n, p), expected, rtol=1e-9)


def test_comparison_atlas_has_legend_colourbar_indices_and_readable_counts(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (2000, 2))
    fake = rng.normal(0, 0.7, (500, 2)) + 0.6
    bins = dict(bins=8, range=[[-3, 3], [-3, 3]])
    a = np.histogram2d(real[:, 1], real[:, 0], **bins)[0].astype(int)
    b = np.histogram2d(fake[:, 1], fake[:, 0], **bins)[0].astype(int)
    title = "block3, 8x8: KL(a_rather_long_dataset_name||another_long_name) = 0.123, " * 3
    fig = render.comparison_atlas_figure(a, b, "real", "fake", title)
    try:
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any("more real" in t for t in labels) and any("more fake" in t for t in labels)
        assert any("not significant" in t for t in labels) and any("no samples" in t for t in labels)
        ax, bar = fig.axes
        assert "real's share" in bar.get_ylabel()
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(8)]
        assert "cell x" in ax.get_xlabel() and "cell y" in ax.get_ylabel()
        assert all(len(line) < 90 for line in fig._suptitle.get_text().splitlines())  # wrapped
        # every non-empty cell has its counts, white on dark cells and black on light ones
        texts = {(int(t.get_position()[1]), int(t.get_position()[0])): t for t in ax.texts}
        assert set(texts) == set(zip(*np.nonzero(a + b)))
        colours = render.cell_colours(a, b, render.cell_significance(a, b))
        for (iy, ix), text in texts.items():
            luma = colours[iy, ix, :3] @ [0.299, 0.587, 0.114]
            assert text.get_color() == ("white" if luma < 0.47 else "black")
            assert text.get_text() == f"{a[iy, ix]}\n{b[iy, ix]}"
        assert any(t.get_color() == "white" for t in texts.values())
        # the whole drawing (title, legend, colourbar) inside the figure
        fig.canvas.draw()
        box = fig.bbox
        for artist in (fig._suptitle, fig.legends[0], bar, ax):
            extent = artist.get_window_extent() if artist is not ax else ax.get_tightbbox()
            assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1 and extent.y0 >= box.y0 - 1 \
                and extent.y1 <= box.y1 + 1, artist
    finally:
        render.plt.close(fig)
    path = render.comparison_atlas(a, b, "real", "fake", title, tmp_path / "atlas.png")
    assert path.stat().st_size > 10000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # pale cells: not significant ones paler than the full colour, empty cells grey
    share = render.density_share(a, b)
    muted = render.cell_colours(a, b, np.zeros_like(a, dtype=bool))
    full = render.cell_colours(a, b)
    filled = ~np.isnan(share)
    assert (muted[filled, :3].min(1) >= full[filled, :3].min(1) - 1e-9).all()
    assert np.allclose(full[~filled], render.EMPTY) if (~filled).any() else True
