"""A DCGAN generator (Radford et al. 2016): z -> 4x4 -> ... -> resolution x resolution RGB.

Named layers, whose outputs are the featuremaps a dissection hooks: `layer1` (4x4), `layer2`
(8x8), ... one per upsampling, then `output` (the tanh image in [-1, 1]). With the defaults
(z_dim=64, resolution=32, base_channels=32) the channels are 128, 64, 32 (~300k parameters).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ganscale.models.base import latents_from_seeds


class DCGAN(nn.Module):
    num_classes = None
    chunk_size: int | None = 32  # generate() runs the network on batches of exactly this many latents

    def __init__(self, z_dim: int = 64, resolution: int = 32, base_channels: int = 32):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.z_dim, self.resolution = int(z_dim), int(resolution)
        n_blocks = int(math.log2(resolution)) - 2  # layer1 makes 4x4, each later layer doubles the side
        channels = [base_channels * 2 ** (n_blocks - 1 - i) for i in range(n_blocks)]  # e.g. 128, 64, 32
        self.layer1 = nn.Sequential(nn.ConvTranspose2d(self.z_dim, channels[0], 4, 1, 0, bias=False),
                                    nn.BatchNorm2d(channels[0]), nn.ReLU(True))
        for i in range(1, n_blocks):
            setattr(self, f"layer{i + 1}", nn.Sequential(
                nn.ConvTranspose2d(channels[i - 1], channels[i], 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels[i]), nn.ReLU(True)))
        self.output = nn.Sequential(nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1), nn.Tanh())
        self.layer_names = [f"layer{i + 1}" for i in range(n_blocks)] + ["output"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, z_dim] -> images [B, 3, R, R] in [0, 1]."""
        x = z.reshape(z.shape[0], self.z_dim, 1, 1)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return (x + 1) / 2

    @torch.no_grad()
    def from_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, R, R] in [0, 1] of latents z [B, z_dim] (eval mode): interpolation strips."""
        was_training = self.training
        self.eval()
        try:
            return self(z.to(next(self.parameters()).device))
        finally:
            self.train(was_training)

    @torch.no_grad()
    def generate(self, seeds: Sequence[int]) -> tuple[torch.Tensor, None]:
        """Images [B, 3, R, R] in [0, 1] on the module's device, and None (unconditional).

        Image i depends only on seeds[i], bit for bit: latents are drawn per seed, BatchNorm runs
        in eval mode, and the network always runs on batches of exactly `chunk_size` latents, the
        last one padded with zero latents. (Kernels choose their algorithm and thread split by
        batch size, and some then round differently: on CPU, a 2-thread ConvTranspose2d at batch 3
        differs in the last bit from batch 1. One shape for every call avoids that.)
        Forward hooks on the layers therefore see whole chunks, padding rows included; to hook
        exactly your seeds' featuremaps, call `forward(latents_from_seeds(seeds, z_dim))`, or set
        `chunk_size = None` (one call for the whole batch, without the bit-for-bit guarantee).
        The module's train/eval mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            seeds = [int(s) for s in seeds]
            if not seeds:
                return torch.zeros(0, 3, self.resolution, self.resolution, device=device), None
            z = latents_from_seeds(seeds, self.z_dim).to(device)
            size = self.chunk_size
            if size is None:
                return self(z), None
            parts = []
            for start in range(0, len(z), size):
                part = z[start:start + size]
                n = len(part)
                if n < size:
                    part = torch.cat([part, part.new_zeros(size - n, self.z_dim)])
                parts.append(self(part)[:n])
            return torch.cat(parts), None
        finally:
            self.train(was_training)
