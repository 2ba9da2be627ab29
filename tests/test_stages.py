"""The stage ledger and the generic status/guard on small stores: the dissect stage's inputs, and a
stage that is asked to run before what it reads."""

import ast
from pathlib import Path

import pytest
import zarr

from conftest import toy_study
from ganscale import ledger, schema, stage
from ganscale.dissect import stage as dissect
from ganscale.errors import GanscaleError
from ganscale.pipeline import STAGES, run_study
from ganscale.study import load_study

DISSECT = {"layers": ["layer2"], "samples": 200, "chunk_size": 100, "artifact_samples": 100}


def _study(tmp_path, real=None, **dissect_settings):
    return load_study(toy_study(tmp_path, layers=["block3"], datasets={
        "real": real or {"kind": "toyworld", "samples": 200},
        "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 100},
        "other": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_no_tree.pt", "samples": 100}},
        dissect={**DISSECT, **dissect_settings}))


def test_dissect_before_sample_refuses_and_records_nothing(tmp_path):
    study = _study(tmp_path)
    with pytest.raises(GanscaleError) as refused:
        run_study(study, stages=["dissect"])
    assert str(refused.value) == "dissect: sample of dataset real is not complete (not started); run sample first"
    try:
        root = zarr.open_group(study.store, mode="r")
    except FileNotFoundError:
        return  # not even created
    assert not ledger.items(root, "dissect") and "dissect" not in root


def test_dissect_without_artifact_units_reads_nothing_from_the_store(tmp_path):
    study = _study(tmp_path, artifact_samples=0)
    assert STAGES.upstream(study, "dissect", "full") == []
    assert STAGES.state(study, None, "dissect", "full") == ("not started", "")


def test_a_changed_reference_dataset_makes_dissect_stale(tmp_path):
    study = _study(tmp_path)
    root = schema.open_store(study.store)
    ledger.record(root, "dissect", "full", STAGES.inputs(study, root, "dissect", "full"), 1.0)
    assert STAGES.state(study, root, "dissect", "full") == ("missing", "the store has no group dissect/full")
    root.create_group("dissect/full")
    assert STAGES.state(study, root, "dissect", "full") == ("complete", "")

    changed = _study(tmp_path, real={"kind": "toyworld", "samples": 200, "exclude": ["tree"]})
    assert STAGES.fingerprint(changed, None, "dissect", "full") != STAGES.fingerprint(study, None, "dissect", "full")
    assert STAGES.state(changed, root, "dissect", "full") == ("stale", "sample/real changed")
    # another generator is not the reference: changing it leaves this dissection alone
    other = _study(tmp_path)
    other.datasets["other"] = other.datasets["other"].model_copy(update={"samples": 50})
    assert STAGES.fingerprint(other, None, "dissect", "full") == STAGES.fingerprint(study, None, "dissect", "full")


def test_the_ledger_keeps_one_record_per_item_and_sums_seconds(tmp_path):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    ledger.record(root, "embed", "a", {"layer": "a", "sample/x": "1"}, 2.0)
    ledger.record(root, "embed", "b", {"layer": "b", "sample/x": "1"}, 3.5)
    ledger.record(root, "embed", "a", {"layer": "a", "sample/x": "2"}, 1.0)
    assert sorted(ledger.items(root, "embed")) == ["a", "b"] and ledger.stage_seconds(root, "embed") == 4.5
    assert ledger.entry(root, "embed", "a")["inputs"] == {"layer": "a", "sample/x": "2"}
    assert ledger.changed({"layer": "a", "p": {"k": 1, "m": 2}}, {"layer": "a", "p": {"k": 1, "m": 3}, "q": 0}) \
        == ["p.m", "q"]
    other_handle = zarr.open_group(str(tmp_path / "s.zarr"), mode="a")  # another run's view of the store
    ledger.record(other_handle, "atlas", "a", {"layer": "a"}, 1.0)
    ledger.record(root, "embed", "c", {"layer": "c"}, 1.0)  # root was opened before atlas/a was recorded
    assert sorted(ledger.items(other_handle, "embed")) == ["a", "b", "c"] and ledger.items(root, "atlas")
    fresh = zarr.open_group(str(tmp_path / "s.zarr"), mode="a")
    fresh.attrs["stages"] = {**fresh.attrs["stages"], "old": {"layers": {}, "seconds": 3}}  # a pre-ledger record
    assert ledger.items(root, "old") == {} and ledger.stages(root) == ["embed", "atlas"]
    assert not [f for f in (tmp_path / "s.zarr.leases").rglob("*") if f.is_file()]  # the ledger lease is let go


PACKAGE = Path(stage.__file__).parent
STAGE_MODULES = {m.__name__ for m in STAGES.modules.values()}
STAGE_NAMES = set(STAGES)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _importing(path, modules):
    return sorted({s for m in _imports(path) for s in modules if m == s or m.startswith(s + ".")})


def test_no_stage_imports_another_and_only_the_pipeline_lists_them():
    """Stages sit side by side: no stage module imports another (nor does the stage shape, which
    finds them through the one list), and no module below them imports any. The stages are listed
    in one place, ganscale.pipeline.STAGES: no other module imports two of them or holds three or
    more stage names in one list, tuple, set or dict."""
    assert STAGE_MODULES == {"ganscale.sample", "ganscale.embed", "ganscale.atlas", "ganscale.icons",
                             "ganscale.metrics.stage", "ganscale.dissect.stage", "ganscale.report"}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        imported = _importing(path, STAGE_MODULES - {name})
        if name in ("ganscale.pipeline", "ganscale.cli"):  # the list itself, and the command line (lazily)
            continue
        assert not imported, f"{name} imports the stage(s) {imported}"
        assert "importlib" not in set(_imports(path)) or name == "ganscale.models.registry", \
            f"{name} imports modules by name"  # (the registry imports plugins named in a study, on purpose)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
                values = node.keys if isinstance(node, ast.Dict) else node.elts
                named = {v.value for v in values if isinstance(v, ast.Constant) and v.value in STAGE_NAMES}
                assert len(named) < 3, f"{name}:{node.lineno} lists stages {sorted(named)}: list them in ganscale.pipeline"


def test_the_guard_catches_a_stage_that_imports_another(tmp_path):
    """The check above is not vacuous: a stage module importing another is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ganscale import embed\nfrom ganscale.metrics import stage as metrics\n")
    assert _importing(bad, STAGE_MODULES) == ["ganscale.embed", "ganscale.metrics.stage"]


def test_every_stage_has_the_shape():
    for name in STAGES:
        m = STAGES[name]
        assert m.NAME == name and isinstance(m.ITEM, str) and isinstance(m.READS, tuple)
        assert all(callable(getattr(m, f)) for f in ("items", "settings", "run_item")), name
        assert not hasattr(m, "run"), f"{name} has its own driver"
        assert getattr(m, "LEASE", "item") in ("item", "own")


def test_dissect_is_a_stage_module_above_pure_ones():
    """The dissect stage is ganscale.dissect.stage, with the stage shape. Importing any other module of
    ganscale.dissect (which runs the package's __init__ too) loads no stage, the viewer, Ray or the
    ledger, not even indirectly (checked in a fresh interpreter)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    module = STAGES["dissect"]
    assert module.__name__ == "ganscale.dissect.stage" and module.NAME == "dissect" and module.ITEM == "generator"
    assert all(callable(getattr(module, f)) for f in ("items", "settings", "reads", "run_item"))
    package = Path(stage.__file__).parent
    pure = sorted(f"ganscale.dissect.{p.stem}" for p in (package / "dissect").glob("*.py")
                  if p.stem not in ("__init__", "stage"))
    assert {"ganscale.dissect.plan", "ganscale.dissect.artifacts", "ganscale.dissect.worker",
            "ganscale.dissect.stats", "ganscale.dissect.intervene", "ganscale.dissect.figures"} <= set(pure)
    forbidden = sorted(STAGE_MODULES | {"ganscale.viewer", "ganscale.ledger", "ray"})
    code = (f"import importlib, json, sys\nfor m in {pure!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules\n"
            f"                        if any(m == s or m.startswith(s + '.') for s in {forbidden!r}))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=package.parent).stdout
    assert json.loads(loaded.strip().splitlines()[-1]) == []


def test_a_new_stage_is_one_module_and_one_line(ray_local, tmp_path):
    """The README's example stage, as written there: one module, and one line in the list of stages
    (here a copy of pipeline.STAGES with it added) make a stage the driver runs, skips when complete,
    shows in the status and makes stale when its input changes."""
    import re
    import types

    from ganscale.pipeline import run_stage
    from ganscale.stage import Stages

    readme = (PACKAGE.parent / "README.md").read_text()
    code = re.search(r"```python\n(# ganscale/histograms\.py.*?)```", readme, re.S).group(1)
    module = types.ModuleType("ganscale.histograms")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    stages = Stages(*STAGES.modules.values(), module, optional=STAGES.optional)  # the one line

    study = load_study(toy_study(tmp_path, layers=["block3"], datasets={"real": {"kind": "toyworld", "samples": 100}}))
    with pytest.raises(GanscaleError, match="histograms: sample of dataset real is not complete"):
        stages.run(study, "histograms")
    run_stage(study, "sample", workers=1)
    assert stages.run(study, "histograms") == {"done": ["block3"], "skipped": []}
    root = zarr.open_group(study.store, mode="r")
    counts = root["datasets/real/layers/block3/histogram"][:]
    assert counts.sum() == 100 * 128  # every activation of every sample, once
    assert stages.run(study, "histograms") == {"done": [], "skipped": ["block3"]}
    assert [r["state"] for r in stages.status(study, root) if r["stage"] == "histograms"] == ["complete"]
    fewer = load_study(toy_study(tmp_path, layers=["block3"], datasets={"real": {"kind": "toyworld", "samples": 50}}))
    assert stages.state(fewer, root, "histograms", "block3") == ("stale", "sample/real changed")
