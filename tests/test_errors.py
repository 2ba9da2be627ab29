"""Stores that cannot be opened or written, storage that fails mid-run, and a read-only store: one
line each, exit 2 for bad input and 1 for the environment, and a finished store needs no writes."""

from __future__ import annotations

import functools
import re
import http.server
import threading

import pytest
from typer.testing import CliRunner

from conftest import free_port, toy_study
from ganscale.pipeline import STAGES, run_stage
from ganscale import sample
from ganscale.cli import app
from ganscale.errors import RERUN, EnvironmentFailure
from ganscale.pipeline import run_study
from ganscale.study import load_study


def _run(path, *args):
    result = CliRunner().invoke(app, ["run", str(path), "--stages", "sample", *args])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    return result.exit_code, errors, result.output


@pytest.mark.parametrize("case", ["endpoint_down", "no_bucket", "no_credentials", "under_a_file", "unwritable",
                                  "unknown_protocol"])
def test_a_store_that_cannot_be_opened_fails_in_one_line(case, ray_local, s3_endpoint, tmp_path, monkeypatch):
    s3 = {"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True}
    (tmp_path / "a_file").write_text("not a folder")
    store, options, code, says = {
        "endpoint_down": ("s3://ganscale-test/x.zarr", {**s3, "client_kwargs": {
            "endpoint_url": f"http://127.0.0.1:{free_port()}"}, "config_kwargs": {"retries": {"max_attempts": 1}}},
                          1, "the storage failed: EndpointConnectionError"),
        "no_bucket": ("s3://no-such-bucket/x.zarr", s3, 2, "the bucket does not exist"),
        "no_credentials": ("s3://ganscale-test/x.zarr", s3, 1, "no usable S3 credentials"),
        "under_a_file": (str(tmp_path / "a_file" / "x.zarr"), {}, 2, "a file is in the way"),
        "unwritable": ("/proc/ganscale.zarr", {}, 1, "the storage failed"),
        "unknown_protocol": ("ftp2://host/x.zarr", {}, 2, "unknown storage protocol"),
    }[case]
    if case == "no_credentials":
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    path = toy_study(tmp_path, store=store, storage_options=options)
    exit_code, errors, output = _run(path)
    assert exit_code == code and len(errors) == 1, output
    assert errors[0].startswith(f"error: store: {store}: ") and says in errors[0] and errors[0].endswith(RERUN)


def test_storage_gone_mid_run_is_an_environment_failure_in_one_line(ray_local, tmp_path):
    """The S3 endpoint stops while workers write: exit 1 (not 2: the input was fine), one line."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    options = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("going-away")
    slow = {"kind": "generator", "name": "plugins:slow_dcgan", "options": {"delay": 0.3}, "samples": 640}
    path = toy_study(tmp_path, store="s3://going-away/x.zarr", storage_options=options, datasets={"slow": slow},
                     sample={"chunk_size": 32, "batch_size": 32, "workers": 1})
    stopped = []

    def stop_the_endpoint(dataset, chunk, info):
        if not stopped:
            server.stop()
            stopped.append(chunk)

    with pytest.raises(EnvironmentFailure) as failure:
        run_stage(load_study(path), "sample", on_chunk=stop_the_endpoint)
    assert stopped and "\n" not in str(failure.value)
    assert "failed on a worker" in str(failure.value) or "store: s3://going-away/x.zarr" in str(failure.value)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_complete_store_reruns_read_only(toy_run):
    """Served over plain HTTP, which cannot be written, the finished toy store reruns as a no-op
    (all but the report, which states the store's address and so counts the new URL as a change)."""
    study, tmp, _ = toy_run
    handler = functools.partial(_Quiet, directory=str(tmp))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = study.store.rstrip("/").rsplit("/", 1)[-1]
        read_only = study.model_copy(update={"store": f"http://127.0.0.1:{server.server_address[1]}/{name}"})
        again = run_study(read_only, stages=["sample", "embed", "atlas", "icons", "metrics", "dissect"])
    finally:
        server.shutdown()
    assert again == {name: {"skipped": "not in this study"} if name in ("icons", "dissect") else
                     {"done": [], "skipped": STAGES[name].items(read_only)} for name in again}


@pytest.mark.parametrize("plugin", ["raises_while_building", "raises_while_generating"])
def test_a_plugin_s_own_failure_is_bad_input_naming_the_dataset(plugin, ray_local, tmp_path):
    path = toy_study(tmp_path, datasets={"mine": {"kind": "generator", "name": f"plugins:{plugin}", "samples": 64}})
    exit_code, errors, output = _run(path)
    assert exit_code == 2 and len(errors) == 1, output
    assert errors[0].startswith(f"error: datasets.mine.name: plugin 'plugins:{plugin}' failed while ")
    assert "RuntimeError: the plugin's own bug" in errors[0] and "on a worker" not in errors[0]
    assert not (tmp_path / "store.zarr").exists()  # refused before the first write: no store was made


@pytest.mark.slow
def test_wrong_probe_weights_print_one_line_not_ray_s_traceback(tmp_path):
    """The probe is built in a worker's method, not its constructor: Ray prints a failed
    constructor's whole traceback (and retries it), a failed method only returns its error."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = toy_study(tmp_path, probe={"weights": "builtin:dcgan_full.pt"})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([str(Path(sys.executable).parent / "ganscale"), "run", str(path), "--stages", "sample"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: probe.weights: weights do not fit")
    assert "Traceback" not in proc.stderr + proc.stdout, (proc.stderr + proc.stdout)[-3000:]


# ---- workers that die: one line, exit 1, naming the worker; killed for memory: not retried ---------


def test_a_sample_worker_that_dies_is_one_line_exit_1_naming_the_worker(ray_local, tmp_path):
    """The plugin's worker process exits (os._exit) on its first chunk, again after each restart."""
    path = toy_study(tmp_path, datasets={"mine": {"kind": "generator", "name": "plugins:dies_while_generating",
                                                  "samples": 64}}, sample={"workers": 1})
    exit_code, errors, output = _run(path)
    assert exit_code == 1 and len(errors) == 1, output
    assert re.match(r"error: sample: chunk [01] of dataset mine: worker \(pid \d+, node [0-9a-f.:]+\) died for good "
                    r"\(ActorDiedError\); " + re.escape(RERUN) + "$", errors[0]), errors[0]
    assert not (tmp_path / "store.zarr" / "datasets" / "mine").exists()  # sampled aside, in staging/


def _oom_error():
    import ray

    return ray.exceptions.OutOfMemoryError(
        "Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.5, ID: 3f2a) "
        "where the task (task ID: ab, name=ChunkSampler.run_chunk, pid=1234, memory used=20.1GB) was running "
        "was 22.9GB / 24.0GB (0.95), which exceeds the memory usage threshold of 0.95. Ray killed this worker "
        "(ID: cd) because it was the most recently scheduled task; ...")


def _actor_killed_for_memory():
    import ray
    from ray.core.generated.common_pb2 import ActorDiedErrorContext

    return ray.exceptions.ActorDiedError(ActorDiedErrorContext(
        class_name="ChunkSampler", actor_id=b"\x01" * 16, pid=4321, node_ip_address="10.0.0.7",
        error_message="The actor is dead because its worker process has died. Worker exit type: "
                      "NODE_OUT_OF_MEMORY Worker exit detail: Task was killed due to the node running low on memory."))


@pytest.mark.parametrize("make", [_oom_error, _actor_killed_for_memory])
def test_a_worker_killed_for_memory_is_named_in_one_line(make):
    """Ray's own exception objects (provoking a real OOM safely on a shared machine is not possible):
    the one line names the task, the worker and the cause, exit 1."""
    from ganscale.errors import describe
    from ganscale.runtime import killed_for_memory, worker_failure

    error = make()
    assert killed_for_memory(error)
    line, code = describe(worker_failure(error, "sample: chunk 3 of dataset real"))
    pid, node = ("1234", "10.0.0.5") if make is _oom_error else ("4321", "10.0.0.7")
    assert code == 1 and line == (f"sample: chunk 3 of dataset real: worker (pid {pid}, node {node}) was killed for "
                                  "memory by Ray's memory monitor; give each worker more memory (fewer workers, "
                                  f"smaller sample.batch_size); {RERUN}")


class _Flaky:
    """A Ray actor whose method dies the first time (os._exit) or raises Ray's OutOfMemoryError."""

    def __init__(self, marker: str):
        self.marker = marker

    def call(self, how: str):
        import os
        from pathlib import Path

        calls = Path(self.marker)
        calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
        if how == "oom":
            import ray

            raise ray.exceptions.OutOfMemoryError(f"Task was killed due to the node running low on memory. (pid={os.getpid()})")
        if len(calls.read_text()) == 1:
            os._exit(1)
        return "done"


@pytest.mark.parametrize("how", ["dies_once", "oom"])
def test_a_dead_worker_s_task_is_resent_but_one_killed_for_memory_is_not(how, ray_local, tmp_path):
    import ray

    from ganscale.runtime import Task, run_on_actors

    marker = tmp_path / "calls"
    actor = ray.remote(max_restarts=2, max_task_retries=0)(_Flaky).options(num_cpus=0.1).remote(str(marker))
    tasks = [Task("call", (how,), "the task")]
    if how == "dies_once":
        assert run_on_actors([actor], tasks, retries=2) == ["done"]
        assert marker.read_text() == "xx"
    else:
        with pytest.raises(EnvironmentFailure) as info:
            run_on_actors([actor], tasks, retries=2)
        assert "the task: worker (pid" in str(info.value) and "killed for memory" in str(info.value)
        assert marker.read_text() == "x"  # not sent again
