"""A real scene parser for dissection: UPerNet (Xiao et al. 2018) on a ResNet-50/101 encoder, with
the module layout of CSAILVision/semantic-segmentation-pytorch, so its released ADE20K checkpoints
(`ade20k-resnet50-upernet`, `ade20k-resnet101-upernet`: `encoder_epoch_*.pth` and
`decoder_epoch_*.pth`, 150 classes) load with every key checked. Nothing is downloaded.

In a study:

    dissect:
      segmenter: {name: "ganscale.dissect.upernet:ade20k_upernet", weights: /models/ade20k-resnet50-upernet}

`weights` is a folder holding one encoder_*.pth and one decoder_*.pth (the class names are read
from `object150_info.csv` there when present, the repository's data/object150_info.csv: first name
of each row's Name; else they are `class0`..), or one file holding {"encoder": state_dict,
"decoder": state_dict[, "class_names": [...]]}. Images in [0, 1] are normalised with the ImageNet
mean and standard deviation, segmented at their own size in one scale (the repository averages
several scales at test time), and the argmax is taken per pixel.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganscale.errors import GanscaleError

log = logging.getLogger("ganscale.dissect")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int = 1, project: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(width * 4)) if project else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Encoder(nn.Module):
    """ResNet with a three-convolution stem (64, 64, 128 channels); returns the four stage outputs."""

    def __init__(self, depths=DEPTHS["resnet50"]):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 128
        for i, (width, blocks) in enumerate(zip((64, 128, 256, 512), depths)):
            stride = 1 if i == 0 else 2
            stage = [_Bottleneck(cin, width, stride, project=True)]
            stage += [_Bottleneck(width * 4, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = width * 4

    def forward(self, x) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.maxpool(F.relu(self.bn3(self.conv3(x))))
        out = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            out.append(x)
        return out


class Decoder(nn.Module):
    """UPerNet head: a pyramid pooling module on the last stage, a feature pyramid over all four,
    fused at the finest scale."""

    def __init__(self, num_classes: int = 150, fc_dim: int = 2048, fpn_dim: int = 512, pool_scales=(1, 2, 3, 6),
                 fpn_inplanes=(256, 512, 1024, 2048)):
        super().__init__()
        self.ppm_pooling = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in pool_scales)
        self.ppm_conv = nn.ModuleList(_conv_bn_relu(fc_dim, 512, kernel=1) for _ in pool_scales)
        self.ppm_last_conv = _conv_bn_relu(fc_dim + len(pool_scales) * 512, fpn_dim)
        self.fpn_in = nn.ModuleList(_conv_bn_relu(c, fpn_dim, kernel=1) for c in fpn_inplanes[:-1])
        self.fpn_out = nn.ModuleList(nn.Sequential(_conv_bn_relu(fpn_dim, fpn_dim)) for _ in fpn_inplanes[:-1])
        self.conv_last = nn.Sequential(_conv_bn_relu(len(fpn_inplanes) * fpn_dim, fpn_dim),
                                       nn.Conv2d(fpn_dim, num_classes, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        size = top.shape[-2:]
        # the released weights were trained with the pooled maps upsampled before their 1x1 conv
        pooled = [conv(F.interpolate(pool(top), size, mode="bilinear", align_corners=False))
                  for pool, conv in zip(self.ppm_pooling, self.ppm_conv)]
        f = self.ppm_last_conv(torch.cat([top] + pooled, 1))
        pyramid = [f]
        for i in reversed(range(len(features) - 1)):
            lateral = self.fpn_in[i](features[i])
            f = lateral + F.interpolate(f, lateral.shape[-2:], mode="bilinear", align_corners=False)
            pyramid.append(self.fpn_out[i](f))
        pyramid.reverse()
        finest = pyramid[0].shape[-2:]
        fused = torch.cat([pyramid[0]] + [F.interpolate(p, finest, mode="bilinear", align_corners=False)
                                          for p in pyramid[1:]], 1)
        return self.conv_last(fused)


class UPerNet(nn.Module):
    """images [B, 3, H, W] in [0, 1] -> class logits [B, K, H, W]."""

    def __init__(self, num_classes: int = 150, encoder: str = "resnet50", fpn_dim: int = 512):
        super().__init__()
        if encoder not in DEPTHS:
            raise GanscaleError(f"dissect.segmenter: unknown UPerNet encoder '{encoder}' (known: {', '.join(DEPTHS)})")
        self.encoder = Encoder(DEPTHS[encoder])
        self.decoder = Decoder(num_classes, fpn_dim=fpn_dim)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder((images - self.mean) / self.std))
        return F.interpolate(logits, images.shape[-2:], mode="bilinear", align_corners=False)


class UPerNetSegmenter:
    """The Segmenter protocol around a loaded UPerNet."""

    def __init__(self, module: UPerNet, class_names: list[str], batch: int = 16):
        self.module = module.eval()
        self.class_names = class_names
        self.batch = batch

    def to(self, device):
        self.module.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.module(images[i:i + self.batch]).argmax(1) for i in range(0, len(images), self.batch)])


def _read_state(path: Path, field: str) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise GanscaleError(f"{field}: cannot read {path} ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise GanscaleError(f"{field}: {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _one(folder: Path, pattern: str, field: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise GanscaleError(f"{field}: expected one {pattern} in {folder}, found {len(found)}")
    return found[0]


def read_class_names(path: Path, count: int) -> list[str] | None:
    """Names from object150_info.csv (Idx,Ratio,Train,Val,Name; first of ';'-separated synonyms),
    in Idx order; None when there is no such file or it does not have `count` rows."""
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name")]
    try:
        rows.sort(key=lambda r: int(r["Idx"]))
    except (KeyError, ValueError):
        return None
    names = [r["Name"].split(";")[0].strip() for r in rows]
    return names if len(names) == count else None


def _fit(module: nn.Module, state: dict, field: str) -> None:
    """Strict loading, except that BatchNorm's num_batches_tracked (absent from older checkpoints)
    may be missing."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{what} {keys[:3]}" for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                         ("wrong shapes", wrong)) if keys]
        raise GanscaleError(f"{field}: weights do not fit UPerNet: {'; '.join(parts)}")
    module.load_state_dict({**own, **state}, strict=True)


def load_upernet(weights: str, encoder: str = "resnet50", field: str = "dissect.segmenter.weights") -> UPerNetSegmenter:
    path = Path(weights).expanduser()
    if path.is_dir():
        enc = _read_state(_one(path, "encoder*.pth", field), field)
        dec = _read_state(_one(path, "decoder*.pth", field), field)
        names_file, names = path / "object150_info.csv", None
    elif path.is_file():
        whole = _read_state(path, field)
        if "encoder" not in whole or "decoder" not in whole:
            raise GanscaleError(f"{field}: {path} must hold 'encoder' and 'decoder' state dicts")
        enc, dec, names = whole["encoder"], whole["decoder"], whole.get("class_names")
        names_file = path.parent / "object150_info.csv"
    else:
        raise GanscaleError(f"{field}: not found: {weights}")
    if "conv_last.1.weight" not in dec:
        raise GanscaleError(f"{field}: the decoder weights are not UPerNet's (no conv_last.1.weight)")
    classes = dec["conv_last.1.weight"].shape[0]
    fpn_dim = dec["conv_last.1.weight"].shape[1]
    module = UPerNet(classes, encoder, fpn_dim)
    _fit(module.encoder, enc, f"{field} (encoder)")
    _fit(module.decoder, dec, f"{field} (decoder)")
    names = list(names) if names else read_class_names(names_file, classes)
    if names is None:
        log.warning("UPerNet: no class names beside %s; using class0..class%d", weights, classes - 1)
        names = [f"class{i}" for i in range(classes)]
    return UPerNetSegmenter(module, names)


def ade20k_upernet(weights: str | None = None, encoder: str = "resnet50") -> UPerNetSegmenter:
    """Study plugin (`ganscale.dissect.upernet:ade20k_upernet`): the ADE20K UPerNet from `weights`."""
    if not weights:
        raise GanscaleError("dissect.segmenter.weights: required for the UPerNet segmenter (nothing is downloaded)")
    return load_upernet(weights, encoder)
