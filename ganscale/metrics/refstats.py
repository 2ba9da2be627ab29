"""FID reference statistics as pytorch-fid and clean-fid exchange them: an `.npz` with `mu` [D] and
`sigma` [D, D], the mean and covariance of the FID Inception network's pool3 features (D = 2048).

`write_stats` writes what pytorch-fid's `save_fid_stats` writes (np.savez_compressed, keys mu and
sigma, float64); `read_stats` reads such a file without ever unpickling (allow_pickle=False) and
checks it, every problem one line naming the field and the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ganscale.errors import GanscaleError

KEYS = ("mu", "sigma")
SYMMETRY_TOLERANCE = 1e-6  # |sigma - sigma.T| relative to max |sigma|: float32 round-off passes, a non-covariance not


def write_stats(path: str | Path, mu, sigma) -> Path:
    """Write `mu` [D] and `sigma` [D, D] as float64 to the .npz `path` (pytorch-fid's format)."""
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"write_stats: mu must be [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    path = Path(path)
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a name without it
        np.savez_compressed(f, mu=mu, sigma=sigma)
    return path


def read_stats(path: str | Path, dims: int | None = None, field: str = "reference_stats"
               ) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) in float64 from an .npz of FID statistics; D must equal `dims` if given."""
    where = f"{field}: {path}"
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a plain .npy array
            raise GanscaleError(f"{where}: not an .npz file of FID statistics (mu, sigma)")
        with f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise GanscaleError(f"{where}: no array '{missing[0]}' (has: {', '.join(f.files) or 'none'}); "
                                    "FID statistics are an .npz with mu [D] and sigma [D, D]")
            arrays = {k: f[k] for k in KEYS}
    except FileNotFoundError:
        raise GanscaleError(f"{where}: file not found") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # pickled data, a damaged or foreign file
        reason = "holds pickled objects, which are never loaded" if "pickle" in str(e).lower() else \
            f"not a readable .npz file ({type(e).__name__}: {e})".splitlines()[0]
        raise GanscaleError(f"{where}: {reason}") from None
    for key, value in arrays.items():
        if value.dtype.kind not in "fiu":
            raise GanscaleError(f"{where}: {key} has dtype {value.dtype}, not numbers")
    mu, sigma = (arrays[k].astype(np.float64) for k in KEYS)
    if mu.ndim != 1:
        raise GanscaleError(f"{where}: mu has shape {list(mu.shape)}, expected [D]")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise GanscaleError(f"{where}: sigma has shape {list(sigma.shape)}, expected [{d}, {d}] for mu [{d}]")
    if dims is not None and d != dims:
        raise GanscaleError(f"{where}: statistics of {d}-d features, but the FID features are {dims}-d")
    for key, value in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(value).all():
            raise GanscaleError(f"{where}: {key} has non-finite values (NaN or inf)")
    scale = max(float(np.abs(sigma).max(initial=0.0)), 1e-300)
    if float(np.abs(sigma - sigma.T).max(initial=0.0)) > SYMMETRY_TOLERANCE * scale:
        raise GanscaleError(f"{where}: sigma is not symmetric, so not a covariance matrix")
    return mu, sigma
