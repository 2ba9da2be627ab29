"""The small protocols every model hides behind.

A generator turns integer seeds into images in [0, 1]; a probe turns images into named layer
activations and logits; a segmenter turns images into per-pixel class maps. Everything else in
ganscale only talks to these.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class Generator(Protocol):
    resolution: int  # images are [B, 3, resolution, resolution]
    num_classes: int | None  # None for unconditional generators

    def to(self, device: torch.device | str) -> "Generator": ...

    def generate(self, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images [B, 3, H, W] float in [0, 1] (on the generator's device), and class labels [B]
        (int64) or None. Image i depends only on seeds[i], never on the rest of the batch."""
        ...

    # Optional, for latent interpolation strips: `z_dim` and `from_latents(z [B, z_dim]) -> images`,
    # where generate(seeds) == from_latents(latents_from_seeds(seeds, z_dim)).


@runtime_checkable
class Probe(Protocol):
    input_size: int  # square input side the probe expects; images are resized to it
    layers: dict[str, int]  # layer name -> channels, in network order
    num_classes: int

    def to(self, device: torch.device | str) -> "Probe": ...

    def __call__(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """images [B, 3, input_size, input_size] in [0, 1] -> ({layer: [B, C, h, w]}, logits [B, K])."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    class_names: list[str]

    def to(self, device: torch.device | str) -> "Segmenter": ...

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> class map [B, H, W] int64 (index into class_names)."""
        ...


def latent_from_seed(seed: int, dim: int) -> torch.Tensor:
    """A standard-normal latent vector determined by one seed alone (drawn on the CPU, so the
    same seed gives the same latent on every device and in every batch)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(dim, generator=g)


def latents_from_seeds(seeds: Sequence[int], dim: int) -> torch.Tensor:
    return torch.stack([latent_from_seed(s, dim) for s in seeds])
