"""The errors users see: one line that names the field or file at fault, and an exit code.

Exit codes: 2 for bad input (GanscaleError: the study, weights, data), 1 for the environment (a
store that cannot be written, a storage endpoint or credentials that fail, a cluster that goes
away). Either way a rerun of the same command resumes where it stopped.
"""

from __future__ import annotations

import re

BAD_INPUT, ENVIRONMENT = 2, 1
RERUN = "fix it and rerun the same command: finished work is kept"


class GanscaleError(Exception):
    """A problem with the user's input (study, weights, data). Printed as one line, exit code 2."""


class EnvironmentFailure(Exception):
    """A problem outside the user's input (storage, network, cluster). Printed as one line, exit code 1."""


class StoreDamage(EnvironmentFailure):
    """Stored data that no longer matches what was written, or cannot be decoded: one line naming
    the file (array and chunk), exit code 1."""


def unwrap(error: BaseException) -> BaseException:
    """The error raised inside a Ray task or actor when it is one of ours (its one line names the
    field or file), else the error itself."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, (GanscaleError, EnvironmentFailure)) and error.__class__.__module__.startswith("ray"):
        return unwrap(cause)
    return error


_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/@]+@")


def _one_line(error: BaseException) -> str:
    """The error's text on one line, without the user:password@ of any URL in it (an endpoint's)."""
    return _URL_USERINFO.sub(r"\1<redacted>@", " ".join(str(error).split())) or type(error).__name__


def describe(error: BaseException) -> tuple[str, int]:
    """The one line to print for an error that ends a command, and the exit code."""
    error = unwrap(error)
    if isinstance(error, GanscaleError):
        return f"{_one_line(error)}; {RERUN}", BAD_INPUT
    text = _one_line(error)
    if len(text) > 300:
        text = text[:297] + "..."
    if isinstance(error, EnvironmentFailure):
        return f"{text}; {RERUN}", ENVIRONMENT
    if isinstance(error, PermissionError):
        where = f" {error.filename}" if getattr(error, "filename", None) else ""
        return f"cannot write{where}: permission denied; {RERUN}", ENVIRONMENT
    if isinstance(error, (OSError, TimeoutError, ConnectionError)) or \
            (type(error).__module__ or "").startswith(("botocore", "aiobotocore", "aiohttp")):
        return f"storage or network failure: {type(error).__name__}: {text}; {RERUN}", ENVIRONMENT
    try:
        import ray.exceptions

        if isinstance(error, ray.exceptions.RayError):
            return f"the Ray cluster failed: {type(error).__name__}: {text[:200]}; {RERUN}", ENVIRONMENT
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return f"internal error: {type(error).__name__}: {text}; {RERUN} (please report it with `-v` output)", ENVIRONMENT
