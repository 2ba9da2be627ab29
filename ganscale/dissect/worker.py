"""The dissect stage's worker: `DissectWorker` hosts one generator, the segmenter and (for artifact
units) the probe, and computes chunk partials of `ganscale.dissect.stats` and the intervention
tasks of `ganscale.dissect.intervene`. The stage runs it as a Ray actor (one per GPU, else CPU
workers); tests and benchmarks use it as a plain object. No store, no Ray, no ledger."""

from __future__ import annotations

import numpy as np
import torch

from ganscale import sources
from ganscale.dissect import artifacts, intervene, stats
from ganscale.errors import GanscaleError
from ganscale.images import measured
from ganscale.runtime import pick_device
from ganscale.study import Study

TOP_IMAGES = 8  # top-activating samples kept per unit
PANEL_IMAGES = 4
PICTURE_SEEDS = 4
THUMBNAIL = 128  # report thumbnails at most this side


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


def _built(method):
    """A task method that builds the models first (ready): Ray restarts a worker that died and sends
    its task again, to a fresh actor on which ready() never ran."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self.ready()
        return method(self, *args, **kwargs)
    return wrapper


class DissectWorker:
    """Hosts one generator, the segmenter and (when needed) the probe; computes chunk partials and
    intervention tasks. A Ray actor, or a plain object in one process."""

    def __init__(self, study: Study, generator: str, threads: int | None = None):
        # Models are built by ready(), not here: Ray prints a failed actor constructor's whole
        # traceback (and retries it), while a failed method returns one error.
        self.study, self.name, self.threads = study, generator, threads
        self.settings = study.dissect_for(generator)
        self.generator = None

    def ready(self) -> bool:
        """Build the generator, segmenter and hooks, and check the generator is deterministic: the
        checks that fail on bad weights or layer names. Call it first (the stage does)."""
        if self.generator is not None:
            return True
        from ganscale.models import registry

        study, generator = self.study, self.name
        if self.threads:
            torch.set_num_threads(self.threads)
        self.device = pick_device(study.sample.device)
        built = registry.build_generator(study.datasets[generator], f"datasets.{generator}",
                                         study.storage_options).to(self.device)
        self.segmenter = build_segmenter(study).to(self.device)
        self.class_names = list(self.segmenter.class_names)
        self.classes = len(self.class_names)
        self.batch = batch_size(study)
        intervene.check_layers(built, self.settings.layers, study.dissect_layers_field(generator))
        seeds = sources.dataset_seeds(study.seed, f"dissect/{generator}", 2).tolist()
        intervene.check_deterministic(built, seeds, f"datasets.{generator}")
        self._probe = None
        self.generator = built
        return True

    # -- unit statistics

    def _batches(self, seeds: np.ndarray, segment: bool):
        """Per batch: (real rows, {layer: maps at the statistics size}, segmentation at that size)."""
        layers = self.settings.layers
        for padded, keep in intervene.batches(seeds.tolist(), self.batch):
            images, maps = intervene.featuremaps(self.generator, padded, layers)
            size = stats.stats_size(tuple(images.shape[-2:]), self.settings.stats_side)
            segmentation = None
            if segment:
                segmentation = stats.subsample_segmentation(self.segmenter(images[:keep]), size)
            yield keep, {layer: stats.upsample(m[:keep], size) for layer, m in maps.items()}, segmentation

    @staticmethod
    def _add(total: dict | None, part: dict) -> dict:
        return part if total is None else {layer: total[layer].merge(p) for layer, p in part.items()}

    @torch.no_grad()
    @_built
    def ranges(self, seeds: np.ndarray, first_id: int) -> dict:
        total, done = None, 0
        for keep, maps, _ in self._batches(seeds, segment=False):
            ids = np.arange(first_id + done, first_id + done + keep)
            total = self._add(total, {layer: stats.UnitRange.of(m, ids, TOP_IMAGES) for layer, m in maps.items()})
            done += keep
        return total

    @torch.no_grad()
    @_built
    def histograms(self, seeds: np.ndarray, bounds: dict) -> dict:
        total = None
        for _, maps, _ in self._batches(seeds, segment=False):
            total = self._add(total, {layer: stats.UnitHistogram.of(m, *bounds[layer]) for layer, m in maps.items()})
        return total

    @torch.no_grad()
    @_built
    def contingency(self, seeds: np.ndarray, thresholds: dict) -> dict:
        total = None
        for _, maps, segmentation in self._batches(seeds, segment=True):
            total = self._add(total, {layer: stats.Contingency.of(m, segmentation, thresholds[layer], self.classes)
                                      for layer, m in maps.items()})
        return total

    @_built
    def info(self) -> dict:
        """The segmenter's class names, the statistics resolution, and whether units can be switched."""
        images, maps = intervene.featuremaps(self.generator, [0] * self.batch, self.settings.layers)
        return {"classes": self.class_names, "hookable": intervene.hookable(self.generator),
                "featuremaps": {layer: list(m.shape[1:]) for layer, m in maps.items()},
                "stats_size": list(stats.stats_size(tuple(images.shape[-2:]), self.settings.stats_side))}

    @torch.no_grad()
    @_built
    def segmenter_check(self, n: int) -> dict:
        """The segmenter on the first n dissected samples: thumbnails, class maps at the thumbnail
        size, and (when the segmenter reports it, as face_parts does) which images it found a face in."""
        seeds = sources.dataset_seeds(self.study.seed, f"dissect/{self.name}", self.settings.samples)[:n].tolist()
        thumbs, maps, found = [], [], []
        for padded, keep in intervene.batches(seeds, self.batch):
            images, _ = intervene.featuremaps(self.generator, padded, self.settings.layers)  # cached when exported
            segmentation = self.segmenter(images[:keep])
            if getattr(self.segmenter, "last_found", None) is not None:
                found.append(np.asarray(self.segmenter.last_found, bool))
            small = _thumbnails(images[:keep])
            side = small.shape[1]
            maps.append(torch.nn.functional.interpolate(segmentation[:, None].float(), size=(side, side),
                                                        mode="nearest")[:, 0].to(torch.uint8).cpu().numpy())
            thumbs.append(small)
        return {"images": np.concatenate(thumbs), "maps": np.concatenate(maps),
                "found": np.concatenate(found) if found else None}

    # -- interventions

    def _seeds(self) -> np.ndarray:
        return sources.dataset_seeds(self.study.seed, f"dissect/{self.name}/interventions",
                                     self.settings.intervention_samples)

    @torch.no_grad()
    @_built
    def class_effects(self, layer: str, cls: int, units: list[int], high: np.ndarray,
                      random_units: list[int] = ()) -> dict:
        """Ablation and insertion of `units` for class `cls`: the switch effect on every intervention
        seed (and the ablation of `random_units` instead); the insertion map (at most map_side x
        map_side pixels) and the downstream trace on the first `map_images` of them."""
        map_side, map_images = self.settings.map_side, self.settings.map_images
        value = torch.as_tensor(np.array(high, dtype=np.float32))
        seeds = self._seeds().tolist()
        few = seeds[:map_images]
        batch = min(self.batch, len(few))  # these compare renders of the same batches: any fixed shape will do
        later = intervene.later_layers(self.generator, layer, intervene.layer_order(self.generator, layer))
        effect = intervene.switch_effect(self.generator, self.segmenter, layer, units, value, cls, seeds,
                                         self.classes, self.batch, random_units)
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
        images = measured(self.study, images.to(self.device))  # the pixels the stored features were measured on
        maps, _ = self._probe(sources.resize_square(images, self._probe.input_size))
        return maps[layer].float().mean((2, 3)).cpu().numpy()

    def _features_of(self, image_batches) -> np.ndarray:
        return np.concatenate([self._probe_features(images) for images in image_batches()])

    def _distance(self, real):
        """score(image batches) -> diagonal Fréchet distance of their probe features to `real` (mean, var)."""
        def score(image_batches) -> float:
            return stats.diagonal_frechet(self._features_of(image_batches), *real)
        return score

    @torch.no_grad()
    @_built
    def unit_peaks(self, layer: str, seeds: list[int]) -> np.ndarray:
        """[n, U] float32: each image's peak activation of each unit of `layer`."""
        out = []
        for padded, keep in intervene.batches(seeds, self.batch):
            _, maps = intervene.featuremaps(self.generator, padded, [layer])
            out.append(maps[layer][:keep].amax((2, 3)).float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    @_built
    def artifact_scores(self, layer: str, units: list[int], seed_sets: list[list[int]], real) -> list[list[float]]:
        """Per unit: [diagonal Fréchet distance of its seeds' images, the same with the unit ablated
        alone]; the seeds are the images where the unit is most active."""
        score = self._distance(real)
        return [intervene.ablation_scores(self.generator, layer, [[], [u]], seeds, min(self.batch, len(seeds)), score)
                for u, seeds in zip(units, seed_sets)]

    @torch.no_grad()
    @_built
    def artifact_table(self, layer: str, top: list[int], random_units: list[int], high: np.ndarray, real,
                       seeds: list[int], share: float) -> dict:
        """The paper's table on held-out seeds: the diagonal Fréchet distance of the images where the
        top artifact units are most active (`share` of the seeds; activation relative to each unit's
        high quantile), as they are, with the top units ablated and with random units ablated, and
        whether the top units' improvement beats the random units' (paired bootstrap); the same
        over all the held-out images; and thumbnails of a few of those images before/after."""
        peaks = self.unit_peaks(layer, seeds)
        chosen = artifacts.most_active(peaks, top, high, seeds, share)
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
    @_built
    def panels(self, layer: str, units: list[int], ids: list[list[int]], thresholds: list[float],
               seeds: list[int]) -> dict:
        """Thumbnails of each unit's top-activating images and its thresholded mask."""
        images_out, masks_out = [], []
        for unit, unit_ids, threshold in zip(units, ids, thresholds):
            chosen = [seeds[i] for i in unit_ids if i >= 0][:PANEL_IMAGES]
            pics, masks = [], []
            for padded, keep in intervene.batches(chosen, self.batch):
                images, maps = intervene.featuremaps(self.generator, padded, [layer])
                size = stats.stats_size(tuple(images.shape[-2:]), self.settings.stats_side)
                up = stats.upsample(maps[layer][:keep, unit:unit + 1], size)[:, 0]
                pics.append(_thumbnails(images[:keep]))
                masks.append((up > threshold).to(torch.uint8).cpu().numpy())
            pics = np.concatenate(pics) if pics else np.zeros((0, 1, 1, 3), np.uint8)
            masks = np.concatenate(masks) if masks else np.zeros((0, 1, 1), np.uint8)
            images_out.append(_pad_rows(pics, PANEL_IMAGES))
            masks_out.append(_pad_rows(masks, PANEL_IMAGES))
        return {"images": np.stack(images_out), "masks": np.stack(masks_out)}

    @torch.no_grad()
    @_built
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

def _thumbnails(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> [B, h, w, 3] uint8, at most THUMBNAIL a side."""
    if max(images.shape[-2:]) > THUMBNAIL:
        images = sources.resize_square(images, THUMBNAIL)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _pad_rows(array: np.ndarray, n: int) -> np.ndarray:
    if len(array) >= n:
        return array[:n]
    return np.concatenate([array, np.zeros((n - len(array),) + array.shape[1:], array.dtype)])
