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

Stored under dissect/{generator}/ (attrs: fingerprint, classes, passes: finished passes, hookable,
faces_found {found, images} when the segmenter reports faces; arrays segmenter_images uint8
[n, h, w, 3] and segmenter_maps uint8 [n, h, w]: the first SEGMENTER_CHECK samples and their
segmentation) and dissect/{generator}/{layer}/ (U units, C classes, J candidate thresholds, N samples;
attrs featuremap [U, h, w]):

    attrs: fingerprint, classes, method, quantile, candidate_levels [J], stats_size [2], pixels,
           labels (summary: interpretable units and concepts by IoU, and by IoU and IQR > 0.01,
           best unit per class, top units),
           results (JSON, once the layer's interventions are done): labels, interventions {class:
           units, their IoUs, class share before / ablated / inserted, removed share and its
           removed_ci95 over images, random {units, removed_share, removed_ci95}: as many random
           units ablated instead, ACE, images with the class and cleared}, interventions_left_out
           (an exported generator: why there are none), insertion_maps {class: featuremap pixels probed, gain and
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

import contextlib
import logging

import dask
import numpy as np

from ganscale import schema, sources, stage
from ganscale.dissect import artifacts, plan, stats, worker
from ganscale.errors import EnvironmentFailure, GanscaleError
from ganscale.partials import reduce_stored, tree_reduce
from ganscale.progress import status
from ganscale.runtime import Actors, Task, dask_scheduler, init_ray, run_on_actors, worker_failure, worker_resources
from ganscale.study import Study

log = logging.getLogger("ganscale.dissect")

DISSECT_VERSION = 5  # bump when stored results change meaning

NAME, ITEM, READS = "dissect", "generator", ("sample",)
SEGMENTER_CHECK = 64  # dissected samples the report shows segmented (and counts faces found in)


def items(study: Study) -> list[str]:
    return study.dissected()


def reads(study: Study, generator: str) -> list[tuple[str, str]]:
    """The artifact units read the reference dataset's stored features; nothing else comes from the store."""
    real = study.artifact_reference()
    return [("sample", real)] if real is not None and study.dissect.artifact_samples >= 4 else []


def settings(study: Study, generator: str) -> dict:
    return {"version": DISSECT_VERSION, "dataset": study.datasets[generator].model_dump(mode="json", exclude={"about"}),
            "dissect": study.dissect_for(generator).model_dump(mode="json", exclude={"per_generator"}),
            "seed": study.seed,
            "probe": study.probe.model_dump(mode="json"), "layers": study.layers, "real": study.artifact_reference()}


def missing(study: Study, root, generator: str) -> str:
    return "" if root.get(f"dissect/{generator}") is not None else f"the store has no group dissect/{generator}"


# --- distributing work --------------------------------------------------------------------------


def _call(actor, method: str, *args):
    """An ObjectRef of actor.method(*args): remote for Ray actors, computed here and put for local
    objects (tests, benchmarks)."""
    import ray

    call = getattr(actor, method)
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


def _translate(error: Exception, what: str) -> Exception:
    """One line for a failure of the dissect workers: a GanscaleError raised in one (bad input, exit
    2), an error raised by the generator or segmenter in a task (exit 2, as before), and a worker
    that died or was killed for memory (runtime.worker_failure: the environment, exit 1)."""
    import ray

    if isinstance(error, ray.exceptions.RayTaskError) and not isinstance(error, ray.exceptions.RayActorError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, GanscaleError):
            return GanscaleError(str(cause))
        if isinstance(cause, (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError)):
            return worker_failure(cause, f"dissect: {what}")
        return GanscaleError(f"dissect: {what} failed: {str(cause or error).strip().splitlines()[-1]}")
    if isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError)):
        return worker_failure(error, f"dissect: {what}")
    if isinstance(error, (GanscaleError, EnvironmentFailure)):
        return error
    return GanscaleError(f"dissect: {what} failed: {error}")


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
    levels = plan.candidate_levels(study.dissect.quantile)
    thresholds = {layer: h.quantiles(levels) for layer, h in histograms.items()}
    contingency = statistics_pass(study, workers, seeds, "contingency", thresholds, progress)
    return {"ranges": ranges, "histograms": histograms, "contingency": contingency, "levels": levels}


# --- the stage --------------------------------------------------------------------------------------


def _write(group, name: str, value, dims: tuple[str, ...]) -> None:
    value = np.asarray(value)
    group.create_array(name, shape=value.shape, dtype=value.dtype, overwrite=True,
                       dimension_names=dims[:value.ndim])[...] = value


def start_workers(study: Study, generator: str) -> Actors:
    """The generator's DissectWorkers (its models built and checked on each before anything is
    written), started when first needed; a CPU left free for the Dask merges."""
    import ray

    n_workers, resources = worker_resources(study.sample.device, study.sample.workers)
    n_workers = min(n_workers, max(1, -(-study.dissect_for(generator).samples // study.dissect.chunk_size)))
    threads = max(1, int(resources["num_cpus"]))
    if "num_gpus" not in resources:
        total = ray.cluster_resources().get("CPU", 1)
        resources = {"num_cpus": min(resources["num_cpus"], max(0.25, (total - 1) / n_workers))}
    return Actors(worker.DissectWorker, n_workers, resources, study, generator, threads,
                  what="dissect: starting the workers", ready="ready", restarts=2, task_retries=2)


@contextlib.contextmanager
def workers(study: Study, root, todo: list[str], address: str | None = None):
    init_ray(address)
    yield None


def run_item(study: Study, root, name: str, _) -> dict:
    """Dissect one generator, resuming the passes stored for the same inputs."""
    with start_workers(study, name) as actors:
        actors.get()
        dissect_generator(study, root, name, stage.resume_key(root, settings(study, name), reads(study, name)), actors)
    return {}


def dissect_generator(study: Study, root, name: str, fp: str, workers: Actors) -> None:
    import ray

    from ganscale.progress import Progress

    settings = study.dissect_for(name)
    group = root.get(f"dissect/{name}")
    if group is None or group.attrs.get("fingerprint") != fp:
        group = root.create_group(f"dissect/{name}", overwrite=True, attributes={"fingerprint": fp, "passes": []})
    passes = list(group.attrs.get("passes", []))
    seeds = sources.dataset_seeds(study.seed, f"dissect/{name}", settings.samples)
    layers = settings.layers
    levels = plan.candidate_levels(settings.quantile)
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
            for key, value in r.to_arrays().items():  # low, high, top_values, top_ids
                _write(g, key, value, ("unit", "rank"))
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
            write_contingency(layer_group(layer), c, settings, levels, class_names, size, fp)
            layer_group(layer).attrs["featuremap"] = info["featuremaps"][layer]  # [units, h, w]
        group.attrs["hookable"] = info["hookable"]
        finish("contingency")

    if "segmenter_check" not in passes:
        check = ray.get(_call(workers.get()[0], "segmenter_check", SEGMENTER_CHECK))
        _write(group, "segmenter_images", check["images"], ("sample", "y", "x", "rgb"))
        _write(group, "segmenter_maps", check["maps"], ("sample", "y", "x"))
        if check["found"] is not None:
            group.attrs["faces_found"] = {"found": int(check["found"].sum()), "images": int(len(check["found"]))}
        finish("segmenter_check")

    for layer in layers:
        g = group[layer]
        if "results" in g.attrs:
            continue
        log.info("dissect %s %s: interventions", name, layer)
        results, arrays = layer_interventions(study, name, g, layer, workers, group.attrs.get("hookable", True))
        for key, (value, dims) in arrays.items():
            _write(g, key, value, dims)
        g.attrs["results"] = schema.plain(results)


def write_contingency(g, c, settings, levels: list[float], class_names: list[str], size, fp: str) -> None:
    """A layer's merged contingency counts, and the labels, IoU and IQR of each unit they give."""
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
    g.attrs.update(schema.plain({"fingerprint": fp, "classes": class_names, "method": settings.threshold,
                                 "quantile": settings.quantile, "candidate_levels": levels,
                                 "stats_size": list(size), "pixels": c.pixels,
                                 "labels": stats.layer_summary(label, class_names, settings.iou_min)}))


INTERVENTIONS_LEFT_OUT = ("the generator is an exported model (no torch module to hook): its units are "
                          "dissected from featuremaps of named nodes, but cannot be switched off or on")


def layer_interventions(study: Study, name: str, g, layer: str, workers: Actors,
                        hookable: bool = True) -> tuple[dict, dict]:
    """The layer's intervention tasks on the workers: per class with an interpretable unit, the
    switch effect (against as many random units), insertion map and downstream trace of its top-k
    units; artifact units; pictures. An exported generator gets the unit panels only."""
    import ray

    settings = study.dissect_for(name)
    class_names = list(g.attrs["classes"])
    iou_all, high = g["iou_all"][...], g["quantile_value"][...]
    label, iou, threshold_all = g["label"][...], g["iou"][...], g["threshold_all"][...]
    classes, unit_sets, inserted = plan.intervention_units(settings, iou_all, high, g["class_mean"][...])
    if not hookable:
        classes = []
    tasks = [("class_effects", (layer, c, unit_sets[c].tolist(), inserted[c],
                                plan.random_units(len(high), unit_sets[c], study.seed + c).tolist()))
             for c in classes]
    shown = plan.panel_units(label, iou, plan.PANEL_UNITS)
    top_ids = g["top_ids"][...]
    seeds = g["seeds"][...].tolist()
    tasks.append(("panels", (layer, shown, [top_ids[u].tolist() for u in shown],
                             [float(threshold_all[u, label[u]]) for u in shown], seeds)))
    if hookable:
        tasks.append(("pictures", (layer, [unit_sets[c].tolist() for c in classes], [inserted[c] for c in classes])))
    try:
        out = run_tasks_shown(f"dissect {name} {layer}: interventions", workers.get(), tasks)
    except ray.exceptions.RayError as e:
        raise _translate(e, f"the interventions on {layer}") from None
    effects, panels = out[:len(classes)], out[len(classes)]
    pictures = out[len(classes) + 1] if hookable else np.zeros((0, 3, 0, 1, 1, 3), np.uint8)
    results = plan.intervention_results(dict(g.attrs["labels"]), class_names, classes, unit_sets, inserted, iou_all,
                                        effects)
    if not hookable:
        results["interventions_left_out"] = INTERVENTIONS_LEFT_OUT
    arrays = {"panel_units": (np.asarray(shown, np.int32), ("panel",)),
              "panel_images": (panels["images"], ("panel", "image", "y", "x", "rgb")),
              "panel_masks": (panels["masks"], ("panel", "image", "y", "x")),
              "intervention_images": (pictures, ("class", "switch", "image", "y", "x", "rgb"))}
    real = _real_moments(study) if settings.artifact_samples >= 4 and hookable else None
    if real is not None:
        results["artifacts"], artifact_arrays = artifact_units(study, name, layer, workers, real, high)
        arrays.update(artifact_arrays)
    return results, arrays


def artifact_units(study: Study, name: str, layer: str, workers: Actors, real, high: np.ndarray) -> tuple[dict, dict]:
    """Artifact units (`ganscale.dissect.artifacts`): peaks on the ranking half (chunks on the
    workers), each unit scored ablated alone (blocks of units on the workers), the table of the best
    units on the held-out half (one worker)."""
    import ray

    settings = study.dissect_for(name)
    rank, held = artifacts.split(sources.dataset_seeds(study.seed, f"dissect/{name}/artifacts",
                                                       settings.artifact_samples))
    step = settings.chunk_size
    try:
        peaks = np.concatenate(run_tasks_shown(
            f"dissect {name} {layer}: artifact peaks", workers.get(),
            [("unit_peaks", (layer, rank[s:s + step].tolist())) for s in range(0, len(rank), step)], "chunks"))
        per_unit = artifacts.images_per_unit(settings.artifact_share, len(rank))
        top_seeds = artifacts.top_seeds(peaks, rank, per_unit)
        real_ref = ray.put((real.mean, np.diag(real.cov)))
        scores = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in run_tasks_shown(
            f"dissect {name} {layer}: artifact ranking", workers.get(),
            [("artifact_scores", (layer, block, [top_seeds[u] for u in block], real_ref))
             for block in artifacts.blocks(peaks.shape[1])],
            "unit blocks")])
        improvement, top, random_units = artifacts.choose(scores, settings.artifact_units, study.seed)
        status(f"dissect {name} {layer}: artifact table on {len(held)} held-out images")
        table = ray.get(_call(workers.get()[0], "artifact_table", layer, top.tolist(), random_units.tolist(), high,
                              real_ref, held.tolist(), settings.artifact_share))
    except ray.exceptions.RayError as e:
        raise _translate(e, f"the artifact units of {layer}") from None
    score = (f"diagonal-covariance Fréchet distance to {study.artifact_reference()} on {study.probe.name} "
             f"{study.layers[-1]} spatially pooled features")
    return artifacts.results(score, scores, improvement, top, random_units, len(rank), per_unit, table)


def _real_moments(study: Study):
    """Feature moments of the first real dataset's stored pooled features (last study layer); None
    when the study has no real dataset."""
    from ganscale.metrics import features as fm

    real = study.artifact_reference()
    if real is None:
        return None
    root = schema.open_store(study.store, study.storage_options, mode="r")
    return reduce_stored(study, root, [real], f"layers/{study.layers[-1]}/pooled", fm.FeatureMoments.of, "sync",
                         fan_in=None)
