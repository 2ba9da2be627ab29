"""The stages in order, running a study through them, and what `ganscale status` shows."""

from __future__ import annotations

import logging
import time
from typing import Callable

from ganscale import atlas, embed, icons, lease, report, sample, schema, stage
from ganscale.dissect import stage as dissect
from ganscale.metrics import stage as metrics
from ganscale.study import Study

log = logging.getLogger("ganscale")

STAGES: dict[str, Callable[..., object]] = {m.NAME: m.run for m in (sample, embed, atlas, icons, metrics, dissect, report)}
assert list(STAGES) == stage.ORDER


def _open(study: Study, mode: str = "r"):
    try:
        return schema.open_root(study.store, study.storage_options, mode=mode)
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
    if "sample" in chosen:  # what the sample stage will hold, before any work
        for line in sample.planned_size_lines(sample.planned_size(study)):
            log.info("%s", line)
    for name in STAGES:
        if name not in chosen:
            continue
        root = _open(study)
        if not (name == "sample" and (verify or force)) and complete(study, root, name):
            # nothing written, so a finished store may be read-only
            results[name] = {"skipped": "complete" if stage.module(name).items(study) else "not in this study"}
            log.info("stage %s: %s, nothing to do", name, results[name]["skipped"])
            continue
        stage.require_inputs(study, root, name)
        t0 = time.time()
        log.info("stage %s: starting", name)
        if name == "sample":  # chunk by chunk, each under its own lease (ganscale.sample)
            results[name] = STAGES[name](study, address=address, verify=verify, force=force)
        else:
            root = root if root is not None else schema.open_root(study.store, study.storage_options)
            with lease.of(root).exclusive(f"stage/{name}", waiting=f"stage {name}"):
                # another run may have finished it while this one waited: the stage then skips its items
                results[name] = STAGES[name](study, address=address)
        log.info("stage %s: finished in %.1f s: %s", name, time.time() - t0, results[name])
    return results


def complete(study: Study, root, name: str) -> bool:
    """Whether every item of the stage is recorded with its current fingerprint."""
    if root is None or not all(stage.state(study, root, name, item)[0] == "complete"
                               for item in stage.module(name).items(study)):
        return False
    if name == "sample":  # a done flag lost since: the ledger says complete, the chunk must be redone
        groups = [schema.get_group(root, schema.dataset_path(d)) for d in study.datasets]
        return all(g is not None and schema.done_chunks(g).all() for g in groups)
    return True


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
            if counted["state"].startswith(("damaged", "resampling")):
                state = counted["state"] if row["state"] != "stale" else f"{state}; {counted['state']}"
            elif row["state"] == "complete" and counted["done"] < counted["chunks"]:
                state = (f"damaged ({counted['chunks'] - counted['done']} of {counted['chunks']} chunks not marked "
                         "done: bookkeeping lost; `ganscale run` recomputes them)")
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
