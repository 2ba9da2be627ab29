"""Metric benchmarks, each measured in one run.

1. FID at N x 2048 features (default 50k): ours (features -> moments -> Fréchet distance, and the
   same through 50 merged chunk moments, as the metrics stage does) against torchmetrics'
   FrechetInceptionDistance fed the same features (its `feature` argument takes a module; an
   identity module passes features straight through). Times, ratio and the difference of values.
2. C2ST training time on the demo study's images (ganscale/toyworld/demo.yaml, `metrics.c2st`):
   the pooled classifier and one per generator, as the metrics stage trains them.

    python bench/metrics.py [--features 50000] [--dims 2048] [--c2st-samples 2000] [--out bench/results/metrics.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ganscale.metrics import FeatureMoments, frechet_distance, frechet_distance_from_moments


class Identity(torch.nn.Module):
    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def correlated_features(n: int, dims: int, shift: float, seed: int) -> np.ndarray:
    """Non-negative, correlated features like pool3's: a ReLU of a random projection of Gaussians."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(0).normal(size=(256, dims)) / 16
    return np.maximum(rng.normal(shift, 1, size=(n, 256)) @ mixing, 0).astype(np.float32)


def bench_fid(n: int, dims: int) -> dict:
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = correlated_features(n, dims, 0.0, 1), correlated_features(n, dims, 0.05, 2)
    t0 = time.perf_counter()
    ours = frechet_distance(a, b)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunks = [FeatureMoments.of(a[i:i + n // 50]) for i in range(0, n, n // 50)]
    merged = chunks[0]
    for part in chunks[1:]:
        merged = merged + part
    ours_merged = frechet_distance_from_moments(merged, FeatureMoments.of(b))
    t_merged = time.perf_counter() - t0
    t0 = time.perf_counter()
    metric = FrechetInceptionDistance(feature=Identity(dims), normalize=True)
    metric.set_dtype(torch.float64)
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    reference = float(metric.compute())
    t_ref = time.perf_counter() - t0
    return {"features": n, "dims": dims, "ours": ours, "ours_merged_chunks": ours_merged, "torchmetrics": reference,
            "abs_diff": abs(ours - reference), "rel_diff": abs(ours - reference) / abs(reference),
            "seconds_ours": round(t_ours, 2), "seconds_ours_merged": round(t_merged, 2),
            "seconds_torchmetrics": round(t_ref, 2), "ratio_ours_over_torchmetrics": round(t_ours / t_ref, 3)}


def bench_c2st(samples: int) -> dict:
    from ganscale.metrics.c2st import c2st
    from ganscale.sample import load_images
    from ganscale.study import load_study

    study = load_study(Path(__file__).parents[1] / "ganscale" / "toyworld" / "demo.yaml", check_files=False)
    settings = study.metrics.c2st
    images = {name: load_images(study, name, np.arange(samples))[0] for name in study.datasets}
    t0 = time.perf_counter()
    result = c2st(images["real"], {g: images[g] for g in ("full", "no_tree")}, epochs=settings.epochs,
                  patience=settings.patience, batch_size=settings.batch_size, lr=settings.lr, seed=study.seed)
    seconds = time.perf_counter() - t0
    tables = result.to_dict()["classifiers"]
    return {"samples_per_dataset": samples, "threads": torch.get_num_threads(), "seconds_total": round(seconds, 1),
            "classifiers": {name: {k: t[k] for k in ("test_accuracy", "p_value", "epochs", "best_epoch", "seconds")}
                            for name, t in tables.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=50_000)
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--c2st-samples", type=int, default=2000)
    parser.add_argument("--out", default="bench/results/metrics.json")
    args = parser.parse_args()
    results = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__}}
    results["fid"] = bench_fid(args.features, args.dims)
    print(json.dumps(results["fid"], indent=2), flush=True)
    if args.c2st_samples:
        results["c2st"] = bench_c2st(args.c2st_samples)
        print(json.dumps(results["c2st"], indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
