"""Where the sample stage's time goes per chunk, in one process (no Ray): the bare generator+probe
loop against `ChunkSampler.compute` (the same models plus positions, pooling, image statistics and
the transfer to the host) and `schema.write_chunk` (zarr encode + write, CRC-32 of every array),
each timed on the same chunks, with torch's and zarr's thread counts as a Ray worker has them
(`--threads 1`, a GPU worker's one CPU) and with more. The top functions of one compute and one
write under cProfile say which part to cut.

    python bench/sample_profile.py [--device cuda] [--samples 4096] [--batch 256] [--chunk 1024]
        [--threads 1 16] [--out bench/results/sample_profile.json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sample import bare_loop, study_file, sync  # noqa: E402  (bench/sample.py)

from ganscale import sample, schema  # noqa: E402
from ganscale.study import load_study  # noqa: E402

INCEPTION = ["mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b"]


def top(profile: cProfile.Profile, n: int = 15) -> list[str]:
    """ncalls tottime percall cumtime percall function, by own time (host waits on the GPU show at
    the call that synchronises)."""
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(n)
    return [" ".join(line.split()) for line in out.getvalue().splitlines() if line.strip()[:1].isdigit()][:n]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--out", default="bench/results/sample_profile.json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    from ganscale.models.inception_v1 import InceptionV1

    torch.manual_seed(0)
    weights = folder / "inception_random.pth"  # random weights: the same compute as inception5h.pth
    torch.save(InceptionV1().state_dict(), weights)
    study = load_study(study_file(folder, {"name": "inception_v1", "weights": str(weights)}, INCEPTION, args.samples, args.chunk, args.batch,
                                  {"device": args.device}))
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        zarr.config.set({"threading.max_workers": threads})
        bare = bare_loop(study, args.samples)
        sampler = sample.ChunkSampler(study, threads=threads)
        sampler._build()
        layout = sample.layout_for(study, "full")
        root = zarr.open_group(str(folder / f"store-{threads}.zarr"), mode="w")
        group = schema.create_dataset_group(root, "datasets/full", layout, {"chunk_size": args.chunk})
        sampler.compute("full", 0)  # warm-up
        compute_s = write_s = 0.0
        chunks = list(range(layout.n_chunks))
        profiles = {}
        for chunk in chunks:
            profile = cProfile.Profile() if chunk == chunks[-1] else None
            t0 = time.perf_counter()
            if profile:
                profile.enable()
            arrays = sampler.compute("full", chunk)
            sync(sampler.device)
            t1 = time.perf_counter()
            if profile:
                profile.disable()
                profiles["compute"] = top(profile)
                profile = cProfile.Profile()
                profile.enable()
            schema.write_chunk(group, layout, chunk, **arrays)
            t2 = time.perf_counter()
            if profile:
                profile.disable()
                profiles["write"] = top(profile)
            compute_s += t1 - t0
            write_s += t2 - t1
        n = args.samples
        row = {"threads": threads, "device": args.device, "samples": n, "batch": args.batch, "chunk": args.chunk,
               "bare_images_per_s": round(bare, 1), "compute_images_per_s": round(n / compute_s, 1),
               "write_images_per_s": round(n / write_s, 1),
               "compute_and_write_overlapped_images_per_s": round(n / max(compute_s, write_s), 1),
               "bytes_per_chunk": int(sum(a.nbytes for a in arrays.values() if hasattr(a, "nbytes"))
                                      + sum(v.nbytes for d in arrays.values() if isinstance(d, dict)
                                            for v in d.values())),
               "top_compute": profiles.get("compute"), "top_write": profiles.get("write")}
        print(json.dumps(row, indent=1), flush=True)
        rows.append(row)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
