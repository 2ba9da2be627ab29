"""Atlas reductions: chunked Dask partials against the single-array computation and scipy."""

import numpy as np
import pytest
import zarr
from scipy.stats import entropy

from ganscale import atlas, schema
from ganscale.study import parse_study


def synthetic_store(tmp_path, sizes=(500, 300), channels=6, classes=4, chunk=64, seed=0):
    """A store with only what the atlas reads: per dataset umap, activations and logits."""
    rng = np.random.default_rng(seed)
    root = schema.open_store(str(tmp_path / "s.zarr"))
    data = {}
    for i, n in enumerate(sizes):
        name = f"d{i}"
        xy = np.clip(rng.normal(0.3 + 0.3 * i, 0.15, (n, 2)), 0, 1).astype(np.float32)
        xy[:3] = [[0, 0], [1, 1], [0.999999, 0.5]]  # the edges land in the border cells
        acts = rng.random((n, channels)).astype(np.float32)
        logits = rng.normal(size=(n, classes)).astype(np.float32)
        group = root.create_group(schema.dataset_path(name))
        group.create_array("logits", data=logits, chunks=(chunk, classes))
        lg = group.create_group("layers/L")
        lg.create_array("umap", data=xy, chunks=(chunk, 2))
        lg.create_array("activations", data=acts, chunks=(chunk, channels))
        data[name] = (xy, acts, logits)
    study = parse_study({"name": "s", "store": str(tmp_path / "s.zarr"), "probe": {"name": "toy_probe"},
                         "layers": ["block1"], "seed": 0,
                         "datasets": {f"d{i}": {"kind": "toyworld", "samples": n} for i, n in enumerate(sizes)},
                         "atlas": {"grids": [5, 20], "examples": 3}})
    return study, root, data


def reference(xy, acts, logits, grid, n_examples):
    """The plain single-array computation."""
    ix = np.minimum((xy[:, 0] * grid).astype(int), grid - 1)
    iy = np.minimum((xy[:, 1] * grid).astype(int), grid - 1)
    cells = iy * grid + ix
    counts = np.array([(cells == c).sum() for c in range(grid * grid)])
    sums = np.stack([acts[cells == c].astype(np.float64).sum(0) for c in range(grid * grid)])
    examples = np.full((grid * grid, n_examples), -1)
    for c in range(grid * grid):
        ids = np.flatnonzero(cells == c)[:n_examples]
        examples[c, :len(ids)] = ids
    labels = np.stack([np.bincount(logits[cells == c].argmax(1), minlength=logits.shape[1])
                       for c in range(grid * grid)])
    return counts, sums, examples, labels


def test_chunked_dask_results_equal_the_single_array_computation(tmp_path):
    study, root, data = synthetic_store(tmp_path)
    results = atlas.compute_layer(study, root, "L")
    for grid in (5, 20):
        r = results[grid]
        all_sums = 0
        all_counts = 0
        for d, (xy, acts, logits) in enumerate(data.values()):
            counts, sums, examples, labels = reference(xy, acts, logits, grid, 3)
            np.testing.assert_array_equal(r["counts"][d].ravel(), counts)
            assert r["counts"][d].sum() == len(xy)  # counts sum to the sample counts
            np.testing.assert_array_equal(r["examples"][d].reshape(grid * grid, -1), examples)
            top, top_counts = atlas.top_labels(labels, 3)
            np.testing.assert_array_equal(r["label_counts"][d].reshape(grid * grid, -1), top_counts)
            all_sums, all_counts = all_sums + sums, all_counts + counts
        with np.errstate(invalid="ignore"):
            mean = all_sums / all_counts[:, None]
        np.testing.assert_allclose(r["mean"].reshape(grid * grid, -1), mean, rtol=1e-6, equal_nan=True)
        assert np.isnan(r["mean"].reshape(grid * grid, -1)[all_counts == 0]).all()


def test_kl_is_zero_on_itself_and_equals_scipy():
    rng = np.random.default_rng(1)
    p, q = rng.integers(0, 20, 400), rng.integers(0, 20, 400)
    q[:50] = 0  # empty cells
    assert atlas.kl_terms(p, p, 0.5).sum() == 0
    expected = entropy((p + 0.5) / (p + 0.5).sum(), (q + 0.5) / (q + 0.5).sum())
    assert atlas.kl_terms(p, q, 0.5).sum() == pytest.approx(expected, rel=1e-12)


def test_kl_matrix_in_the_results(tmp_path):
    study, root, data = synthetic_store(tmp_path)
    r = atlas.compute_layer(study, root, "L")[20]
    assert np.allclose(np.diag(r["kl"]), 0) and (r["kl"][~np.eye(2, dtype=bool)] > 0).all()
    np.testing.assert_allclose(r["kl_cells"].sum(axis=(2, 3)), r["kl"], rtol=1e-5)
    c = r["counts"]
    assert r["kl"][0, 1] == pytest.approx(entropy((c[0].ravel() + .5) / (c[0].sum() + .5 * 400),
                                                  (c[1].ravel() + .5) / (c[1].sum() + .5 * 400)))


def test_partials_merge_in_any_order():
    rng = np.random.default_rng(2)
    xy, acts, logits = rng.random((200, 2)), rng.random((200, 3)), rng.normal(size=(200, 4))
    whole = atlas.partial_stats(xy, acts, logits, 0, 10, 4)
    a = atlas.partial_stats(xy[:70], acts[:70], logits[:70], 0, 10, 4)
    b = atlas.partial_stats(xy[70:], acts[70:], logits[70:], 70, 10, 4)
    for merged in (a.merge(b), b.merge(a)):
        np.testing.assert_array_equal(merged.counts, whole.counts)
        np.testing.assert_array_equal(merged.examples, whole.examples)
        np.testing.assert_array_equal(merged.labels, whole.labels)
        np.testing.assert_allclose(merged.sums, whole.sums)
