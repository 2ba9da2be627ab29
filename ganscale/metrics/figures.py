"""The metrics section of the report: tables from metrics/ in the store, and pictures of images
regenerated from their seeds (nearest neighbours, colour spikes, sharpest images, interpolation
strips, SmoothGrad maps of the C2ST classifier, checkpoint-sweep curves)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from ganscale import render
from ganscale.metrics.images import CHANNELS
from ganscale.models.base import latents_from_seeds
from ganscale.study import Study

INTERPOLATION_STEPS = 8


def _hwc(images: torch.Tensor) -> list[np.ndarray]:
    return [x.permute(1, 2, 0).float().cpu().numpy() for x in images]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latent rows a and b at fractions t (the usual path for Gaussian latents)."""
    omega = torch.arccos(torch.clamp((a / a.norm()) @ (b / b.norm()), -1, 1))
    if omega.abs() < 1e-6:
        return torch.lerp(a[None], b[None], t[:, None])
    return (torch.sin((1 - t) * omega)[:, None] * a + torch.sin(t * omega)[:, None] * b) / torch.sin(omega)


def interpolation_rows(generator, seed_pairs: list[tuple[int, int]], steps: int = INTERPOLATION_STEPS):
    rows = []
    t = torch.linspace(0, 1, steps)
    for a, b in seed_pairs:
        z = latents_from_seeds([a, b], generator.z_dim)
        rows.append((f"{a % 10000}->{b % 10000}", _hwc(generator.from_latents(slerp(z[0], z[1], t)))))
    return rows


def _img(path: Path, out: Path) -> str:
    return f'<img src="{html.escape(str(path.relative_to(out)))}" style="max-width:100%">'


def metrics_section(study: Study, root, out: Path, images_of=None) -> tuple[str, dict]:
    """HTML for the report and the `metrics` entry of summary.json (empty when not computed).
    `images_of`: the report's ImageCache, shared with its other sections."""
    group = root.get("metrics")
    if group is None:
        return "", {}
    results = dict(group.attrs["results"])
    folder = out / "metrics"
    folder.mkdir(exist_ok=True)
    parts = ["<h2>Metrics</h2>",
             f"<p>Feature sets: {', '.join(results['feature_sets'])} (pooled:LAYER = the probe's featuremap averaged "
             f"over space; fid_pool3 = the FID Inception network, the standard FID). KID, precision/recall and "
             f"density/coverage use a random subset of {results['subset']} samples per dataset. "
             f"Images: {html.escape(results['resize'])}</p>"]
    parts.append(measurement_html(study, results))
    results = {**results, **fid_stats_files(study, group, out)}
    parts.append(frechet_html(results))
    parts.append("<h3>Precision, recall (k=%d), density, coverage (k=%d)</h3>" % (
        study.metrics.precision_k, study.metrics.density_k) + render.html_table(
        ["features", "reference", "compared", "precision", "recall", "density", "coverage"],
        [[r["features"], r["real"], r["fake"], r["precision"], r["recall"], r["density"], r["coverage"]]
         for r in results["prdc"]]))
    images = results["images"]
    left_out = results.get("inception_score_left_out")
    scores = results["inception_score"]
    parts.append("<h3>Inception Score (probe logits), MS-SSIM diversity, sharpness</h3>"
                 + (f"<p>Inception Score left out: {html.escape(left_out)}.</p>" if left_out else "")
                 + render.html_table(
        ["dataset", "IS mean", "IS std", "MS-SSIM mean (higher: less diverse)", "pairs", "sharpness mean", "std"],
        [[n, scores[n]["mean"] if n in scores else "left out", scores[n]["std"] if n in scores else "",
          results["ms_ssim"][n]["mean"], results["ms_ssim"][n]["pairs"], images[n]["sharpness_mean"],
          images[n]["sharpness_std"]] for n in study.datasets]))
    kl_rows = [[g, r] + [images[g]["colour_kl"][r][ch] for ch in CHANNELS]
               for g in study.datasets for r in images[g]["colour_kl"]]
    parts.append("<h3>Colour histograms (25 bins): KL(compared || reference)</h3>" + render.html_table(
        ["compared", "reference", *CHANNELS], kl_rows))
    parts.append(_img(colour_histogram_figure(study, images, folder / "colour_histograms.png"), out))

    shown = study.metrics.images_shown
    from ganscale.images import ImageCache

    images_of = images_of or ImageCache(study, root)

    def pictures(dataset, ids):
        return _hwc(images_of(dataset, ids))

    for g in study.datasets:
        spikes = images[g]["spikes"][:group[f"{g}/spikes"].shape[0] if f"{g}/spikes" in group else 0]
        if spikes:
            rows = [(f"{s['channel']} {s['low']:.2f}-{s['high']:.2f}\n x{s['ratio']:.1f}", pictures(g, ids))
                    for s, ids in zip(spikes, group[f"{g}/spikes"][...])]
            path = render.image_rows(rows, f"{g}: colour spikes absent from {images[g]['spikes_against']} "
                                     "(bin range, ratio of shares) and the images with most pixels in them",
                                     folder / f"spikes_{g}.png")
            parts.append(f"<h4>Colour spikes of {html.escape(g)}</h4>" + render.html_table(
                ["channel", "bin", "range", f"share {g}", f"share {images[g]['spikes_against']}", "ratio"],
                [[s["channel"], s["bin"], f"{s['low']:.2f}-{s['high']:.2f}", s["fake_share"], s["real_share"],
                  s["ratio"]] for s in images[g]["spikes"]]) + _img(path, out))
    rows = [(n, pictures(n, group[f"{n}/sharpest"][...])) for n in study.datasets]
    parts.append("<h3>Sharpest images</h3>" + _img(render.image_rows(rows, "sharpest images per dataset",
                                                                     folder / "sharpest.png"), out))
    for n in study.datasets:
        table = group[f"{n}/neighbours"][...]
        rows = [(f"#{q}", pictures(n, row)) for q, row in zip(table[:, 0], table)]
        path = render.image_rows(rows, f"{n}: random samples (left) and their nearest neighbours in the same set "
                                 f"({next(iter(results['feature_sets']))} features)", folder / f"neighbours_{n}.png")
        parts.append(f"<h4>Nearest neighbours: {html.escape(n)}</h4>" + _img(path, out))
    for g in [n for n, d in study.datasets.items() if d.kind == "generator"]:
        generator = images_of.generator(g)
        if hasattr(generator, "from_latents") and hasattr(generator, "z_dim"):
            seeds = np.random.default_rng(study.seed).integers(0, 2**31, size=(min(shown, 4), 2))
            path = render.image_rows(interpolation_rows(generator, [tuple(map(int, p)) for p in seeds]),
                                     f"{g}: latent interpolation (slerp) between pairs of seeds",
                                     folder / f"interpolation_{g}.png")
            parts.append(f"<h4>Latent interpolation: {html.escape(g)}</h4>" + _img(path, out))
    if "c2st" in results:
        parts.append(c2st_html(study, root, group, results["c2st"], folder, out, pictures))
    if "sweep" in results:
        parts.append(sweep_html(results["sweep"], folder, out))
    return "\n".join(parts), results


def frechet_html(results: dict) -> str:
    """The Fréchet distance and KID table, the FID network's resize next to it, and the reference
    statistics files the FID rows of `metrics.reference_stats` were measured against."""
    kid = {(k["features"], k["a"], k["b"]): k for k in results["kid"]}
    rows = [[f["features"], f["a"] + (" (statistics file)" if "reference_stats" in f else ""), f["b"], f["value"],
             kid.get((f["features"], f["a"], f["b"]), {}).get("mean", "-"),
             kid.get((f["features"], f["a"], f["b"]), {}).get("std", "-")] for f in results["frechet"]]
    notes = ""
    if results.get("fid_resize"):
        notes += (f"<p><b>FID network (fid_pool3) resize:</b> {html.escape(results['fid_resize'])}. Reference "
                  "statistics are comparable only when made with the same resize (pytorch-fid's torch bilinear, "
                  "the TF FID graph's TensorFlow 1 bilinear, clean-fid's antialiased 'clean' mode differ by "
                  "points of FID).</p>")
    files = {f["a"]: f["reference_stats"] for f in results["frechet"] if "reference_stats" in f}
    if files:
        notes += "<p>Reference statistics (metrics.reference_stats): " + ", ".join(
            f"{html.escape(n)} = {html.escape(p)}" for n, p in files.items()) + "; no KID (it needs features).</p>"
    if results.get("fid_stats"):
        notes += "<p>FID statistics of each dataset (pytorch-fid/clean-fid .npz: mu, sigma): " + ", ".join(
            f"<a href='{html.escape(p)}'>{html.escape(n)}</a>" for n, p in results["fid_stats"].items()) + ".</p>"
    return "<h3>Fréchet distance and KID</h3>" + notes + render.html_table(
        ["features", "a", "b", "Fréchet distance", "KID mean", "KID std"], rows)


def fid_stats_files(study: Study, group, out: Path) -> dict:
    """fid_stats/{dataset}.npz (pytorch-fid's format: mu, sigma of the fid_pool3 features) for every
    dataset the metrics stage stored them for; summary.json's metrics.fid_stats lists them."""
    from ganscale.metrics.refstats import write_stats

    written = {}
    for name in study.datasets:
        if f"{name}/fid_mu" in group:
            (out / "fid_stats").mkdir(exist_ok=True)
            path = write_stats(out / "fid_stats" / f"{name}.npz", group[f"{name}/fid_mu"][...],
                               group[f"{name}/fid_sigma"][...])
            written[name] = str(path.relative_to(out))
    return {"fid_stats": written} if written else {}


def measurement_html(study: Study, results: dict) -> str:
    """Which datasets are the reference, and what size each network and statistic saw of each source."""
    parts = []
    compare = results.get("comparisons")
    if compare:
        parts.append(f"<p>Compared pairs: {html.escape(compare['note'])}.</p>")
    sizes = results.get("sizes")
    if sizes:
        def side(hw):
            return "?" if not hw else f"{hw[0]}x{hw[1]}"

        rows = [[n, side(s["source"]), f"{s['probe']}x{s['probe']} (from {side(s['source'])})",
                 f"299x299 (from {side(s['source'])})" if s.get("fid") else "-"]
                for n, s in sizes.items()]
        parts.append("<h3>What each measurement saw</h3>" + render.html_table(
            ["dataset", "own pixels: sharpness, colour histograms", "probe input (crop + antialiased bilinear, once)",
             "FID network input (bilinear, no antialiasing, once)"], rows))
    return "\n".join(parts)


def colour_histogram_figure(study: Study, images: dict, path: Path) -> Path:
    panels = []
    for i, ch in enumerate(CHANNELS):
        series = {}
        for name in study.datasets:
            counts = np.asarray(images[name]["histogram"][i], dtype=np.float64)
            centres = (np.arange(len(counts)) + 0.5) / len(counts)
            series[name] = (centres, counts / counts.sum())
        panels.append((ch, series))
    return render.line_panels(panels, "colour histograms (share of pixels per bin)", path, xlabel="intensity")


def c2st_html(study, root, group, tables: dict, folder: Path, out: Path, pictures) -> str:
    parts = ["<h3>Classifier two-sample test (C2ST)</h3>",
             f"<p>A DCGAN-discriminator classifier trained the reference ({html.escape(str(tables.get('real')))}) "
             "against the other datasets (train/validation/test "
             "50/25/25, early stopping on validation accuracy). Under the null hypothesis (same distribution) "
             "the test accuracy is about N(1/2, 1/(4 n_test)); p is the one-sided p-value.</p>"]
    parts.append(render.html_table(["classifier", "train", "validation", "test", "n test", "p-value", "epochs"],
                        [[name, t["train_accuracy"], t["validation_accuracy"], t["test_accuracy"], t["n_test"],
                          t["p_value"], t["epochs"]] for name, t in tables["classifiers"].items()]))
    parts.append(render.html_table(["classifier", "source", "test accuracy", "n"],
                        [[name, src, v["accuracy"], v["n"]] for name, t in tables["classifiers"].items()
                         for src, v in t["per_source"].items()]))
    if "c2st" in group:
        rows, overlays = [], []
        for source in group["c2st"]:
            ids = group[f"c2st/{source}/ids"][...]
            maps = group[f"c2st/{source}/smoothgrad"][...]
            if len(ids) == 0:
                continue
            rows.append((source, pictures(source, ids)))
            overlays.append([m / max(float(m.max()), 1e-12) for m in maps])
        if rows:
            path = render.image_rows(rows, f"SmoothGrad ({study.metrics.c2st.smoothgrad_samples} noise samples, "
                                     f"sigma {study.metrics.c2st.smoothgrad_sigma}) of the pooled classifier on "
                                     "correctly classified test images", folder / "c2st_smoothgrad.png", overlays)
            parts.append(_img(path, out))
    return "\n".join(parts)


def sweep_html(sweep: dict, folder: Path, out: Path) -> str:
    rows = sweep["checkpoints"]
    x = np.arange(len(rows))
    keys = [("frechet", "Fréchet distance"), ("kid_mean", "KID"), ("ms_ssim", "MS-SSIM"),
            ("precision", "precision"), ("recall", "recall"), ("coverage", "coverage")]
    panels = [(title, {sweep["generator"]: (x, np.array([r[k] for r in rows]))}) for k, title in keys]
    path = render.line_panels(panels, f"checkpoint sweep against {sweep['against']} "
                              f"(x: {', '.join(r['label'] for r in rows)})", folder / "sweep.png",
                              xlabel="checkpoint")
    table = render.html_table(["checkpoint", "Fréchet", "KID", "precision", "recall", "density", "coverage", "IS", "MS-SSIM"],
                   [[r["label"], r["frechet"], r["kid_mean"], r["precision"], r["recall"], r["density"],
                     r["coverage"], "left out" if r["is_mean"] is None else r["is_mean"], r["ms_ssim"]]
                    for r in rows])
    return f"<h3>Checkpoint sweep ({sweep['samples']} samples each)</h3>" + table + _img(path, out)



