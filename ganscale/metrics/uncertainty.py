"""How sure a comparison is: seeded bootstrap intervals over both sets, the Fréchet distance at a
matched sample size and extrapolated to infinitely many samples (FID-infinity), noise floors, and
paired differences. Pure functions of arrays, like `ganscale.metrics.features`.

The bootstrap resamples every set with replacement, each from its own random stream seeded by
(seed, the set's name, its size): `Resampling.counts`. A metric is evaluated on the resample counts
(a row drawn twice has weight 2), so nothing is copied and the statistics reuse one Gram or
distance matrix. Because a reference gets the same resamples whichever set it is compared with,
the difference of two generators' values against one reference is a *paired* bootstrap
(`difference`): its interval says whether their ranking is significant.

Intervals: the basic bootstrap interval [2v - q97.5, 2v - q2.5] (v: the value on the data, q: the
quantiles of the resampled values), an interval for the large-sample value. Resampling repeats
rows, and repeated rows shift these statistics the way drawing few samples shifts them in the first
place: with 100 rows of 2048-d features a resample's Fréchet distance is ~15% above the data's,
as the data's is above the distance of the distributions. The basic interval reflects that shift, so
it sits below the value where the bias is large: `bias_corrected` (v - the mean shift) is its
centre, and both are reported. (A percentile interval centred on v covers the large-sample Fréchet
distance of two 8-d Gaussians in only 37 of 50 trials at n = 300-400; the basic one in at least 45.)
Precision, recall, density and coverage are different: a resample's k-nearest-neighbour balls are
built on ~63% distinct rows, a shift that says nothing about these statistics' own bias, so their
intervals keep the spread of the resampled values and drop the shift (`centred_interval`: the
quantiles moved so their median sits on the value). The C2ST accuracy: the Wilson score interval
over its test images.

* A set larger than `rows` is bootstrapped on a seeded subset of `rows` rows and the interval's
  width is scaled to the full sizes by sqrt((1/n_a + 1/n_b) / (1/m_a + 1/m_b)) (the m-out-of-n
  bootstrap; the sampling variance of these distances shrinks as 1/n).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from ganscale.metrics import features as fm
from ganscale.metrics import images as im

LEVEL = 0.95
BASIC = "basic bootstrap"
CENTRED = "bootstrap percentiles centred on the value"
FID_INFINITY_MIN = 500  # FID-infinity needs this many rows of the varied set (Chong and Forsyth use 5k-50k)
FID_INFINITY_POINTS = 15


@dataclasses.dataclass(frozen=True)
class Resampling:
    """`resamples` bootstrap resamples of every set, seeded per set by (seed, name, size)."""
    seed: int = 0
    resamples: int = 200
    rows: int = 1000  # sets larger than this are bootstrapped on a seeded subset (see the module docstring)

    def _rng(self, name: str, n: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed % 2**63, zlib.crc32(name.encode()), n, purpose])

    def counts(self, name: str, n: int) -> np.ndarray:
        """[resamples, n] int: how often each of the n rows is drawn in each resample."""
        return self._rng(name, n, 0).multinomial(n, np.full(n, 1.0 / n), size=self.resamples)

    def subset(self, name: str, n: int) -> np.ndarray:
        """The sorted rows of a set of n that its bootstrap uses: all of them up to `rows`."""
        if n <= self.rows:
            return np.arange(n)
        return np.sort(self._rng(name, n, 1).choice(n, self.rows, replace=False))


@dataclasses.dataclass
class Estimate:
    """A value with its bootstrap interval; `samples` are the resampled values (kept for paired
    differences, never written)."""
    value: float
    ci95: tuple[float, float]
    samples: np.ndarray
    interval: str  # how it was made: BASIC
    corrected: float | None = None  # the bias-corrected value (the interval's centre)

    def to_dict(self) -> dict:
        out = {"value": float(self.value), "ci95": [float(self.ci95[0]), float(self.ci95[1])],
               "resamples": int(len(self.samples)), "interval": self.interval}
        if self.corrected is not None:
            out["bias_corrected"] = self.corrected
        return out


def _finite(samples) -> np.ndarray:
    """The resampled values that are defined (a resample of a tiny set can leave a statistic undefined)."""
    samples = np.asarray(samples, np.float64)
    return samples[np.isfinite(samples)]


def interval(samples: np.ndarray, value: float, scale: float = 1.0, centre: float | None = None
             ) -> tuple[float, float]:
    """The basic 95% bootstrap interval [2v - q97.5, 2v - q2.5] of `value` v from its resampled
    values (q: their quantiles). When the samples come from a subset of the rows, `centre` is the
    value on that subset and `scale` < 1 shrinks the deviations to the full size (m-out-of-n)."""
    samples = _finite(samples)
    if not len(samples):
        return float("nan"), float("nan")
    lo, hi = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    centre = value if centre is None else centre
    return float(value - scale * (hi - centre)), float(value - scale * (lo - centre))


def centred_interval(samples: np.ndarray, value: float, scale: float = 1.0) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of the resampled values moved so that their median sits on the
    value: their spread without their shift (for statistics whose shift under resampling is not
    an estimate of their bias: precision, recall, density, coverage)."""
    samples = _finite(samples)
    if not len(samples):
        return float("nan"), float("nan")
    lo, hi = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    median = float(np.median(samples))
    return float(value + scale * (lo - median)), float(value + scale * (hi - median))


def bias_corrected(samples: np.ndarray, value: float, scale: float = 1.0, centre: float | None = None) -> float:
    """The value less the bootstrap's estimate of its bias, v - (mean(samples) - v): where the basic
    interval is centred."""
    centre = value if centre is None else centre
    samples = _finite(samples)
    return float(value - scale * (samples.mean() - centre)) if len(samples) else float("nan")


def _scale(sizes: tuple[int, int] | None, rows: tuple[int, int]) -> float:
    """How much narrower the interval on all `sizes` rows is than on the bootstrap `rows` (1: the same rows)."""
    if sizes is None:
        return 1.0
    return float(np.sqrt((1 / sizes[0] + 1 / sizes[1]) / (1 / rows[0] + 1 / rows[1])))


def _centred(g: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """P_a G P_b^T with P = I - 1 w^T / n: the Gram matrix G of two sets of rows with each set
    centred on its weighted mean (w: count weights)."""
    na, nb = wa.sum(), wb.sum()
    row, col = wa @ g / na, g @ wb / nb
    return g - row[None, :] - col[:, None] + wa @ col / na


# --- Fréchet distance on weighted rows -----------------------------------------------------------

class FrechetResampler:
    """The Fréchet distance of two feature sets [n_a, D], [n_b, D] with each row weighted by how
    often a resample draws it. With count weights w (summing to n), mean = X^T w / n and the
    unbiased covariance S = Xc^T diag(w) Xc / (n - 1), as `FeatureMoments` gives for the repeated
    rows. Two routes, the cheaper one taken per evaluation:

    * Gram (few rows, many dimensions): tr sqrt(S_a S_b) is the nuclear norm of
      W_a^1/2 Xc_a Xc_b^T W_b^1/2 / sqrt((n_a-1)(n_b-1)), an [u_a, u_b] matrix over the drawn rows,
      computed from the Gram matrices of the rows (formed once);
    * moments (many rows, few dimensions): the weighted D x D covariances and the eigenvalues of
      their product, as `frechet_distance_from_stats`."""

    def __init__(self, a, b):
        a, b = fm._as_array(a, "a"), fm._as_array(b, "b")
        fm._same_dims(a, b, "FrechetResampler")
        if len(a) < 2 or len(b) < 2:
            raise ValueError("FrechetResampler: each set needs at least 2 rows")
        shift = np.concatenate([a, b]).mean(0)  # the distance is shift-invariant; centring helps round-off
        self.a, self.b = a - shift, b - shift
        self.dims = a.shape[1]
        self._gram = None

    def _grams(self):
        if self._gram is None:
            self._gram = (self.a @ self.a.T, self.b @ self.b.T, self.a @ self.b.T)
        return self._gram

    def __call__(self, wa: np.ndarray | None = None, wb: np.ndarray | None = None) -> float:
        wa = np.ones(len(self.a)) if wa is None else np.asarray(wa, np.float64)
        wb = np.ones(len(self.b)) if wb is None else np.asarray(wb, np.float64)
        ia, ib = np.flatnonzero(wa), np.flatnonzero(wb)
        if max(len(ia), len(ib)) ** 3 < self.dims ** 3 + (len(ia) + len(ib)) * self.dims ** 2:
            return self._gram_route(wa[ia], ia, wb[ib], ib)
        return self._moments_route(wa, wb)

    def _moments_route(self, wa, wb) -> float:
        stats = []
        for x, w in ((self.a, wa), (self.b, wb)):
            n = w.sum()
            mu = w @ x / n
            xc = x - mu
            stats += [mu, (xc * w[:, None]).T @ xc / (n - 1)]
        return fm.frechet_distance_from_stats(*stats)

    def _gram_route(self, wa, ia, wb, ib) -> float:
        g_aa, g_bb, g_ab = self._grams()
        g_aa, g_bb, g_ab = g_aa[np.ix_(ia, ia)], g_bb[np.ix_(ib, ib)], g_ab[np.ix_(ia, ib)]
        na, nb = wa.sum(), wb.sum()
        trace_a = wa @ np.diag(_centred(g_aa, wa, wa)) / (na - 1)
        trace_b = wb @ np.diag(_centred(g_bb, wb, wb)) / (nb - 1)
        m = np.sqrt(wa)[:, None] * _centred(g_ab, wa, wb) * np.sqrt(wb)[None, :] / np.sqrt((na - 1) * (nb - 1))
        trace_sqrt = np.linalg.svd(m, compute_uv=False).sum()
        mean_term = wa @ g_aa @ wa / na ** 2 + wb @ g_bb @ wb / nb ** 2 - 2 * wa @ g_ab @ wb / (na * nb)
        return float(mean_term + trace_a + trace_b - 2 * trace_sqrt)


def frechet_bootstrap(a, b, resampling: Resampling = Resampling(), names: tuple[str, str] = ("a", "b"),
                      value: float | None = None, sizes: tuple[int, int] | None = None) -> Estimate:
    """The Fréchet distance of two feature sets with its bootstrap interval. When `a` and `b`
    are the bootstrap subsets (`Resampling.subset`) of larger sets, pass the distance on all rows
    as `value` (from the merged moments) and the full sizes as `sizes`."""
    a, b = fm._as_array(a, "a"), fm._as_array(b, "b")
    distance = FrechetResampler(a, b)
    centre = distance()
    full = centre if value is None else value
    samples = np.array([distance(wa, wb) for wa, wb in zip(resampling.counts(names[0], len(a)),
                                                           resampling.counts(names[1], len(b)))])
    scale = _scale(sizes, (len(a), len(b)))
    lo, hi = interval(samples, full, scale, centre)
    return Estimate(full, (max(lo, 0.0), hi), samples, BASIC, bias_corrected(samples, full, scale, centre))


def frechet_to_stats_bootstrap(x, mu, sigma, resampling: Resampling = Resampling(), name: str = "a",
                               value: float | None = None, size: int | None = None) -> Estimate:
    """The Fréchet distance of feature rows `x` [n, D] to fixed statistics (mu, sigma) (a reference
    statistics file: it has no rows to resample), with its interval from resamples of x alone.
    tr sqrt(S_x sigma) is the sum of the square roots of the eigenvalues of the [u, u] matrix
    W^1/2 Xc sigma Xc^T W^1/2 / (n - 1), formed from X sigma X^T once. `value`, `size`: the distance
    on all rows and their number when x is a bootstrap subset."""
    x = fm._as_array(x, "x")
    mu, sigma = fm._as_array(mu, "mu", 1), fm._as_array(sigma, "sigma")
    gram, through, towards = x @ x.T, x @ sigma @ x.T, x @ mu
    trace_sigma = float(np.trace(sigma))

    def distance(w):
        i = np.flatnonzero(w)
        w, g, h, t = w[i], gram[np.ix_(i, i)], through[np.ix_(i, i)], towards[i]
        n = w.sum()
        trace_x = w @ np.diag(_centred(g, w, w)) / (n - 1)
        inner = np.sqrt(w)[:, None] * _centred(h, w, w) * np.sqrt(w)[None, :] / (n - 1)
        eig = np.linalg.eigvalsh(inner)
        eig[eig < eig[-1] * len(eig) * np.finfo(float).eps] = 0  # round-off of the zero eigenvalues (n > D)
        trace_sqrt = np.sqrt(eig).sum()
        mean_term = w @ g @ w / n ** 2 - 2 * (w @ t) / n + mu @ mu
        return float(mean_term + trace_x + trace_sigma - 2 * trace_sqrt)

    centre = distance(np.ones(len(x)))
    full = centre if value is None else value
    samples = np.array([distance(w.astype(np.float64)) for w in resampling.counts(name, len(x))])
    scale = 1.0 if size is None else float(np.sqrt(len(x) / size))
    lo, hi = interval(samples, full, scale, centre)
    return Estimate(full, (max(lo, 0.0), hi), samples, BASIC, bias_corrected(samples, full, scale, centre))


def frechet_matched(a, b, resampling: Resampling = Resampling(), names: tuple[str, str] = ("a", "b"),
                    draws: int = 20) -> dict | None:
    """The Fréchet distance with the larger set cut to the smaller one's size n (the distance grows
    as n shrinks, so sets of different sizes are only comparable at one n): the mean over `draws`
    seeded subsets of the larger set, and its interval from resamples of n rows of each set. None
    when both sets have the same size."""
    a, b = fm._as_array(a, "a"), fm._as_array(b, "b")
    if len(a) == len(b):
        return None
    swap = len(a) < len(b)
    small, large = (a, b) if swap else (b, a)
    small_name, large_name = (names[0], names[1]) if swap else (names[1], names[0])
    n = len(small)
    rng = resampling._rng(large_name, len(large), 2)
    distance = FrechetResampler(small, large)
    values = []
    for _ in range(draws):
        chosen = np.zeros(len(large))
        chosen[rng.choice(len(large), n, replace=False)] = 1
        values.append(distance(None, chosen))
    value = float(np.mean(values))
    small_counts = resampling.counts(small_name, n)
    large_counts = resampling._rng(large_name, len(large), 3).multinomial(
        n, np.full(len(large), 1.0 / len(large)), size=resampling.resamples)
    samples = np.array([distance(ws, wl) for ws, wl in zip(small_counts, large_counts)])
    lo, hi = interval(samples, value)
    return {"n": int(n), "value": value, "ci95": [max(lo, 0.0), hi], "draws": draws,
            "bias_corrected": bias_corrected(samples, value),
            "resamples": resampling.resamples, "interval": BASIC}


def frechet_infinity(reference, other, resampling: Resampling = Resampling(), name: str = "b",
                     minimum: int = FID_INFINITY_MIN, points: int = FID_INFINITY_POINTS) -> dict:
    """FID-infinity (Chong and Forsyth 2020): the Fréchet distance is linear in 1/N in the number N
    of `other`'s rows; fitted on `points` seeded subsets from N/5 to N, the intercept at 1/N = 0 is
    the distance free of the sample-size bias. {"reason": ...} when `other` has fewer than
    `minimum` rows (an extrapolation from fewer is not worth its interval)."""
    reference, other = fm._as_array(reference, "reference"), fm._as_array(other, "other")
    n = len(other)
    if n < minimum:
        return {"reason": f"needs at least {minimum} samples of {name}, has {n}"}
    sizes = np.unique(np.linspace(n // 5, n, points).astype(int))
    rng = resampling._rng(name, n, 4)
    distance = FrechetResampler(reference, other)
    values = []
    for size in sizes:
        w = np.zeros(n)
        w[rng.choice(n, size, replace=False)] = 1
        values.append(distance(None, w))
    slope, intercept = np.polyfit(1.0 / sizes, values, 1)
    return {"value": float(intercept), "slope": float(slope), "sizes": sizes.tolist(),
            "values": [float(v) for v in values]}


# --- KID, precision/recall, density/coverage -------------------------------------------------------

def _polynomial_kernel(x, y, gamma, degree=3, coef0=1.0):
    return (gamma * (x @ y.T) + coef0) ** degree


def kid_bootstrap(a, b, resampling: Resampling = Resampling(), names: tuple[str, str] = ("a", "b"),
                  value: float | None = None, sizes: tuple[int, int] | None = None) -> Estimate:
    """The unbiased polynomial-kernel MMD^2 (KID's statistic) on all rows of both sets, resampled:
    the within-set means run over pairs of distinct rows (a row drawn c times weighs c in each
    pair), since k(x, x) is far larger than k(x, y) and pairs of copies would inflate it. The
    interval is reported about `value` (the subset-mean KID) when given; `sizes` as in
    `frechet_bootstrap`."""
    x, y = fm._as_array(a, "a"), fm._as_array(b, "b")
    ca, cb = resampling.counts(names[0], len(x)), resampling.counts(names[1], len(y))
    gamma = 1.0 / a.shape[1]
    k_aa, k_bb, k_ab = _polynomial_kernel(x, x, gamma), _polynomial_kernel(y, y, gamma), _polynomial_kernel(x, y, gamma)
    da, db = np.diag(k_aa), np.diag(k_bb)

    def mmd(wa, wb):  # within a set, pairs of copies of one row are left out with the row's pair with itself
        na, nb = wa.sum(), wb.sum()
        if na ** 2 == wa @ wa or nb ** 2 == wb @ wb:  # one distinct row drawn: no pair to average
            return float("nan")
        within_a = (wa @ k_aa @ wa - wa ** 2 @ da) / (na ** 2 - wa @ wa)
        within_b = (wb @ k_bb @ wb - wb ** 2 @ db) / (nb ** 2 - wb @ wb)
        return within_a + within_b - 2 * (wa @ k_ab @ wb) / (na * nb)

    centre = mmd(np.ones(len(x)), np.ones(len(y)))
    samples = np.array([mmd(wa.astype(np.float64), wb.astype(np.float64)) for wa, wb in zip(ca, cb)])
    full = centre if value is None else value
    scale = _scale(sizes, (len(x), len(y)))
    return Estimate(full, interval(samples, full, scale, centre), samples, BASIC,
                    bias_corrected(samples, full, scale, centre))


def _radii(d: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Per drawn row, the distance to its k-th nearest *other* drawn row, counting a row drawn c
    times as c neighbours at its distance (copies of a row are not its own neighbours)."""
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    reached = np.cumsum(counts[order], axis=1) >= k
    return np.take_along_axis(d, order, 1)[np.arange(len(d)), reached.argmax(1)]


def prdc_bootstrap(real, fake, resampling: Resampling = Resampling(), names: tuple[str, str] = ("real", "fake"),
                   k_precision: int = 3, k_density: int = 5, values: dict | None = None,
                   sizes: tuple[int, int] | None = None) -> dict[str, Estimate]:
    """Precision and recall (k_precision) and density and coverage (k_density), as `fm.prdc`
    computes them, with intervals from resamples of both sets: the k-nearest-neighbour balls are
    rebuilt in every resample, from one set of distance matrices (a row drawn c times is c
    neighbours of the others, never of itself). Centred intervals (see the module docstring); the
    shares' intervals are clipped to [0, 1]. `values` and `sizes`:
    as `value` and `sizes` of `frechet_bootstrap`."""
    x, y = fm._as_array(real, "real"), fm._as_array(fake, "fake")
    cr, cf = resampling.counts(names[0], len(x)), resampling.counts(names[1], len(y))
    d_rr, d_ff, d_rf = fm.pairwise_distances(x, x), fm.pairwise_distances(y, y), fm.pairwise_distances(x, y)

    def measure(wr, wf):
        ir, jf = np.flatnonzero(wr), np.flatnonzero(wf)
        wr, wf = wr[ir], wf[jf]
        cross = d_rf[np.ix_(ir, jf)]
        d_real, d_fake = d_rr[np.ix_(ir, ir)], d_ff[np.ix_(jf, jf)]
        out = {}
        radius_r, radius_f = _radii(d_real, wr, k_precision), _radii(d_fake, wf, k_precision)
        out["precision"] = wf @ (cross < radius_r[:, None]).any(0) / wf.sum()
        out["recall"] = wr @ (cross < radius_f[None, :]).any(1) / wr.sum()
        radius_r = _radii(d_real, wr, k_density)
        inside = cross < radius_r[:, None]
        out["density"] = (wr @ inside @ wf) / (k_density * wf.sum())
        out["coverage"] = wr @ (cross.min(1) < radius_r) / wr.sum()
        return out

    centre = measure(np.ones(len(x)), np.ones(len(y)))
    values = centre if values is None else values
    resampled = [measure(wr, wf) for wr, wf in zip(cr, cf)]
    scale = _scale(sizes, (len(x), len(y)))
    out = {}
    for key in centre:
        samples = np.array([r[key] for r in resampled])
        lo, hi = centred_interval(samples, values[key], scale)
        if key != "density":  # shares
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        out[key] = Estimate(float(values[key]), (lo, hi), samples, CENTRED)
    return out


# --- image statistics, accuracies, differences -------------------------------------------------

def histogram_kl_bootstrap(hists, reference_hists, resampling: Resampling = Resampling(),
                           names: tuple[str, str] = ("a", "reference"), values=None,
                           sizes: tuple[int, int] | None = None) -> list[Estimate]:
    """KL(a || reference) of summed per-image histograms [N, C, bins] per channel C, with
    intervals from resampled images of both sets. `values` and `sizes`: as `value` and
    `sizes` of `frechet_bootstrap` (per channel)."""
    h = np.asarray(hists, np.float64)
    g = np.asarray(reference_hists, np.float64)
    ca, cb = resampling.counts(names[0], len(h)), resampling.counts(names[1], len(g))
    centre = im.histogram_kl(h.sum(0), g.sum(0))
    values = centre if values is None else np.asarray(values)
    resampled = np.stack([im.histogram_kl(np.tensordot(wa, h, 1), np.tensordot(wb, g, 1))
                          for wa, wb in zip(ca, cb)])  # [R, C]
    scale = _scale(sizes, (len(h), len(g)))
    return [Estimate(float(values[c]), interval(resampled[:, c], values[c], scale, centre[c]), resampled[:, c], BASIC,
                     bias_corrected(resampled[:, c], values[c], scale, centre[c]))
            for c in range(len(centre))]


def mean_difference(x, y, resampling: Resampling = Resampling(), names: tuple[str, str] = ("a", "b")) -> Estimate:
    """mean(x) - mean(y) of two independent samples, with a bootstrap interval."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ca, cb = resampling.counts(names[0], len(x)), resampling.counts(names[1], len(y))
    samples = ca @ x / len(x) - cb @ y / len(y)
    value = float(x.mean() - y.mean())
    return Estimate(value, interval(samples, value), samples, BASIC)


def accuracy_interval(correct: int, n: int) -> tuple[float, float]:
    """The Wilson score 95% interval of a share of `correct` out of `n` (a test accuracy)."""
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(LEVEL, method="wilson")
    return float(ci.low), float(ci.high)


def proportion_difference(correct_a: int, n_a: int, correct_b: int, n_b: int) -> tuple[float, float]:
    """The 95% interval of the difference of two independent shares (two C2ST accuracies on their own
    test sets): Newcombe's hybrid score interval, built from the two Wilson intervals."""
    p_a, p_b = correct_a / n_a, correct_b / n_b
    (lo_a, hi_a), (lo_b, hi_b) = accuracy_interval(correct_a, n_a), accuracy_interval(correct_b, n_b)
    d = p_a - p_b
    return (float(d - np.hypot(p_a - lo_a, hi_b - p_b)), float(d + np.hypot(hi_a - p_a, p_b - lo_b)))


def difference(first: Estimate, second: Estimate) -> dict:
    """first - second with the interval of the paired resampled differences (both estimated
    against one reference with the same resamples): significant when it excludes 0."""
    value = first.value - second.value
    lo, hi = interval(first.samples - second.samples, value)
    return {"value": float(value), "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0),
            "interval": f"paired bootstrap, {BASIC}"}


def noise_floor(reference, resampling: Resampling = Resampling(), name: str = "reference") -> dict:
    """The Fréchet distance and KID between two seeded random halves of a reference set: what two
    samples of the same distribution score at n/2 each (the floor no generator can go below at
    that size), with intervals."""
    x = fm._as_array(reference, "reference")
    half = len(x) // 2
    if half < 2:
        return {"reason": f"needs at least 4 rows, has {len(x)}"}
    order = resampling._rng(name, len(x), 5).permutation(len(x))
    first, second = x[order[:half]], x[order[half:2 * half]]
    names = (f"{name}/half1", f"{name}/half2")
    return {"n": int(half), "frechet": frechet_bootstrap(first, second, resampling, names).to_dict(),
            "kid": kid_bootstrap(first, second, resampling, names).to_dict()}
