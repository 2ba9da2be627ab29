"""The stages in order (the one list of them), running a study through them, and what
`ganscale status` shows. Adding a stage: one module with the shape of `ganscale.stage`, and one
line here."""

from __future__ import annotations

import logging
import time

from ganscale import atlas, embed, icons, report, sample
from ganscale.dissect import stage as dissect
from ganscale.metrics import stage as metrics
from ganscale.stage import Stages, open_root
from ganscale.study import Study

log = logging.getLogger("ganscale")

STAGES = Stages(
    sample,
    embed,
    atlas,
    icons,
    metrics,
    dissect,
    report,
    optional={"report": ("icons", "metrics", "dissect")},  # the report's sections of the stages that have run
)


def run_study(study: Study, stages: list[str] | None = None, address: str | None = None,
              verify: bool = False, force: bool = False, workers: int | None = None) -> dict[str, object]:
    """Run the named stages (default: all) in pipeline order; each skips work already in the store,
    and refuses (one line) to start on upstream items that are not complete.
    `verify`: the sample stage first checks stored chunks against their checksums and redoes damaged ones.
    `force`: the sample stage may replace a store that holds another study.
    `workers`: how many sample workers (default: the study's sample.workers)."""
    flags = {"verify": verify, "force": force, "workers": workers}
    results = {}
    for name in STAGES:
        if stages and name not in stages:
            continue
        t0 = time.time()
        results[name] = run_stage(study, name, address, **flags)
        log.info("stage %s: %.1f s: %s", name, time.time() - t0, results[name])
    return results


def run_stage(study: Study, name: str, address: str | None = None, **flags) -> dict:
    """One stage, with the flags it takes (its OPTIONS): `verify` and `force` look again at the
    items that are complete."""
    options = {k: v for k, v in flags.items() if k in getattr(STAGES[name], "OPTIONS", ())}
    return STAGES.run(study, name, address=address, redo=bool(options.get("verify") or options.get("force")),
                      **options)


def stage_status(study: Study, verify: bool = False) -> list[dict]:
    """One row per stage and item: complete, stale (and which inputs changed), blocked (which
    upstream item is not complete), missing from the store, or not started; a stage may add to its
    rows (sample: chunks done, and with `verify` the damaged ones)."""
    root = open_root(study)
    rows = []
    for row in STAGES.status(study, root):
        detailed = getattr(STAGES[row["stage"]], "status_rows", None)
        if detailed is not None:
            rows += detailed(study, root, row, verify)
        else:
            rows.append({"stage": row["stage"], "item": row["item"],
                         "state": row["state"] + (f": {row['detail']}" if row["detail"] else "")})
    return rows
