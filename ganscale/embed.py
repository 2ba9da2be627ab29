"""Stage 2, embed: one UMAP per layer, fitted jointly on every dataset's samples.

The fit runs as a Ray task, on a GPU node with RAPIDS cuML when the cluster has GPUs and cuML
imports there, else with umap-learn on a CPU. The layout is normalised as the published atlases
do (clip to the 1st..99th percentile, add a 10% margin, rescale to [0, 1]) and written back per
dataset as datasets/{dataset}/layers/{layer}/umap. A layer whose inputs did not change is skipped.

What `embed.new_datasets: transform` needs is kept in models/umap_{layer}/ as float arrays and plain
settings, each array with its CRC-32 (write_model, model_problem), and new points are placed from them
as umap-learn's UMAP.transform places them (transform_points): nothing read from the store is
unpickled or executed. A model that is missing, pickled by an older ganscale, or damaged is not read:
the layer is refitted, with a warning naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings

import numpy as np

from ganscale import ledger, schema
from ganscale.errors import GanscaleError
from ganscale.progress import status
from ganscale.runtime import init_ray
from ganscale.study import Study, UmapParams

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
    return nearest_in(x, x, k, metric)


def nearest_in(query: np.ndarray, train: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of `train` to every row of `query` ("euclidean" or "cosine": 1 - cos, as
    umap-learn and sklearn measure them) and their distances, nearest first, by blocks of matrix
    products in float64."""
    def prepare(x):
        x = np.asarray(x, dtype=np.float64)  # float32 products leave ~1e-3 of cancellation in a point's distance to itself
        if metric == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    if metric not in ("euclidean", "cosine"):
        raise GanscaleError(f"embed: exact neighbours support euclidean and cosine, not {metric!r}")
    query, train = prepare(query), (prepare(train) if train is not query else None)
    train = query if train is None else train
    squares_q, squares_t = (query ** 2).sum(1), (train ** 2).sum(1)
    index, distance = np.empty((len(query), k), np.int64), np.empty((len(query), k), np.float32)
    block = max(1, (1 << 24) // len(train))  # rows per block: 128 MB of float64 distances
    for start in range(0, len(query), block):
        d = np.maximum(squares_q[start:start + block, None] + squares_t[None] - 2.0 * (query[start:start + block] @ train.T), 0)
        d = d / 2 if metric == "cosine" else np.sqrt(d)  # cosine: 1 - cos = |a - b|^2 / 2 for unit rows
        nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(d, nearest, 1)
        order = np.argsort(values, axis=1, kind="stable")
        index[start:start + block] = np.take_along_axis(nearest, order, 1)
        distance[start:start + block] = np.take_along_axis(values, order, 1)
    return index, distance


def fit_umap(x: np.ndarray, params: UmapParams, backend: str, seed: int, pca: int | None,
             exact: bool = True) -> tuple[np.ndarray, dict, str]:
    """(raw 2-d layout, what `transform` needs besides that layout and the training activations,
    how the neighbours were found). backend: 'cuml' or 'umap-learn'. `exact`: umap-learn's neighbours
    are found exactly here within EXACT_KNN (euclidean or cosine); transform_points does not need
    pynndescent's search index, so an exact fit transforms like any other.

    The model is plain numbers: {"components", "mean"} (the PCA, or None) and {"n_neighbors",
    "metric", "min_dist", "a", "b"}: nothing of it is pickled or executed when read back."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    model: dict = {"components": None, "mean": None}
    if pca and pca < x.shape[1]:
        from sklearn.decomposition import PCA

        projection = PCA(n_components=pca, random_state=seed).fit(x)
        model["components"] = np.asarray(projection.components_, dtype=np.float32)
        model["mean"] = np.asarray(projection.mean_, dtype=np.float32)
        x = project(x, model["components"], model["mean"])
    n_neighbors = min(params.n_neighbors, len(x) - 1)
    knn = "approximate"
    if backend == "cuml":
        from cuml.manifold import UMAP
        from umap.umap_ import find_ab_params

        reducer = UMAP(n_neighbors=n_neighbors, min_dist=params.min_dist, metric=params.metric,
                       build_algo="nn_descent", random_state=seed)
        a, b = find_ab_params(1.0, params.min_dist)  # cuML's spread 1 and min_dist, fitted the same way
    else:
        import umap

        neighbours = (None, None, None)
        if exact and EXACT_KNN[0] <= len(x) <= EXACT_KNN[1] and params.metric in ("euclidean", "cosine"):
            neighbours, knn = exact_neighbours(x, n_neighbors, params.metric), "exact"
        reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=params.min_dist, metric=params.metric,
                            random_state=seed, n_jobs=1, precomputed_knn=neighbours)
    with warnings.catch_warnings():  # "no search index, so no transform": transform_points needs none
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        layout = np.asarray(reducer.fit_transform(x), dtype=np.float32)
    if backend != "cuml":
        a, b = reducer._a, reducer._b
    model.update(n_neighbors=int(n_neighbors), metric=params.metric, min_dist=float(params.min_dist),
                 a=float(a), b=float(b))
    return layout, model, knn


def project(x: np.ndarray, components: np.ndarray | None, mean: np.ndarray | None) -> np.ndarray:
    """sklearn's PCA.transform (no whitening) from its two arrays."""
    x = np.asarray(x, dtype=np.float32)
    if components is None:
        return x
    return ((x - mean) @ components.T).astype(np.float32)


# Beyond this many (new, fitted) pairs, transform_points finds the neighbours with an NNDescent index
# built afresh on the fitted points (umap-learn's own search, never stored) instead of matrix products:
# the products cost pairs x channels, 2.5e9 pairs about a minute of two CPU cores at 512 channels.
EXACT_PAIRS = 50_000 ** 2


def searched_neighbours(query: np.ndarray, train: np.ndarray, k: int, metric: str, seed: int):
    """umap-learn's approximate search: an NNDescent index on `train` as UMAP.fit builds it (its
    n_trees, n_iters, max_candidates), queried as UMAP.transform queries it (epsilon 0.24 with
    angular trees, else 0.12). Built here from the fitted arrays, never stored or read back."""
    from pynndescent import NNDescent

    index = NNDescent(train, n_neighbors=k, metric=metric, random_state=np.random.RandomState(seed),
                      n_trees=min(64, 5 + int(round(len(train) ** 0.5 / 20.0))),
                      n_iters=max(5, int(round(np.log2(len(train))))), max_candidates=60, low_memory=True,
                      n_jobs=1, compressed=False)
    return index.query(query, k, epsilon=0.24 if index._angular_trees else 0.12)


# umap-learn 0.5.12's UMAP.transform settings that ganscale never changes: its transform_seed,
# local_connectivity 1 (adjusted to 0 for new points), repulsion_strength, learning_rate,
# negative_sample_rate, and n_epochs None (100 epochs for up to 10,000 new points, else 30).
TRANSFORM_SEED = 42


def transform_points(train: np.ndarray, embedding: np.ndarray, x: np.ndarray, *, n_neighbors: int, metric: str,
                     a: float, b: float, seed: int = TRANSFORM_SEED) -> np.ndarray:
    """New points `x` placed into a fitted layout `embedding` (the raw layout of the rows of `train`),
    as umap-learn 0.5.12's UMAP.transform places them, from arrays alone: each point's n_neighbors
    nearest training points (exactly, as umap-learn does below 4,096 training points, up to EXACT_PAIRS
    pairs and for euclidean and cosine; beyond, by umap-learn's own NNDescent search built here), their
    fuzzy memberships, the weighted mean of their positions as the start, and the layout optimisation
    that moves only the new points."""
    import scipy.sparse
    from sklearn.utils import check_random_state
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import (DISCONNECTION_DISTANCES, INT32_MAX, INT32_MIN, compute_membership_strengths,
                            init_graph_transform, make_epochs_per_sample, smooth_knn_dist)

    embedding = np.ascontiguousarray(embedding, dtype=np.float32)
    rng_state = check_random_state(seed).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    if len(x) * len(train) <= EXACT_PAIRS and metric in ("euclidean", "cosine"):
        indices, dists = nearest_in(x, train, n_neighbors, metric)
    else:
        indices, dists = searched_neighbours(x, train, n_neighbors, metric, seed)
    dists = dists.astype(np.float32, order="C")
    indices[dists >= DISCONNECTION_DISTANCES.get(metric, np.inf)] = -1
    sigmas, rhos = smooth_knn_dist(dists, float(n_neighbors), local_connectivity=0.0)
    rows, cols, vals, _ = compute_membership_strengths(indices, dists, sigmas, rhos, bipartite=True)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(len(x), len(train)))
    csr = graph.tocsr()
    csr.eliminate_zeros()
    start = init_graph_transform(csr, embedding)
    n_epochs = 100 if graph.shape[0] <= 10000 else 30
    graph.data[graph.data < (graph.data.max() / float(n_epochs))] = 0.0
    graph.eliminate_zeros()
    epochs_per_sample = make_epochs_per_sample(graph.data, n_epochs)
    out = optimize_layout_euclidean(start, embedding.copy(), graph.row, graph.col, n_epochs, graph.shape[1],
                                    epochs_per_sample, a, b, rng_state, 1.0, 1.0 / 4.0, 5.0, False,
                                    move_other=False)
    return np.asarray(out, dtype=np.float32)


MODEL_FORMAT = "ganscale.umap/1"


def model_path(layer: str) -> str:
    return f"models/umap_{layer}"


def write_model(root, layer: str, embedding: np.ndarray, model: dict, datasets: list[str], counts: list[int],
                activations_crc32: list[int], seed: int) -> None:
    """The group models/umap_{layer}: float arrays and plain settings, with a CRC-32 of each array.
    It replaces whatever was there (a reducer pickled by an older ganscale included)."""
    from ganscale.schema import chunk_checksum

    arrays = {"embedding": np.ascontiguousarray(embedding, dtype=np.float32)}
    if model.get("components") is not None:
        arrays["components"], arrays["mean"] = model["components"], model["mean"]
    models = root.require_group("models")
    if model_path(layer).split("/", 1)[1] in models:
        del models[model_path(layer).split("/", 1)[1]]
    group = models.create_group(model_path(layer).split("/", 1)[1])
    for name, values in arrays.items():
        group.create_array(name, shape=values.shape, dtype=np.float32,
                           chunks=tuple(max(1, min(n, 1 << 20)) for n in values.shape))[...] = values
    group.attrs.update({
        "format": MODEL_FORMAT, "n_neighbors": model["n_neighbors"], "metric": model["metric"],
        "min_dist": model["min_dist"], "a": model["a"], "b": model["b"], "seed": int(seed),
        "transform_seed": TRANSFORM_SEED, "datasets": list(datasets), "samples": [int(c) for c in counts],
        "activations_crc32": [int(c) for c in activations_crc32],
        "crc32": {name: chunk_checksum(values, np.float32) for name, values in arrays.items()}})


def model_problem(root, layer: str) -> str | None:
    """Why the stored model of a layer cannot be used (None: it can), without reading anything but
    its attributes and float arrays: missing, an older ganscale's pickle, or damaged."""
    import zarr

    from ganscale.schema import chunk_checksum

    path = model_path(layer)
    try:
        node = root[path]
    except KeyError:
        return f"{path} is missing"
    if not isinstance(node, zarr.Group):
        return f"{path} is an older ganscale's pickled reducer, which is never unpickled"
    attrs = node.attrs.asdict()
    if attrs.get("format") != MODEL_FORMAT:
        return f"{path} has format {attrs.get('format')!r}, not {MODEL_FORMAT!r}"
    crcs = attrs.get("crc32") or {}
    if "embedding" not in crcs or not isinstance(attrs.get("datasets"), list):
        return f"{path} lacks its checksums or datasets"
    for name, crc in crcs.items():
        if name not in ("embedding", "components", "mean") or name not in node:
            return f"{path}/{name} is missing"
        array = node[name]
        if not isinstance(array, zarr.Array) or array.dtype != np.float32:
            return f"{path}/{name} is not a float32 array"
        if chunk_checksum(array[...], np.float32) != crc:
            return f"{path}/{name} fails its checksum"
    if ("components" in crcs) != ("mean" in crcs):
        return f"{path} has half a PCA"
    return None


NAME, ITEM, READS = "embed", "layer", ("sample",)


def items(study: Study) -> list[str]:
    return list(study.layers)


def settings(study: Study, layer: str) -> dict:
    """What a layer's layout depends on besides the samples (stage.inputs adds every dataset's
    sample fingerprint)."""
    return {"layer": layer, "datasets": list(study.datasets), "params": params_for(study, layer).model_dump(),
            "pca": study.embed.pca, "seed": study.seed}


def load_layer(root, datasets: list[str], layer: str) -> tuple[np.ndarray, list[int]]:
    parts = [schema.read_rows(root[schema.dataset_path(d)], f"layers/{layer}/activations") for d in datasets]
    return np.concatenate(parts), [len(p) for p in parts]


def _write_layout(root, dataset: str, layer: str, layout: np.ndarray) -> None:
    group = root[schema.dataset_path(dataset)]
    schema.write_checksummed(group, f"layers/{layer}/umap", np.asarray(layout, dtype=np.float32),
                             group.attrs["chunk_size"], ("sample", "xy"))


def embed_layer(study: Study, layer: str, backend: str) -> dict:
    """Fit one layer on every dataset and write the layouts back (runs as a Ray task)."""
    from ganscale.schema import chunk_checksum

    t0 = time.time()
    root = schema.open_store(study.store, study.storage_options)
    names = list(study.datasets)
    x, counts = load_layer(root, names, layer)
    if not np.isfinite(x).all():
        raise GanscaleError(f"embed: layer {layer} has non-finite activations in the store")
    status(f"embed {layer}: fitting {len(x):,} x {x.shape[1]} with {backend}")
    raw, model, knn = fit_umap(x, params_for(study, layer), backend, study.seed, study.embed.pca)
    status(f"embed {layer}: fitted in {time.time() - t0:.1f} s")
    layout, (low, high) = normalise(raw)
    offsets = np.cumsum([0] + counts)
    for name, start, stop in zip(names, offsets[:-1], offsets[1:]):
        _write_layout(root, name, layer, layout[start:stop])
    write_model(root, layer, raw, model, names, counts,
                [chunk_checksum(x[start:stop], np.float32) for start, stop in zip(offsets[:-1], offsets[1:])],
                study.seed)
    return {"layer": layer, "backend": backend, "samples": int(len(x)), "seconds": round(time.time() - t0, 2),
            "bounds": [low.tolist(), high.tolist()], "knn": knn}


def transform_layer(study: Study, layer: str, datasets: list[str], bounds) -> dict:
    """Map new datasets into an existing layout (no refit) from the stored model group: the fitted
    raw layout, the PCA arrays and the settings, with the training activations read again from the
    store (transform_points). Nothing read is unpickled or executed."""
    from ganscale.schema import chunk_checksum

    t0 = time.time()
    root = schema.open_store(study.store, study.storage_options)
    path = model_path(layer)
    problem = model_problem(root, layer)
    if problem:  # run() checked it; changed since
        raise GanscaleError(f"embed: {problem}; rerun embed to refit the layer")
    group = root[path]
    attrs = group.attrs.asdict()
    components = group["components"][...] if "components" in group else None
    mean = group["mean"][...] if "mean" in group else None
    parts = []
    for name, count, crc in zip(attrs["datasets"], attrs["samples"], attrs["activations_crc32"]):
        values = schema.read_rows(root[schema.dataset_path(name)], f"layers/{layer}/activations")
        if len(values) != count or chunk_checksum(values, np.float32) != crc:
            raise GanscaleError(f"embed: the activations of {schema.layer_path(name, layer)} changed since "
                                f"{path} was fitted; rerun embed to refit the layer")
        parts.append(values)
    train = project(np.concatenate(parts), components, mean)
    embedding = group["embedding"][...]
    if len(embedding) != len(train):
        raise GanscaleError(f"embed: {path}/embedding has {len(embedding)} rows for {len(train)} fitted samples")
    low, high = (np.asarray(b) for b in bounds)
    for name in datasets:
        x = project(schema.read_rows(root[schema.dataset_path(name)], f"layers/{layer}/activations"), components, mean)
        raw = transform_points(train, embedding, x, n_neighbors=int(attrs["n_neighbors"]), metric=attrs["metric"],
                               a=float(attrs["a"]), b=float(attrs["b"]),
                               seed=int(attrs.get("transform_seed", TRANSFORM_SEED)))
        _write_layout(root, name, layer, apply_bounds(raw, low, high))
    return {"seconds": round(time.time() - t0, 2), "transformed": datasets}


def choose_backend(study: Study, cluster_gpus: int) -> str:
    wanted = study.embed.backend
    if wanted == "cuml" and not cluster_gpus:
        raise GanscaleError("embed.backend: 'cuml' needs a GPU in the Ray cluster")
    if wanted == "auto":
        return "cuml" if cluster_gpus else "umap-learn"
    return wanted


@contextlib.contextmanager
def workers(study: Study, root, todo: list[str], address: str | None = None):
    """Every layer to do starts at once, as a Ray task (a GPU each with cuML, a CPU each with
    umap-learn): a fit, or, when only new datasets came and embed.new_datasets is 'transform', their
    transform into the layer's existing layout. Yields {layer: (kind, ObjectRef)}."""
    import ray

    init_ray(address)
    backend = choose_backend(study, int(ray.cluster_resources().get("GPU", 0)))
    fits, transforms = [], {}
    for layer in todo:
        new = transform_instead(study, root, layer)
        if new:
            transforms[layer] = new
        else:
            fits.append(layer)
    options = {"num_gpus": 1} if backend == "cuml" else {"num_cpus": 1}
    if backend == "cuml" and fits and not ray.get(ray.remote(num_gpus=1)(cuml_available).remote()):
        if study.embed.backend == "cuml":
            raise GanscaleError("embed.backend: cuML does not import on the cluster's GPU nodes")
        backend, options = "umap-learn", {"num_cpus": 1}  # the CPU fallback
    started = Started(backend, {layer: ray.remote(**options)(embed_layer).remote(study, layer, backend) for layer in fits},
                      {layer: ray.remote(num_cpus=1)(transform_layer).remote(
                          study, layer, new, ledger.entry(root, NAME, layer)["bounds"])
                       for layer, new in transforms.items()}, transforms)
    try:
        yield started
    finally:
        for ref in [*started.fits.values(), *started.transforms.values()]:
            ray.cancel(ref)  # those not waited for: a failure elsewhere stops the run


@dataclasses.dataclass
class Started:
    """The layers' Ray tasks, started ahead by `workers`: fits and transforms (ObjectRefs by layer)."""
    backend: str
    fits: dict
    transforms: dict
    new: dict  # layer -> the datasets transformed into it
    finished: dict = dataclasses.field(default_factory=dict)  # ObjectRef -> result

    def summary(self) -> dict:
        return {"fitted": list(self.fits), "transformed": self.new, "backend": self.backend}

    def result(self, layer: str) -> dict:
        """The layer's task result, waiting on every task meanwhile: a failure in any layer stops the
        run as soon as it happens (the others are cancelled before they write)."""
        import ray

        ref = self.fits.get(layer) or self.transforms[layer]
        while ref not in self.finished:
            pending = [r for r in (*self.fits.values(), *self.transforms.values()) if r not in self.finished]
            (ready,), _ = ray.wait(pending, num_returns=1)
            self.finished[ready] = ray.get(ready)
        return self.finished[ref]


def transform_instead(study: Study, root, layer: str) -> list[str]:
    """The new datasets to transform into the layer's fitted layout instead of refitting it: only
    datasets were added, with the same UMAP settings and unchanged samples of those fitted, and a
    sound stored model (embed.new_datasets: transform). Empty: refit."""
    previous = ledger.entry(root, NAME, layer)
    if study.embed.new_datasets != "transform" or previous is None:
        return []
    params = ledger.jsonable(settings(study, layer))["params"]
    new = [n for n in study.datasets if f"sample/{n}" not in previous["inputs"]]
    # upstream items are complete when a stage runs: their recorded fingerprints are the current ones
    changed = [k for k, v in previous["inputs"].items()
               if k.startswith("sample/") and (ledger.entry(root, "sample", k[7:]) or {}).get("fingerprint") != v]
    if not new or changed or previous["inputs"]["params"] != params:
        return []
    problem = model_problem(root, layer)
    if problem is not None:
        log.warning("embed %s: refitting instead of transforming: %s", layer, problem)
        status(f"embed {layer}: refitting, not transforming: {problem}")
        return []
    return new


def run_item(study: Study, root, layer: str, started: Started) -> dict:
    if layer in started.transforms:
        result = started.result(layer)
        previous = ledger.entry(root, NAME, layer)
        log.info("embed %s: transformed %s into the existing layout", layer, ", ".join(result["transformed"]))
        return {**{k: previous[k] for k in ("backend", "samples", "bounds", "knn") if k in previous},
                "seconds": previous["seconds"] + result["seconds"],
                "transformed": sorted(set(previous.get("transformed", [])) | set(result["transformed"]))}
    result = started.result(layer)
    log.info("embed %s: %d samples with %s in %.1f s", layer, result["samples"], result["backend"], result["seconds"])
    return {k: result[k] for k in ("backend", "samples", "bounds", "knn", "seconds")}
