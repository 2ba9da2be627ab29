"""Stage 2, embed: one UMAP per layer, fitted jointly on every dataset's samples.

The fit runs as a Ray task, on a GPU node with RAPIDS cuML when the cluster has GPUs and cuML
imports there, else with umap-learn on a CPU. The layout is normalised as the published atlases
do (clip to the 1st..99th percentile, add a 10% margin, rescale to [0, 1]) and written back per
dataset as datasets/{dataset}/layers/{layer}/umap. A layer whose inputs did not change is skipped.
"""

from __future__ import annotations

import io
import logging
import time
import warnings

import numpy as np

from ganscale import ledger, schema, stage
from ganscale.errors import GanscaleError
from ganscale.progress import status
from ganscale.runtime import init_ray
from ganscale.study import Study, UmapParams, digest

log = logging.getLogger("ganscale.embed")

# The published activation atlases (Carter et al. 2019): early layers euclidean with wide
# neighbourhoods, later layers cosine.
PUBLISHED = {
    **{layer: UmapParams(n_neighbors=200, min_dist=0.05, metric="euclidean") for layer in ("mixed3a", "mixed3b")},
    **{layer: UmapParams(n_neighbors=50, min_dist=0.05, metric="cosine")
       for layer in ("mixed4a", "mixed4b", "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b")},
}
DEFAULT = UmapParams(n_neighbors=50, min_dist=0.05, metric="cosine")


def params_for(study: Study, layer: str) -> UmapParams:
    return study.embed.layers.get(layer) or PUBLISHED.get(layer) or DEFAULT


def normalise(layout: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0, margin: float = 0.1):
    """Clip each axis to its percentiles, then rescale so the clipped range fills [0, 1] less a
    `margin` (fraction of the range) on each side. Returns the layout and the percentile bounds,
    so new points can be mapped the same way."""
    low, high = np.percentile(layout, [low_pct, high_pct], axis=0)
    return apply_bounds(layout, low, high, margin), (low, high)


def apply_bounds(layout: np.ndarray, low: np.ndarray, high: np.ndarray, margin: float = 0.1) -> np.ndarray:
    span = np.maximum(high - low, 1e-12)
    return ((np.clip(layout, low, high) - low + margin * span) / ((1 + 2 * margin) * span)).astype(np.float32)


def cuml_available() -> bool:
    try:
        import cuml  # noqa: F401
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# Sample counts at which umap-learn's neighbours are found exactly here (below the range umap-learn
# finds them exactly itself; above it, pynndescent's approximate search).
EXACT_KNN = (4096, 50_000)


def exact_neighbours(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row (itself first) and their distances, by blocks of matrix
    products. At the demo's size this takes seconds, where pynndescent compiles its functions that
    take the distance as an argument in every process (~30 s of CPU: numba cannot cache them)."""
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x.astype(np.float64)  # float32 products leave ~1e-3 of cancellation in a point's distance to itself
    squares = (x ** 2).sum(1)
    index, distance = np.empty((len(x), k), np.int64), np.empty((len(x), k), np.float32)
    block = max(1, (1 << 24) // len(x))  # rows per block: 128 MB of float64 distances
    for start in range(0, len(x), block):
        d = np.maximum(squares[start:start + block, None] + squares[None] - 2.0 * (x[start:start + block] @ x.T), 0)
        d = d / 2 if metric == "cosine" else np.sqrt(d)  # cosine: 1 - cos = |a - b|^2 / 2 for unit rows
        nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(d, nearest, 1)
        order = np.argsort(values, axis=1, kind="stable")
        index[start:start + block] = np.take_along_axis(nearest, order, 1)
        distance[start:start + block] = np.take_along_axis(values, order, 1)
    return index, distance


def fit_umap(x: np.ndarray, params: UmapParams, backend: str, seed: int, pca: int | None,
             exact: bool = False) -> tuple[np.ndarray, bytes, str]:
    """(raw 2-d layout, fitted reducer bytes, how the neighbours were found). backend: 'cuml' or
    'umap-learn'. `exact`: umap-learn may find the neighbours exactly (within EXACT_KNN, euclidean or
    cosine); the reducer then has no search index and cannot transform new points."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    projection = None
    if pca and pca < x.shape[1]:
        from sklearn.decomposition import PCA

        projection = PCA(n_components=pca, random_state=seed).fit(x)
        x = projection.transform(x).astype(np.float32)
    n_neighbors = min(params.n_neighbors, len(x) - 1)
    knn = "approximate"
    if backend == "cuml":
        from cuml.manifold import UMAP

        reducer = UMAP(n_neighbors=n_neighbors, min_dist=params.min_dist, metric=params.metric,
                       build_algo="nn_descent", random_state=seed)
    else:
        import umap

        neighbours = (None, None, None)
        if exact and EXACT_KNN[0] <= len(x) <= EXACT_KNN[1] and params.metric in ("euclidean", "cosine"):
            neighbours, knn = exact_neighbours(x, n_neighbors, params.metric), "exact"
        reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=params.min_dist, metric=params.metric,
                            random_state=seed, n_jobs=1, precomputed_knn=neighbours)
    with warnings.catch_warnings():  # "no search index, so no transform": known, and refitted instead
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        layout = np.asarray(reducer.fit_transform(x), dtype=np.float32)
    return layout, _dumps((projection, reducer)), knn


def _dumps(obj) -> bytes:
    import pickle

    buffer = io.BytesIO()
    pickle.dump(obj, buffer, protocol=5)
    return buffer.getvalue()


NAME, ITEM, READS = "embed", "layer", ("sample",)


def items(study: Study) -> list[str]:
    return list(study.layers)


def settings(study: Study, root, layer: str) -> dict:
    """What a layer's layout depends on besides the samples (stage.inputs adds every dataset's
    sample fingerprint)."""
    return {"layer": layer, "datasets": list(study.datasets), "params": params_for(study, layer).model_dump(),
            "pca": study.embed.pca, "seed": study.seed}


def layer_fingerprint(study: Study, root, layer: str) -> str:
    return stage.fingerprint(study, root, NAME, layer)


def load_layer(root, datasets: list[str], layer: str) -> tuple[np.ndarray, list[int]]:
    parts = [schema.read_rows(root[schema.dataset_path(d)], f"layers/{layer}/activations") for d in datasets]
    return np.concatenate(parts), [len(p) for p in parts]


def _write_layout(root, dataset: str, layer: str, layout: np.ndarray) -> None:
    group = root[schema.dataset_path(dataset)]
    schema.write_checksummed(group, f"layers/{layer}/umap", np.asarray(layout, dtype=np.float32),
                             group.attrs["chunk_size"], ("sample", "xy"))


def embed_layer(study: Study, layer: str, backend: str) -> dict:
    """Fit one layer on every dataset and write the layouts back (runs as a Ray task)."""
    t0 = time.time()
    root = schema.open_store(study.store, study.storage_options)
    names = list(study.datasets)
    x, counts = load_layer(root, names, layer)
    if not np.isfinite(x).all():
        raise GanscaleError(f"embed: layer {layer} has non-finite activations in the store")
    status(f"embed {layer}: fitting {len(x):,} x {x.shape[1]} with {backend}")
    # exact neighbours leave no search index: only where new datasets are refitted, not transformed
    raw, reducer, knn = fit_umap(x, params_for(study, layer), backend, study.seed, study.embed.pca,
                                 exact=study.embed.new_datasets == "refit")
    status(f"embed {layer}: fitted in {time.time() - t0:.1f} s")
    layout, (low, high) = normalise(raw)
    offsets = np.cumsum([0] + counts)
    for name, start, stop in zip(names, offsets[:-1], offsets[1:]):
        _write_layout(root, name, layer, layout[start:stop])
    blob = np.frombuffer(reducer, dtype=np.uint8)
    root.require_group("models").create_array(
        f"umap_{layer}", shape=blob.shape, chunks=(max(1, min(len(blob), 1 << 24)),), dtype=np.uint8,
        overwrite=True)[:] = blob
    return {"layer": layer, "backend": backend, "samples": int(len(x)), "seconds": round(time.time() - t0, 2),
            "bounds": [low.tolist(), high.tolist()], "knn": knn}


def transform_layer(study: Study, layer: str, datasets: list[str], bounds) -> dict:
    """Map new datasets into an existing layout with the stored reducer (no refit)."""
    import pickle

    t0 = time.time()
    root = schema.open_store(study.store, study.storage_options)
    projection, reducer = pickle.loads(root[f"models/umap_{layer}"][...].tobytes())
    low, high = (np.asarray(b) for b in bounds)
    for name in datasets:
        x = root[f"{schema.layer_path(name, layer)}/activations"][...]
        if projection is not None:
            x = projection.transform(x).astype(np.float32)
        _write_layout(root, name, layer, apply_bounds(np.asarray(reducer.transform(x)), low, high))
    return {"seconds": round(time.time() - t0, 2), "transformed": datasets}


def choose_backend(study: Study, cluster_gpus: int) -> str:
    wanted = study.embed.backend
    if wanted == "cuml" and not cluster_gpus:
        raise GanscaleError("embed.backend: 'cuml' needs a GPU in the Ray cluster")
    if wanted == "auto":
        return "cuml" if cluster_gpus else "umap-learn"
    return wanted


def run(study: Study, *, address: str | None = None) -> dict:
    """Embed every layer whose inputs changed; returns per layer what was done."""
    import ray

    from ganscale.progress import Progress

    root = schema.open_store(study.store, study.storage_options)
    schema.require_sampled(root, study.datasets, "embed")
    init_ray(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    backend = choose_backend(study, gpus)
    inputs = {layer: stage.inputs(study, root, NAME, layer) for layer in study.layers}
    fits, transforms = [], {}
    for layer in study.layers:
        previous = ledger.entry(root, NAME, layer)
        if previous is not None and previous["fingerprint"] == digest(inputs[layer]):
            continue
        # datasets fitted before keep their layout when only new ones came (embed.new_datasets: transform)
        new = [n for n in study.datasets if previous is not None and f"sample/{n}" not in previous["inputs"]]
        if (study.embed.new_datasets == "transform" and previous is not None and new
                and previous.get("knn") != "exact"  # that reducer has no search index: refit
                and previous["inputs"]["params"] == inputs[layer]["params"]
                and all(inputs[layer].get(k) == v for k, v in previous["inputs"].items() if k.startswith("sample/"))):
            transforms[layer] = new
        else:
            fits.append(layer)
    options = {"num_gpus": 1} if backend == "cuml" else {"num_cpus": 1}
    if backend == "cuml" and fits and not ray.get(ray.remote(num_gpus=1)(cuml_available).remote()):
        if study.embed.backend == "cuml":
            raise GanscaleError("embed.backend: cuML does not import on the cluster's GPU nodes")
        backend, options = "umap-learn", {"num_cpus": 1}  # the CPU fallback
    fit_refs = [ray.remote(**options)(embed_layer).remote(study, layer, backend) for layer in fits]
    transform_refs = [ray.remote(num_cpus=1)(transform_layer).remote(study, layer, new,
                                                                       ledger.entry(root, NAME, layer)["bounds"])
                      for layer, new in transforms.items()]
    bar = Progress("embed", len(fits), unit="layers")
    pending = dict(zip(fit_refs, fits))
    while pending:  # layers as they finish, so the display moves
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        layer, result = pending.pop(ref), ray.get(ref)
        ledger.record(root, NAME, layer, inputs[layer], result["seconds"], backend=result["backend"],
                      samples=result["samples"], bounds=result["bounds"], knn=result["knn"])
        bar.advance(1, f"{layer} in {result['seconds']:.0f} s")
        log.info("embed %s: %d samples with %s in %.1f s", layer, result["samples"], backend, result["seconds"])
    bar.close()
    for (layer, new), result in zip(transforms.items(), ray.get(transform_refs)):
        previous = ledger.entry(root, NAME, layer)
        ledger.record(root, NAME, layer, inputs[layer], previous["seconds"] + result["seconds"],
                      **{k: previous[k] for k in ("backend", "samples", "bounds", "knn") if k in previous},
                      transformed=sorted(set(previous.get("transformed", [])) | set(new)))
        log.info("embed %s: transformed %s into the existing layout", layer, ", ".join(new))
    return {"fitted": fits, "transformed": {k: v for k, v in transforms.items()},
            "skipped": [layer for layer in study.layers if layer not in fits and layer not in transforms],
            "backend": backend}
