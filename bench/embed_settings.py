"""UMAP settings on the demo's stored activations: wall time per setting (same process, one after another).

    python bench/embed_settings.py STORE LAYER
"""
import sys
import time

import numpy as np
import zarr

store, layer = sys.argv[1], sys.argv[2]
root = zarr.open_group(store, mode="r")
x = np.concatenate([root[f"datasets/{d}/layers/{layer}/activations"][:] for d in ("real", "full", "no_tree")])
t = time.time()
import umap  # noqa: E402
print(f"import umap {time.time() - t:.1f} s", flush=True)
settings = {
    "warmup (compile) 2000 pts": dict(n_neighbors=15, n=2000),
    "default 50 nn": dict(n_neighbors=50),
    "50 nn, low_memory=False": dict(n_neighbors=50, low_memory=False),
    "50 nn, n_epochs 100": dict(n_neighbors=50, n_epochs=100),
    "15 nn": dict(n_neighbors=15),
    "15 nn, n_epochs 100": dict(n_neighbors=15, n_epochs=100),
}
for name, s in settings.items():
    s = dict(s)
    n = s.pop("n", len(x))
    t = time.time()
    umap.UMAP(metric="cosine", min_dist=0.05, random_state=0, n_jobs=1, **s).fit_transform(x[:n])
    print(f"{name}: {time.time() - t:.1f} s", flush=True)
