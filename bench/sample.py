"""Throughput of the sample stage against the bare model loop, measured in one run.

Bare loop: the same generator and probe, the same batch size and device, one process, no Ray, no
store: generate -> probe -> (nothing kept). Stage: `ganscale.sample.run` with one worker on the
same device writing every array to a local zarr store. Ray's one-time cluster start is excluded
(it is paid once per cluster, not per study); actor start-up and model loading are included.

    python bench/sample.py [--toy-samples 20000] [--inception-samples 96] [--out bench/results/sample.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from ganscale import sample, sources
from ganscale.models import registry
from ganscale.study import load_study


def study_file(folder: Path, probe: dict, layers: list[str], samples: int, chunk: int, batch: int) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bench", "store": str(folder / "store.zarr"), "probe": probe, "layers": layers,
        "datasets": {"full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                              "samples": samples}},
        "sample": {"chunk_size": chunk, "batch_size": batch, "device": "cpu"}}))
    return path


@torch.inference_mode()
def bare_loop(study, samples: int) -> float:
    """Images/s of generate -> resize -> probe, in this process."""
    torch.set_num_threads(os.cpu_count() or 1)
    probe = registry.build_probe(study.probe).only(study.layers)
    generator = registry.build_generator(study.datasets["full"], "datasets.full")
    seeds = sources.dataset_seeds(study.seed, "full", samples).tolist()
    batch = study.sample.batch_size
    probe(sources.resize_square(generator.generate(seeds[:batch])[0], probe.input_size))  # warm-up
    t0 = time.perf_counter()
    for i in range(0, samples, batch):
        images, _ = generator.generate(seeds[i:i + batch])
        probe(sources.resize_square(images, probe.input_size))
    return samples / (time.perf_counter() - t0)


def stage(study) -> tuple[float, float]:
    """(images/s over the whole stage call, images/s once the worker is up)."""
    t0 = time.perf_counter()
    first = []
    result = sample.run(study, workers=1, on_chunk=lambda *a: first.append(time.perf_counter()) if not first else None)
    total = time.perf_counter() - t0
    steady = (study.datasets["full"].samples - study.sample.chunk_size) / (time.perf_counter() - first[0])
    assert result.samples_written == study.datasets["full"].samples
    return study.datasets["full"].samples / total, steady


def measure(name: str, folder: Path, probe: dict, layers: list[str], samples: int, chunk: int, batch: int) -> dict:
    study = load_study(study_file(folder, probe, layers, samples, chunk, batch))
    bare = bare_loop(study, samples)
    whole, steady = stage(study)
    row = {"case": name, "samples": samples, "batch_size": batch, "chunk_size": chunk,
           "bare_images_per_s": round(bare, 1), "stage_images_per_s": round(whole, 1),
           "stage_steady_images_per_s": round(steady, 1), "ratio": round(whole / bare, 3),
           "steady_ratio": round(steady / bare, 3)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--toy-samples", type=int, default=20000)
    parser.add_argument("--inception-samples", type=int, default=96)
    parser.add_argument("--out", default="bench/results/sample.json")
    args = parser.parse_args()
    import ray

    ray.init(include_dashboard=False, logging_level="WARNING")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "toy").mkdir()
        rows.append(measure("toy world: dcgan_full + toy_probe (3 layers), 32x32", tmp / "toy",
                            {"name": "toy_probe"}, ["block1", "block2", "block3"], args.toy_samples, 2000, 500))
        if args.inception_samples:
            from ganscale.models.inception_v1 import InceptionV1

            (tmp / "inc").mkdir()
            weights = tmp / "inc" / "inception_random.pth"  # the real inception5h.pth cannot be downloaded here
            torch.save(InceptionV1().state_dict(), weights)
            rows.append(measure("dcgan_full + InceptionV1 (9 layers), 224x224", tmp / "inc",
                                {"name": "inception_v1", "weights": str(weights)}, list(InceptionV1.layers),
                                args.inception_samples, 32, 32))
    info = {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpus": os.cpu_count(),
            "torch": torch.__version__, "python": sys.version.split()[0], "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
