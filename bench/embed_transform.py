"""embed.new_datasets: transform. ganscale's transform_points (from the stored arrays, no pickle)
against umap-learn's own UMAP.transform on the same fit (what the pickled reducer of ganscale <= this
change ran), and umap-learn against itself with another transform seed as the noise reference.

Synthetic clustered points (12 clusters; 64-d euclidean/cosine, 256-d non-negative like ReLU
features), n_neighbors 15, min_dist 0.05, fit seed 3. Displacements in the layout normalised to
[0, 1] as the embed stage normalises it; "same_cell_20": the share in the same cell of a 20x20 grid.

    python bench/embed_transform.py [--train 6000 --new 1000] [--out bench/results/embed_transform.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import umap

from ganscale import embed


def clustered(n: int, d: int, seed: int, k: int = 12) -> np.ndarray:
    r = np.random.default_rng(100 + d)  # the same clusters for fitted and new points
    centres, scales = r.normal(size=(k, d)) * 2.0, r.uniform(0.5, 1.5, k)
    r = np.random.default_rng(seed)
    label = r.integers(0, k, n)
    x = centres[label] + scales[label, None] * r.normal(size=(n, d))
    return (np.maximum(x, 0) if d > 100 else x).astype(np.float32)


def compare(u, v, low, high) -> dict:
    u, v = embed.apply_bounds(np.asarray(u), low, high), embed.apply_bounds(np.asarray(v), low, high)
    distance = np.linalg.norm(u - v, axis=1)
    cell = lambda p: np.minimum((p * 20).astype(int), 19)  # noqa: E731
    return {"median": round(float(np.median(distance)), 4), "p95": round(float(np.percentile(distance, 95)), 4),
            "same_cell_20": round(float((cell(u) == cell(v)).all(1).mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, nargs="+", default=[6000, 2000])
    parser.add_argument("--new", type=int, nargs="+", default=[1000, 500])
    parser.add_argument("--out", default="bench/results/embed_transform.json")
    args = parser.parse_args()
    rows = []
    for train_n, new_n in zip(args.train, args.new):
        for d, metric in [(64, "euclidean"), (64, "cosine"), (256, "euclidean"), (256, "cosine")]:
            x, new = clustered(train_n, d, 1), clustered(new_n, d, 2)
            t = time.time()
            reducer = umap.UMAP(n_neighbors=15, min_dist=0.05, metric=metric, random_state=3, n_jobs=1).fit(x)
            fit_s = time.time() - t
            _, (low, high) = embed.normalise(reducer.embedding_)
            settings = {"n_neighbors": reducer._n_neighbors, "metric": metric, "a": reducer._a, "b": reducer._b}
            t = time.time()
            theirs = reducer.transform(new)
            theirs_s = time.time() - t
            reducer.transform_seed = 7
            theirs7 = reducer.transform(new)
            t = time.time()
            ours = embed.transform_points(x, reducer.embedding_, new, **settings)
            ours_s = time.time() - t
            ours7 = embed.transform_points(x, reducer.embedding_, new, seed=7, **settings)
            row = {"train": train_n, "new": new_n, "dims": d, "metric": metric,
                   "umap_learn_search": "exact" if train_n < 4096 else "pynndescent",
                   "ours_vs_umap_learn": compare(theirs, ours, low, high),
                   "umap_learn_seed42_vs_seed7": compare(theirs, theirs7, low, high),
                   "ours_seed42_vs_seed7": compare(ours, ours7, low, high),
                   "seconds": {"fit": round(fit_s, 1), "umap_learn_transform": round(theirs_s, 1),
                               "ours": round(ours_s, 1)}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    with open(args.out, "w") as f:
        json.dump({"command": "python bench/embed_transform.py", "umap_learn": umap.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
