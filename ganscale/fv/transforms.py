"""Random transforms applied to the images before each optimisation step (transformation
robustness, lucid/lucent's `standard_transforms`). Unlike lucent's, these keep the batch's shape
[B, 3, H, W] (pad shrinks the image into a border instead of growing it), so a batch of icons
stays a batch of the model's input size, and its value range: every output pixel is a convex
combination of input pixels and the fill value 0.5. Each image of a batch draws its own random
offset, scale and angle, so B icons rendered together see the same transform distribution as B
icons rendered one by one. A transform is `f(images, generator) -> images`; the torch.Generator
(on the CPU) makes a render reproducible.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

FILL = 0.5


def _warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "fill", fill: float = FILL) -> torch.Tensor:
    """Affine resampling of x [B, C, H, W] by theta [B, 2, 3] (output -> input, in grid_sample's
    normalised coordinates); outside the input: `fill` (padding="fill") or the edge ("border")."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    if padding == "border":
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def _choice(values: Sequence[float], n: int, generator: torch.Generator) -> torch.Tensor:
    index = torch.randint(len(values), (n,), generator=generator)
    return torch.as_tensor(list(values), dtype=torch.float64)[index]


def _theta(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor,
           tx: torch.Tensor | float = 0.0, ty: torch.Tensor | float = 0.0) -> torch.Tensor:
    """[B, 2, 3] from per-image entries [[a, b, tx], [c, d, ty]]."""
    tx = torch.as_tensor(tx, dtype=torch.float64).expand_as(a)
    ty = torch.as_tensor(ty, dtype=torch.float64).expand_as(a)
    return torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)], 1).float()


def pad(pixels: int, fill: float = FILL) -> Transform:
    """A border of `pixels` filled with `fill` around the image, shrunk to keep its size (lucent's
    constant pad followed by the resize to the model's input)."""
    def apply(x, _generator):
        n, h, w = len(x), x.shape[-2], x.shape[-1]
        one = torch.ones(n, dtype=torch.float64)
        zero = torch.zeros(n, dtype=torch.float64)
        return _warp(x, _theta(one * (w + 2 * pixels) / w, zero, zero, one * (h + 2 * pixels) / h), fill=fill)
    return apply


def jitter(pixels: int) -> Transform:
    """Shift each image by a whole number of pixels, independently in x and y, uniformly in
    [-(pixels // 2), pixels - pixels // 2] (lucid's random crop of `pixels`); edge pixels repeat.
    A gather of whole pixels: the values are not interpolated."""
    def apply(x, generator):
        n, h, w = len(x), x.shape[-2], x.shape[-1]
        dx, dy = torch.randint(-(pixels // 2), pixels - pixels // 2 + 1, (2, n), generator=generator).to(x.device)
        rows = (torch.arange(h, device=x.device)[None, :] - dy[:, None]).clamp(0, h - 1)  # [B, H]
        cols = (torch.arange(w, device=x.device)[None, :] - dx[:, None]).clamp(0, w - 1)  # [B, W]
        batch = torch.arange(n, device=x.device)[:, None, None]
        return x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return apply


def random_scale(scales: Sequence[float]) -> Transform:
    """Zoom each image about its centre by a factor drawn from `scales` (>1 enlarges; the border
    uncovered by a factor < 1 is filled with 0.5)."""
    def apply(x, generator):
        s = _choice(scales, len(x), generator)
        zero = torch.zeros_like(s)
        return _warp(x, _theta(1 / s, zero, zero, 1 / s))
    return apply


def random_rotate(degrees: Sequence[float]) -> Transform:
    """Rotate each image about its centre by an angle drawn from `degrees` (corners filled with 0.5)."""
    def apply(x, generator):
        h, w = x.shape[-2], x.shape[-1]
        a = torch.deg2rad(_choice(degrees, len(x), generator))
        # rotation in pixel units, expressed in the normalised coordinates of a possibly non-square image
        return _warp(x, _theta(torch.cos(a), -torch.sin(a) * h / w, torch.sin(a) * w / h, torch.cos(a)))
    return apply


def compose(transforms: Sequence[Transform]) -> Transform:
    def apply(x, generator):
        for t in transforms:
            x = t(x, generator)
        return x
    return apply


def standard(size: int) -> Transform:
    """lucent's `standard_transforms` (pad 12, jitter 8, scale 0.9..1.1, rotate -10..10 degrees with
    extra weight on 0, jitter 4 at 224 px), the pixel amounts scaled to the image side `size`."""
    k = size / 224
    return compose([pad(max(1, round(12 * k))),
                    jitter(max(1, round(8 * k))),
                    random_scale([1 + (i - 5) / 50 for i in range(11)]),
                    random_rotate(list(range(-10, 11)) + 5 * [0]),
                    jitter(max(1, round(4 * k)))])
