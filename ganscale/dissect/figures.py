"""The dissection section of the report: per generator and layer, interpretable units per concept,
the top units' top-activating images with their thresholded masks, interventions (ablated and
inserted images), insertion maps, downstream tracing and the artifact-units table."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ganscale import render  # noqa: E402
from ganscale.dissect import generators_of, intervene, stats  # noqa: E402
from ganscale.study import Study  # noqa: E402

UNITS_SHOWN = 8
IMAGES_PER_UNIT = 4


def concept_bars(concepts: dict[str, int], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(3, 0.7 * len(concepts) + 1.5), 2.6))
    names = sorted(concepts, key=lambda k: -concepts[k])
    ax.bar(names, [concepts[n] for n in names], color="#4c72b0")
    ax.set_ylabel("interpretable units", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def unit_panel(images: dict[int, tuple[torch.Tensor, torch.Tensor]], labels: dict[int, str], title: str,
               path: Path) -> Path:
    """Rows of units: each top-activating image with the unit's above-threshold region outlined in yellow."""
    fig, axes = plt.subplots(len(images), IMAGES_PER_UNIT, figsize=(1.2 * IMAGES_PER_UNIT + 1.8, 1.25 * len(images) + 0.5),
                             squeeze=False)
    for r, (unit, (pics, masks)) in enumerate(images.items()):
        axes[r, 0].set_ylabel(labels[unit], rotation=0, ha="right", va="center", fontsize=7)
        for c in range(IMAGES_PER_UNIT):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(pics):
                ax.axis("off")
                continue
            ax.imshow(pics[c].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.contour(masks[c].numpy().astype(float), levels=[0.5], colors="yellow", linewidths=1.0)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def insertion_heatmaps(maps: dict[str, dict], title: str, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(maps), figsize=(2.6 * len(maps), 2.6), squeeze=False)
    for ax, (cls, m) in zip(axes[0], maps.items()):
        gain = np.asarray(m["gain"])
        image = ax.imshow(gain, cmap="viridis", origin="upper")
        ax.set_title(f"{cls}", fontsize=8)
        ax.set_xticks(range(len(m["cols"])), m["cols"], fontsize=6)
        ax.set_yticks(range(len(m["rows"])), m["rows"], fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dissect_section(study: Study, root, out: Path) -> tuple[str, dict]:
    if study.dissect is None or root.get("dissect") is None:
        return "", {}
    from ganscale.dissect import build_segmenter
    from ganscale.models import registry

    folder = out / "dissect"
    folder.mkdir(exist_ok=True)
    parts = [f"<h2>Dissection</h2><p>Generator layers against the {html.escape(study.dissect.segmenter.name)} "
             f"segmenter over {study.dissect.samples} samples; threshold per unit: "
             f"{'IQR-maximising (Bau et al. 2019)' if study.dissect.threshold == 'iqr' else f'{study.dissect.quantile} quantile'}"
             f"; a unit is interpretable with IoU &gt; {study.dissect.iou_min}. Interventions on "
             f"{study.dissect.intervention_samples} other samples: the top {study.dissect.top_k} units of each class "
             "set to 0 (ablation) or to their high quantile (insertion); ACE = class share after insertion minus "
             "after ablation.</p>"]
    summary: dict = {}
    segmenter = build_segmenter(study)
    for name in generators_of(study):
        if root.get(f"dissect/{name}") is None:
            continue
        generator = registry.build_generator(study.datasets[name], f"datasets.{name}", study.storage_options)
        summary[name] = {}
        for layer in study.dissect.layers:
            group = root[f"dissect/{name}/{layer}"]
            results = dict(group.attrs["results"])
            summary[name][layer] = results
            labels = results["labels"]
            parts.append(f"<h3>{html.escape(name)} {html.escape(layer)}: {labels['interpretable']} of "
                         f"{labels['units']} units interpretable, {labels['distinct_concepts']} concepts</h3>")
            if labels["concepts"]:
                bars = concept_bars(labels["concepts"], f"{name} {layer}: interpretable units per concept",
                                    folder / f"concepts_{name}_{layer}.png")
                parts.append(f'<img src="{bars.relative_to(out)}">')
            parts.append(render.html_table(["unit", "class", "IoU", "IQR", "threshold"],
                                [[u["unit"], u["class"], u["iou"], u["iqr"], u["threshold"]] for u in labels["top_units"]]))
            panel = top_units_figure(generator, group, layer, labels, folder / f"units_{name}_{layer}.png",
                                     f"{name} {layer}: top-activating images, unit above its threshold outlined")
            parts.append(f'<img src="{panel.relative_to(out)}">')
            if results["interventions"]:
                parts.append("<h4>Interventions</h4>" + render.html_table(
                    ["class", "units", "share before", "after ablation", "removed", "after insertion", "ACE"],
                    [[c, len(v["units"]), v["base_fraction"], v["ablated_fraction"], v["removed_share"],
                      v["inserted_fraction"], v["ace"]] for c, v in results["interventions"].items()]))
                pictures = interventions_figure(generator, segmenter, group, layer, results,
                                                folder / f"interventions_{name}_{layer}.png", f"{name} {layer}")
                heat = insertion_heatmaps(results["insertion_maps"], f"{name} {layer}: class share gained by inserting "
                                          "the class's units at one featuremap pixel", folder / f"insertion_{name}_{layer}.png")
                parts.append(f'<img src="{pictures.relative_to(out)}"><img src="{heat.relative_to(out)}">')
                parts.append("<p>Downstream: normalised change in later layers after insertion: " + "; ".join(
                    f"{html.escape(c)}: " + ", ".join(f"{k} {v:.3f}" for k, v in d.items())
                    for c, d in results["downstream"].items()) + "</p>")
            if "artifacts" in results:
                a = results["artifacts"]
                parts.append(f"<h4>Artifact units ({html.escape(a['score'])}, {a['samples']} held-out samples)</h4>"
                             + render.html_table(["", "score"], [["before", a["before"]],
                                                       [f"ablating the top {a['k']} artifact units", a["after_top"]],
                                                       [f"ablating {a['k']} random units", a["after_random"]]]))
    return "\n".join(parts), summary


@torch.no_grad()
def top_units_figure(generator, group, layer: str, labels: dict, path: Path, title: str) -> Path:
    seeds = group["seeds"][...]
    top_ids = group["top_ids"][...]
    thresholds = group["threshold"][...]
    shown: dict[int, tuple] = {}
    names = {}
    for u in labels["top_units"][:UNITS_SHOWN]:
        unit = u["unit"]
        ids = [i for i in top_ids[unit][:IMAGES_PER_UNIT] if i >= 0]
        images, maps = intervene.featuremaps(generator, seeds[ids].tolist(), [layer])
        up = stats.upsample(maps[layer][:, unit:unit + 1], tuple(images.shape[-2:]))[:, 0]
        shown[unit] = (images.cpu(), (up > float(thresholds[unit])).cpu())
        names[unit] = f"unit {unit}\n{u['class']} {u['iou']:.2f}"
    return unit_panel(shown, names, title, path)


@torch.no_grad()
def interventions_figure(generator, segmenter, group, layer: str, results: dict, path: Path, title: str) -> Path:
    seeds = group["seeds"][:4].tolist()
    high = stats.UnitHistogram(group["low"][...], group["high"][...], group["histogram"][...]).quantiles(
        [group.attrs["quantile"]])[:, 0]
    rows = [("original", [x.permute(1, 2, 0).numpy() for x in intervene.render(generator, seeds)])]
    for cls, v in results["interventions"].items():
        units = v["units"]
        with intervene.intervention(generator, layer, units, 0.0):
            rows.append((f"{cls}: ablated", [x.permute(1, 2, 0).numpy() for x in intervene.render(generator, seeds)]))
        with intervene.intervention(generator, layer, units, torch.as_tensor(high[units], dtype=torch.float32)):
            rows.append((f"{cls}: inserted", [x.permute(1, 2, 0).numpy() for x in intervene.render(generator, seeds)]))
    return render.image_rows(rows, f"{title}: each class's top units switched off and on", path)
