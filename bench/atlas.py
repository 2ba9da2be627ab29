"""Atlas reductions at scale, and the embed stage's overhead over umap-learn, in one run.

1. Reductions: N synthetic samples (default 1M, split over 3 datasets) x 9 layers x grids 20/40/80,
   in a local zarr store. `ganscale.atlas.compute_layer` (chunked partials merged by Dask) against
   a plain numpy single-process baseline (whole arrays in memory, the same statistics). Each runs
   in its own process so peak memory (max RSS) is its own.
2. Embed overhead: `ganscale.embed.embed_layer` (read the store, fit, normalise, write back)
   against `umap.UMAP(...).fit_transform` on the same array in memory.

    python bench/atlas.py [--samples 1000000] [--channels 64] [--embed-samples 20000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYERS = [f"layer{i}" for i in range(9)]
GRIDS = [20, 40, 80]


def make_store(path: Path, samples: int, channels: int, classes: int, chunk: int) -> None:
    from ganscale import schema

    rng = np.random.default_rng(0)
    root = schema.open_store(str(path))
    sizes = [samples // 3, samples // 3, samples - 2 * (samples // 3)]
    for d, n in enumerate(sizes):
        group = root.create_group(f"datasets/d{d}")
        group.create_array("logits", shape=(n, classes), chunks=(chunk, classes), dtype=np.float32)
        for start in range(0, n, chunk * 8):
            stop = min(n, start + chunk * 8)
            group["logits"][start:stop] = rng.normal(size=(stop - start, classes)).astype(np.float32)
        for layer in LAYERS:
            lg = group.create_group(f"layers/{layer}")
            lg.create_array("umap", shape=(n, 2), chunks=(chunk, 2), dtype=np.float32)
            lg.create_array("activations", shape=(n, channels), chunks=(chunk, channels), dtype=np.float32)
            for start in range(0, n, chunk * 8):
                stop = min(n, start + chunk * 8)
                lg["umap"][start:stop] = np.clip(rng.normal(0.5 + 0.05 * d, 0.15, (stop - start, 2)), 0, 1)
                lg["activations"][start:stop] = rng.random((stop - start, channels), dtype=np.float32)


def study_for(path: Path, sizes: list[int]):
    from ganscale.study import parse_study

    return parse_study({"name": "bench", "store": str(path), "probe": {"name": "toy_probe"}, "layers": ["block1"],
                        "datasets": {f"d{i}": {"kind": "toyworld", "samples": n} for i, n in enumerate(sizes)},
                        "atlas": {"grids": GRIDS}})


def run_dask(path: str) -> dict:
    import zarr

    from ganscale import atlas

    root = zarr.open_group(path, mode="r")
    sizes = [root[f"datasets/d{d}/logits"].shape[0] for d in range(3)]
    study = study_for(Path(path), sizes)
    t0 = time.perf_counter()
    kl = {}
    for layer in LAYERS:
        results = atlas.compute_layer(study, root, layer, "threads")
        kl[layer] = float(results[20]["kl"][0, 1])
    return {"seconds": time.perf_counter() - t0, "kl_layer0_g20": kl[LAYERS[0]]}


def run_numpy(path: str) -> dict:
    """Baseline: every array whole in memory in one process, the same statistics computed by the
    same numpy code (`partial_stats`) on the whole arrays instead of per chunk."""
    import zarr

    from ganscale.atlas import kl_terms, partial_stats

    root = zarr.open_group(path, mode="r")
    t0 = time.perf_counter()
    kl = {}
    for layer in LAYERS:
        data = [(root[f"datasets/d{d}/layers/{layer}/umap"][:], root[f"datasets/d{d}/layers/{layer}/activations"][:],
                 root[f"datasets/d{d}/logits"][:]) for d in range(3)]
        for grid in GRIDS:
            stats = [partial_stats(xy, acts, logits, 0, grid, 4) for xy, acts, logits in data]
            if grid == 20:
                kl[layer] = float(kl_terms(stats[0].counts, stats[1].counts, 0.5).sum())
    return {"seconds": time.perf_counter() - t0, "kl_layer0_g20": kl[LAYERS[0]]}


def run_embed(samples: int, channels: int) -> dict:
    import umap

    from ganscale import embed, schema
    from ganscale.study import parse_study

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(samples, channels)) + np.repeat(rng.normal(0, 3, (10, channels)), samples // 10, 0)
         ).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        study = parse_study({"name": "b", "store": f"{tmp}/s.zarr", "probe": {"name": "toy_probe"},
                             "layers": ["block2"], "datasets": {"a": {"kind": "toyworld", "samples": samples}},
                             "embed": {"layers": {"block2": {"n_neighbors": 15}}}})
        root = schema.open_store(study.store)
        layout = schema.DatasetLayout(samples, 1024, 4, {"block2": channels})
        group = schema.create_dataset_group(root, "a", layout, {"fingerprint": "x", "chunk_size": 1024})
        group["layers/block2/activations"][:] = x
        schema.seal_chunks(group, layout)
        # warm numba's JIT caches (UMAP and pynndescent, for these settings and this size) with one
        # untimed run, so neither timing below pays compilation
        umap.UMAP(n_neighbors=15, min_dist=0.05, metric="cosine", random_state=0, n_jobs=1).fit_transform(x)
        t0 = time.perf_counter()
        umap.UMAP(n_neighbors=15, min_dist=0.05, metric="cosine", random_state=0, n_jobs=1).fit_transform(x)
        direct = time.perf_counter() - t0
        t0 = time.perf_counter()
        embed.embed_layer(study, "block2", "umap-learn")
        stage = time.perf_counter() - t0
    return {"umap_learn_seconds": round(direct, 2), "embed_stage_seconds": round(stage, 2),
            "overhead_ratio": round(stage / direct, 3)}


def child(kind: str, path: str) -> None:
    result = run_dask(path) if kind == "dask" else run_numpy(path)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=16384)
    parser.add_argument("--embed-samples", type=int, default=20000)
    parser.add_argument("--out", default="bench/results/atlas.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    out = {"samples": args.samples, "layers": len(LAYERS), "grids": GRIDS, "channels": args.channels}
    if args.samples:
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "atlas.zarr"
            t0 = time.perf_counter()
            make_store(store, args.samples, args.channels, args.classes, args.chunk)
            out["store_build_seconds"] = round(time.perf_counter() - t0, 1)
            for kind in ("dask", "numpy"):
                proc = subprocess.run([sys.executable, __file__, "--child", kind, str(store)], capture_output=True,
                                      text=True, check=True)
                out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(kind, out[kind], flush=True)
        assert abs(out["dask"]["kl_layer0_g20"] - out["numpy"]["kl_layer0_g20"]) < 1e-9
        out["time_ratio_dask_over_numpy"] = round(out["dask"]["seconds"] / out["numpy"]["seconds"], 3)
        out["memory_ratio_dask_over_numpy"] = round(out["dask"]["peak_rss_mb"] / out["numpy"]["peak_rss_mb"], 3)
    if args.embed_samples:
        out["embed"] = run_embed(args.embed_samples, 64)
        print("embed", out["embed"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
