"""The stages in order, and running a study through them."""

from __future__ import annotations

import logging
import time
from typing import Callable

from ganscale import atlas, dissect, embed, icons, report, sample
from ganscale.metrics import stage as metrics
from ganscale.study import Study

log = logging.getLogger("ganscale")

STAGES: dict[str, Callable[..., object]] = {
    "sample": sample.run,
    "embed": embed.run,
    "atlas": atlas.run,
    "icons": icons.run,
    "metrics": metrics.run,
    "dissect": dissect.run,
    "report": report.run,
}


def run_study(study: Study, stages: list[str] | None = None, address: str | None = None,
              verify: bool = False, force: bool = False) -> dict[str, object]:
    """Run the named stages (default: all) in pipeline order; each skips work already in the store.
    `verify`: the sample stage first checks stored chunks against their checksums and redoes damaged ones.
    `force`: the sample stage may replace a store that holds another study."""
    chosen = stages or list(STAGES)
    results = {}
    for name in STAGES:
        if name not in chosen:
            continue
        t0 = time.time()
        log.info("stage %s: starting", name)
        extra = {"verify": verify, "force": force} if name == "sample" else {}
        results[name] = STAGES[name](study, address=address, **extra)
        log.info("stage %s: finished in %.1f s: %s", name, time.time() - t0, results[name])
    return results


def stage_status(study: Study, verify: bool = False) -> list[dict]:
    """One row per stage and dataset/layer: complete, partial, stale, damaged or not started."""
    from ganscale import schema

    rows = []
    for r in sample.status(study, verify=verify):
        rows.append({"stage": "sample", "item": r["dataset"], "state": f"{r['state']} ({r['done']}/{r['chunks']} chunks)"})
        rows += [{"stage": "", "item": "", "state": f"  {path} chunk {chunk}: {problem}"}
                 for path, chunk, problem in r.get("damaged", [])]
    try:
        root = schema.open_store(study.store, study.storage_options, mode="r")
        stages = root.attrs.get("stages", {})
    except FileNotFoundError:
        root, stages = None, {}
    sampled = all(r["state"].startswith("complete") for r in rows if r["stage"] == "sample")
    for layer in study.layers:
        fitted = stages.get("embed", {}).get("layers", {}).get(layer, {}).get("fingerprint")
        current = embed.layer_fingerprint(study, root, layer) if sampled else None
        rows.append({"stage": "embed", "item": layer,
                     "state": "not started" if fitted is None else "complete" if fitted == current else "stale"})
        done = stages.get("atlas", {}).get("layers", {}).get(layer, {}).get("fingerprint")
        current = atlas.layer_fingerprint(study, root, layer) if root is not None else None
        rows.append({"stage": "atlas", "item": layer,
                     "state": "not started" if done is None else "complete" if done == current else "stale"})
    if root is not None and study.atlas.icons is not None:
        done_icons = stages.get("icons", {}).get("layers", {})
        for layer in icons.layers_of(study):
            fp = done_icons.get(layer, {}).get("fingerprint")
            rows.append({"stage": "icons", "item": layer, "state": "not started" if fp is None else
                         "complete" if fp == icons.layer_fingerprint(study, root, layer) else "stale"})
    if root is not None and study.metrics.enabled:
        done = stages.get("metrics", {}).get("fingerprint")
        current = metrics.fingerprint(study, root) if sampled else None
        rows.append({"stage": "metrics", "item": "all datasets",
                     "state": "not started" if done is None else "complete" if done == current else "stale"})
    if study.dissect is not None:
        done = stages.get("dissect", {}).get("generators", {})
        for name in dissect.generators_of(study):
            fp = done.get(name, {}).get("fingerprint")
            rows.append({"stage": "dissect", "item": name, "state": "not started" if fp is None else
                         "complete" if fp == dissect.fingerprint(study, name) else "stale"})
    rows.append({"stage": "report", "item": report.report_location(study),
                 "state": "written" if "report" in stages else "not started"})
    return rows
