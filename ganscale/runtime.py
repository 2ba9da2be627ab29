"""Where the work runs: attaching to Ray, what each worker reserves, its torch device, and one
actor pool that hands tasks to actors as they free up and turns any worker failure into one line.

Why not `ray.util.ActorPool`: when a task fails it raises without saying which task it was, and the
one-line error must name the chunk, layer or batch at fault; everything else here is the same
submit-as-they-free-up loop ActorPool runs.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from ganscale.errors import EnvironmentFailure, GanscaleError

log = logging.getLogger("ganscale")


def init_ray(address: str | None = None) -> None:
    """Attach to the Ray cluster at `address`, or the one this process runs in, or start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise GanscaleError("sample.device: 'cuda' requested but this worker has no GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def worker_resources(device: str, workers: int | None) -> tuple[int, dict]:
    """How many model-hosting actors, and what each reserves: one per GPU when the cluster has
    GPUs (and `device` is not 'cpu'), else CPU workers sharing the cluster's CPUs (one per 4)."""
    import ray

    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if gpus and device != "cpu":
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}
    if device == "cuda":
        raise GanscaleError("sample.device: 'cuda' requested but the Ray cluster has no GPUs")
    cpus = max(1, int(total.get("CPU", 1)))
    n = workers or max(1, cpus // 4)
    return n, {"num_cpus": max(1, cpus // n) if n <= cpus else cpus / n}


def dask_scheduler():
    """Dask-on-Ray when a Ray cluster is attached, else local threads."""
    import ray

    if ray.is_initialized():
        from ray.util.dask import ray_dask_get

        return ray_dask_get
    return "threads"


@dataclass(frozen=True)
class Task:
    method: str  # the actor method to call
    args: tuple
    what: str  # names the work in error messages: "chunk 3 of dataset real"
    key: Any = None  # the caller's handle on the task in on_result (not sent to the actor)


def worker_failure(error: BaseException, what: str) -> Exception:
    """The error to raise for a failed task, or a worker that could not start or died for good, as
    one line: the GanscaleError raised inside it (bad weights, say: exit 2) when there was one, else
    an EnvironmentFailure (storage gone mid-run, a worker lost: exit 1)."""
    import ray

    cause = getattr(error, "cause", None)
    if isinstance(cause, GanscaleError):
        return GanscaleError(str(cause))
    for line in str(error).splitlines():
        if "GanscaleError: " in line:
            return GanscaleError(line.split("GanscaleError: ", 1)[1].strip())
    if isinstance(error, ray.exceptions.RayActorError):
        return EnvironmentFailure(f"{what}: a worker died for good ({type(error).__name__})")
    lines = str(cause or error).strip().splitlines()
    kind = f"{type(cause).__name__}: " if cause is not None else ""
    return EnvironmentFailure(f"{what} failed on a worker: {kind}{lines[-1] if lines else type(error).__name__}")


def run_on_actors(actors: list, tasks: Iterable[Task], on_result: Callable[[Task, Any], None] | None = None, *,
                  in_flight_per_actor: int = 1, fetch: bool = True, kill: bool = True) -> list:
    """Hand `tasks` to `actors` as they free up (`in_flight_per_actor` queued on each, so a worker
    never waits for the driver between tasks). `on_result(task, value)` runs on the driver as each
    finishes (value is the ObjectRef when `fetch` is False: the result stays in the object store for
    a later merge). Returns the results in task order. A failure raises one line naming the task
    (worker_failure); the actors are killed at the end when `kill`. `actors` may also be plain
    objects (tests, benchmarks): their methods run here, one task at a time."""
    import ray

    queue = deque(enumerate(tasks))
    results: list = [None] * len(queue)
    in_flight: dict = {}

    def submit(actor) -> None:
        if queue:
            i, task = queue.popleft()
            call = getattr(actor, task.method)  # a plain object (tests, benchmarks) computes here
            ref = call.remote(*task.args) if hasattr(call, "remote") else ray.put(call(*task.args))
            in_flight[ref] = (actor, i, task)

    try:
        for _ in range(in_flight_per_actor):
            for actor in actors:
                submit(actor)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor, i, task = in_flight.pop(ready[0])
            try:
                value = ray.get(ready[0]) if fetch else ready[0]  # unfetched: a failure shows where it is merged
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
                raise worker_failure(e, task.what) from None
            results[i] = value
            if on_result is not None:
                on_result(task, value)
            submit(actor)
    finally:
        if kill:
            for actor in actors:
                ray.kill(actor)
    return results
