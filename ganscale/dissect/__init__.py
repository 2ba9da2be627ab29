"""Stage 5, dissect: which units of a generator layer stand for which objects (Bau et al. 2019), and
what happens when they are switched off and on.

Ray actors (one per GPU, else CPU workers) host the generator and the segmenter and compute the
unit statistics of `ganscale.dissect.stats` chunk by chunk (`dissect.chunk_size` seeds); Dask merges
the partial results in a tree on the cluster, so no worker holds more than a chunk and the result
does not depend on how the chunks were split (tested). A Ray task then runs the interventions.

Stored under dissect/{generator}/{layer}/ (recomputed when the study's dissect inputs change):

    attrs: fingerprint, classes, method, quantile, candidate_levels, results (JSON: labels summary,
           interventions, insertion maps, downstream tracing, artifact units)
    seeds         int64   [N]        the seeds dissected (sample i = generator image of seeds[i])
    low, high     float64 [U]        per-unit activation range (upsampled featuremaps)
    histogram     int64   [U, 1024]  per-unit activation histogram over [low, high]
    thresholds    float64 [U, J]     candidate thresholds: the quantiles `candidate_levels` of each unit
    intersection  float64 [U, C, J]  pixels with unit above threshold j and class c present
    unit_area     float64 [U, J]     pixels with unit above threshold j
    class_area    float64 [C]        pixels of class c
    label         int32   [U]        best class per unit (highest IoU)
    iou, iqr, threshold float32 [U]  at the chosen threshold (quantile or IQR-maximising)
    top_ids       int64   [U, k]     sample ids with the highest peak activation of the unit
"""

from __future__ import annotations

import logging
import time

import dask
import numpy as np
import torch

from ganscale import schema, sources
from ganscale.dissect import intervene, stats
from ganscale.errors import GanscaleError
from ganscale.study import Study, digest

log = logging.getLogger("ganscale.dissect")

TOP_IMAGES = 8
# Candidate thresholds for the IQR search: quantile levels of each unit's activations, from the
# top 0.1% down to the top 30% (gandissect searches a comparable log-spaced range).
CANDIDATE_LEVELS = tuple(sorted(set(np.round(1 - np.logspace(-3, np.log10(0.3), 24), 6))))


def candidate_levels(quantile: float) -> list[float]:
    return sorted(set(CANDIDATE_LEVELS) | {round(quantile, 6)})


def generators_of(study: Study) -> list[str]:
    return study.dissect.generators or [n for n, d in study.datasets.items() if d.kind == "generator"]


def fingerprint(study: Study, generator: str) -> str:
    return digest({"dataset": study.datasets[generator].model_dump(mode="json"),
                   "dissect": study.dissect.model_dump(mode="json"), "seed": study.seed,
                   "probe": study.probe.model_dump(mode="json"), "layers": study.layers})


def build_segmenter(study: Study):
    from ganscale.models import registry

    spec = study.dissect.segmenter
    if ":" in spec.name:
        factory = registry._import_plugin(spec.name, "dissect.segmenter.name")
        return factory(weights=spec.weights) if spec.weights else factory()
    return registry.build_segmenter(spec.name, spec.weights, spec.sha256)


class DissectWorker:
    """Hosts one generator and the segmenter; computes the partial statistics of chunks of seeds."""

    def __init__(self, study: Study, generator: str, threads: int | None = None):
        from ganscale.models import registry
        from ganscale.sample import pick_device

        if threads:
            torch.set_num_threads(threads)
        self.study, self.name = study, generator
        self.device = pick_device(study.sample.device)
        self.generator = registry.build_generator(study.datasets[generator], f"datasets.{generator}",
                                                  study.storage_options).to(self.device)
        self.segmenter = build_segmenter(study).to(self.device)
        self.classes = len(self.segmenter.class_names)
        for layer in study.dissect.layers:
            intervene.layer_module(self.generator, layer)

    def _maps(self, seeds: np.ndarray):
        images, maps = intervene.featuremaps(self.generator, seeds.tolist(), self.study.dissect.layers)
        segmentation = self.segmenter(images)
        size = tuple(segmentation.shape[-2:])
        return segmentation, {layer: stats.upsample(m, size) for layer, m in maps.items()}

    @torch.no_grad()
    def ranges(self, seeds: np.ndarray, first_id: int) -> dict:
        _, maps = self._maps(seeds)
        ids = np.arange(first_id, first_id + len(seeds))
        return {layer: stats.UnitRange.of(m, ids, TOP_IMAGES) for layer, m in maps.items()}

    @torch.no_grad()
    def histograms(self, seeds: np.ndarray, bounds: dict) -> dict:
        _, maps = self._maps(seeds)
        return {layer: stats.UnitHistogram.of(m, *bounds[layer]) for layer, m in maps.items()}

    @torch.no_grad()
    def contingency(self, seeds: np.ndarray, thresholds: dict) -> dict:
        segmentation, maps = self._maps(seeds)
        return {layer: stats.Contingency.of(m, segmentation, thresholds[layer], self.classes)
                for layer, m in maps.items()}


def _merge(parts: list) -> dict:
    """Merge per-layer partials ({layer: partial}); parts may be Ray object refs (fetched here, on the worker)."""
    import ray

    parts = [ray.get(p) if isinstance(p, ray.ObjectRef) else p for p in parts]
    out = dict(parts[0])
    for part in parts[1:]:
        out = {layer: out[layer].merge(value) for layer, value in part.items()}
    return out


def reduce_partials(refs: list, fan_in: int = 8) -> dict:
    """A Dask tree of merges over the workers' partial results (Dask-on-Ray when Ray is attached)."""
    from ganscale.atlas import dask_scheduler

    parts = [dask.delayed(_merge)([r]) for r in refs]
    while len(parts) > 1:
        parts = [dask.delayed(_merge)(parts[i:i + fan_in]) for i in range(0, len(parts), fan_in)]
    return dask.compute(parts[0], scheduler=dask_scheduler())[0]


def unit_statistics(study: Study, generator: str, workers: list, seeds: np.ndarray, progress=None) -> dict:
    """The three passes over chunks of `seeds`, spread over `workers` (actors or local objects)."""
    import ray

    step = study.dissect.chunk_size
    chunks = [(s, seeds[s:s + step]) for s in range(0, len(seeds), step)]

    def run_pass(method: str, *args):
        refs = []
        for i, (start, chunk) in enumerate(chunks):
            worker = workers[i % len(workers)]
            call = getattr(worker, method)
            extra = (start,) if method == "ranges" else args
            refs.append(call.remote(chunk, *extra) if hasattr(call, "remote") else ray.put(call(chunk, *extra)))
        merged = reduce_partials(refs)
        if progress:
            progress(method)
        return merged

    ranges = run_pass("ranges")
    histograms = run_pass("histograms", {layer: (r.low, r.high) for layer, r in ranges.items()})
    levels = candidate_levels(study.dissect.quantile)
    thresholds = {layer: h.quantiles(levels) for layer, h in histograms.items()}
    contingency = run_pass("contingency", thresholds)
    return {"ranges": ranges, "histograms": histograms, "contingency": contingency, "levels": levels}


def run(study: Study, *, address: str | None = None) -> dict:
    import ray

    from ganscale.sample import init_ray, worker_resources

    if study.dissect is None:
        return {"skipped": "the study has no dissect section"}
    t_start = time.time()
    root = schema.open_store(study.store, study.storage_options)
    stages = dict(root.attrs.get("stages", {}))
    done = dict(stages.get("dissect", {}).get("generators", {}))
    init_ray(address)
    computed = []
    for name in generators_of(study):
        fp = fingerprint(study, name)
        if done.get(name, {}).get("fingerprint") == fp:
            continue
        t0 = time.time()
        seeds = sources.dataset_seeds(study.seed, f"dissect/{name}", study.dissect.samples)
        n_workers, resources = worker_resources(study, None)
        n_workers = min(n_workers, -(-len(seeds) // study.dissect.chunk_size))
        threads = max(1, int(resources["num_cpus"]))
        if "num_gpus" not in resources:  # leave a CPU free for the Dask merge tasks that run between passes
            total = ray.cluster_resources().get("CPU", 1)
            resources = {"num_cpus": min(resources["num_cpus"], max(0.25, (total - 1) / n_workers))}
        actor = ray.remote(max_restarts=2, max_task_retries=2)(DissectWorker)
        workers = [actor.options(**resources).remote(study, name, threads) for _ in range(n_workers)]
        try:
            ray.get([w.__ray_ready__.remote() for w in workers])
        except ray.exceptions.RayActorError as e:
            from ganscale.sample import _actor_failure

            raise GanscaleError(_actor_failure(e, ("dissect", 0))) from None
        try:
            unit = unit_statistics(study, name, workers, seeds, progress=lambda p: log.info("dissect %s: %s pass", name, p))
        finally:
            for w in workers:
                ray.kill(w)
        labels = {layer: stats.label_units(unit["contingency"][layer], study.dissect.threshold,
                                           unit["levels"].index(round(study.dissect.quantile, 6)))
                  for layer in study.dissect.layers}
        quantile_values = {layer: unit["histograms"][layer].quantiles([study.dissect.quantile])[:, 0]
                           for layer in study.dissect.layers}
        from ganscale.metrics.stage import _task_options

        results = ray.get(ray.remote(intervention_task).options(**_task_options()).remote(
            study, name, {layer: {k: np.asarray(v).tolist() for k, v in lab.items()} for layer, lab in labels.items()},
            {layer: q.tolist() for layer, q in quantile_values.items()}))
        write_generator(root, study, name, seeds, unit, labels, results, fp)
        done[name] = {"fingerprint": fp, "seconds": round(time.time() - t0, 2)}
        computed.append(name)
        stages = dict(root.attrs.get("stages", {}))
        stages["dissect"] = {"generators": done, "seconds": round(time.time() - t_start, 2), "fingerprint": digest(done)}
        root.attrs["stages"] = stages
    return {"computed": computed, "skipped": [n for n in generators_of(study) if n not in computed]}


def layer_summary(label: dict, class_names: list[str], iou_min: float) -> dict:
    interpretable = np.asarray(label["iou"]) > iou_min
    concepts: dict[str, int] = {}
    for c in np.asarray(label["class"])[interpretable]:
        concepts[class_names[int(c)]] = concepts.get(class_names[int(c)], 0) + 1
    order = np.argsort(-np.asarray(label["iou"]), kind="stable")
    return {"units": len(interpretable), "interpretable": int(interpretable.sum()), "concepts": concepts,
            "distinct_concepts": len(concepts), "iou_min": iou_min,
            "top_units": [{"unit": int(u), "class": class_names[int(label["class"][u])],
                           "iou": float(label["iou"][u]), "iqr": float(label["iqr"][u]),
                           "threshold": float(label["threshold"][u])} for u in order[:10]]}


def write_generator(root, study: Study, name: str, seeds, unit: dict, labels: dict, results: dict, fp: str) -> None:
    for layer in study.dissect.layers:
        group = root.create_group(f"dissect/{name}/{layer}", overwrite=True)
        c = unit["contingency"][layer]
        r = unit["ranges"][layer]
        lab = labels[layer]
        arrays = {"seeds": seeds, "low": r.low, "high": r.high, "histogram": unit["histograms"][layer].counts,
                  "thresholds": c.thresholds, "intersection": c.intersection, "unit_area": c.unit_area,
                  "class_area": c.class_area, "label": lab["class"].astype(np.int32),
                  "iou": lab["iou"].astype(np.float32), "iqr": lab["iqr"].astype(np.float32),
                  "threshold": lab["threshold"].astype(np.float32), "top_ids": r.top_ids}
        for key, value in arrays.items():
            value = np.asarray(value)
            group.create_array(key, shape=value.shape, dtype=value.dtype)[...] = value
        class_names = results["class_names"]
        summary = layer_summary(lab, class_names, study.dissect.iou_min)
        group.attrs.update({"fingerprint": fp, "classes": class_names, "method": study.dissect.threshold,
                            "quantile": study.dissect.quantile, "candidate_levels": unit["levels"],
                            "results": {"labels": summary, **results["layers"][layer]}})


def intervention_task(study: Study, name: str, labels: dict, quantile_values: dict) -> dict:
    """Ablation and insertion of each class's top units, insertion maps, downstream tracing and
    artifact units, on `dissect.intervention_samples` fresh seeds (Ray task, GPU when there is one)."""
    from ganscale.metrics.stage import _device, _threads

    _threads()
    device = _device()
    from ganscale.models import registry

    generator = registry.build_generator(study.datasets[name], f"datasets.{name}", study.storage_options).to(device)
    segmenter = build_segmenter(study).to(device)
    class_names = list(segmenter.class_names)
    seeds = sources.dataset_seeds(study.seed, f"dissect/{name}/interventions", study.dissect.intervention_samples)
    intervene.check_deterministic(generator, seeds[:4].tolist(), f"datasets.{name}")
    out = {"class_names": class_names, "layers": {}}
    artifact = artifact_scorer(study, name)
    for layer in study.dissect.layers:
        lab = {k: np.asarray(v) for k, v in labels[layer].items()}
        high = torch.as_tensor(quantile_values[layer], dtype=torch.float32)
        layer_out = {"interventions": {}, "insertion_maps": {}, "downstream": {}}
        base_images = intervene.render_batched(generator, seeds.tolist())
        base_seg = segment(segmenter, base_images)
        later = intervene.later_layers(generator, layer, getattr(generator, "layer_names", study.dissect.layers))
        for c, cname in enumerate(class_names):
            units = np.argsort(-lab["iou_all"][:, c], kind="stable")[:study.dissect.top_k]
            if lab["iou_all"][units[0], c] <= study.dissect.iou_min:
                continue  # no unit of this layer stands for the class
            base = float((base_seg == c).float().mean())
            with intervene.intervention(generator, layer, units, 0.0):
                ablated = float((segment(segmenter, intervene.render_batched(generator, seeds.tolist())) == c).float().mean())
            with intervene.intervention(generator, layer, units, high[units]):
                inserted = float((segment(segmenter, intervene.render_batched(generator, seeds.tolist())) == c).float().mean())
            layer_out["interventions"][cname] = {
                "units": units.tolist(), "ious": lab["iou_all"][units, c].tolist(), "base_fraction": base,
                "ablated_fraction": ablated, "inserted_fraction": inserted,
                "removed_share": 1 - ablated / base if base > 0 else None, "ace": inserted - ablated}
            layer_out["insertion_maps"][cname] = insertion_map(generator, segmenter, layer, units, high[units], c,
                                                              seeds[:64].tolist(), base_seg[:64])
            layer_out["downstream"][cname] = intervene.downstream_change(generator, seeds[:64].tolist(), layer,
                                                                         units, high[units], later)
        if artifact is not None:
            layer_out["artifacts"] = artifact_units(study, generator, layer, seeds, artifact)
        out["layers"][layer] = layer_out
    return out


@torch.no_grad()
def segment(segmenter, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    return torch.cat([segmenter(images[i:i + batch]) for i in range(0, len(images), batch)])


MAP_SIDE = 8  # insertion maps probe at most an 8x8 grid of featuremap pixels


@torch.no_grad()
def insertion_map(generator, segmenter, layer: str, units, values, cls: int, seeds: list[int], base_seg) -> dict:
    """Where inserting the units at one featuremap pixel adds the class: mean increase of the
    class's pixel share per inserted pixel position (seed 004's doors)."""
    _, maps = intervene.featuremaps(generator, seeds[:1], [layer])
    h, w = maps[layer].shape[-2:]
    ys = np.unique(np.linspace(0, h - 1, min(h, MAP_SIDE)).round().astype(int))
    xs = np.unique(np.linspace(0, w - 1, min(w, MAP_SIDE)).round().astype(int))
    base = (base_seg == cls).float().mean().item()
    gain = np.zeros((len(ys), len(xs)))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            where = torch.zeros(h, w)
            where[y, x] = 1
            with intervene.intervention(generator, layer, units, values, where):
                seg = segment(segmenter, intervene.render_batched(generator, seeds))
            gain[i, j] = (seg == cls).float().mean().item() - base
    return {"rows": ys.tolist(), "cols": xs.tolist(), "gain": gain.tolist()}


def artifact_scorer(study: Study, name: str):
    """FID-like score of generated images against the first real dataset: Fréchet distance of the
    probe's pooled features of the last study layer (stored by the sample stage)."""
    from ganscale.metrics import features as fm
    from ganscale.metrics.stage import real_datasets, stored_moments
    from ganscale.models import registry

    reals = real_datasets(study)
    root = schema.open_store(study.store, study.storage_options, mode="r")
    if not reals or root.get(f"{schema.dataset_path(reals[0])}/layers/{study.layers[-1]}/pooled") is None:
        return None
    layer = study.layers[-1]
    real = stored_moments(study, root, reals[0], f"layers/{layer}/pooled")
    probe = registry.build_probe(study.probe, study.storage_options).only([layer]).to(_device_of())

    @torch.no_grad()
    def score(images: torch.Tensor) -> float:
        feats = []
        for i in range(0, len(images), 256):
            maps, _ = probe(sources.resize_square(images[i:i + 256].to(_device_of()), probe.input_size))
            feats.append(maps[layer].float().mean((2, 3)).cpu().numpy())
        return fm.frechet_distance_from_moments(real, fm.FeatureMoments.of(np.concatenate(feats)))

    score.description = f"Fréchet distance to {reals[0]} on {study.probe.name} {layer} pooled features"
    return score


def _device_of():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def artifact_units(study: Study, generator, layer: str, seeds: np.ndarray, score) -> dict:
    """Rank units by how much ablating each alone lowers the score on the first half of the seeds;
    then, on the other half, the score before and after ablating the top-k artifact units, against
    ablating k random units (seed 004's table)."""
    k = study.dissect.artifact_units
    half = len(seeds) // 2
    rank_seeds, test_seeds = seeds[:half].tolist(), seeds[half:].tolist()
    base = score(intervene.render_batched(generator, rank_seeds))
    _, maps = intervene.featuremaps(generator, rank_seeds[:1], [layer])
    units = maps[layer].shape[1]
    improvement = np.zeros(units)
    for u in range(units):
        with intervene.intervention(generator, layer, [u], 0.0):
            improvement[u] = base - score(intervene.render_batched(generator, rank_seeds))
    top = np.argsort(-improvement, kind="stable")[:k]
    random_units = np.random.default_rng(study.seed).choice(units, size=min(k, units), replace=False)
    before = score(intervene.render_batched(generator, test_seeds))
    with intervene.intervention(generator, layer, top, 0.0):
        after_top = score(intervene.render_batched(generator, test_seeds))
    with intervene.intervention(generator, layer, random_units, 0.0):
        after_random = score(intervene.render_batched(generator, test_seeds))
    return {"score": score.description, "k": int(k), "samples": len(test_seeds), "units": top.tolist(),
            "improvement": improvement[top].tolist(), "before": before, "after_top": after_top,
            "random_units": random_units.tolist(), "after_random": after_random}
