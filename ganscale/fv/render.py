"""The optimisation loop (lucent's `render_vis`, batched): Adam on a parameterisation's
coefficients for `steps` steps, the random transforms applied before every forward pass, the
objective summed over the batch (each image's gradient depends on its own value only). With
`tries` > 1 the whole render is repeated from fresh random coefficients and, per image, the try
with the highest objective is kept; images are judged untransformed."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
from torch import nn

from ganscale.fv.objectives import Objective
from ganscale.fv.param import FourierImage
from ganscale.fv.transforms import Transform

Model = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclasses.dataclass
class Rendered:
    images: torch.Tensor  # [B, 3, H, W] in [0, 1], the best try of each image
    objective: torch.Tensor  # [B] objective of those images (untransformed)
    start_objective: torch.Tensor  # [B] objective of the same tries' initial images


class LayerTap:
    """A model for `render`: runs `module` on images and returns the outputs of its named
    submodules `layers`, with gradients. The module's parameters are frozen."""

    def __init__(self, module: nn.Module, layers: Sequence[str]):
        self.module, self.layers = module.eval(), list(layers)
        for p in self.module.parameters():
            p.requires_grad_(False)
        modules = dict(self.module.named_modules())
        unknown = [name for name in self.layers if name not in modules]
        if unknown:
            raise KeyError(f"no submodule {unknown[0]!r} in {type(module).__name__}")
        self._modules = {name: modules[name] for name in self.layers}

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        captured = {}
        handles = [m.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
                   for name, m in self._modules.items()]
        try:
            self.module(images)
        finally:
            for h in handles:
                h.remove()
        return captured


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of square images to `size` (antialiased when shrinking); as is when None."""
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    return nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                     antialias=size < images.shape[-1])


def render(model: Model, objective: Objective, param: Callable[[int], FourierImage],
           transform: Transform | None = None, steps: int = 256, lr: float = 0.05, tries: int = 1,
           input_size: int | None = None, seed: int = 0, device: torch.device | str | None = None) -> Rendered:
    """Optimise `param(seed + t)` (a fresh parameterisation for try t, e.g.
    `lambda s: fourier_image(B, 224, seed=s)`) so that `objective(model(images))` [B] rises.
    Images are resized to `input_size` before the model when given. The transforms draw from a
    generator seeded with `seed + t`, so a render is reproducible."""
    if device is None:
        device = getattr(model, "device", None)
    best_images = best_values = start_values = None
    for attempt in range(tries):
        p = param(seed + attempt)
        if device is not None:
            p = p.to(device)
        optimiser = torch.optim.Adam(p.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed + attempt)

        def evaluate(images):
            return objective(model(resize(images, input_size)))

        with torch.no_grad():
            start = evaluate(p())
        for _ in range(steps):
            images = p()
            if transform is not None:
                images = transform(images, generator)
            loss = -evaluate(images).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            images = p()
            values = evaluate(images)
        if best_values is None:
            best_images, best_values, start_values = images, values, start
        else:
            better = values > best_values
            best_images = torch.where(better.view(-1, 1, 1, 1), images, best_images)
            best_values = torch.where(better, values, best_values)
            start_values = torch.where(better, start, start_values)
    return Rendered(best_images.detach(), best_values.detach(), start_values.detach())
