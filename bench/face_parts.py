"""How well the face_parts segmenter finds faces and parts: detection rates on LFW faces and
non-faces, on the faces study's generators, and on colour portraits that ship in packages; the
time per image; and a contact sheet of images and masks (bench/results/face_parts_sheet.png).

    python bench/face_parts.py            # ~1-2 min on 2 cores (MobileStyleGAN ~2 s per image)
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import matplotlib.cbook
import matplotlib.image
import numpy as np
import torch

from ganscale import assets
from ganscale.models.face_parts import CLASS_NAMES, MODEL_FILES, contact_sheet, face_parts
from ganscale.models.registry import build_generator
from ganscale.study import load_study

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LFW = ("pypi:scikit-image==0.26.0/skimage/data/lfw_subset.npy",
       "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c")
ASTRONAUT = "pypi:scikit-image==0.26.0/skimage/data/astronaut.png"


def square(image: np.ndarray, size: int = 256) -> np.ndarray:
    image = image[..., :3].astype(np.float32)
    if image.max() > 1.5:
        image /= 255
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = torch.from_numpy(np.ascontiguousarray(image[top:top + side, left:left + side])).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]


def measure(seg, name: str, images: torch.Tensor) -> dict:
    start = time.perf_counter()
    maps = seg(images)
    seconds = time.perf_counter() - start
    found = seg.last_found.copy()
    shares = {c: round(float((maps[torch.from_numpy(found)] == i).float().mean()), 4) if found.any() else 0.0
              for i, c in enumerate(CLASS_NAMES)}
    print(f"{name:>14}: face found in {found.sum()}/{len(found)}, {1000 * seconds / len(found):.1f} ms per image")
    return {"found": int(found.sum()), "images": len(found), "ms_per_image": round(1000 * seconds / len(found), 1),
            "class_share_in_found": shares, "_maps": maps.numpy(), "_found": found,
            "_images": images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()}


def main() -> None:
    seg = face_parts()
    lfw = np.load(assets.fetch(*LFW), allow_pickle=False).astype(np.float32)
    study = load_study(ROOT / "examples" / "faces" / "faces.yaml")
    results = {"lfw_faces": measure(seg, "lfw faces", torch.from_numpy(lfw[:100])[:, None]),
               "lfw_non_faces": measure(seg, "lfw non-faces", torch.from_numpy(lfw[100:200])[:, None])}
    for name, n in (("dcgan", 64), ("stylegan", 16)):
        generator = build_generator(study.datasets[name], f"datasets.{name}")
        images = torch.cat([generator.generate(list(range(s, min(s + 8, n))))[0].float().cpu() for s in range(0, n, 8)])
        results[name] = measure(seg, name, images)
    portraits = torch.stack([square(matplotlib.image.imread(assets.fetch(ASTRONAUT))),
                             square(matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg")))])
    results["portraits"] = measure(seg, "portraits", portraits)

    titles = {"lfw_faces": "LFW faces (grey, 25 px)", "lfw_non_faces": "LFW non-faces (25 px)",
              "dcgan": "DCGAN (64 px)", "stylegan": "MobileStyleGAN (128 px)",
              "portraits": "skimage astronaut, matplotlib grace_hopper (256 px)"}
    sheet = RESULTS / "face_parts_sheet.png"
    contact_sheet([(titles[k], r["_images"][:8], r["_maps"][:8], r["_found"][:8]) for k, r in results.items()], sheet)
    out = {k: {f: v for f, v in r.items() if not f.startswith("_")} for k, r in results.items()}
    out["models"] = dict(MODEL_FILES.values())
    out["sheet_sha256"] = hashlib.sha256(sheet.read_bytes()).hexdigest()
    (RESULTS / "face_parts.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {sheet} and {RESULTS / 'face_parts.json'}")


if __name__ == "__main__":
    main()
