"""Shared fixtures: one local Ray instance per test session, moto's S3 server, toy studies."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).parent
# Ray workers inherit this environment (set before ray.init): test plugins are importable there,
# and S3 clients find dummy credentials, as a real deployment finds them in its environment.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(TESTS))
for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(key, value)
os.environ.setdefault("RAY_ACCEPT_SPECIAL_ENV_VARS", "1")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


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
    """A small toy study file: real scenes and the full generator. `sample` and `probe` overrides
    are merged into the defaults; other keys (datasets too) replace them."""
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
    }
    for key, value in overrides.items():
        if key in ("sample", "probe"):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path
