"""Icon rendering throughput (icons/s) on this machine's CPU, or its GPU when it has one: what one
icons-stage worker does per batch (`ganscale.icons.IconRenderer.render`: Fourier image at the
probe's input size, lucent's standard transforms, direction x cosine^4 at the layer's centre, Adam).

  - the toy probe (block3, input 32) at the demo's settings, for several batch sizes (icons
    rendered together in one optimisation);
  - InceptionV1 (random weights: the speed does not depend on them; mixed4c, input 224), a few
    icons and steps.

No Ray: the stage runs one such worker per GPU (else per 4 CPUs) and keeps two batches in flight
per worker, so the stage's rate is about workers x this rate.

    python bench/icons.py [--toy-batches 1 8 32] [--toy-steps 128] [--inception-icons 4] [--inception-steps 8]
                          [--threads N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from ganscale.fv import objectives, param, render, transforms
from ganscale.models import registry
from ganscale.study import ProbeSpec


def bench(module: torch.nn.Module, input_size: int, layer: str, icons: int, steps: int, name: str, repeat: int = 1
          ) -> dict:
    """The fastest of `repeat` renders of `icons` icons for `steps` steps (after a warm-up)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tap = render.LayerTap(module.to(device), [layer])
    with torch.no_grad():
        channels = tap(torch.rand(1, 3, input_size, input_size, device=device))[layer].shape[1]
    vectors = torch.rand(icons, channels, generator=torch.Generator().manual_seed(0)).to(device)
    objective = objectives.direction_cosine(layer, vectors, power=4)

    def run(n_steps):
        return render.render(tap, objective, lambda s: param.fourier_image(icons, input_size, seed=s),
                             transforms.standard(input_size), steps=n_steps, input_size=input_size, device=device)

    run(2)  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = run(steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = min(seconds, time.perf_counter() - t0)
    return {"probe": name, "layer": layer, "input_size": input_size, "device": str(device),
            "threads": torch.get_num_threads(), "batch": icons, "steps": steps, "repeat": repeat,
            "seconds": round(seconds, 2),
            "icons_per_s": round(icons / seconds, 3), "icon_steps_per_s": round(icons * steps / seconds, 1),
            "objective_raised": bool((result.objective > result.start_objective).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy-batches", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--toy-steps", type=int, default=128)
    parser.add_argument("--inception-icons", type=int, default=4)
    parser.add_argument("--inception-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=3, help="report the fastest of this many runs")
    parser.add_argument("--out", default="bench/results/icons.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    toy = registry.build_probe(ProbeSpec(name="toy_probe")).only([])
    for batch in args.toy_batches:
        results.append(bench(toy.module, toy.input_size, "block3", batch, args.toy_steps, "toy_probe", args.repeat))
        print(json.dumps(results[-1]), flush=True)
    if args.inception_icons:
        from ganscale.models.inception_v1 import InceptionV1

        torch.manual_seed(0)
        results.append(bench(InceptionV1().eval(), 224, "mixed4c", args.inception_icons, args.inception_steps,
                             "inception_v1 (random weights)", max(1, args.repeat - 1)))
        print(json.dumps(results[-1]), flush=True)
    machine = {"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
               "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
