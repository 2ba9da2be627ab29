"""Stage 1, sample: generators and the probe on Ray actors write activation samples to the store.

The unit of work is one chunk of one dataset (`sample.chunk_size` samples). A `ChunkSampler`
actor loads the probe once and each generator when first needed (both on its GPU when there is
one, so images never leave the device), computes the chunk in fixed-size batches, writes every
array's chunk and finally marks the chunk done. Chunks are independent and deterministic, so the
result does not depend on the number of workers or the order in which chunks finish, and a rerun
only computes chunks not marked done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Callable

import numpy as np
import torch

from ganscale import __version__, lease, ledger, schema, sources
from ganscale.errors import GanscaleError
from ganscale.images import load_images
from ganscale.metrics import images as image_metrics
from ganscale.models import registry
from ganscale.progress import Progress
from ganscale.runtime import Actors, Task, init_ray, pick_device, run_on_actors, worker_failure, worker_resources
from ganscale.study import Study, digest, scrub_urls

log = logging.getLogger("ganscale.sample")


NAME, ITEM, READS = "sample", "dataset", ()


def items(study: Study) -> list[str]:
    return list(study.datasets)


def settings(study: Study, dataset: str) -> dict:
    """Everything that determines a dataset's stored samples. batch_size and workers are left out
    on purpose: they do not change the result."""
    return {
        "layout": schema.LAYOUT_VERSION,
        "dataset": study.datasets[dataset].model_dump(mode="json", exclude={"about"}),
        "name": dataset,
        "probe": study.probe.model_dump(mode="json"),
        "layers": study.layers,
        "seed": study.seed,
        "chunk_size": study.sample.chunk_size,
        "measured": sources.RESIZE_NOTE,  # how images reach each statistic and network
        "preprocess": study.preprocess.model_dump(mode="json"),
        "fid_inception": study.metrics.fid_inception.model_dump(mode="json") if study.metrics.fid_inception else None,
        **numerics(study),
    }


def fingerprint(study: Study, dataset: str) -> str:
    """The fingerprint of the dataset's stored group: the stage's fingerprint of the item (the sample
    stage reads nothing upstream, so it is that of its settings)."""
    return digest(ledger.jsonable(settings(study, dataset)))


def numerics(study: Study) -> dict:
    """The probe's numerics when not the fp32 default (left out then, so fp32 stores keep their
    fingerprint): bf16 and channels_last change the stored activations."""
    s = study.sample
    return {"numerics": {"precision": s.precision, "channels_last": s.channels_last}} \
        if s.precision != "fp32" or s.channels_last else {}


def layout_for(study: Study, dataset: str) -> schema.DatasetLayout:
    entry = registry.probe_entry(study.probe.name)
    return schema.DatasetLayout(
        samples=study.datasets[dataset].samples, chunk_size=study.sample.chunk_size,
        num_classes=registry.probe_classes(study.probe, study.storage_options),
        layer_channels={layer: entry.layers[layer] for layer in study.layers},
        fid_features=study.metrics.fid_inception is not None)


class Pending:
    """The chunks of a dataset left to compute, in order, without a list per chunk: every chunk of a
    group still to be made (a range), or those whose `done` flag is 0 (one byte per chunk, read
    once). Counts are arithmetic; iterating walks the flags block by block."""

    BLOCK = 1 << 16

    def __init__(self, n_chunks: int, done: np.ndarray | None = None):
        self.n_chunks = n_chunks
        self.done = None if done is None else np.asarray(done, dtype=bool)

    def __len__(self) -> int:
        return self.n_chunks if self.done is None else self.n_chunks - int(np.count_nonzero(self.done))

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self):
        if self.done is None:
            yield from range(self.n_chunks)
            return
        for start in range(0, self.n_chunks, self.BLOCK):
            for chunk in np.flatnonzero(~self.done[start:start + self.BLOCK]):
                yield start + int(chunk)

    def __contains__(self, chunk: int) -> bool:
        return 0 <= chunk < self.n_chunks and (self.done is None or not self.done[chunk])

    def samples(self, layout: schema.DatasetLayout) -> int:
        """Samples in the pending chunks: every chunk is chunk_size long but the last."""
        if not self:
            return 0
        last = self.n_chunks - 1
        short = layout.chunk_size - (layout.samples - last * layout.chunk_size)
        return len(self) * layout.chunk_size - (short if last in self else 0)


@dataclasses.dataclass
class DatasetPlan:
    name: str
    layout: schema.DatasetLayout
    pending: Pending
    files: list[str] | None = None  # image folders: the file of each sample (the folder's listing, chosen)
    fingerprint: str = ""
    path: str = ""  # the group the chunks go to: staging/{name} until complete, or datasets/{name}
    create: bool = False  # make that group afresh (it is missing, or holds other samples)
    damaged: list[int] = dataclasses.field(default_factory=list)  # done chunks that failed `verify`
    replaces: bool = False  # an older datasets/{name} stays until the staged group replaces it

    @property
    def staged(self) -> bool:
        return self.path == schema.staging_path(self.name)


def sampled_group(root, dataset: str, fp: str):
    """The group holding `dataset`'s samples for fingerprint `fp`: datasets/{dataset}, or the group
    being written aside in staging/{dataset} (a new dataset, or a changed one's replacement); None
    when neither matches (or there is no store yet)."""
    if root is None:
        return None
    for path in (schema.dataset_path(dataset), schema.staging_path(dataset)):
        group = schema.get_group(root, path)
        if group is not None and group.attrs.get("fingerprint") == fp:
            return group
    return None


def check_array_source(study: Study, name: str) -> None:
    """An arrays dataset's file and rows, checked as `sources.array_sources` checks them, without a
    source string per sample (each worker derives those it needs)."""
    spec = study.datasets[name]
    field = f"datasets.{name}"
    array = sources.ImageArray(spec.path, spec.key, study.storage_options, f"{field}.path", spec.sha256)
    n = array.shape[0]
    start, stop = spec.rows if spec.rows is not None else (0, n)
    if not 0 <= start < stop <= n:
        raise GanscaleError(f"{field}.rows: [{start}, {stop}) is not a range of rows of {spec.path} (it has {n})")
    if spec.samples > stop - start:
        raise GanscaleError(f"{field}.path: {spec.path} holds {stop - start} images"
                            f"{' in rows' if spec.rows is not None else ''}, fewer than samples ({spec.samples})")


def plan(study: Study, root, *, check_inputs: bool = True, verify: bool = False,
         datasets: list[str] | None = None) -> list[DatasetPlan]:
    """Which chunks are left to compute, without writing anything (`root` None: no store yet):
    inputs are checked; a dataset without a group of its current samples is planned aside, in
    staging/, and moved into datasets/ once complete (so a failure halfway leaves no half-written
    dataset, and a changed dataset's old group stays until then); with `verify` the chunks whose
    checksums no longer match count as pending. Memory: a byte per chunk, nothing per sample (but
    an image folder's listing). `datasets`: those to plan (default all)."""
    datasets = list(study.datasets) if datasets is None else datasets
    files_of: dict[str, list[str]] = {}
    if check_inputs:
        from ganscale import weights

        def verify_file(uri: str | None, sha256: str | None, field: str) -> None:
            if uri and sha256:  # fetch once and check the hash here, before any worker starts
                weights.resolve(uri, sha256, field=field, storage_options=study.storage_options)
            elif uri:
                weights.check_exists(uri, field, study.storage_options)

        verify_file(study.probe.weights, study.probe.sha256, "probe.weights")
        if study.metrics.fid_inception:
            verify_file(study.metrics.fid_inception.weights, study.metrics.fid_inception.sha256,
                        "metrics.fid_inception.weights")
        for name in datasets:
            spec = study.datasets[name]
            if spec.kind == "images":
                found = sources.list_images(spec.path, study.storage_options, f"datasets.{name}.path")
                files_of[name] = sources.choose_files(found, spec.samples, study.seed, name, f"datasets.{name}")
                del found
            elif spec.kind == "arrays":  # rows chosen like files; each worker derives its sources 'path[row]'
                check_array_source(study, name)
            elif spec.kind == "generator" and spec.name != "biggan":  # biggan's weights are a directory
                verify_file(spec.weights, spec.sha256, f"datasets.{name}.weights")
                verify_file(spec.path, spec.sha256, f"datasets.{name}.path")

    plans = []
    for name in datasets:
        layout = layout_for(study, name)
        fp = fingerprint(study, name)
        group = sampled_group(root, name, fp)
        if group is None:
            old = root is not None and schema.get_group(root, schema.dataset_path(name)) is not None
            plans.append(DatasetPlan(name, layout, Pending(layout.n_chunks), files_of.get(name), fp,
                                     schema.staging_path(name), True, replaces=old))
            continue
        done = schema.done_chunks(group)
        damaged = schema.verify_chunks(group, layout) if verify else []
        for path, chunk, problem in damaged:
            log.warning("dataset %s: %s chunk %d: %s; recomputing it", name, path, chunk, problem)
        done[[chunk for _, chunk, _ in damaged]] = False
        plans.append(DatasetPlan(name, layout, Pending(layout.n_chunks, done), files_of.get(name), fp,
                                 group.path, False, sorted({chunk for _, chunk, _ in damaged}),
                                 replaces=group.path == schema.staging_path(name)
                                 and schema.get_group(root, schema.dataset_path(name)) is not None))
    return plans


def guard(study: Study, root, *, force: bool = False, **options) -> None:
    check_store_owner(study, root, force)


def check_store_owner(study: Study, root, force: bool = False) -> None:
    """A store belongs to one study: another study's store is refused unless `force`."""
    held = (root.attrs.get("study") or {}).get("name")
    if held is not None and held != study.name and not force:
        raise GanscaleError(f"store: {study.store} holds study '{held}', not '{study.name}'; "
                            "point the study at another store, or pass --force to replace it")


def prepare_store(study: Study, root, plans: list[DatasetPlan]) -> None:
    """The first writes of a run, once every check has passed (inputs, store owner, preflight on a
    worker): the root's metadata when the store is new (or --force gives it to this study), fresh
    groups in staging/, and damaged chunks marked not done. A store this study already holds keeps
    its root metadata until the run has finished (finish_root)."""
    if (root.attrs.get("study") or {}).get("name") != study.name:
        finish_root(study, root)
    entry = registry.probe_entry(study.probe.name)
    leases = lease.of(root)
    for p in plans:
        spec = study.datasets[p.name]
        recorded = ledger.entry(root, NAME, p.name)
        if p.pending and recorded is not None and recorded["fingerprint"] == p.fingerprint:
            ledger.forget(root, NAME, p.name)  # damaged chunks: complete again only once rewritten
        if p.create:
            with leases.exclusive(f"sample/{p.name}/group"):  # a concurrent run may have made it meanwhile
                if sampled_group(root, p.name, p.fingerprint) is None:
                    if p.replaces:
                        log.warning("dataset %s: its configuration changed since it was sampled; resampling it "
                                    "aside (the old samples stay until the new ones are complete)", p.name)
                    schema.create_dataset_group(root, p.path, p.layout, {
                        "fingerprint": p.fingerprint, "kind": spec.kind, "samples": spec.samples,
                        "chunk_size": p.layout.chunk_size, "n_chunks": p.layout.n_chunks,
                        "probe": study.probe.name, "input_size": entry.input_size, "resize": sources.RESIZE_NOTE,
                        "spec": scrub_urls(spec.model_dump(mode="json"))})
        else:
            for chunk in p.damaged:
                root[p.path]["done"][chunk] = 0


def finish_root(study: Study, root) -> None:
    """The root's study metadata (rewritten only when it changed)."""
    if root.attrs.get("config_hash") == study.config_hash() and root.attrs.get("ganscale_version") == __version__:
        return
    ledger.update_root(root, {"ganscale_version": __version__, "layout_version": schema.LAYOUT_VERSION,
                              "study": study.stored(), "config_hash": study.config_hash()})


def finish_staged(study: Study, root, plans: list[DatasetPlan]) -> None:
    """Move each dataset sampled aside (new, or resampled after a change) into datasets/ once all
    its chunks are written."""
    for p in plans:
        if not p.staged:
            continue
        with lease.of(root).exclusive(f"sample/{p.name}/group"):
            staged = schema.get_group(root, p.path)  # another run may have moved it already
            if staged is None or staged.attrs.get("fingerprint") != p.fingerprint \
                    or not schema.done_chunks(staged).all():
                continue
            if schema.get_group(root, "datasets") is None:  # zarr v3 needs the parent group's own metadata
                root.require_group("datasets")
            schema.replace_group(root, p.path, schema.dataset_path(p.name))
            log.info("dataset %s: the group sampled aside moved into datasets/%s", p.name, p.name)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _source_bytes(study: Study, name: str) -> int:
    """An estimate of one `source` entry as stored (vlen-utf8: a 4-byte length and the text): ""
    for seeded datasets, a file path under the folder, or 'path[row]'."""
    spec = study.datasets[name]
    if spec.kind == "images":
        return 4 + len(str(spec.path).rstrip("/")) + 1 + 24  # + '/' + a typical file name
    if spec.kind == "arrays":
        return 4 + len(str(spec.path)) + 2 + len(str(max(spec.samples - 1, 0)))
    return 4


def planned_size(study: Study) -> list[dict]:
    """The planned size of the sample stage, before any work (from the layout alone, uncompressed):
    per dataset {"dataset", "samples", "chunks", "arrays": {path: bytes}, "bytes"}, then a row
    {"dataset": "all", ...} of the sums. Per array: dtype itemsize x shape; `source` is estimated."""
    rows = []
    for name in study.datasets:
        layout = layout_for(study, name)
        n = layout.samples
        per_row = {"seed": 8, "label": 4, "logits": 4 * layout.num_classes}
        for layer, channels in layout.layer_channels.items():
            per_row.update({f"layers/{layer}/activations": np.dtype(schema.ACTIVATION_DTYPE).itemsize * channels,
                            f"layers/{layer}/position": np.dtype(schema.POSITION_DTYPE).itemsize * 2,
                            f"layers/{layer}/pooled": np.dtype(schema.ACTIVATION_DTYPE).itemsize * channels})
        per_row.update({"image/sharpness": 4, "image/colour_hist": 4 * 4 * schema.HIST_BINS,
                        "features/fid_pool3": np.dtype(schema.ACTIVATION_DTYPE).itemsize * schema.FID_FEATURES,
                        "source": _source_bytes(study, name)})
        paths = schema.checksummed_arrays(layout)
        arrays = {path: per_row[path] * n for path in paths}
        arrays["done"] = layout.n_chunks
        arrays["checksum"] = 4 * len(paths) * layout.n_chunks
        rows.append({"dataset": name, "samples": n, "chunks": layout.n_chunks, "arrays": arrays,
                     "bytes": sum(arrays.values())})
    rows.append({"dataset": "all", "samples": sum(r["samples"] for r in rows),
                 "chunks": sum(r["chunks"] for r in rows), "arrays": {}, "bytes": sum(r["bytes"] for r in rows)})
    return rows


def planned_size_lines(rows: list[dict]) -> list[str]:
    """planned_size as lines for the command line and the log."""
    lines = []
    for r in rows:
        head = f"sample  {r['dataset']:<24} planned: {r['samples']:,} samples in {r['chunks']:,} chunks, " \
               f"{_human(r['bytes'])}"
        if r["dataset"] == "all":
            lines.append(head + " in all (uncompressed; source estimated)")
            continue
        lines.append(head)
        lines.append("          " + "; ".join(f"{path} {'~' if path == 'source' else ''}{_human(b)}"
                                             for path, b in r["arrays"].items()))
    return lines


def image_statistic(numpy_fn, torch_fn, images: torch.Tensor, **kwargs) -> torch.Tensor:
    """An image statistic where the images are: torch's on a GPU (they never leave it), numpy's on
    the CPU, where it is 10-50x faster than torch's float64 gathers (the same numbers: tested)."""
    if images.device.type == "cpu":
        return torch.from_numpy(np.asarray(numpy_fn(images.float().numpy(), **kwargs)))
    return torch_fn(images, **kwargs)


CHUNKS_IN_FLIGHT = 2  # per actor; 1 turns the write/compute overlap off


class ChunkSampler:
    """Computes and writes chunks. Used as a Ray actor (one per GPU), or directly in one process."""

    def __init__(self, study: Study, files: dict[str, list[str]] | None = None, threads: int | None = None,
                 owner: str = lease.OWNER):
        if threads:
            torch.set_num_threads(threads)
        self.study = study
        self.files = files or {}
        self.owner = owner
        self.probe = None  # the models are built by _build, on first use: a failure in an actor's
        # constructor prints Ray's whole traceback (and is retried), one in a method gives one line
        # run_chunk may be called by two threads (an actor with max_concurrency=2): one computes the
        # next chunk while the other writes its chunk; each lock lets one thread at a time through.
        self._computing = threading.Lock()
        self._writing = threading.Lock()
        self.generators: dict[str, object] = {}
        self._seeds: dict[str, np.ndarray] = {}
        self._draws: dict[tuple[str, str], np.ndarray] = {}
        self._folder_sides: dict[str, int] = {}
        self.image_sizes: dict[str, list[int]] = {}  # dataset -> [H, W] of its own pixels, as computed
        self.featuremaps: dict[str, list[int]] = {}  # layer -> [H, W] of its featuremap, as computed
        self._layouts: dict[str, schema.DatasetLayout] = {}

    def layout(self, dataset: str) -> schema.DatasetLayout:
        """The dataset's layout, made once per worker (it resolves the probe's weights)."""
        if dataset not in self._layouts:
            self._layouts[dataset] = layout_for(self.study, dataset)
        return self._layouts[dataset]

    def _build(self) -> None:
        """The device, the probe (and FID network) and the store, once."""
        if self.probe is not None:
            return
        self.device = pick_device(self.study.sample.device)
        settings = self.study.sample
        if self.device.type != "cuda" and (settings.precision != "fp32" or settings.channels_last):
            raise GanscaleError("sample.precision/channels_last: bf16 and channels_last apply on CUDA workers only, "
                                "and this worker computes on the CPU; use precision: fp32, channels_last: false")
        self.bf16 = settings.precision == "bf16"
        self.memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        probe = registry.build_probe(self.study.probe, self.study.storage_options).only(self.study.layers)
        probe.to(self.device)
        if settings.channels_last:  # the probe's nn.Module (a HookedProbe wraps one)
            module = getattr(probe, "module", probe)
            if not isinstance(module, torch.nn.Module):
                raise GanscaleError(f"sample.channels_last: probe {self.study.probe.name} is not a torch module")
            module.to(memory_format=torch.channels_last)
        self.fid_net = None
        if self.study.metrics.fid_inception:
            from ganscale.models.fid_inception import load_fid_inception

            spec = self.study.metrics.fid_inception
            self.fid_net = load_fid_inception(spec.weights, spec.sha256, self.study.storage_options).to(self.device)
        self.probe = probe

    def _store(self) -> None:
        """The store, opened on the first chunk (not by preflight: nothing is written before every check)."""
        if getattr(self, "root", None) is None:
            self.root = schema.open_store(self.study.store, self.study.storage_options)
            self.leases = lease.Leases(self.root, self.owner)  # the driver's run owns the chunks its workers take

    def _generator(self, dataset: str):
        if dataset not in self.generators:
            spec = self.study.datasets[dataset]
            self.generators[dataset] = registry.build_generator(
                spec, f"datasets.{dataset}", self.study.storage_options).to(self.device)
        return self.generators[dataset]

    def _seeds_of(self, dataset: str) -> np.ndarray:
        if dataset not in self._seeds:
            n = self.study.datasets[dataset].samples
            self._seeds[dataset] = sources.dataset_seeds(self.study.seed, dataset, n)
        return self._seeds[dataset]

    def _images(self, dataset: str, index: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        kind = self.study.datasets[dataset].kind
        generator = self._generator(dataset) if kind == "generator" else None
        files = self._files_of(dataset)
        if kind == "images" and dataset not in self._folder_sides:
            self._folder_sides[dataset] = sources.folder_side(files[0], self.study.storage_options,
                                                              f"datasets.{dataset}")
        return load_images(self.study, dataset, index, generator=generator, files=files, device=self.device,
                           size=self._folder_sides.get(dataset), seeds=self._seeds_of(dataset))

    def _files_of(self, dataset: str) -> list[str] | None:
        """An image folder's chosen files: the driver puts the listing in Ray's object store once and
        passes every actor its reference (not a copy each), fetched here on first use. An arrays
        dataset's sources 'path[row]': derived here, once (the driver keeps none)."""
        files = self.files.get(dataset)
        spec = self.study.datasets[dataset]
        if files is None and spec.kind == "arrays":
            files = self.files[dataset] = sources.array_sources(
                spec.path, spec.key, spec.samples, self.study.seed, dataset, self.study.storage_options,
                f"datasets.{dataset}", rows=spec.rows)
        elif files is not None and not isinstance(files, list):
            import ray

            files = self.files[dataset] = ray.get(files)
        return files

    def _draws_of(self, dataset: str, layer: str) -> np.ndarray:
        if (dataset, layer) not in self._draws:
            n = self.study.datasets[dataset].samples
            self._draws[dataset, layer] = sources.position_draws(self.study.seed, dataset, layer, n)
        return self._draws[dataset, layer]

    @torch.inference_mode()
    def compute(self, dataset: str, chunk: int) -> dict[str, np.ndarray]:
        """All arrays of one chunk, without writing them. Every forward pass has exactly batch_size
        rows (the last batch is padded by repeating its last sample), so a sample's numbers do not
        depend on which batch it fell into.

        Every source is measured the same way (sources.RESIZE_NOTE): sharpness and colour histograms
        on its own pixels, the FID network on its own pixels (resized once, to 299, inside
        `features`), the probe on its own pixels resized once to the probe's input size."""
        self._build()
        start, stop = self.layout(dataset).chunk_range(chunk)
        batch_size = self.study.sample.batch_size
        # Results stay on the device until the chunk is done: one transfer per array, no per-batch sync.
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logits", "sharpness", "colour_hist", "fid_pool3")}
        labels_, names_ = [], []
        acts: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.study.layers}
        positions: dict[str, list[np.ndarray]] = {layer: [] for layer in self.study.layers}
        pooled: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.study.layers}
        for b0 in range(start, stop, batch_size):
            index = np.arange(b0, min(b0 + batch_size, stop))
            padded = np.concatenate([index, np.full(batch_size - len(index), index[-1])])
            images, labels, names = self._images(dataset, padded)
            self.image_sizes[dataset] = [int(images.shape[-2]), int(images.shape[-1])]
            keep = len(index)
            parts["sharpness"].append(image_statistic(image_metrics.sharpness, image_metrics.sharpness_torch,
                                                      images[:keep]))
            parts["colour_hist"].append(image_statistic(image_metrics.colour_histograms,
                                                        image_metrics.colour_histograms_torch, images[:keep],
                                                        bins=schema.HIST_BINS))
            if self.fid_net is not None:
                parts["fid_pool3"].append(self.fid_net.features(images)[:keep].float())
            layer_maps, logits = self._probe(images)
            rows = torch.arange(keep, device=self.device)
            for layer in self.study.layers:
                fmap = layer_maps[layer]
                self.featuremaps[layer] = [int(fmap.shape[2]), int(fmap.shape[3])]
                pos = sources.positions_for(self._draws_of(dataset, layer)[index], fmap.shape[2], fmap.shape[3])
                pos_t = torch.from_numpy(pos)  # a pinned, non-blocking copy: the host runs on, no sync per layer
                pos_t = pos_t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else pos_t
                acts[layer].append(fmap[rows, :, pos_t[:, 0], pos_t[:, 1]].float())
                positions[layer].append(pos.astype(schema.POSITION_DTYPE))
                pooled[layer].append(fmap[:keep].float().mean((2, 3)))
            parts["logits"].append(logits[:keep].float())
            labels_.append(labels[:keep])
            names_.append(names[:keep])

        def host(tensors: list[torch.Tensor], dtype) -> np.ndarray:
            return torch.cat(tensors).cpu().numpy().astype(dtype, copy=False)

        return {
            "seed": (self._seeds_of(dataset)[start:stop] if self.study.datasets[dataset].kind not in ("images", "arrays")
                     else np.full(stop - start, -1, dtype=np.int64)),
            "label": np.concatenate(labels_), "source": np.concatenate(names_),
            "logits": host(parts["logits"], np.float32),
            "sharpness": host(parts["sharpness"], np.float32),
            "colour_hist": host(parts["colour_hist"], np.uint32),
            "fid_pool3": host(parts["fid_pool3"], np.float32) if parts["fid_pool3"] else None,
            "activations": {layer: host(v, np.float32) for layer, v in acts.items()},
            "positions": {layer: np.concatenate(v) for layer, v in positions.items()},
            "pooled": {layer: host(v, np.float32) for layer, v in pooled.items()},
        }

    def _probe(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The probe on the images resized to its input, in the study's numerics (bf16 autocast and
        channels_last on CUDA when asked; outputs may then be bf16)."""
        x = sources.resize_square(images, self.probe.input_size).contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.probe(x)

    @torch.inference_mode()
    def preflight(self, datasets: list[str]) -> None:
        """Build every model these datasets need, read the first batch of every image or array
        source, and push one image of each through the probe (and the FID network): the checks that
        can only be made by running them."""
        self._build()
        for dataset in datasets:
            spec = self.study.datasets[dataset]
            first = min(self.study.sample.batch_size, spec.samples) if spec.kind in ("images", "arrays") else 1
            images, _, _ = self._images(dataset, np.arange(first, dtype=np.int64))
            self._probe(images[:1])
            if self.fid_net is not None:
                self.fid_net.features(images[:1])

    def run_chunk(self, dataset: str, chunk: int) -> tuple[str, int, int, dict]:
        """Compute and write one chunk, under its lease. With two calls in flight on a threaded
        actor, chunk i's write overlaps chunk i+1's compute; each call returns (or fails) only once
        its own chunk is written and marked done. Returns (dataset, chunk, samples written, info):
        nothing is written when another run holds the chunk (info["held_by"]) or has finished it."""
        with self._computing:
            self._build()
            self._store()
        name = f"sample/{dataset}/{chunk}"
        holder = self.leases.acquire(name)
        if holder is not None:
            return dataset, chunk, 0, {"held_by": holder}
        try:
            group = sampled_group(self.root, dataset, fingerprint(self.study, dataset))
            if group is None:
                raise GanscaleError(f"store: {self.study.store}: dataset {dataset}'s group was replaced by "
                                    "another run with a different study while this one sampled it")
            if group["done"][chunk]:
                return dataset, chunk, 0, {"done_elsewhere": True}
            with self._computing:
                arrays = self.compute(dataset, chunk)
                image_size = self.image_sizes[dataset]
            with self._writing:
                if chunk == 0:  # one writer per dataset: the sizes each source and layer were measured at
                    group.attrs.update({"image_size": image_size, "featuremaps": dict(self.featuremaps)})
                schema.write_chunk(group, self.layout(dataset), chunk, **arrays)
        finally:
            self.leases.release(name)
        return dataset, chunk, len(arrays["seed"]), self.placement()

    def placement(self) -> dict:
        """Where this worker runs: process, Ray node, GPUs Ray gave it, torch device."""
        info = {"pid": os.getpid(), "device": str(self.device)}
        try:
            import ray

            context = ray.get_runtime_context()
            info.update(node=context.get_node_id(), gpus=[str(g) for g in ray.get_gpu_ids()])
        except Exception:  # not inside Ray
            pass
        return info


LEASE = "own"  # chunks are leased one by one, so that two runs share a dataset's chunks
OPTIONS = ("verify", "force", "workers", "on_chunk")
RESTARTS = 3  # a dead sample actor is restarted (and its chunks sent again) this many times


class Sampler:
    """What the datasets of one run share (made by `workers`): their plans, the store, the actors,
    the progress display and the run's counts."""

    def __init__(self, study: Study, root, plans: list[DatasetPlan], actors: Actors | None,
                 on_chunk: Callable[[str, int, dict], None] | None):
        self.study, self.root, self.actors, self.on_chunk = study, root, actors, on_chunk
        self.plans = {p.name: p for p in plans}
        self.progress = Progress("sample", sum(p.pending.samples(p.layout) for p in plans), unit="samples")
        self.counts = {"computed_chunks": 0, "skipped_chunks": sum(p.layout.n_chunks - len(p.pending) for p in plans),
                       "samples_written": 0, "workers": actors.count if actors else 0}

    def summary(self) -> dict:
        return dict(self.counts)

    def samples_in(self, dataset: str, chunk: int) -> int:
        start, stop = self.plans[dataset].layout.chunk_range(chunk)
        return stop - start

    def compute(self, dataset: str, chunks) -> dict[int, str]:
        """Compute `chunks` of `dataset` on the actors; returns {chunk: run} of those another run holds."""
        held: dict[int, str] = {}

        def finished(task: Task, result) -> None:
            _, chunk, n, info = result
            if "held_by" in info:
                held[chunk] = info["held_by"]
                return
            if n:
                self.counts["samples_written"] += n
                self.counts["computed_chunks"] += 1
            self.progress.advance(self.samples_in(dataset, chunk))
            if self.on_chunk and n:
                self.on_chunk(dataset, chunk, info)

        run_on_actors(self.actors.get(), chunk_tasks(dataset, chunks), finished, in_flight_per_actor=CHUNKS_IN_FLIGHT,
                      kill=False, collect=False, retries=RESTARTS)
        return held

    def sample(self, dataset: str) -> None:
        """Every pending chunk of `dataset`; chunks another run holds are waited for, and taken over
        should that run stop without them."""
        p = self.plans[dataset]
        held = self.compute(dataset, p.pending) if p.pending else {}
        if held:
            log.info("sample: %d chunks of %s are being computed by run %s; waiting for them", len(held), dataset,
                     next(iter(held.values())))
        leases = lease.of(self.root)
        while held:
            time.sleep(lease.POLL)
            dropped = []
            for chunk in list(held):
                group = sampled_group(self.root, dataset, p.fingerprint)
                if group is not None and group["done"][chunk]:
                    del held[chunk]
                    self.progress.advance(self.samples_in(dataset, chunk))
                elif not leases.live(leases.holder(f"sample/{dataset}/{chunk}")):  # its run stopped unfinished
                    del held[chunk]
                    dropped.append(chunk)
            if dropped:
                held.update(self.compute(dataset, dropped))
        finish_staged(self.study, self.root, [p])


@contextlib.contextmanager
def workers(study: Study, root, todo: list[str], address: str | None = None, *, verify: bool = False,
            force: bool = False, workers: int | None = None,
            on_chunk: Callable[[str, int, dict], None] | None = None):
    """Plan the datasets to do and start the sample actors, with every check before the first write:
    the store (opened read-only; a new store is made only once the checks have passed), its owner,
    the inputs, and a preflight on a worker. `verify`: stored chunks are checked against their
    checksums and the damaged ones recomputed. `force`: another study's store is replaced."""
    import ray

    if root is not None:
        check_store_owner(study, root, force)
    plans = plan(study, root, verify=verify, datasets=todo)
    for line in planned_size_lines(planned_size(study)):
        log.info("%s", line)
    pending = sum(len(p.pending) for p in plans)
    actors, owner = None, lease.new_owner()
    if pending:
        init_ray(address)
        n_workers, resources = worker_resources(study.sample.device, workers or study.sample.workers)
        threads = max(1, int(resources["num_cpus"]))
        # An image folder's listing goes to the object store once; each actor gets its reference (in a
        # dict, so Ray passes it as is) and fetches it on first use, instead of a copy in every
        # constructor. Other datasets need no per-sample lists: workers derive seeds and sources.
        files = {p.name: ray.put(p.files) for p in plans if p.files is not None}
        for p in plans:
            p.files = None  # the driver keeps no listing
        # Two chunks in flight per actor (two threads, see run_chunk): one writes while the next
        # computes. Ray restarts a dead actor (max_restarts) but does not resend its tasks itself:
        # run_on_actors resends them (retries), except when the worker was killed for memory.
        actors = Actors(ChunkSampler, min(n_workers, pending), resources, study, files, threads, owner,
                        what="sample: starting the workers", restarts=RESTARTS, concurrency=CHUNKS_IN_FLIGHT)
    try:
        if actors is not None:
            # Every model built, the first batch of every image source read and one image of every
            # source probed, on a worker, before the first write: bad weights, plugins or images
            # fail here and the store stays as it was.
            try:
                ray.get(actors.get()[0].preflight.remote([p.name for p in plans if p.pending]))
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:
                raise worker_failure(e, "sample: checking the inputs") from None
        root = schema.open_root(study.store, study.storage_options)  # the first write of a new store
        check_store_owner(study, root, force)  # another run may have made it meanwhile
        prepare_store(study, root, plans)
        sampler = Sampler(study, root, plans, actors, on_chunk)
        try:
            yield sampler
        finally:
            sampler.progress.close()
    finally:
        if actors is not None:
            actors.close()
        if actors is not None and root is not None:
            try:  # free what the killed workers held, should this run have failed; best effort: the
                lease.of(root).drop("sample", owner)  # storage itself may be what failed (they expire anyway)
            except Exception as e:
                log.warning("sample: could not release this run's chunk leases (%s); they expire in %d s",
                            type(e).__name__, lease.TTL)
    finish_root(study, root)


def run_item(study: Study, root, dataset: str, sampler: Sampler) -> dict:
    sampler.sample(dataset)
    group = schema.get_group(root, schema.dataset_path(dataset))
    if group is None or group.attrs.get("fingerprint") != sampler.plans[dataset].fingerprint \
            or not schema.done_chunks(group).all():
        raise GanscaleError(f"sample: dataset {dataset} is not complete after its chunks were written; rerun")
    return {}


def missing(study: Study, root, dataset: str) -> str:
    """A done flag lost since the dataset was recorded: the chunk must be redone."""
    group = schema.get_group(root, schema.dataset_path(dataset))
    if group is None:
        return f"the store has no group {schema.dataset_path(dataset)}"
    done = schema.done_chunks(group)
    if not done.all():
        return (f"{len(done) - int(done.sum())} of {len(done)} chunks not marked done: bookkeeping lost; "
                "`ganscale run` recomputes them")
    return ""


def chunk_tasks(dataset: str, chunks):
    """The run_chunk tasks of a dataset's chunks, made one at a time as actors free up."""
    for chunk in chunks:
        yield Task("run_chunk", (dataset, chunk), f"sample: chunk {chunk} of dataset {dataset}")


def status_rows(study: Study, root, row: dict, verify: bool = False) -> list[dict]:
    """`ganscale status` rows of a dataset: its stage state with the chunks done, a dataset being
    resampled aside, and with `verify` one row per damaged chunk."""
    counted = dataset_status(study, root, row["item"], verify)
    state = row["state"] + (f": {row['detail']}" if row["detail"] else "")
    if counted["state"].startswith(("damaged", "resampling")):
        state = counted["state"] if row["state"] != "stale" else f"{state}; {counted['state']}"
    elif row["state"] == "missing":
        state = f"damaged ({row['detail']})"
    elif row["state"] != "stale":
        if row["state"] == "not started" and counted["done"]:
            state = "partial"
        state += f" ({counted['done']}/{counted['chunks']} chunks)"
    return [{"stage": "sample", "item": row["item"], "state": state}] + \
        [{"stage": "", "item": "", "state": f"  {path} chunk {chunk}: {problem}"}
         for path, chunk, problem in counted.get("damaged", [])]


def status(study: Study, verify: bool = False) -> list[dict]:
    """Per dataset: chunks done of total, and whether the stored samples match the study; with
    `verify`, also the chunks whose data no longer match their checksums."""
    try:
        root = schema.open_root(study.store, study.storage_options, mode="r")
    except FileNotFoundError:
        root = None
    return [dataset_status(study, root, name, verify) for name in study.datasets]


def dataset_status(study: Study, root, name: str, verify: bool = False) -> dict:
    layout = layout_for(study, name)
    group = schema.get_group(root, schema.dataset_path(name)) if root is not None else None
    staged = schema.get_group(root, schema.staging_path(name)) if root is not None else None
    fp = fingerprint(study, name)
    if staged is not None and staged.attrs.get("fingerprint") == fp and \
            (group is None or group.attrs.get("fingerprint") != fp):
        done = int(schema.done_chunks(staged).sum())
        if group is None:  # a new dataset, sampled aside until complete
            return {"dataset": name, "done": done, "chunks": layout.n_chunks,
                    "state": "partial" if done else "not started"}
        return {"dataset": name, "done": done, "chunks": layout.n_chunks,
                "state": f"resampling aside after a study change ({done}/{layout.n_chunks} chunks)"}
    if group is None:
        return {"dataset": name, "done": 0, "chunks": layout.n_chunks, "state": "not started"}
    stale = group.attrs.get("fingerprint") != fp
    done = int(schema.done_chunks(group).sum())
    state = "stale (study changed)" if stale else ("complete" if done == layout.n_chunks else "partial")
    row = {"dataset": name, "done": 0 if stale else done, "chunks": layout.n_chunks, "state": state}
    if verify and not stale:
        row["damaged"] = schema.verify_chunks(group, layout)
        if row["damaged"]:
            row["state"] = f"damaged ({len({c for _, c, _ in row['damaged']})} chunks; `ganscale run --verify` " \
                           "recomputes them)"
    return row
