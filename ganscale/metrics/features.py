"""Metrics over feature vectors: Fréchet distance, KID, Inception Score, precision/recall and
density/coverage, nearest neighbours. Pure functions of arrays [N, D] (numpy; float64 inside).

`FeatureMoments` are the mergeable partial results behind the Fréchet distance: workers compute
them per chunk, Dask adds them up, and the distance from the merged moments equals the distance
computed on the whole arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclasses.dataclass
class FeatureMoments:
    """Count, sum and uncentred second moment X^T X of a set of feature rows (float64)."""
    n: int
    sum: np.ndarray  # [D]
    outer: np.ndarray  # [D, D]

    @classmethod
    def of(cls, features) -> "FeatureMoments":
        x = _as_array(features)
        return cls(len(x), x.sum(0), x.T @ x)

    def merge(self, other: "FeatureMoments") -> "FeatureMoments":
        return FeatureMoments(self.n + other.n, self.sum + other.sum, self.outer + other.outer)

    __add__ = merge

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (ddof=1), as np.cov."""
        mu = self.mean
        return (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), the trace of the square root taken as
    the sum of the square roots of the eigenvalues of S1 S2 in float64 (as torch-fidelity and
    torchmetrics do: exact for the PSD product, faster than scipy's sqrtm). Eigenvalues are real
    and non-negative in exact arithmetic; round-off imaginary parts and tiny negatives are dropped."""
    mu1, mu2, s1, s2 = (_as_array(v) for v in (mu1, mu2, sigma1, sigma2))
    eigenvalues = np.linalg.eigvals(s1 @ s2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def frechet_distance_from_moments(a: FeatureMoments, b: FeatureMoments) -> float:
    return frechet_distance_from_stats(a.mean, a.cov, b.mean, b.cov)


def frechet_distance(feats_a, feats_b) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (FID on Inception pool3
    features). Fewer rows than dimensions give a rank-deficient covariance: use more samples."""
    return frechet_distance_from_moments(FeatureMoments.of(feats_a), FeatureMoments.of(feats_b))


def polynomial_mmd(a: np.ndarray, b: np.ndarray, degree: int = 3, gamma: float | None = None,
                   coef0: float = 1.0) -> float:
    """Unbiased MMD^2 estimate with the kernel k(x, y) = (gamma x.y + coef0)^degree, gamma = 1/D."""
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    k_aa = (gamma * a @ a.T + coef0) ** degree
    k_bb = (gamma * b @ b.T + coef0) ** degree
    k_ab = (gamma * a @ b.T + coef0) ** degree
    m, n = len(a), len(b)
    return float((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1)) + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
                 - 2 * k_ab.mean())


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): mean and std over `subsets` random subsets
    (without replacement within a subset) of `subset_size` rows of each set, capped at the smaller set."""
    a, b = _as_array(feats_a), _as_array(feats_b)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError("kid: each feature set needs at least 2 rows")
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)],
                             degree, gamma, coef0) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def log_softmax(logits) -> np.ndarray:
    x = _as_array(logits)
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) from class logits: exp(E_x KL(p(y|x) || p(y))) on each
    of `splits` contiguous blocks of the rows (np.array_split), mean and std over the blocks.
    (torchmetrics and torch-fidelity shuffle the rows first; pass them shuffled to do the same.)"""
    logp = log_softmax(logits)
    scores = []
    for block in np.array_split(logp, splits):
        p = np.exp(block)
        log_py = np.log(p.mean(0))
        scores.append(np.exp((p * (block - log_py)).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.sqrt(np.clip(sq, 0, None))


def nearest_neighbours(queries, pool, k: int, exclude_self: bool = False, block: int = 2048
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Indices [Q, k] into `pool` of each query's k nearest rows (euclidean), nearest first, and the
    distances. Computed in blocks of queries, so 50k x 50k never builds the whole matrix.
    `exclude_self`: queries are the pool itself; a row is not its own neighbour."""
    q, p = _as_array(queries), _as_array(pool)
    indices, distances = [], []
    for start in range(0, len(q), block):
        d = pairwise_distances(q[start:start + block], p)
        if exclude_self:
            rows = np.arange(len(d))
            d[rows, start + rows] = np.inf
        idx = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.tile(np.arange(d.shape[1]), (len(d), 1))
        part = np.take_along_axis(d, idx, 1)
        order = np.argsort(part, axis=1, kind="stable")
        indices.append(np.take_along_axis(idx, order, 1))
        distances.append(np.take_along_axis(part, order, 1))
    return np.concatenate(indices), np.concatenate(distances)


def kth_neighbour_radius(features: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row of the same set."""
    _, d = nearest_neighbours(features, features, k, exclude_self=True)
    return d[:, k - 1]


def prdc(real_feats, fake_feats, k: int = 5, block: int = 2048) -> dict[str, float]:
    """Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020)
    with k-nearest-neighbour balls, as the `prdc` package computes them. The papers use k=3 for
    precision/recall and k=5 for density/coverage: call twice for both."""
    real, fake = _as_array(real_feats), _as_array(fake_feats)
    real_radius = kth_neighbour_radius(real, k)
    fake_radius = kth_neighbour_radius(fake, k)
    inside_real = np.zeros(len(fake), dtype=np.int64)  # per fake: how many real balls contain it
    real_covered = np.zeros(len(real), dtype=bool)
    nearest_fake = np.full(len(real), np.inf)
    fake_inside_any = np.zeros(len(real), dtype=bool)  # per real: inside some fake ball (recall)
    for start in range(0, len(real), block):
        d = pairwise_distances(real[start:start + block], fake)  # [r, F]
        radius = real_radius[start:start + block, None]
        inside = d < radius
        inside_real += inside.sum(0)
        nearest_fake[start:start + block] = d.min(1)
        fake_inside_any[start:start + block] = (d < fake_radius[None, :]).any(1)
    real_covered = nearest_fake < real_radius
    return {"precision": float((inside_real > 0).mean()), "recall": float(fake_inside_any.mean()),
            "density": float(inside_real.sum() / (k * len(fake))), "coverage": float(real_covered.mean())}
