"""The store layout, written down once. Every stage reads and writes through these names.

One zarr v3 hierarchy per study (a local folder or s3://bucket/prefix.zarr):

    /                                    attrs: ganscale_version, layout_version, study, config_hash
    datasets/{dataset}/                  attrs: fingerprint, kind, samples, chunk_size, n_chunks,
                                                probe, input_size, resize, spec, image_size ([H, W] measured)
        seed        int64   [N]          the integer seed the image came from (-1 for image files)
        source      string  [N]          image file path ("" for seeded datasets)
        label       int32   [N]          class label of a conditional generator / toy scene (-1: none)
        logits      float32 [N, K]       probe logits (K = 0 for a probe without a class head)
        done        uint8   [n_chunks]   1 once chunk i of every array above and below is written
        checksum    uint32  [n_chunks, A] CRC-32 of chunk i of each array (attrs checksum_arrays: their paths)
        layers/{layer}/activations  float32 [N, C]  the probe's activation at one spatial position
        layers/{layer}/position     int16   [N, 2]  that position (y, x) in the layer's featuremap
        layers/{layer}/pooled       float32 [N, C]  the layer's featuremap averaged over space (metrics)
        image/sharpness     float32 [N]          mean gradient magnitude of the image (metrics.images.sharpness)
        image/colour_hist   uint32  [N, 4, 25]   per-image pixel counts in 25 bins of R, G, B, gray
        features/fid_pool3  float32 [N, 2048]    FID Inception pool3 features (only with metrics.fid_inception)
        layers/{layer}/umap         float32 [N, 2]  joint UMAP layout in [0, 1]          (embed stage)
    staging/{dataset}/                   a dataset's group being resampled after a study change; it
                                         replaces datasets/{dataset} once every chunk is written
    models/umap_{layer}/            attrs: format, settings (n_neighbors, metric, min_dist, a, b, seeds),
                                    datasets and samples in fit order, activations_crc32, crc32 (per array)
        embedding   float32 [N, 2]  the fitted raw layout                                 (embed stage)
        components  float32 [P, C]  the PCA's axes and mean [C] (with embed.pca): plain arrays, never a pickle
    atlas/{layer}/g{G}/             grid statistics, see ganscale.atlas                (atlas stage)
    metrics/                        metric tables and picture inputs, see ganscale.metrics.stage

Root attribute `stages` records each finished stage: input fingerprints and seconds.
Beside the store, `{store}.leases/` holds the leases of runs at work on it (ganscale.lease).

Every per-sample array is chunked along samples with `chunk_size` rows, so chunk i of every array
holds samples [i*chunk_size, (i+1)*chunk_size) and exactly one worker writes it. Arrays carry
dimension names (sample, channel, ...) so xarray can open each group.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import zarr

from ganscale.errors import GanscaleError, StoreDamage

LAYOUT_VERSION = 3  # 3: per-chunk checksums

HIST_BINS = 25  # colour histogram bins per channel
FID_FEATURES = 2048

ACTIVATION_DTYPE = np.float32
LOGITS_DTYPE = np.float32
POSITION_DTYPE = np.int16
# Feature arrays (activations, pooled, fid_pool3: nearly all of a store's bytes) are zstd level 1, not
# zarr's default level 3: 1.7x faster to encode for 4% more bytes on post-ReLU float32 (measured;
# the sample stage's writes bound a GPU worker). Values, and so checksums, are the same either way.
FEATURE_COMPRESSOR = zarr.codecs.ZstdCodec(level=1)


def dataset_path(dataset: str) -> str:
    return f"datasets/{dataset}"


def layer_path(dataset: str, layer: str) -> str:
    return f"datasets/{dataset}/layers/{layer}"


def staging_path(dataset: str) -> str:
    """Where a dataset's group is rebuilt when its study changed: it replaces the old one once complete."""
    return f"staging/{dataset}"


def atlas_path(layer: str, grid: int) -> str:
    return f"atlas/{layer}/g{grid}"


def plain(value):
    """`value` as the store's attributes hold it (JSON): numpy scalars and arrays as Python numbers
    and lists, tuples as lists, keys as strings, and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def open_store(url: str, storage_options: dict | None = None, mode: str = "a") -> zarr.Group:
    """The study's root group, local or on any fsspec filesystem (s3:// via s3fs). Credentials come
    from the environment / AWS configuration: never pass them in storage_options. A store that cannot
    be opened fails in one line naming it (store_error); with mode "r", a missing one raises
    FileNotFoundError (no store yet)."""
    try:
        if "://" in url and not url.startswith("file://"):
            store = zarr.storage.FsspecStore.from_url(
                url, storage_options={**(storage_options or {}), "asynchronous": True}, read_only=mode == "r")
        else:
            store = zarr.storage.LocalStore(url.removeprefix("file://"), read_only=mode == "r")
        return zarr.open_group(store, mode=mode, zarr_format=3)
    except FileNotFoundError as e:
        if mode == "r" and "bucket" not in str(e).lower():
            raise
        raise store_error(url, e) from None
    except Exception as e:
        failure = store_error(url, e)
        if failure is None:
            raise
        raise failure from None


def store_error(url: str, error: BaseException) -> Exception | None:
    """One line for a store that cannot be opened or written: a wrong path or bucket is bad input
    (GanscaleError), permissions, endpoints and credentials are the environment (EnvironmentFailure);
    None for anything else."""
    from ganscale.errors import EnvironmentFailure

    text = " ".join(str(error).split()) or type(error).__name__
    module = type(error).__module__ or ""
    if isinstance(error, (NotADirectoryError, FileExistsError)):
        return GanscaleError(f"store: {url}: a file is in the way ({getattr(error, 'strerror', None) or text})")
    if isinstance(error, ValueError) and "protocol not known" in text.lower():
        return GanscaleError(f"store: {url}: unknown storage protocol (local paths, s3://, or another "
                             "installed fsspec protocol)")
    if isinstance(error, FileNotFoundError) and "bucket" in text.lower():
        return GanscaleError(f"store: {url}: the bucket does not exist")
    if isinstance(error, PermissionError):
        return EnvironmentFailure(f"store: {url}: permission denied")
    if module.startswith("botocore") and "Credentials" in type(error).__name__:
        return EnvironmentFailure(f"store: {url}: no usable S3 credentials ({text}); set AWS_ACCESS_KEY_ID and "
                                  "AWS_SECRET_ACCESS_KEY or an AWS profile")
    if module.startswith(("botocore", "aiobotocore", "aiohttp")) or isinstance(error, (OSError, TimeoutError)):
        return EnvironmentFailure(f"store: {url}: the storage failed: {type(error).__name__}: {text}")
    return None


def store_fs(root: zarr.Group) -> tuple[object, str]:
    """(synchronous fsspec filesystem, path) of the store behind `root`: for work zarr has no API for."""
    import fsspec

    store = root.store
    if isinstance(store, zarr.storage.LocalStore):
        return fsspec.filesystem("file"), str(store.root)
    protocol = store.fs.protocol if isinstance(store.fs.protocol, str) else store.fs.protocol[0]
    options = {k: v for k, v in store.fs.storage_options.items() if k != "asynchronous"}
    return fsspec.filesystem(protocol, **options), store.path.rstrip("/")


def replace_group(root: zarr.Group, source: str, target: str) -> None:
    """Move the complete group at `source` over `target`. Locally a rename; on object stores a copy
    with the `done` flags copied last, then the source deleted. Safe to repeat after a crash at any
    point: until the source is deleted it is complete, and a half-copied target has the new
    fingerprint with some chunks not done, which a rerun computes in place."""
    fs, base = store_fs(root)
    src, dst = f"{base}/{source}", f"{base}/{target}"
    if fs.exists(dst):
        fs.rm(dst, recursive=True)
    if "file" in fs.protocol:
        fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(src, dst, recursive=True)
        return
    files = sorted(fs.find(src), key=lambda f: ("/done/" in f, f))
    fs.copy(files, [dst + f[len(src):] for f in files])
    fs.rm(src, recursive=True)


@dataclass(frozen=True)
class DatasetLayout:
    samples: int
    chunk_size: int
    num_classes: int
    layer_channels: dict[str, int]
    fid_features: bool = False  # whether features/fid_pool3 is stored

    @property
    def n_chunks(self) -> int:
        return -(-self.samples // self.chunk_size)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.samples)


def create_dataset_group(root: zarr.Group, path: str, layout: DatasetLayout, attrs: dict) -> zarr.Group:
    """Create (overwriting) a dataset's group at `path` (dataset_path or staging_path) and all its
    arrays, empty. Metadata only: the workers fill the chunks."""
    n, c = layout.samples, layout.chunk_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that variable-length strings are not in the v3 core spec yet
        group = root.create_group(path, overwrite=True, attributes=attrs)
        group.create_array("seed", shape=(n,), chunks=(c,), dtype=np.int64, fill_value=-1, dimension_names=("sample",))
        group.create_array("source", shape=(n,), chunks=(c,), dtype=str, dimension_names=("sample",))
        group.create_array("label", shape=(n,), chunks=(c,), dtype=np.int32, fill_value=-1, dimension_names=("sample",))
        group.create_array("logits", shape=(n, layout.num_classes), chunks=(c, layout.num_classes),
                           dtype=LOGITS_DTYPE, dimension_names=("sample", "class"))
        group.create_array("done", shape=(layout.n_chunks,), chunks=(1,), dtype=np.uint8, fill_value=0,
                           dimension_names=("chunk",))
        for layer, channels in layout.layer_channels.items():
            lg = group.create_group(f"layers/{layer}")
            lg.create_array("activations", shape=(n, channels), chunks=(c, channels), dtype=ACTIVATION_DTYPE,
                            compressors=FEATURE_COMPRESSOR,
                            dimension_names=("sample", "channel"))
            lg.create_array("position", shape=(n, 2), chunks=(c, 2), dtype=POSITION_DTYPE, fill_value=-1,
                            dimension_names=("sample", "yx"))
            lg.create_array("pooled", shape=(n, channels), chunks=(c, channels), dtype=ACTIVATION_DTYPE,
                            compressors=FEATURE_COMPRESSOR,
                            dimension_names=("sample", "channel"))
        group.create_array("image/sharpness", shape=(n,), chunks=(c,), dtype=np.float32, dimension_names=("sample",))
        group.create_array("image/colour_hist", shape=(n, 4, HIST_BINS), chunks=(c, 4, HIST_BINS), dtype=np.uint32,
                           dimension_names=("sample", "channel", "bin"))
        if layout.fid_features:
            group.create_array("features/fid_pool3", shape=(n, FID_FEATURES), chunks=(c, FID_FEATURES),
                               compressors=FEATURE_COMPRESSOR,
                               dtype=ACTIVATION_DTYPE, dimension_names=("sample", "feature"))
        paths = checksummed_arrays(layout)
        group.create_array("checksum", shape=(layout.n_chunks, len(paths)), chunks=(1, len(paths)), dtype=np.uint32,
                           fill_value=0, dimension_names=("chunk", "array"))
        group.attrs["checksum_arrays"] = paths
    return group


def checksummed_arrays(layout: DatasetLayout) -> list[str]:
    """The per-sample arrays of a dataset group, in the order of the `checksum` columns."""
    paths = ["seed", "source", "label", "logits"]
    for layer in layout.layer_channels:
        paths += [f"layers/{layer}/activations", f"layers/{layer}/position", f"layers/{layer}/pooled"]
    paths += ["image/sharpness", "image/colour_hist"] + (["features/fid_pool3"] if layout.fid_features else [])
    return paths


def chunk_checksum(values: np.ndarray, dtype) -> int:
    """CRC-32 of one chunk of an array, as stored (so what is read back hashes the same)."""
    import zlib

    if np.dtype(dtype).kind in "OTU":  # variable-length strings
        return zlib.crc32("\0".join(str(v) for v in np.asarray(values).ravel()).encode())
    return zlib.crc32(np.ascontiguousarray(np.asarray(values, dtype=dtype)).tobytes())


def verify_chunks(group: zarr.Group, layout: DatasetLayout, chunks=None) -> list[tuple[str, int, str]]:
    """(array, chunk, problem) for every chunk whose data no longer matches its checksum, or cannot
    be read (a deleted chunk file reads back as the fill value, a corrupt one fails to decode), and
    for every chunk whose bookkeeping is lost: a `done` flag that does not decode or went missing
    (the chunk's data is all there and matches its checksums, yet it is not marked done), or a
    `checksum` row that does not decode. Each is recomputed by `run --verify`."""
    done, unreadable = read_done(group)
    bad = [("done", int(c), "unreadable flag (bookkeeping lost)") for c in unreadable]
    if chunks is None:
        chunks = [int(c) for c in np.flatnonzero(done)]
        if "checksum" in group:  # a lost done flag: the chunk has checksums and data, but reads as not done
            bad += [("done", c, "flag missing, though the chunk was written (bookkeeping lost)")
                    for c in lost_done_flags(group, layout, done, unreadable)]
    else:
        chunks = [c for c in chunks if done[c]]
    if "checksum" not in group:
        return bad + [("checksum", int(c), "no checksums (written by an older ganscale)") for c in chunks]
    paths = group.attrs.get("checksum_arrays", checksummed_arrays(layout))
    for chunk in chunks:
        start, stop = layout.chunk_range(int(chunk))
        try:
            stored = group["checksum"][int(chunk)]
        except Exception as e:
            bad.append(("checksum", int(chunk), f"unreadable ({type(e).__name__}; bookkeeping lost)"))
            continue
        for column, path in enumerate(paths):
            array = group[path]
            try:
                got = chunk_checksum(array[start:stop], array.dtype)
            except Exception as e:  # codecs raise many types for damaged bytes
                bad.append((path, int(chunk), f"unreadable ({type(e).__name__})"))
                continue
            if got != int(stored[column]):
                bad.append((path, int(chunk), "checksum mismatch (missing or changed chunk)"))
    return bad


def lost_done_flags(group: zarr.Group, layout: DatasetLayout, done: np.ndarray, unreadable=()) -> list[int]:
    """Chunks not marked done whose `done` flag file is missing although their checksum row was
    written (checksums are written just before the flag): their flag was lost, not never set."""
    fs, base = store_fs(group)
    base = f"{base}/{group.path}" if group.path else base
    try:  # chunk keys: done/c/{i}, checksum/c/{i}/0
        present = {int(p.rstrip("/").split("/")[-1]) for p in fs.find(f"{base}/done/c")}
        rows = {int(p.rstrip("/").split("/")[-2]) for p in fs.find(f"{base}/checksum/c")}
    except Exception:  # a store whose files cannot be listed: nothing to add
        return []
    return sorted(c for c in rows - present if c < len(done) and not done[c] and c not in unreadable)


def write_chunk(group: zarr.Group, layout: DatasetLayout, chunk: int, *, seed: np.ndarray, source: np.ndarray,
                label: np.ndarray, logits: np.ndarray, activations: dict[str, np.ndarray],
                positions: dict[str, np.ndarray], pooled: dict[str, np.ndarray], sharpness: np.ndarray,
                colour_hist: np.ndarray, fid_pool3: np.ndarray | None = None) -> None:
    """Write chunk `chunk` of every array, then its checksums, then mark it done (last, so a crash
    leaves it undone). The arrays are encoded and written concurrently (WRITE_THREADS): one chunk of
    InceptionV1's nine layers is ~50 MB, and written one array after another its compression alone
    held an H200 worker to ~1,400 images/s against the models' ~5,000 (bench/sample_profile.py)."""
    from concurrent.futures import ThreadPoolExecutor

    start, stop = layout.chunk_range(chunk)
    values = {"seed": seed, "source": source, "label": label, "logits": logits, "image/sharpness": sharpness,
              "image/colour_hist": colour_hist, "features/fid_pool3": fid_pool3}
    for layer in layout.layer_channels:
        values.update({f"layers/{layer}/activations": activations[layer],
                       f"layers/{layer}/position": positions[layer], f"layers/{layer}/pooled": pooled[layer]})
    paths = checksummed_arrays(layout)

    def write(path: str) -> int:
        array = group[path]
        array[start:stop] = values[path]
        return chunk_checksum(values[path], array.dtype)

    with warnings.catch_warnings():  # zarr warns that variable-length strings are not in the v3 core spec yet
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(min(WRITE_THREADS, len(paths))) as pool:
            checksums = list(pool.map(write, paths))
        group["checksum"][chunk] = checksums
    group["done"][chunk] = 1


WRITE_THREADS = 8  # arrays of one chunk encoded and written at once (zstd and CRC-32 release the GIL)


def read_done(group: zarr.Group) -> tuple[np.ndarray, list[int]]:
    """(done flags, chunks whose flag does not decode). An undecodable flag counts as not done, so
    the chunk is recomputed rather than the whole dataset failing to read."""
    try:
        return group["done"][:].astype(bool), []
    except Exception:
        n = group["done"].shape[0]
        flags, unreadable = np.zeros(n, dtype=bool), []
        for i in range(n):
            try:
                flags[i] = bool(group["done"][i])
            except Exception:
                unreadable.append(i)
        return flags, unreadable


def seal_chunks(group: zarr.Group, layout: DatasetLayout) -> None:
    """Checksum every chunk of a dataset group filled by other means than write_chunk (benchmarks,
    tests, imported data) and mark it done, so the stages' verified reads accept it."""
    paths = group.attrs.get("checksum_arrays", checksummed_arrays(layout))
    for chunk in range(layout.n_chunks):
        start, stop = layout.chunk_range(chunk)
        group["checksum"][chunk] = [chunk_checksum(group[p][start:stop], group[p].dtype) for p in paths]
    group["done"][:] = 1


def done_chunks(group: zarr.Group) -> np.ndarray:
    return read_done(group)[0]


# --- reading what was verified ------------------------------------------------------------------
# Every stage reads sample arrays through read_rows / read_ids: each chunk read is checked against
# the CRC-32 written with it (the dataset's `checksum` table for sample arrays, the array's
# `chunk_checksums` attribute for arrays later stages add, such as `umap`), so damage that still
# decodes is found where it is read instead of spreading into every stage downstream.


def _damage(group: zarr.Group, path: str, chunk: int, problem: str) -> StoreDamage:
    where = f"{group.path}/{path}" if group.path else path
    return StoreDamage(f"store: {where} chunk {chunk}: {problem}; `ganscale run --verify` recomputes damaged "
                       "sample chunks (or rerun the stage that wrote it with --force)")


def _read_or_damage(group: zarr.Group, path: str, chunk: int, read):
    try:
        return read()
    except (KeyError, StoreDamage):
        raise
    except Exception as e:  # codecs raise many types for damaged bytes
        raise _damage(group, path, chunk, f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})") \
            from None


def expected_checksums(group: zarr.Group, path: str, first: int, last: int) -> np.ndarray | None:
    """The CRC-32 recorded for chunks [first, last) of array `path` of a dataset group, or None when
    none was recorded (a derived array of an older store)."""
    array = group[path]
    columns = group.attrs.get("checksum_arrays")
    if columns and path in columns and "checksum" in group:
        column = columns.index(path)
        table = _read_or_damage(group, "checksum", first, lambda: group["checksum"][first:last])
        return table[:, column].astype(np.int64)
    recorded = array.attrs.get("chunk_checksums")
    return None if recorded is None else np.asarray(recorded, dtype=np.int64)[first:last]


def row_blocks(group: zarr.Group, path: str) -> list[tuple[int, int]]:
    """[start, stop) of each stored chunk of the per-sample array `path`: the unit every stage reads
    and reduces in (the array's own chunking, which the sample stage made chunk_size rows)."""
    array = group[path]
    n, step = array.shape[0], array.chunks[0]
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def read_rows(group: zarr.Group, path: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows [start, stop) of the per-sample array `path` of a dataset group, each chunk they touch
    checked against its recorded CRC-32 (StoreDamage naming the array and chunk otherwise)."""
    array = group[path]
    n, step = array.shape[0], array.chunks[0]
    stop = n if stop is None else min(stop, n)
    if stop <= start:
        return array[start:stop]
    first, last = start // step, -(-stop // step)
    lo, hi = first * step, min(last * step, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = array[lo:hi]
        except Exception:  # find the chunk that does not decode, and name it
            for chunk in range(first, last):
                _read_or_damage(group, path, chunk, lambda: array[chunk * step:min((chunk + 1) * step, n)])
            raise
    expected = expected_checksums(group, path, first, last)
    if expected is not None:
        for i, chunk in enumerate(range(first, last)):
            a, b = chunk * step - lo, min((chunk + 1) * step, n) - lo
            if chunk_checksum(values[a:b], array.dtype) != expected[i]:
                raise _damage(group, path, chunk, "checksum mismatch (changed since it was written)")
    return values[start - lo:stop - lo]


def read_ids(group: zarr.Group, path: str, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` (sorted or not) of a per-sample array, chunk by chunk, each chunk verified."""
    ids = np.asarray(ids, dtype=np.int64)
    array = group[path]
    step = array.chunks[0]
    out = np.empty((len(ids), *array.shape[1:]), dtype=array.dtype)
    chunk_of = ids // step
    for chunk in np.unique(chunk_of):
        rows = np.flatnonzero(chunk_of == chunk)
        block = read_rows(group, path, int(chunk) * step, (int(chunk) + 1) * step)
        out[rows] = block[ids[rows] - int(chunk) * step]
    return out


def write_checksummed(group: zarr.Group, name: str, values: np.ndarray, chunk_rows: int, dimension_names) -> None:
    """Write an array a later stage adds to a dataset group (e.g. layers/{layer}/umap), with the
    CRC-32 of each chunk in its `chunk_checksums` attribute, so read_rows verifies it too."""
    array = group.create_array(name, shape=values.shape, chunks=(chunk_rows, *values.shape[1:]),
                               dtype=values.dtype, dimension_names=dimension_names, overwrite=True)
    array[:] = values
    array.attrs["chunk_checksums"] = [chunk_checksum(values[s:s + chunk_rows], values.dtype)
                                      for s in range(0, len(values), chunk_rows)]


# --- damaged metadata: one line naming the file ------------------------------------------------------


def damaged_metadata(where, path: str, error: BaseException) -> Exception:
    """The error for a group at `path` ("" for the root) of `where` (a root group, or a store URL)
    whose zarr.json cannot be read: one line naming the file when it is garbage (storage damage, as
    `verify` finds it: an EnvironmentFailure, exit 1), else `error` itself."""
    import json

    from ganscale.errors import EnvironmentFailure

    if not isinstance(error, (json.JSONDecodeError, UnicodeDecodeError, zarr.errors.MetadataValidationError)):
        return error
    if isinstance(where, str):
        base = where.rstrip("/")
    else:
        try:
            base = store_fs(where)[1]
        except Exception:
            base = str(where.store)
    file = "/".join(p for p in (base, path.strip("/"), "zarr.json") if p)
    text = " ".join(str(error).split())[:120]
    what = ("restore it from a copy, or delete the store to start afresh" if not path.strip("/") else
            "restore it from a copy, or delete that group so it is sampled again")
    return EnvironmentFailure(f"store: {file}: damaged metadata ({type(error).__name__}: {text}); {what}")


def get_group(root: zarr.Group, path: str) -> zarr.Group | None:
    """root[path], or None when missing; a group whose metadata is damaged fails in one line naming it."""
    try:
        return root.get(path)
    except Exception as e:
        raise damaged_metadata(root, path, e) from None


def open_root(url: str, storage_options: dict | None = None, mode: str = "a") -> zarr.Group:
    """open_store, with a damaged root zarr.json named in one line (damaged_metadata)."""
    try:
        return open_store(url, storage_options, mode=mode)
    except (ValueError, UnicodeDecodeError) as e:
        raise damaged_metadata(url, "", e) from None
