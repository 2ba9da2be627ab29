"""Stage dissect: which units of a generator layer stand for which objects (GAN dissection, Bau et al.
2019), and what happens when they are switched off and on.

Work. `DissectWorker` Ray actors (one per GPU, else CPU workers, as the sample stage) host the
generator, the segmenter and (for artifact units) the probe. The `dissect.samples` seeds (drawn
from the study seed) are cut into chunks of `dissect.chunk_size`; the driver hands chunks to
actors as they free up, and each chunk gives a partial result of `ganscale.dissect.stats`. Dask
merges the partials in a tree of tasks (Dask-on-Ray when Ray is attached: the partials never pass
through the driver). Three passes over the chunks: per-unit range and top images; per-unit
histograms (quantiles: the top-quantile threshold, the insertion value and the candidate
thresholds for the IQR search); per (unit, class, candidate threshold) contingency counts. All
counts are integers, every forward pass has the same batch shape, so the result does not depend on
the number of workers or on the chunking (tested). Then units are labelled, and the interventions
run on the actors as independent tasks: per class (switch effect, insertion map, downstream
tracing), per block of units (artifact ranking), per layer (artifact table, report pictures).

Reruns. A dying actor is restarted by Ray and its chunk retried. Each pass's merged result is
written to the store as soon as it is complete, and each layer's interventions when they are, so
a stopped driver resumes at the first unfinished pass or layer; chunk partials themselves are
recomputed (a pass is minutes where a chunk is seconds, and the partials of a large segmenter
vocabulary are tens of MB each). Everything is recomputed when `fingerprint` (the generator,
the dissect settings, the study seed, the probe and layers used for artifact units) changes.

Stored under dissect/{generator}/ (attrs: fingerprint, classes, passes: finished passes) and
dissect/{generator}/{layer}/ (U units, C classes, J candidate thresholds, N samples):

    attrs: fingerprint, classes, method, quantile, candidate_levels [J], stats_size [2], pixels,
           labels (summary: interpretable units and concepts by IoU, and by IoU and IQR > 0.01,
           best unit per class, top units),
           results (JSON, once the layer's interventions are done): labels, interventions {class:
           units, their IoUs, class share before / ablated / inserted, removed share, ACE, images
           with the class and cleared}, insertion_maps {class: featuremap pixels probed, gain and
           success per pixel, success rate, local share, by_context {class there: gain, success},
           downstream per pixel and by visibility}, downstream {class: {ablation, insertion:
           {later layer: mean normalised change}}}, artifacts {score, k, units, improvement,
           top_images_distance, random_units, rank_samples, images_per_unit, units_improving,
           active {before, after_top, after_random}, images_active, all {...}, images_all}
    seeds         int64   [N]        the seeds dissected (sample i = generator image of seeds[i])
    low, high     float64 [U]        per-unit activation range (featuremaps upsampled to stats_size)
    top_ids       int64   [U, k]     samples with the highest peak activation of the unit (-1: none)
    top_values    float64 [U, k]     those peaks
    histogram     int64   [U, 1024]  per-unit activation histogram over [low, high]
    quantile_value float32 [U]       the unit's `dissect.quantile` quantile (the insertion value)
    thresholds    float64 [U, J]     candidate thresholds: the unit's quantiles at candidate_levels
    intersection  int64   [U, C, J]  pixels with the unit above threshold j and of class c
    unit_area     int64   [U, J]     pixels with the unit above threshold j
    class_area    int64   [C]        pixels of class c
    label         int32   [U]        best class (highest IoU at the chosen thresholds)
    iou, iqr, threshold float32 [U]  of the best class, at its chosen threshold
    class_mean    float32 [U, C]     the unit's mean activation where the class is (dissect.insertion class_mean)
    iou_all, iqr_all, threshold_all float32 [U, C]  every class at its chosen threshold (top-k units of a class)
    panel_units   int32   [P]        units shown in the report (best per concept, then by IoU)
    panel_images  uint8   [P, I, h, w, 3]  their top-activating images (thumbnails)
    panel_masks   uint8   [P, I, S, S']    1 where the unit is above its threshold (stats_size)
    intervention_images uint8 [K, 3, I, h, w, 3]  per class with interventions (attrs.results
                                     interventions, in order): original, ablated, inserted
    artifact_before, artifact_after float32 [U]  diagonal Fréchet distance of the images where the unit is most
                                     active, as they are and with the unit ablated alone
    artifact_images uint8 [2, I, h, w, 3]  held-out images where the artifact units are most active:
                                     as they are, with the top artifact units ablated

Threshold per unit and class: `dissect.threshold` iqr (the candidate maximising I/H, the paper) or
quantile (the `dissect.quantile` quantile). IoU pools pixels over all images.
"""

from __future__ import annotations

import logging
import time

import dask
import numpy as np
import torch

from ganscale import ledger, schema, sources, stage
from ganscale.dissect import intervene, stats
from ganscale.errors import GanscaleError
from ganscale.partials import tree_reduce
from ganscale.progress import status
from ganscale.runtime import Task, dask_scheduler, init_ray, pick_device, run_on_actors, worker_resources
from ganscale.study import Study, digest

log = logging.getLogger("ganscale.dissect")

DISSECT_VERSION = 4  # bump when stored results change meaning
TOP_IMAGES = 8  # top-activating samples kept per unit
STATS_SIDE = 64  # statistics resolution: segmentations subsampled to at most this side (gandissect: 64 for 256)
MAP_SIDE = 8  # insertion maps probe at most an 8x8 grid of featuremap pixels
MAP_IMAGES = 32  # images per insertion map and per downstream trace
PANEL_UNITS = 12
PANEL_IMAGES = 4
PICTURE_SEEDS = 4
THUMBNAIL = 128  # report thumbnails at most this side
ARTIFACT_BLOCK = 32  # units per artifact-ranking task
# Candidate thresholds for the IQR search: each unit's quantiles at these levels, the top 0.1% to
# the top 90% of its pixels, log-spaced (gandissect: 100 levels, logspace(-3, 0)).
CANDIDATE_LEVELS = tuple(sorted(set(np.round(1 - np.logspace(-3, np.log10(0.9), 48), 6))))


def candidate_levels(quantile: float) -> list[float]:
    return sorted(set(CANDIDATE_LEVELS) | {round(quantile, 6)})


def generators_of(study: Study) -> list[str]:
    return study.dissect.generators or [n for n, d in study.datasets.items() if d.kind == "generator"]


NAME, ITEM, READS = "dissect", "generator", ("sample",)


def items(study: Study) -> list[str]:
    return generators_of(study) if study.dissect is not None else []


def reads(study: Study, generator: str) -> list[tuple[str, str]]:
    """The artifact units read the reference dataset's stored features; nothing else comes from the store."""
    real = _artifact_reference(study)
    return [("sample", real)] if real is not None and study.dissect.artifact_samples >= 4 else []


def settings(study: Study, root, generator: str) -> dict:
    return {"version": DISSECT_VERSION, "dataset": study.datasets[generator].model_dump(mode="json"),
            "dissect": study.dissect.model_dump(mode="json"), "seed": study.seed,
            "probe": study.probe.model_dump(mode="json"), "layers": study.layers, "real": _artifact_reference(study)}


def fingerprint(study: Study, generator: str) -> str:
    """settings + the reference dataset's sample fingerprint (its spec, seed, probe...) when read."""
    return stage.fingerprint(study, None, NAME, generator)


def batch_size(study: Study) -> int:
    """Images per forward pass: the sample stage's batch size (every pass has exactly this many
    rows, the last of a chunk padded, so results do not depend on dissect.chunk_size)."""
    return study.sample.batch_size


def build_segmenter(study: Study):
    """The study's segmenter: a registry name (`toy_segmenter`), or a `module:function` plugin called
    with `weights=` when given, returning an object with `class_names` and images -> class map."""
    from ganscale.models import registry

    spec = study.dissect.segmenter
    if ":" in spec.name:
        factory = registry._import_plugin(spec.name, "dissect.segmenter.name")
        segmenter = factory(weights=spec.weights) if spec.weights else factory()
    else:
        segmenter = registry.build_segmenter(spec.name, spec.weights, spec.sha256)
    names = getattr(segmenter, "class_names", None)
    if not names or not callable(segmenter):
        raise GanscaleError(f"dissect.segmenter.name: '{spec.name}' did not give a segmenter "
                            "(images -> class map, with class_names)")
    return segmenter


def _artifact_reference(study: Study) -> str | None:
    reals = [n for n, d in study.datasets.items() if d.kind != "generator"]
    return reals[0] if reals else None


# --- the workers ------------------------------------------------------------------------------------


class DissectWorker:
    """Hosts one generator, the segmenter and (when needed) the probe; computes chunk partials and
    intervention tasks. A Ray actor, or a plain object in one process."""

    def __init__(self, study: Study, generator: str, threads: int | None = None):
        from ganscale.models import registry

        if threads:
            torch.set_num_threads(threads)
        self.study, self.name = study, generator
        self.device = pick_device(study.sample.device)
        self.generator = registry.build_generator(study.datasets[generator], f"datasets.{generator}",
                                                  study.storage_options).to(self.device)
        self.segmenter = build_segmenter(study).to(self.device)
        self.class_names = list(self.segmenter.class_names)
        self.classes = len(self.class_names)
        self.batch = batch_size(study)
        for layer in study.dissect.layers:
            intervene.layer_module(self.generator, layer)
        seeds = sources.dataset_seeds(study.seed, f"dissect/{generator}", 2).tolist()
        intervene.check_deterministic(self.generator, seeds, f"datasets.{generator}")
        self._probe = None

    # -- unit statistics

    def _batches(self, seeds: np.ndarray, segment: bool):
        """Per batch: (real rows, {layer: maps at the statistics size}, segmentation at that size)."""
        layers = self.study.dissect.layers
        for padded, keep in intervene.batches(seeds.tolist(), self.batch):
            images, maps = intervene.featuremaps(self.generator, padded, layers)
            size = stats.stats_size(tuple(images.shape[-2:]), STATS_SIDE)
            segmentation = None
            if segment:
                segmentation = stats.subsample_segmentation(self.segmenter(images[:keep]), size)
            yield keep, {layer: stats.upsample(m[:keep], size) for layer, m in maps.items()}, segmentation

    @staticmethod
    def _add(total: dict | None, part: dict) -> dict:
        return part if total is None else {layer: total[layer].merge(p) for layer, p in part.items()}

    @torch.no_grad()
    def ranges(self, seeds: np.ndarray, first_id: int) -> dict:
        total, done = None, 0
        for keep, maps, _ in self._batches(seeds, segment=False):
            ids = np.arange(first_id + done, first_id + done + keep)
            total = self._add(total, {layer: stats.UnitRange.of(m, ids, TOP_IMAGES) for layer, m in maps.items()})
            done += keep
        return total

    @torch.no_grad()
    def histograms(self, seeds: np.ndarray, bounds: dict) -> dict:
        total = None
        for _, maps, _ in self._batches(seeds, segment=False):
            total = self._add(total, {layer: stats.UnitHistogram.of(m, *bounds[layer]) for layer, m in maps.items()})
        return total

    @torch.no_grad()
    def contingency(self, seeds: np.ndarray, thresholds: dict) -> dict:
        total = None
        for _, maps, segmentation in self._batches(seeds, segment=True):
            total = self._add(total, {layer: stats.Contingency.of(m, segmentation, thresholds[layer], self.classes)
                                      for layer, m in maps.items()})
        return total

    def info(self) -> dict:
        """The segmenter's class names and the statistics resolution."""
        images = intervene.render(self.generator, [0] * self.batch)
        return {"classes": self.class_names, "stats_size": list(stats.stats_size(tuple(images.shape[-2:]), STATS_SIDE))}

    # -- interventions

    def _seeds(self) -> np.ndarray:
        return sources.dataset_seeds(self.study.seed, f"dissect/{self.name}/interventions",
                                     self.study.dissect.intervention_samples)

    @torch.no_grad()
    def class_effects(self, layer: str, cls: int, units: list[int], high: np.ndarray, map_side: int = MAP_SIDE,
                      map_images: int = MAP_IMAGES) -> dict:
        """Ablation and insertion of `units` for class `cls`: the switch effect on every intervention
        seed; the insertion map (at most map_side x map_side pixels) and the downstream trace on the
        first `map_images` of them."""
        value = torch.as_tensor(np.array(high, dtype=np.float32))
        seeds = self._seeds().tolist()
        few = seeds[:map_images]
        batch = min(self.batch, len(few))  # these compare renders of the same batches: any fixed shape will do
        later = intervene.later_layers(self.generator, layer, intervene.layer_order(self.generator, layer))
        effect = intervene.switch_effect(self.generator, self.segmenter, layer, units, value, cls, seeds,
                                         self.classes, self.batch)
        scales = intervene.channel_scales(self.generator, few, later, batch) if later else None
        downstream = {"ablation": intervene.downstream_change(self.generator, few, layer, units, 0.0, later,
                                                              batch, scales),
                      "insertion": intervene.downstream_change(self.generator, few, layer, units, value, later,
                                                               batch, scales)}
        insertion = intervene.insertion_map(self.generator, self.segmenter, layer, units, value, cls, few,
                                            self.classes, batch, later, map_side, scales)
        return {"effect": effect, "downstream": downstream, "insertion_map": insertion}

    def _probe_features(self, images: torch.Tensor) -> np.ndarray:
        from ganscale.models import registry

        layer = self.study.layers[-1]
        if self._probe is None:
            probe = registry.build_probe(self.study.probe, self.study.storage_options)
            self._probe = probe.only([layer]).to(self.device)
        maps, _ = self._probe(sources.resize_square(images.to(self.device), self._probe.input_size))
        return maps[layer].float().mean((2, 3)).cpu().numpy()

    def _features_of(self, image_batches) -> np.ndarray:
        return np.concatenate([self._probe_features(images) for images in image_batches()])

    def _distance(self, real):
        """score(image batches) -> diagonal Fréchet distance of their probe features to `real` (mean, var)."""
        def score(image_batches) -> float:
            return stats.diagonal_frechet(self._features_of(image_batches), *real)
        return score

    @torch.no_grad()
    def unit_peaks(self, layer: str, seeds: list[int]) -> np.ndarray:
        """[n, U] float32: each image's peak activation of each unit of `layer`."""
        out = []
        for padded, keep in intervene.batches(seeds, self.batch):
            _, maps = intervene.featuremaps(self.generator, padded, [layer])
            out.append(maps[layer][:keep].amax((2, 3)).float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def artifact_scores(self, layer: str, units: list[int], seed_sets: list[list[int]], real) -> list[list[float]]:
        """Per unit: [diagonal Fréchet distance of its seeds' images, the same with the unit ablated
        alone]; the seeds are the images where the unit is most active."""
        score = self._distance(real)
        return [intervene.ablation_scores(self.generator, layer, [[], [u]], seeds, min(self.batch, len(seeds)), score)
                for u, seeds in zip(units, seed_sets)]

    @torch.no_grad()
    def artifact_table(self, layer: str, top: list[int], random_units: list[int], high: np.ndarray, real,
                       seeds: list[int], share: float) -> dict:
        """The paper's table on held-out seeds: the diagonal Fréchet distance of the images where the
        top artifact units are most active (`share` of the seeds; activation relative to each unit's
        high quantile), as they are, with the top units ablated and with random units ablated, and
        whether the top units' improvement beats the random units' (paired bootstrap); the same
        over all the held-out images; and thumbnails of a few of those images before/after."""
        peaks = self.unit_peaks(layer, seeds)
        strength = (peaks[:, top] / np.maximum(np.asarray(high)[top], 1e-12)).max(1)
        chosen = np.asarray(seeds)[np.argsort(-strength, kind="stable")[:max(2, int(np.ceil(share * len(seeds))))]]
        out = {}
        for key, subset in (("active", chosen.tolist()), ("all", list(seeds))):
            feats = []
            for units in ([], top, random_units):
                def images(units=units):
                    for padded, keep in intervene.batches(subset, self.batch):
                        yield intervene.render(self.generator, padded)[:keep]
                with intervene.intervention(self.generator, layer, units, 0.0):
                    feats.append(self._features_of(images))
            out[key] = {name: stats.diagonal_frechet(f, *real)
                        for name, f in zip(("before", "after_top", "after_random"), feats)}
            out[f"significance_{key}"] = stats.artifact_significance(*feats, *real, seed=self.study.seed)
        shown = chosen[:PICTURE_SEEDS].tolist()
        padded = shown + [shown[-1]] * max(0, self.batch - len(shown))
        pictures = []
        for units in ([], top):
            with intervene.intervention(self.generator, layer, units, 0.0):
                pictures.append(_thumbnails(intervene.render(self.generator, padded)[:len(shown)]))
        return {**out, "images_active": len(chosen), "images_all": len(seeds), "pictures": np.stack(pictures)}

    @torch.no_grad()
    def panels(self, layer: str, units: list[int], ids: list[list[int]], thresholds: list[float],
               seeds: list[int]) -> dict:
        """Thumbnails of each unit's top-activating images and its thresholded mask."""
        images_out, masks_out = [], []
        for unit, unit_ids, threshold in zip(units, ids, thresholds):
            chosen = [seeds[i] for i in unit_ids if i >= 0][:PANEL_IMAGES]
            pics, masks = [], []
            for padded, keep in intervene.batches(chosen, self.batch):
                images, maps = intervene.featuremaps(self.generator, padded, [layer])
                size = stats.stats_size(tuple(images.shape[-2:]), STATS_SIDE)
                up = stats.upsample(maps[layer][:keep, unit:unit + 1], size)[:, 0]
                pics.append(_thumbnails(images[:keep]))
                masks.append((up > threshold).to(torch.uint8).cpu().numpy())
            pics = np.concatenate(pics) if pics else np.zeros((0, 1, 1, 3), np.uint8)
            masks = np.concatenate(masks) if masks else np.zeros((0, 1, 1), np.uint8)
            images_out.append(_pad_rows(pics, PANEL_IMAGES))
            masks_out.append(_pad_rows(masks, PANEL_IMAGES))
        return {"images": np.stack(images_out), "masks": np.stack(masks_out)}

    @torch.no_grad()
    def pictures(self, layer: str, unit_sets: list[list[int]], highs: list[np.ndarray]) -> np.ndarray:
        """[K, 3, I, h, w, 3] uint8: for each unit set, the first intervention seeds as they are,
        with the units ablated and with them inserted."""
        seeds = self._seeds()[:PICTURE_SEEDS].tolist()
        padded = seeds + [seeds[-1]] * max(0, self.batch - len(seeds))
        keep = len(seeds)
        original = _thumbnails(intervene.render(self.generator, padded)[:keep])
        out = []
        for units, high in zip(unit_sets, highs):
            with intervene.intervention(self.generator, layer, units, 0.0):
                ablated = _thumbnails(intervene.render(self.generator, padded)[:keep])
            with intervene.intervention(self.generator, layer, units, torch.as_tensor(np.array(high, np.float32))):
                inserted = _thumbnails(intervene.render(self.generator, padded)[:keep])
            out.append(np.stack([original, ablated, inserted]))
        return np.stack(out) if out else np.zeros((0, 3, keep) + original.shape[1:], np.uint8)

    def ready(self) -> bool:
        return True


def _thumbnails(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> [B, h, w, 3] uint8, at most THUMBNAIL a side."""
    if max(images.shape[-2:]) > THUMBNAIL:
        images = sources.resize_square(images, THUMBNAIL)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _pad_rows(array: np.ndarray, n: int) -> np.ndarray:
    if len(array) >= n:
        return array[:n]
    return np.concatenate([array, np.zeros((n - len(array),) + array.shape[1:], array.dtype)])


# --- distributing work --------------------------------------------------------------------------


def _call(worker, method: str, *args):
    """An ObjectRef of worker.method(*args): remote for actors, computed here and put for local
    objects (tests, benchmarks)."""
    import ray

    call = getattr(worker, method)
    return call.remote(*args) if hasattr(call, "remote") else ray.put(call(*args))


def run_tasks(workers: list, tasks: list[tuple[str, tuple]], what: str, progress=None, fetch: bool = False) -> list:
    """Hand tasks (method, args) to the workers as they free up; the ObjectRefs (values when
    `fetch`), in task order. `progress()` is called as each finishes."""
    on_result = (lambda task, value: progress()) if progress else None
    return run_on_actors(workers, [Task(method, args, what) for method, args in tasks], on_result,
                         fetch=fetch, kill=False)


def run_tasks_shown(label: str, workers: list, tasks: list[tuple[str, tuple]], unit: str = "tasks") -> list:
    """`run_tasks`, waited for, with a progress display; the results in task order."""
    from ganscale.progress import Progress

    bar = Progress(label, len(tasks), unit=unit)
    try:
        return run_tasks(workers, tasks, label, lambda: bar.advance(1), fetch=True)
    finally:
        bar.close()


def _merge(parts: list) -> dict:
    """Merge per-layer partials ({layer: partial}); parts may be Ray ObjectRefs (fetched where the
    merge runs)."""
    import ray

    parts = [ray.get(p) if isinstance(p, ray.ObjectRef) else p for p in parts]
    out = dict(parts[0])
    for part in parts[1:]:
        out = {layer: out[layer].merge(value) for layer, value in part.items()}
    return out


def reduce_partials(refs: list, fan_in: int = 8) -> dict:
    """A Dask tree of merges over the workers' partial results (Dask-on-Ray when Ray is attached)."""
    parts = [dask.delayed(_merge)([r]) for r in refs]
    return dask.compute(tree_reduce(parts, _merge, fan_in), scheduler=dask_scheduler())[0]


def _translate(error: Exception, what: str) -> GanscaleError:
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, GanscaleError):
            return GanscaleError(str(cause))
        return GanscaleError(f"dissect: {what} failed: {str(cause or error).strip().splitlines()[-1]}")
    if isinstance(error, ray.exceptions.RayActorError):
        for line in str(error).splitlines():
            if "GanscaleError: " in line:
                return GanscaleError(line.split("GanscaleError: ", 1)[1].strip())
        return GanscaleError(f"dissect: a worker died for good during {what} ({type(error).__name__}); rerun to resume")
    return error if isinstance(error, GanscaleError) else GanscaleError(f"dissect: {what} failed: {error}")


def statistics_pass(study: Study, workers: list, seeds: np.ndarray, method: str, arg, progress=None) -> dict:
    """One pass over chunks of `seeds`: each chunk's partial on a worker, merged by Dask."""
    import ray

    step = study.dissect.chunk_size
    tasks = [(method, (seeds[s:s + step], s if method == "ranges" else arg)) for s in range(0, len(seeds), step)]
    try:
        return reduce_partials(run_tasks(workers, tasks, f"dissect: the {method} pass", progress))
    except (ray.exceptions.RayError, GanscaleError) as e:
        raise _translate(e, f"the {method} pass") from None


def unit_statistics(study: Study, generator: str, workers: list, seeds: np.ndarray, progress=None) -> dict:
    """The three passes over chunks of `seeds`, spread over `workers` (actors or local objects)."""
    ranges = statistics_pass(study, workers, seeds, "ranges", None, progress)
    histograms = statistics_pass(study, workers, seeds, "histograms",
                                 {layer: (r.low, r.high) for layer, r in ranges.items()}, progress)
    levels = candidate_levels(study.dissect.quantile)
    thresholds = {layer: h.quantiles(levels) for layer, h in histograms.items()}
    contingency = statistics_pass(study, workers, seeds, "contingency", thresholds, progress)
    return {"ranges": ranges, "histograms": histograms, "contingency": contingency, "levels": levels}


# --- the stage --------------------------------------------------------------------------------------


def _write(group, name: str, value, dims: tuple[str, ...]) -> None:
    value = np.asarray(value)
    group.create_array(name, shape=value.shape, dtype=value.dtype, overwrite=True,
                       dimension_names=dims[:value.ndim])[...] = value


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


class _Workers:
    """Actors started on first use and killed at the end."""

    def __init__(self, study: Study, name: str):
        self.study, self.name, self.actors = study, name, None

    def get(self) -> list:
        import ray

        if self.actors is None:
            n_workers, resources = worker_resources(self.study.sample.device, self.study.sample.workers)
            n_workers = min(n_workers, max(1, -(-self.study.dissect.samples // self.study.dissect.chunk_size)))
            threads = max(1, int(resources["num_cpus"]))
            if "num_gpus" not in resources:  # leave a CPU free for the Dask merge tasks
                total = ray.cluster_resources().get("CPU", 1)
                resources = {"num_cpus": min(resources["num_cpus"], max(0.25, (total - 1) / n_workers))}
            actor = ray.remote(max_restarts=2, max_task_retries=2)(DissectWorker)
            self.actors = [actor.options(**resources).remote(self.study, self.name, threads) for _ in range(n_workers)]
            try:
                ray.get([a.ready.remote() for a in self.actors])
            except ray.exceptions.RayError as e:
                raise _translate(e, "starting the workers") from None
        return self.actors

    def close(self) -> None:
        import ray

        for actor in self.actors or []:
            ray.kill(actor)


def run(study: Study, *, address: str | None = None) -> dict:
    """The dissect stage: every generator of `dissect.generators` (default: all), resuming what is
    stored. Returns {"computed": [...], "skipped": [...]}."""
    if study.dissect is None:
        return {"skipped": "the study has no dissect section"}
    root = schema.open_store(study.store, study.storage_options)
    computed = []
    for name in generators_of(study):
        inputs = stage.inputs(study, root, NAME, name)
        fp = digest(inputs)
        if (ledger.entry(root, NAME, name) or {}).get("fingerprint") == fp and root.get(f"dissect/{name}") is not None:
            continue
        init_ray(address)
        t0 = time.time()
        workers = _Workers(study, name)
        try:
            dissect_generator(study, root, name, fp, workers)
        finally:
            workers.close()
        ledger.record(root, NAME, name, inputs, time.time() - t0)
        computed.append(name)
    return {"computed": computed, "skipped": [n for n in generators_of(study) if n not in computed]}


def dissect_generator(study: Study, root, name: str, fp: str, workers: _Workers) -> None:
    import ray

    from ganscale.progress import Progress

    settings = study.dissect
    group = root.get(f"dissect/{name}")
    if group is None or group.attrs.get("fingerprint") != fp:
        group = root.create_group(f"dissect/{name}", overwrite=True, attributes={"fingerprint": fp, "passes": []})
    passes = list(group.attrs.get("passes", []))
    seeds = sources.dataset_seeds(study.seed, f"dissect/{name}", settings.samples)
    layers = settings.layers
    levels = candidate_levels(settings.quantile)
    n_chunks = -(-len(seeds) // settings.chunk_size)

    def layer_group(layer):
        return group.require_group(layer)

    def finish(pass_name: str) -> None:
        passes.append(pass_name)
        group.attrs["passes"] = passes

    def run_pass(method: str, arg) -> dict:
        bar = Progress(f"dissect {name}: {method}", n_chunks, unit="chunks")
        try:
            return statistics_pass(study, workers.get(), seeds, method, arg, lambda: bar.advance(1))
        finally:
            bar.close()

    if "ranges" not in passes:
        ranges = run_pass("ranges", None)
        for layer, r in ranges.items():
            g = layer_group(layer)
            _write(g, "seeds", seeds, ("sample",))
            for key in ("low", "high"):
                _write(g, key, getattr(r, key), ("unit",))
            _write(g, "top_ids", r.top_ids, ("unit", "rank"))
            _write(g, "top_values", r.top_values, ("unit", "rank"))
        finish("ranges")
    bounds = {layer: (group[f"{layer}/low"][...], group[f"{layer}/high"][...]) for layer in layers}

    if "histograms" not in passes:
        histograms = run_pass("histograms", bounds)
        for layer, h in histograms.items():
            _write(layer_group(layer), "histogram", h.counts, ("unit", "bin"))
            _write(layer_group(layer), "quantile_value", h.quantiles([settings.quantile])[:, 0].astype(np.float32),
                   ("unit",))
            _write(layer_group(layer), "thresholds", h.quantiles(levels), ("unit", "candidate"))
        finish("histograms")
    thresholds = {layer: group[f"{layer}/thresholds"][...] for layer in layers}

    if "contingency" not in passes:
        contingency = run_pass("contingency", thresholds)
        info = ray.get(_call(workers.get()[0], "info"))
        class_names, size = info["classes"], info["stats_size"]
        for layer, c in contingency.items():
            g = layer_group(layer)
            _write(g, "intersection", c.intersection, ("unit", "class", "candidate"))
            _write(g, "unit_area", c.unit_area, ("unit", "candidate"))
            _write(g, "class_area", c.class_area, ("class",))
            label = stats.label_units(c, settings.threshold, levels.index(round(settings.quantile, 6)))
            _write(g, "label", label["class"].astype(np.int32), ("unit",))
            for key in ("iou", "iqr", "threshold"):
                _write(g, key, label[key].astype(np.float32), ("unit",))
            _write(g, "iou_all", label["iou_all"].astype(np.float32), ("unit", "class"))
            _write(g, "iqr_all", label["iqr_all"].astype(np.float32), ("unit", "class"))
            _write(g, "threshold_all", label["threshold_all"].astype(np.float32), ("unit", "class"))
            _write(g, "class_mean", c.class_mean().astype(np.float32), ("unit", "class"))
            g.attrs.update(_jsonable({"fingerprint": fp, "classes": class_names, "method": settings.threshold,
                                      "quantile": settings.quantile, "candidate_levels": levels,
                                      "stats_size": list(size), "pixels": c.pixels,
                                      "labels": stats.layer_summary(label, class_names, settings.iou_min)}))
        finish("contingency")

    for layer in layers:
        g = group[layer]
        if "results" in g.attrs:
            continue
        log.info("dissect %s %s: interventions", name, layer)
        results, arrays = layer_interventions(study, name, g, layer, workers)
        for key, (value, dims) in arrays.items():
            _write(g, key, value, dims)
        g.attrs["results"] = _jsonable(results)


def top_units(iou_all: np.ndarray, cls: int, k: int) -> np.ndarray:
    """The k units with the highest IoU for class `cls` (ties: lower unit first)."""
    return np.argsort(-iou_all[:, cls], kind="stable")[:k]


def panel_units(label: np.ndarray, iou: np.ndarray, n: int) -> list[int]:
    """Units for the report: the best unit of each concept first (by IoU), then the rest by IoU."""
    order = [int(u) for u in np.argsort(-iou, kind="stable")]
    best: dict[int, int] = {}
    for u in order:
        best.setdefault(int(label[u]), u)
    first = sorted(best.values(), key=lambda u: -iou[u])
    return (first + [u for u in order if u not in first])[:n]


def layer_interventions(study: Study, name: str, g, layer: str, workers: _Workers) -> tuple[dict, dict]:
    """The layer's intervention tasks on the workers: per class with an interpretable unit, the
    switch effect, insertion map and downstream trace of its top-k units; artifact units; pictures."""
    import ray

    settings = study.dissect
    class_names = list(g.attrs["classes"])
    iou_all, high = g["iou_all"][...], g["quantile_value"][...]
    label, iou, threshold_all = g["label"][...], g["iou"][...], g["threshold_all"][...]
    classes = [c for c in range(len(class_names)) if iou_all[:, c].max() > settings.iou_min]
    unit_sets = {c: top_units(iou_all, c, settings.top_k) for c in classes}
    class_mean = g["class_mean"][...]
    inserted = {c: high[unit_sets[c]] if settings.insertion == "quantile" else class_mean[unit_sets[c], c]
                for c in classes}
    tasks = [("class_effects", (layer, c, unit_sets[c].tolist(), inserted[c], MAP_SIDE, MAP_IMAGES))
             for c in classes]
    shown = panel_units(label, iou, PANEL_UNITS)
    top_ids = g["top_ids"][...]
    seeds = g["seeds"][...].tolist()
    tasks.append(("panels", (layer, shown, [top_ids[u].tolist() for u in shown],
                             [float(threshold_all[u, label[u]]) for u in shown], seeds)))
    tasks.append(("pictures", (layer, [unit_sets[c].tolist() for c in classes], [inserted[c] for c in classes])))
    try:
        out = run_tasks_shown(f"dissect {name} {layer}: interventions", workers.get(), tasks)
    except ray.exceptions.RayError as e:
        raise _translate(e, f"the interventions on {layer}") from None
    effects, panels, pictures = out[:len(classes)], out[len(classes)], out[len(classes) + 1]
    results = {"labels": dict(g.attrs["labels"]), "interventions": {}, "insertion_maps": {}, "downstream": {}}
    for c, res in zip(classes, effects):
        res["effect"]["ious"] = iou_all[unit_sets[c], c].tolist()
        res["effect"]["inserted_values"] = inserted[c].tolist()
        results["interventions"][class_names[c]] = res["effect"]
        results["insertion_maps"][class_names[c]] = res["insertion_map"]
        results["downstream"][class_names[c]] = res["downstream"]
    arrays = {"panel_units": (np.asarray(shown, np.int32), ("panel",)),
              "panel_images": (panels["images"], ("panel", "image", "y", "x", "rgb")),
              "panel_masks": (panels["masks"], ("panel", "image", "y", "x")),
              "intervention_images": (pictures, ("class", "switch", "image", "y", "x", "rgb"))}
    real = _real_moments(study) if settings.artifact_samples >= 4 else None
    if real is not None:
        results["artifacts"], artifact_arrays = artifact_units(study, name, layer, workers, real, high)
        arrays.update(artifact_arrays)
    return results, arrays


def artifact_units(study: Study, name: str, layer: str, workers: _Workers, real, high: np.ndarray) -> tuple[dict, dict]:
    """Artifact units (Bau et al. 2019, section 4.3 and table 1). The `artifact_samples` seeds are
    split in halves. Ranking half: each unit's peak activation per image (chunks on the workers);
    for each unit, the `artifact_share` of those images where it peaks highest; its score is the
    diagonal Fréchet distance of those images to the real features minus the distance with the unit ablated
    alone (the improvement; blocks of units on the workers). The `artifact_units` best units are then
    scored on the held-out half, against as many random units, on the images where the chosen units
    are most active (the paper's table) and on all held-out images."""
    import ray

    settings = study.dissect
    seeds = sources.dataset_seeds(study.seed, f"dissect/{name}/artifacts", settings.artifact_samples)
    half = len(seeds) // 2
    rank, held = seeds[:half], seeds[half:]
    step = settings.chunk_size
    try:
        peaks = np.concatenate(run_tasks_shown(
            f"dissect {name} {layer}: artifact peaks", workers.get(),
            [("unit_peaks", (layer, rank[s:s + step].tolist())) for s in range(0, half, step)], "chunks"))
        units = peaks.shape[1]
        per_unit = max(2, int(np.ceil(settings.artifact_share * half)))
        top_seeds = [rank[np.argsort(-peaks[:, u], kind="stable")[:per_unit]].tolist() for u in range(units)]
        real_ref = ray.put((real.mean, np.diag(real.cov)))
        blocks = [list(range(u0, min(units, u0 + ARTIFACT_BLOCK))) for u0 in range(0, units, ARTIFACT_BLOCK)]
        scores = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in run_tasks_shown(
            f"dissect {name} {layer}: artifact ranking", workers.get(),
            [("artifact_scores", (layer, block, [top_seeds[u] for u in block], real_ref)) for block in blocks],
            "unit blocks")])
        improvement = scores[:, 0] - scores[:, 1]
        k = min(settings.artifact_units, units)
        top = np.argsort(-improvement, kind="stable")[:k]
        others = np.setdiff1d(np.arange(units), top)  # the baseline: as many random units among the others
        random_units = np.sort(np.random.default_rng(study.seed).choice(others, size=min(k, len(others)),
                                                                        replace=False))
        status(f"dissect {name} {layer}: artifact table on {len(held)} held-out images")
        table = ray.get(_call(workers.get()[0], "artifact_table", layer, top.tolist(), random_units.tolist(), high,
                              real_ref, held.tolist(), settings.artifact_share))
    except ray.exceptions.RayError as e:
        raise _translate(e, f"the artifact units of {layer}") from None
    pictures = table.pop("pictures")
    results = {"score": f"diagonal-covariance Fréchet distance to {_artifact_reference(study)} on {study.probe.name} "
                        f"{study.layers[-1]} spatially pooled features",
               "k": int(k), "units": top.tolist(), "improvement": improvement[top].tolist(),
               "top_images_distance": scores[top, 0].tolist(), "random_units": random_units.tolist(),
               "rank_samples": int(half), "images_per_unit": per_unit,
               "units_improving": int((improvement > 0).sum()), **table}
    arrays = {"artifact_before": (scores[:, 0].astype(np.float32), ("unit",)),
              "artifact_after": (scores[:, 1].astype(np.float32), ("unit",)),
              "artifact_images": (pictures, ("switch", "image", "y", "x", "rgb"))}
    return results, arrays


def _real_moments(study: Study):
    """Feature moments of the first real dataset's stored pooled features (last study layer); None
    when the study has no real dataset."""
    from ganscale.metrics import features as fm

    real = _artifact_reference(study)
    if real is None:
        return None
    root = schema.open_store(study.store, study.storage_options, mode="r")
    group = root.get(schema.dataset_path(real))
    path = f"layers/{study.layers[-1]}/pooled"
    if group is None or group.get(path) is None or not schema.done_chunks(group).all():
        raise GanscaleError(f"dissect: the artifact units need dataset {real} sampled; run sample first")
    array = group[path]
    total = None
    for start in range(0, array.shape[0], array.chunks[0]):
        part = fm.FeatureMoments.of(array[start:start + array.chunks[0]])
        total = part if total is None else total.merge(part)
    return total
