"""Objectives: functions of a dict of layer activations {layer: [B, C, h, w]} returning one value
per image [B] (higher is better). The activation atlas uses `direction_cosine` at the centre
position: (h . v / |v|) * max(0.1, cos(h, v))^power (lucid's atlas notebooks use power 4), with v
optionally whitened by the inverse uncentred second moment of the layer's activations."""

from __future__ import annotations

from typing import Callable

import torch

Objective = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def _centre(acts: torch.Tensor) -> torch.Tensor:
    return acts[:, :, acts.shape[2] // 2, acts.shape[3] // 2]


def channel(layer: str, index: int) -> Objective:
    return lambda acts: acts[layer][:, index].mean((1, 2))


def direction(layer: str, vectors: torch.Tensor) -> Objective:
    """Per image b: the centre activation's projection on vectors[b]."""
    def value(acts):
        v = vectors.to(acts[layer])
        return (_centre(acts[layer]) * v).sum(1) / v.norm(dim=1).clamp_min(1e-8)
    return value


def whitening(second_moment: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """inv(A^T A / N) with a small ridge, from the layer's uncentred second moment."""
    c = second_moment.shape[0]
    ridge = eps * torch.trace(second_moment) / c
    return torch.linalg.inv(second_moment + ridge * torch.eye(c, dtype=second_moment.dtype))


def direction_cosine(layer: str, vectors: torch.Tensor, power: float = 4.0, whiten: torch.Tensor | None = None
                     ) -> Objective:
    vectors = vectors if whiten is None else vectors.to(whiten) @ whiten.T

    def value(acts):
        h = _centre(acts[layer])
        v = vectors.to(h)
        dot = (h * v).sum(1) / v.norm(dim=1).clamp_min(1e-8)
        cosine = dot / h.norm(dim=1).clamp_min(1e-4)
        return dot * cosine.clamp_min(0.1) ** power
    return value
