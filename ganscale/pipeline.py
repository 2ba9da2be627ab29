"""The stages in order, and running a study through them."""

from __future__ import annotations

import logging
import time
from typing import Callable

from ganscale import atlas, embed, report, sample
from ganscale.study import Study

log = logging.getLogger("ganscale")

STAGES: dict[str, Callable[..., object]] = {
    "sample": sample.run,
    "embed": embed.run,
    "atlas": atlas.run,
    "report": report.run,
}


def run_study(study: Study, stages: list[str] | None = None, address: str | None = None) -> dict[str, object]:
    """Run the named stages (default: all) in pipeline order; each skips work already in the store."""
    chosen = stages or list(STAGES)
    results = {}
    for name in STAGES:
        if name not in chosen:
            continue
        t0 = time.time()
        log.info("stage %s: starting", name)
        results[name] = STAGES[name](study, address=address)
        log.info("stage %s: finished in %.1f s: %s", name, time.time() - t0, results[name])
    return results
