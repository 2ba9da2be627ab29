"""Hooks on a generator's named layers: read featuremaps, and switch units off and on.

An intervention replaces a layer's output x by x' = x * (1 - a) + v * a, where a is 1 on the chosen
units (over the whole map, or only at chosen featuremap pixels) and v is 0 (ablation) or each unit's
high quantile (insertion), as in GAN dissection. Images must depend on the seeds alone (the
Generator protocol): StyleGAN-like noise inputs have to be drawn from the seed, or interventions
would compare different images (seed 003 tripped on this); `check_deterministic` tests it.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from ganscale.errors import GanscaleError
from ganscale.models.base import latents_from_seeds


def network(generator) -> nn.Module:
    """The torch module whose named submodules are the generator's layers."""
    for candidate in (generator, getattr(generator, "module", None), getattr(generator, "model", None),
                      getattr(generator, "inner", None)):
        if isinstance(candidate, nn.Module):
            return candidate
    raise GanscaleError(f"dissect: generator {type(generator).__name__} exposes no torch module to hook")


def layer_module(generator, layer: str, field: str = "dissect.layers") -> nn.Module:
    modules = dict(network(generator).named_modules())
    if layer not in modules or not layer:
        known = [n for n, m in network(generator).named_children()]
        raise GanscaleError(f"{field}: the generator has no layer '{layer}' (top-level layers: {', '.join(known)})")
    return modules[layer]


def render(generator, seeds: Sequence[int]) -> torch.Tensor:
    """Images of the seeds in one forward pass when the generator takes latents (so hooks see
    exactly these rows), else through generate()."""
    if hasattr(generator, "from_latents") and hasattr(generator, "z_dim"):
        device = next(network(generator).parameters()).device
        return generator.from_latents(latents_from_seeds(list(seeds), generator.z_dim).to(device))
    images, _ = generator.generate(list(seeds))
    return images


@torch.no_grad()
def render_batched(generator, seeds: Sequence[int], batch: int = 128) -> torch.Tensor:
    return torch.cat([render(generator, list(seeds[i:i + batch])) for i in range(0, len(seeds), batch)])


@torch.no_grad()
def featuremaps(generator, seeds: Sequence[int], layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images [B, 3, H, W] and the outputs {layer: [B, U, h, w]} of the named layers."""
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
        out = torch.cat(parts)
        if len(out) != len(seeds):
            raise GanscaleError(f"dissect: layer {layer} ran on {len(out)} rows for {len(seeds)} seeds; give the "
                                "generator from_latents(z) or a generate() that runs one batch")
        maps[layer] = out
    return images, maps


@contextlib.contextmanager
def intervention(generator, layer: str, units: Sequence[int], value: torch.Tensor | float = 0.0,
                 where: torch.Tensor | None = None):
    """Within the block, layer outputs become x * (1 - a) + v * a on `units`; `value` is a scalar or
    one value per unit; `where` a [h, w] featuremap mask (default: everywhere)."""
    units = torch.as_tensor(list(units), dtype=torch.long)

    def hook(_module, _inputs, out):
        a = torch.zeros_like(out[:1])
        mask = torch.ones(out.shape[-2:], device=out.device) if where is None else where.to(out.device, out.dtype)
        a[:, units.to(out.device)] = mask
        v = torch.zeros_like(out[:1])
        v[:, units.to(out.device)] = torch.as_tensor(value, dtype=out.dtype, device=out.device).reshape(-1, 1, 1)
        return out * (1 - a) + v * a

    handle = layer_module(generator, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def check_deterministic(generator, seeds: Sequence[int], field: str) -> None:
    a, b = render(generator, seeds), render(generator, seeds)
    if not torch.equal(a, b):
        raise GanscaleError(f"{field}: the generator gives different images for the same seeds; fix its noise "
                            "inputs (draw them from the seed) so that interventions compare like with like")


def later_layers(generator, layer: str, candidates: Sequence[str]) -> list[str]:
    """The candidate layers that run after `layer`, in network order (by registration order)."""
    names = [n for n, _ in network(generator).named_modules()]
    return [c for c in candidates if c in names and names.index(c) > names.index(layer)]


@torch.no_grad()
def downstream_change(generator, seeds: Sequence[int], layer: str, units: Sequence[int], value, later: Sequence[str]
                      ) -> dict[str, float]:
    """Normalised change ||f(x') - f(x)|| / ||f(x)|| that an intervention at `layer` causes in each later layer."""
    _, base = featuremaps(generator, seeds, later)
    with intervention(generator, layer, units, value):
        _, changed = featuremaps(generator, seeds, later)
    return {name: float((changed[name] - base[name]).norm() / base[name].norm().clamp_min(1e-12)) for name in later}
