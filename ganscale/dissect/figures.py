"""The dissection section of the report, from the store alone (no model is run): per generator and
layer, interpretable units per concept (bar chart), the top units' top-activating images with the
thresholded unit outlined, the interventions table and pictures (each class's top units switched
off and on), insertion maps (where inserting a class's units at one featuremap pixel adds the
class, and by the class that was there), downstream tracing, and the artifact-units table.

`dissect_section(study, root, out) -> (html, summary)` is what the report calls."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ganscale import render  # noqa: E402
from ganscale.study import Study  # noqa: E402


def concept_bars(concepts: dict[str, int], title: str, path: Path, strict: dict[str, int] | None = None,
                 labels: tuple[str, str] = ("IoU", "IoU and IQR")) -> Path:
    """Interpretable units per concept; with `strict`, a second bar per concept (a stricter rule)."""
    fig, ax = plt.subplots(figsize=(max(3.2, 0.8 * len(concepts) + 1.8), 2.8))
    names = sorted(concepts, key=lambda k: (-concepts[k], k))
    x = np.arange(len(names))
    width = 0.4 if strict is not None else 0.8
    series = [(concepts, "#4c72b0", labels[0])] + ([(strict, "#dd8452", labels[1])] if strict is not None else [])
    for i, (counts, colour, label) in enumerate(series):
        xs = x + (i - (len(series) - 1) / 2) * width
        values = [counts.get(n, 0) for n in names]
        ax.bar(xs, values, width, color=colour, label=label)
        for xi, v in zip(xs, values):
            ax.text(xi, v, str(v), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, names)
    ax.set_ylabel("interpretable units", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)
    if strict is not None:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def unit_panel(images: np.ndarray, masks: np.ndarray, labels: list[str], title: str, path: Path) -> Path:
    """Rows of units: each top-activating image (uint8 [I, h, w, 3]) with the unit's
    above-threshold region (masks [I, S, S']) outlined in yellow and the rest darkened."""
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols + 1.8, 1.25 * rows + 0.5), squeeze=False)
    for r in range(rows):
        axes[r, 0].set_ylabel(labels[r], rotation=0, ha="right", va="center", fontsize=7)
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            image = images[r, c].astype(np.float32) / 255
            if not image.any():
                ax.axis("off")
                continue
            h, w = image.shape[:2]
            mask = masks[r, c].astype(float)
            extent = (-0.5, w - 0.5, h - 0.5, -0.5)
            ax.imshow(image, interpolation="nearest")
            ax.imshow(np.zeros_like(mask), cmap="gray", vmin=0, vmax=1, alpha=0.6 * (1 - mask), extent=extent,
                      interpolation="nearest")  # outside the unit's mask: darkened
            if 0 < mask.sum() < mask.size:
                ys = (np.arange(mask.shape[0]) + 0.5) * h / mask.shape[0] - 0.5
                xs = (np.arange(mask.shape[1]) + 0.5) * w / mask.shape[1] - 0.5
                ax.contour(xs, ys, mask, levels=[0.5], colors="yellow", linewidths=1.0)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def insertion_figure(maps: dict[str, dict], title: str, path: Path) -> Path:
    """Per class: mean gain and success rate per inserted featuremap pixel, and gain by the class
    that was at the pixel before the insertion."""
    fig, axes = plt.subplots(3, len(maps), figsize=(2.7 * len(maps), 7.4), squeeze=False)
    for k, (cls, m) in enumerate(maps.items()):
        for row, (key, label) in enumerate((("gain", "class share gained"), ("success", "success rate"))):
            ax = axes[row, k]
            image = ax.imshow(np.asarray(m[key]), cmap="viridis", origin="upper",
                              vmin=0 if key == "success" else None, vmax=1 if key == "success" else None)
            ax.set_title(f"{cls}: {label}", fontsize=8)
            ax.set_xticks(range(len(m["cols"])), m["cols"], fontsize=6)
            ax.set_yticks(range(len(m["rows"])), m["rows"], fontsize=6)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        ax = axes[2, k]
        contexts = m["by_context"]
        names = list(contexts)
        ax.bar(names, [contexts[n]["gain"] for n in names], color="#55a868")
        ax.set_title(f"{cls}: gain by class at the pixel", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def downstream_figure(downstream: dict[str, dict], maps: dict[str, dict], title: str, path: Path) -> Path | None:
    """Per class: the mean normalised change in each later layer after ablating / inserting the
    units over the whole map, and after 1-pixel insertions that did / did not add the class."""
    panels = []
    for cls, d in downstream.items():
        series = {f"{kind}, whole map": d[kind] for kind in ("ablation", "insertion") if d.get(kind)}
        by_vis = maps.get(cls, {}).get("downstream_by_visibility") or {}
        for vis in ("visible", "invisible"):
            values = {n: v[vis] for n, v in by_vis.items() if v[vis] is not None}
            if values:
                series[f"1-pixel insertion, {vis}"] = values
        if series:
            panels.append((cls, series))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (cls, series) in zip(axes.flat, panels):
        for label, values in series.items():
            names = list(values)
            ax.plot(range(len(names)), [max(values[n], 1e-6) for n in names], marker="o", markersize=3, label=label)
            ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(cls, fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def architecture_table(study: Study, root) -> list[dict]:
    """Per dissected generator and layer: units, interpretable units (IoU > iou_min) and their share,
    the classes they cover, and the mean over all units of each unit's best IoU (background left out)."""
    rows = []
    for name in study.dissected():
        spec = study.datasets[name]
        for layer in study.dissect_for(name).layers:
            group = root.get(f"dissect/{name}/{layer}")
            if group is None or "labels" not in group.attrs:
                continue
            labels = dict(group.attrs["labels"])
            classes = [c for c in labels["concepts"] if c != "background"]
            iou_all = group["iou_all"][...]
            names = list(group.attrs["classes"])
            parts = [k for k, c in enumerate(names) if c != "background"] or list(range(len(names)))
            rows.append({"generator": name, "architecture": spec.name, "layer": layer,
                         "featuremap": "x".join(str(d) for d in group.attrs.get("featuremap", [])[1:]) or "?",
                         "units": labels["units"], "interpretable": labels["interpretable"],
                         "share": labels["interpretable"] / labels["units"],
                         "classes": classes, "units_per_class": labels["concepts"],
                         "mean_iou": float(iou_all[:, parts].max(1).mean())})
    return rows


ARCHITECTURE_CAVEAT = (
    "What this comparison can claim: on the same segmenter and the same kind of seeds, the share of each "
    "network's units that line up with a face part, layer by layer at matching featuremap sides (4 to 32 px). "
    "What it cannot: the networks differ in training set (synthetic DigiFace faces vs FFHQ photographs), output "
    "resolution (64 vs 1024 px, segmented at 64 and 128 px), depth (4 blocks vs 9) and units per layer (512 to "
    "64 vs 512), and a unit of a modulated StyleGAN convolution is not the same kind of thing as a DCGAN channel; "
    "a larger share is a description of these two networks, not a law about architectures.")


def architecture_html(rows: list[dict]) -> str:
    if len({r["generator"] for r in rows}) < 2:
        return ""
    table = render.html_table(
        ["generator", "architecture", "layer", "featuremap", "units", "interpretable", "share", "classes covered",
         "mean best IoU"],
        [[r["generator"], r["architecture"], r["layer"], r["featuremap"], r["units"], r["interpretable"],
          f"{100 * r['share']:.1f}%", ", ".join(f"{c} ({n})" for c, n in r["units_per_class"].items()
                                                 if c != "background") or "-", r["mean_iou"]] for r in rows])
    return f"<h3>Architectures compared</h3>{table}<p>{html.escape(ARCHITECTURE_CAVEAT)}</p>"


def dissect_section(study: Study, root, out: Path) -> tuple[str, dict]:
    """The report's dissection section: (html fragment, summary entry {generator: {layer: results}})."""
    if study.dissect is None or root.get("dissect") is None:
        return "", {}
    folder = out / "dissect"
    folder.mkdir(exist_ok=True)
    settings = study.dissect
    method = ("the threshold maximising the information quality ratio I/H (Bau et al. 2019)"
              if settings.threshold == "iqr" else f"the {settings.quantile} quantile")
    samples = ", ".join(f"{n}: {study.dissect_for(n).samples}" for n in study.dissected())
    parts = [f"<h2>Dissection</h2><p>Generator layers against the {html.escape(settings.segmenter.name)} "
             f"segmenter over {samples} samples, featuremaps upsampled to the segmentation; threshold per "
             f"unit and class: {method}; IoU pools pixels over all images; a unit is interpretable with IoU &gt; "
             f"{settings.iou_min}. Interventions on {settings.intervention_samples} other samples: the top "
             f"{settings.top_k} units of each class (by IoU) set to 0 (ablation) or to "
             + (f"their {settings.quantile} quantile" if settings.insertion == "quantile"
                else "their mean activation where the class is") + " (insertion); ACE = class share after insertion minus after ablation; 'removed' = share of "
             "the class's pixels gone after ablation.</p>"]
    summary: dict = {"generators": {}}
    for name in study.dissected():
        if root.get(f"dissect/{name}") is None:
            continue
        summary["generators"][name] = {}
        for layer in study.dissect_for(name).layers:
            group = root.get(f"dissect/{name}/{layer}")
            if group is None or "results" not in group.attrs:
                continue
            results = dict(group.attrs["results"])
            summary["generators"][name][layer] = results
            parts.append(layer_html(name, layer, group, results, folder, out))
    sheet_html, found = segmenter_html(study, root, folder, out)
    if found:
        summary["faces_found"] = found
    parts.insert(1, sheet_html)
    rows = architecture_table(study, root)
    summary["architectures"] = rows
    if len({r["generator"] for r in rows}) > 1:
        summary["architecture_caveat"] = ARCHITECTURE_CAVEAT
        parts.insert(1, architecture_html(rows))
    return "\n".join(parts), summary


def layer_html(name: str, layer: str, group, results: dict, folder: Path, out: Path) -> str:
    labels = results["labels"]
    tag = f"{name}_{layer}"
    parts = [f"<h3>{html.escape(name)} {html.escape(layer)}: {labels['interpretable']} of {labels['units']} units "
             f"interpretable, {labels['distinct_concepts']} concepts</h3>"
             f"<p>With gandissect's stricter rule (IQR &gt; {labels['iqr_min']} too): {labels['interpretable_iqr']} "
             f"units, {labels['distinct_concepts_iqr']} concepts.</p>"]
    if labels["concepts"]:
        bars = concept_bars(labels["concepts"], f"{name} {layer}: interpretable units per concept",
                            folder / f"concepts_{tag}.png", labels["concepts_iqr"],
                            (f"IoU > {labels['iou_min']}", f"and IQR > {labels['iqr_min']}"))
        parts.append(render.img_link(bars.relative_to(out)))
    parts.append(render.html_table(["unit", "class", "IoU", "IQR", "threshold"],
                                   [[u["unit"], u["class"], u["iou"], u["iqr"], u["threshold"]]
                                    for u in labels["top_units"]]))
    classes = list(group.attrs["classes"])
    units = group["panel_units"][...]
    if len(units):
        label, iou = group["label"][...], group["iou"][...]
        panel = unit_panel(group["panel_images"][...], group["panel_masks"][...],
                           [f"unit {u}\n{classes[label[u]]} {iou[u]:.2f}" for u in units],
                           f"{name} {layer}: top-activating images; unit above its threshold outlined",
                           folder / f"units_{tag}.png")
        parts.append(render.img_link(panel.relative_to(out)))
    effects = results["interventions"]
    if "interventions_left_out" in results:
        parts.append(f"<p>Interventions left out: {html.escape(results['interventions_left_out'])}.</p>")
    if effects:
        parts.append("<h4>Interventions</h4>" + render.html_table(
            ["class", "units", "share before", "after ablation", "removed [95% CI]", "random units: removed",
             "after insertion", "ACE", "images with class", "cleared by ablation"],
            [[c, len(v["units"]), v["base_fraction"], v["ablated_fraction"], _share(v),
              _share(v["random"]) if "random" in v else "-", v["inserted_fraction"], v["ace"],
              v["images_with_class"], v["images_cleared"]] for c, v in effects.items()])
            + "<p>Removed: the share of the class's pixels gone when its top units are set to 0, with a 95% "
            "percentile-bootstrap interval over the images; random units: as many other units of the layer, "
            "drawn at random, set to 0 instead. A part the top units draw loses far more than with random "
            "units.</p>")
        pictures = group["intervention_images"][...]
        rows = []
        for k, cls in enumerate(effects):
            for s, what in enumerate(("original", "ablated", "inserted")):
                if what == "original" and k > 0:
                    continue
                label = "original" if what == "original" else f"{cls}: {what}"
                rows.append((label, [im.astype(np.float32) / 255 for im in pictures[k, s]]))
        pics = render.image_rows(rows, f"{name} {layer}: each class's top units switched off and on",
                                 folder / f"interventions_{tag}.png")
        heat = insertion_figure(results["insertion_maps"], f"{name} {layer}: inserting a class's units at one "
                                "featuremap pixel", folder / f"insertion_{tag}.png")
        parts.append(render.img_link(pics.relative_to(out)) + render.img_link(heat.relative_to(out)))
        parts.append(render.html_table(
            ["class", "1-pixel insertions that add the class", "best context", "gain there"],
            [[c, m["success_rate"], *max(((k, v["gain"]) for k, v in m["by_context"].items()), key=lambda kv: kv[1])]
             for c, m in results["insertion_maps"].items()]))
        trace = downstream_figure(results["downstream"], results["insertion_maps"],
                                  f"{name} {layer}: mean normalised change in later layers",
                                  folder / f"downstream_{tag}.png")
        if trace is not None:
            parts.append(render.img_link(trace.relative_to(out)))
    if "artifacts" in results:
        a = results["artifacts"]
        k = a["k"]
        parts.append(
            f"<h4>Artifact units</h4><p>Score: {html.escape(a['score'])} (lower: closer to real). Each unit is "
            f"ranked on the {a['images_per_unit']} of {a['rank_samples']} samples where it peaks highest, by how much "
            f"ablating it alone lowers that score ({a['units_improving']} units lower it). The top {k} are scored on "
            "other samples, against as many random units: on the images where they are most active (the paper's "
            "table) and on all.</p>" + render.html_table(
                ["images", "original", f"top {k} artifact units ablated", f"{k} random units ablated"],
                [[f"where the artifact units are most active ({a['images_active']})", a["active"]["before"],
                  a["active"]["after_top"], a["active"]["after_random"]],
                 [f"all ({a['images_all']})", a["all"]["before"], a["all"]["after_top"], a["all"]["after_random"]]])
            + f"<p>Artifact units: {', '.join(str(u) for u in a['units'])}</p>"
            + "".join(f"<p>{significance_sentence(a[f'significance_{key}'], what)}</p>"
                      for key, what in (("active", "where they are most active"), ("all", "on all images"))
                      if f"significance_{key}" in a))
        if "artifact_images" in group:
            pics = group["artifact_images"][...]
            figure = render.image_rows(
                [("original", [im.astype(np.float32) / 255 for im in pics[0]]),
                 (f"top {k} ablated", [im.astype(np.float32) / 255 for im in pics[1]])],
                f"{name} {layer}: where the artifact units are most active", folder / f"artifacts_{tag}.png")
            parts.append(render.img_link(figure.relative_to(out)))
    return "\n".join(parts)


def _share(effect: dict) -> str:
    value, ci = effect.get("removed_share"), effect.get("removed_ci95")
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def segmenter_html(study: Study, root, folder: Path, out: Path) -> tuple[str, dict]:
    """The segmenter on each dissected generator's first samples: a contact sheet, and how many
    images it found a face in (face_parts labels an image with no face all background)."""
    from ganscale.models.face_parts import contact_sheet

    rows, found = [], {}
    for name in study.dissected():
        group = root.get(f"dissect/{name}")
        if group is None or "segmenter_images" not in group:
            continue
        images, maps = group["segmenter_images"][:8], group["segmenter_maps"][:8]
        count = group.attrs.get("faces_found")
        if count is not None:
            found[name] = dict(count)
        rows.append((f"{name}" + (f": face found in {count['found']} of {count['images']}" if count else ""),
                     images.astype(np.float32) / 255, maps.astype(np.int64),
                     maps.reshape(len(maps), -1).any(1)))  # no face: all background
    if not rows or study.dissect.segmenter.name != "face_parts":
        return "", found
    real_rows, real_found = face_parts_on_real_images(study, root)
    rows, found = real_rows + rows, {**real_found, **found}
    sheet = folder / "segmenter_sheet.png"
    contact_sheet(rows, sheet)
    text = "; ".join(f"{n}: {c['found']} of {c['images']}" for n, c in found.items())
    return (f"<h3>The segmenter on real and dissected images</h3><p>Faces found ({text}); an image with no face "
            f"is labelled all background. The real datasets are shown as measured; the portraits are the colour "
            f"photographs that ship in installed packages (scikit-image's astronaut, matplotlib's "
            f"grace_hopper).</p>{render.img_link(sheet.relative_to(out), 700)}", found)


ASTRONAUT = ("pypi:scikit-image==0.26.0/skimage/data/astronaut.png",
             "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5")
REAL_CHECKED = 64


def face_parts_on_real_images(study: Study, root) -> tuple[list, dict]:
    """face_parts on the first REAL_CHECKED images of each real dataset and on two packaged colour
    portraits: contact-sheet rows and faces-found counts (the segmenter's quality on real faces)."""
    import matplotlib.cbook
    import matplotlib.image
    import torch

    from ganscale import assets, sources
    from ganscale.images import images_by_id
    from ganscale.models import registry

    segmenter = registry.build_segmenter("face_parts")
    rows, found = [], {}

    def segment(name, images):
        maps = segmenter(images).cpu().numpy()
        hits = segmenter.last_found
        found[name] = {"found": int(hits.sum()), "images": int(len(hits))}
        pictures = images.float().permute(0, 2, 3, 1).cpu().numpy()
        rows.append((f"{name}: face found in {hits.sum()} of {len(hits)}", pictures[:8], maps[:8], hits[:8]))

    for name in study.real_datasets():
        n = min(REAL_CHECKED, study.datasets[name].samples)
        segment(name, images_by_id(study, root, name, np.arange(n)))
    photos = [matplotlib.image.imread(assets.fetch(*ASTRONAUT, field="dissect.segmenter (astronaut)")),
              matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))]
    portraits = [sources.resize_square(torch.from_numpy(np.asarray(p[..., :3], np.float32)
                                                       / (255 if p.dtype == np.uint8 else 1)).permute(2, 0, 1)[None], 256)
                 for p in photos]
    segment("portraits", torch.cat(portraits))
    return rows, found


def significance_sentence(sig: dict, what: str) -> str:
    """One sentence on whether the top units' held-out improvement beats the random units'."""
    low, high = sig["ci95"]
    verdict = ("significant" if sig["significant"] else
               "NOT significant: the top units do no better than random units here")
    change = f"lower by {sig['difference']:.4g}" if sig["difference"] >= 0 else f"higher by {-sig['difference']:.4g}"
    return (f"Ablating the top units rather than random ones, {html.escape(what)}: the distance is {change} "
            f"(95% bootstrap interval {low:.4g} to {high:.4g}, one-sided p = "
            f"{sig['p_value']:.3g}, {sig['resamples']} paired resamples of the images): {verdict}.")
