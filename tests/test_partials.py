"""Every mergeable partial result has the Partial shape: it merges, and it goes to plain named arrays
and back without losing anything (so it can be stored, sent or compared as arrays)."""

import numpy as np
import pytest
import torch

from ganscale.atlas import partial_stats
from ganscale.dissect.stats import Contingency, UnitHistogram, UnitRange
from ganscale.metrics.features import FeatureMoments
from ganscale.metrics.stage import DatasetPartial
from ganscale.partials import Partial, merge_all, tree_reduce


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _pairs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(30, 6))
    yield FeatureMoments.of(x), FeatureMoments.of(y)
    cells = [partial_stats(rng.random((n, 2)), rng.normal(size=(n, 3)).astype(np.float32),
                           rng.normal(size=(n, 5)).astype(np.float32), first, 4, 3)
             for n, first in ((50, 0), (20, 50))]
    yield cells[0], cells[1]
    maps = [torch.randn(3, 4, 5, 5), torch.randn(2, 4, 5, 5)]
    yield UnitRange.of(maps[0], np.arange(3), 2), UnitRange.of(maps[1], np.arange(3, 5), 2)
    low, high = np.full(4, -3.0), np.full(4, 3.0)
    yield UnitHistogram.of(maps[0], low, high, 16), UnitHistogram.of(maps[1], low, high, 16)
    segs = [torch.randint(0, 3, (3, 5, 5)), torch.randint(0, 3, (2, 5, 5))]
    thresholds = np.tile(np.linspace(-1, 1, 4), (4, 1))
    yield (Contingency.of(maps[0], segs[0], thresholds, 3), Contingency.of(maps[1], segs[1], thresholds, 3))
    splits = 2
    parts = []
    for m in (FeatureMoments.of(x), FeatureMoments.of(y)):
        parts.append(DatasetPartial({"pooled:a": m, "fid_pool3": m}, rng.random((splits, 5)), rng.random(splits),
                                    np.array([3.0, 4.0]), 1.5, 2.5, rng.integers(0, 9, (4, 25)).astype(np.uint64)))
    yield parts[0], parts[1]


@pytest.mark.parametrize("a, b", list(_pairs()), ids=lambda p: type(p).__name__)
def test_partials_merge_and_round_trip_through_arrays(a, b):
    assert isinstance(a, Partial)
    back = type(a).from_arrays(a.to_arrays())
    assert type(back) is type(a) and _equal(back.to_arrays(), a.to_arrays())
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in a.to_arrays().values())
    assert _equal(back.merge(b).to_arrays(), a.merge(b).to_arrays())


def test_tree_reduce_equals_the_plain_loop_when_fan_in_is_none():
    import dask

    rng = np.random.default_rng(1)
    parts = [FeatureMoments.of(rng.normal(size=(7, 3))) for _ in range(20)]
    loop = merge_all(parts)
    assert _equal(dask.compute(tree_reduce(parts, fan_in=None), scheduler="sync")[0].to_arrays(), loop.to_arrays())
    tree = dask.compute(tree_reduce(parts, fan_in=3), scheduler="sync")[0]
    assert tree.n == loop.n and np.allclose(tree.outer, loop.outer)
