"""Icon rendering throughput (icons/s) on this machine's CPU, or its GPU when it has one: the toy
probe at the demo's settings, and InceptionV1 (random weights, layer mixed4c, 224 px input) with a
few icons and steps. One run; no Ray (the stage adds one task per batch of icons).

    python bench/icons.py [--toy-icons 32] [--steps 256] [--inception-icons 4] [--inception-steps 16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ganscale.fv import objectives, param, render, transforms
from ganscale.models import registry
from ganscale.study import ProbeSpec


def bench(probe_spec: ProbeSpec, layer: str, icons: int, steps: int, size: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if probe_spec.name == "inception_v1":
        from ganscale.models.inception_v1 import InceptionV1

        module, input_size = InceptionV1().eval().to(device), 224
    else:
        probe = registry.build_probe(probe_spec).to(device)
        module, input_size = probe.module, probe.input_size
    tap = render.LayerTap(module, [layer])
    with torch.no_grad():
        channels = tap(torch.rand(1, 3, input_size, input_size, device=device))[layer].shape[1]
    vectors = torch.rand(icons, channels, device=device)
    objective = objectives.direction_cosine(layer, vectors, power=4)
    t0 = time.perf_counter()
    result = render.render(tap, lambda s: param.fourier_image(icons, size, seed=s).to(device), objective,
                           transforms.standard(size), steps=steps, input_size=input_size)
    seconds = time.perf_counter() - t0
    return {"probe": probe_spec.name, "layer": layer, "device": str(device), "icons": icons, "steps": steps,
            "size": size, "seconds": round(seconds, 2), "icons_per_s": round(icons / seconds, 3),
            "icon_steps_per_s": round(icons * steps / seconds, 1),
            "objective_raised": bool((result.objective > result.start_objective).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy-icons", type=int, default=32)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--inception-icons", type=int, default=4)
    parser.add_argument("--inception-steps", type=int, default=16)
    parser.add_argument("--out", default="bench/results/icons.json")
    args = parser.parse_args()
    results = [bench(ProbeSpec(name="toy_probe"), "block3", args.toy_icons, args.steps, 64)]
    print(json.dumps(results[-1]), flush=True)
    if args.inception_icons:
        results.append(bench(ProbeSpec(name="inception_v1"), "mixed4c", args.inception_icons, args.inception_steps, 128))
        print(json.dumps(results[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
