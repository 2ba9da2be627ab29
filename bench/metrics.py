"""Metric benchmarks, each section measured in one run, written to one JSON file.

fid: the Fréchet distance at N x D features (default 50k x 2048, pool3's size) of two correlated
     feature sets with a small shift, computed three ways on the same float32 features:
     * ours: features -> FeatureMoments (float64, in row blocks) -> frechet_distance_from_moments;
     * ours through merged chunk moments, as the metrics stage does (moments of `--chunks` chunks of
       each set, merged, then the distance);
     * torchmetrics' FrechetInceptionDistance fed the same features through an identity `feature`
       module (batches of 5000 rows, given as float64 so its result is not rounded to float32), and
       torch-fidelity's fid_features_to_statistics + fid_statistics_to_metric when it imports
       (it needs torchvision; recorded as unavailable otherwise).
     Times (moments and distance apart), the ratio of our time to the reference's, and the absolute
     and relative differences of the values.

c2st: training time of the demo's C2ST classifiers (pooled and per generator) on its stored images.

    python bench/metrics.py [--sections fid,c2st] [--features 50000] [--dims 2048] [--chunks 50]
                            [--c2st-samples 2000] [--demo-store ganscale-demo/demo.zarr]
                            [--out bench/results/metrics.json]

Adding a section: write `bench_NAME(args) -> dict`, add its arguments in `add_arguments`, and
register it in SECTIONS; `main()` runs the sections named by --sections and stores each result
under its name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ganscale.metrics import FeatureMoments, frechet_distance_from_moments


class Identity(torch.nn.Module):
    """Lets torchmetrics' FID take features: its `feature` argument takes a module with `num_features`."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def correlated_features(n: int, dims: int, shift: float, seed: int, latent: int = 512, block: int = 5000
                        ) -> np.ndarray:
    """pool3-like features [n, dims] float32: non-negative and correlated, full rank. A ReLU of a fixed
    random projection of `latent` gaussians (mean `shift`) plus a little independent noise."""
    mixing = np.random.default_rng(12345).normal(size=(latent, dims)) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dims), dtype=np.float32)
    for start in range(0, n, block):
        rows = min(block, n - start)
        z = rng.normal(shift, 1.0, size=(rows, latent))
        out[start:start + rows] = np.maximum(z @ mixing + 0.1 * rng.normal(size=(rows, dims)), 0)
    return out


def _timed(fn: Callable):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def _compare(value: float, reference: float) -> dict:
    return {"abs_diff": abs(value - reference), "rel_diff": abs(value - reference) / abs(reference)}


def bench_fid(args) -> dict:
    n, dims = args.features, args.dims
    (a, b), t_make = _timed(lambda: (correlated_features(n, dims, 0.0, 1), correlated_features(n, dims, args.shift, 2)))
    print(f"fid: {n} x {dims} features made in {t_make:.1f} s", flush=True)
    result: dict = {"features": n, "dims": dims, "shift": args.shift, "dtype": "float32", "chunks": args.chunks}

    (ma, mb), t_moments = _timed(lambda: (FeatureMoments.of(a), FeatureMoments.of(b)))
    ours, t_distance = _timed(lambda: frechet_distance_from_moments(ma, mb))
    result["ours"] = {"value": ours, "seconds_moments": round(t_moments, 2), "seconds_distance": round(t_distance, 2),
                      "seconds": round(t_moments + t_distance, 2)}
    print(f"fid: ours {ours:.9g} in {t_moments + t_distance:.1f} s", flush=True)

    def merged_moments(x):
        size = -(-len(x) // args.chunks)
        return sum(FeatureMoments.of(x[i:i + size]) for i in range(0, len(x), size))

    (ca, cb), t_chunk_moments = _timed(lambda: (merged_moments(a), merged_moments(b)))
    merged, t_merged_distance = _timed(lambda: frechet_distance_from_moments(ca, cb))
    result["ours_merged_chunks"] = {"value": merged, "seconds_moments": round(t_chunk_moments, 2),
                                    "seconds_distance": round(t_merged_distance, 2),
                                    "seconds": round(t_chunk_moments + t_merged_distance, 2), **_compare(merged, ours)}
    print(f"fid: ours through {args.chunks} merged chunks {merged:.9g} in "
          f"{t_chunk_moments + t_merged_distance:.1f} s", flush=True)

    result["torchmetrics"] = bench_fid_torchmetrics(a, b, ours, result["ours"]["seconds"])
    result["torch_fidelity"] = bench_fid_torch_fidelity(a, b, ours, result["ours"]["seconds"])
    return result


def bench_fid_torchmetrics(a: np.ndarray, b: np.ndarray, ours: float, seconds_ours: float) -> dict:
    try:
        import torchmetrics
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:
        return {"unavailable": f"{type(e).__name__}: {e}"}
    metric = FrechetInceptionDistance(feature=Identity(a.shape[1]), normalize=True)

    def update():
        for x, real in ((a, True), (b, False)):
            for start in range(0, len(x), 5000):
                metric.update(torch.from_numpy(x[start:start + 5000].astype(np.float64)), real=real)

    _, t_update = _timed(update)
    value, t_compute = _timed(lambda: float(metric.compute()))
    seconds = t_update + t_compute
    print(f"fid: torchmetrics {value:.9g} in {seconds:.1f} s", flush=True)
    return {"version": torchmetrics.__version__, "value": value, "seconds_update": round(t_update, 2),
            "seconds_compute": round(t_compute, 2), "seconds": round(seconds, 2),
            "ratio_ours_over_reference": round(seconds_ours / seconds, 3), **_compare(ours, value)}


def bench_fid_torch_fidelity(a: np.ndarray, b: np.ndarray, ours: float, seconds_ours: float) -> dict:
    try:
        from torch_fidelity import __version__ as version
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    except ImportError as e:
        why = ("not installed" if getattr(e, "name", None) == "torch_fidelity"
               else "it imports torchvision when imported, and torchvision does not install beside this torch")
        return {"unavailable": f"{type(e).__name__}: {e} ({why})"}
    stats, t_stats = _timed(lambda: [fid_features_to_statistics(torch.from_numpy(x)) for x in (a, b)])
    value, t_metric = _timed(lambda: fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"])
    seconds = t_stats + t_metric
    print(f"fid: torch-fidelity {value:.9g} in {seconds:.1f} s", flush=True)
    return {"version": version, "value": value, "seconds_statistics": round(t_stats, 2),
            "seconds_metric": round(t_metric, 2), "seconds": round(seconds, 2),
            "ratio_ours_over_reference": round(seconds_ours / seconds, 3), **_compare(ours, value)}


def bench_c2st(args) -> dict:
    """C2ST training time on the demo study's stored images (ganscale/toyworld/demo.yaml, its
    `metrics.c2st` settings): the pooled classifier and one per generator, as the metrics stage
    trains them. Needs the demo's store (`make demo`); --demo-store says where it is."""
    from ganscale.metrics.c2st import c2st
    from ganscale.images import load_images
    from ganscale.study import load_study

    study = load_study(Path(__file__).parents[1] / "ganscale" / "toyworld" / "demo.yaml", check_files=False)
    study = study.model_copy(update={"store": args.demo_store})
    settings = study.metrics.c2st
    images = {name: load_images(study, name, np.arange(args.c2st_samples))[0] for name in study.datasets}
    generated = {g: images[g] for g in images if g != "real"}
    result, seconds = _timed(lambda: c2st(images["real"], generated, epochs=settings.epochs, patience=settings.patience,
                                          batch_size=settings.batch_size, lr=settings.lr, seed=study.seed))
    tables = result.to_dict()["classifiers"]
    print(f"c2st: {len(tables)} classifiers in {seconds:.1f} s", flush=True)
    return {"samples_per_dataset": args.c2st_samples, "threads": torch.get_num_threads(), "seconds": round(seconds, 1),
            "classifiers": {name: {k: t[k] for k in ("test_accuracy", "log10_p_value", "epochs", "best_epoch", "seconds")}
                            for name, t in tables.items()}}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {"fid": bench_fid, "c2st": bench_c2st}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fid = parser.add_argument_group("fid")
    fid.add_argument("--features", type=int, default=50_000, help="rows per feature set")
    fid.add_argument("--dims", type=int, default=2048, help="feature dimensions")
    fid.add_argument("--shift", type=float, default=0.05, help="mean shift of the second set's latent gaussians")
    fid.add_argument("--chunks", type=int, default=50, help="chunks per set for the merged-moments path")
    c2st = parser.add_argument_group("c2st")
    c2st.add_argument("--c2st-samples", type=int, default=2000, help="images per dataset")
    c2st.add_argument("--demo-store", default="ganscale-demo/demo.zarr", help="the demo's store (make demo)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (of: {', '.join(SECTIONS)})")
    parser.add_argument("--out", default="bench/results/metrics.json")
    add_arguments(parser)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {list(SECTIONS)}")
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                 "python": platform.python_version(), "numpy": np.__version__,
                                 "torch": torch.__version__, "load_average_at_start": list(os.getloadavg())}}
    for name in sections:
        t0 = time.perf_counter()
        results[name] = SECTIONS[name](args)
        results[name]["seconds_section"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: results[name]}, indent=2), flush=True)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
