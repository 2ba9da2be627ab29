"""The shape every stage has, and what follows from it: fingerprints that cover what a stage
reads, `status`, and the guard that keeps a stage off inputs that are not complete.

A stage module (sample, embed, atlas, icons, metrics.stage, dissect.stage, report) declares

    NAME                      its name
    ITEM                      what one unit of its work is called: "dataset", "layer", "generator", ""
    READS                     the stages whose output it reads
    items(study)              its items (empty when the study turns the stage off)
    settings(study, root, item) -> dict   the study settings the item's output depends on (JSON)
    reads(study, item)        optional: the upstream (stage, item) pairs the item reads;
                              default every item of every READS stage
    run(study, *, address)    the work; each finished item is recorded with
                              ledger.record(root, NAME, item, stage.inputs(study, root, NAME, item), seconds)

An item's inputs are its settings plus the *current* fingerprint of every upstream item it reads,
so a study change upstream changes the fingerprint of everything downstream: it shows as stale
there too, naming the input that changed.
"""

from __future__ import annotations

import importlib

from ganscale import ledger
from ganscale.errors import GanscaleError
from ganscale.study import Study, digest

MODULES = {"sample": "ganscale.sample", "embed": "ganscale.embed", "atlas": "ganscale.atlas",
           "icons": "ganscale.icons", "metrics": "ganscale.metrics.stage", "dissect": "ganscale.dissect.stage",
           "report": "ganscale.report"}
ORDER = list(MODULES)


def module(name: str):
    return importlib.import_module(MODULES[name])


def upstream(study: Study, name: str, item: str) -> list[tuple[str, str]]:
    m = module(name)
    if hasattr(m, "reads"):
        return m.reads(study, item)
    return [(s, i) for s in m.READS for i in module(s).items(study)]


def inputs(study: Study, root, name: str, item: str) -> dict:
    """Settings + the current fingerprints of the upstream items read ("embed/mixed4c": fp)."""
    out = dict(module(name).settings(study, root, item))
    for s, i in upstream(study, name, item):
        out[f"{s}/{i}"] = fingerprint(study, root, s, i)
    return ledger.jsonable(out)


def fingerprint(study: Study, root, name: str, item: str) -> str:
    return digest(inputs(study, root, name, item))


def state(study: Study, root, name: str, item: str) -> tuple[str, str]:
    """("complete" | "stale" | "blocked" | "not started", what changed or what blocks it)."""
    current = inputs(study, root, name, item)
    recorded = ledger.entry(root, name, item)
    if recorded is not None and recorded["fingerprint"] == digest(current):
        return "complete", ""
    if recorded is not None:
        return "stale", ", ".join(ledger.changed(recorded["inputs"], current)) + " changed"
    for s, i in upstream(study, name, item):
        if state(study, root, s, i)[0] != "complete":
            return "blocked", f"{s} of {label(s, i)} is not complete"
    return "not started", ""


def label(name: str, item: str) -> str:
    """'layer mixed4c', 'dataset real', or 'all' for a stage with one item."""
    kind = module(name).ITEM
    return f"{kind} {item}" if kind else item


def status(study: Study, root) -> list[dict]:
    """One row per stage and item: {"stage", "item", "state", "detail"}."""
    return [dict(zip(("stage", "item", "state", "detail"), (name, item, *state(study, root, name, item))))
            for name in ORDER for item in module(name).items(study)]


def require_inputs(study: Study, root, name: str) -> None:
    """The guard before a stage runs: every upstream item it reads must be complete, else one line
    naming the first that is not."""
    for item in module(name).items(study):
        for s, i in upstream(study, name, item):
            st, detail = state(study, root, s, i)
            if st != "complete":
                raise GanscaleError(f"{name}: {s} of {label(s, i)} is not complete ({st}"
                                    f"{': ' + detail if detail else ''}); run {s} first")
