"""The shape every stage has, and the one driver that runs any of them.

A stage is a module (sample, embed, atlas, icons, metrics.stage, dissect.stage, report) that declares

    NAME                                   its name
    ITEM                                   what one unit of its work is called: "dataset", "layer",
                                           "generator", or "" (a stage with one item, "all")
    READS                                  the stages whose output it reads
    items(study) -> [item]                 its items (empty when the study turns the stage off)
    settings(study, item) -> dict          the study settings the item's output depends on (JSON)
    run_item(study, root, item, workers) -> dict
                                           the work of one item, written to the store; returns what the
                                           ledger records beside its inputs ("seconds" replaces the
                                           driver's clock, for work done ahead in `workers`)
and may declare

    reads(study, item) -> [(stage, item)]  the upstream items one item reads (default: every item of
                                           every READS stage)
    workers(study, root, todo, address, **options)
                                           a context manager giving what the items to do share
                                           (actors, a scheduler, work started ahead), closed after
                                           them; its value may have summary() -> dict for the result
    missing(study, root, item) -> str      why an item the ledger calls complete is not in the store
                                           any more ("" when it is): it is then done again
    guard(study, root, **options)          raises when the stage must not touch this store at all
                                           (sample: it holds another study), checked first
    LEASE = "own"                          the stage leases finer parts itself (sample's chunks, so that
                                           two runs share a dataset); by default the driver holds a
                                           lease on each item while it runs

The stages and their order are listed once, in `ganscale.pipeline.STAGES` (a `Stages`).

An item's inputs are its settings plus the *current* fingerprint of every upstream item it reads,
so a study change upstream changes the fingerprint of everything downstream: it shows as stale
there too, naming the input that changed. A stage's optional upstream stages (the report's sections)
join its inputs with their *recorded* fingerprints, and never block it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from types import ModuleType

from ganscale import lease, ledger, schema
from ganscale.errors import GanscaleError
from ganscale.study import Study, digest

log = logging.getLogger("ganscale")


class Stages:
    """The stages in pipeline order, by name; `optional` names, per stage, the earlier stages it reads
    when they have run (the report's sections)."""

    def __init__(self, *modules: ModuleType, optional: dict[str, tuple[str, ...]] | None = None):
        self.modules = {m.NAME: m for m in modules}
        self.optional = dict(optional or {})
        for name, m in self.modules.items():
            earlier = list(self.modules)[:list(self.modules).index(name)]
            for s in (*m.READS, *self.optional.get(name, ())):
                if s not in earlier:
                    raise ValueError(f"stage {name} reads {s}, which is not an earlier stage")

    def __getitem__(self, name: str) -> ModuleType:
        return self.modules[name]

    def __iter__(self):
        return iter(self.modules)

    def __contains__(self, name: str) -> bool:
        return name in self.modules

    # --- fingerprints and state -----------------------------------------------------------------

    def upstream(self, study: Study, name: str, item: str) -> list[tuple[str, str]]:
        m = self[name]
        if hasattr(m, "reads"):
            return m.reads(study, item)
        return [(s, i) for s in m.READS for i in self[s].items(study)]

    def inputs(self, study: Study, root, name: str, item: str) -> dict:
        """Settings + the current fingerprints of the upstream items read ("embed/mixed4c": fp)
        + the recorded fingerprints of the optional ones (None when not run)."""
        out = dict(self[name].settings(study, item))
        for s, i in self.upstream(study, name, item):
            out[f"{s}/{i}"] = self.fingerprint(study, root, s, i)
        for s in self.optional.get(name, ()):
            for i in self[s].items(study):
                out[f"{s}/{i}"] = (ledger.entry(root, s, i) or {}).get("fingerprint")
        return ledger.jsonable(out)

    def fingerprint(self, study: Study, root, name: str, item: str) -> str:
        return digest(self.inputs(study, root, name, item))

    def state(self, study: Study, root, name: str, item: str) -> tuple[str, str]:
        """("complete" | "stale" | "missing" | "blocked" | "not started", what changed or blocks it)."""
        current = self.inputs(study, root, name, item)
        recorded = ledger.entry(root, name, item)
        if recorded is not None and recorded["fingerprint"] == digest(current):
            problem = self[name].missing(study, root, item) if hasattr(self[name], "missing") else ""
            return ("missing", problem) if problem else ("complete", "")
        if recorded is not None:
            return "stale", ", ".join(ledger.changed(recorded["inputs"], current)) + " changed"
        for s, i in self.upstream(study, name, item):
            if self.state(study, root, s, i)[0] != "complete":
                return "blocked", f"{s} of {self.label(s, i)} is not complete"
        return "not started", ""

    def complete(self, study: Study, root, name: str, item: str) -> bool:
        return root is not None and self.state(study, root, name, item)[0] == "complete"

    def label(self, name: str, item: str) -> str:
        """'layer mixed4c', 'dataset real', or 'all' for a stage with one item."""
        kind = self[name].ITEM
        return f"{kind} {item}" if kind else item

    def status(self, study: Study, root) -> list[dict]:
        """One row per stage and item: {"stage", "item", "state", "detail"}."""
        return [dict(zip(("stage", "item", "state", "detail"), (name, item, *self.state(study, root, name, item))))
                for name in self for item in self[name].items(study)]

    def require_inputs(self, study: Study, root, name: str, items: list[str]) -> None:
        """The guard before a stage runs: every upstream item the items read must be complete, else
        one line naming the first that is not."""
        for item in items:
            for s, i in self.upstream(study, name, item):
                st, detail = self.state(study, root, s, i) if root is not None else ("not started", "")
                if st != "complete":
                    raise GanscaleError(f"{name}: {s} of {self.label(s, i)} is not complete ({st}"
                                        f"{': ' + detail if detail else ''}); run {s} first")

    # --- the driver -------------------------------------------------------------------------------

    def run(self, study: Study, name: str, *, address: str | None = None, redo: bool = False, **options) -> dict:
        """Run one stage: skip the items that are complete (all of them are looked at again with
        `redo`: sample's --verify and --force), refuse (one line) upstream items that are not, hold
        each item's lease, run the items to do, and record each in the ledger as it finishes.
        Returns {"done": [items], "skipped": [items], **the workers' summary}."""
        m = self[name]
        items = m.items(study)
        if not items:
            return {"skipped": "not in this study"}
        root = open_root(study)
        if root is not None and hasattr(m, "guard"):
            m.guard(study, root, **options)
        todo = [i for i in items if redo or not self.complete(study, root, name, i)]
        if todo:
            self.require_inputs(study, root, name, todo)
        with contextlib.ExitStack() as held:
            if todo and getattr(m, "LEASE", "item") == "item":
                root = root if root is not None else schema.open_root(study.store, study.storage_options)
                for item in todo:
                    held.enter_context(lease.of(root).exclusive(f"stage/{name}/{item}",
                                                                waiting=f"{name} of {self.label(name, item)}"))
                # another run may have finished some while this one waited
                todo = [i for i in todo if redo or not self.complete(study, root, name, i)]
            if not todo:
                return {"done": [], "skipped": items}
            inputs = {item: self.inputs(study, root, name, item) for item in todo}
            make_workers = getattr(m, "workers", None) or _no_workers
            with make_workers(study, root, todo, address, **options) as workers:
                root = schema.open_root(study.store, study.storage_options)  # sample's workers may have made it
                for item in todo:
                    t0 = time.time()
                    record = dict(m.run_item(study, root, item, workers) or {})
                    seconds = record.pop("seconds", time.time() - t0)
                    ledger.record(root, name, item, inputs[item], seconds, **record)
                    log.info("%s %s: done in %.1f s", name, self.label(name, item), seconds)
                summary = workers.summary() if hasattr(workers, "summary") else {}
        return {"done": todo, "skipped": [i for i in items if i not in todo], **summary}


def resume_key(root, settings: dict, reads: list[tuple[str, str]]) -> str:
    """The fingerprint of an item while it runs, for a stage that resumes its half-done work (dissect's
    passes): its settings and the recorded fingerprints of the upstream items it reads (complete, so
    current), as Stages.fingerprint computes it then."""
    inputs = {**settings, **{f"{s}/{i}": ledger.entry(root, s, i)["fingerprint"] for s, i in reads}}
    return digest(ledger.jsonable(inputs))


@contextlib.contextmanager
def _no_workers(study: Study, root, todo: list[str], address: str | None = None, **options):
    yield None


def open_root(study: Study, mode: str = "r"):
    """The store's root group, or None when there is no store yet."""
    try:
        return schema.open_root(study.store, study.storage_options, mode=mode)
    except FileNotFoundError:
        return None
