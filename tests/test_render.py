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
