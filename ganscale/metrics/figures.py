"""The metrics section of the report: tables from metrics/ in the store, and pictures of images
regenerated from their seeds (nearest neighbours, colour spikes, sharpest images, interpolation
strips, SmoothGrad maps of the C2ST classifier, checkpoint-sweep curves)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from ganscale import render, schema, sources
from ganscale.images import measured
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
    return render.img_link(path.relative_to(out))


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
    parts.append(uncertainty_html(results))
    images = results["images"]
    left_out = results.get("inception_score_left_out")
    scores = results["inception_score"]
    ms = results["ms_ssim"]
    parts.append("<h3>Inception Score (probe logits), MS-SSIM diversity, sharpness</h3>"
                 + (f"<p>Inception Score left out: {html.escape(left_out)}.</p>" if left_out else "")
                 + render.html_table(
        ["dataset", "IS mean", "IS std", "MS-SSIM mean (higher: less diverse)", "pairs",
         "MS-SSIM minus reference [95% CI]", "sharpness mean", "std", "sharpness minus reference [95% CI]"],
        [[n, scores[n]["mean"] if n in scores else "left out", scores[n]["std"] if n in scores else "",
          ms[n]["mean"], ms[n]["pairs"], _against(ms[n].get("difference", {})), images[n]["sharpness_mean"],
          images[n]["sharpness_std"], _against(images[n].get("sharpness_difference", {}))] for n in study.datasets]))
    channels = next(iter(images.values())).get("channels", list(CHANNELS))
    kl_rows = [[g, r] + [with_ci(images[g]["colour_kl"][r][ch]) for ch in channels]
               for g in study.datasets for r in images[g]["colour_kl"]]
    what = "intensity histograms" if channels == ["gray"] else "colour histograms"
    parts.append(f"<h3>{what.capitalize()} (25 bins): KL(compared || reference) [95% CI]</h3>" + render.html_table(
        ["compared", "reference", *channels], kl_rows))
    parts.append(_img(colour_histogram_figure(study, images, folder / "colour_histograms.png"), out))

    shown = study.metrics.images_shown
    from ganscale.images import ImageCache

    images_of = images_of or ImageCache(study, root)

    def pictures(dataset, ids):
        return _hwc(images_of(dataset, ids))

    as_measured = ("as measured: " + sources.preprocess_note(study.preprocess.grayscale, study.preprocess.size)
                   if study.preprocess.grayscale or study.preprocess.size else "as measured")
    parts.append(samples_html(study, images_of, folder, out, as_measured))
    if results.get("memorisation"):
        parts.append(memorisation_html(results["memorisation"], group, pictures, folder, out))
    for g in study.datasets:
        spikes = images[g]["spikes"][:group[f"{g}/spikes"].shape[0] if f"{g}/spikes" in group else 0]
        if spikes:
            rows = [(f"{s['channel']} {s['low']:.2f}-{s['high']:.2f}\n x{s['ratio']:.1f}", pictures(g, ids))
                    for s, ids in zip(spikes, group[f"{g}/spikes"][...])]
            against = images[g]["spikes_against"]
            path = render.image_rows(rows, f"{g}: intensity bins where {g} has at least twice {against}'s share of "
                                     "pixels (bin range, ratio of shares), and the images with most pixels in them",
                                     folder / f"spikes_{g}.png")
            parts.append(f"<h4>{'Intensity' if channels == ['gray'] else 'Colour'} spikes of {html.escape(g)}</h4>"
                         f"<p>Bins holding at least twice the share of {html.escape(g)}'s pixels that they hold of "
                         f"{html.escape(against)}'s (over-represented in {html.escape(g)}, not absent from "
                         f"{html.escape(against)}).</p>" + render.html_table(
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
            rows = [(label, _hwc(measured(study, torch.as_tensor(np.stack(pics)).permute(0, 3, 1, 2))))
                    for label, pics in interpolation_rows(generator, [tuple(map(int, p)) for p in seeds])]
            path = render.image_rows(rows, f"{g}: latent interpolation (slerp) between pairs of seeds, {as_measured}",
                                     folder / f"interpolation_{g}.png")
            parts.append(f"<h4>Latent interpolation: {html.escape(g)}</h4>" + _img(path, out))
    if "c2st" in results:
        parts.append(c2st_html(study, root, group, results["c2st"], folder, out, pictures))
    if "sweep" in results:
        parts.append(sweep_html(results["sweep"], folder, out))
    return "\n".join(parts), results


def with_ci(entry, digits: int = 4) -> str:
    """"value [lo, hi]" of an entry with a ci95 (a plain number stays as it is)."""
    if not isinstance(entry, dict):
        return f"{entry:.{digits}g}" if isinstance(entry, float) else str(entry)
    lo, hi = entry["ci95"]
    if lo is None or hi is None:  # NaN in JSON: too few samples for an interval
        return f"{entry['value']:.{digits}g} [no interval: too few samples]"
    text = f"{entry['value']:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"
    corrected = entry.get("bias_corrected")
    if corrected is not None and not lo <= entry["value"] <= hi:
        text += f" (bias-corrected {corrected:.{digits}g})"
    return text


def _against(differences: dict) -> str:
    return "; ".join(f"{with_ci(d, 3)} vs {r}" for r, d in differences.items()) or "-"


def uncertainty_html(results: dict) -> str:
    """The Fréchet, KID and precision/recall/density/coverage tables with their intervals, the
    noise floors and the paired differences."""
    note = results.get("uncertainty", {})
    parts = [f"<h3>Fréchet distance and KID, with 95% intervals</h3><p>Intervals: {html.escape(note.get('method', ''))}"
             f" ({note.get('resamples', '?')} resamples, seed {note.get('seed', '?')}). The Fréchet distance grows as "
             "the sample size shrinks: compare rows at the matched n (the larger set cut to the smaller one's size, "
             "mean of 20 draws). FID-infinity extrapolates to infinitely many samples (Chong and Forsyth 2020).</p>"]
    if results.get("fid_resize"):
        parts.append(f"<p><b>FID network (fid_pool3) resize:</b> {html.escape(results['fid_resize'])}. Reference "
                     "statistics are comparable only when made with the same resize (pytorch-fid's torch bilinear, "
                     "the TF FID graph's TensorFlow 1 bilinear, clean-fid's antialiased 'clean' mode differ by "
                     "points of FID).</p>")
    files = {f["a"]: f["reference_stats"] for f in results["frechet"] if "reference_stats" in f}
    if files:
        parts.append("<p>Reference statistics (metrics.reference_stats): " + ", ".join(
            f"{html.escape(n)} = {html.escape(p)}" for n, p in files.items()) + "; no KID (it needs features), "
            "and the interval resamples the compared dataset only.</p>")
    if results.get("fid_stats"):
        parts.append("<p>FID statistics of each dataset (pytorch-fid/clean-fid .npz: mu, sigma): " + ", ".join(
            f"<a href='{html.escape(p)}'>{html.escape(n)}</a>" for n, p in results["fid_stats"].items()) + ".</p>")
    kid = {(k["features"], k["a"], k["b"]): k for k in results["kid"]}
    rows = []
    for f in results["frechet"]:
        k = kid.get((f["features"], f["a"], f["b"]))
        matched = f.get("matched")
        infinity = f.get("infinity", {})
        rows.append([f["features"], f["a"] + (" (statistics file)" if "reference_stats" in f else ""), f["b"],
                     "/".join("-" if n is None else str(n) for n in f.get("n", [])), with_ci(f),
                     "-" if not matched else matched.get("reason") or f"{with_ci(matched)} at n={matched['n']}",
                     (infinity.get("reason") or f"{infinity['value']:.4g}") if infinity else "-",
                     "-" if k is None else with_ci({"value": k["mean"], "ci95": k["ci95"]}),
                     "-" if k is None else k["std"]])
    parts.append(render.html_table(["features", "a", "b", "n (a/b)", "Fréchet [95% CI]", "Fréchet at matched n",
                                    "FID-infinity", "KID [95% CI]", "KID std over subsets"], rows))
    floors = results.get("noise_floor", {})
    if floors:
        parts.append("<h4>Noise floor: two random halves of each reference</h4><p>What two samples of one "
                     "distribution score at half the reference's size: a difference smaller than this is not "
                     "a difference.</p>" + render.html_table(
            ["reference", "features", "n per half", "Fréchet [95% CI]", "KID [95% CI]"],
            [[r, fs, f.get("n", "-"), f.get("reason") or with_ci(f["frechet"]), "" if "reason" in f else with_ci(f["kid"])]
             for r, per_set in floors.items() for fs, f in per_set.items()]))
    parts.append("<h3>Precision, recall, density, coverage [95% CI]</h3>" + render.html_table(
        ["features", "reference", "compared", "precision", "recall", "density", "coverage"],
        [[r["features"], r["real"], r["fake"]] + [with_ci({"value": r[key], "ci95": r["ci95"][key]}) if "ci95" in r
                                                 else r[key] for key in ("precision", "recall", "density", "coverage")]
         for r in results["prdc"]]))
    significance = results.get("significance", [])
    if significance:
        parts.append("<h3>Which differences are significant</h3><p>" + html.escape(note.get("significance", ""))
                     + "</p>" + render.html_table(
            ["metric", "features", "reference", "a", "b", "a minus b [95% CI]", "significant", "better"],
            [[d["metric"], d["features"], d["reference"], d["a"], d["b"], with_ci(d),
              "yes" if d["significant"] else "no", d["better"] or "neither"] for d in significance]))
    return "\n".join(parts)


SAMPLES_SHOWN = 8


def samples_html(study: Study, images_of, folder: Path, out: Path, as_measured: str) -> str:
    """Random samples of every dataset exactly as the metrics measured them and, for generators,
    their raw output (the same seeds) beside them."""
    rows = []
    for name, spec in study.datasets.items():
        n = spec.samples
        ids = np.sort(np.random.default_rng([study.seed, 7]).choice(n, min(SAMPLES_SHOWN, n), replace=False))
        if spec.kind != "generator" or not (study.preprocess.grayscale or study.preprocess.size):
            rows.append((f"{name}\nas measured", _hwc(images_of(name, ids))))
            continue
        seeds = schema.read_ids(images_of.root[schema.dataset_path(name)], "seed", ids)
        raw, _ = images_of.generator(name).generate(seeds.tolist())  # the sample stage's call for these seeds
        raw = raw.float().clamp(0, 1).cpu()
        rows.append((f"{name}\nas measured", _hwc(measured(study, raw))))
        rows.append((f"{name}\nraw {raw.shape[-2]}x{raw.shape[-1]}", _hwc(raw)))
    path = render.image_rows(rows, f"Random samples per dataset, {as_measured}; generators also as they come out "
                             "of the network", folder / "samples.png")
    return "<h3>Samples as measured</h3>" + _img(path, out)


def memorisation_html(memo: dict, group, pictures, folder: Path, out: Path) -> str:
    """Nearest real neighbours of generated samples, and generated-to-real distances set against
    real-to-real ones."""
    ref, fs = memo["reference"], memo["features"]
    edges = np.asarray(memo["bin_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    series = {f"{ref} to nearest other {ref} (n={memo['real_to_real']['n']})":
              (centres, np.asarray(memo["real_to_real"]["histogram"]) / memo["real_to_real"]["n"])}
    for g, entry in memo["generators"].items():
        series[f"{g} to nearest {ref} (n={entry['n']})"] = (centres, np.asarray(entry["histogram"]) / entry["n"])
    plot = render.distributions(series, f"Memorisation check: distance to the nearest {ref} image ({fs} features)",
                                folder / "nearest_real_distances.png", xlabel="distance to the nearest image",
                                ylabel="share of samples")
    parts = [f"<h3>Nearest real neighbour (memorisation check)</h3><p>Each generated sample's distance to its "
             f"nearest {html.escape(ref)} image ({html.escape(fs)} features), against each {html.escape(ref)} "
             "image's distance to its nearest other one. Copies of training images would sit far to the left of "
             f"the {html.escape(ref)} curve.</p>", _img(plot, out)]
    parts.append(render.html_table(
        ["dataset", "n", "median distance", "median / real-to-real median", "share below real 1st percentile",
         "reading"],
        [[g, e["n"], e["values"][3], e["median_ratio"], e["share_below_real_1st_percentile"], e["reading"]]
         for g, e in memo["generators"].items()]))
    for g in memo["generators"]:
        if f"{g}/nearest_real" not in group:
            continue
        table = group[f"{g}/nearest_real"][...]
        rows = [(f"{g} #{row[0]}", pictures(g, row[:1]) + pictures(ref, row[1:])) for row in table]
        path = render.image_rows(rows, f"{g} samples (left) and their nearest {ref} images, nearest first",
                                 folder / f"nearest_real_{g}.png")
        parts.append(_img(path, out))
    return "\n".join(parts)


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
    """One panel per channel that carries information (gray alone for a grey study)."""
    panels = []
    channels = next(iter(images.values())).get("channels", list(CHANNELS))
    for i, ch in [(CHANNELS.index(ch), ch) for ch in channels]:
        series = {}
        for name in study.datasets:
            counts = np.asarray(images[name]["histogram"][i], dtype=np.float64)
            centres = (np.arange(len(counts)) + 0.5) / len(counts)
            series[name] = (centres, counts / counts.sum())
        panels.append((ch, series))
    what = "intensity histograms" if channels == ["gray"] else "colour histograms"
    return render.line_panels(panels, f"{what} (share of pixels per bin)", path, xlabel="intensity")


def c2st_html(study, root, group, tables: dict, folder: Path, out: Path, pictures) -> str:
    parts = ["<h3>Classifier two-sample test (C2ST)</h3>",
             f"<p>A DCGAN-discriminator classifier trained the reference ({html.escape(str(tables.get('real')))}) "
             "against the other datasets (train/validation/test "
             "50/25/25, early stopping on validation accuracy). Under the null hypothesis (same distribution) "
             "the test accuracy is about N(1/2, 1/(4 n_test)); p is the one-sided p-value.</p>"]
    def test(value, entry):
        return with_ci({"value": value, "ci95": entry["ci95"]}, 3) if "ci95" in entry else value

    parts.append(render.html_table(["classifier", "train", "validation", "test [95% Wilson CI]", "n test", "p-value",
                                    "epochs"],
                        [[name, t["train_accuracy"], t["validation_accuracy"], test(t["test_accuracy"], t), t["n_test"],
                          t["p_value"], t["epochs"]] for name, t in tables["classifiers"].items()]))
    parts.append(render.html_table(["classifier", "source", "test accuracy [95% Wilson CI]", "n"],
                        [[name, src, test(v["accuracy"], v), v["n"]] for name, t in tables["classifiers"].items()
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
        structure = map_structure([m for maps in overlays for m in maps])
        if rows and structure < SMOOTHGRAD_MIN_STRUCTURE:
            parts.append(f"<p>SmoothGrad maps left out: neighbouring pixels of the maps correlate at r = "
                         f"{structure:.2f} (below {SMOOTHGRAD_MIN_STRUCTURE}), which is pixel noise, not a region the "
                         "classifier attends to. At this image size and test-set size the classifier's gradients "
                         "say nothing a reader can see.</p>")
        elif rows:
            path = render.image_rows(rows, f"SmoothGrad ({study.metrics.c2st.smoothgrad_samples} noise samples, "
                                     f"sigma {study.metrics.c2st.smoothgrad_sigma}) of the pooled classifier on "
                                     "correctly classified test images", folder / "c2st_smoothgrad.png", overlays)
            parts.append(_img(path, out))
    return "\n".join(parts)


SMOOTHGRAD_MIN_STRUCTURE = 0.3


def map_structure(maps: list[np.ndarray]) -> float:
    """The mean correlation of horizontally and vertically neighbouring pixels over sensitivity
    maps: about 0 for pixel noise, near 1 for maps made of regions."""
    values = []
    for m in maps:
        m = np.asarray(m, np.float64)
        for a, b in ((m[:, :-1], m[:, 1:]), (m[:-1], m[1:])):
            if a.std() > 0 and b.std() > 0:
                values.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    return float(np.mean(values)) if values else 0.0


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



