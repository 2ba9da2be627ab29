"""Objectives: functions of the captured activations {layer: [B, C, h, w]} returning one value per
image, [B] (higher is better), so B different targets (say the mean activations of B atlas cells)
are optimised in one batch and each image is judged on its own value.

The activation atlas (Carter et al. 2019; lucid's `direction_neuron_cossim_S`) uses
`direction_cosine` at the centre position of the layer:

    (h . v / |v|) * max(0.1, cos(h, v))^power          (power 4 in lucid's atlas notebooks)

with v optionally whitened, v <- W v with W = inv(A^T A / N) the inverse uncentred second moment
of the layer's activations A (`whitening`), so directions that many images share do not dominate.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Objective = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def _at(acts: torch.Tensor, position: tuple[int, int] | None) -> torch.Tensor:
    """[B, C] at (y, x), default the centre position (h // 2, w // 2)."""
    y, x = position if position is not None else (acts.shape[2] // 2, acts.shape[3] // 2)
    return acts[:, :, y, x]


def _per_image(vectors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(vectors).to(like)
    return v.expand(like.shape[0], -1) if v.dim() == 1 else v


def channel(layer: str, index: int | Sequence[int]) -> Objective:
    """Mean activation of channel `index` over the featuremap (one index, or one per image)."""
    def value(acts):
        a = acts[layer]
        i = torch.as_tensor(index, device=a.device).expand(a.shape[0])
        return a[torch.arange(a.shape[0], device=a.device), i].mean((1, 2))
    return value


def neuron(layer: str, index: int | Sequence[int], position: tuple[int, int] | None = None) -> Objective:
    """Activation of channel `index` at one position (default the centre)."""
    def value(acts):
        h = _at(acts[layer], position)
        i = torch.as_tensor(index, device=h.device).expand(h.shape[0])
        return h[torch.arange(h.shape[0], device=h.device), i]
    return value


def direction(layer: str, vectors: torch.Tensor, position: tuple[int, int] | None = None) -> Objective:
    """Projection h . v / |v| of the activation h at `position` (default the centre) on v:
    `vectors` [C] (every image) or [B, C] (image b gets vectors[b])."""
    def value(acts):
        h = _at(acts[layer], position)
        v = _per_image(vectors, h)
        return (h * v).sum(1) / v.norm(dim=1).clamp_min(1e-8)
    return value


def whitening(second_moment: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """inv(A^T A / N + ridge I), the ridge `eps` times the mean eigenvalue (so the inverse exists
    for channels that never fire, e.g. dead ReLUs), from the layer's uncentred second moment
    A^T A / N [C, C]. Symmetric."""
    m = torch.as_tensor(second_moment).double()
    c = m.shape[0]
    ridge = eps * torch.trace(m) / c
    w = torch.linalg.inv(m + ridge * torch.eye(c, dtype=m.dtype))
    return ((w + w.T) / 2).to(torch.as_tensor(second_moment).dtype)


def direction_cosine(layer: str, vectors: torch.Tensor, power: float = 4.0, whiten: torch.Tensor | None = None,
                     position: tuple[int, int] | None = None, floor: float = 0.1) -> Objective:
    """(h . v / |v|) * max(floor, cos(h, v))^power at `position` (default the centre), for
    `vectors` [C] or [B, C]; v <- whiten @ v first when a whitening matrix [C, C] is given."""
    vectors = torch.as_tensor(vectors)
    if whiten is not None:
        vectors = vectors.to(whiten) @ torch.as_tensor(whiten).T

    def value(acts):
        h = _at(acts[layer], position)
        v = _per_image(vectors, h)
        dot = (h * v).sum(1) / v.norm(dim=1).clamp_min(1e-8)
        cosine = dot / h.norm(dim=1).clamp_min(1e-4)
        return dot * cosine.clamp_min(floor) ** power
    return value


def cosine(layer: str, vectors: torch.Tensor, position: tuple[int, int] | None = None) -> Objective:
    """cos(h, v) at `position`: a scale-free measure of how well an image hits its target."""
    def value(acts):
        h = _at(acts[layer], position)
        v = _per_image(vectors, h)
        return torch.nn.functional.cosine_similarity(h, v, dim=1, eps=1e-8)
    return value
