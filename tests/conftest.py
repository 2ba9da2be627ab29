"""Shared fixtures: one local Ray instance per test session, moto's S3 server, toy studies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).parent
# Ray workers inherit this environment (set before ray.init): test plugins are importable there,
# and S3 clients find dummy credentials, as a real deployment finds them in its environment.
# `python` in a job entrypoint must be this environment's, as in an activated virtualenv.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(TESTS))
for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(key, value)
# The session's Ray head listens on this machine only; token authentication (on by default since
# Ray 2.60) is turned off for it so the drivers, jobs and subprocesses of the tests can all attach.
os.environ["RAY_AUTH_MODE"] = "disabled"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head():
    """One local Ray head for the whole session, started as users start one (`ray start --head`,
    with the job server), so tests can both attach drivers to it and `ray job submit` to it.

    It runs with `--block` in its own temp dir: stopping that one command stops exactly the Ray it
    started (never `ray stop`, which would stop every Ray on the machine)."""
    import tempfile
    import time

    port, dashboard = free_port(), free_port()
    ray_cli = str(Path(sys.executable).parent / "ray")
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}",
                             "--dashboard-host=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true",
                             "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not _dashboard_up(dashboard):
        if head.poll() is not None or time.time() > deadline:
            head.kill()
            raise RuntimeError(f"ray start --head did not come up (exit {head.poll()})")
        time.sleep(0.5)
    yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    import ray

    ray.shutdown()
    head.terminate()  # `ray start --block` stops the processes it started on SIGTERM
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()


def _dashboard_up(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def ray_local(ray_head):
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_head["address"], logging_level="WARNING")
    return ray


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on localhost (moto's server), with a bucket."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("ganscale-test")
    yield endpoint
    server.stop()


def toy_study(tmp_path: Path, store: str | None = None, **overrides) -> Path:
    """A small toy study file: real scenes and the full generator. `sample`, `probe`, `embed` and
    `atlas` overrides are merged into the defaults; other keys (datasets too) replace them."""
    study = {
        "name": "toy-test",
        "store": store or str(tmp_path / "store.zarr"),
        "probe": {"name": "toy_probe"},
        "layers": ["block1", "block2", "block3"],
        "datasets": {
            "real": {"kind": "toyworld", "samples": 200},
            "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 150},
        },
        "seed": 7,
        "sample": {"chunk_size": 64, "batch_size": 32},
        "embed": {},
        "atlas": {},
    }
    for key, value in overrides.items():
        if key in ("sample", "probe", "embed", "atlas"):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def toy_run(ray_local, tmp_path_factory):
    """The toy study of the pipeline tests, run once through every stage for all the modules that read it."""
    from ganscale.pipeline import run_study
    from ganscale.study import load_study

    tmp = tmp_path_factory.mktemp("pipeline")
    path = toy_study(tmp, datasets={
        "real": {"kind": "toyworld", "samples": 600},
        "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 600},
        "no_tree": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_no_tree.pt", "samples": 600}},
        layers=["block2", "block3"], sample={"chunk_size": 200, "batch_size": 100},
        embed={"layers": {"block2": {"n_neighbors": 15}, "block3": {"n_neighbors": 15}}},
        atlas={"grids": [10, 20]},
        metrics={"prdc_samples": 600, "kid_subsets": 20, "kid_subset_size": 300, "msssim_pairs": 100,
                 "images_shown": 3, "c2st": {"samples": 600, "epochs": 6, "patience": 3, "smoothgrad_samples": 10},
                 "sweep": {"against": "real", "samples": 300, "checkpoints": {
                     "step500": {"weights": "builtin:dcgan_full_step0500.pt"},
                     "step4000": {"weights": "builtin:dcgan_full.pt"}}}})
    study = load_study(path)
    results = run_study(study)
    return study, tmp, results
