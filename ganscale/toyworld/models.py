"""The toy world's probe (a small scene classifier) and segmenter (a tiny U-Net).

Both take images [B, 3, 32, 32] in [0, 1]. Their weights ship in ganscale/toyworld/weights and are
retrained by `python -m ganscale.toyworld.train`.
"""

from __future__ import annotations

import torch
from torch import nn

from ganscale.toyworld.scenes import CLASS_NAMES, OBJECT_CLASSES


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) * 4.0  # [0, 1] -> about [-2, 2]


class ToyProbe(nn.Module):
    """Classifies a scene's main object (OBJECT_CLASSES). Named layers (post-ReLU):
    block1 [B, 32, 16, 16], block2 [B, 64, 8, 8], block3 [B, 128, 4, 4]; forward returns logits [B, 4]."""

    input_size = 32
    num_classes = len(OBJECT_CLASSES)
    layers = {"block1": 32, "block2": 64, "block3": 128}
    class_names = OBJECT_CLASSES

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(*_conv(3, 32), *_conv(32, 32, stride=2))  # 32x32 -> 16x16
        self.block2 = nn.Sequential(*_conv(32, 64, stride=2), *_conv(64, 64))  # -> 8x8
        self.block3 = nn.Sequential(*_conv(64, 128, stride=2))  # -> 4x4
        self.head = nn.Linear(128, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block3(self.block2(self.block1(_normalise(x))))
        return self.head(h.mean((2, 3)))


class ToySegmenter(nn.Module):
    """A tiny U-Net: images [B, 3, H, W] (H, W multiples of 4) -> class logits [B, 6, H, W] over
    CLASS_NAMES. `segment(images)` (or `__call__`-style use through ModuleSegmenter) gives the
    argmax class map [B, H, W] int64."""

    class_names = CLASS_NAMES

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(*_conv(3, 16), *_conv(16, 16))  # 32x32
        self.enc2 = nn.Sequential(*_conv(16, 32, stride=2), *_conv(32, 32))  # 16x16
        self.enc3 = nn.Sequential(*_conv(32, 64, stride=2), *_conv(64, 64))  # 8x8
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = nn.Sequential(*_conv(64, 32))
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec1 = nn.Sequential(*_conv(32, 16))
        self.head = nn.Conv2d(16, len(CLASS_NAMES), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(_normalise(x))
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Class map [B, H, W] int64 (index into CLASS_NAMES), computed in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self(images).argmax(1)
        finally:
            self.train(was_training)
