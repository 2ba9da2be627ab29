"""The verdict at the top of the report (and summary.json["verdict"]): for each reference, every
compared dataset's rank on every metric with its interval, which rankings are significant, and
plain sentences, all generated from the metrics results (never written by hand).

A ranking is significant when the paired bootstrap difference of the two datasets against the
reference excludes 0 (metrics.stage.paired_differences); for the C2ST, whose classifiers are trained
and tested separately per generator, when Newcombe's interval of the difference of the two test
accuracies excludes 0 (both on the same side of 1/2).
"""

from __future__ import annotations

import html

# metric key -> (label, lower is better, what it measures)
METRICS = {
    "frechet": ("FID", True, "distance between the feature distributions as a whole"),
    "kid": ("KID", True, "distance between the feature distributions, unbiased at small n"),
    "precision": ("precision", False, "share of generated images that fall among real ones (fidelity)"),
    "recall": ("recall", False, "share of real images reached by generated ones (variety)"),
    "coverage": ("coverage", False, "share of real images with a generated image close by (variety)"),
    "c2st": ("C2ST", True, "how well a classifier tells them from real images (|accuracy - 0.5|)"),
    "colour_kl": ("intensity KL", True, "difference of the pixel-intensity histograms"),
}


# What a paired bootstrap difference ranks (the C2ST is compared otherwise); density has no better
# side (1 is a match, above 1 denser than the reference), so it is not ranked.
LOWER_IS_BETTER = {key: lower for key, (_, lower, _) in METRICS.items() if key != "c2st"}


def _label(metric: str, fs: str, standard: str) -> str:
    name = METRICS[metric][0]
    if metric == "frechet" and fs != "fid_pool3":
        name = "Fréchet"
    return name if fs in (standard, "gray", "") else f"{name} ({fs})"


def _entries(results: dict, reference: str, others: list[str], standard: str) -> list[dict]:
    """Per metric: {metric, features, values: {dataset: (value, ci95)}} against one reference."""
    out = []
    frechet = {(r["a"], r["b"]): r for r in results["frechet"] if r["features"] == standard}
    kid = {(r["a"], r["b"]): r for r in results["kid"] if r["features"] == standard}
    prdc = {r["fake"]: r for r in results["prdc"] if r["features"] == standard and r["real"] == reference}
    out.append({"metric": "frechet", "features": standard,
                "values": {g: (frechet[reference, g]["value"], frechet[reference, g]["ci95"]) for g in others
                           if (reference, g) in frechet}})
    out.append({"metric": "kid", "features": standard,
                "values": {g: (kid[reference, g]["mean"], kid[reference, g]["ci95"]) for g in others
                           if (reference, g) in kid}})
    for key in ("precision", "recall", "coverage"):
        out.append({"metric": key, "features": standard,
                    "values": {g: (prdc[g][key], prdc[g]["ci95"][key]) for g in others if g in prdc}})
    c2st = results.get("c2st")
    if c2st and c2st.get("real") == reference:
        values = {}
        for g in others:
            table = c2st["classifiers"].get(g)
            if table and "ci95" in table:
                values[g] = (table["test_accuracy"], table["ci95"], table["n_test"])
        out.append({"metric": "c2st", "features": "", "values": values})
    images = results.get("images", {})
    channel = "gray" if all("gray" in images.get(g, {}).get("colour_kl", {}).get(reference, {}) for g in others) else None
    if channel:
        out.append({"metric": "colour_kl", "features": channel,
                    "values": {g: (images[g]["colour_kl"][reference][channel]["value"],
                                   images[g]["colour_kl"][reference][channel]["ci95"]) for g in others}})
    return [e for e in out if len(e["values"]) >= 1]


def _score(metric: str, value: float) -> float:
    """Smaller is better."""
    if metric == "c2st":
        return abs(value - 0.5)
    return value if METRICS[metric][1] else -value


def _significant(results: dict, metric: str, fs: str, reference: str, a: str, b: str,
                 values: dict) -> bool:
    if metric == "c2st":
        from ganscale.metrics.uncertainty import proportion_difference

        (acc_a, _, n_a), (acc_b, _, n_b) = values[a], values[b]
        if (acc_a - 0.5) * (acc_b - 0.5) < 0:
            return False
        lo, hi = proportion_difference(round(acc_a * n_a), n_a, round(acc_b * n_b), n_b)
        return lo > 0 or hi < 0
    for d in results.get("significance", []):
        if d["metric"] == metric and d["features"] == fs and d["reference"] == reference and {d["a"], d["b"]} == {a, b}:
            return d["significant"]
    return False


def _fmt(value: float, ci) -> str:
    return f"{value:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


def _bias_sentence(results: dict, ref: str, standard: str) -> str | None:
    """Said when the Fréchet intervals lie below their values: the sample-size bias dominates."""
    rows = [r for r in results["frechet"] if r["features"] == standard and r["a"] == ref and "ci95" in r]
    below = [r for r in rows if r["ci95"][1] < r["value"]]
    if not below:
        return None
    shifts = ", ".join(f"{r['b']} {r['value']:.3g} to {r['bias_corrected']:.3g}" for r in below
                       if "bias_corrected" in r)
    return (f"At these sample sizes the Fréchet distances carry a large small-sample bias: their intervals, for the "
            f"large-sample value, lie below the values, around the bias-corrected values"
            + (f" ({shifts})" if shifts else "") + ". Compare the datasets by the paired differences, not by the "
            "absolute numbers.")


def verdict(results: dict, datasets: dict | None = None, cells: dict | None = None) -> dict:
    """The verdict of the metrics `results` (ganscale.metrics.stage). `datasets`: summary.json's
    datasets (their `about`, when given); `cells`: {(a, b): [atlas cells with the largest KL terms
    between a and b, each {layer, grid, cell, kl_term, counts, figure}]} for the pairs of compared
    datasets, linked where metrics disagree."""
    compare = results.get("comparisons", {})
    refs, others = compare.get("reference", []), compare.get("others", [])
    standard = "fid_pool3" if "fid_pool3" in results.get("feature_sets", {}) else next(iter(results["feature_sets"]))
    out = {"features": standard, "references": {}}
    for ref in refs:
        rankings, favoured = [], {}
        for entry in _entries(results, ref, others, standard):
            metric, fs, values = entry["metric"], entry["features"], entry["values"]
            order = sorted(values, key=lambda g: _score(metric, values[g][0]))
            significant_pairs = [[a, b] for i, a in enumerate(order) for b in order[i + 1:]
                                 if _significant(results, metric, fs, ref, a, b, values)]
            best = order[0]
            best_is_significant = len(order) > 1 and all([best, b] in significant_pairs for b in order[1:])
            label = _label(metric, fs, standard)
            comparator = " < " if METRICS[metric][1] or metric == "c2st" else " > "
            ranked = comparator.join(f"{g} {_fmt(*values[g][:2])}" for g in order)
            if len(order) > 1:
                favoured.setdefault(best, []).append((label, best_is_significant))
                tail = ("significant" if best_is_significant else
                        "not significant: the interval of the paired difference includes 0" if metric != "c2st"
                        else "not significant: the interval of the difference of accuracies includes 0")
                sentence = f"{label}: {ranked} ({tail})."
            else:
                sentence = f"{label}: {ranked}."
            rankings.append({"metric": metric, "label": label, "features": fs, "measures": METRICS[metric][2],
                             "order": [{"dataset": g, "rank": i + 1, "value": values[g][0], "ci95": list(values[g][1])}
                                       for i, g in enumerate(order)],
                             "significant_pairs": significant_pairs, "best": best if len(order) > 1 else None,
                             "best_is_significant": best_is_significant, "sentence": sentence})
        sentences = _summary_sentences(results, ref, others, favoured, standard, datasets or {})
        links = []
        if len(favoured) > 1 and cells:
            leaders = list(favoured)[:2]
            key = tuple(leaders) if tuple(leaders) in cells else tuple(reversed(leaders))
            links = cells.get(key, [])
        out["references"][ref] = {"rankings": rankings, "sentences": sentences, "disagreement": len(favoured) > 1,
                                  "cells": links}
    return out


def _summary_sentences(results: dict, ref: str, others: list[str], favoured: dict, standard: str,
                       datasets: dict) -> list[str]:
    sentences = []
    strong = {leader: [m for m, sig in metrics if sig] for leader, metrics in favoured.items()}
    strong = {leader: metrics for leader, metrics in strong.items() if metrics}
    weak = {leader: [m for m, sig in metrics if not sig] for leader, metrics in favoured.items()}
    weak = {leader: metrics for leader, metrics in weak.items() if metrics}

    def listing(groups: dict) -> str:
        return "; ".join(f"{', '.join(metrics)} favour{'s' if len(metrics) == 1 else ''} {leader}"
                         for leader, metrics in groups.items())

    if len(strong) > 1:
        sentences.append(f"The significant metrics disagree against {ref}: {listing(strong)}. "
                         + _reading(strong) + " The atlas cells where they differ most are linked below.")
    elif strong:
        (leader, metrics), = strong.items()
        sentences.append(f"Against {ref}, {leader} is significantly closer on {', '.join(metrics)}.")
    elif favoured:
        sentences.append(f"Against {ref}, no ranking is significant at these sample sizes.")
    if weak:
        sentences.append(f"Not significant at these sample sizes: {listing(weak)}."
                         + (" The atlas cells where they differ most are linked below." if len(favoured) > 1
                            and len(strong) <= 1 else ""))
    bias = _bias_sentence(results, ref, standard)
    if bias:
        sentences.append(bias)
    floor = results.get("noise_floor", {}).get(ref, {}).get(standard)
    frechet = {r["b"]: r for r in results["frechet"] if r["features"] == standard and r["a"] == ref}
    if floor and "frechet" in floor:
        f = floor["frechet"]
        above = [g for g in others if g in frechet and frechet[g]["ci95"][0] > f["ci95"][1]]
        sentences.append(f"Noise floor: two random halves of {ref} ({floor['n']} images each) are "
                         f"{_fmt(f['value'], f['ci95'])} apart on {_label('frechet', standard, standard)}; "
                         + (f"{', '.join(above)} lie{'s' if len(above) == 1 else ''} above it." if above else
                            "no compared dataset lies clearly above it.")
                         + " The distance grows as n shrinks, so the floor at n/2 is an upper bound on the noise.")
    matched = [f"{g} {_fmt(r['matched']['value'], r['matched']['ci95'])} at n={r['matched']['n']}"
               for g, r in frechet.items() if r.get("matched") and "value" in r["matched"]]
    if matched:
        sizes = ", ".join(f"{g} {frechet[g]['n'][1]}" for g in frechet)
        sentences.append(f"Sample sizes differ ({ref} {next(iter(frechet.values()))['n'][0]}, {sizes}): "
                         f"at matched n the distances are {'; '.join(matched)}.")
    about = [f"{g}: {datasets[g]['about']}" for g in [ref, *others] if datasets.get(g, {}).get("about")]
    if about:
        sentences.append("What each dataset is: " + "; ".join(about) + f". The comparison measures how close "
                         f"each training set and its model come to {ref}, not the architectures alone.")
    return sentences


def _reading(favoured: dict) -> str:
    """What a disagreement between fidelity, variety and whole-distribution metrics means
    (`favoured`: {dataset: [metric labels that rank it first]})."""
    kinds = {}
    for leader, metrics in favoured.items():
        for label in metrics:
            base = label.split(" (")[0]
            kind = ("fidelity" if base in ("precision", "density") else "variety" if base in ("recall", "coverage")
                    else "separability" if base == "C2ST" else "pixels" if base == "intensity KL" else "distribution")
            kinds.setdefault(leader, set()).add(kind)
    words = {"fidelity": "its samples look more like real ones", "variety": "it reaches more of the real variety",
             "distribution": "its feature distribution as a whole is closer",
             "separability": "a classifier separates it less well from real images",
             "pixels": "its intensity histogram is closer"}
    return " ".join(f"For {leader}: {', '.join(words[k] for k in sorted(ks))}." for leader, ks in kinds.items())


def verdict_html(v: dict) -> str:
    """The verdict as the first section of index.html."""
    esc = html.escape
    parts = ["<section id='verdict'><h2>Verdict</h2><p style='color:#555'>Generated from the metrics below; "
             "95% intervals in brackets. Ranks: best first.</p>"]
    for ref, entry in v.get("references", {}).items():
        parts.append(f"<h3>Against {esc(ref)}</h3><ul>" + "".join(f"<li>{esc(s)}</li>" for s in entry["sentences"])
                     + "</ul>")
        rows = "".join(
            f"<tr><td style='text-align:left'>{esc(r['label'])}</td><td style='text-align:left'>{esc(r['measures'])}</td>"
            + "".join(f"<td>{o['rank']}. {esc(o['dataset'])} {o['value']:.3g} [{o['ci95'][0]:.3g}, {o['ci95'][1]:.3g}]</td>"
                      for o in r["order"])
            + f"<td>{'yes' if r['best_is_significant'] else 'no'}</td></tr>" for r in entry["rankings"])
        width = max((len(r["order"]) for r in entry["rankings"]), default=0)
        parts.append(f"<table><tr><th>metric</th><th>measures</th>{''.join(f'<th>rank {i + 1}</th>' for i in range(width))}"
                     f"<th>first place significant</th></tr>{rows}</table>")
        if entry.get("cells"):
            items = "".join(
                f"<li>{esc(c['layer'])} {c['grid']}x{c['grid']}, cell (x {c['cell'][1]}, y {c['cell'][0]}): "
                f"KL term {c['kl_term']:.3g}, counts {esc(', '.join(f'{k} {n}' for k, n in c['counts'].items()))}"
                f" (<a href='{esc(c['figure'])}'>example images</a>)</li>" for c in entry["cells"])
            parts.append(f"<p>Where they differ most (largest KL terms between the two in the atlas):</p><ul>{items}</ul>")
    parts.append("</section>")
    return "".join(parts)
