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

from ganscale.study import digest

KEY = "stages"


def jsonable(inputs: dict) -> dict:
    """`inputs` as they read back from the store (tuples become lists), so fingerprints compare."""
    return json.loads(json.dumps(inputs))


def record(root, stage: str, item: str, inputs: dict, seconds: float, **extra) -> dict:
    """Mark `item` of `stage` finished from `inputs`; returns the record."""
    inputs = jsonable(inputs)
    entry_ = {"fingerprint": digest(inputs), "inputs": inputs, "seconds": round(float(seconds), 2),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    stages = dict(root.attrs.get(KEY, {}))
    stages[stage] = {**items(root, stage), item: entry_}
    root.attrs[KEY] = stages
    return entry_


def forget(root, stage: str, item: str) -> None:
    """Drop one record: the item counts as not started (a test, or a stage that must redo it)."""
    if entry(root, stage, item) is None:
        return
    stages = dict(root.attrs.get(KEY, {}))
    stages[stage] = {k: v for k, v in items(root, stage).items() if k != item}
    root.attrs[KEY] = stages


def items(root, stage: str) -> dict[str, dict]:
    """{item: record} of a stage (empty when none, or `root` is None)."""
    if root is None:
        return {}
    recorded = root.attrs.get(KEY, {}).get(stage, {})
    return {k: v for k, v in recorded.items() if isinstance(v, dict) and "inputs" in v and "fingerprint" in v}


def entry(root, stage: str, item: str) -> dict | None:
    return items(root, stage).get(item)


def stages(root) -> list[str]:
    """The stages with at least one record, in the order they were first recorded."""
    return [s for s in (root.attrs.get(KEY, {}) if root is not None else {}) if items(root, s)]


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
