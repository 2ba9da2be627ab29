"""Lucid's InceptionV1 ("inception5h", the GoogLeNet of the Distill circuits / activation-atlas
work) in PyTorch.

Architecturally identical to lucent's `lucent.modelzoo.inceptionv1.InceptionV1` (itself a port
by ProGamerGov of the TensorFlow graph): the same parameter names and shapes, so the published
`inception5h.pth` loads with `strict=True`, and the same forward math (TensorFlow-style explicit
padding, -inf padding before max pools, LRN in the stem). Differences: plain ReLU (no redirected
gradient trick), the `x * 255 - 117` preprocessing happens inside `forward`, and the output is the
1008 pre-softmax logits.

Each of the nine inception blocks ends in a parameterless submodule named after the block
(`model.mixed4c`, ...) whose output is the block's concatenated post-ReLU activation, so a forward
hook on it sees the layer's [B, C, H, W] tensor.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ganscale.errors import GanscaleError

# Per inception block, the output channels of its branches:
# (1x1, 3x3_bottleneck, 3x3, 5x5_bottleneck, 5x5, pool_reduce). Input channels follow from the
# previous block (192 from the stem for mixed3a).
_BLOCKS: dict[str, tuple[int, int, int, int, int, int]] = {
    "mixed3a": (64, 96, 128, 16, 32, 32),
    "mixed3b": (128, 128, 192, 32, 96, 64),
    "mixed4a": (192, 96, 204, 16, 48, 64),
    "mixed4b": (160, 112, 224, 24, 64, 64),
    "mixed4c": (128, 128, 256, 24, 64, 64),
    "mixed4d": (112, 144, 288, 32, 64, 64),
    "mixed4e": (256, 160, 320, 32, 128, 128),
    "mixed5a": (256, 160, 320, 48, 128, 128),
    "mixed5b": (384, 192, 384, 48, 128, 128),
}
_DOWNSAMPLE_BEFORE = {"mixed4a", "mixed5a"}  # maxpool4 and maxpool10 in the TF graph

_LRN = dict(size=9, alpha=9.99999974738e-05, beta=0.5, k=1.0)
_NEG_INF = float("-inf")


class Concat(nn.Module):
    """Concatenates a block's branches along channels; parameterless, so a hook point only."""

    def forward(self, branches: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat(branches, dim=1)


def _pool3x3(x: torch.Tensor, stride: int) -> torch.Tensor:
    """3x3 max pool with TensorFlow SAME padding made explicit with -inf: stride 1 pads 1 on every
    side, stride 2 pads 1 on the bottom/right only."""
    pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)
    return F.max_pool2d(F.pad(x, pad, value=_NEG_INF), kernel_size=3, stride=stride)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    # No padding inside the conv: it is applied explicitly (zeros) in forward, as in the TF graph.
    return nn.Conv2d(cin, cout, kernel_size=k, stride=1)


class InceptionV1(nn.Module):
    input_size = 224
    num_classes = 1008
    layers = {"mixed3a": 256, "mixed3b": 480, "mixed4a": 508, "mixed4b": 512, "mixed4c": 512,
              "mixed4d": 528, "mixed4e": 832, "mixed5a": 832, "mixed5b": 1024}

    def __init__(self):
        super().__init__()
        self.conv2d0_pre_relu_conv = nn.Conv2d(3, 64, kernel_size=7, stride=2)
        self.conv2d1_pre_relu_conv = _conv(64, 64, 1)
        self.conv2d2_pre_relu_conv = _conv(64, 192, 3)
        cin = 192
        for name, (c1, c3r, c3, c5r, c5, cp) in _BLOCKS.items():
            # Registration order (and so state_dict order) as in lucent.
            for branch, (i, o, k) in {"1x1": (cin, c1, 1), "3x3_bottleneck": (cin, c3r, 1),
                                      "5x5_bottleneck": (cin, c5r, 1), "pool_reduce": (cin, cp, 1),
                                      "3x3": (c3r, c3, 3), "5x5": (c5r, c5, 5)}.items():
                setattr(self, f"{name}_{branch}_pre_relu_conv", _conv(i, o, k))
            setattr(self, name, Concat())
            cin = c1 + c3 + c5 + cp
            assert cin == self.layers[name], name
        self.softmax2_pre_activation_matmul = nn.Linear(1024, self.num_classes)

    def _conv_relu(self, name: str, x: torch.Tensor, pad: int = 0) -> torch.Tensor:
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))
        return F.relu(getattr(self, f"{name}_pre_relu_conv")(x))

    def _block(self, name: str, x: torch.Tensor) -> torch.Tensor:
        b1 = self._conv_relu(f"{name}_1x1", x)
        b3 = self._conv_relu(f"{name}_3x3", self._conv_relu(f"{name}_3x3_bottleneck", x), pad=1)
        b5 = self._conv_relu(f"{name}_5x5", self._conv_relu(f"{name}_5x5_bottleneck", x), pad=2)
        bp = self._conv_relu(f"{name}_pool_reduce", _pool3x3(x, stride=1))
        return getattr(self, name)((b1, b3, b5, bp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RGB images [B, 3, 224, 224] in [0, 1] -> logits [B, 1008] (before the softmax)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.input_size, self.input_size):
            raise ValueError(f"InceptionV1 expects images [B, 3, {self.input_size}, {self.input_size}], "
                             f"got {list(x.shape)}")
        x = x * 255.0 - 117.0
        x = F.relu(self.conv2d0_pre_relu_conv(F.pad(x, (2, 3, 2, 3))))  # TF SAME, stride 2
        x = F.local_response_norm(_pool3x3(x, stride=2), **_LRN)
        x = self._conv_relu("conv2d1", x)
        x = self._conv_relu("conv2d2", x, pad=1)
        x = _pool3x3(F.local_response_norm(x, **_LRN), stride=2)
        for name in _BLOCKS:
            if name in _DOWNSAMPLE_BEFORE:
                x = _pool3x3(x, stride=2)
            x = self._block(name, x)
        x = F.avg_pool2d(x, kernel_size=7, stride=1)  # [B, 1024, 1, 1] at 224 input
        return self.softmax2_pre_activation_matmul(x.flatten(1))


def load_inception_v1(weights: str | None, sha256: str | None = None,
                      storage_options: dict | None = None) -> InceptionV1:
    """InceptionV1 in eval mode with weights from a local path, builtin:, s3:// or http(s)://
    (see ganscale.weights), verified against `sha256` when given and loaded strictly.

    `weights=None` gives random initialisation: for tests only, its activations mean nothing.
    """
    from ganscale.models.registry import load_strict
    from ganscale.weights import load_state_dict

    model = InceptionV1()
    if weights is not None:
        state = load_state_dict(weights, sha256, field="probe.weights", storage_options=storage_options)
        if not isinstance(state, Mapping):
            raise GanscaleError(f"probe.weights: {weights} holds a {type(state).__name__}, not a state_dict")
        load_strict(model, dict(state), "probe.weights")
    return model.eval()
