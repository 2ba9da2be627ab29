"""Stage 5, report: pictures, report/index.html and the machine-readable report/summary.json.

summary.json (schema "ganscale.summary/1"):

    {"schema": "ganscale.summary/1", "study": name, "config_hash": str, "ganscale_version": str,
     "store": url, "resize": str, "preprocess": str (the study's degradation of every dataset, "" if none),
     "datasets": {name: {"kind": str, "samples": int, "reference": bool,   # reference: what the metrics compare with
                         "image_size": [H, W], "probe_input": int}},      # its own pixels; the probe's input side
     "kl": [{"layer": str, "grid": int, "p": dataset, "q": dataset, "kl": float}, ...],   # KL(p || q)
     "kl_smoothing": float,
     "stages": {stage: {"seconds": float}},
     "metrics": {...},     # when the metrics stage ran: the tables of ganscale.metrics.stage (below)
     "dissect": {...}}     # when the dissect stage ran: see ganscale.dissect.stage

"metrics": {"feature_sets": {name: {"dims": int}}, "resize": str, "subset": int,
            "sizes": {dataset: {"source": [H, W], "probe": int, "fid": 299 | None}},   # what each measurement saw
            "comparisons": {"reference": [dataset], "others": [dataset], "against_reference": [[ref, other]],
                            "pairs": [[a, b]], "note": str},   # which pairs got which metrics, and why
            "uncertainty": {"resamples", "rows", "seed", "method", "significance"},   # how the intervals were made
            "frechet": [{"features", "a", "b", "value", "ci95": [lo, hi], "resamples", "interval", "n": [n_a, n_b],
                         "matched": {"n", "value", "ci95", "draws"} | {"reason"},   # at the smaller set's n
                         "infinity": {"value", "slope", "sizes", "values"} | {"reason"},   # FID-infinity
                         "reference_stats": path}],    # only rows against a metrics.reference_stats file
            "kid": [{"features", "a", "b", "mean", "std", "ci95", "resamples", "interval", "n"}],
            "noise_floor": {reference: {features: {"n", "frechet": {"value", "ci95"}, "kid": {...}}}},  # two halves
            "significance": [{"metric", "features", "reference", "a", "b", "value", "ci95", "significant", "better"}],
            "inception_score": {dataset: {"mean", "std", "splits"}},   # {} when left out, then:
            "inception_score_left_out": str,                          # the reason ("probe has no class head")
            "prdc": [{"features", "real", "fake", "precision", "recall", "density", "coverage",
                      "ci95": {key: [lo, hi]}, ...}],
            "images": {dataset: {"sharpness_mean", "sharpness_std", "histogram" [4][25], "channels",
                                 "colour_kl": {real: {channel: {"value", "ci95"}}},   # gray only for grey studies
                                 "sharpness_difference": {real: {"value", "ci95"}},
                                 "spikes": [{"channel", "bin", "low", "high", "fake_share", "real_share", "ratio"}]}},
            "memorisation": {"reference", "features", "real_to_real": {...}, "generators": {g: {"n", "values",
                             "share_below_real_1st_percentile", "median_ratio", "reading"}}},
            "ms_ssim": {dataset: {"mean", "std", "pairs", "difference": {real: {"value", "ci95"}}}},
            "c2st": {"classifiers": {name: {"train_accuracy", "validation_accuracy", "test_accuracy", "ci95", "n_test",
                                            "p_value", "epochs", "per_source": {source: {"accuracy", "n", "ci95"}}}}},
            "fid_stats": {dataset: "fid_stats/{dataset}.npz"},   # pytorch-fid's format (mu, sigma)
            "sweep": {"generator", "against", "samples", "checkpoints": [{"label", "frechet", "kid_mean", ...}]}}

"verdict": {"features", "references": {reference: {
               "rankings": [{"metric", "label", "measures", "order": [{"dataset", "rank", "value", "ci95"}],
                             "significant_pairs", "best", "best_is_significant", "sentence"}],
               "sentences": [str],      # generated from the numbers, shown at the top of index.html
               "disagreement": bool, "cells": [{"layer", "grid", "cell", "kl_term", "counts", "figure"}]}}}
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ganscale import __version__, ledger, render, schema, sources
from ganscale.images import ImageCache, featuremap_sizes, patch_box, receptive_field_size
from ganscale.models import registry
from ganscale.progress import Progress
from ganscale.study import Study, scrub_url

log = logging.getLogger("ganscale")

SUMMARY_SCHEMA = "ganscale.summary/1"


def report_location(study: Study) -> str:
    """Where the report goes: `report` beside a local store, or beside the store in its bucket."""
    if study.report:
        return study.report
    return study.store.rstrip("/").rsplit("/", 1)[0] + "/report"


def top_kl_cells(kl_cells: np.ndarray, pair: tuple[int, int], n_cells: int = 3) -> list[tuple[int, int, int, int]]:
    """The n_cells cells with the largest KL terms of the pair, each way: (p, q, iy, ix) for KL(p || q)."""
    grid = kl_cells.shape[-1]
    a, b = pair
    return [(p, q, *divmod(int(cell), grid)) for p, q in ((a, b), (b, a))
            for cell in np.argsort(-kl_cells[p, q].ravel())[:n_cells]]


def _example_cells(root, layer: str, grid: int, pair: tuple[int, int], n_cells: int = 3, per_row: int = 4):
    """The cells that most separate the pair (each way), and for each its examples of both datasets:
    rows (dataset index, iy, ix, sample ids)."""
    group = root[schema.atlas_path(layer, grid)]
    kl_cells, examples = group["kl_cells"][...], group["examples"][...]
    return [(d, iy, ix, examples[d, iy, ix][examples[d, iy, ix] >= 0][:per_row])
            for p, q, iy, ix in top_kl_cells(kl_cells, pair, n_cells) for d in (p, q)]


@dataclasses.dataclass
class Shared:
    """What several report sections need, made once: the probe, its receptive fields per layer, and
    the images of stored samples (each regenerated once for the examples, metrics pictures and viewer)."""
    probe: object
    fields: dict
    images: ImageCache


def examples_figure(study: Study, root, probe, layer: str, grid: int, pair: tuple[int, int], path: Path,
                    fields, fmap_sizes, images: ImageCache) -> Path | None:
    """Example images and receptive-field patches of the cells that most separate the pair."""
    group = root[schema.atlas_path(layer, grid)]
    counts, names = group["counts"][...], list(group.attrs["datasets"])
    a, b = pair
    rows = []
    for d, iy, ix, ids in _example_cells(root, layer, grid, pair):
        if len(ids) == 0:
            rows.append((f"cell (x {ix}, y {iy})\n{names[d]}: 0", [], []))
            continue
        pictures, boxes = _cell_images(study, root, probe, names[d], layer, ids, fields[layer], fmap_sizes[layer],
                                       images)
        rows.append((f"cell (x {ix}, y {iy})\n{names[d]}: {counts[d, iy, ix]}", pictures, boxes))
    if not rows:
        return None
    title = (f"{layer}, {grid}x{grid}: cells most over-represented in {names[a]} vs {names[b]} (top) "
             f"and the reverse (bottom); yellow box = receptive field of the sampled position")
    return render.example_panel(rows, title, path)


def _cell_images(study, root, probe, dataset, layer, ids, field, fmap_size, images_of):
    images = sources.resize_square(images_of(dataset, ids), probe.input_size)
    positions = schema.read_ids(root[schema.dataset_path(dataset)], f"layers/{layer}/position", ids)
    boxes = [patch_box(pos, fmap_size, field, probe.input_size) for pos in positions]
    return [im.permute(1, 2, 0).numpy() for im in images], boxes


# The report reads the atlas; its sections of icons, metrics and dissect, when those stages have run,
# are declared in ganscale.pipeline.STAGES (optional inputs).
NAME, ITEM, READS = "report", "", ("atlas",)


def items(study: Study) -> list[str]:
    return ["all"]


def settings(study: Study, item: str) -> dict:
    return {"config": study.config_hash(), "version": __version__}


def missing(study: Study, root, item: str) -> str:
    location = report_location(study)
    return "" if _exists(location, study.storage_options) else f"{location}/summary.json is not there"


def _metrics_section(study, root, out, shared: Shared):
    from ganscale.metrics.figures import metrics_section

    return metrics_section(study, root, out, shared.images)


def _dissect_section(study, root, out, shared: Shared):
    from ganscale.dissect.figures import dissect_section

    return dissect_section(study, root, out)


def _icons_section(study, root, out, shared: Shared):
    from ganscale.icon_figures import icon_atlas_figures

    pictures = icon_atlas_figures(study, root, out)
    if not pictures:
        return "", {}
    body = "".join(f"<figure>{render.img_link(p.relative_to(out), 900)}<figcaption>{html.escape(layer)} "
                   f"{g}x{g}</figcaption></figure>" for layer, g, p in pictures)
    return ("<h2>Activation atlas icons</h2><p>Each cell shows a feature visualisation of the cell's mean "
            "activation (direction x cosine^n objective, Fourier parameterisation, decorrelated colour), "
            "beside the density comparison of the same cells.</p>" + body,
            {"grids": sorted({g for _, g, _ in pictures}), "pictures": [str(p.relative_to(out)) for _, _, p in pictures]})


def _viewer_section(study, root, out, shared: Shared):
    from ganscale.viewer import write_viewer

    page = write_viewer(study, root, out, probe=shared.probe, images=shared.images, fields=shared.fields)
    return (f"<h2>Interactive atlas</h2><p><a href='{page.relative_to(out)}'>Open the atlas viewer</a>: choose layer, "
            "grid and pair of datasets, zoom and pan, click a cell for its counts, KL term, top labels and examples.</p>",
            {"page": str(page.relative_to(out))})


# Report sections of the later stages: name -> f(study, root, out folder, Shared) -> (html, summary entry).
# (summary.json key, section): each shows what its stage left in the store, or nothing when it has not run.
EXTRA_SECTIONS = [("viewer", _viewer_section), ("icons", _icons_section), ("metrics", _metrics_section),
                  ("dissect", _dissect_section)]


def _exists(location: str, storage_options: dict) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(location + "/summary.json", **storage_options)
    return fs.exists(path)


def run_item(study: Study, root, item: str, _) -> dict:
    t0 = time.time()
    names = list(root[schema.atlas_path(study.layers[0], study.atlas.grids[0])].attrs["datasets"])  # the atlas's order
    location = report_location(study)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        probe = registry.build_probe(study.probe, study.storage_options)
        shared = Shared(probe, {layer: receptive_field_size(probe, layer) for layer in study.layers},
                        ImageCache(study, root))  # images shared by the examples, metrics pictures and viewer
        pairs = list(itertools.combinations(range(len(names)), 2))
        bar = Progress("report", len(pairs) * len(study.layers) + len(EXTRA_SECTIONS), unit="sections")
        sections = pair_sections(study, root, out, names, pairs, shared, bar)
        extra_html, extra_summary = [], {}
        for name, section in EXTRA_SECTIONS:
            fragment, entry = section(study, root, out, shared)
            bar.advance(1, name)
            if fragment:
                extra_html.append(fragment)
                extra_summary[name] = entry
        bar.close()
        summary = {
            "schema": SUMMARY_SCHEMA, "study": study.name, "config_hash": study.config_hash(),
            "ganscale_version": __version__, "store": scrub_url(study.store), "resize": sources.RESIZE_NOTE,
            "preprocess": sources.preprocess_note(study.preprocess.grayscale, study.preprocess.size),
            "datasets": dataset_entries(study, root),
            "kl": kl_rows(study, root, names), "kl_smoothing": study.atlas.smoothing,
            "stages": {**{name: {"seconds": ledger.stage_seconds(root, name)} for name in ledger.stages(root)},
                       "report": {"seconds": round(time.time() - t0, 2)}},
            **extra_summary,
        }
        verdict_fragment = ""
        if "metrics" in extra_summary:
            from ganscale.metrics.verdict import verdict, verdict_html

            others = extra_summary["metrics"].get("comparisons", {}).get("others", [])
            cells = {(a, b): verdict_cells(study, root, names, a, b) for a, b in itertools.combinations(others, 2)}
            summary["verdict"] = verdict(extra_summary["metrics"], summary["datasets"], cells)
            verdict_fragment = verdict_html(summary["verdict"])
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "index.html").write_text(index_html(study, summary, sections, extra_html, verdict_fragment))
        publish(out, location, study.storage_options)
    log.info("report: %s/index.html", location)
    return {}


def pair_sections(study: Study, root, out: Path, names: list[str], pairs, shared: Shared, bar) -> list:
    """Per pair of datasets: the KL heatmap, the comparison atlas of each layer and grid, and the
    examples of the cells that most separate them. Returns (a, b, heatmap, [(layer, grid, path)])."""
    grids = study.atlas.grids
    for sub in ("atlas", "kl", "examples"):
        (out / sub).mkdir()
    map_sizes = featuremap_sizes(study, root, shared.probe, study.layers)
    wanted: dict[int, list] = {}
    for pair in pairs:
        for layer in study.layers:
            for d, _, _, ids in _example_cells(root, layer, grids[0], pair):
                wanted.setdefault(d, []).extend(ids.tolist())
    for d, ids in wanted.items():  # one generator call per dataset for all the examples figures
        shared.images(names[d], ids)
    sections = []
    for a, b in pairs:
        table = np.array([[root[f"{schema.atlas_path(layer, g)}/kl"][a, b] for g in grids] for layer in study.layers])
        heatmap = render.kl_heatmap(table, study.layers, grids, f"KL({names[a]} || {names[b]})",
                                    out / "kl" / f"{names[a]}_vs_{names[b]}.png")
        pictures = []
        for layer in study.layers:
            for g in grids:
                counts = root[f"{schema.atlas_path(layer, g)}/counts"][...]
                kl = root[f"{schema.atlas_path(layer, g)}/kl"][...]
                path = out / "atlas" / f"{layer}_{names[a]}_vs_{names[b]}_g{g}.png"
                render.comparison_atlas(counts[a], counts[b], names[a], names[b],
                                        f"{layer}, {g}x{g}: KL({names[a]}||{names[b]}) = {kl[a, b]:.3f}, "
                                        f"KL({names[b]}||{names[a]}) = {kl[b, a]:.3f}", path)
                pictures.append((layer, g, path.relative_to(out)))
            example = examples_figure(study, root, shared.probe, layer, grids[0], (a, b),
                                      out / "examples" / f"{layer}_{names[a]}_vs_{names[b]}.png",
                                      shared.fields, map_sizes, shared.images)
            if example:
                pictures.append((layer, "examples", example.relative_to(out)))
            bar.advance(1, f"{names[a]} vs {names[b]} {layer}")
        sections.append((names[a], names[b], heatmap.relative_to(out), pictures))
    return sections


def verdict_cells(study: Study, root, names: list[str], a: str, b: str, per_direction: int = 3) -> list[dict]:
    """The atlas cells (deepest layer, first grid) with the largest KL terms between datasets a and
    b, each way, with their counts and the examples figure that shows them."""
    layer, grid = study.layers[-1], study.atlas.grids[0]
    group = root[schema.atlas_path(layer, grid)]
    kl_cells, counts = group["kl_cells"][...], group["counts"][...]
    i, j = names.index(a), names.index(b)
    first, second = sorted((i, j))
    figure = f"examples/{layer}_{names[first]}_vs_{names[second]}.png"
    return [{"layer": layer, "grid": grid, "cell": [iy, ix], "direction": f"KL({names[p]}||{names[q]})",
             "kl_term": float(kl_cells[p, q, iy, ix]),
             "counts": {names[p]: int(counts[p, iy, ix]), names[q]: int(counts[q, iy, ix])}, "figure": figure}
            for p, q, iy, ix in top_kl_cells(kl_cells, (i, j), per_direction)]


def kl_rows(study: Study, root, names: list[str]) -> list[dict]:
    """summary.json's KL rows: per layer, grid and ordered pair."""
    rows = []
    for layer in study.layers:
        for g in study.atlas.grids:
            kl = root[f"{schema.atlas_path(layer, g)}/kl"][...]
            rows += [{"layer": layer, "grid": g, "p": names[i], "q": names[j], "kl": float(kl[i, j])}
                     for i in range(len(names)) for j in range(len(names)) if i != j]
    return rows


def dataset_entries(study: Study, root) -> dict:
    """summary.json's datasets: kind, samples, whether the metrics treat it as a reference, and the
    size of its own pixels (recorded by the sample stage) next to the probe's input side."""
    refs = study.references()
    out = {}
    for name, spec in study.datasets.items():
        attrs = root[schema.dataset_path(name)].attrs
        out[name] = {"kind": spec.kind, "samples": spec.samples, "reference": name in refs,
                     "image_size": attrs.get("image_size"), "probe_input": attrs.get("input_size")}
        if spec.about:
            out[name]["about"] = spec.about
    return out


def publish(folder: Path, location: str, storage_options: dict) -> None:
    """Copy the finished report to its location (local folder or bucket), replacing the old one."""
    if "://" in location:
        import fsspec

        fs, path = fsspec.core.url_to_fs(location, **storage_options)
        fs.put(str(folder) + "/", path, recursive=True)
        return
    target = Path(location)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)


def _preprocessed(summary: dict) -> str:
    return f"{summary['preprocess']} (the study's preprocessing, for a fair comparison); " if summary.get("preprocess") \
        else ""


def _sizes(entry: dict) -> str:
    size, probe = entry.get("image_size"), entry.get("probe_input")
    if not size:
        return ""
    return (f", {size[0]}x{size[1]} px (sharpness, colour histograms and the FID network see these pixels; "
            f"the probe sees them resized once to {probe}x{probe})")


def index_html(study: Study, summary: dict, sections, extra_html: list[str] = (), verdict: str = "") -> str:
    names = list(summary["datasets"])
    esc = html.escape
    rows = []
    for layer in study.layers:
        for g in study.atlas.grids:
            cells = "".join(
                f"<td>{next(r['kl'] for r in summary['kl'] if r['layer'] == layer and r['grid'] == g and r['p'] == p and r['q'] == q):.4f}</td>"
                for p, q in itertools.permutations(names, 2))
            rows.append(f"<tr><td>{esc(layer)}</td><td>{g}</td>{cells}</tr>")
    header = "".join(f"<th>KL({esc(p)}&#8214;{esc(q)})</th>" for p, q in itertools.permutations(names, 2))
    datasets = "".join(f"<li><b>{esc(n)}</b>: {esc(d['kind'])}{esc(', ' + d['about'] if d.get('about') else '')}, "
                       f"{d['samples']:,} samples{_sizes(d)}"
                       f"{', reference of the metrics' if d.get('reference') else ''}</li>"
                       for n, d in summary["datasets"].items())
    stage_times = ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in summary["stages"].items())
    body = []
    for a, b, heatmap, pictures in sections:
        body.append(f"<h2 id='pair-{esc(a)}-{esc(b)}'>{esc(a)} vs {esc(b)}</h2>{render.img_link(heatmap, alt='KL heatmap')}")
        for layer in study.layers:
            imgs = "".join(f"<figure>{render.img_link(p, 420)}<figcaption>{esc(layer)} "
                           f"{g if g == 'examples' else f'{g}x{g}'}</figcaption></figure>"
                           for lay, g, p in pictures if lay == layer)
            body.append(f"<h3>{esc(layer)}</h3><div class='row'>{imgs}</div>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ganscale: {esc(study.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} .row{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0}} figcaption{{font-size:12px;color:#555}}</style></head><body>
<h1>{esc(study.name)}</h1>
<p>ganscale {esc(summary['ganscale_version'])}, config {esc(summary['config_hash'])}, probe
{esc(study.probe.name)}, layers {esc(', '.join(study.layers))}. Stage times: {esc(stage_times)}.
Machine-readable: <a href="summary.json">summary.json</a>.</p>
<ul>{datasets}</ul>
{verdict}
<h2>KL divergence between datasets' cell distributions</h2>
<p>KL(p&#8214;q) of the UMAP grid-cell distributions (each cell smoothed with {summary['kl_smoothing']}
pseudo-counts). Larger: q leaves empty where p lives. Images: {esc(_preprocessed(summary))}{esc(summary['resize'])}.</p>
<table><tr><th>layer</th><th>grid</th>{header}</tr>{''.join(rows)}</table>
{''.join(body)}
{''.join(extra_html)}
</body></html>
"""
