"""The verdict is generated from the metrics tables: ranks, significance and the disagreement
sentence follow the numbers given."""

from ganscale.metrics.verdict import verdict, verdict_html


def _results(c2st_a: float, c2st_b: float) -> dict:
    """Metrics tables of two generators a, b against a reference r: a is closer on FID
    (significantly), b has the higher precision (significantly)."""
    def row(metric, fs, a, b, value, lo, hi, better):
        return {"metric": metric, "features": fs, "reference": "r", "a": a, "b": b, "value": value,
                "ci95": [lo, hi], "significant": better is not None, "better": better}

    return {
        "feature_sets": {"fid_pool3": {"dims": 2048}},
        "comparisons": {"reference": ["r"], "others": ["a", "b"]},
        "frechet": [{"features": "fid_pool3", "a": "r", "b": "a", "value": 20.0, "ci95": [18.0, 22.0], "n": [100, 100]},
                    {"features": "fid_pool3", "a": "r", "b": "b", "value": 30.0, "ci95": [27.0, 33.0], "n": [100, 100]}],
        "kid": [{"features": "fid_pool3", "a": "r", "b": "a", "mean": 0.01, "ci95": [0.0, 0.02]},
                {"features": "fid_pool3", "a": "r", "b": "b", "mean": 0.012, "ci95": [0.0, 0.024]}],
        "prdc": [{"features": "fid_pool3", "real": "r", "fake": g, "precision": p, "recall": 0.5, "coverage": 0.5,
                  "ci95": {"precision": [p - 0.05, p + 0.05], "recall": [0.4, 0.6], "coverage": [0.4, 0.6]}}
                 for g, p in (("a", 0.4), ("b", 0.7))],
        "c2st": {"real": "r", "classifiers": {
            "a": {"test_accuracy": c2st_a, "ci95": [c2st_a - 0.1, min(c2st_a + 0.1, 1)], "n_test": 100},
            "b": {"test_accuracy": c2st_b, "ci95": [c2st_b - 0.1, min(c2st_b + 0.1, 1)], "n_test": 100}}},
        "significance": [row("frechet", "fid_pool3", "a", "b", -10.0, -14.0, -6.0, "a"),
                         row("kid", "fid_pool3", "a", "b", -0.002, -0.01, 0.006, None),
                         row("precision", "fid_pool3", "a", "b", -0.3, -0.4, -0.2, "b"),
                         row("recall", "fid_pool3", "a", "b", 0.0, -0.1, 0.1, None),
                         row("coverage", "fid_pool3", "a", "b", 0.0, -0.1, 0.1, None)],
    }


def test_ranks_follow_the_values_and_significance_the_paired_differences():
    v = verdict(_results(0.9, 0.91), {"a": {"about": "trained on X"}},
                {("a", "b"): [{"layer": "L", "grid": 8, "cell": [1, 2], "kl_term": 0.3, "counts": {"a": 9, "b": 0},
                               "figure": "examples/L_a_vs_b.png"}]})
    entry = v["references"]["r"]
    ranks = {r["metric"]: r for r in entry["rankings"]}
    assert [o["dataset"] for o in ranks["frechet"]["order"]] == ["a", "b"] and ranks["frechet"]["best_is_significant"]
    assert [o["dataset"] for o in ranks["precision"]["order"]] == ["b", "a"] and ranks["precision"]["best_is_significant"]
    assert not ranks["kid"]["best_is_significant"] and not ranks["c2st"]["best_is_significant"]
    assert entry["disagreement"] and entry["cells"][0]["cell"] == [1, 2]
    first = entry["sentences"][0]
    assert first.startswith("The significant metrics disagree against r: FID favours a; precision favours b.")
    assert "its samples look more like real ones" in first
    assert any(s.startswith("What each dataset is: a: trained on X.") for s in entry["sentences"])
    page = verdict_html(v)
    assert "id='verdict'" in page and "examples/L_a_vs_b.png" in page and "cell (x 2, y 1)" in page


def test_c2st_ranks_by_distance_from_chance_and_tests_the_difference_of_accuracies():
    ranks = {r["metric"]: r for r in verdict(_results(0.62, 0.95))["references"]["r"]["rankings"]}
    c2st = ranks["c2st"]
    assert [o["dataset"] for o in c2st["order"]] == ["a", "b"] and c2st["best_is_significant"]  # 0.62 vs 0.95, n=100
