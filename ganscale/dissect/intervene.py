"""Hooks on a generator's named layers: read featuremaps, switch units off and on, and measure what
that does (Bau et al. 2019, section 1 and figures 4-5).

An intervention replaces a layer's output r by r' = r * (1 - a) + v * a, where a is 1 on the chosen
units (over the whole featuremap, or only at chosen featuremap pixels) and v is 0 (ablation) or
each unit's high quantile (insertion). The average causal effect of units U on class c is
ACE = E[s_c(x_inserted)] - E[s_c(x_ablated)], s_c the share of the image's pixels segmented as c.

Layers are named submodules of the generator's torch module: the generator itself when it is an
nn.Module (the toy DCGAN: layer1, layer2, ...), else its `.module`, `.model` or `.inner` (BigGAN,
TorchScript, plugins). PyTorch cannot hook a loaded TorchScript module, so a scripted generator is
hookable when it is a scripted `nn.Sequential` (nested ones too): it is rebuilt as a Python
Sequential of its scripted children, same computation.

Interventions must compare like with like: images have to depend on the seeds alone. Noise that a
generator draws from torch's global RNG inside forward (StyleGAN's noise inputs) is pinned here:
every render runs under a fixed RNG state derived from its batch of seeds, so rendering the same
batch twice, with or without an intervention, uses the same noise (seed 003 forgot this). Other
randomness (numpy, Python's random) is not pinned; `check_deterministic` refuses such generators.
"""

from __future__ import annotations

import contextlib
import zlib
from collections import OrderedDict
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ganscale.errors import GanscaleError
from ganscale.models.base import latents_from_seeds

# --- finding and hooking layers ----------------------------------------------------------------


class _ScriptedChild(nn.Module):
    """A Python wrapper around a scripted submodule, so that forward hooks can be attached."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args)


def _unscript(module) -> nn.Module:
    if isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", "") == "Sequential":
        return nn.Sequential(OrderedDict((name, _unscript(child)) for name, child in module.named_children()))
    return _ScriptedChild(module) if isinstance(module, torch.jit.ScriptModule) else module


def network(generator) -> nn.Module:
    """The torch module whose named submodules are the generator's layers."""
    if isinstance(generator, nn.Module):
        return generator
    for attr in ("module", "model", "inner"):
        candidate = getattr(generator, attr, None)
        if isinstance(candidate, torch.jit.ScriptModule):
            if getattr(candidate, "original_name", "") != "Sequential":
                raise GanscaleError(f"dissect: the generator's TorchScript module ({candidate.original_name}) "
                                    "cannot be hooked (PyTorch forbids hooks on loaded ScriptModules); script an "
                                    "nn.Sequential, or register a Python generator plugin")
            candidate = _unscript(candidate)
            setattr(generator, attr, candidate)
        if isinstance(candidate, nn.Module):
            return candidate
    raise GanscaleError(f"dissect: generator {type(generator).__name__} exposes no torch module to hook "
                        "(give it a .module or .model attribute)")


def hookable(generator) -> bool:
    """Whether the generator's layers can be hooked (a torch module), so that units can be switched;
    an exported model (OpenVINO) instead reports featuremaps of named nodes: statistics only."""
    try:
        network(generator)
        return True
    except GanscaleError:
        return False


def check_layers(generator, layers: Sequence[str], field: str = "dissect.layers") -> None:
    if hookable(generator):
        for layer in layers:
            layer_module(generator, layer, field)
        return
    if not hasattr(generator, "featuremap_layers"):
        network(generator)  # raises the error that says what is missing
    known = generator.featuremap_layers()  # reads the model's graph: once
    for layer in layers:
        if layer not in known:
            raise GanscaleError(f"{field}: the exported generator has no node '{layer}' "
                                f"(nodes with [B, units, h, w] outputs: {', '.join(known[:12])}, ...)")


def layer_module(generator, layer: str, field: str = "dissect.layers") -> nn.Module:
    modules = dict(network(generator).named_modules())
    if not layer or layer not in modules:
        known = [n for n, _ in network(generator).named_children()]
        raise GanscaleError(f"{field}: the generator has no layer '{layer}' (top-level layers: {', '.join(known)})")
    return modules[layer]


def layer_order(generator, layer: str | None = None) -> list[str]:
    """Candidate layers for downstream tracing, in network order: the generator's `layer_names`
    when it declares them, else the siblings of `layer` (the children of its parent module, e.g.
    BigGAN's generator.layers.0, .1, ...), else the top-level submodules."""
    names = getattr(generator, "layer_names", None) or getattr(network(generator), "layer_names", None)
    if names:
        return list(names)
    parent, _, _ = (layer or "").rpartition(".")
    modules = dict(network(generator).named_modules())
    if parent in modules:
        prefix = f"{parent}." if parent else ""
        return [prefix + n for n, _ in modules[parent].named_children()]
    return [n for n, _ in network(generator).named_children()]


def later_layers(generator, layer: str, candidates: Sequence[str]) -> list[str]:
    """The candidate layers that run after `layer`, in network order (module registration order;
    submodules of `layer` itself are left out)."""
    names = [n for n, _ in network(generator).named_modules()]
    if layer not in names:
        return []
    return [c for c in candidates if c in names and names.index(c) > names.index(layer)
            and not c.startswith(layer + ".")]


def _device(generator) -> torch.device:
    try:
        module = network(generator)
    except GanscaleError:  # nothing to hook, but it can still render
        return torch.device(getattr(generator, "device", "cpu"))
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device(getattr(generator, "device", "cpu"))


# --- rendering -----------------------------------------------------------------------------------


@contextlib.contextmanager
def pinned_noise(seeds: Sequence[int], device: torch.device):
    """Run the block with torch's RNG (CPU and the generator's GPU) seeded from the seeds; the
    caller's RNG state is restored afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(zlib.crc32(np.asarray(list(seeds), dtype=np.int64).tobytes()))
        yield


@torch.no_grad()
def render(generator, seeds: Sequence[int]) -> torch.Tensor:
    """Images [B, 3, H, W] of the seeds in one forward pass (so hooks see exactly these rows): via
    from_latents(z) when the generator has it, else generate(seeds); noise pinned."""
    seeds = [int(s) for s in seeds]
    device = _device(generator)
    with pinned_noise(seeds, device):
        if hasattr(generator, "from_latents") and hasattr(generator, "z_dim"):
            return generator.from_latents(latents_from_seeds(seeds, generator.z_dim).to(device))
        images, _ = generator.generate(seeds)
        return images


def batches(seeds: Sequence[int], batch: int) -> Iterator[tuple[list[int], int]]:
    """Batches of exactly `batch` seeds (the last padded by repeating its last seed) and how many
    rows of each are real: every forward pass has the same shape, so a sample's numbers do not
    depend on the batch it fell into."""
    seeds = [int(s) for s in seeds]
    for b0 in range(0, len(seeds), batch):
        part = seeds[b0:b0 + batch]
        yield part + [part[-1]] * (batch - len(part)), len(part)


@torch.no_grad()
def featuremaps(generator, seeds: Sequence[int], layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images [B, 3, H, W] and the outputs {layer: [B, U, h, w]} of the named layers (one pass)."""
    if not hookable(generator) and hasattr(generator, "featuremaps"):
        return generator.featuremaps(seeds, layers)
    captured: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = [layer_module(generator, layer).register_forward_hook(
        lambda _m, _i, out, layer=layer: captured[layer].append(out.detach())) for layer in layers]
    try:
        images = render(generator, seeds)
    finally:
        for handle in handles:
            handle.remove()
    maps = {}
    for layer, parts in captured.items():
        if not parts:
            raise GanscaleError(f"dissect: layer {layer} did not run when the generator made images")
        out = torch.cat(parts)
        if out.ndim != 4 or len(out) != len(seeds):
            raise GanscaleError(f"dissect: layer {layer} gave {tuple(out.shape)} for {len(seeds)} seeds; a dissected "
                                "layer must output [B, units, h, w] once per image (give the generator "
                                "from_latents(z), or a generate() that runs the network once on the batch)")
        maps[layer] = out
    return images, maps


@contextlib.contextmanager
def intervention(generator, layer: str, units: Sequence[int], value: torch.Tensor | float = 0.0,
                 where: torch.Tensor | None = None):
    """Within the block, the layer's output r becomes r * (1 - a) + v * a on `units`: `value` is a
    scalar or one value per unit, `where` a [h, w] featuremap mask in [0, 1] (default everywhere)."""
    units = torch.as_tensor(np.asarray(list(units), dtype=np.int64))
    cache: dict = {}

    def hook(_module, _inputs, out):
        key = (tuple(out.shape[1:]), out.device, out.dtype)
        if key not in cache:
            a = torch.zeros((1, *out.shape[1:]), device=out.device, dtype=out.dtype)
            mask = torch.ones(out.shape[-2:], device=out.device, dtype=out.dtype) if where is None \
                else torch.as_tensor(where).to(out.device, out.dtype)
            a[:, units.to(out.device)] = mask
            v = torch.zeros_like(a)
            values = np.array(value) if isinstance(value, np.ndarray) else value  # a writable copy
            v[:, units.to(out.device)] = torch.as_tensor(values, dtype=out.dtype).to(out.device).reshape(-1, 1, 1)
            cache[key] = (a, v * a)
        a, va = cache[key]
        return out * (1 - a) + va

    handle = layer_module(generator, layer).register_forward_hook(hook) if len(units) else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def pixel_mask(shape: tuple[int, int], y: int, x: int) -> torch.Tensor:
    where = torch.zeros(shape)
    where[y, x] = 1
    return where


@torch.no_grad()
def check_deterministic(generator, seeds: Sequence[int], field: str) -> None:
    a, b = render(generator, seeds), render(generator, seeds)
    if a.shape != b.shape or not torch.allclose(a, b, rtol=0, atol=1e-5):
        raise GanscaleError(f"{field}: the generator gives different images for the same seeds; draw its noise "
                            "inputs from the seed or from torch's RNG (pinned per batch) so that interventions "
                            "compare like with like")


# --- effects of interventions --------------------------------------------------------------------


@torch.no_grad()
def class_counts(generator, segmenter, seeds: Sequence[int], classes: int, batch: int) -> np.ndarray:
    """[N, C] int64: pixels of each class in each image (under whatever interventions are active)."""
    out = []
    for padded, keep in batches(seeds, batch):
        segmentation = segmenter(render(generator, padded))[:keep]
        out.append(_counts(segmentation, classes))
    return np.concatenate(out)


def _counts(segmentation: torch.Tensor, classes: int) -> np.ndarray:
    flat = segmentation.flatten(1).long()
    rows = torch.arange(len(flat), device=flat.device).view(-1, 1) * classes
    return torch.bincount((flat + rows).flatten(), minlength=len(flat) * classes).view(len(flat), classes).cpu().numpy()


RESAMPLES = 1000  # bootstrap resamples of the images for the removed share's interval


def removed_share(base: np.ndarray, ablated: np.ndarray, seed: int = 0) -> dict:
    """The share of a class's pixels gone after an ablation, 1 - sum(ablated) / sum(base) over the
    images, with a 95% percentile bootstrap interval over images (pairs resampled together)."""
    base, ablated = np.asarray(base, np.float64), np.asarray(ablated, np.float64)
    if base.sum() <= 0:
        return {"value": None, "ci95": None}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), size=(RESAMPLES, len(base)))
    b, a = base[idx].sum(1), ablated[idx].sum(1)
    shares = 1 - a[b > 0] / b[b > 0]
    return {"value": float(1 - ablated.sum() / base.sum()),
            "ci95": [float(np.quantile(shares, 0.025)), float(np.quantile(shares, 0.975))],
            "resamples": RESAMPLES, "method": "percentile bootstrap over images"}


@torch.no_grad()
def switch_effect(generator, segmenter, layer: str, units: Sequence[int], high: torch.Tensor, cls: int,
                  seeds: Sequence[int], classes: int, batch: int, random_units: Sequence[int] = ()) -> dict:
    """Share of class `cls` in the images as they are, with `units` ablated (0) and inserted (their
    high values) over the whole featuremap: the removed share (with its interval over images) and
    the ACE; with `random_units`, the share removed by ablating as many random units instead."""
    base = class_counts(generator, segmenter, seeds, classes, batch)
    pixels = float(base.sum(1)[0])
    with intervention(generator, layer, units, 0.0):
        ablated = class_counts(generator, segmenter, seeds, classes, batch)
    with intervention(generator, layer, units, high):
        inserted = class_counts(generator, segmenter, seeds, classes, batch)
    b, a, i = (x[:, cls].sum() / (len(x) * pixels) for x in (base, ablated, inserted))
    present = base[:, cls] > 0
    removed = removed_share(base[:, cls], ablated[:, cls], seed=cls)
    out = {"units": [int(u) for u in units], "base_fraction": float(b), "ablated_fraction": float(a),
           "inserted_fraction": float(i), "removed_share": removed["value"], "removed_ci95": removed["ci95"],
           "ace": float(i - a), "images": len(seeds), "images_with_class": int(present.sum()),
           "images_cleared": int((present & (ablated[:, cls] == 0)).sum()),
           "images_gaining_class": int((inserted[:, cls] > base[:, cls]).sum())}
    if len(random_units):
        with intervention(generator, layer, random_units, 0.0):
            random_ablated = class_counts(generator, segmenter, seeds, classes, batch)
        random = removed_share(base[:, cls], random_ablated[:, cls], seed=cls)
        out["random"] = {"units": [int(u) for u in random_units], "removed_share": random["value"],
                         "removed_ci95": random["ci95"]}
    return out


class _Capture:
    """Forward hooks that keep the outputs of some layers for the duration of a block."""

    def __init__(self, generator, layers: Sequence[str]):
        self.generator, self.layers, self.maps, self.handles = generator, list(layers), {}, []

    def __enter__(self):
        for layer in self.layers:
            self.handles.append(layer_module(self.generator, layer).register_forward_hook(
                lambda _m, _i, out, layer=layer: self.maps.__setitem__(layer, out.detach())))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def channel_scales(generator, seeds: Sequence[int], layers: Sequence[str], batch: int) -> dict[str, torch.Tensor]:
    """Per layer and channel the mean |activation| over the images and positions (the paper's
    normalisation of downstream changes)."""
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for padded, keep in batches(seeds, batch):
        with _Capture(generator, layers) as cap:
            render(generator, padded)
        for layer in layers:
            s = cap.maps[layer][:keep].abs().double().sum((0, 2, 3)) / np.prod(cap.maps[layer].shape[2:])
            sums[layer] = sums.get(layer, 0) + s
        n += keep
    return {layer: (s / n).clamp_min(1e-12) for layer, s in sums.items()}


def _normalised_change(base: torch.Tensor, changed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per image: the mean over channels and positions of |changed - base| / scale[channel]."""
    return ((changed - base).abs().double() / scale.view(1, -1, 1, 1)).mean((1, 2, 3))


@torch.no_grad()
def downstream_change(generator, seeds: Sequence[int], layer: str, units: Sequence[int], value, later: Sequence[str],
                      batch: int, scales: dict | None = None) -> dict[str, float]:
    """Per later layer, the mean normalised change (each channel's |change| divided by its mean
    |activation|, averaged over channels, positions and images) that an intervention at `layer`
    causes: how the effect grows or is suppressed downstream (the paper's figure 5, right)."""
    if not later:
        return {}
    scales = scales or channel_scales(generator, seeds, later, batch)
    totals = {name: 0.0 for name in later}
    for padded, keep in batches(seeds, batch):
        with _Capture(generator, later) as base:
            render(generator, padded)
        with intervention(generator, layer, units, value), _Capture(generator, later) as changed:
            render(generator, padded)
        for name in later:
            totals[name] += float(_normalised_change(base.maps[name][:keep], changed.maps[name][:keep],
                                                     scales[name]).sum())
    return {name: totals[name] / len(seeds) for name in later}


def map_positions(shape: tuple[int, int], side: int) -> tuple[np.ndarray, np.ndarray]:
    """At most side x side featuremap pixels, evenly spread (all of them on small maps)."""
    h, w = shape
    ys = np.unique(np.linspace(0, h - 1, min(h, side)).round().astype(int))
    xs = np.unique(np.linspace(0, w - 1, min(w, side)).round().astype(int))
    return ys, xs


@torch.no_grad()
def insertion_map(generator, segmenter, layer: str, units: Sequence[int], value, cls: int, seeds: Sequence[int],
                  classes: int, batch: int, later: Sequence[str] = (), side: int = 8,
                  scales: dict | None = None) -> dict:
    """Insert `units` at one featuremap pixel at a time (seed 004's doors): per pixel, the mean
    gain of class `cls` (share of the image's pixels, after minus before) and the success rate
    (images that gained at least half a featuremap cell's worth of pixels of the class); the share
    of the pixels where the class appeared that lie within one cell of the inserted pixel; the same
    by context (the class at that pixel before the insertion: can a sun be put into the ground?);
    and, with `later` layers, the normalised change of the last later layer per pixel and the mean
    change of every later layer for successful and unsuccessful insertions (figure 5)."""
    probe_images, probe_maps = featuremaps(generator, [int(seeds[0])] * batch, [layer])
    h, w = probe_maps[layer].shape[-2:]
    H, W = probe_images.shape[-2:]
    ys, xs = map_positions((h, w), side)
    cell_pixels = (H / h) * (W / w)
    gain = np.zeros((len(ys), len(xs)))
    success = np.zeros((len(ys), len(xs)))
    context_gain = np.zeros(classes)
    context_success = np.zeros(classes)
    context_n = np.zeros(classes, dtype=np.int64)
    new_pixels = local_pixels = 0
    later = list(later)
    scales = (scales or channel_scales(generator, seeds, later, batch)) if later else {}
    last_change = np.zeros((len(ys), len(xs)))
    layer_change = {name: {"visible": 0.0, "invisible": 0.0} for name in later}
    n_visible = n_invisible = 0
    for padded, keep in batches(seeds, batch):
        with _Capture(generator, later) as base_cap:
            base_seg = segmenter(render(generator, padded))[:keep]
        base_maps = dict(base_cap.maps)
        before = _counts(base_seg, classes)[:, cls]
        was_other = base_seg != cls
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                with intervention(generator, layer, units, value, pixel_mask((h, w), int(y), int(x))), \
                        _Capture(generator, later) as cap:
                    seg = segmenter(render(generator, padded))[:keep]
                gained = _counts(seg, classes)[:, cls] - before
                # where the class appeared: inside the inserted featuremap pixel's cell or a cell next to it?
                appeared = (seg == cls) & was_other
                y0, y1 = max(0, int((y - 1) * H / h)), min(H, int(np.ceil((y + 2) * H / h)))
                x0, x1 = max(0, int((x - 1) * W / w)), min(W, int(np.ceil((x + 2) * W / w)))
                new_pixels += int(appeared.sum())
                local_pixels += int(appeared[:, y0:y1, x0:x1].sum())
                ok = gained >= 0.5 * cell_pixels
                gain[i, j] += gained.sum() / (H * W)
                success[i, j] += ok.sum()
                # the class at the centre of the featuremap pixel, before the insertion
                cy, cx = min(int((y + 0.5) * H / h), H - 1), min(int((x + 0.5) * W / w), W - 1)
                context = base_seg[:, cy, cx].cpu().numpy()
                np.add.at(context_gain, context, gained / (H * W))
                np.add.at(context_success, context, ok)
                np.add.at(context_n, context, 1)
                for name in later:
                    change = _normalised_change(base_maps[name][:keep], cap.maps[name][:keep],
                                                scales[name]).cpu().numpy()
                    layer_change[name]["visible"] += float(change[ok].sum())
                    layer_change[name]["invisible"] += float(change[~ok].sum())
                    if name == later[-1]:
                        last_change[i, j] += change.sum()
                n_visible += int(ok.sum())
                n_invisible += int((~ok).sum())
    n = len(seeds)
    names = getattr(segmenter, "class_names", [str(c) for c in range(classes)])
    out = {"rows": ys.tolist(), "cols": xs.tolist(), "featuremap": [int(h), int(w)], "images": n,
           "gain": (gain / n).tolist(), "success": (success / n).tolist(),
           "success_rate": float(success.sum() / (n * gain.size)),
           "local_share": local_pixels / new_pixels if new_pixels else None,
           "by_context": {names[k]: {"gain": float(context_gain[k] / context_n[k]),
                                     "success": float(context_success[k] / context_n[k]), "n": int(context_n[k])}
                          for k in range(classes) if context_n[k] > 0}}
    if later:
        out["downstream_layer"] = later[-1]
        out["downstream"] = (last_change / n).tolist()
        out["downstream_by_visibility"] = {
            name: {"visible": v["visible"] / n_visible if n_visible else None,
                   "invisible": v["invisible"] / n_invisible if n_invisible else None}
            for name, v in layer_change.items()}
        out["visible_insertions"] = n_visible
    return out


@torch.no_grad()
def ablation_scores(generator, layer: str, unit_sets: Sequence[Sequence[int]], seeds: Sequence[int], batch: int,
                    score: Callable[[Callable[[], Iterator[torch.Tensor]]], float]) -> list[float]:
    """score(images) for the seeds' images with each set of units ablated in turn; `score` takes a
    function that yields the image batches (real rows only)."""
    def images():
        for padded, keep in batches(seeds, batch):
            yield render(generator, padded)[:keep]

    out = []
    for units in unit_sets:
        with intervention(generator, layer, units, 0.0):
            out.append(float(score(images)))
    return out
