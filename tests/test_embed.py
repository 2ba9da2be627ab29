"""Embed: joint UMAP per layer with real umap-learn, normalisation, reruns and new datasets."""

import numpy as np
import pytest
import umap

from ganscale import embed, ledger, schema
from ganscale.pipeline import STAGES, run_stage
from ganscale.study import parse_study


def blob_store(tmp_path, sizes: dict[str, int], new_datasets="refit", seed=0):
    """A sampled-looking store: per dataset, 16-d activations in two clusters."""
    rng = np.random.default_rng(seed)
    study = parse_study({
        "name": "e", "store": str(tmp_path / "e.zarr"), "probe": {"name": "toy_probe"}, "layers": ["block1"],
        "datasets": {n: {"kind": "toyworld", "samples": s} for n, s in sizes.items()}, "seed": 3,
        "embed": {"layers": {"block1": {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean"}},
                  "new_datasets": new_datasets},
        "sample": {"chunk_size": 50, "batch_size": 50}})
    root = schema.open_store(study.store)
    for i, (name, n) in enumerate(sizes.items()):
        layout = schema.DatasetLayout(n, 50, 4, {"block1": 16})
        group = schema.create_dataset_group(root, schema.dataset_path(name), layout, {"fingerprint": f"fp-{name}", "chunk_size": 50})
        centres = np.where(rng.random(n) < 0.5, 0.0, 4.0)[:, None] + i
        group["layers/block1/activations"][:] = (centres + rng.normal(size=(n, 16))).astype(np.float32)
        schema.seal_chunks(group, layout)
        record_sampled(study, root, name)
    return study, root


def record_sampled(study, root, name):
    """The ledger's record of a dataset sampled for `study` (the guard of every later stage reads it)."""
    ledger.record(root, "sample", name, STAGES.inputs(study, None, "sample", name), 0.0)


def test_normalise_clips_to_percentiles_with_a_margin():
    rng = np.random.default_rng(0)
    layout = rng.normal(size=(1000, 2))
    layout[0] = [100, -100]  # an outlier is clipped, not allowed to squash the rest
    out, (low, high) = embed.normalise(layout)
    assert out.min() >= 0 and out.max() <= 1 and out.dtype == np.float32
    p1, p99 = np.percentile(layout, [1, 99], axis=0)
    np.testing.assert_allclose(low, p1)
    np.testing.assert_allclose(high, p99)
    assert np.allclose(out[0], [1 - 1 / 12, 1 / 12], atol=1e-6)  # the outlier sits at the clipped edge


def test_published_defaults_and_overrides():
    study = parse_study({"name": "x", "store": "/tmp/x", "probe": {"name": "inception_v1", "weights": "/w"},
                         "layers": ["mixed3a", "mixed4c"], "datasets": {"a": {"kind": "toyworld", "samples": 1}},
                         "embed": {"layers": {"mixed4c": {"n_neighbors": 30}}}})
    assert embed.params_for(study, "mixed3a").model_dump() == {"n_neighbors": 200, "min_dist": 0.05,
                                                               "metric": "euclidean"}
    assert embed.params_for(study, "mixed4c").n_neighbors == 30
    assert embed.choose_backend(study, cluster_gpus=0) == "umap-learn"
    assert embed.choose_backend(study, cluster_gpus=2) == "cuml"


def test_joint_fit_matches_umap_learn_and_reruns_skip(ray_local, tmp_path):
    study, root = blob_store(tmp_path, {"a": 120, "b": 80})
    result = run_stage(study, "embed")
    assert result == {"done": ["block1"], "fitted": ["block1"], "transformed": {}, "skipped": [], "backend": "umap-learn"}
    a = root["datasets/a/layers/block1/umap"][:]
    b = root["datasets/b/layers/block1/umap"][:]
    assert a.shape == (120, 2) and b.shape == (80, 2) and 0 <= min(a.min(), b.min()) and max(a.max(), b.max()) <= 1
    # the same fit as calling umap-learn directly on the concatenated activations
    x = np.concatenate([root[f"datasets/{d}/layers/block1/activations"][:] for d in "ab"])
    direct = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="euclidean", random_state=3, n_jobs=1).fit_transform(x)
    np.testing.assert_allclose(np.concatenate([a, b]), embed.normalise(direct)[0], atol=1e-5)
    assert run_stage(study, "embed")["skipped"] == ["block1"]


def with_new_dataset(study, tmp_path, name="c", n=60):
    """The store of `study` copied, with dataset `name` added (a's first n activations), and the study that reads it."""
    import shutil

    sizes = {d: spec.samples for d, spec in study.datasets.items()}
    bigger, _ = blob_store(tmp_path, {**sizes, name: n}, new_datasets="transform")
    shutil.rmtree(bigger.store)
    shutil.copytree(study.store, bigger.store)
    root = schema.open_store(bigger.store)
    layout = schema.DatasetLayout(n, 50, 4, {"block1": 16})
    group = schema.create_dataset_group(root, schema.dataset_path(name), layout, {"fingerprint": f"fp-{name}", "chunk_size": 50})
    group["layers/block1/activations"][:] = root["datasets/a/layers/block1/activations"][:n]
    schema.seal_chunks(group, layout)
    record_sampled(bigger, root, name)
    return bigger, root


def test_a_new_dataset_is_transformed_into_the_existing_layout(ray_local, tmp_path):
    study, root = blob_store(tmp_path, {"a": 120, "b": 80}, new_datasets="transform")
    run_stage(study, "embed")
    before = root["datasets/a/layers/block1/umap"][:]
    model = root["models/umap_block1"]
    assert dict(model.attrs)["datasets"] == ["a", "b"] and dict(model.attrs)["samples"] == [120, 80]
    assert sorted(model.array_keys()) == ["embedding"]  # no PCA: the raw layout alone, float32
    bigger, root = with_new_dataset(study, tmp_path / "x")
    result = run_stage(bigger, "embed")
    assert result["transformed"] == {"block1": ["c"]} and result["fitted"] == []
    np.testing.assert_array_equal(root["datasets/a/layers/block1/umap"][:], before)  # layout kept
    c = root["datasets/c/layers/block1/umap"][:]
    # c copies a's first 60 activations, so it lands where they are
    assert np.median(np.linalg.norm(c - before[:60], axis=1)) < 0.1
    assert run_stage(bigger, "embed")["skipped"] == ["block1"]


class Marker:
    """Unpickling this creates the file `path`: what a hostile store writer could plant."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(root, path: str, marker) -> None:
    import pickle

    blob = np.frombuffer(pickle.dumps(Marker(marker)), dtype=np.uint8)
    parent, name = path.rsplit("/", 1)
    group = root.require_group(parent)
    if name in group:
        del group[name]
    group.create_array(name, shape=blob.shape, dtype=np.uint8)[:] = blob


def uint8_arrays(group, prefix: str):
    for name, node in group.members():
        if hasattr(node, "members"):
            yield from uint8_arrays(node, f"{prefix}/{name}")
        elif node.dtype == np.uint8:
            yield f"{prefix}/{name}"


def test_a_planted_pickle_is_never_unpickled(ray_local, tmp_path, caplog):
    """A pickle where an older ganscale kept the reducer (and in every uint8 array under models/) is
    never read: the layer is refitted, with a warning naming the path, and the marker never appears."""
    import pickle

    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Marker(marker)))  # the payload works...
    assert marker.exists()
    marker.unlink()  # ...and is gone before the run
    study, root = blob_store(tmp_path, {"a": 120, "b": 80}, new_datasets="transform")
    run_stage(study, "embed")
    bigger, root = with_new_dataset(study, tmp_path / "x")
    plant(root, "models/umap_block1", marker)  # the old format: the model's group replaced by a uint8 array
    plant(root, "models/umap_block2", marker)
    planted = sorted(uint8_arrays(root["models"], "models"))
    assert planted == ["models/umap_block1", "models/umap_block2"]
    with caplog.at_level("WARNING", logger="ganscale.embed"):
        result = run_stage(bigger, "embed")
    assert not marker.exists()
    assert result["fitted"] == ["block1"] and result["transformed"] == {}
    assert "models/umap_block1 is an older ganscale's pickled reducer" in caplog.text
    assert dict(root["models/umap_block1"].attrs)["datasets"] == ["a", "b", "c"]  # the refit's model, a group again
    # a damaged model is refitted too: one float changed in the stored layout
    even_bigger, root = with_new_dataset(bigger, tmp_path / "y", name="d", n=30)
    root["models/umap_block1/embedding"][0, 0] += 1.0
    caplog.clear()
    with caplog.at_level("WARNING", logger="ganscale.embed"):
        assert run_stage(even_bigger, "embed")["fitted"] == ["block1"]
    assert "models/umap_block1/embedding fails its checksum" in caplog.text
    assert not marker.exists()


def test_unsampled_data_is_refused(ray_local, tmp_path):
    study, root = blob_store(tmp_path, {"a": 100})
    root["datasets/a/done"][1] = 0
    from ganscale.errors import GanscaleError

    with pytest.raises(GanscaleError, match="embed: sample of dataset a is not complete .missing: 1 of 2 chunks "
                                            "not marked done"):
        run_stage(study, "embed")


def test_pca_before_umap(ray_local, tmp_path):
    study, root = blob_store(tmp_path, {"a": 100, "b": 100})
    study = study.model_copy(update={"embed": study.embed.model_copy(update={"pca": 4})})
    assert run_stage(study, "embed")["fitted"] == ["block1"]
    model = root["models/umap_block1"]
    assert model["components"].shape == (4, 16) and model["mean"].shape == (16,)
    layout = root["datasets/a/layers/block1/umap"][:]
    assert layout.shape == (100, 2) and np.isfinite(layout).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_neighbours_match_a_brute_force_search(metric):
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(0).normal(size=(700, 12)).astype(np.float32)
    index, distance = embed.exact_neighbours(x, 10, metric)
    want_distance, want_index = NearestNeighbors(n_neighbors=10, metric=metric, algorithm="brute").fit(x).kneighbors(x)
    assert (index[:, 0] == np.arange(700)).all()  # every point is its own nearest neighbour, as umap-learn expects
    assert (index == want_index).mean() > 0.999  # (ties may swap)
    np.testing.assert_allclose(distance, want_distance, atol=1e-5)


def test_transform_points_is_within_umap_learns_own_transform_noise():
    """transform_points against umap-learn's UMAP.transform on the same fit (both find neighbours
    exactly at this size), in the normalised layout: the README's tolerance (embed.new_datasets)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32)) * 3

    def clustered(n, seed):
        r = np.random.default_rng(seed)
        return (centres[r.integers(0, 8, n)] + r.normal(size=(n, 32))).astype(np.float32)

    x, new = clustered(1500, 1), clustered(300, 2)
    reducer = umap.UMAP(n_neighbors=15, min_dist=0.05, metric="cosine", random_state=3, n_jobs=1).fit(x)
    theirs = reducer.transform(new)
    ours = embed.transform_points(x, reducer.embedding_, new, n_neighbors=15, metric="cosine",
                                  a=reducer._a, b=reducer._b)
    reducer.transform_seed = 7  # umap-learn's own run-to-run noise: its transform with another seed
    noise = reducer.transform(new)
    _, (low, high) = embed.normalise(reducer.embedding_)

    def differences(u, v):
        u, v = embed.apply_bounds(u, low, high), embed.apply_bounds(v, low, high)
        distance = np.linalg.norm(u - v, axis=1)
        same_cell = (np.minimum((u * 20).astype(int), 19) == np.minimum((v * 20).astype(int), 19)).all(1).mean()
        return np.median(distance), np.percentile(distance, 95), same_cell

    (median, p95, same_cell), (noise_median, noise_p95, noise_same_cell) = differences(theirs, ours), differences(theirs, noise)
    print("transform_points vs umap-learn:", median, p95, same_cell, "umap-learn seed 42 vs 7:", noise_median, noise_p95, noise_same_cell)
    assert median <= 0.01 and p95 <= 0.03 and same_cell >= 0.75  # README, embed.new_datasets
    assert median <= noise_median and p95 <= 1.5 * noise_p95 and same_cell >= noise_same_cell - 0.05


def searched_transform(*args, **kwargs):
    """transform_points past EXACT_PAIRS, in a Ray worker as the stage runs it (in the test process,
    where Ray has replaced builtins.print, numba cannot compile pynndescent's functions)."""
    saved, embed.EXACT_PAIRS = embed.EXACT_PAIRS, 0
    try:
        return embed.transform_points(*args, **kwargs)
    finally:
        embed.EXACT_PAIRS = saved  # the worker serves later tasks


def test_transform_points_beyond_exact_pairs_searches_like_umap_learn(ray_local):
    """Past EXACT_PAIRS (and for metrics other than euclidean and cosine) the neighbours come from an
    NNDescent index built on the fitted points, as umap-learn's own search: the same places within
    the tolerance of test_transform_points_is_within_umap_learns_own_transform_noise."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(6, 16))[rng.integers(0, 6, 800)] * 3 + rng.normal(size=(800, 16))).astype(np.float32)
    reducer = umap.UMAP(n_neighbors=10, min_dist=0.05, metric="euclidean", random_state=3, n_jobs=1).fit(x)
    new = x[:200] + 0.05 * rng.normal(size=(200, 16)).astype(np.float32)
    settings = {"n_neighbors": 10, "metric": "euclidean", "a": reducer._a, "b": reducer._b}
    exact = embed.transform_points(x, reducer.embedding_, new, **settings)
    searched = ray_local.get(ray_local.remote(searched_transform).remote(x, reducer.embedding_, new, **settings))
    _, (low, high) = embed.normalise(reducer.embedding_)
    distance = np.linalg.norm(embed.apply_bounds(exact, low, high) - embed.apply_bounds(searched, low, high), axis=1)
    assert np.median(distance) <= 0.01 and np.percentile(distance, 95) <= 0.03
