"""A 300k-sample toy study (3 datasets x 100k) through sample, embed (one layer) and atlas, with
wall time and peak memory per stage. Memory is the peak of the summed RSS of the driver and every
Ray worker process, polled every 0.2 s.

    python bench/scale.py [--per-dataset 100000] [--layer block3] [--out bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml


class PeakMemory:
    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *psutil.process_iter()]:
                try:
                    if proc.pid == me.pid or "ray::" in " ".join(proc.cmdline()[:1]):
                        total += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-dataset", type=int, default=100_000)
    parser.add_argument("--layer", default="block3")
    parser.add_argument("--neighbors", type=int, default=15)
    parser.add_argument("--out", default="bench/results/scale.json")
    args = parser.parse_args()
    import ray

    from ganscale import atlas, embed, sample
    from ganscale.study import load_study

    ray.init(include_dashboard=False, logging_level="WARNING")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        n = args.per_dataset
        path.write_text(yaml.safe_dump({
            "name": "scale", "store": f"{tmp}/scale.zarr", "probe": {"name": "toy_probe"}, "layers": [args.layer],
            "datasets": {"real": {"kind": "toyworld", "samples": n},
                         "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": n},
                         "no_tree": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_no_tree.pt",
                                     "samples": n}},
            "sample": {"chunk_size": 4096, "batch_size": 512},
            "embed": {"layers": {args.layer: {"n_neighbors": args.neighbors}}}}, sort_keys=False))
        study = load_study(path)
        for name, stage in (("sample", sample.run), ("embed", embed.run), ("atlas", atlas.run)):
            with PeakMemory() as memory:
                t0 = time.perf_counter()
                stage(study)
                seconds = time.perf_counter() - t0
            rows[name] = {"seconds": round(seconds, 1), "peak_rss_mb": round(memory.peak / 2**20)}
            print(name, rows[name], flush=True)
        import zarr

        group = zarr.open_group(study.store, mode="r")[f"atlas/{args.layer}/g20"]
        names, kl = group.attrs["datasets"], group["kl"][:]
        rows["kl_g20"] = {f"{p}||{q}": round(float(kl[i, j]), 4) for i, p in enumerate(names)
                          for j, q in enumerate(names) if i != j}
    out = {"samples": 3 * args.per_dataset, "layer": args.layer, "stages": rows,
           "cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
