"""Two runs on one store at once share the work: leases per chunk (sample) and per stage, locally
and on S3; a dataset resampled after a study change replaces its old group only once complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import toy_study
from ganscale.pipeline import run_stage
from ganscale import lease, sample, schema, sources
from ganscale.study import load_study

pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`ganscale ...` in its own process, with its own local Ray: two of them are two users' runs."""
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([str(Path(sys.executable).parent / "ganscale"), *args], env={**environment, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _computed(output: str) -> int:
    found = re.search(r"'computed_chunks': (\d+)", output)
    return int(found.group(1)) if found else 0  # "{'skipped': 'complete'}": it found every chunk done


def test_two_concurrent_runs_compute_each_chunk_once_and_each_stage_once(tmp_path):
    path = toy_study(tmp_path, layers=["block3"], sample={"chunk_size": 16, "batch_size": 16, "workers": 1},
                     datasets={"slow": {"kind": "generator", "name": "plugins:slow_dcgan", "samples": 480,
                                               "options": {"delay": 0.8}}})
    study = load_study(path)
    first = _cli("run", str(path), "--stages", "sample,embed", "-v")
    deadline = time.time() + 120
    while not Path(f"{study.store}.leases/sample/slow").exists():  # the first run has taken its first chunk
        assert first.poll() is None and time.time() < deadline, first.communicate()[0][-2000:]
        time.sleep(0.2)
    second = _cli("run", str(path), "--stages", "sample,embed", "-v")
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    print(*outputs, sep="\n----\n")
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    computed = [_computed(o) for o in outputs]
    assert sum(computed) == 30 and min(computed) > 0, computed  # 30 chunks, each computed by one run
    assert sum("'fitted': ['block3']" in o for o in outputs) == 1, outputs  # the other found it done
    root = zarr.open_group(study.store, mode="r")
    group = root["datasets/slow"]
    assert schema.done_chunks(group).all()
    assert schema.verify_chunks(group, sample.layout_for(study, "slow")) == []
    np.testing.assert_array_equal(group["seed"][:], sources.dataset_seeds(study.seed, "slow", 480))
    assert root.attrs["stages"]["sample"]["slow"]["fingerprint"] and root.attrs["stages"]["embed"]["block3"]
    assert not list(Path(f"{study.store}.leases").rglob("*.*")) and not [
        f for f in Path(f"{study.store}.leases").rglob("*") if f.is_file()], "leases left behind"


def test_leases_are_exclusive_expire_and_are_taken_over(tmp_path, s3_endpoint):
    for url, options in [(str(tmp_path / "local.zarr"), {}),
                         ("s3://ganscale-test/leases.zarr", {"client_kwargs": {"endpoint_url": s3_endpoint}})]:
        root = schema.open_store(url, options)
        alice, bob = lease.Leases(root, "alice", ttl=1.0), lease.Leases(root, "bob", ttl=1.0)
        assert alice.acquire("sample/real/0") is None
        assert bob.acquire("sample/real/0") == "alice"  # held: bob computes something else
        assert alice.acquire("sample/real/0") is None  # its holder may take it again
        alice._held.clear()  # alice dies: nothing renews her lease any more
        time.sleep(1.1)
        assert bob.acquire("sample/real/0") is None, url  # expired: taken over
        assert alice.acquire("sample/real/0") == "bob"
        bob.release("sample/real/0")
        assert alice.holder("sample/real/0") is None
        assert alice.acquire("sample/real/0") is None
        alice.release("sample/real/0")


def test_a_changed_dataset_is_resampled_aside_and_swapped_in_only_when_complete(ray_local, tmp_path):
    path = toy_study(tmp_path, sample={"chunk_size": 50, "batch_size": 25})
    run_stage(load_study(path), "sample", workers=1)
    store = load_study(path).store
    old = zarr.open_group(store, mode="r")["datasets/full/layers/block3/activations"][:]
    changed = toy_study(tmp_path, sample={"chunk_size": 50, "batch_size": 25}, datasets={
        "real": {"kind": "toyworld", "samples": 200},
        "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_no_tree.pt", "samples": 150}})
    study = load_study(changed)
    stopped_after = []

    def stop_after_two(dataset, chunk, info):
        stopped_after.append(chunk)
        if len(stopped_after) == 2:
            raise KeyboardInterrupt  # the driver is stopped mid-run

    with pytest.raises(KeyboardInterrupt):
        run_stage(study, "sample", workers=1, on_chunk=stop_after_two)
    root = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(root["datasets/full/layers/block3/activations"][:], old)  # old group intact
    assert root["staging/full"].attrs["fingerprint"] == sample.fingerprint(study, "full")
    rows = {r["dataset"]: r for r in sample.status(study)}
    assert rows["full"]["state"].startswith("resampling aside") and rows["full"]["done"] >= 2
    result = run_stage(study, "sample", workers=1)
    assert result["computed_chunks"] == 3 - rows["full"]["done"]  # resumed aside, then swapped in
    root = zarr.open_group(store, mode="r")
    assert "full" not in root.get("staging", {}) and root["datasets/full"].attrs["fingerprint"] == \
        sample.fingerprint(study, "full")
    assert not np.array_equal(root["datasets/full/layers/block3/activations"][:], old)
    assert schema.verify_chunks(root["datasets/full"], sample.layout_for(study, "full")) == []
