"""Every stage reads only verified data, and the repair path survives damage to its own bookkeeping
(issue 18, item 2). Damage is made the way storage makes it: chunk files truncated or deleted, and
values changed behind ganscale's back that still decode."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from conftest import toy_study
from ganscale.pipeline import run_stage
from ganscale import schema
from ganscale.cli import app
from ganscale.errors import StoreDamage
from ganscale.study import load_study
from test_sample import all_arrays, assert_same, store_digest


def _copy_study(study_path: Path, tmp: Path, **changes) -> tuple[Path, Path]:
    """A copy of a study's store, and the same study pointing at it (with `changes` merged in)."""
    raw = yaml.safe_load(study_path.read_text())
    copy = tmp / "store.zarr"
    shutil.copytree(raw["store"], copy)
    raw["store"] = str(copy)
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value}
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, copy


@pytest.fixture(scope="module")
def sampled(ray_local, tmp_path_factory):
    """A small toy study sampled once: its study file and arrays."""
    from ganscale import sample

    tmp = tmp_path_factory.mktemp("integrity")
    path = toy_study(tmp, layers=["block2", "block3"])
    study = load_study(path)
    run_stage(study, "sample", workers=1)
    return path, all_arrays(study.store)


def test_read_rows_checks_every_chunk_it_reads(sampled, tmp_path):
    path, _ = sampled
    _, copy = _copy_study(path, tmp_path)
    group = zarr.open_group(str(copy), mode="a")["datasets/real"]
    acts = "layers/block2/activations"
    good = schema.read_rows(group, acts, 10, 150)
    np.testing.assert_array_equal(good, group[acts][10:150])
    np.testing.assert_array_equal(schema.read_ids(group, acts, np.array([199, 3, 70])), group[acts][[199, 3, 70]])
    # a value changed behind ganscale's back: it decodes, and is found where it is read
    group[acts][65, 0] = np.float32(2.5e38)
    with pytest.raises(StoreDamage, match=r"datasets/real/layers/block2/activations chunk 1: checksum mismatch"):
        schema.read_rows(group, acts, 100, 110)
    np.testing.assert_array_equal(schema.read_rows(group, acts, 0, 64), group[acts][0:64])  # chunk 0 is fine
    # a truncated chunk file: named, not "internal error"
    chunk_file = copy / "datasets/real/logits/c/2/0"
    chunk_file.write_bytes(chunk_file.read_bytes()[:7])
    with pytest.raises(StoreDamage, match=r"datasets/real/logits chunk 2: unreadable"):
        schema.read_rows(group, "logits")


def test_damage_that_decodes_stops_the_stages_downstream(sampled, tmp_path):
    """A changed activation that still decodes no longer flows into embed and atlas: the stage that
    reads it fails in one line naming the array and chunk (exit 1), writes nothing, and `run --verify`
    repairs the chunk bit-identically and finishes the study."""
    path, expected = sampled
    study_path, copy = _copy_study(path, tmp_path, embed={"layers": {"block2": {"n_neighbors": 10},
                                                                     "block3": {"n_neighbors": 10}}},
                                   atlas={"grids": [10]})
    zarr.open_group(str(copy), mode="a")["datasets/full/layers/block3/activations"][70, 3] = np.float32(2.5e38)
    before = store_digest(copy)
    result = CliRunner().invoke(app, ["run", str(study_path), "--stages", "embed,atlas"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "datasets/full/layers/block3/activations chunk 1: checksum mismatch" in lines[0]
    assert store_digest(copy) == before
    result = CliRunner().invoke(app, ["run", str(study_path), "--verify", "--stages", "sample,embed,atlas"])
    assert result.exit_code == 0, result.output
    assert_same(all_arrays(str(copy)), expected)
    # what embed wrote is verified as it is read too
    umap = zarr.open_group(str(copy), mode="r")["datasets/real/layers/block3/umap"]
    assert len(umap.attrs["chunk_checksums"]) == 4


@pytest.mark.parametrize("damage", ["truncated_done", "truncated_checksum", "deleted_done"])
def test_verify_survives_damage_to_its_own_bookkeeping(sampled, tmp_path, damage):
    """A `done` or `checksum` chunk that no longer decodes, or a `done` flag deleted: `status --verify`
    names it and exits 1, `run --verify` recomputes that chunk, and the arrays are as they were."""
    path, expected = sampled
    study_path, copy = _copy_study(path, tmp_path)
    target = {"truncated_done": "datasets/real/done/c/1", "truncated_checksum": "datasets/real/checksum/c/1/0",
              "deleted_done": "datasets/real/done/c/1"}[damage]
    if damage == "deleted_done":
        (copy / target).unlink()
        status = CliRunner().invoke(app, ["status", str(study_path)])  # noticed without --verify too
        assert status.exit_code == 1 and "1 of 4 chunks not marked done" in status.output, status.output
    else:
        (copy / target).write_bytes((copy / target).read_bytes()[:3])
    status = CliRunner().invoke(app, ["status", str(study_path), "--verify"])
    assert status.exit_code == 1, status.output
    named = {"truncated_done": "done chunk 1: unreadable flag", "truncated_checksum": "checksum chunk 1: unreadable",
             "deleted_done": "done chunk 1: flag missing"}[damage]
    assert named in status.output, status.output
    result = CliRunner().invoke(app, ["run", str(study_path), "--verify", "--stages", "sample"])
    assert result.exit_code == 0, result.output
    assert "'computed_chunks': 1" in result.output, result.output
    assert_same(all_arrays(str(copy)), expected)
    assert CliRunner().invoke(app, ["status", str(study_path), "--verify"]).exit_code == 0
