"""GAN dissection of the faces study's generators, through the real dissect stage, with the faces
study's own dissect settings (examples/faces/faces.yaml): the tutorial DCGAN at its four blocks and
MobileStyleGAN at four synthesis blocks of the same resolutions, against the face_parts segmenter.
The sample stage runs first with a few images per dataset (dissect needs it only as its upstream).
Prints and writes (bench/results/dissect_faces.json) per generator and layer the units, the
interpretable units and their share, classes covered and mean IoU; the DCGAN's table again at
MobileStyleGAN's sample count; for the DCGAN the share of each part removed by ablating its top
units against as many random units; and the stage's seconds.

    python bench/dissect_faces.py          # ~3-5 min on 2 cores
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import yaml
import zarr

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from ganscale.dissect.figures import architecture_table
    from ganscale.pipeline import run_stage
    from ganscale.study import load_study

    raw = yaml.safe_load((ROOT / "examples" / "faces" / "faces.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        raw["store"] = str(Path(tmp) / "faces.zarr")
        for name, n in (("lfw", 8), ("dcgan", 8), ("stylegan", 2)):
            raw["datasets"][name]["samples"] = n
        raw["sample"] = {"chunk_size": 8, "batch_size": 8}  # dissect batches as the sample stage does: 8 rows
        path = Path(tmp) / "faces.yaml"
        path.write_text(yaml.safe_dump(raw))
        study = load_study(path)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        run_stage(study, "sample")
        start = time.perf_counter()
        run_stage(study, "dissect")
        seconds = time.perf_counter() - start
        root = zarr.open_group(study.store, mode="r")
        rows = architecture_table(study, root)
        ablation = {}
        for layer in study.dissect_for("dcgan").layers:
            results = dict(root[f"dissect/dcgan/{layer}"].attrs["results"])
            ablation[layer] = {cls: {"units": e["units"], "removed_share": e["removed_share"],
                                     "removed_ci95": e["removed_ci95"],
                                     "random_removed_share": e["random"]["removed_share"],
                                     "random_removed_ci95": e["random"]["removed_ci95"],
                                     "images_with_class": e["images_with_class"]}
                               for cls, e in results["interventions"].items()}
        # The architectures at one sample count: the DCGAN again on as many images as MobileStyleGAN's
        # (fewer images leave more units above the IoU bar by chance), interventions cut to a minimum.
        matched_n = study.dissect_for("stylegan").samples
        raw["dissect"]["per_generator"]["dcgan"] = {"samples": matched_n}
        raw["dissect"]["intervention_samples"] = 8
        raw["dissect"]["generators"] = ["dcgan"]
        path.write_text(yaml.safe_dump(raw))
        matched_study = load_study(path)
        run_stage(matched_study, "dissect")
        matched = [r for r in architecture_table(matched_study, zarr.open_group(study.store, mode="r"))
                   if r["generator"] == "dcgan"]
    for row in matched:
        print(f"dcgan at {matched_n} samples {row['layer']:>8}: {row['interpretable']:>3}/{row['units']:<4} "
              f"interpretable ({100 * row['share']:.1f}%), classes {row['classes']}, mean IoU {row['mean_iou']:.3f}")
    for row in rows:
        print(f"{row['architecture']:>9} {row['layer']:>14} {row['featuremap']:>6}: {row['interpretable']:>3}/"
              f"{row['units']:<4} interpretable ({100 * row['share']:.1f}%), classes {row['classes']}, "
              f"mean IoU {row['mean_iou']:.3f}")
    for layer, classes in ablation.items():
        for cls, e in classes.items():
            print(f"dcgan {layer} {cls}: top {len(e['units'])} units remove {100 * e['removed_share']:.1f}% "
                  f"[{100 * e['removed_ci95'][0]:.1f}, {100 * e['removed_ci95'][1]:.1f}], random units "
                  f"{100 * e['random_removed_share']:.1f}%")
    print(f"dissect stage: {seconds:.0f} s (both generators)")
    out = ROOT / "bench" / "results" / "dissect_faces.json"
    out.write_text(json.dumps({"architecture_table": rows, "ablation": ablation, "dissect_seconds": round(seconds, 1),
                               "dcgan_at_matched_samples": {"samples": matched_n, "rows": matched},
                               "cpus": os.cpu_count()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
