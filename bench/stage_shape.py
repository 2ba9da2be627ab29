"""Line counts of every stage module and its longest function (issue 19's before/after table).

    python bench/stage_shape.py [repo root] [--json out.json]
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

STAGE_FILES = ["ganscale/sample.py", "ganscale/embed.py", "ganscale/atlas.py", "ganscale/icons.py",
               "ganscale/metrics/stage.py", "ganscale/dissect/stage.py", "ganscale/report.py",
               "ganscale/stage.py", "ganscale/pipeline.py", "ganscale/stages.py"]


def shape(path: Path) -> dict:
    text = path.read_text()
    tree = ast.parse(text)
    functions = [(f"{cls + '.' if cls else ''}{node.name}", node.end_lineno - node.lineno + 1)
                 for cls, node in _functions(tree)]
    name, length = max(functions, key=lambda f: f[1]) if functions else ("", 0)
    return {"lines": len(text.splitlines()), "longest": name, "longest_lines": length, "functions": len(functions)}


def _functions(tree, cls: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield cls, node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, node.name)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = Path(args[0] if args else ".")
    rows = {f: shape(root / f) for f in STAGE_FILES if (root / f).exists()}
    for f, r in rows.items():
        print(f"{f:28s} {r['lines']:5d} lines  longest {r['longest']} ({r['longest_lines']} lines)")
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
