"""The optimisation loop: Adam on the parameterisation's coefficients, transforms before each
forward pass, best of several tries per image (judged on the untransformed image)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
from torch import nn

from ganscale.fv.objectives import Objective
from ganscale.fv.param import FourierImage
from ganscale.fv.transforms import Transform


@dataclasses.dataclass
class Rendered:
    images: torch.Tensor  # [B, 3, H, W] in [0, 1], the best try of each image
    objective: torch.Tensor  # [B] objective of those images (untransformed)
    start_objective: torch.Tensor  # [B] objective of the initial images of the kept tries


class LayerTap:
    """Runs a module and returns its named submodules' outputs (with gradients)."""

    def __init__(self, module: nn.Module, layers: Sequence[str]):
        self.module, self.layers = module.eval(), list(layers)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        captured = {}
        modules = dict(self.module.named_modules())
        handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
                   for name in self.layers]
        try:
            self.module(images)
        finally:
            for h in handles:
                h.remove()
        return captured


def render(model: Callable[[torch.Tensor], dict[str, torch.Tensor]], make_param: Callable[[int], FourierImage],
           objective: Objective, transform: Transform | None = None, steps: int = 256, lr: float = 0.05,
           tries: int = 1, input_size: int | None = None, seed: int = 0) -> Rendered:
    """`make_param(seed)` builds a fresh parameterisation; the images are resized to `input_size`
    before the model when given (so icons can be rendered at any size)."""
    best_images = best_values = start_values = None
    for attempt in range(tries):
        param = make_param(seed + attempt)
        device = next(model.module.parameters()).device if hasattr(model, "module") else param.coefficients.device
        param.to(device)
        optimiser = torch.optim.Adam(param.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed + attempt)

        def evaluate(images):
            if input_size and images.shape[-1] != input_size:
                images = nn.functional.interpolate(images, size=(input_size, input_size), mode="bilinear",
                                                   align_corners=False, antialias=True)
            return objective(model(images))

        with torch.no_grad():
            start = evaluate(param())
        for _ in range(steps):
            images = param()
            if transform is not None:
                images = transform(images, generator)
            loss = -evaluate(images).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            images = param()
            values = evaluate(images)
        if best_values is None:
            best_images, best_values, start_values = images, values, start
        else:
            better = values > best_values
            best_images = torch.where(better.view(-1, 1, 1, 1), images, best_images)
            best_values = torch.where(better, values, best_values)
            start_values = torch.where(better, start, start_values)
    return Rendered(best_images.detach(), best_values.detach(), start_values.detach())
