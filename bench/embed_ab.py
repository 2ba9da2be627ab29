"""A/B of UMAP settings on the demo store's layer, after a full-size warm-up (numba compiled), alternating.

    python bench/embed_ab.py STORE LAYER
"""
import sys
import time

import numpy as np
import zarr

store, layer = sys.argv[1], sys.argv[2]
root = zarr.open_group(store, mode="r")
x = np.concatenate([root[f"datasets/{d}/layers/{layer}/activations"][:] for d in ("real", "full", "no_tree")])
import umap  # noqa: E402

t = time.time()
umap.UMAP(n_neighbors=50, metric="cosine", min_dist=0.05, random_state=0, n_jobs=1, n_epochs=5).fit_transform(x)
print(f"compile + one small fit: {time.time() - t:.1f} s", flush=True)
variants = {"A default": {}, "B low_memory=False": dict(low_memory=False),
            "C low_memory=False, n_epochs=100": dict(low_memory=False, n_epochs=100)}
for rep in range(2):
    for name, extra in variants.items():
        t = time.time()
        umap.UMAP(n_neighbors=50, metric="cosine", min_dist=0.05, random_state=0, n_jobs=1, **extra).fit_transform(x)
        print(f"{name}: {time.time() - t:.1f} s", flush=True)
