"""Generators exported from their training framework: OpenVINO IR (`openvino`) and ONNX (`onnx`).

One model z [B, z_dim] -> image [B, 3, H, W], or two as in StyleGAN: a mapping network z -> w and a
synthesis network w -> image, with truncation w = w_avg + psi (w - w_avg), w_avg the mean w of
`w_avg_samples` latents drawn with a fixed seed (as random_face's style_mean). Latents come from
the seeds (ganscale.models.base.latents_from_seeds); every call runs the networks on batches of
exactly `batch_size` rows, the last one padded, so image i depends on seed i alone.

Where they run: `openvino` on the CPU (OpenVINO's CPU plugin, in f32, with as many threads as torch
has in the worker); `onnx` with onnxruntime's CUDA provider when the generator is moved to a CUDA
device and onnxruntime has it (onnxruntime-gpu), else its CPU provider. Images are returned on the
generator's device either way.

Study fields: `path` the (synthesis) model (`.xml` with its `.bin` beside it, or `.onnx`), `sha256`
of that file, `truncation` (psi), `z_dim`/`resolution` (optional, checked against the model), and
`options`: `mapping` (the mapping model; none: `path` maps z to images), `batch_size` (default 1),
`output_size` (antialiased downscale of the output, e.g. 256 for a 1024 px StyleGAN),
`w_avg_samples` (default 4096), `output_range` (default [-1, 1]).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ganscale import weights as weights_io
from ganscale.errors import GanscaleError
from ganscale.models.base import latents_from_seeds

OPTIONS = {"mapping", "batch_size", "output_size", "w_avg_samples", "output_range"}
W_AVG_SEED = 0x5EED
W_AVG_BATCH = 256
FEATUREMAP_CACHE = 96


def _dims(shape, what: str, field: str) -> list[int | None]:
    """A port's shape as ints (None: dynamic)."""
    dims = []
    for d in shape:
        dims.append(int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None)
    if not dims:
        raise GanscaleError(f"{field}: the {what} has a scalar port")
    return dims


class OpenVinoNet:
    """An OpenVINO IR model with one input, reshaped once to a fixed batch, compiled for the CPU."""

    def __init__(self, xml: str, field: str, batch: int, storage_options=None, sha256: str | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise GanscaleError(f"{field}: generator 'openvino' needs the openvino extra: "
                                "pip install 'ganscale[openvino]'") from None
        if not xml.endswith(".xml"):
            raise GanscaleError(f"{field}: an OpenVINO model is an .xml file (its weights in the .bin beside it), "
                                f"got {xml}")
        xml_path = weights_io.resolve(xml, sha256, field=field, storage_options=storage_options)
        bin_path = weights_io.resolve(xml[:-4] + ".bin", field=field, storage_options=storage_options)
        self._args = (xml, field, storage_options)
        self._paths = (str(xml_path), str(bin_path))
        core = ov.Core()
        try:
            model = core.read_model(str(xml_path), str(bin_path))
        except Exception as e:  # openvino raises RuntimeError subclasses for unreadable IR
            raise GanscaleError(f"{field}: not an OpenVINO model: {xml} ({str(e).strip().splitlines()[0]})") from None
        if len(model.inputs) != 1:
            raise GanscaleError(f"{field}: the model has {len(model.inputs)} inputs, expected 1")
        shape = model.input(0).get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape]
        self.input_shape = [batch] + _dims(dims, "input", field)[1:]
        if any(d is None for d in self.input_shape):
            raise GanscaleError(f"{field}: the model input {dims} has dynamic sizes besides the batch")
        model.reshape({model.input(0): self.input_shape})
        self.compiled = core.compile_model(model, "CPU", self._config())
        self.request = self.compiled.create_infer_request()
        self.output_shape = [int(d) for d in self.compiled.output(0).get_shape()]

    @staticmethod
    def _config() -> dict:
        return {"INFERENCE_NUM_THREADS": max(1, torch.get_num_threads()), "INFERENCE_PRECISION_HINT": "f32"}

    def _model(self):
        import openvino as ov

        model = ov.Core().read_model(*self._paths)
        model.reshape({model.input(0): self.input_shape})
        return model

    def node_names(self) -> list[str]:
        """The nodes whose first output is a featuremap [B, units, h, w], in network order."""
        return [op.get_friendly_name() for op in self._model().get_ordered_ops()
                if op.get_output_size() and op.get_type_name() not in ("Constant", "Parameter", "Result")
                and len(op.output(0).get_partial_shape()) == 4]

    def with_outputs(self, nodes: Sequence[str]):
        """x -> [the model's output, then the first output of each named node]: OpenVINO adds the
        nodes as outputs of the compiled model, nothing else changes."""
        import openvino as ov

        model = self._model()
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        model.add_outputs([ops[n].output(0) for n in nodes])
        compiled = ov.Core().compile_model(model, "CPU", self._config())
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> list[np.ndarray]:
            result = request.infer({0: x})
            return [np.array(result[compiled.output(i)], copy=True) for i in range(len(nodes) + 1)]
        return run

    def with_batch(self, batch: int) -> "OpenVinoNet":
        """The same model compiled for another batch size (the files are in the cache by now)."""
        return OpenVinoNet(self._args[0], self._args[1], batch, self._args[2])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[self.compiled.output(0)], copy=True)


class OnnxNet:
    """An ONNX model with one input on onnxruntime: CUDA provider on a CUDA device when available."""

    def __init__(self, path: str, field: str, batch: int, storage_options=None, sha256: str | None = None):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise GanscaleError(f"{field}: generator 'onnx' needs the onnx extra: pip install 'ganscale[onnx]'") from None
        self.path = str(weights_io.resolve(path, sha256, field=field, storage_options=storage_options))
        self.uri, self.field = path, field
        self.session = self._session("cpu")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise GanscaleError(f"{field}: the model has {len(inputs)} inputs, expected 1")
        dims = _dims(inputs[0].shape, "input", field)
        if any(d is None for d in dims[1:]):
            raise GanscaleError(f"{field}: the model input {inputs[0].shape} has dynamic sizes besides the batch")
        if dims[0] is not None and dims[0] != batch:  # a fixed batch in the file cannot be changed
            raise GanscaleError(f"{field}: the model takes batches of exactly {dims[0]}; "
                                f"set options.batch_size: {dims[0]}")
        self.input_name = inputs[0].name
        self.dynamic_batch = dims[0] is None
        self.input_shape = [batch] + dims[1:]
        self.output_shape = list(self(np.zeros(self.input_shape, dtype=np.float32)).shape)

    def _session(self, device: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            return ort.InferenceSession(self.path, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise GanscaleError(f"{self.field}: not an ONNX model: {self.uri} "
                                f"({str(e).strip().splitlines()[0]})") from None

    def to(self, device: torch.device) -> None:
        self.session = self._session(device.type)

    def with_batch(self, batch: int) -> "OnnxNet":
        """This model run on batches of `batch` rows (itself when the file fixes the batch size)."""
        if not self.dynamic_batch:
            return self
        other = object.__new__(OnnxNet)
        other.__dict__.update(self.__dict__, input_shape=[batch] + self.input_shape[1:])
        return other

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class ExportedGenerator:
    """An exported generator (one network, or mapping + synthesis) behind the Generator protocol."""

    num_classes = None

    def __init__(self, synthesis, mapping=None, *, truncation: float | None = None, output_size: int | None = None,
                 output_range: tuple[float, float] = (-1.0, 1.0), w_avg_samples: int = 4096, field: str = "generator"):
        self.synthesis, self.mapping = synthesis, mapping
        self.batch_size = synthesis.input_shape[0]
        first = mapping or synthesis
        if len(first.input_shape) != 2:
            raise GanscaleError(f"{field}.{'options.mapping' if mapping else 'path'}: the model input has shape "
                                f"{first.input_shape}, expected [batch, z_dim]")
        self.z_dim = first.input_shape[1]
        if mapping is not None and mapping.output_shape[1:] != synthesis.input_shape[1:]:
            raise GanscaleError(f"{field}.options.mapping: the mapping network makes {mapping.output_shape[1:]}, "
                                f"the synthesis network takes {synthesis.input_shape[1:]}")
        out = synthesis.output_shape
        if len(out) != 4 or out[1] != 3 or out[2] != out[3]:
            raise GanscaleError(f"{field}.path: the model output has shape {out}, expected [batch, 3, H, H]")
        self.native_resolution = out[2]
        if output_size is not None and output_size > out[2]:
            raise GanscaleError(f"{field}.options.output_size: {output_size} is larger than the model's {out[2]} px")
        self.resolution = output_size or out[2]
        if truncation is not None and mapping is None:
            raise GanscaleError(f"{field}.truncation: needs a mapping network (options.mapping)")
        self.truncation = truncation
        self.low, self.high = output_range
        self.w_avg_samples = w_avg_samples
        self._w_avg: np.ndarray | None = None
        self._probed, self._cache = None, {}
        self.device = torch.device("cpu")

    def to(self, device) -> "ExportedGenerator":
        self.device = torch.device(device)
        for net in (self.synthesis, self.mapping):
            if hasattr(net, "to"):
                net.to(self.device)
        return self

    def _run(self, net, x: np.ndarray) -> np.ndarray:
        """`net` on x in batches of exactly its batch size, the last padded with zeros."""
        b = net.input_shape[0]
        return np.concatenate([net(_padded(x[i:i + b], b))[:len(x[i:i + b])] for i in range(0, len(x), b)])

    def w_avg(self) -> np.ndarray:
        """The mean mapped latent of w_avg_samples standard-normal z drawn with a fixed seed."""
        if self._w_avg is None:
            z = np.random.default_rng(W_AVG_SEED).standard_normal((self.w_avg_samples, self.z_dim), dtype=np.float32)
            w = self._run(self.mapping.with_batch(W_AVG_BATCH), z)  # ~20x faster than batches of 1 on a CPU
            self._w_avg = w.astype(np.float64).mean(0).astype(np.float32)
        return self._w_avg

    def _synthesis_input(self, z: torch.Tensor) -> np.ndarray:
        x = z.detach().cpu().numpy().astype(np.float32)
        if self.mapping is not None:
            x = self._run(self.mapping, x)
            if self.truncation is not None and self.truncation != 1:
                w_avg = self.w_avg()
                x = w_avg + np.float32(self.truncation) * (x - w_avg)
        return x

    def from_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, R, R] in [0, 1] on the generator's device, of latents z [B, z_dim]."""
        return self._images(self._run(self.synthesis, self._synthesis_input(z)))

    def featuremap_layers(self) -> list[str]:
        """Nodes of the synthesis network that `featuremaps` can report (OpenVINO models only)."""
        if not hasattr(self.synthesis, "node_names"):
            raise GanscaleError("dissect: featuremaps of an exported model need OpenVINO (generator 'openvino')")
        return self.synthesis.node_names()

    @torch.no_grad()
    def featuremaps(self, seeds: Sequence[int], layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Images [B, 3, R, R] and {node: [B, units, h, w]} of the seeds, in the same run. Results are
        kept per seed (up to FEATUREMAP_CACHE images): dissection reads each image in several passes,
        and a 1024 px synthesis network costs seconds per image on a CPU."""
        layers = tuple(layers)
        if self._probed is None or self._probed[0] != layers:
            self._probed = (layers, self.synthesis.with_outputs(layers))
            self._cache = {}
        todo = [s for s in dict.fromkeys(int(s) for s in seeds) if s not in self._cache]
        if todo:
            x = self._synthesis_input(latents_from_seeds(todo, self.z_dim))
            b = self.synthesis.input_shape[0]
            for i in range(0, len(todo), b):
                outs = self._probed[1](_padded(x[i:i + b], b))
                images = self._images(outs[0])  # at the output size: the 1024 px originals are not kept
                for row, seed in enumerate(todo[i:i + b]):
                    if len(self._cache) >= FEATUREMAP_CACHE:
                        self._cache.pop(next(iter(self._cache)))
                    self._cache[seed] = [images[row]] + [torch.from_numpy(o[row]) for o in outs[1:]]
        rows = [self._cache[int(s)] for s in seeds]
        images = torch.stack([r[0] for r in rows])
        maps = {layer: torch.stack([r[k + 1] for r in rows]).to(self.device) for k, layer in enumerate(layers)}
        return images, maps

    def _images(self, raw: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(raw).to(self.device)
        images = ((images - self.low) / (self.high - self.low)).clamp(0, 1)
        if self.resolution != self.native_resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True).clamp(0, 1)
        return images

    @torch.no_grad()
    def generate(self, seeds: Sequence[int]) -> tuple[torch.Tensor, None]:
        seeds = [int(s) for s in seeds]
        if not seeds:
            return torch.zeros(0, 3, self.resolution, self.resolution, device=self.device), None
        return self.from_latents(latents_from_seeds(seeds, self.z_dim)), None


def build(runtime: str, spec, field: str, storage_options=None) -> ExportedGenerator:
    """The `openvino` or `onnx` generator a study's dataset spec names (see the module docstring)."""
    options = dict(spec.options)
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise GanscaleError(f"{field}.options.{unknown[0]}: unknown option for generator '{runtime}' "
                            f"(known: {', '.join(sorted(OPTIONS))})")
    if spec.weights is not None:
        raise GanscaleError(f"{field}.weights: not used by generator '{runtime}' (the model file is `path`)")
    batch = _positive_int(options.get("batch_size", 1), f"{field}.options.batch_size")
    output_size = options.get("output_size")
    output_size = None if output_size is None else _positive_int(output_size, f"{field}.options.output_size")
    w_avg_samples = _positive_int(options.get("w_avg_samples", 4096), f"{field}.options.w_avg_samples")
    output_range = options.get("output_range", (-1.0, 1.0))
    if (not isinstance(output_range, (list, tuple)) or len(output_range) != 2
            or not all(isinstance(v, (int, float)) for v in output_range) or output_range[0] >= output_range[1]):
        raise GanscaleError(f"{field}.options.output_range: expected [low, high] with low < high, got {output_range}")
    net = OpenVinoNet if runtime == "openvino" else OnnxNet
    mapping = None
    if options.get("mapping") is not None:
        if not isinstance(options["mapping"], str):
            raise GanscaleError(f"{field}.options.mapping: expected a model path, got {options['mapping']!r}")
        mapping = net(options["mapping"], f"{field}.options.mapping", batch, storage_options)
    synthesis = net(spec.path, f"{field}.path", batch, storage_options, spec.sha256)
    generator = ExportedGenerator(synthesis, mapping, truncation=spec.truncation, output_size=output_size,
                                  output_range=(float(output_range[0]), float(output_range[1])),
                                  w_avg_samples=w_avg_samples, field=field)
    if spec.z_dim is not None and spec.z_dim != generator.z_dim:
        raise GanscaleError(f"{field}.z_dim: the model takes z_dim {generator.z_dim}, the study says {spec.z_dim}")
    if spec.resolution is not None and spec.resolution != generator.resolution:
        raise GanscaleError(f"{field}.resolution: the generator makes {generator.resolution} px images, "
                            f"the study says {spec.resolution}")
    return generator


def _padded(x: np.ndarray, rows: int) -> np.ndarray:
    """x with zero rows appended up to `rows`, as contiguous float32."""
    if len(x) < rows:
        x = np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), dtype=x.dtype)])
    return np.ascontiguousarray(x, dtype=np.float32)


def _positive_int(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GanscaleError(f"{field}: expected a positive integer, got {value!r}")
    return value
