"""A DCGAN generator (Radford et al. 2016): z -> 4x4 -> ... -> resolution x resolution RGB.

Named layers, whose outputs are the featuremaps a dissection hooks: `layer1` (4x4), `layer2`
(8x8), ... one per upsampling, then `output` (the tanh image in [-1, 1]). With the defaults
(z_dim=64, resolution=32, base_channels=32) the channels are 128, 64, 32 (~300k parameters).

`from_tutorial_state` loads the PyTorch DCGAN tutorial's layout (`main.0.weight`, ... `netG_state_dict`
in a torch.save'd dict), inferring z_dim, the channels and the resolution from the tensor shapes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ganscale.errors import GanscaleError
from ganscale.models.base import latents_from_seeds


class DCGAN(nn.Module):
    num_classes = None
    chunk_size: int | None = 32  # generate() runs the network on batches of exactly this many latents

    def __init__(self, z_dim: int = 64, resolution: int = 32, base_channels: int = 32,
                 channels: Sequence[int] | None = None, output_bias: bool = True):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.z_dim, self.resolution = int(z_dim), int(resolution)
        n_blocks = int(math.log2(resolution)) - 2  # layer1 makes 4x4, each later layer doubles the side
        if channels is None:
            channels = [base_channels * 2 ** (n_blocks - 1 - i) for i in range(n_blocks)]  # e.g. 128, 64, 32
        if len(channels) != n_blocks:
            raise ValueError(f"{n_blocks} block channels needed for resolution {resolution}, got {len(channels)}")
        channels = [int(c) for c in channels]
        self.layer1 = nn.Sequential(nn.ConvTranspose2d(self.z_dim, channels[0], 4, 1, 0, bias=False),
                                    nn.BatchNorm2d(channels[0]), nn.ReLU(True))
        for i in range(1, n_blocks):
            setattr(self, f"layer{i + 1}", nn.Sequential(
                nn.ConvTranspose2d(channels[i - 1], channels[i], 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels[i]), nn.ReLU(True)))
        self.output = nn.Sequential(nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1, bias=output_bias), nn.Tanh())
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


def is_tutorial_state(state: dict) -> bool:
    """A checkpoint in the PyTorch DCGAN tutorial's layout (an nn.Sequential called `main`)."""
    state = state.get("netG_state_dict", state)
    return isinstance(state, dict) and any(k.removeprefix("module.").startswith("main.") for k in state)


def from_tutorial_state(state: dict, field: str, z_dim: int | None = None,
                        resolution: int | None = None) -> DCGAN:
    """A DCGAN with the weights of a PyTorch-tutorial generator (`main.N` keys; the checkpoint dict
    or its `netG_state_dict`): ConvTranspose(4, 1, 0) + BatchNorm + ReLU to 4x4, then
    ConvTranspose(4, 2, 1) + BatchNorm + ReLU blocks, then ConvTranspose(4, 2, 1) to RGB + Tanh.
    z_dim (nz), the channels (ngf * 8, 4, 2, 1) and the resolution come from the tensor shapes; the
    `main.N` indices map to layer1..layerN and output, the names a dissection hooks. `z_dim` and
    `resolution`, when the study states them, must agree. Every problem is one line naming `field`."""
    state = state.get("netG_state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # nn.DataParallel's prefix
    if not all(k.startswith("main.") for k in state):
        other = next(k for k in state if not k.startswith("main."))
        raise GanscaleError(f"{field}: '{other}' is not a key of the PyTorch-tutorial DCGAN layout (main.N.*)")

    def tensor(key: str) -> torch.Tensor:
        if key not in state:
            raise GanscaleError(f"{field}: PyTorch-tutorial DCGAN weights lack '{key}'")
        if not isinstance(state[key], torch.Tensor):
            raise GanscaleError(f"{field}: '{key}' is a {type(state[key]).__name__}, not a tensor")
        return state[key]

    # main.(3i) ConvTranspose2d, main.(3i+1) BatchNorm2d, main.(3i+2) ReLU; the last conv has no BatchNorm
    n_blocks = sum(1 for k in state if k.endswith(".running_mean"))
    if n_blocks < 1:
        raise GanscaleError(f"{field}: no BatchNorm layers (main.N.running_mean) in the PyTorch-tutorial DCGAN weights")
    convs = [tensor(f"main.{3 * i}.weight") for i in range(n_blocks + 1)]
    for i, w in enumerate(convs):
        if w.ndim != 4 or tuple(w.shape[2:]) != (4, 4):
            raise GanscaleError(f"{field}: main.{3 * i}.weight has shape {tuple(w.shape)}, expected "
                                "(in, out, 4, 4) (a ConvTranspose2d of the tutorial DCGAN)")
    nz, channels = int(convs[0].shape[0]), [int(w.shape[1]) for w in convs[:-1]]
    if convs[-1].shape[1] != 3:
        raise GanscaleError(f"{field}: main.{3 * n_blocks}.weight makes {convs[-1].shape[1]} channels, expected 3 (RGB)")
    side = 4 * 2 ** n_blocks
    if z_dim is not None and z_dim != nz:
        raise GanscaleError(f"{field}: the weights take z_dim {nz}, the study says z_dim {z_dim}")
    if resolution is not None and resolution != side:
        raise GanscaleError(f"{field}: the weights make {side}x{side} images, the study says resolution {resolution}")

    module = DCGAN(z_dim=nz, resolution=side, channels=channels, output_bias=f"main.{3 * n_blocks}.bias" in state)
    names = {}  # tutorial key -> DCGAN key
    for i in range(n_blocks):
        names[f"main.{3 * i}.weight"] = f"layer{i + 1}.0.weight"
        for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            names[f"main.{3 * i + 1}.{part}"] = f"layer{i + 1}.1.{part}"
    for part in ("weight", "bias"):
        names[f"main.{3 * n_blocks}.{part}"] = f"output.0.{part}"
    own = module.state_dict()
    unexpected = sorted(set(state) - set(names), key=str)
    if unexpected:
        raise GanscaleError(f"{field}: unexpected key '{unexpected[0]}' for a PyTorch-tutorial DCGAN "
                            f"with {n_blocks} blocks")
    converted = {}
    for key, target in names.items():
        if target not in own:
            continue
        value = tensor(key)
        if tuple(value.shape) != tuple(own[target].shape):
            raise GanscaleError(f"{field}: {key} has shape {tuple(value.shape)}, expected {tuple(own[target].shape)} "
                                f"(z_dim {nz}, channels {channels})")
        converted[target] = value
    module.load_state_dict(converted, strict=True)
    return module.eval()
