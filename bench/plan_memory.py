"""Driver memory of planning the sample stage of a 10^8-sample toy study (two generator datasets of
5*10^7 samples, chunks of 64: 1,562,500 chunks) and handing out its first 5 tasks, without workers:
`run_on_actors` runs against a stand-in for Ray (put/wait/get) and plain objects, and stops after 5
results. Run it with the code to measure first on PYTHONPATH:

    PYTHONPATH=. python bench/plan_memory.py            # this tree
    PYTHONPATH=/tmp/before python bench/plan_memory.py  # an older tree (git archive COMMIT ganscale)

It prints the tracemalloc peak (Python allocations) and the rise of the peak RSS (ru_maxrss); with
--rss-only, the RSS rise without tracemalloc's own bookkeeping."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import tracemalloc
import types
from pathlib import Path

import yaml


class _Stop(Exception):
    pass


def fake_ray() -> None:
    """Enough of `ray` for run_on_actors on plain objects: results are computed when submitted."""
    class Ref:
        def __init__(self, value):
            self.value = value

    exceptions = types.SimpleNamespace(RayTaskError=type("RayTaskError", (Exception,), {}),
                                       RayActorError=type("RayActorError", (Exception,), {}),
                                       OutOfMemoryError=type("OutOfMemoryError", (Exception,), {}),
                                       ActorUnavailableError=type("ActorUnavailableError", (Exception,), {}))
    ray = types.ModuleType("ray")
    ray.put = Ref
    ray.get = lambda ref: ref.value
    ray.wait = lambda refs, num_returns=1, timeout=None: (refs[:1], refs[1:])
    ray.kill = lambda actor: None
    ray.exceptions = exceptions
    sys.modules["ray"] = ray
    sys.modules["ray.exceptions"] = exceptions


class Sampler:
    def run_chunk(self, dataset, chunk):
        return dataset, chunk, 64, {}


def main() -> None:
    fake_ray()
    from ganscale import sample, schema
    from ganscale.runtime import Task, run_on_actors
    from ganscale.study import load_study

    tmp = Path(tempfile.mkdtemp())
    big = {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 50_000_000}
    study_file = tmp / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "plan-memory", "store": str(tmp / "store.zarr"), "probe": {"name": "toy_probe"},
        "layers": ["block1", "block2", "block3"], "datasets": {"a": big, "b": big}, "seed": 7,
        "sample": {"chunk_size": 64, "batch_size": 32, "max_samples": 200_000_000}}))
    study = load_study(study_file)
    root = schema.open_store(study.store)  # an empty store: every chunk pending
    sample.plan(study, root)  # imports and caches warmed up
    new = hasattr(sample, "Pending")
    seen = []

    def on_result(task, value):
        seen.append(value[:2])
        if len(seen) == 5:
            raise _Stop

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    traced = "--rss-only" not in sys.argv  # tracemalloc's own bookkeeping inflates the RSS
    if traced:
        tracemalloc.start()
    plans = sample.plan(study, root)
    if new:  # sample.run's driver lines, this tree
        pending = sum(len(p.pending) for p in plans)
        total = sum(p.pending.samples(p.layout) for p in plans)
        tasks = (t for p in plans for t in sample.chunk_tasks(p.name, p.pending))
        kwargs = {"collect": False}
    else:  # sample.run's driver lines before
        sizes = {p.name: p.layout for p in plans}
        queue = [(p.name, c) for p in plans for c in p.pending]
        pending = len(queue)
        total = sum(stop - start for start, stop in (sizes[n].chunk_range(c) for n, c in queue))
        tasks = [Task("run_chunk", t, f"sample: chunk {t[1]} of dataset {t[0]}") for t in queue]
        kwargs = {}
    try:
        run_on_actors([Sampler(), Sampler()], tasks, on_result, in_flight_per_actor=2, kill=False, **kwargs)
    except _Stop:
        pass
    peak = tracemalloc.get_traced_memory()[1] if traced else None
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    print(json.dumps({"tree": "Pending (lazy)" if new else "lists", "chunks_pending": pending, "samples": total,
                      "first_results": seen, "tracemalloc_peak_MiB": round(peak / 2**20, 2) if traced else None,
                      "peak_rss_rise_MiB": round(rss / 1024, 1)}))


if __name__ == "__main__":
    main()
