"""The images behind stored samples, exactly as the sample stage measured them, and the patch of
an image a stored activation sees: a library for the stages after sample (metrics, report, the
viewer) and for benchmarks, so none of them imports a stage."""

from __future__ import annotations

import numpy as np
import torch

from ganscale import schema, sources
from ganscale.models import registry
from ganscale.study import Study


def load_images(study: Study, dataset: str, index: np.ndarray, *, generator=None, files: list[str] | None = None,
                device: torch.device | str = "cpu", size: int | None = None, seeds: np.ndarray | None = None
                ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """`source_images` after the study's `preprocess` (the same degradation for every dataset):
    what every measurement sees."""
    images, labels, names = source_images(study, dataset, index, generator=generator, files=files, device=device,
                                          size=size, seeds=seeds)
    return measured(study, images), labels, names


def measured(study: Study, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] at their source's size, as every measurement sees them: after the
    study's `preprocess`. Everything that measures or compares images goes through here (the sample
    stage via load_images, the checkpoint sweep, dissection's artifact comparison), so generated
    images are compared with stored features of the same pixels."""
    p = study.preprocess
    return sources.preprocess(images, p.grayscale, p.size) if p.grayscale or p.size else images


def source_images(study: Study, dataset: str, index: np.ndarray, *, generator=None, files: list[str] | None = None,
                  device: torch.device | str = "cpu", size: int | None = None, seeds: np.ndarray | None = None
                  ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The images of samples `index` of a dataset, exactly as the sample stage measured them: images
    [B, 3, H, W] in [0, 1] on `device` at the source's own size (image files: center-cropped to a
    square at `size`, default the folder's side, see sources.folder_side), labels [B] int32 (-1:
    none), sources [B] (file paths, "" for seeded datasets). `files`: the dataset's chosen files,
    in sample order. `seeds`: the dataset's seeds if the caller already has them. The probe's input
    size is not applied here: callers resize with sources.resize_square where they need it."""
    spec = study.datasets[dataset]
    field = f"datasets.{dataset}"
    no_labels = np.full(len(index), -1, dtype=np.int32)
    if spec.kind == "images":
        paths = [files[i] for i in index]
        size = size or sources.folder_side(files[0], study.storage_options, field)
        images = sources.read_images(paths, size, study.storage_options, field).to(device)
        return images, no_labels, np.asarray(paths, dtype=object)
    if spec.kind == "arrays":
        files = files or sources.array_sources(spec.path, spec.key, spec.samples, study.seed, dataset,
                                               study.storage_options, field, rows=spec.rows)
        entries = [files[i] for i in index]
        images = sources.read_array_images(spec.path, spec.key, sources.source_rows(entries), study.storage_options,
                                           f"{field}.path")
        size = size or min(images.shape[-2:])  # the array's own side: one size for every row
        return sources.resize_square(images, size).to(device), no_labels, np.asarray(entries, dtype=object)
    if seeds is None:
        seeds = sources.dataset_seeds(study.seed, dataset, spec.samples)
    seeds = seeds[index].tolist()
    if spec.kind == "toyworld":
        from ganscale.toyworld.scenes import render_batch

        images, _, labels = render_batch(seeds, exclude=tuple(spec.exclude))
        images, labels = images.to(device), labels.numpy().astype(np.int32)
    else:
        generator = generator or registry.build_generator(spec, field, study.storage_options).to(device)
        images, labels = generator.generate(seeds)
        images = sources.check_images(images, len(seeds), field)
        labels = no_labels if labels is None else labels.cpu().numpy().astype(np.int32)
    return images, labels, np.full(len(index), "", dtype=object)


def built_generator(study: Study, dataset: str, generators: dict, device: torch.device | str = "cpu"):
    """The dataset's generator from `generators`, built (on `device`) and kept there on first use."""
    if dataset not in generators:
        generators[dataset] = registry.build_generator(study.datasets[dataset], f"datasets.{dataset}",
                                                       study.storage_options).to(device)
    return generators[dataset]


def images_by_id(study: Study, root, dataset: str, ids, generators: dict | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Stored samples `ids` of a dataset, as images [B, 3, H, W] in [0, 1]: regenerated from their
    seeds, or read from the file recorded in the store. `generators` caches built generators."""
    ids = np.asarray(ids, dtype=np.int64)
    spec = study.datasets[dataset]
    group = root[schema.dataset_path(dataset)]
    if spec.kind in ("images", "arrays"):
        sources_ = schema.read_ids(group, "source", ids)  # the files (or array rows) as sampled
        size = (group.attrs.get("image_size") or [None])[0] if spec.kind == "images" else None
        images, _, _ = load_images(study, dataset, np.arange(len(ids)), files=[str(p) for p in sources_],
                                   device=device, size=size)
        return images
    generator = built_generator(study, dataset, {} if generators is None else generators, device) \
        if spec.kind == "generator" else None
    seeds = schema.read_ids(group, "seed", ids)  # the seeds as sampled
    images, _, _ = load_images(study, dataset, np.arange(len(ids)), generator=generator, device=device, seeds=seeds)
    return images


class ImageCache:
    """Stored samples as images by (dataset, sample id), regenerated (or read) once for every part
    of the report that shows them: one generator call per request for all the ids missing, and one
    built generator per dataset. `keep=False` uses what is cached without keeping the new images
    (the viewer's thumbnails: thousands of full-size images in a large study)."""

    def __init__(self, study: Study, root):
        self.study, self.root = study, root
        self.generators: dict = {}
        self.images: dict[tuple[str, int], torch.Tensor] = {}

    def __call__(self, dataset: str, ids, keep: bool = True) -> torch.Tensor:
        ids = [int(i) for i in np.asarray(ids).ravel()]
        missing = sorted({i for i in ids if (dataset, i) not in self.images})
        new = {}
        if missing:
            made = images_by_id(self.study, self.root, dataset, missing, self.generators)
            new = {i: image for i, image in zip(missing, made)}
            if keep:
                self.images.update({(dataset, i): image for i, image in new.items()})
        return torch.stack([new[i] if i in new else self.images[dataset, i] for i in ids])

    def generator(self, dataset: str):
        """The dataset's built generator (built now if no image of it was made yet)."""
        return built_generator(self.study, dataset, self.generators)


def receptive_field_size(probe, layer: str, tries: int = 4) -> tuple[int, int]:
    """(height, width) of the input region that a unit at the centre of `layer` depends on,
    measured by gradients over a few random inputs (union), not assumed from the architecture."""
    module = probe.module
    size = probe.input_size
    captured = {}
    handle = dict(module.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.update(out=o))
    seen = torch.zeros(size, size, dtype=torch.bool)
    try:
        generator = torch.Generator().manual_seed(0)
        for _ in range(tries):
            x = torch.rand(1, 3, size, size, generator=generator, requires_grad=True)
            module(x)
            out = captured["out"]
            out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
            seen |= x.grad.abs().sum((0, 1)) > 0
    finally:
        handle.remove()
    ys, xs = np.nonzero(seen.numpy())
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def patch_box(position: np.ndarray, fmap_size: tuple[int, int], field: tuple[int, int], image_size: int):
    """(y0, x0, y1, x1) of the receptive field of a featuremap position, in image pixels."""
    box = []
    for p, n, f in zip(position, fmap_size, field):
        centre = (p + 0.5) * image_size / n
        lo = int(np.clip(round(centre - f / 2), 0, image_size - 1))
        box.append((lo, int(np.clip(round(centre + f / 2), lo + 1, image_size))))
    (y0, y1), (x0, x1) = box
    return y0, x0, y1, x1


def fmap_sizes(probe) -> dict[str, tuple[int, int]]:
    maps, _ = probe(torch.zeros(1, 3, probe.input_size, probe.input_size))
    return {layer: tuple(m.shape[2:]) for layer, m in maps.items()}


def featuremap_sizes(study: Study, root, probe, layers: list[str]) -> dict[str, tuple[int, int]]:
    """Each layer's featuremap [H, W] as the sample stage recorded it (datasets/*/attrs featuremaps);
    measured with the probe only for a store written before it recorded them."""
    recorded = root[schema.dataset_path(next(iter(study.datasets)))].attrs.get("featuremaps") or {}
    if all(layer in recorded for layer in layers):
        return {layer: tuple(recorded[layer]) for layer in layers}
    return fmap_sizes(probe.only(layers))
