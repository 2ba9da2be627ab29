"""What the intervals cost: the metrics' bootstrap (ganscale.metrics.uncertainty) against the
metric computed once, on feature sets shaped like the faces study (2048-d pool3 features of 100
reference and 400/150 generated images) and like a large study (1000 rows per set, the default
`metrics.bootstrap.rows` cap, above which sets are subsampled). Ratios within one run; the
absolute seconds depend on the machine.

    python bench/bootstrap.py      # ~1-2 min on 2 cores; writes bench/results/bootstrap.json
    python bench/bootstrap.py examples/faces/faces.yaml   # also: the study's metrics stage with 1 and with
                                   # its own number of resamples, on its finished store (after `make faces`)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ganscale.metrics import features as fm
from ganscale.metrics import uncertainty as un

ROOT = Path(__file__).resolve().parents[1]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    rng = np.random.default_rng(0)
    res = un.Resampling(seed=0, resamples=200)
    rows = []
    for label, n_ref, n_gen, dims in (("faces lfw-dcgan", 100, 400, 2048), ("faces lfw-stylegan", 100, 150, 2048),
                                      ("cap 1000 x 1000, 2048-d", 1000, 1000, 2048),
                                      ("cap 1000 x 1000, 512-d", 1000, 1000, 512)):
        ref = rng.normal(size=(n_ref, dims)).astype(np.float32)
        gen = (rng.normal(size=(n_gen, dims)) * 1.1 + 0.05).astype(np.float32)
        _, once = timed(lambda: fm.frechet_distance(ref, gen))
        _, fid_boot = timed(lambda: un.frechet_bootstrap(ref, gen, res, ("ref", "gen")))
        _, kid_once = timed(lambda: fm.kid(ref, gen, subsets=50, subset_size=min(n_ref, n_gen, 1000)))
        _, kid_boot = timed(lambda: un.kid_bootstrap(ref, gen, res, ("ref", "gen")))
        _, prdc_once = timed(lambda: (fm.prdc(ref, gen, 3), fm.prdc(ref, gen, 5)))
        _, prdc_boot = timed(lambda: un.prdc_bootstrap(ref, gen, res, ("ref", "gen")))
        row = {"case": label, "n": [n_ref, n_gen], "dims": dims, "resamples": res.resamples,
               "frechet_once_s": once, "frechet_bootstrap_s": fid_boot, "kid_once_s": kid_once,
               "kid_bootstrap_s": kid_boot, "prdc_once_s": prdc_once, "prdc_bootstrap_s": prdc_boot}
        rows.append(row)
        print(f"{label:>26}: Fréchet {once:.2f} s once, {fid_boot:.2f} s for {res.resamples} resamples "
              f"({fid_boot / once:.0f}x); KID {kid_once:.2f} s / {kid_boot:.2f} s; "
              f"PRDC {prdc_once:.2f} s / {prdc_boot:.2f} s")
    result = {"functions": rows}
    if len(sys.argv) > 1:
        result["stage"] = stage_cost(Path(sys.argv[1]))
    out = ROOT / "bench" / "results" / "bootstrap.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def stage_cost(study_path: Path) -> dict:
    """The metrics stage on the study's store with 1 resample, then with the study's own number
    (which leaves the store as the study wrote it): the difference is what the intervals cost."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from ganscale.pipeline import run_stage
    from ganscale.study import load_study

    study = load_study(study_path)
    own = study.metrics.bootstrap.resamples
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    seconds = {}
    for resamples in (1, own):
        variant = study.model_copy(update={"metrics": study.metrics.model_copy(update={
            "bootstrap": study.metrics.bootstrap.model_copy(update={"resamples": resamples})})})
        start = time.perf_counter()
        run_stage(variant, "metrics")
        seconds[resamples] = time.perf_counter() - start
    cost = seconds[own] - seconds[1]
    print(f"metrics stage of {study.name}: {seconds[1]:.1f} s with 1 resample, {seconds[own]:.1f} s with {own}: "
          f"the intervals cost {cost:.1f} s ({100 * cost / seconds[own]:.0f}% of the stage)")
    return {"study": study.name, "seconds_1_resample": seconds[1], f"seconds_{own}_resamples": seconds[own],
            "interval_share": cost / seconds[own]}


if __name__ == "__main__":
    main()
