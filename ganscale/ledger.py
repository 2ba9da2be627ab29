"""The one place that reads and writes what each stage finished: root.attrs["stages"].

    root.attrs["stages"][stage][item] = {"fingerprint": digest(inputs), "inputs": {...}, "seconds": s,
                                         "finished": "2026-01-01T00:00:00Z", **extra}

An item is the unit a stage records: a layer, a dataset, a generator, or "all". `inputs` are the
named parts the fingerprint was computed from (settings and the fingerprints of the upstream items
read), kept so that `ganscale status` can say which of them changed, as a cache that records its
arguments. Records of any other shape (stores written before this ledger) are ignored: the stage
counts as not started there and reruns.
"""

from __future__ import annotations

import json
import time

import zarr

from ganscale.study import digest, scrub_urls

KEY = "stages"


def jsonable(inputs: dict) -> dict:
    """`inputs` as they read back from the store (tuples become lists), so fingerprints compare; URLs
    without their credentials (a signed or user:password@ URL in a dataset path never reaches the store)."""
    return scrub_urls(json.loads(json.dumps(inputs)))


def record(root, stage: str, item: str, inputs: dict, seconds: float, **extra) -> dict:
    """Mark `item` of `stage` finished from `inputs`; returns the record."""
    inputs = jsonable(inputs)
    entry_ = {"fingerprint": digest(inputs), "inputs": inputs, "seconds": round(float(seconds), 2),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    _rewrite(root, lambda stages: {**stages, stage: {**_valid(stages.get(stage, {})), item: entry_}})
    return entry_


def _read(root) -> dict:
    """The root attributes as stored now: a zarr group keeps the attributes it was opened with,
    and another run may have recorded since."""
    return dict(zarr.open_group(root.store, path=root.path, mode="r").attrs)


def _rewrite(root, change) -> None:
    """Apply `change` to the stored `stages` record under the store's `ledger` lease: zarr rewrites
    the attributes whole, so two runs writing them at once would lose one's record."""
    from ganscale import lease

    with lease.of(root).exclusive("ledger"):
        group = zarr.open_group(root.store, path=root.path, mode="r+")
        group.attrs[KEY] = change(dict(group.attrs.get(KEY, {})))


def update_root(root, attrs: dict) -> None:
    """Set root attributes other than the ledger (the study's metadata), under the same lease."""
    from ganscale import lease

    with lease.of(root).exclusive("ledger"):
        group = zarr.open_group(root.store, path=root.path, mode="r+")
        if any(group.attrs.get(k) != v for k, v in attrs.items()):
            group.attrs.update(attrs)


def forget(root, stage: str, item: str) -> None:
    """Drop one record: the item counts as not started (a test, or a stage that must redo it)."""
    if entry(root, stage, item) is None:
        return
    _rewrite(root, lambda stages: {**stages, stage: {k: v for k, v in _valid(stages.get(stage, {})).items()
                                                     if k != item}})


def items(root, stage: str) -> dict[str, dict]:
    """{item: record} of a stage (empty when none, or `root` is None)."""
    if root is None:
        return {}
    return _valid(_read(root).get(KEY, {}).get(stage, {}))


def _valid(recorded: dict) -> dict[str, dict]:
    return {k: v for k, v in recorded.items() if isinstance(v, dict) and "inputs" in v and "fingerprint" in v}


def entry(root, stage: str, item: str) -> dict | None:
    return items(root, stage).get(item)


def stages(root) -> list[str]:
    """The stages with at least one record, in the order they were first recorded."""
    recorded = _read(root).get(KEY, {}) if root is not None else {}
    return [s for s, record in recorded.items() if isinstance(record, dict) and _valid(record)]


def stage_seconds(root, stage: str) -> float:
    """Seconds a stage spent on the items it has recorded (the report's summary)."""
    return round(sum(float(r.get("seconds", 0)) for r in items(root, stage).values()), 2)


def changed(recorded: dict, current: dict) -> list[str]:
    """The input keys whose values differ, one level into nested settings: ['dataset.samples', 'sample/real']."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(key)
    return out
