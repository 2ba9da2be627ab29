"""The stages in order, running a study through them, and what `ganscale status` shows."""

from __future__ import annotations

import logging
import time
from typing import Callable

from ganscale import atlas, embed, icons, report, sample, schema, stage
from ganscale.dissect import stage as dissect
from ganscale.metrics import stage as metrics
from ganscale.study import Study

log = logging.getLogger("ganscale")

STAGES: dict[str, Callable[..., object]] = {m.NAME: m.run for m in (sample, embed, atlas, icons, metrics, dissect, report)}
assert list(STAGES) == stage.ORDER


def _open(study: Study, mode: str = "r"):
    try:
        return schema.open_store(study.store, study.storage_options, mode=mode)
    except FileNotFoundError:
        return None


def run_study(study: Study, stages: list[str] | None = None, address: str | None = None,
              verify: bool = False, force: bool = False) -> dict[str, object]:
    """Run the named stages (default: all) in pipeline order; each skips work already in the store,
    and refuses (one line) to start on upstream items that are not complete.
    `verify`: the sample stage first checks stored chunks against their checksums and redoes damaged ones.
    `force`: the sample stage may replace a store that holds another study."""
    chosen = stages or list(STAGES)
    results = {}
    for name in STAGES:
        if name not in chosen:
            continue
        stage.require_inputs(study, _open(study), name)
        t0 = time.time()
        log.info("stage %s: starting", name)
        extra = {"verify": verify, "force": force} if name == "sample" else {}
        results[name] = STAGES[name](study, address=address, **extra)
        log.info("stage %s: finished in %.1f s: %s", name, time.time() - t0, results[name])
    return results


def stage_status(study: Study, verify: bool = False) -> list[dict]:
    """One row per stage and item: complete, stale (and which inputs changed), blocked (which
    upstream item is not complete) or not started; sample rows also count chunks, and with
    `verify` list damaged chunks."""
    root = _open(study)
    chunks = {r["dataset"]: r for r in sample.status(study, verify=verify)}
    rows = []
    for row in stage.status(study, root):
        state = row["state"] + (f": {row['detail']}" if row["detail"] else "")
        if row["stage"] == "sample":
            counted = chunks[row["item"]]
            if counted["state"].startswith("damaged"):
                state = counted["state"]
            elif row["state"] != "stale":
                if row["state"] == "not started" and counted["done"]:
                    state = "partial"
                state += f" ({counted['done']}/{counted['chunks']} chunks)"
            rows.append({"stage": "sample", "item": row["item"], "state": state})
            rows += [{"stage": "", "item": "", "state": f"  {path} chunk {chunk}: {problem}"}
                     for path, chunk, problem in counted.get("damaged", [])]
        else:
            rows.append({"stage": row["stage"], "item": row["item"], "state": state})
    return rows
