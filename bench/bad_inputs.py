"""The bad-input table (issue 12): many kinds of bad input and faults tried against a small toy
study through the real command line, as a new user would meet them.

One complete reference store is built first (toy world 200 + dcgan_full 150, layers block2/block3,
stages sample, embed, atlas). Each kind gets a fresh copy of that store, its own bad study (or
damaged files), and one `ganscale run`/`status` invocation (typer's CliRunner, in this process,
attached to the one Ray instance this script starts). Per kind: the exit code, the `error:` lines
on stderr, the other stderr lines that are neither ganscale progress nor ganscale log records, the
error line, and whether the store is untouched (sha256 over every file, names and bytes).

The contract (README, "The command line"): bad input -> exactly one `error:` line and exit 2;
environment failures (unwritable store, S3 endpoint down, no credentials) -> one line and exit 1;
either way the store's files are unchanged. A few kinds expect exit 0: damage that `run --verify`
repairs, a lost root metadata file the sample stage rebuilds, and settings beyond the data that
the stages clamp. `status --verify` on a damaged store reports on stdout and exits 1.

Lines are counted from this process's captured stderr. Also recorded, not counted: lines Ray or
garbage collection print after a command returned (`late_stderr`; a real process has exited by
then) and Ray's C++ logs on file descriptor 2 (`native_stderr`, once per process).

    PYTHONPATH=$PWD:$PWD/tests python bench/bad_inputs.py [--out bench/results/bad_inputs.json] [--only "K1;K2"]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# A plugin module of faults the tests' plugins do not have, importable by Ray workers (PYTHONPATH).
FAULT_PLUGINS = '''
import torch
from plugins import _toy, _Wrapped


def not_a_generator(weights=None):
    return object()


class _Range(_Wrapped):
    def generate(self, seeds):
        images, labels = self.inner.generate(seeds)
        return images * 3.0 - 1.0, labels  # far outside [0, 1]


def out_of_range(weights=None):
    return _Range(_toy(weights))
'''

REFERENCE = {
    "name": "badin-toy",
    "store": "store.zarr",
    "probe": {"name": "toy_probe"},
    "layers": ["block2", "block3"],
    "datasets": {
        "real": {"kind": "toyworld", "samples": 200},
        "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 150},
    },
    "seed": 7,
    "sample": {"chunk_size": 64, "batch_size": 32},
    "embed": {"layers": {"block2": {"n_neighbors": 15}, "block3": {"n_neighbors": 15}}},
    "atlas": {"grids": [10]},
}
REF_STAGES = "sample,embed,atlas"
SAMPLE = ["--stages", "sample"]
QUIET_S, LATE_LIMIT_S = 3.0, 30.0  # after a command that used Ray: wait for this much quiet, at most this long


def merged(base: dict, overrides: dict) -> dict:
    """`overrides` merged into `base` (nested dicts merged, a None value removes the key)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def store_digest(path: Path) -> str | None:
    """sha256 over every file of a local store (names and bytes); None when there is no store."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def file_map(path: Path) -> dict[str, str]:
    if not path.is_dir():
        return {}
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def differ_names(a: Path, b: Path) -> list[str]:
    fa, fb = file_map(a), file_map(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def describe_change(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = []
    for what, names in (("added", added), ("changed", changed), ("removed", removed)):
        if names:
            parts.append(f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    return "; ".join(parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Case:
    """What one kind runs: the study file, the CLI arguments, the expected exit code, the path whose
    files must stay unchanged (None: nothing local to watch), and environment changes."""
    study: Path
    args: list[str] = field(default_factory=lambda: list(SAMPLE))
    expect: int = 2
    watch: Path | None = None
    env: dict[str, str | None] = field(default_factory=dict)
    command: str = "run"
    must_change: bool = False  # run --verify: the damaged chunks are rewritten (the store must change)
    aside: bool = False  # work done before the fault is kept in staging/: only files there may change
    # an extra check after the run: (whether it holds, a note for the table)
    after: Callable[[dict], tuple[bool, str]] | None = None


class Bench:
    def __init__(self, work: Path, s3: str | None):
        self.work, self.s3 = work, s3
        self.reference_store = work / "reference" / "store.zarr"

    def folder(self, kind: str) -> tuple[Path, Path]:
        """A fresh folder for the kind with a copy of the complete reference store."""
        d = self.work / kind
        d.mkdir(parents=True)
        shutil.copytree(self.reference_store, d / "store.zarr")
        return d, d / "store.zarr"

    def study(self, d: Path, overrides: dict | None = None, text: str | None = None) -> Path:
        path = d / "study.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(merged(REFERENCE, overrides or {}),
                                                                     sort_keys=False))
        return path

    def with_bad(self, d: Path, dataset: dict, **overrides) -> Path:
        """The reference study plus a dataset `bad` (the user adds a dataset to a finished study)."""
        return self.study(d, {"datasets": {**REFERENCE["datasets"], "bad": dataset}, **overrides})

    def s3_options(self, **extra) -> dict:
        return {"client_kwargs": {"endpoint_url": self.s3}, "skip_instance_cache": True, **extra}


# ---- the kinds ------------------------------------------------------------------------------------
# Each takes the bench and returns a Case. Registered in order by @kind(name).

KINDS: dict[str, Callable[[Bench], Case]] = {}


def kind(name: str):
    def register(fn):
        KINDS[name] = lambda b: fn(b, *b.folder(name))
        return fn
    return register


def simple(name: str, overrides: dict | None = None, text: str | None = None, args=None, expect: int = 2):
    """A kind whose whole fault is the study itself, run against a copy of the complete store."""
    def build(b, d, store):
        return Case(b.study(d, overrides, text), list(args or SAMPLE), expect, store)
    KINDS[name] = lambda b: build(b, *b.folder(name))


# the study file itself
@kind("study file not found")
def _(b, d, store):
    return Case(d / "absent.yaml", watch=store)


simple("study not YAML", text="name: badin-toy\nlayers: [block2\n")
simple("study empty file", text="")
simple("study not a mapping", text="- a\n- b\n")
simple("unknown top-level key", {"storee": "x.zarr"})
simple("misspelt nested key", {"sample": {"chunksize": 64}})


@kind("duplicate key")
def _(b, d, store):
    text = yaml.safe_dump(REFERENCE, sort_keys=False) + "seed: 8\n"
    return Case(b.study(d, text=text), watch=store)


simple("missing name", {"name": None})
simple("name with spaces", {"name": "my study"})
simple("missing store", {"store": None})
simple("bad store URL scheme", {"store": "ftp2://host/x.zarr"})
simple("unknown probe", {"probe": {"name": "resnet9000"}})
simple("unknown layer", {"layers": ["block2", "mixed4c"]})
simple("layers empty", {"layers": []})
simple("layer twice", {"layers": ["block2", "block2"]})
simple("datasets empty", {"datasets": {}})
simple("dataset unknown kind", {"datasets": {**REFERENCE["datasets"], "bad": {"kind": "video", "samples": 5}}})
simple("dataset name with a slash", {"datasets": {**REFERENCE["datasets"], "a/b": {"kind": "toyworld", "samples": 5}}})
simple("samples 0", {"datasets": {**REFERENCE["datasets"], "bad": {"kind": "toyworld", "samples": 0}}})
simple("samples negative", {"datasets": {**REFERENCE["datasets"], "bad": {"kind": "toyworld", "samples": -5}}})
simple("samples not a number", {"datasets": {**REFERENCE["datasets"], "bad": {"kind": "toyworld", "samples": "many"}}})
simple("toyworld exclude unknown class", {"datasets": {**REFERENCE["datasets"],
                                                       "bad": {"kind": "toyworld", "samples": 5, "exclude": ["cat"]}}})
simple("chunk_size 0", {"sample": {"chunk_size": 0}})
simple("batch_size larger than chunk", {"sample": {"batch_size": 128}})
@kind("device cuda without GPU")
def _(b, d, store):  # a new dataset, so there is work to place on a GPU
    return Case(b.with_bad(d, {"kind": "toyworld", "samples": 64}, sample={"device": "cuda"}), watch=store)
simple("bf16 with device cpu", {"sample": {"device": "cpu", "precision": "bf16"}})
simple("seed not an int", {"seed": "seven"})
simple("seed a float", {"seed": 7.5})
simple("preprocess size 0", {"preprocess": {"size": 0}})
simple("storage_options with a credential", {"storage_options": {"key": "AKIAEXAMPLE", "secret": "s3cr3t"}})
simple("unknown generator name", {"datasets": {**REFERENCE["datasets"],
                                               "bad": {"kind": "generator", "name": "stylegan9", "samples": 5}}})
simple("generator without required path", {"datasets": {**REFERENCE["datasets"], "bad": {
    "kind": "generator", "name": "torchscript", "samples": 5}}})
simple("truncation above 1", {"datasets": {**REFERENCE["datasets"], "bad": {
    "kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "truncation": 2, "samples": 5}}})


# weights and plugins
@kind("weights path missing")
def _(b, d, store):
    return Case(b.with_bad(d, {"kind": "generator", "name": "dcgan", "weights": "nope.pt", "samples": 64}), watch=store)


@kind("builtin weights unknown")
def _(b, d, store):
    return Case(b.with_bad(d, {"kind": "generator", "name": "dcgan", "weights": "builtin:nope.pt", "samples": 64}),
                watch=store)


@kind("wrong sha256")
def _(b, d, store):
    return Case(b.with_bad(d, {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                               "sha256": "0" * 64, "samples": 64}), watch=store)


@kind("weights of another model (segmenter as generator)")
def _(b, d, store):
    datasets = merged(REFERENCE["datasets"], {"full": {"weights": "builtin:segmenter.pt"}})
    return Case(b.study(d, {"datasets": datasets}), watch=store)


@kind("garbage weights file")
def _(b, d, store):
    (d / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return Case(b.with_bad(d, {"kind": "generator", "name": "dcgan", "weights": "garbage.pt", "samples": 64}),
                watch=store)


@kind("weights file empty")
def _(b, d, store):
    (d / "empty.pt").write_bytes(b"")
    return Case(b.with_bad(d, {"kind": "generator", "name": "dcgan", "weights": "empty.pt", "samples": 64}),
                watch=store)


@kind("weights path is a folder")
def _(b, d, store):
    (d / "weights_dir").mkdir()
    return Case(b.with_bad(d, {"kind": "generator", "name": "dcgan", "weights": "weights_dir", "samples": 64}),
                watch=store)


@kind("torchscript path not TorchScript")
def _(b, d, store):
    (d / "gen.pt").write_bytes(b"not torchscript" * 50)
    return Case(b.with_bad(d, {"kind": "generator", "name": "torchscript", "path": "gen.pt", "z_dim": 16,
                               "samples": 64}), watch=store)


@kind("probe weights of another model")
def _(b, d, store):
    return Case(b.study(d, {"probe": {"weights": "builtin:dcgan_full.pt"}}), watch=store)


@kind("probe weights garbage")
def _(b, d, store):
    (d / "probe.pt").write_bytes(np.random.default_rng(1).bytes(4096))
    return Case(b.study(d, {"probe": {"weights": "probe.pt"}}), watch=store)


for _name, _plugin in [("plugin module missing", "nosuchmodule:make"), ("plugin function missing", "plugins:nosuch"),
                       ("plugin not module:function", "plugins.nan_dcgan"),
                       ("plugin raises on build", "plugins:raises_while_building"),
                       ("plugin raises on generate", "plugins:raises_while_generating"),
                       ("plugin returns no generator", "badin_faults:not_a_generator"),
                       ("plugin returns NaN", "plugins:nan_dcgan"),
                       ("plugin returns wrong shape", "plugins:wrong_shape_dcgan"),
                       ("plugin returns values outside [0,1]", "badin_faults:out_of_range")]:
    def _plugin_kind(b, d, store, plugin=_plugin):
        return Case(b.with_bad(d, {"kind": "generator", "name": plugin, "samples": 64}), watch=store)
    kind(_name)(_plugin_kind)


@kind("plugin with unknown option")
def _(b, d, store):
    return Case(b.with_bad(d, {"kind": "generator", "name": "plugins:slow_dcgan", "options": {"speed": 3},
                               "samples": 64}), watch=store)


# image folders and arrays
def _scenes(folder: Path, n: int) -> None:
    from ganscale.toyworld.scenes import save_image_folder

    save_image_folder(folder, range(n))


@kind("image folder empty")
def _(b, d, store):
    (d / "empty").mkdir()
    return Case(b.with_bad(d, {"kind": "images", "path": "empty", "samples": 4}), watch=store)


@kind("image folder missing")
def _(b, d, store):
    return Case(b.with_bad(d, {"kind": "images", "path": "no_such_folder", "samples": 4}), watch=store)


@kind("image path is a file")
def _(b, d, store):
    (d / "one.png").write_bytes(b"x")
    return Case(b.with_bad(d, {"kind": "images", "path": "one.png", "samples": 1}), watch=store)


@kind("corrupt PNG (first batch)")
def _(b, d, store):
    _scenes(d / "photos", 8)
    (d / "photos" / "00000003.png").write_bytes(b"this is not a png")
    return Case(b.with_bad(d, {"kind": "images", "path": "photos", "samples": 8}), watch=store)


@kind("corrupt PNG (a later chunk)")
def _(b, d, store):
    _scenes(d / "photos", 100)
    (d / "photos" / "00000090.png").write_bytes(b"this is not a png")

    def kept_aside(out: dict) -> tuple[bool, str]:
        ok = not (store / "datasets" / "bad").exists() and (store / "staging" / "bad").exists()
        return ok, "chunks before the fault kept in staging/bad, no datasets/bad" if ok else "datasets/bad written"
    return Case(b.with_bad(d, {"kind": "images", "path": "photos", "samples": 100}), watch=store, aside=True,
                after=kept_aside)


@kind("truncated PNG")
def _(b, d, store):
    _scenes(d / "photos", 8)
    png = d / "photos" / "00000002.png"
    png.write_bytes(png.read_bytes()[:60])
    return Case(b.with_bad(d, {"kind": "images", "path": "photos", "samples": 8}), watch=store)


@kind("more samples than images")
def _(b, d, store):
    _scenes(d / "photos", 8)
    return Case(b.with_bad(d, {"kind": "images", "path": "photos", "samples": 50}), watch=store)


@kind("arrays file missing")
def _(b, d, store):
    return Case(b.with_bad(d, {"kind": "arrays", "path": "none.npy", "samples": 4}), watch=store)


@kind("arrays wrong ndim")
def _(b, d, store):
    np.save(d / "flat.npy", np.zeros((40, 32), np.uint8))
    return Case(b.with_bad(d, {"kind": "arrays", "path": "flat.npy", "samples": 4}), watch=store)


@kind("arrays 4 channels")
def _(b, d, store):
    np.save(d / "rgba.npy", np.zeros((40, 32, 32, 4), np.uint8))
    return Case(b.with_bad(d, {"kind": "arrays", "path": "rgba.npy", "samples": 4}), watch=store)


@kind("arrays bad key")
def _(b, d, store):
    np.savez(d / "faces.npz", images=np.zeros((40, 32, 32, 3), np.uint8))
    return Case(b.with_bad(d, {"kind": "arrays", "path": "faces.npz", "key": "imgs", "samples": 4}), watch=store)


@kind("arrays float outside [0,1]")
def _(b, d, store):
    np.save(d / "hdr.npy", np.full((40, 32, 32, 3), 7.5, np.float32))
    return Case(b.with_bad(d, {"kind": "arrays", "path": "hdr.npy", "samples": 4}), watch=store)


@kind("arrays rows beyond the array")
def _(b, d, store):
    np.save(d / "small.npy", np.zeros((40, 32, 32, 3), np.uint8))
    return Case(b.with_bad(d, {"kind": "arrays", "path": "small.npy", "rows": [0, 1000], "samples": 100}),
                watch=store)


@kind("arrays file not an array")
def _(b, d, store):
    (d / "fake.npy").write_bytes(b"definitely not numpy" * 10)
    return Case(b.with_bad(d, {"kind": "arrays", "path": "fake.npy", "samples": 4}), watch=store)


# stores
@kind("another study's store without --force")
def _(b, d, store):
    return Case(b.study(d, {"name": "someone-elses", "datasets": {**REFERENCE["datasets"],
                                                                 "extra": {"kind": "toyworld", "samples": 64}}}),
                watch=store)


@kind("store path through a regular file")
def _(b, d, store):
    (d / "a_file").write_text("not a folder")
    return Case(b.study(d, {"store": "a_file/x.zarr"}), watch=d / "a_file")


@kind("unwritable store (/proc)")
def _(b, d, store):
    return Case(b.study(d, {"store": "/proc/badin.zarr"}), expect=1, watch=store)


@kind("S3 bucket missing")
def _(b, d, store):
    return Case(b.study(d, {"store": "s3://no-such-bucket/x.zarr", "storage_options": b.s3_options()}))


@kind("S3 endpoint down")
def _(b, d, store):
    options = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"}, "skip_instance_cache": True}
    return Case(b.study(d, {"store": "s3://badin-bucket/x.zarr", "storage_options": options}), expect=1)


@kind("S3 no credentials")
def _(b, d, store):
    none = str(d / "no-aws-config")
    env = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
           "AWS_SHARED_CREDENTIALS_FILE": none, "AWS_CONFIG_FILE": none}
    return Case(b.study(d, {"store": "s3://badin-bucket/x.zarr", "storage_options": b.s3_options()}),
                expect=1, env=env)


# the command line
@kind("--stages unknown")
def _(b, d, store):
    return Case(b.study(d), ["--stages", "sampel"], watch=store)


@kind("--stages atlas before sample (new store)")
def _(b, d, store):
    return Case(b.study(d, {"store": "fresh.zarr"}), ["--stages", "atlas"], watch=d / "fresh.zarr")


@kind("--stages embed with a dataset not sampled")
def _(b, d, store):
    return Case(b.with_bad(d, {"kind": "toyworld", "samples": 64}), ["--stages", "embed"], watch=store)


@kind("status of a bad study")
def _(b, d, store):
    return Case(b.study(d, {"layers": ["block2", "nope"]}), [], watch=store, command="status")


# damaged stores
@kind("deleted chunk then status --verify")
def _(b, d, store):
    (store / "datasets/real/layers/block2/activations/c/1/0").unlink()

    def names_the_chunk(out: dict) -> tuple[bool, str]:  # a report on stdout, not an error line
        named = any("layers/block2/activations chunk 1" in line for line in out["stdout"])
        return named and out["error_lines"] == 0, "names the chunk on stdout" if named else "the chunk is not named"
    return Case(b.study(d), ["--verify"], expect=1, watch=store, command="status", after=names_the_chunk)


@kind("corrupt chunk then run --verify")
def _(b, d, store):
    chunk = store / "datasets/full/logits/c/0/0"
    chunk.write_bytes(b"\x00garbage" + chunk.read_bytes()[8:])
    def same_as_reference(out: dict) -> tuple[bool, str]:
        differ = describe_change(file_map(b.reference_store), file_map(store))
        # the root attributes hold the ledger (run times), so only the chunks must equal the reference's
        chunks_equal = all(not name.startswith("datasets/") for name in differ_names(b.reference_store, store))
        return chunks_equal, f"against the reference store: {differ or 'identical'}"
    return Case(b.study(d), ["--verify", "--stages", "sample"], expect=0, watch=store, must_change=True,
                after=same_as_reference)


@kind("corrupt chunk then embed without --verify")
def _(b, d, store):
    chunk = store / "datasets/full/layers/block3/activations/c/1/0"
    chunk.write_bytes(b"\x00garbage" + chunk.read_bytes()[8:])
    # a damaged store is the storage's fault, not the study's: one line, exit 1
    return Case(b.study(d, {"embed": {"layers": {"block3": {"n_neighbors": 10}}}}), ["--stages", "embed"],
                expect=1, watch=store)


@kind("zarr.json of the store deleted")
def _(b, d, store):
    (store / "zarr.json").unlink()
    path = b.study(d)

    def what_is_left(out: dict) -> tuple[bool, str]:
        from ganscale.pipeline import stage_status
        from ganscale.study import load_study

        rows = [f"{r['stage']} {r['item']}: {r['state']}" for r in stage_status(load_study(path))
                if r["stage"] in ("sample", "embed", "atlas")]
        return True, "status after: " + "; ".join(rows)
    # the arrays are all there: the sample stage may rebuild the root metadata (exit 0) or refuse (1)
    return Case(path, expect=0, watch=store, after=what_is_left)


# later stages' settings
simple("atlas grid 0", {"atlas": {"grids": [0]}}, args=["--stages", "atlas"])
simple("atlas smoothing negative", {"atlas": {"smoothing": -1}}, args=["--stages", "atlas"])
simple("icons unknown layer", {"atlas": {"icons": {"layers": ["nope"]}}}, args=["--stages", "icons"])
simple("embed n_neighbors 0", {"embed": {"layers": {"block2": {"n_neighbors": 0}}}}, args=["--stages", "embed"])
simple("embed unknown metric", {"embed": {"layers": {"block2": {"metric": "hamming"}}}}, args=["--stages", "embed"])
simple("embed unknown layer", {"embed": {"layers": {"block9": {"n_neighbors": 5}}}}, args=["--stages", "embed"])
simple("embed n_neighbors 1", {"embed": {"layers": {"block2": {"n_neighbors": 1}}}}, args=["--stages", "embed"])
# settings beyond the data that the stages clamp (accepted: exit 0, the stage recomputes)
simple("embed n_neighbors above samples", {"embed": {"layers": {"block2": {"n_neighbors": 5000}}}},
       args=["--stages", "embed"], expect=0)
simple("embed pca above channels", {"embed": {"pca": 4096}}, args=["--stages", "embed"], expect=0)
simple("metrics unknown feature layer", {"metrics": {"feature_layers": ["nope"]}}, args=["--stages", "metrics"])
simple("metrics unknown reference", {"metrics": {"reference": ["imagenet"]}}, args=["--stages", "metrics"])
simple("metrics c2st samples too few", {"metrics": {
    "prdc_samples": 100, "kid_subsets": 5, "kid_subset_size": 50, "msssim_pairs": 10, "images_shown": 2,
    "c2st": {"samples": 2, "epochs": 1, "patience": 1, "smoothgrad_samples": 2}}}, args=["--stages", "metrics"])
simple("metrics kid_subset_size above samples", {"metrics": {
    "prdc_samples": 100, "kid_subsets": 5, "kid_subset_size": 100000, "msssim_pairs": 10, "images_shown": 2,
    "c2st": None}}, args=["--stages", "metrics"], expect=0)
DISSECT = {"layers": ["layer2"], "samples": 40, "chunk_size": 20, "intervention_samples": 10, "artifact_samples": 0}
simple("dissect unknown segmenter", {"dissect": {**DISSECT, "segmenter": {"name": "nope"}}},
       args=["--stages", "dissect"])
simple("dissect unknown layer", {"dissect": {**DISSECT, "layers": ["nope"]}}, args=["--stages", "dissect"])
simple("dissect layers empty", {"dissect": {**DISSECT, "layers": []}}, args=["--stages", "dissect"])
simple("dissect generator not a generator", {"dissect": {**DISSECT, "generators": ["real"]}},
       args=["--stages", "dissect"])
simple("dissect segmenter weights of another model", {"dissect": {
    **DISSECT, "segmenter": {"name": "toy_segmenter", "weights": "builtin:probe.pt"}}}, args=["--stages", "dissect"])



# ---- issue 18: trust the store ------------------------------------------------------------------------
def _name_in_error(*needles: str):
    def check(out: dict) -> tuple[bool, str]:
        named = all(n in out["error"] for n in needles)
        return named, "names " + ", ".join(needles) if named else f"does not name {needles}"
    return check


class _Marker:
    """Unpickling this creates `path`: what a malicious pickle in a shared store would do."""
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@kind("malicious pickle where the UMAP reducer was (transform)")
def _(b, d, store):
    import pickle

    import zarr

    marker = d / "PWNED"
    blob = np.frombuffer(pickle.dumps(_Marker(str(marker))), dtype=np.uint8)
    root = zarr.open_group(str(store), mode="a")
    for name in [f"models/umap_{layer}" for layer in REFERENCE["layers"]] + \
            [f"models/{k}" for k, v in (root["models"].arrays() if "models" in root else []) if v.dtype == np.uint8]:
        root.create_array(name, shape=blob.shape, dtype=np.uint8, overwrite=True)[:] = blob
    path = b.with_bad(d, {"kind": "toyworld", "samples": 64}, embed={"new_datasets": "transform"})

    def nothing_ran(out: dict) -> tuple[bool, str]:
        return not marker.exists(), "nothing ran (no marker file)" if not marker.exists() else "THE PICKLE RAN"
    return Case(path, ["--stages", "sample,embed"], expect=0, after=nothing_ran)


@kind("changed value that still decodes, then embed")
def _(b, d, store):
    import zarr

    zarr.open_group(str(store), mode="a")["datasets/full/layers/block3/activations"][70, 3] = np.float32(2.5e38)
    return Case(b.study(d, {"embed": {"layers": {"block3": {"n_neighbors": 10}}}}), ["--stages", "embed"],
                expect=1, watch=store, after=_name_in_error("datasets/full/layers/block3/activations chunk 1"))


@kind("changed value that still decodes, then run --verify")
def _(b, d, store):
    import zarr

    zarr.open_group(str(store), mode="a")["datasets/full/layers/block3/activations"][70, 3] = np.float32(2.5e38)

    def repaired(out: dict) -> tuple[bool, str]:
        same = all(not n.startswith("datasets/") for n in differ_names(b.reference_store, store))
        return same, "chunks identical to the reference" if same else "chunks differ from the reference"
    return Case(b.study(d), ["--verify", "--stages", "sample"], expect=0, watch=store, must_change=True,
                after=repaired)


@kind("truncated activations chunk, then embed")
def _(b, d, store):
    chunk = store / "datasets/full/layers/block3/activations/c/1/0"
    chunk.write_bytes(chunk.read_bytes()[:40])
    return Case(b.study(d, {"embed": {"layers": {"block3": {"n_neighbors": 10}}}}), ["--stages", "embed"],
                expect=1, watch=store, after=_name_in_error("datasets/full/layers/block3/activations chunk 1"))


for _label, _target, _how, _named in [
        ("truncated done chunk", "datasets/real/done/c/1", "truncate", "done chunk 1"),
        ("truncated checksum chunk", "datasets/real/checksum/c/1/0", "truncate", "checksum chunk 1"),
        ("deleted done chunk", "datasets/real/done/c/1", "delete", "done chunk 1")]:
    def _damage_bookkeeping(b, d, store, target=_target, how=_how):
        f = store / target
        f.unlink() if how == "delete" else f.write_bytes(f.read_bytes()[:3])

    def _status_kind(b, d, store, damage=_damage_bookkeeping, named=_named):
        damage(b, d, store)

        def names_it(out: dict) -> tuple[bool, str]:
            ok = any(named in line for line in out["stdout"]) and out["error_lines"] == 0
            return ok, f"names {named} on stdout" if ok else f"{named} not named"
        return Case(b.study(d), ["--verify"], expect=1, watch=store, command="status", after=names_it)

    def _repair_kind(b, d, store, damage=_damage_bookkeeping):
        damage(b, d, store)

        def repaired(out: dict) -> tuple[bool, str]:
            same = all(not n.startswith("datasets/") for n in differ_names(b.reference_store, store))
            return same, "chunks identical to the reference" if same else "chunks differ from the reference"
        return Case(b.study(d), ["--verify", "--stages", "sample"], expect=0, watch=store, must_change=True,
                    after=repaired)
    kind(f"{_label}, then status --verify")(_status_kind)
    kind(f"{_label}, then run --verify")(_repair_kind)


@kind("deleted done chunk, then plain status")
def _(b, d, store):
    (store / "datasets/real/done/c/1").unlink()

    def says_damaged(out: dict) -> tuple[bool, str]:
        ok = any("not marked done" in line for line in out["stdout"])
        return ok, "says the chunk is not marked done" if ok else "does not notice"
    return Case(b.study(d), [], expect=1, watch=store, command="status", after=says_damaged)


_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
simple("YAML alias bomb as the study", text=_BOMB, args=[], expect=2)


@kind("YAML alias bomb as the study (status)")
def _(b, d, store):
    return Case(b.study(d, text=_BOMB), [], watch=store, command="status")


simple("YAML alias bomb inside storage_options",
       text=yaml.safe_dump({k: v for k, v in REFERENCE.items() if k != "datasets"}, sort_keys=False)
       + "datasets:\n  real: {kind: toyworld, samples: 200}\n  full: {kind: generator, name: dcgan, "
         "weights: 'builtin:dcgan_full.pt', samples: 150}\n"
       + _BOMB.replace("\n", "\n  ").replace("a: &a", "storage_options:\n  a: &a", 1).rstrip() + "\n")
simple("oversized study file", text=yaml.safe_dump(REFERENCE, sort_keys=False) + "# " + "x" * (2 << 20) + "\n")
simple("10^9 samples", {"datasets": {**REFERENCE["datasets"], "huge": {"kind": "toyworld", "samples": 10 ** 9}}})
simple("dataset named zarr.json", {"datasets": {**REFERENCE["datasets"], "zarr.json": {"kind": "toyworld",
                                                                                       "samples": 64}}})
simple("dataset name with a trailing newline", {"datasets": {**REFERENCE["datasets"],
                                                             "real\n": {"kind": "toyworld", "samples": 64}}})
simple("dataset name .hidden", {"datasets": {**REFERENCE["datasets"], ".hidden": {"kind": "toyworld", "samples": 64}}})


@kind("secrets under other names in storage_options (refused)")
def _(b, d, store):
    options = {"client_kwargs": {"headers": {"Authorization": "Bearer SECRETBEARER"}}, "sas_token": "SECRETSAS"}
    path = b.with_bad(d, {"kind": "toyworld", "samples": 64}, storage_options=options)

    def not_printed(out: dict) -> tuple[bool, str]:
        printed = any(s in line for s in ("SECRETBEARER", "SECRETSAS")
                      for line in out["stdout"] + out["other_stderr"] + [out["error"]])
        return not printed, "the secret is not printed" if not printed else "THE SECRET IS PRINTED"
    return Case(path, watch=store, after=not_printed)


@kind("secrets under other names in storage_options (redacted)")
def _(b, d, store):
    secrets = ["SECRETPASS", "SECRETCUSTOM"]
    options = {"client_kwargs": {"endpoint_url": "http://user:SECRETPASS@localhost:9/"},
               "my_vendor_option": "SECRETCUSTOM"}
    path = b.with_bad(d, {"kind": "toyworld", "samples": 64}, storage_options=options)

    def nowhere(out: dict) -> tuple[bool, str]:
        found = [str(f.relative_to(store)) for f in store.rglob("*")
                 if f.is_file() and any(s.encode() in f.read_bytes() for s in secrets)]
        printed = any(s in line for s in secrets for line in out["stdout"] + out["other_stderr"] + [out["error"]])
        return not found and not printed, ("no secret in the store or the output" if not found and not printed
                                           else f"secret found in {found or 'the output'}")
    return Case(path, expect=0, after=nowhere)


@kind("garbage zarr.json of the store root")
def _(b, d, store):
    (store / "zarr.json").write_bytes(b"{not json at all")
    return Case(b.study(d), expect=1, watch=store, after=_name_in_error("zarr.json"))


@kind("garbage zarr.json of a dataset group")
def _(b, d, store):
    (store / "datasets/real/zarr.json").write_bytes(b"\x00\x01garbage")
    return Case(b.study(d), ["--stages", "sample,embed"], expect=1, watch=store,
                after=_name_in_error("datasets/real/zarr.json"))


@kind("dissect worker dies")
def _(b, d, store):
    path = b.study(d, {"dissect": {**DISSECT, "segmenter": {"name": "plugins:segmenter_dying_in_a_pass"}}})
    return Case(path, ["--stages", "dissect"], expect=1, after=_name_in_error("worker (pid"))


# ---- running them ---------------------------------------------------------------------------------


class _Records(logging.Handler):
    """The ganscale log records of one invocation, to tell its log lines from anything else."""

    def __init__(self):
        super().__init__()
        self.lines: set[str] = set()

    def emit(self, record):
        for line in record.getMessage().splitlines():
            self.lines.add(line.strip())


class Tee:
    """This process's stderr, recording what is written to it between invocations: Ray's driver
    prints worker and raylet lines as they arrive, some after the command has already returned."""

    def __init__(self, inner):
        self.inner, self.lines = inner, []

    def write(self, text):
        self.lines += [line for line in text.splitlines() if line.strip()]
        return self.inner.write(text)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def __getattr__(self, name):
        return getattr(self.inner, name)


def wait_until_quiet(tee: Tee, quiet_s: float, limit_s: float) -> None:
    t0 = time.time()
    seen, last_change = len(tee.lines), time.time()
    while time.time() - last_change < quiet_s and time.time() - t0 < limit_s:
        time.sleep(0.25)
        if len(tee.lines) != seen:
            seen, last_change = len(tee.lines), time.time()


@contextlib.contextmanager
def native_stderr():
    """What native code (Ray's C++ core worker in this process) writes to file descriptor 2 meanwhile:
    the runner captures only Python's sys.stderr. Such a line shows once per process, so in this one
    process only the first command that starts actors gets it (a user gets it in every such run)."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines += [line for line in capture.read().decode(errors="replace").splitlines() if line.strip()]


def invoke(command: str, study: Path, args: list[str], env: dict) -> dict:
    from typer.testing import CliRunner

    from ganscale.cli import app

    # A new process per command, as a user has it: the CLI's logging.basicConfig then writes to this
    # invocation's stderr, not the first one's.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    records = _Records()
    logging.getLogger("ganscale").addHandler(records)
    saved = {k: os.environ.get(k) for k in env}
    t0 = time.time()
    try:
        result = CliRunner().invoke(app, [command, str(study), *args], env=env)
    finally:
        logging.getLogger("ganscale").removeHandler(records)
        for handler in list(root.handlers):  # bound to the runner's stream, closed now
            root.removeHandler(handler)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    stderr = result.stderr.splitlines()
    errors = [line for line in stderr if line.startswith("error:")]
    other = [line for line in stderr if line.strip() and not line.startswith("error:")
             and "[ganscale]" not in line and line.strip() not in records.lines]
    return {"exit": result.exit_code, "error_lines": len(errors), "other_stderr_lines": len(other),
            "error": errors[0] if errors else "", "other_stderr": other[:20],
            "stdout": result.stdout.splitlines()[:20],
            "exception": repr(result.exception) if result.exception and not isinstance(result.exception, SystemExit)
            else None, "seconds": round(time.time() - t0, 1)}


def run_kind(bench: Bench, name: str) -> dict:
    t0 = time.time()
    try:
        case = KINDS[name](bench)
    except Exception as e:  # the bench's own setup failed: say so in the row
        return {"kind": name, "setup_failed": f"{type(e).__name__}: {e}", "meets_contract": False}
    before_digest = store_digest(case.watch) if case.watch else None
    before_files = file_map(case.watch) if case.watch else {}
    if isinstance(sys.stderr, Tee):
        sys.stderr.take()
    with native_stderr() as native:
        out = invoke(case.command, case.study, case.args, case.env)
    if native:
        out["native_stderr"] = native[:20]  # Ray's C++ logs, on file descriptor 2 (not counted, see below)
    if isinstance(sys.stderr, Tee):
        gc.collect()  # what the command left unclosed reports now, not during the next command
        # Ray forwards a dying actor's output (and its restarts') for a while after the command
        # returned: wait until it is quiet so those lines land here, not in the next kind's row.
        used_ray = out["seconds"] > 2 or any("pid=" in line for line in out["other_stderr"] + out["stdout"])
        wait_until_quiet(sys.stderr, quiet_s=QUIET_S if used_ray else 0.3, limit_s=LATE_LIMIT_S)
        late = [line for line in sys.stderr.take() if "[ganscale]" not in line]
        if late:
            out["late_stderr"] = late[:20]  # printed by Ray after the command returned (not counted)
    row = {"kind": name, "command": f"{case.command} {case.study.name} {' '.join(case.args)}".strip(),
           "expected_exit": case.expect, **out}
    if case.watch is not None:
        after_digest = store_digest(case.watch)
        row["store_untouched"] = before_digest == after_digest
        after_files = file_map(case.watch)
        if case.aside:  # the chunks written before the fault stay aside for the rerun: all else untouched
            outside = lambda files: {k: v for k, v in files.items() if not k.startswith("staging/")}  # noqa: E731
            row["store_untouched"] = outside(before_files) == outside(after_files)
        # the README's weaker promise: nothing already in the store is touched (additions aside)
        row["existing_files_kept"] = all(after_files.get(k) == v for k, v in before_files.items())
        if before_digest != after_digest:
            row["store_change"] = (describe_change(before_files, file_map(case.watch))
                                   if after_files or before_files else
                                   f"{'created' if before_digest is None else 'changed'}: {case.watch.name}")
    else:
        row["store_untouched"] = None
    holds, note = case.after(out) if case.after else (True, "")
    if note:
        row["note"] = note
    if case.expect == 0:
        ok = out["exit"] == 0 and out["error_lines"] == 0 and out["other_stderr_lines"] == 0 and holds
        ok = ok and (row["store_untouched"] is False if case.must_change else True)
    elif case.after:
        ok = out["exit"] == case.expect and out["other_stderr_lines"] == 0 and holds \
            and row["store_untouched"] is not False
    else:
        ok = out["exit"] == case.expect and out["error_lines"] == 1 and out["other_stderr_lines"] == 0 \
            and row["store_untouched"] is not False and not out["stdout"]
    row["meets_contract"] = ok
    row["seconds"] = round(time.time() - t0, 1)
    return row


def build_reference(bench: Bench) -> float:
    from ganscale.pipeline import run_study
    from ganscale.study import load_study

    d = bench.reference_store.parent
    d.mkdir(parents=True)
    path = bench.study(d)
    t0 = time.time()
    run_study(load_study(path), REF_STAGES.split(","))
    return time.time() - t0


def cell(text, width: int = 160) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[:width - 3] + "..."


def table(rows: list[dict]) -> str:
    lines = ["| # | kind | command | exit (expected) | error: lines | other stderr | error line | store untouched | ok |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        if "setup_failed" in r:
            lines.append(f"| {i} | {cell(r['kind'])} | | | | | setup failed: {cell(r['setup_failed'])} | | no |")
            continue
        untouched = {True: "yes", False: "**no**", None: "n/a"}[r["store_untouched"]]
        if r["store_untouched"] is False and r.get("existing_files_kept"):
            untouched = "**no**, existing files kept"
        if r.get("store_change"):
            untouched += f" ({cell(r['store_change'], 80)})"
        exit_cell = f"{r['exit']} ({r['expected_exit']})" if r["exit"] == r["expected_exit"] else \
            f"**{r['exit']}** ({r['expected_exit']})"
        error = r["error"] or (f"(no error line; stdout: {' / '.join(r['stdout'])})" if r["stdout"] else "")
        late = f" (+{len(r['late_stderr'])} late)" if r.get("late_stderr") else ""
        late += f" (+{len(r['native_stderr'])} native)" if r.get("native_stderr") else ""
        if r.get("note"):
            error += f" [{r['note']}]"
        if r.get("exception"):
            error += f" [exception: {r['exception']}]"
        lines.append(f"| {i} | {cell(r['kind'])} | `{cell(r['command'], 60)}` | {exit_cell} | {r['error_lines']} | "
                     f"{r['other_stderr_lines']}{late} | {cell(error)} | {untouched} | {'yes' if r['meets_contract'] else '**no**'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bad_inputs.json")
    parser.add_argument("--only", default=None, help="kinds separated by ';' (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="badin-", dir="/tmp"))
    (work / "badin_faults.py").write_text(FAULT_PLUGINS)
    # Ray workers inherit this environment: the tests' plugins and ours import there; S3 clients find
    # dummy credentials for moto, as a deployment finds real ones in its environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(work), str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH")]))
    sys.path[:0] = [str(work), str(REPO / "tests"), str(REPO)]
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "GANSCALE_PROGRESS_EVERY_S": "60"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log is the bench's, not ganscale's

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    s3 = f"http://{host}:{port}"
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3}).mkdir("badin-bucket")
    t_start = time.time()
    sys.stderr = Tee(sys.stderr)
    ray.init(num_cpus=2, logging_level=logging.WARNING)
    bench = Bench(work, s3)
    rows = []
    try:
        reference_s = build_reference(bench)
        print(f"reference store ({REF_STAGES}): {reference_s:.1f} s", file=sys.stderr, flush=True)
        names = options.only.split(";") if options.only else list(KINDS)
        for name in names:
            row = run_kind(bench, name)
            rows.append(row)
            print(f"[{len(rows)}/{len(names)}] {name}: exit {row.get('exit')} "
                  f"{'ok' if row['meets_contract'] else 'DEVIATES'} ({row.get('seconds')} s)",
                  file=sys.stderr, flush=True)
    finally:
        sys.stderr = sys.stderr.inner
        ray.shutdown()
        server.stop()
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    markdown = table(rows)
    met = sum(r["meets_contract"] for r in rows)
    by_exit = {code: [r for r in rows if r.get("expected_exit") == code] for code in (2, 1, 0)}
    summary = {"kinds": len(rows), "meet_contract": met, "deviate": len(rows) - met,
               **{f"expected_exit_{code}": f"{sum(r['meets_contract'] for r in rs)}/{len(rs)} meet"
                  for code, rs in by_exit.items()},
               "reference_store_s": round(reference_s, 1), "total_s": round(time.time() - t_start, 1)}
    print(markdown)
    print(f"\n{met} of {len(rows)} kinds meet the contract; total {summary['total_s']} s")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps({"summary": summary, "reference_study": REFERENCE, "rows": rows,
                                       "table": markdown}, indent=1) + "\n")


if __name__ == "__main__":
    main()
