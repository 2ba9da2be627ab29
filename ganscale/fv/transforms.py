"""Random transforms applied before each optimisation step (transformation robustness): each keeps
the batch's shape [B, 3, H, W] and its value range. Pass a torch.Generator for reproducibility."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _warp(x: torch.Tensor, theta: torch.Tensor, fill: float = 0.5) -> torch.Tensor:
    """Affine resampling of x (output pixel -> input coordinates), outside filled with `fill`."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def pad(pixels: int, fill: float = 0.5) -> Transform:
    """Surround the image by a `pixels` border of `fill` (shrinking it to keep the size)."""
    def apply(x, _generator):
        h = x.shape[-1]
        s = (h + 2 * pixels) / h
        theta = torch.tensor([[s, 0, 0], [0, s, 0]], dtype=x.dtype, device=x.device).expand(len(x), 2, 3)
        return _warp(x, theta, fill)
    return apply


def jitter(pixels: int) -> Transform:
    """Shift by up to `pixels` in x and y (edge pixels repeat)."""
    def apply(x, generator):
        dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
        padded = F.pad(x, (pixels, pixels, pixels, pixels), mode="replicate")
        h, w = x.shape[-2:]
        return padded[..., pixels + dy:pixels + dy + h, pixels + dx:pixels + dx + w]
    return apply


def random_scale(scales: Sequence[float]) -> Transform:
    def apply(x, generator):
        s = float(scales[int(torch.randint(len(scales), (1,), generator=generator))])
        theta = torch.tensor([[1 / s, 0, 0], [0, 1 / s, 0]], dtype=x.dtype, device=x.device).expand(len(x), 2, 3)
        return _warp(x, theta)
    return apply


def random_rotate(degrees: Sequence[float]) -> Transform:
    def apply(x, generator):
        a = math.radians(float(degrees[int(torch.randint(len(degrees), (1,), generator=generator))]))
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]], dtype=x.dtype,
                             device=x.device).expand(len(x), 2, 3)
        return _warp(x, theta)
    return apply


def compose(transforms: Sequence[Transform]) -> Transform:
    def apply(x, generator):
        for t in transforms:
            x = t(x, generator)
        return x
    return apply


def standard(size: int) -> Transform:
    """Lucid's standard transforms, scaled to the image side (pad 12, jitter 8, scale, rotate, jitter 4 at 224)."""
    k = size / 224
    return compose([pad(max(1, round(12 * k))), jitter(max(1, round(8 * k))),
                    random_scale([1 + (i - 5) / 50 for i in range(11)]), random_rotate(list(range(-10, 11)) + 5 * [0]),
                    jitter(max(1, round(4 * k)))])
