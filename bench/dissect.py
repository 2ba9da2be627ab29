"""Dissection statistics throughput, measured in one run: the dissect stage's unit statistics on one
Ray worker against a single-process loop doing the same three passes (ranges, histograms,
contingency counts) on the same seeds, device, batch and chunk size (toy world DCGAN, layers
layer1 and layer2, the toy segmenter). Samples/s = samples / total time of the three passes.

Stage: `ganscale.dissect.stage.unit_statistics` with one DissectWorker actor and the Dask-on-Ray merges (actor
start-up and model loading included). Loop: the same DissectWorker methods called in this process,
merged with plain Python (model loading included), timed before and after the stage (the cores
are shared, so load drifts); the stage is compared with their mean. Both must give identical
statistics (checked: `identical`).

    python bench/dissect.py [--samples 2000] [--chunk 500] [--batch 250] [--out bench/results/dissect.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--layers", default="layer1,layer2")
    parser.add_argument("--out", default="bench/results/dissect.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from conftest import toy_study
    from ganscale import sources
    from ganscale.dissect import plan
    from ganscale.dissect import stage as dissect
    from ganscale.dissect.worker import DissectWorker
    from ganscale.study import load_study

    layers = args.layers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        study = load_study(toy_study(Path(tmp), sample={"device": "cpu", "batch_size": args.batch,
                                                        "chunk_size": max(args.batch, args.chunk)},
                                     dissect={"layers": layers, "samples": args.samples, "chunk_size": args.chunk}))
        seeds = sources.dataset_seeds(study.seed, "bench", args.samples)
        threads = torch.get_num_threads()

        def merged(parts):
            out = parts[0]
            for part in parts[1:]:
                out = {k: out[k].merge(v) for k, v in part.items()}
            return out

        def loop():
            """The three passes in this process, plain Python merges; (seconds, statistics)."""
            t0 = time.perf_counter()
            worker = DissectWorker(study, "full", threads)
            worker.ready()
            chunks = [(s, seeds[s:s + args.chunk]) for s in range(0, len(seeds), args.chunk)]
            ranges = merged([worker.ranges(c, s) for s, c in chunks])
            hist = merged([worker.histograms(c, {k: (r.low, r.high) for k, r in ranges.items()}) for _, c in chunks])
            thresholds = {k: h.quantiles(levels) for k, h in hist.items()}
            contingency = merged([worker.contingency(c, thresholds) for _, c in chunks])
            return time.perf_counter() - t0, hist, contingency

        levels = plan.candidate_levels(study.dissect.quantile)
        load_before = os.getloadavg()[0]
        # loop, stage, loop again: the machine's load (shared cores) drifts, so the loop is timed on
        # both sides of the stage and the stage compared with their mean
        loop_first, hist, loop_contingency = loop()
        ray.init(address="local", num_cpus=os.cpu_count(), logging_level="ERROR", include_dashboard=False)
        t0 = time.perf_counter()
        actor = ray.remote(DissectWorker).options(num_cpus=max(0.25, (os.cpu_count() or 2) - 1))
        remote = actor.remote(study, "full", threads)
        ray.get(remote.ready.remote())
        stage = dissect.unit_statistics(study, "full", [remote], seeds)
        staged = time.perf_counter() - t0
        ray.shutdown()
        loop_second, _, _ = loop()
        loop_time = (loop_first + loop_second) / 2
        load_after = os.getloadavg()[0]
        same = all(np.array_equal(stage["contingency"][k].intersection, loop_contingency[k].intersection)
                   and np.array_equal(stage["histograms"][k].counts, hist[k].counts) for k in layers)
    units = {k: int(v.unit_area.shape[0]) for k, v in loop_contingency.items()}
    result = {"samples": args.samples, "chunk": args.chunk, "batch": args.batch, "layers": layers, "units": units,
              "candidate_thresholds": len(levels), "threads": threads, "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "load_average_1min": [round(load_before, 2), round(load_after, 2)],
              "loop_seconds": [round(loop_first, 2), round(loop_second, 2)], "stage_seconds": round(staged, 2),
              "loop_samples_per_s": round(args.samples / loop_time, 1),
              "stage_samples_per_s": round(args.samples / staged, 1),
              "stage_rate_over_loop_rate": round(loop_time / staged, 3), "identical": same,
              "note": "one worker; a stage with W workers (one per GPU) adds up their rates, the merges are "
                      "small Dask tasks"}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
