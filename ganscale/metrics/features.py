"""Metrics over feature vectors: Fréchet distance, KID, Inception Score, precision/recall and
density/coverage, nearest neighbours. Pure functions of arrays [N, D] (numpy, or torch tensors,
which are moved to the CPU); float64 inside; python floats or numpy arrays out.

`FeatureMoments` are the mergeable partial results behind the Fréchet distance: workers compute
them per chunk, Dask adds them up, and the distance from the merged moments equals the distance
computed on the whole arrays.

Conventions, and where they differ from the reference libraries:

* Fréchet distance: as torch-fidelity and torchmetrics (float64, trace of the matrix square root
  from the eigenvalues of S1 @ S2). Covariances are unbiased (ddof=1) everywhere.
* KID: as torch-fidelity's ``kid_features_to_metric``, subsets drawn with
  ``np.random.RandomState(seed).choice(n, size, replace=False)``, first set then second, so the
  same seed gives torch-fidelity's exact subsets (its default seed is 2020, ours 0); std with
  ddof=0 (torch-fidelity and torchmetrics alike). Unlike both, a subset size larger than a set is
  capped at the smaller set's size instead of refused.
* Inception Score: splits are np.array_split's contiguous blocks of the rows in the given order
  (the metrics stage merges per-split partial sums on these blocks); torch-fidelity shuffles first
  (seed 2020) and cuts at i*N//splits, torchmetrics shuffles with torch.randperm and cuts with
  torch.chunk and reports std with ddof=1. With N divisible by `splits` and the rows in the same
  order all three agree on the mean; ours and torch-fidelity's also on the std (ddof=0).
* PRDC: exactly the `prdc` package's definitions (Naeem et al. 2020).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ganscale.partials import ArrayFields

# Pairwise-distance blocks hold about this many float64 entries (128 MiB) at a time.
BLOCK_ELEMENTS = 1 << 24


def _as_array(x, name: str = "features", ndim: int | None = 2, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (bfloat16 has no numpy dtype)
        x = x.detach().cpu()
        x = (x.double() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
    x = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {x.shape}")
    return x


def _rows(x, name: str = "features") -> np.ndarray:
    """A 2-d array in its own floating dtype (float32 stays float32: converted block by block later)."""
    x = _as_array(x, name, dtype=None)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def _same_dims(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{what}: feature dimensions differ ({a.shape[-1]} and {b.shape[-1]})")


# --- Fréchet distance ------------------------------------------------------------------------

@dataclasses.dataclass
class FeatureMoments(ArrayFields):
    """Count `n`, `sum` [D] and uncentred second moment `outer` = X^T X [D, D] of a set of feature
    rows, in float64. Adding the moments of chunks gives the moments of their union, in any order
    (`a.merge(b)`, `a + b`, or `sum(parts)`), so they reduce across workers."""
    n: int
    sum: np.ndarray  # [D]
    outer: np.ndarray  # [D, D]

    @classmethod
    def of(cls, features, block: int = 8192) -> "FeatureMoments":
        """Moments of the rows of `features` [N, D]. float32 input is converted to float64 `block`
        rows at a time, so 50k x 2048 float32 features need no float64 copy of the whole array."""
        x = _rows(features)
        d = x.shape[1]
        total, outer = np.zeros(d), np.zeros((d, d))
        for start in range(0, len(x), block):
            part = np.ascontiguousarray(x[start:start + block], dtype=np.float64)
            total += part.sum(0)
            outer += part.T @ part  # numpy uses the symmetric rank-k update (syrk) for A.T @ A
        return cls(len(x), total, outer)

    @classmethod
    def zeros(cls, dims: int) -> "FeatureMoments":
        """The moments of no rows: the neutral element of `merge`."""
        return cls(0, np.zeros(dims), np.zeros((dims, dims)))

    @property
    def dims(self) -> int:
        return int(self.sum.shape[0])

    def merge(self, other: "FeatureMoments") -> "FeatureMoments":
        if self.dims != other.dims:
            raise ValueError(f"FeatureMoments.merge: dimensions differ ({self.dims} and {other.dims})")
        return FeatureMoments(self.n + other.n, self.sum + other.sum, self.outer + other.outer)

    def __add__(self, other: "FeatureMoments") -> "FeatureMoments":
        if not isinstance(other, FeatureMoments):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other):
        if isinstance(other, (int, float)) and other == 0:  # sum(parts) starts from 0
            return self
        return NotImplemented

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise ValueError("FeatureMoments.mean: no rows")
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (ddof=1), as np.cov(x, rowvar=False)."""
        if self.n < 2:
            raise ValueError(f"FeatureMoments.cov: needs at least 2 rows, has {self.n}")
        mu = self.mean
        return (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), in float64.

    tr(sqrt(S1 S2)) is the sum of the square roots of the eigenvalues of S1 @ S2 (as torch-fidelity
    and torchmetrics compute it: exact for covariance matrices, whose product has real non-negative
    eigenvalues, and faster than scipy.linalg.sqrtm). Round-off leaves tiny negative or complex
    eigenvalues when the covariances are (near) singular; their real parts are clipped at 0, which
    is what the references' complex square root followed by `.real` amounts to."""
    mu1, mu2 = _as_array(mu1, "mu1", 1), _as_array(mu2, "mu2", 1)
    s1, s2 = _as_array(sigma1, "sigma1", 2), _as_array(sigma2, "sigma2", 2)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance_from_stats: shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {s2.shape}")
    eigenvalues = np.linalg.eigvals(s1 @ s2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def frechet_distance_from_moments(a: FeatureMoments, b: FeatureMoments) -> float:
    """Fréchet distance between the Gaussians of two (merged) `FeatureMoments`."""
    if a.dims != b.dims:
        raise ValueError(f"frechet_distance_from_moments: dimensions differ ({a.dims} and {b.dims})")
    return frechet_distance_from_stats(a.mean, a.cov, b.mean, b.cov)


def frechet_distance(feats_a, feats_b) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets [N, D] (FID on Inception
    pool3 features). Fewer rows than dimensions give a rank-deficient covariance: use more samples."""
    a, b = FeatureMoments.of(feats_a), FeatureMoments.of(feats_b)
    return frechet_distance_from_moments(a, b)


# --- KID ----------------------------------------------------------------------------------------

def polynomial_mmd(a, b, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 estimate between rows of `a` [m, D] and `b` [n, D] with the kernel
    k(x, y) = (gamma x.y + coef0)^degree, gamma = 1/D by default: the mean of k over distinct pairs
    within a, plus the same within b, minus twice the mean over all pairs across (for m = n this is
    torch-fidelity's and torchmetrics' estimator)."""
    a, b = _as_array(a, "a"), _as_array(b, "b")
    _same_dims(a, b, "polynomial_mmd")
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError("polynomial_mmd: each set needs at least 2 rows")
    gamma = 1.0 / a.shape[1] if gamma is None else gamma

    def kernel_sum(x, y, same):
        base = x @ y.T
        base *= gamma
        base += coef0
        if isinstance(degree, (int, np.integer)) and 1 <= degree <= 4:  # repeated products: faster than pow
            k = base.copy()
            for _ in range(degree - 1):
                k *= base
        else:
            k = base ** degree
        return k.sum() - (np.trace(k) if same else 0.0)

    return float(kernel_sum(a, a, True) / (m * (m - 1)) + kernel_sum(b, b, True) / (n * (n - 1))
                 - 2 * kernel_sum(a, b, False) / (m * n))


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): mean and std (ddof=0) of the unbiased
    polynomial-kernel MMD^2 over `subsets` random subsets of `subset_size` rows of each set (drawn
    without replacement within a subset, as torch-fidelity draws them: RandomState(seed)), the size
    capped at the smaller set. KID can be slightly negative for sets of one distribution."""
    a, b = _as_array(feats_a, "feats_a"), _as_array(feats_b, "feats_b")
    _same_dims(a, b, "kid")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError("kid: each feature set needs at least 2 rows")
    if subsets < 1:
        raise ValueError("kid: subsets must be at least 1")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        ia = rng.choice(len(a), size, replace=False)
        ib = rng.choice(len(b), size, replace=False)
        values[i] = polynomial_mmd(a[ia], b[ib], degree, gamma, coef0)
    return float(values.mean()), float(values.std())


# --- Inception Score ----------------------------------------------------------------------------

def log_softmax(logits) -> np.ndarray:
    x = _as_array(logits, "logits")
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) from class logits [N, K] (softmax taken here):
    exp(E_x KL(p(y|x) || p(y))) on each of `splits` contiguous blocks of the rows
    (np.array_split), mean and std (ddof=0) over the blocks. 1 for uniform predictions, K for
    confident predictions spread evenly over K classes. The references shuffle the rows first:
    pass them shuffled to do the same (see the module docstring)."""
    logp = log_softmax(logits)
    if not 1 <= splits <= len(logp):
        raise ValueError(f"inception_score: splits must be between 1 and the number of rows ({len(logp)})")
    scores = []
    for block in np.array_split(logp, splits):
        p = np.exp(block)
        log_py = np.log(p.mean(0))
        scores.append(np.exp((p * (block - log_py)).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# --- nearest neighbours, precision/recall, density/coverage -------------------------------------

def _block_rows(block: int | None, columns: int) -> int:
    return max(1, block if block is not None else BLOCK_ELEMENTS // max(columns, 1))


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def pairwise_distances(x, y, y_sq: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances [len(x), len(y)] in float64 (|x|^2 + |y|^2 - 2 x.y, clipped at 0)."""
    x, y = _as_array(x, "x"), _as_array(y, "y")
    y_sq = _sq_norms(y) if y_sq is None else y_sq
    sq = _sq_norms(x)[:, None] + y_sq[None, :] - 2 * (x @ y.T)
    return np.sqrt(np.clip(sq, 0, None), out=sq)


def nearest_neighbours(queries, pool, k: int, exclude_self: bool = False, block: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Indices [Q, k] into `pool` of each query's k nearest rows (euclidean), nearest first, and
    their distances [Q, k]. Computed `block` queries at a time (default: as many as keep a block of
    distances near 128 MiB), so 50k x 50k never builds the whole matrix. `exclude_self`: the
    queries are the pool itself, and row i is not its own neighbour. Ties keep pool order."""
    q, p = _as_array(queries, "queries"), _as_array(pool, "pool")
    _same_dims(q, p, "nearest_neighbours")
    if exclude_self and len(q) != len(p):
        raise ValueError("nearest_neighbours: exclude_self needs the queries to be the pool")
    available = len(p) - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise ValueError(f"nearest_neighbours: k must be between 1 and {available}, got {k}")
    p_sq = _sq_norms(p)
    step = _block_rows(block, len(p))
    indices = np.empty((len(q), k), dtype=np.int64)
    distances = np.empty((len(q), k))
    for start in range(0, len(q), step):
        d = pairwise_distances(q[start:start + step], p, p_sq)
        if exclude_self:
            rows = np.arange(len(d))
            d[rows, start + rows] = np.inf
        if k < d.shape[1]:
            idx = np.argpartition(d, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(d.shape[1]), d.shape)
        part = np.take_along_axis(d, idx, 1)
        order = np.lexsort((idx, part), axis=1)  # by distance, then by pool index
        indices[start:start + step] = np.take_along_axis(idx, order, 1)
        distances[start:start + step] = np.take_along_axis(part, order, 1)
    return indices, distances


def kth_neighbour_radius(features, k: int, block: int | None = None) -> np.ndarray:
    """Distance of each row to its k-th nearest other row of the same set."""
    _, d = nearest_neighbours(features, features, k, exclude_self=True, block=block)
    return d[:, k - 1]


def prdc(real_feats, fake_feats, k: int = 5, block: int | None = None) -> dict[str, float]:
    """Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020)
    with k-nearest-neighbour balls, as the `prdc` package computes them (its `compute_prdc`):

    * precision: share of fake rows inside at least one real ball (radius: distance of the real
      row to its k-th nearest other real row);
    * recall: share of real rows inside at least one fake ball;
    * density: (1/k) x mean over fake rows of the number of real balls containing it;
    * coverage: share of real rows whose nearest fake row lies inside the real row's own ball.

    The papers use k=3 for precision/recall and k=5 for density/coverage: call twice for both.
    Distances are computed in blocks of real rows, never the whole [R, F] matrix at once."""
    real, fake = _as_array(real_feats, "real_feats"), _as_array(fake_feats, "fake_feats")
    _same_dims(real, fake, "prdc")
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"prdc: k must be between 1 and the smaller set's size - 1, got {k} "
                         f"({len(real)} real, {len(fake)} fake rows)")
    real_radius = kth_neighbour_radius(real, k, block)
    fake_radius = kth_neighbour_radius(fake, k, block)
    fake_sq = _sq_norms(fake)
    balls_per_fake = np.zeros(len(fake), dtype=np.int64)  # real balls that contain each fake row
    real_in_fake_ball = np.zeros(len(real), dtype=bool)
    nearest_fake = np.empty(len(real))
    step = _block_rows(block, len(fake))
    for start in range(0, len(real), step):
        d = pairwise_distances(real[start:start + step], fake, fake_sq)  # [r, F]
        balls_per_fake += (d < real_radius[start:start + step, None]).sum(0)
        real_in_fake_ball[start:start + step] = (d < fake_radius[None, :]).any(1)
        nearest_fake[start:start + step] = d.min(1)
    return {"precision": float((balls_per_fake > 0).mean()), "recall": float(real_in_fake_ball.mean()),
            "density": float(balls_per_fake.sum() / (k * len(fake))),
            "coverage": float((nearest_fake < real_radius).mean())}
