"""Dissection statistics throughput: one Ray worker of the dissect stage against a single-process
loop doing the same three passes (ranges, histograms, contingency) on the same seeds, device and
chunk size, measured in one run. Samples/s = samples / total time of the three passes.

Stage: `dissect.unit_statistics` with one DissectWorker actor and the Dask-on-Ray merges (actor
start-up and model loading included). Bare: the same DissectWorker methods called in this
process, merged with plain Python.

    python bench/dissect.py [--samples 4000] [--chunk 500] [--out bench/results/dissect.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--layers", default="layer1,layer2")
    parser.add_argument("--out", default="bench/results/dissect.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from conftest import toy_study
    from ganscale import dissect, sources
    from ganscale.study import load_study

    layers = args.layers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        study = load_study(toy_study(Path(tmp), sample={"device": "cpu"},
                                     dissect={"layers": layers, "samples": args.samples, "chunk_size": args.chunk}))
        seeds = sources.dataset_seeds(study.seed, "bench", args.samples)
        threads = torch.get_num_threads()

        t0 = time.perf_counter()
        worker = dissect.DissectWorker(study, "full", threads)
        chunks = [(s, seeds[s:s + args.chunk]) for s in range(0, len(seeds), args.chunk)]

        def merged(parts):
            out = parts[0]
            for part in parts[1:]:
                out = {k: out[k].merge(v) for k, v in part.items()}
            return out

        ranges = merged([worker.ranges(c, s) for s, c in chunks])
        hist = merged([worker.histograms(c, {k: (r.low, r.high) for k, r in ranges.items()}) for _, c in chunks])
        levels = dissect.candidate_levels(study.dissect.quantile)
        thresholds = {k: h.quantiles(levels) for k, h in hist.items()}
        bare_contingency = merged([worker.contingency(c, thresholds) for _, c in chunks])
        bare = time.perf_counter() - t0

        ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", include_dashboard=False)
        t0 = time.perf_counter()
        actor = ray.remote(dissect.DissectWorker).options(num_cpus=max(0.25, (os.cpu_count() or 2) - 1))
        stage = dissect.unit_statistics(study, "full", [actor.remote(study, "full", threads)], seeds)
        staged = time.perf_counter() - t0
        ray.shutdown()
        same = all(np.array_equal(stage["contingency"][k].iou(), bare_contingency[k].iou()) for k in layers)
    result = {"samples": args.samples, "chunk": args.chunk, "layers": layers, "threads": threads,
              "bare_seconds": round(bare, 2), "stage_seconds": round(staged, 2),
              "bare_samples_per_s": round(args.samples / bare, 1), "stage_samples_per_s": round(args.samples / staged, 1),
              "ratio_stage_over_bare": round(bare / staged, 3), "identical_iou": same}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
