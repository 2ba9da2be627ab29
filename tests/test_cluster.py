"""Running on clusters: `ray job submit` to a real head, and placement on a simulated GPU cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from conftest import toy_study

pytestmark = pytest.mark.slow  # whole studies end to end

REPO = Path(__file__).resolve().parents[1]

PLACEMENT_SCRIPT = r"""
import json, sys
import ray
from ray.cluster_utils import Cluster
from ganscale.pipeline import run_stage
from ganscale import sample
from ganscale.study import load_study

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
for _ in range(3):
    cluster.add_node(num_cpus=1, num_gpus=1)  # three worker nodes that declare one GPU each
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="WARNING")
workers = {}
result = run_stage(load_study(sys.argv[1]), "sample", on_chunk=lambda d, c, w: workers.setdefault(w["pid"], w))
print(json.dumps({"workers": list(workers.values()), "result": result["workers"],
                  "head": ray.get_runtime_context().get_node_id()}))
ray.shutdown()
cluster.shutdown()
"""


def test_one_actor_per_declared_gpu_on_a_multi_node_cluster(tmp_path):
    # device: cpu inside the actors (these GPUs are declared, not real), placement by Ray's GPU resources
    path = toy_study(tmp_path, sample={"chunk_size": 16, "batch_size": 16, "device": "auto"},
                     datasets={"real": {"kind": "toyworld", "samples": 160}})
    proc = subprocess.run([sys.executable, "-c", PLACEMENT_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    workers = report["workers"]
    assert report["result"] == 3 and len(workers) == 3  # one worker per GPU
    assert len({w["node"] for w in workers}) == 3 and report["head"] not in {w["node"] for w in workers}
    assert all(len(w["gpus"]) == 1 for w in workers)  # each holds exactly one GPU


def submit(dashboard: str, study: Path) -> subprocess.CompletedProcess:
    """`ray job submit` of jobs/run_study.py; retried while the head's job agent is still starting
    ("No available agent to submit job"), which a freshly started head answers for seconds, and on a
    loaded machine for over a minute."""
    import time

    ray_cli = str(Path(sys.executable).parent / "ray")
    deadline = time.monotonic() + 240  # the agent starts late on a loaded 2-core machine (seen: over 60 s)
    while True:
        proc = subprocess.run([ray_cli, "job", "submit", "--address", dashboard, "--working-dir", str(REPO),
                               "--", "python", "jobs/run_study.py", str(study)], capture_output=True, text=True,
                              timeout=600)
        if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(2)


def test_ray_job_submit_runs_a_study(ray_head, tmp_path):
    path = toy_study(tmp_path, sample={"chunk_size": 100, "batch_size": 100},
                     datasets={"real": {"kind": "toyworld", "samples": 200},
                               "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                                        "samples": 200}},
                     embed={"layers": {"block3": {"n_neighbors": 10}}}, layers=["block3"],
                     atlas={"grids": [10]})
    proc = submit(ray_head["dashboard"], path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "succeeded" in proc.stdout
    root = zarr.open_group(str(tmp_path / "store.zarr"), mode="r")
    assert set(root.attrs["stages"]) == {"sample", "embed", "atlas", "metrics", "report"}
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert {n: (d["kind"], d["samples"], d["reference"]) for n, d in summary["datasets"].items()} == {
        "real": ("toyworld", 200, True), "full": ("generator", 200, False)}
    # bad input: the job fails with a one-line reason and a non-zero exit
    bad = toy_study(tmp_path / "bad", layers=["nope"])
    proc = submit(ray_head["dashboard"], bad)
    assert proc.returncode != 0 and "error:" in proc.stdout + proc.stderr and "unknown layer 'nope'" in proc.stdout + proc.stderr
