"""Leases: which run is computing what, so that concurrent runs on one store share the work.

A lease is a small JSON object {"owner", "expires"} at `{store}.leases/{name}` (beside the store, so
the zarr hierarchy holds only zarr nodes). It is created only if absent: an exclusive create, O_EXCL
on a local disk and `If-None-Match: *` on S3. Its holder renews it while it works (a thread, every
third of its time to live) and deletes it when done; a lease past `expires` belongs to a run that
died, and the next run takes it over.

Names in use: `sample/{dataset}/{chunk}` (one chunk), `sample/{dataset}/swap` (replacing a dataset's
group), `stage/{name}` (every other stage, whole), and `ledger` (the root attributes' read-modify-write).

Leases save work and keep root attributes whole; chunk data does not depend on them: every chunk is
deterministic and is written before it is marked done, so two runs that compute the same chunk (a
takeover race) write the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager

from ganscale import schema

log = logging.getLogger("ganscale")

TTL = 60.0  # seconds a lease lives unless renewed
POLL = 2.0  # seconds between looks at a lease another run holds


def new_owner() -> str:
    """A run's name in its leases: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _gone(owner: str) -> bool:
    """Whether the owner's driver process is known to have ended: it ran on this host and its pid
    is not running (its Ray workers ended with it). Elsewhere only expiry tells."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


OWNER = new_owner()  # this process's runs, unless a driver hands its workers its own


def location(root) -> tuple[object, str]:
    """(synchronous fsspec filesystem, path) of the leases folder of the store behind zarr group `root`."""
    fs, path = schema.store_fs(root)
    return fs, f"{path}.leases"


class Leases:
    """The leases of one store, as held by `owner`. Held leases are renewed by one thread."""

    def __init__(self, root, owner: str = OWNER, ttl: float = TTL):
        self.fs, self.base = location(root)
        self.local = "file" in self.fs.protocol
        self.owner, self.ttl = owner, ttl
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def _path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def _write(self, name: str, mode: str) -> None:
        path = self._path(name)
        body = json.dumps({"owner": self.owner, "expires": time.time() + self.ttl}).encode()
        if not self.local:
            self.fs.pipe_file(path, body, mode=mode)  # "create": a conditional PUT, atomic on S3
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if mode == "create" else os.O_TRUNC)
        fd = os.open(path, flags, 0o644)  # fsspec's local "create" is not atomic; O_EXCL is
        with os.fdopen(fd, "wb") as f:
            f.write(body)

    def holder(self, name: str) -> dict | None:
        """{"owner", "expires"} of the lease, or None when nobody holds it."""
        try:
            return json.loads(self.fs.cat_file(self._path(name)))
        except FileNotFoundError:
            return None
        except ValueError:  # a lease being written: count it as held a while
            return {"owner": "?", "expires": time.time() + self.ttl}

    @staticmethod
    def live(held: dict | None) -> bool:
        """Whether a lease (as `holder` returns it) still binds: not expired, its run not gone."""
        return held is not None and held["expires"] > time.time() and not _gone(held["owner"])

    def acquire(self, name: str) -> str | None:
        """Take the lease: None when this owner holds it now, else the owner who does."""
        for _ in range(3):
            try:
                self._write(name, "create")
                break
            except FileExistsError:
                held = self.holder(name)
                if held is None:
                    continue  # released meanwhile
                if held["owner"] == self.owner:
                    break
                if self.live(held):
                    return held["owner"]
                log.info("lease %s: run %s stopped; taking it over", name, held["owner"])
                try:
                    self.fs.rm_file(self._path(name))
                except FileNotFoundError:
                    pass
        else:
            return "?"
        with self._lock:
            self._held.add(name)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_forever, daemon=True, name="ganscale-leases")
                self._renewer.start()
        return None

    def release(self, name: str) -> None:
        with self._lock:
            self._held.discard(name)
        held = self.holder(name)
        if held is not None and held["owner"] == self.owner:
            try:
                self.fs.rm_file(self._path(name))
            except FileNotFoundError:
                pass

    def drop(self, prefix: str, owner: str) -> None:
        """Delete the leases under `prefix` that `owner` holds: a run that stops (an error, Ctrl-C)
        frees what its killed workers held, so a rerun need not wait for them to expire."""
        try:
            paths = self.fs.find(self._path(prefix))
        except FileNotFoundError:
            return
        for path in paths:
            try:
                if json.loads(self.fs.cat_file(path)).get("owner") == owner:
                    self.fs.rm_file(path)
            except (FileNotFoundError, ValueError):
                pass

    def _renew_forever(self) -> None:
        while True:
            time.sleep(self.ttl / 3)
            with self._lock:
                names = list(self._held)
            for name in names:
                try:
                    self._write(name, "overwrite")
                except Exception as e:  # a storage hiccup: the next round tries again
                    log.warning("lease %s: could not renew it: %s", name, e)

    @contextmanager
    def exclusive(self, name: str, waiting: str = ""):
        """Hold the lease for the block, first waiting while another live run holds it (`waiting`,
        when given, is logged once: what this run waits for)."""
        told = False
        while (other := self.acquire(name)) is not None:
            if waiting and not told:
                log.info("%s: run %s holds it; waiting", waiting, other)
                told = True
            time.sleep(POLL if waiting else 0.05)
        try:
            yield
        finally:
            self.release(name)


_stores: dict[tuple, Leases] = {}


def of(root) -> Leases:
    """The Leases of `root`'s store held by this process's OWNER (one per store, shared)."""
    fs, base = location(root)
    key = (type(fs).__name__, base, json.dumps(getattr(fs, "storage_options", {}), sort_keys=True, default=str))
    if key not in _stores:
        _stores[key] = Leases(root)
    return _stores[key]
