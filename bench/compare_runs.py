"""Compare two finished runs of a study: every array of the two stores, every group's attributes, and
summary.json, and name what differs (a refactor must leave the results equal).

    python bench/compare_runs.py RUN_A RUN_B [--json out.json]

RUN is the folder `ganscale demo --out` wrote (RUN/demo.zarr and RUN/report/summary.json), or a store
path whose report sits beside it. What is expected to differ between two runs is left out and
listed: timings ("seconds", "finished"), the store's path, and ledger fingerprints (they change when
what a stage records as its inputs changes; the inputs themselves are compared).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import zarr

VOLATILE = {"seconds", "finished", "store", "report", "page"}


def _paths(run: Path) -> tuple[Path, Path]:
    run = Path(run)
    if run.suffix == ".zarr":
        return run, run.parent / "report" / "summary.json"
    return next(run.glob("*.zarr")), run / "report" / "summary.json"


def _strip(value, under: str = ""):
    """`value` without the volatile keys (and without fingerprints, whose inputs are compared instead)."""
    if isinstance(value, dict):
        return {k: _strip(v, k) for k, v in value.items() if k not in VOLATILE and k != "fingerprint"}
    if isinstance(value, list):
        return [_strip(v, under) for v in value]
    return value


def store_contents(store: Path) -> tuple[dict[str, str], dict[str, dict]]:
    """{array path: sha256 of its values and dtype}, {node path: attributes} of a whole store."""
    arrays, attrs = {}, {}

    def walk(group, prefix: str) -> None:
        attrs[prefix or "/"] = _strip(dict(group.attrs))
        for name, node in group.members():
            path = f"{prefix}/{name}" if prefix else name
            if isinstance(node, zarr.Group):
                walk(node, path)
            else:
                values = np.asarray(node[...])
                arrays[path] = hashlib.sha256(str(values.dtype).encode() + values.tobytes()).hexdigest()[:16]
                attrs[path] = _strip(dict(node.attrs))

    walk(zarr.open_group(str(store), mode="r"), "")
    return arrays, attrs


def _differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{where}/{k}: only in {'B' if k not in a else 'A'}")
            else:
                out += _differences(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and (a == b or (np.isnan(a) and np.isnan(b))):
        return []
    return [] if a == b else [f"{where}: {str(a)[:80]} != {str(b)[:80]}"]


def compare(run_a: Path, run_b: Path) -> dict:
    (store_a, summary_a), (store_b, summary_b) = _paths(run_a), _paths(run_b)
    arrays_a, attrs_a = store_contents(store_a)
    arrays_b, attrs_b = store_contents(store_b)
    return {
        "arrays": len(arrays_a),
        "arrays_differing": sorted(p for p in set(arrays_a) | set(arrays_b) if arrays_a.get(p) != arrays_b.get(p)),
        "attributes_differing": _differences(attrs_a, attrs_b),
        "summary_differing": _differences(_strip(json.loads(summary_a.read_text())),
                                          _strip(json.loads(summary_b.read_text()))),
        "left_out": sorted(VOLATILE | {"fingerprint"}),
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    result = compare(Path(args[0]), Path(args[1]))
    print(f"{result['arrays']} arrays compared; differing arrays: {len(result['arrays_differing'])}")
    for key in ("arrays_differing", "attributes_differing", "summary_differing"):
        for line in result[key]:
            print(f"  {key}: {line}")
    print(f"left out: {', '.join(result['left_out'])}")
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
