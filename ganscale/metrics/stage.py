"""Stage 4, metrics: the GAN evaluation suite over the stored samples.

Which pairs (`comparisons`): the reference datasets are `metrics.reference`, default every real one
(kind != generator). Every other dataset is compared with every reference one (Fréchet distance,
KID, precision/recall/density/coverage, colour-histogram KL, C2ST against the first reference), and
every other pair of datasets (two references, two others) gets the Fréchet distance and KID, so two
image folders get numbers whatever they hold. A study without a reference compares all pairs
(Fréchet, KID) and says so in `results["comparisons"]["note"]`.

- Per zarr chunk, where the task runs: feature moments (`FeatureMoments`) of each feature set,
  Inception Score partials, sharpness sums and colour histograms. Dask merges them in a tree (on
  the Ray cluster when one is attached): nothing bigger than a chunk is held by a worker.
- Methods that need raw features (KID, precision/recall, density/coverage, nearest neighbours) use
  a random subset of `metrics.prdc_samples` samples per dataset, read from the store.
- Methods that need images (MS-SSIM diversity, the C2ST classifier and its SmoothGrad maps, the
  checkpoint sweep) regenerate them from their seeds in Ray tasks, on a GPU when there is one.

Feature sets: `pooled:{layer}` (the study probe's featuremap averaged over space, for each of
`metrics.feature_layers`, default the last study layer) and `fid_pool3` (the FID Inception network,
when `metrics.fid_inception` is given: that one is the standard FID). Each named statistics file of
`metrics.reference_stats` (pytorch-fid/clean-fid .npz: mu, sigma) is an extra reference of the
standard FID only: `results["frechet"]` rows {"features": "fid_pool3", "a": name, "b": dataset,
"value", "reference_stats": path} for every non-reference dataset (every dataset when all are
references). The Inception Score uses the study probe's logits; it is left out, with IS_LEFT_OUT
as the reason, for a probe without a class head.

Written to the store under metrics/ (recreated whenever its inputs change):

    attrs: results (the tables, also summary.json["metrics"])
    {dataset}/neighbours   int64   [R, 1 + k]  R random samples, then their k nearest neighbours
    {dataset}/sharpest     int64   [R]         the sharpest images
    {dataset}/spikes       int64   [S, R]      per colour spike of the dataset, the images with most mass in it
    {generator}/nearest_real int64 [R, 1 + k]  R generated samples, then their k nearest reference samples
    {dataset}/fid_mu       float64 [2048]      mean of its fid_pool3 features (with metrics.fid_inception; the
    {dataset}/fid_sigma    float64 [2048, 2048]  covariance, ddof=1): the report writes them as fid_stats/{dataset}.npz
    c2st/{source}/ids      int64   [R]         correctly classified test images of the source (pooled classifier)
    c2st/{source}/smoothgrad float32 [R, H, W] their SmoothGrad sensitivity maps
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging

import dask
import numpy as np

from ganscale import schema, sources
from ganscale.errors import GanscaleError
from ganscale.images import measured
from ganscale.metrics import features as fm
from ganscale.metrics import images as im
from ganscale.metrics import uncertainty as un
from ganscale.metrics.verdict import LOWER_IS_BETTER
from ganscale.metrics.images import CHANNELS
from ganscale.metrics.refstats import read_stats
from ganscale.partials import reduce_stored, tree_reduce
from ganscale import runtime
from ganscale.runtime import dask_scheduler, init_ray
from ganscale.study import Study, scrub_url
from ganscale.weights import resolve

log = logging.getLogger("ganscale.metrics")

NEIGHBOURS_K = 5
IS_LEFT_OUT = "probe has no class head"  # the Inception Score's reason when the probe gives no logits
SPIKES_SHOWN = 3
COPIES_SHARE = 0.05  # memorisation check: 5x the share expected of real images (1%)


@dataclasses.dataclass
class Comparisons:
    references: list[str]
    others: list[str]
    against_reference: list[tuple[str, str]]  # (reference, other): every metric
    pairs: list[tuple[str, str]]  # every compared pair (Fréchet, KID): against_reference first
    note: str

    def to_dict(self) -> dict:
        return {"reference": self.references, "others": self.others,
                "against_reference": [list(p) for p in self.against_reference],
                "pairs": [list(p) for p in self.pairs], "note": self.note}


def comparisons(study: Study) -> Comparisons:
    refs = study.references()
    others = [n for n in study.datasets if n not in refs]
    against = [(r, o) for r in refs for o in others]
    pairs = against + list(itertools.combinations(others, 2)) + list(itertools.combinations(refs, 2))
    source = "metrics.reference" if study.metrics.reference is not None else "default: the datasets of kind != generator"
    if not refs:
        note = ("no reference dataset (" + source + "): every pair gets the Fréchet distance and KID; precision/"
                "recall, density/coverage, colour KL and the C2ST need one (set metrics.reference)")
    elif not others:
        note = (f"every dataset is a reference ({source}): every pair gets the Fréchet distance and KID; "
                "precision/recall, density/coverage, colour KL and the C2ST compare a non-reference dataset with "
                "a reference one (list the reference in metrics.reference)")
    else:
        note = (f"reference: {', '.join(refs)} ({source}); every other dataset is compared with each reference "
                "(all metrics), and every other pair gets the Fréchet distance and KID")
    return Comparisons(refs, others, against, pairs, note)


def feature_sets(study: Study) -> dict[str, str]:
    """name -> array path inside a dataset group."""
    out = {f"pooled:{layer}": f"layers/{layer}/pooled" for layer in study.feature_layers()}
    if study.metrics.fid_inception:
        out["fid_pool3"] = "features/fid_pool3"
    return out


def fid_resize_note(study: Study) -> str:
    from ganscale.models.fid_inception import resize_note

    spec = study.metrics.fid_inception
    return resize_note(resolve(spec.weights, spec.sha256, field="metrics.fid_inception.weights",
                               storage_options=study.storage_options))


NAME, ITEM, READS = "metrics", "", ("sample",)


def items(study: Study) -> list[str]:
    return ["all"] if study.metrics.enabled else []


def settings(study: Study, item: str) -> dict:
    return {"metrics": study.metrics.model_dump(mode="json"), "seed": study.seed, "datasets": list(study.datasets)}


def missing(study: Study, root, item: str) -> str:
    return "" if "metrics" in root else "the store has no metrics group"


@contextlib.contextmanager
def workers(study: Study, root, todo: list[str], address: str | None = None):
    """The Dask scheduler the partial statistics reduce on (the image tasks run as Ray tasks)."""
    init_ray(address)
    yield dask_scheduler()


# --- mergeable partial statistics -------------------------------------------------------------

@dataclasses.dataclass
class DatasetPartial:
    moments: dict[str, fm.FeatureMoments]
    is_p_sum: np.ndarray  # [splits, K] sum of softmax rows
    is_plogp: np.ndarray  # [splits] sum over rows of sum_k p log p
    is_n: np.ndarray  # [splits]
    sharpness_sum: float
    sharpness_sq: float
    colour_hist: np.ndarray  # [4, bins] uint64

    def merge(self, other: "DatasetPartial") -> "DatasetPartial":
        return DatasetPartial({k: m.merge(other.moments[k]) for k, m in self.moments.items()},
                              self.is_p_sum + other.is_p_sum, self.is_plogp + other.is_plogp, self.is_n + other.is_n,
                              self.sharpness_sum + other.sharpness_sum, self.sharpness_sq + other.sharpness_sq,
                              self.colour_hist + other.colour_hist)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f"moments/{name}/{k}": v for name, m in self.moments.items() for k, v in m.to_arrays().items()}
        return {**out, **{f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)
                          if f.name != "moments"}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "DatasetPartial":
        names = sorted({k.split("/")[1] for k in arrays if k.startswith("moments/")})
        moments = {n: fm.FeatureMoments.from_arrays({k.rsplit("/", 1)[1]: v for k, v in arrays.items()
                                                     if k.startswith(f"moments/{n}/")}) for n in names}
        plain = {f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls) if f.name != "moments"}
        return cls(moments, **{k: v.item() if v.ndim == 0 else v for k, v in plain.items()})


def split_of(index: np.ndarray, n: int, splits: int) -> np.ndarray:
    """The Inception Score split of each sample: np.array_split's contiguous blocks of the N samples."""
    bounds = np.cumsum([len(b) for b in np.array_split(np.arange(n), splits)])
    return np.searchsorted(bounds, index, side="right")


def chunk_partial(store: str, storage_options: dict, dataset: str, start: int, stop: int,
                  paths: dict[str, str], splits: int) -> DatasetPartial:
    root = schema.open_store(store, storage_options, mode="r")
    group = root[schema.dataset_path(dataset)]
    n = group["logits"].shape[0]
    moments = {name: fm.FeatureMoments.of(schema.read_rows(group, path, start, stop)) for name, path in paths.items()}
    logits = schema.read_rows(group, "logits", start, stop).astype(np.float64)
    logp = logits  # [n, 0] for a probe without a class head: the IS sums stay empty
    if logits.shape[1]:
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    p = np.exp(logp)
    split = split_of(np.arange(start, stop), n, splits)
    p_sum = np.zeros((splits, p.shape[1]))
    np.add.at(p_sum, split, p)
    plogp = np.bincount(split, weights=(p * logp).sum(1), minlength=splits)
    count = np.bincount(split, minlength=splits).astype(np.float64)
    sharp = schema.read_rows(group, "image/sharpness", start, stop).astype(np.float64)
    hist = schema.read_rows(group, "image/colour_hist", start, stop).astype(np.uint64).sum(0)
    return DatasetPartial(moments, p_sum, plogp, count, float(sharp.sum()), float((sharp ** 2).sum()), hist)


def dataset_partial(study: Study, root, dataset: str):
    group = root[schema.dataset_path(dataset)]
    parts = [dask.delayed(chunk_partial)(study.store, study.storage_options, dataset, start, stop,
                                         feature_sets(study), study.metrics.is_splits)
             for start, stop in schema.row_blocks(group, "logits")]
    return tree_reduce(parts)


def inception_score_from_partial(part: DatasetPartial) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split, from sums: E[sum p log p] - sum p_y log p_y."""
    scores = []
    for p_sum, plogp, n in zip(part.is_p_sum, part.is_plogp, part.is_n):
        if n == 0:
            continue
        p_y = p_sum / n
        scores.append(np.exp(plogp / n - np.sum(p_y * np.log(np.clip(p_y, 1e-300, None)))))
    return float(np.mean(scores)), float(np.std(scores))


# --- the stage ----------------------------------------------------------------------------------

def feature_subset(study: Study, root, dataset: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset (sorted sample ids) of a dataset's features: KID, PRDC, neighbours."""
    group = root[schema.dataset_path(dataset)]
    n = group[path].shape[0]
    size = min(study.metrics.prdc_samples, n)
    rng = np.random.default_rng(sources.dataset_seeds(study.seed, f"metrics/{dataset}", 1)[0])
    ids = np.sort(rng.choice(n, size, replace=False))
    return ids, schema.read_ids(group, path, ids).astype(np.float64)


def run_item(study: Study, root, item: str, scheduler) -> dict:
    compare = comparisons(study)
    refs, others = compare.references, compare.others
    if not refs:
        log.warning("metrics: %s", compare.note)
    sets = feature_sets(study)

    log.info("metrics: reducing feature moments and image statistics")
    partials = dict(zip(study.datasets, dask.compute(*[dataset_partial(study, root, n) for n in study.datasets],
                                                      scheduler=scheduler)))
    compared = compare.pairs
    first = next(iter(study.datasets))
    fid_note = fid_resize_note(study) if "fid_pool3" in sets else ""
    results: dict = {"feature_sets": {name: {"dims": int(p.moments[name].sum.shape[0])}
                                      for name, p in [(n, partials[first]) for n in sets]},
                     "resize": (sources.preprocess_note(study.preprocess.grayscale, study.preprocess.size) + "; "
                                if study.preprocess.size or study.preprocess.grayscale else "")
                     + sources.RESIZE_NOTE + ("; " + fid_note if fid_note else ""),
                     "sizes": measured_sizes(study, root, "fid_pool3" in sets),
                     "comparisons": compare.to_dict(),
                     "subset": study.metrics.prdc_samples}
    resampling = un.Resampling(study.seed, study.metrics.bootstrap.resamples, study.metrics.bootstrap.rows)
    results["uncertainty"] = uncertainty_note(study)
    log.info("metrics: Fréchet distances with %d bootstrap resamples", resampling.resamples)
    boot = {(n, fs): bootstrap_features(root, n, path, resampling) for n in study.datasets for fs, path in sets.items()}
    estimates: dict = {}
    results["frechet"] = []
    for fs in sets:
        for a, b in compared:
            value = fm.frechet_distance_from_moments(partials[a].moments[fs], partials[b].moments[fs])
            results["frechet"].append(frechet_row(fs, a, b, value, boot[a, fs], boot[b, fs], resampling, estimates))
    results["noise_floor"] = {r: {fs: un.noise_floor(boot[r, fs][1], resampling, r) for fs in sets} for r in refs}
    fid_arrays = {}
    if "fid_pool3" in sets:
        results["fid_resize"] = fid_note  # the FID network's resize: shown next to the FID table
        stats = {n: (p.moments["fid_pool3"].mean, p.moments["fid_pool3"].cov) for n, p in partials.items()}
        fid_arrays = {f"{n}/fid_{k}": v for n, (mu, sigma) in stats.items() for k, v in (("mu", mu), ("sigma", sigma))}
        results["frechet"] += reference_stats_rows(study, compare, stats, boot, resampling)
    results["inception_score"] = {}
    if not partials[first].is_p_sum.shape[1]:  # no logits: a probe without a class head
        results["inception_score_left_out"] = IS_LEFT_OUT
    else:
        for name, part in partials.items():
            mean, std = inception_score_from_partial(part)
            results["inception_score"][name] = {"mean": mean, "std": std, "splits": study.metrics.is_splits}

    subsets = {(n, fs): feature_subset(study, root, n, path) for n in study.datasets for fs, path in sets.items()}
    results["kid"], results["prdc"] = subset_tables(study, compare, sets, subsets, resampling, estimates)

    results["images"] = image_statistics(study, root, partials, refs, others, resampling, estimates)
    arrays = {**picture_inputs(study, root, subsets, results["images"], sets), **fid_arrays}
    results["memorisation"], nearest = nearest_real(study, compare, subsets, sets)
    arrays.update(nearest)
    tasks = image_tasks(study, refs, others)
    results["ms_ssim"] = ms_ssim_differences(tasks["ms_ssim"], refs, others, resampling)
    if "c2st" in tasks:
        results["c2st"] = with_accuracy_intervals(tasks["c2st"]["tables"])
        arrays.update(tasks["c2st"]["arrays"])
    results["significance"] = paired_differences(compare, estimates)
    if "sweep" in tasks:
        results["sweep"] = tasks["sweep"]
    write_results(root, results, arrays)
    return {}


def uncertainty_note(study: Study) -> dict:
    b = study.metrics.bootstrap
    return {"resamples": b.resamples, "rows": b.rows, "seed": study.seed,
            "method": ("seeded bootstrap over both sets (each set resampled with replacement from its own stream, "
                       "the same for a reference in every comparison); basic 95% intervals [2v - q97.5, 2v - q2.5], "
                       "intervals for the large-sample value: where repeated rows shift the resampled values (the "
                       "Fréchet distance of few samples in many dimensions), the interval sits below the value, "
                       "around the bias-corrected value (also given); precision/recall/density/coverage: the "
                       "resampled values' percentiles centred on the value (their shift under resampling is not "
                       "their bias); Wilson intervals for C2ST accuracies; "
                       f"datasets above {b.rows} samples are bootstrapped on a seeded subset of that many and the "
                       "width scaled to the full size"),
            "significance": ("a difference between two datasets against one reference is significant when the 95% "
                             "interval of its paired bootstrap (the reference's resamples shared) excludes 0; the C2ST "
                             "accuracies of two classifiers (separate test sets) by Newcombe's interval of their "
                             "difference")}


def bootstrap_features(root, dataset: str, path: str, resampling: un.Resampling) -> tuple[int, np.ndarray]:
    """(number of samples, features of the dataset's bootstrap rows: all of them up to `rows`)."""
    group = root[schema.dataset_path(dataset)]
    n = group[path].shape[0]
    return n, schema.read_ids(group, path, resampling.subset(dataset, n)).astype(np.float64)


def frechet_row(fs: str, a: str, b: str, value: float, boot_a, boot_b, resampling: un.Resampling,
                estimates: dict) -> dict:
    """One `frechet` entry: the value on all samples, its interval, the value at matched n and FID-infinity."""
    (na, xa), (nb, xb) = boot_a, boot_b
    estimate = un.frechet_bootstrap(xa, xb, resampling, (a, b), value, (na, nb))
    estimates["frechet", fs, a, b] = estimate
    row = {"features": fs, "a": a, "b": b, **estimate.to_dict(), "n": [na, nb]}
    if na != nb:
        row["matched"] = (un.frechet_matched(xa, xb, resampling, (a, b)) if min(na, nb) <= resampling.rows else
                          {"reason": f"both datasets exceed metrics.bootstrap.rows ({resampling.rows})"})
    row["infinity"] = un.frechet_infinity(xa, xb, resampling, b)
    return row


def reference_stats_rows(study: Study, compare: Comparisons, stats: dict[str, tuple], boot: dict,
                         resampling: un.Resampling) -> list[dict]:
    """The standard FID of every non-reference dataset (every dataset when all are references) to
    each named statistics file of `metrics.reference_stats` (pytorch-fid/clean-fid .npz), with an
    interval from resampling the dataset only (a statistics file has no samples to resample)."""
    rows = []
    dims = next(iter(stats.values()))[0].shape[0]
    for name, spec in study.metrics.reference_stats.items():
        field = f"metrics.reference_stats.{name}.path"
        path = resolve(spec.path, spec.sha256, field=field, storage_options=study.storage_options)
        mu, sigma = read_stats(path, dims=dims, field=field)
        for n in compare.others or list(study.datasets):
            total, rows_n = boot[n, "fid_pool3"]
            value = fm.frechet_distance_from_stats(mu, sigma, *stats[n])
            estimate = un.frechet_to_stats_bootstrap(rows_n, mu, sigma, resampling, n, value, total)
            rows.append({"features": "fid_pool3", "a": name, "b": n, "reference_stats": scrub_url(spec.path),
                         **estimate.to_dict(), "n": [None, total]})
    return rows


def subset_tables(study: Study, compare: Comparisons, sets: dict, subsets: dict, resampling: un.Resampling,
                  estimates: dict) -> tuple[list, list]:
    """The KID of every compared pair and the precision/recall, density/coverage of every
    (reference, other) pair, per feature set, on the seeded feature subsets, with their intervals
    (`estimates` collects the resampled values for the paired differences)."""
    kid, prdc = [], []
    m = study.metrics

    def boot(name, fs):
        feats = subsets[name, fs][1]
        return feats[resampling.subset(name, len(feats))], len(feats)

    for fs in sets:
        for a, b in compare.pairs:
            mean, std = fm.kid(subsets[a, fs][1], subsets[b, fs][1], subsets=m.kid_subsets,
                               subset_size=m.kid_subset_size, seed=study.seed)
            (xa, na), (xb, nb) = boot(a, fs), boot(b, fs)
            estimate = un.kid_bootstrap(xa, xb, resampling, (a, b), mean, (na, nb))
            estimates["kid", fs, a, b] = estimate
            kid.append({"features": fs, "a": a, "b": b, "mean": mean, "std": std, "ci95": list(estimate.ci95),
                        "resamples": resampling.resamples, "interval": estimate.interval, "n": [na, nb]})
        for r, g in compare.against_reference:
            pr = fm.prdc(subsets[r, fs][1], subsets[g, fs][1], k=m.precision_k)
            dc = fm.prdc(subsets[r, fs][1], subsets[g, fs][1], k=m.density_k)
            values = {"precision": pr["precision"], "recall": pr["recall"], "density": dc["density"],
                      "coverage": dc["coverage"]}
            (xr, nr), (xg, ng) = boot(r, fs), boot(g, fs)
            intervals = un.prdc_bootstrap(xr, xg, resampling, (r, g), m.precision_k, m.density_k, values, (nr, ng))
            for key, estimate in intervals.items():
                estimates[key, fs, r, g] = estimate
            prdc.append({"features": fs, "real": r, "fake": g, **values,
                         "ci95": {key: list(e.ci95) for key, e in intervals.items()},
                         "resamples": resampling.resamples, "n": [nr, ng],
                         "k_precision_recall": m.precision_k, "k_density_coverage": m.density_k})
    return kid, prdc


def paired_differences(compare: Comparisons, estimates: dict) -> list[dict]:
    """For every reference, metric and feature set, each pair of compared datasets: the paired
    bootstrap difference (first - second), whether it is significant, and which is better."""
    rows = []
    for (metric, fs, ref, first), estimate in estimates.items():
        if metric not in LOWER_IS_BETTER or ref not in compare.references:
            continue
        for second in compare.others:
            other = estimates.get((metric, fs, ref, second))
            if second <= first or other is None or first not in compare.others:
                continue
            diff = un.difference(estimate, other)
            better = None
            if diff["significant"]:
                first_better = (diff["value"] < 0) == LOWER_IS_BETTER[metric]
                better = first if first_better else second
            rows.append({"metric": metric, "features": fs, "reference": ref, "a": first, "b": second, **diff,
                         "better": better})
    return rows


def ms_ssim_differences(ms_ssim: dict, refs: list[str], others: list[str], resampling: un.Resampling) -> dict:
    """MS-SSIM per dataset and, for each compared dataset, its difference from each reference's
    (over the random pairs: positive = less diverse than the reference)."""
    out = {}
    for name, entry in ms_ssim.items():
        out[name] = {k: v for k, v in entry.items() if k != "scores"}
        out[name]["difference"] = {}
    for g in others:
        for r in refs:
            estimate = un.mean_difference(ms_ssim[g]["scores"], ms_ssim[r]["scores"], resampling,
                                          (f"{g}/ms_ssim", f"{r}/ms_ssim"))
            out[g]["difference"][r] = estimate.to_dict()
    return out


def with_accuracy_intervals(tables: dict) -> dict:
    """Wilson 95% intervals on every C2ST test accuracy (per classifier, and per source)."""
    for table in tables["classifiers"].values():
        n = table["n_test"]
        table["ci95"] = list(un.accuracy_interval(round(table["test_accuracy"] * n), n))
        for entry in table["per_source"].values():
            entry["ci95"] = list(un.accuracy_interval(round(entry["accuracy"] * entry["n"]), entry["n"]))
    tables["interval"] = "Wilson score 95% interval over the test images"
    return tables


def measured_sizes(study: Study, root, fid: bool) -> dict:
    """Per dataset, what each measurement saw: the source's own [H, W] (sharpness, colour histograms;
    the sample stage records it), the probe's input side, and the FID network's (299) when it ran."""
    out = {}
    for name in study.datasets:
        attrs = root[schema.dataset_path(name)].attrs
        out[name] = {"source": attrs.get("image_size"), "probe": attrs.get("input_size"), "fid": 299 if fid else None}
    return out


def image_channels(study: Study) -> list[str]:
    """The histogram channels that carry information: gray alone for a grey study."""
    return ["gray"] if study.preprocess.grayscale else list(CHANNELS)


def image_statistics(study: Study, root, partials: dict, refs: list[str], others: list[str],
                     resampling: un.Resampling, estimates: dict) -> dict:
    """Sharpness, colour histograms, the KL of each non-reference dataset's to each reference
    one's and its sharpness difference (with intervals), and its colour spikes against the first
    reference."""
    out = {}
    bins = schema.HIST_BINS
    channels = image_channels(study)
    per_image = {}
    for name, part in partials.items():
        n = part.is_n.sum()
        mean = part.sharpness_sum / n
        out[name] = {"sharpness_mean": mean, "sharpness_std": float(np.sqrt(max(part.sharpness_sq / n - mean ** 2, 0))),
                     "histogram": part.colour_hist.tolist(), "bins": bins, "channels": channels,
                     "colour_kl": {}, "sharpness_difference": {}, "spikes": []}
        if name in refs or name in others and refs:
            group = root[schema.dataset_path(name)]
            total = group["image/sharpness"].shape[0]
            ids = resampling.subset(name, total)
            per_image[name] = (total, schema.read_ids(group, "image/sharpness", ids),
                               schema.read_ids(group, "image/colour_hist", ids))
    channel_ids = [CHANNELS.index(ch) for ch in channels]
    for name in (others if refs else []):
        for r in refs:
            (ng, sharp_g, hist_g), (nr, sharp_r, hist_r) = per_image[name], per_image[r]
            values = im.histogram_kl(partials[name].colour_hist[channel_ids], partials[r].colour_hist[channel_ids])
            kls = un.histogram_kl_bootstrap(hist_g[:, channel_ids], hist_r[:, channel_ids], resampling, (name, r),
                                            values, (ng, nr))
            out[name]["colour_kl"][r] = {ch: e.to_dict() for ch, e in zip(channels, kls)}
            estimates["colour_kl", channels[-1], r, name] = kls[-1]  # ranked on gray (the last channel)
            out[name]["sharpness_difference"][r] = un.mean_difference(sharp_g, sharp_r, resampling,
                                                                      (name, r)).to_dict()
        spikes = im.colour_spikes(partials[refs[0]].colour_hist, partials[name].colour_hist)
        out[name]["spikes"] = [{**s, "channel": CHANNELS[int(s["channel"])] if not isinstance(s["channel"], str)
                                else s["channel"]} for s in schema.plain(spikes)]
        out[name]["spikes"] = [s for s in out[name]["spikes"] if s["channel"] in channels]
        out[name]["spikes_against"] = refs[0]
    return out


def picture_inputs(study: Study, root, subsets: dict, image_stats: dict, sets: dict) -> dict[str, np.ndarray]:
    """Sample ids for the picture panels: nearest neighbours, sharpest images, colour spikes."""
    shown = study.metrics.images_shown
    fs = next(iter(sets))
    arrays = {}
    for name in study.datasets:
        ids, feats = subsets[name, fs]
        rng = np.random.default_rng(study.seed)
        queries = rng.choice(len(ids), min(shown, len(ids)), replace=False)
        k = min(NEIGHBOURS_K, len(ids) - 1)
        neighbours, _ = fm.nearest_neighbours(feats[queries], feats, k + 1)
        rows = [[q] + [j for j in row if j != q][:k] for q, row in zip(queries, np.asarray(neighbours))]
        arrays[f"{name}/neighbours"] = ids[np.asarray(rows)]
        group = root[schema.dataset_path(name)]
        sharp = schema.read_rows(group, "image/sharpness")
        arrays[f"{name}/sharpest"] = np.argsort(-sharp, kind="stable")[:shown]
        spikes = image_stats[name]["spikes"][:SPIKES_SHOWN]
        if spikes:
            hist = schema.read_rows(group, "image/colour_hist")
            rows = []
            for spike in spikes:
                column = hist[:, CHANNELS.index(spike["channel"]), int(spike["bin"])].astype(np.float64)
                rows.append(np.argsort(-column, kind="stable")[:shown])
            arrays[f"{name}/spikes"] = np.stack(rows)
    return arrays


def nearest_real(study: Study, compare: Comparisons, subsets: dict, sets: dict) -> tuple[dict, dict]:
    """The memorisation check: each generated sample's distance to its nearest image of the first
    reference, set against each reference image's distance to its nearest *other* reference image.
    A generator that copies its training images sits much closer to them than real images sit to
    each other; a share of generated samples closer than the 1st percentile of real-to-real distances
    above COPIES_SHARE says so. Also the sample ids of a few generated images and their nearest real ones."""
    if not compare.references or not compare.others:
        return {}, {}
    ref = compare.references[0]
    fs = "fid_pool3" if "fid_pool3" in sets else next(iter(sets))
    real_ids, real = subsets[ref, fs]
    _, real_to_real = fm.nearest_neighbours(real, real, 1, exclude_self=True)
    real_to_real = real_to_real[:, 0]
    low = float(np.quantile(real_to_real, 0.01))
    quantiles = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95]
    edges = np.linspace(0, float(real_to_real.max()) * 1.5, 41)

    def histogram(distances):
        return np.histogram(np.clip(distances, 0, edges[-1]), edges)[0].tolist()

    results = {"reference": ref, "features": fs, "quantiles": quantiles, "bin_edges": edges.tolist(),
               "real_to_real": {"n": int(len(real)), "values": np.quantile(real_to_real, quantiles).tolist(),
                                "histogram": histogram(real_to_real)}, "generators": {}}
    arrays = {}
    shown = study.metrics.images_shown
    k = min(NEIGHBOURS_K, len(real))
    for g in compare.others:
        ids, feats = subsets[g, fs]
        neighbours, distances = fm.nearest_neighbours(feats, real, k)
        nearest = distances[:, 0]
        closer = float((nearest < low).mean())
        results["generators"][g] = {
            "n": int(len(feats)), "values": np.quantile(nearest, quantiles).tolist(), "histogram": histogram(nearest),
            "share_below_real_1st_percentile": closer,
            "median_ratio": float(np.median(nearest) / np.median(real_to_real)),
            "reading": (f"{closer:.1%} of {g}'s samples are closer to a {ref} image than 99% of {ref} images are to "
                        f"each other: " + ("possible copies, look at them" if closer > COPIES_SHARE else
                                           "no sign of memorised images"))}
        rows = np.random.default_rng(study.seed).choice(len(ids), min(shown, len(ids)), replace=False)
        arrays[f"{g}/nearest_real"] = np.concatenate([ids[rows, None], real_ids[neighbours[rows]]], axis=1)
    return results, arrays


def write_results(root, results: dict, arrays: dict[str, np.ndarray]) -> None:
    group = root.create_group("metrics", overwrite=True)
    for path, value in arrays.items():
        value = np.asarray(value)
        group.create_array(path, shape=value.shape, dtype=value.dtype)[...] = value
    group.attrs.update({"results": schema.plain(results)})


# --- image tasks (Ray) ---------------------------------------------------------------------------

def _task_options() -> dict:
    import ray

    if ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": max(1, min(4, int(ray.cluster_resources().get("CPU", 1))))}


def _threads() -> None:
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


def ms_ssim_task(study: Study, dataset: str) -> dict:
    """MS-SSIM over `metrics.msssim_pairs` random distinct pairs of the dataset (higher: less diverse)."""
    from ganscale.images import images_by_id

    _threads()
    root = schema.open_store(study.store, study.storage_options, mode="r")
    n = study.datasets[dataset].samples
    pairs = min(study.metrics.msssim_pairs, n * (n - 1) // 2)
    rng = np.random.default_rng(study.seed)
    a = rng.integers(0, n, pairs)
    b = (a + rng.integers(1, n, pairs)) % n  # never equal to a
    ids, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    images = images_by_id(study, root, dataset, ids, device=runtime.device())
    scores = im.ms_ssim(images[inverse[:pairs]], images[inverse[pairs:]])
    scores = np.asarray(scores.cpu() if hasattr(scores, "cpu") else scores, dtype=np.float64)
    return {"mean": float(scores.mean()), "std": float(scores.std()), "pairs": int(pairs), "scores": scores}


def image_tasks(study: Study, reals: list[str], gens: list[str]) -> dict:
    import ray

    from ganscale.runtime import worker_failure

    def get(ref, what: str):
        try:
            return ray.get(ref)
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
            raise worker_failure(e, what) from None

    options = _task_options()
    refs = {name: ray.remote(ms_ssim_task).options(**options).remote(study, name) for name in study.datasets}
    out = {"ms_ssim": {name: get(ref, f"metrics: MS-SSIM of {name}") for name, ref in refs.items()}}
    if study.metrics.c2st is not None and gens and reals:
        out["c2st"] = get(ray.remote(c2st_task).options(**options).remote(study, reals[0], gens), "metrics: C2ST")
    if study.metrics.sweep is not None:
        out["sweep"] = get(ray.remote(sweep_task).options(**options).remote(study), "metrics: checkpoint sweep")
    return out


def c2st_task(study: Study, real: str, gens: list[str]) -> dict:
    """The C2ST of seed 000 on the first `c2st.samples` images of the real dataset and of each
    generator, at their own size (see below); SmoothGrad maps of the pooled classifier for correctly
    classified test images of every source."""
    from ganscale.metrics.c2st import c2st, smoothgrad
    from ganscale.models import registry
    from ganscale.images import images_by_id

    import torch

    _threads()
    settings = study.metrics.c2st
    device = runtime.device()
    root = schema.open_store(study.store, study.storage_options, mode="r")
    # The classifier sees the sources at their own size (the largest of them), as a power of two (the
    # DCGAN classifier wants one), at most the probe's input size: 25 px faces train at 32, not 256.
    own = max(max(root[schema.dataset_path(n)].attrs.get("image_size") or [0]) for n in [real, *gens])
    limit = 2 ** int(np.log2(registry.probe_entry(study.probe.name).input_size))
    size = min(limit, 2 ** int(np.ceil(np.log2(max(own, 16))))) if own else limit
    images = {}
    for name in [real, *gens]:
        n = min(settings.samples, study.datasets[name].samples)
        images[name] = torch.cat([sources.resize_square(images_by_id(study, root, name, block, device=device), size)
                                  for block in np.array_split(np.arange(n), -(-n // 256))])  # own size: in blocks
    try:
        result = c2st(images[real], {g: images[g] for g in gens}, real_name=real, epochs=settings.epochs,
                      patience=settings.patience, batch_size=settings.batch_size, lr=settings.lr, seed=study.seed,
                      progress=log.info)
    except ValueError as e:  # too few images for the train/validation/test split
        raise GanscaleError(f"metrics.c2st.samples: {e}") from None
    pooled = result.classifiers.get("pooled") or next(iter(result.classifiers.values()))
    arrays = {}
    shown = study.metrics.images_shown
    from ganscale.metrics.c2st import GENERATED, REAL

    for name in [real, *gens]:
        chosen = pooled.test_index[(pooled.test_sources == name) & pooled.test_correct][:shown]
        target = REAL if name == real else GENERATED
        maps = (smoothgrad(pooled.model, images[name][chosen], target, samples=settings.smoothgrad_samples,
                           sigma=settings.smoothgrad_sigma, seed=study.seed).cpu().numpy()
                if len(chosen) else np.zeros((0, size, size), np.float32))
        arrays[f"c2st/{name}/ids"] = chosen.astype(np.int64)  # the first n samples: index == sample id
        arrays[f"c2st/{name}/smoothgrad"] = maps.astype(np.float32)
    tables = result.to_dict()
    tables.update({"real": real, "image_size": size, "samples": settings.samples})
    return {"tables": tables, "arrays": arrays}


def probe_features(study: Study, probe, images, layer: str, batch: int = 256):
    """Spatially pooled features of `layer` and logits of the probe, in batches (numpy, float64)."""
    import torch

    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            maps, out = probe(sources.resize_square(images[i:i + batch], probe.input_size))
            feats.append(maps[layer].float().mean((2, 3)).cpu().numpy())
            logits.append(out.float().cpu().numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(logits).astype(np.float64)


def stored_moments(study: Study, root, dataset: str, path: str) -> fm.FeatureMoments:
    return reduce_stored(study, root, [dataset], path, fm.FeatureMoments.of, "sync", fan_in=None)


def generated_features(study: Study, generator, seeds: np.ndarray, probe, layer: str, field: str):
    """(images as measured, pooled features of `layer`, logits) of a generator's images for `seeds`:
    the same pixels and the same probe path as the sample stage's stored features."""
    images, _ = generator.generate(seeds.tolist())
    images = measured(study, sources.check_images(images, len(seeds), field))
    feats, logits = probe_features(study, probe, images, layer)
    return images, feats, logits


def sweep_task(study: Study) -> dict:
    """The metrics of each checkpoint of one training run against a real dataset, in training order:
    Frechet distance and KID on the first feature set (a probe layer), precision/recall,
    density/coverage, Inception Score and MS-SSIM diversity."""
    from ganscale.models import registry
    from ganscale.study import GeneratorDataset

    _threads()
    sweep, m = study.metrics.sweep, study.metrics
    device = runtime.device()
    root = schema.open_store(study.store, study.storage_options, mode="r")
    fs, path = next((k, v) for k, v in feature_sets(study).items() if k.startswith("pooled:"))
    layer = fs.split(":", 1)[1]
    against = stored_moments(study, root, sweep.against, path)
    _, against_subset = feature_subset(study, root, sweep.against, path)
    probe = registry.build_probe(study.probe, study.storage_options).only([layer]).to(device)
    seeds = sources.dataset_seeds(study.seed, "metrics/sweep", sweep.samples)
    rows = []
    for label, checkpoint in sweep.checkpoints.items():
        spec = GeneratorDataset(kind="generator", name=sweep.generator, samples=sweep.samples,
                                weights=checkpoint.weights, sha256=checkpoint.sha256)
        field = f"metrics.sweep.checkpoints.{label}"
        generator = registry.build_generator(spec, field, study.storage_options).to(device)
        images, feats, logits = generated_features(study, generator, seeds, probe, layer, field)
        kid_mean, kid_std = fm.kid(against_subset, feats, subsets=m.kid_subsets, subset_size=m.kid_subset_size,
                                   seed=study.seed)
        pr = fm.prdc(against_subset, feats[:m.prdc_samples], k=m.precision_k)
        dc = fm.prdc(against_subset, feats[:m.prdc_samples], k=m.density_k)
        is_mean, is_std = fm.inception_score(logits, splits=m.is_splits) if logits.shape[1] else (None, None)
        pairs = min(m.msssim_pairs, len(images) // 2)
        ssim = np.asarray(im.ms_ssim(images[:pairs], images[pairs:2 * pairs]).cpu(), dtype=np.float64)
        rows.append({"label": label, "features": fs,
                     "frechet": fm.frechet_distance_from_moments(against, fm.FeatureMoments.of(feats)),
                     "kid_mean": kid_mean, "kid_std": kid_std, "precision": pr["precision"], "recall": pr["recall"],
                     "density": dc["density"], "coverage": dc["coverage"], "is_mean": is_mean, "is_std": is_std,
                     "ms_ssim": float(ssim.mean())})
    return {"generator": sweep.generator, "against": sweep.against, "samples": sweep.samples, "checkpoints": rows}
