"""Where a dataset's images come from: seeds (generators, toy scenes) or image files.

Everything here is deterministic in (study seed, dataset name, sample index), so the output never
depends on how the work was split.
"""

from __future__ import annotations

import io
import zlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ganscale.errors import GanscaleError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PROBE_RESIZE_NOTE = ("probe input: each source's own pixels center-cropped to a square, then one bilinear resize "
                     "with antialiasing (torch, align_corners=False) to the probe's input size")
FOLDER_NOTE = ("image folders: every file center-cropped to a square at the folder's side (the shorter side of its "
               "first chosen file; a file of another size is resized to it once, bilinear with antialiasing), "
               "since files of different sizes cannot share a batch")
NATIVE_NOTE = ("sharpness, colour histograms and the FID network (which resizes them once to 299 itself): each "
               "source's own pixels (a generator's output, a folder's files)")
RESIZE_NOTE = f"{PROBE_RESIZE_NOTE}; {FOLDER_NOTE}; {NATIVE_NOTE}"


def _key(*parts: int | str) -> list[int]:
    return [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]


def dataset_seeds(study_seed: int, dataset: str, n: int) -> np.ndarray:
    """The integer seed of each of a dataset's n samples (int64, non-negative)."""
    return np.random.default_rng(_key(study_seed, dataset)).integers(0, 2**62, size=n, dtype=np.int64)


def position_draws(study_seed: int, dataset: str, layer: str, n: int) -> np.ndarray:
    """Uniform [0,1) draws [n, 2] that choose each sample's (y, x) in the layer's featuremap."""
    return np.random.default_rng(_key(study_seed, dataset, "position", layer)).random((n, 2))


def positions_for(draws: np.ndarray, height: int, width: int) -> np.ndarray:
    """Map draws to positions away from the border (1..h-2, as the atlas papers do), or anywhere
    if the map is smaller than 3."""
    def axis(u, size):
        if size >= 3:
            return 1 + np.floor(u * (size - 2)).astype(np.int64)
        return np.floor(u * size).astype(np.int64)
    return np.stack([axis(draws[:, 0], height), axis(draws[:, 1], width)], axis=1)


def list_images(path: str, storage_options: dict | None, field: str) -> list[str]:
    """Image files under a folder (recursively), sorted, as full URLs/paths."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    if not fs.isdir(root):
        raise GanscaleError(f"{field}: image folder not found: {path}")
    files = sorted(f for f in fs.find(root) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise GanscaleError(f"{field}: no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return files if protocol in ("file", "local") else [f"{protocol}://{f}" for f in files]


def choose_files(files: list[str], samples: int, study_seed: int, dataset: str, field: str) -> list[str]:
    if samples > len(files):
        raise GanscaleError(f"{field}.samples: {samples} requested but the folder holds {len(files)} images")
    if samples == len(files):
        return files
    picked = np.random.default_rng(_key(study_seed, dataset, "files")).choice(len(files), samples, replace=False)
    return [files[i] for i in np.sort(picked)]


def folder_side(path: str, storage_options: dict | None, field: str) -> int:
    """The side an image folder is read at: the shorter side of `path`, its first chosen file
    (only the file's header is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with fsspec_open(path, storage_options) as f:
            return min(Image.open(f).size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise GanscaleError(f"{field}: unreadable image {path}: {type(e).__name__}") from None


def fsspec_open(path: str, storage_options: dict | None):
    import fsspec

    return fsspec.open(path, "rb", **(storage_options or {}))


def read_images(paths: Sequence[str], size: int, storage_options: dict | None, field: str) -> torch.Tensor:
    """Decode image files to [B, 3, size, size] in [0, 1]: each center-cropped to a square, and
    resized (antialiased) only if its side is not `size` already, so files at the folder's side
    keep their own pixels."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in paths:
        try:
            with fsspec_open(path, storage_options) as f:
                image = Image.open(io.BytesIO(f.read()))
                image = image.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise GanscaleError(f"{field}: unreadable image {path}: {type(e).__name__}") from None
        array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        out.append(resize_square(array[None].float() / 255.0, size)[0])
    return torch.stack(out)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Center crop to a square and resize to size x size with antialiasing (see PROBE_RESIZE_NOTE);
    a square image already at `size` is returned as it is."""
    h, w = images.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        images = images[..., top:top + s, left:left + s]
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images.clamp(0, 1)


def check_images(images: torch.Tensor, batch: int, field: str) -> torch.Tensor:
    """A generator's output must be [batch, 3, H, W], finite and in [0, 1] (up to rounding)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != batch or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise GanscaleError(f"{field}: generator returned shape {shape}, expected ({batch}, 3, H, W)")
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise GanscaleError(f"{field}: generator returned NaN or inf in {bad} of {batch} images")
    low, high = float(images.min()), float(images.max())
    if low < -0.01 or high > 1.01:
        raise GanscaleError(f"{field}: generator images must be in [0, 1], got values in [{low:.3g}, {high:.3g}]")
    return images.clamp(0, 1)
