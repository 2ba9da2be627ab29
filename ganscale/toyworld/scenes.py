"""Procedural 32x32 scenes with exact per-pixel class masks.

A scene is a sky gradient above a textured ground (the horizon row is random), one main object
(its class is the scene's label) and sometimes one small extra object. Everything is drawn with
hard edges, so the mask is exactly the class of the topmost painted pixel. A scene is fully
determined by its seed (and the excluded classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

SIZE = 32
CLASS_NAMES = ["sky", "ground", "sun", "box", "tree", "ball"]  # segmentation classes
OBJECT_CLASSES = ["sun", "box", "tree", "ball"]  # the probe's labels (index = label)
SKY, GROUND = 0, 1
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
_YY.setflags(write=False)
_XX.setflags(write=False)


def _allowed(exclude: Sequence[str]) -> list[int]:
    exclude = set(exclude)
    unknown = exclude - set(OBJECT_CLASSES)
    if unknown:
        raise ValueError(f"exclude: unknown object classes {sorted(unknown)} (known: {', '.join(OBJECT_CLASSES)})")
    allowed = [i for i, name in enumerate(OBJECT_CLASSES) if name not in exclude]
    if not allowed:
        raise ValueError("exclude: every object class is excluded; at least one must remain")
    return allowed


def _paint(image: np.ndarray, mask: np.ndarray, region: np.ndarray, colour: np.ndarray, cls: int) -> None:
    """Paint `colour` ([3] or [3, H, W]) where `region` is true and mark those pixels `cls`."""
    if colour.ndim == 1:
        image[:, region] = colour[:, None]
    else:
        image[:, region] = colour[:, region]
    mask[region] = cls


def _draw_object(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, kind: str,
                 horizon: int, small: bool) -> None:
    scale = 0.5 if small else 1.0
    cls = CLASS_INDEX[kind]
    if kind == "sun":
        r = min(rng.uniform(3.5, 7.0) * scale + (0.6 if small else 0.0), (horizon - 2) / 2)
        cx = rng.uniform(r, SIZE - 1 - r)
        cy = rng.uniform(r, horizon - r - 1)  # wholly in the sky
        d2 = (_YY - cy) ** 2 + (_XX - cx) ** 2
        region = d2 <= r * r
        t = rng.uniform(0.0, 1.0)  # yellow (0) .. orange (1)
        base = np.array([1.0, 0.92 - 0.35 * t, 0.25 - 0.17 * t], np.float32)
        glow = 1.0 - 0.18 * np.sqrt(d2) / r  # brighter at the centre
        _paint(image, mask, region, base[:, None, None] * glow[None], cls)
    elif kind == "ball":
        r = rng.uniform(3.5, 7.0) * scale + (0.6 if small else 0.0)
        cx = rng.uniform(r, SIZE - 1 - r)
        bottom = rng.uniform(horizon + 1, SIZE - 0.5)
        cy = bottom - r
        d2 = (_YY - cy) ** 2 + (_XX - cx) ** 2
        region = d2 <= r * r
        shade = rng.uniform(0.0, 1.0)
        base = np.array([0.08 + 0.12 * shade, 0.18 + 0.2 * shade, 0.75 + 0.2 * shade], np.float32)
        # a highlight towards the upper left, darker towards the lower right
        light = 1.0 + 0.35 * np.exp(-((_YY - (cy - 0.4 * r)) ** 2 + (_XX - (cx - 0.4 * r)) ** 2) / (0.3 * r * r)) \
            - 0.25 * np.clip(((_YY - cy) + (_XX - cx)) / (2 * r), 0, 1)
        _paint(image, mask, region, np.clip(base[:, None, None] * light[None], 0, 1), cls)
    elif kind == "box":
        w = rng.uniform(7.0, 13.0) * scale + (0.5 if small else 0.0)
        h = w * rng.uniform(0.8, 1.2)
        x0 = rng.uniform(0, SIZE - w)
        bottom = rng.uniform(horizon + 1, SIZE)
        y0 = bottom - h
        region = (_XX >= x0) & (_XX < x0 + w) & (_YY >= y0) & (_YY < bottom)
        t = rng.uniform(0.0, 1.0)  # red (0) .. brown (1)
        base = np.array([0.85 - 0.3 * t, 0.12 + 0.16 * t, 0.1 + 0.05 * t], np.float32)
        colour = np.broadcast_to(base[:, None, None], (3, SIZE, SIZE)).copy()
        edge = (_XX < x0 + 1) | (_XX >= x0 + w - 1) | (_YY < y0 + 1) | (_YY >= bottom - 1)
        colour[:, edge] *= 0.6  # darker outline
        colour[:, _XX >= x0 + w / 2] *= 0.85  # shaded right side
        _paint(image, mask, region, colour, cls)
    elif kind == "tree":
        cw = rng.uniform(8.0, 15.0) * scale + (1.0 if small else 0.0)
        ch = rng.uniform(9.0, 14.0) * scale + (1.0 if small else 0.0)
        trunk_h = rng.uniform(2.5, 5.0) * scale + (1.0 if small else 0.0)
        trunk_w = 2.0 if not small else 1.0
        cx = rng.uniform(cw / 2, SIZE - cw / 2)
        bottom = rng.uniform(horizon + 1, SIZE)
        top = bottom - trunk_h - ch
        trunk = (np.abs(_XX + 0.5 - cx) <= trunk_w / 2) & (_YY >= bottom - trunk_h) & (_YY < bottom)
        depth = _YY + 0.5 - top  # 0 at the apex
        canopy = (depth >= 0) & (depth <= ch) & (np.abs(_XX + 0.5 - cx) <= depth * (cw / 2) / ch)
        _paint(image, mask, trunk, np.array([0.42, 0.26, 0.1], np.float32), cls)
        g = rng.uniform(0.0, 1.0)
        base = np.array([0.1 + 0.15 * g, 0.45 + 0.3 * g, 0.1 + 0.08 * g], np.float32)
        light = 1.0 - 0.25 * (_XX + 0.5 - cx) / max(cw / 2, 1.0)  # light from the left
        _paint(image, mask, canopy, np.clip(base[:, None, None] * light[None], 0, 1), cls)
    else:  # pragma: no cover - callers only pass OBJECT_CLASSES
        raise ValueError(kind)


def render_scene(seed: int, exclude: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """One scene: image float32 [3, 32, 32] in [0, 1], mask int64 [32, 32] (index into
    CLASS_NAMES), label int (index into OBJECT_CLASSES of the main object)."""
    allowed = _allowed(exclude)
    rng = np.random.default_rng(int(seed))
    horizon = int(rng.integers(13, 23))  # first ground row
    image = np.empty((3, SIZE, SIZE), np.float32)
    mask = np.empty((SIZE, SIZE), np.int64)

    # sky: darker blue at the top, paler towards the horizon
    top = np.array([rng.uniform(0.15, 0.35), rng.uniform(0.35, 0.55), rng.uniform(0.75, 0.95)], np.float32)
    low = np.array([rng.uniform(0.6, 0.8), rng.uniform(0.75, 0.9), rng.uniform(0.9, 1.0)], np.float32)
    t = np.clip(_YY / max(horizon - 1, 1), 0, 1)[None]
    sky_colour = top[:, None, None] * (1 - t) + low[:, None, None] * t
    sky = _YY < horizon
    _paint(image, mask, sky, sky_colour, SKY)

    # ground: khaki/sand, darker towards the bottom, with speckle and faint furrows
    g = rng.uniform(0.0, 1.0)
    base = np.array([0.62 + 0.12 * g, 0.55 + 0.08 * g, 0.32 + 0.1 * g], np.float32)
    d = np.clip((_YY - horizon) / max(SIZE - horizon, 1), 0, 1)[None]
    furrows = 0.04 * np.sin(_YY * rng.uniform(1.5, 2.5) + rng.uniform(0, 6.3))[None]
    speckle = rng.normal(0.0, 0.035, (1, SIZE, SIZE)).astype(np.float32)
    ground_colour = base[:, None, None] * (1.0 - 0.3 * d) + furrows + speckle
    _paint(image, mask, ~sky, ground_colour, GROUND)

    label = allowed[int(rng.integers(len(allowed)))]
    extra = allowed[int(rng.integers(len(allowed)))] if rng.uniform() < 0.3 else None
    if extra is not None:  # drawn first: the main object is always fully visible on top of it
        _draw_object(rng, image, mask, OBJECT_CLASSES[extra], horizon, small=True)
    _draw_object(rng, image, mask, OBJECT_CLASSES[label], horizon, small=False)

    image += rng.normal(0.0, 0.015, image.shape).astype(np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    return image, mask, label


def render_batch(seeds: Iterable[int], exclude: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scenes for many seeds: images [B, 3, 32, 32] float32, masks [B, 32, 32] int64, labels [B] int64."""
    seeds = [int(s) for s in seeds]
    images = np.empty((len(seeds), 3, SIZE, SIZE), np.float32)
    masks = np.empty((len(seeds), SIZE, SIZE), np.int64)
    labels = np.empty(len(seeds), np.int64)
    for i, s in enumerate(seeds):
        images[i], masks[i], labels[i] = render_scene(s, exclude)
    return torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(labels)


def save_image_folder(directory: str | Path, seeds: Iterable[int], exclude: Sequence[str] = ()) -> list[Path]:
    """Write one RGB PNG per seed, named `{seed}.png` (zero-padded to 8 digits so names sort by
    seed), into `directory` (created if needed). Returns the paths written."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in seeds:
        image, _, _ = render_scene(int(s), exclude)
        pixels = (image.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
        path = directory / f"{int(s):08d}.png"
        Image.fromarray(pixels, mode="RGB").save(path)
        paths.append(path)
    return paths
