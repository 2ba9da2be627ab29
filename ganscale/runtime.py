"""Where the work runs: attaching to Ray, what each worker reserves, its torch device, and one
actor pool that hands tasks to actors as they free up and turns any worker failure into one line.

Why not `ray.util.ActorPool`: when a task fails it raises without saying which task it was, and the
one-line error must name the chunk, layer or batch at fault; everything else here is the same
submit-as-they-free-up loop ActorPool runs.
"""

from __future__ import annotations

import logging
import re
import time
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


OOM_ADVICE = "give each worker more memory (fewer workers, smaller sample.batch_size)"
# What Ray says only when its memory monitor killed the worker (exit type NODE_OUT_OF_MEMORY). Its
# text for any other unexpected death also names "the OOM killer" as a common cause: not matched.
_OOM_TEXT = ("NODE_OUT_OF_MEMORY", "killed due to the node running low on memory")


def killed_for_memory(error: BaseException) -> bool:
    """Whether a task failed because Ray's memory monitor killed its worker:
    `ray.exceptions.OutOfMemoryError`, or an actor whose worker exited with NODE_OUT_OF_MEMORY."""
    import ray

    if isinstance(error, ray.exceptions.OutOfMemoryError) or \
            isinstance(getattr(error, "cause", None), ray.exceptions.OutOfMemoryError):
        return True
    if isinstance(error, ray.exceptions.RayActorError) and not getattr(error, "actor_init_failed", False):
        return any(text in str(error) for text in _OOM_TEXT)
    return False


def _which_worker(error: BaseException) -> str:
    """'worker (pid 1234, node 10.0.0.5)' from what Ray says about a dead worker, as far as it says."""
    text = str(error)
    found = [f"{label} {m.group(1)}" for label, pattern in (("pid", r"\bpid\s*[:=]\s*(\d+)"),
                                                             ("node", r"\b(?:ip|node(?: id)?):? ?'?([0-9a-f.:]{6,})"))
             if (m := re.search(pattern, text, re.IGNORECASE))]
    return f"worker ({', '.join(found)})" if found else "worker"


def _ray_kind(error: BaseException) -> str:
    """The Ray exception's own name: ActorDiedError, also for the RayTaskError(ActorDiedError) Ray
    makes when a dead actor's failure passes through another task."""
    for cls in type(error).__mro__:
        if cls.__module__ == "ray.exceptions" and not cls.__name__.startswith("RayTaskError"):
            return cls.__name__
    return type(error).__name__


def worker_failure(error: BaseException, what: str) -> Exception:
    """The error to raise for a failed task, or a worker that could not start or died for good, as
    one line: the GanscaleError raised inside it (bad weights, say: exit 2) when there was one, else
    an EnvironmentFailure (storage gone mid-run, a worker lost or killed for memory: exit 1)."""
    import ray

    if killed_for_memory(error):
        return EnvironmentFailure(f"{what}: {_which_worker(error)} was killed for memory by Ray's memory monitor; "
                                  f"{OOM_ADVICE}")
    cause = getattr(error, "cause", None)
    if isinstance(cause, GanscaleError):
        return GanscaleError(str(cause))
    if isinstance(error, ray.exceptions.RayActorError):
        if getattr(error, "actor_init_failed", False):  # raised in the actor's constructor
            for line in str(error).splitlines():
                if "GanscaleError: " in line:
                    return GanscaleError(line.split("GanscaleError: ", 1)[1].strip())
        return EnvironmentFailure(f"{what}: {_which_worker(error)} died for good ({_ray_kind(error)})")
    for line in str(error).splitlines():
        if "GanscaleError: " in line:
            return GanscaleError(line.split("GanscaleError: ", 1)[1].strip())
    lines = str(cause or error).strip().splitlines()
    kind = f"{type(cause).__name__}: " if cause is not None else ""
    return EnvironmentFailure(f"{what} failed on a worker: {kind}{lines[-1] if lines else type(error).__name__}")


def device() -> torch.device:
    """The torch device of a worker that uses what it has: its GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Actors:
    """`count` Ray actors of `cls`, started on first use (`get()`), each constructed with `args` and
    given `resources`; with `ready`, every actor first runs that method (models built and checked
    before anything is written), a failure raising one line (worker_failure) naming `what`. Killed on
    close. `restarts`: Ray restarts a dead actor that many times (run_on_actors resends its tasks);
    `concurrency`: tasks one actor runs at once (threads)."""

    def __init__(self, cls, count: int, resources: dict, *args, what: str, ready: str | None = None,
                 restarts: int = 1, task_retries: int = 0, concurrency: int = 1):
        self.cls, self.count, self.resources, self.args = cls, count, resources, args
        self.what, self.ready = what, ready
        self.options = {"max_restarts": restarts, "max_task_retries": task_retries, "max_concurrency": concurrency}
        self.actors: list | None = None

    def get(self) -> list:
        import ray

        if self.actors is None:
            remote = ray.remote(**self.options)(self.cls)
            self.actors = [remote.options(**self.resources).remote(*self.args) for _ in range(self.count)]
            if self.ready:
                try:
                    ray.get([getattr(a, self.ready).remote() for a in self.actors])
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError,
                        ray.exceptions.OutOfMemoryError) as e:
                    self.close()
                    raise worker_failure(e, self.what) from None
        return self.actors

    def close(self) -> None:
        import ray

        for actor in self.actors or []:
            ray.kill(actor)
        self.actors = None

    def __enter__(self) -> "Actors":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


UNAVAILABLE_WAIT = 300.0  # seconds a task waits for its restarting actor before it fails


def run_on_actors(actors: list, tasks: Iterable[Task], on_result: Callable[[Task, Any], None] | None = None, *,
                  in_flight_per_actor: int = 1, fetch: bool = True, kill: bool = True, collect: bool = True,
                  retries: int = 0) -> list | None:
    """Hand `tasks` to `actors` as they free up (`in_flight_per_actor` queued on each, so a worker
    never waits for the driver between tasks). `tasks` is consumed lazily, only as actors free up,
    so it may be a generator of any length. `on_result(task, value)` runs on the driver as each
    finishes (value is the ObjectRef when `fetch` is False: the result stays in the object store for
    a later merge). Returns the results in task order when `collect`, else None (nothing is kept
    per task). A task whose actor died is sent again (to the restarted actor) up to `retries` times,
    but never one whose worker was killed for memory: that fails at once. A failure raises one
    line naming the task (worker_failure); the actors are killed at the end when `kill`. `actors`
    may also be plain objects (tests, benchmarks): their methods run here, one task at a time."""
    import ray

    pending = enumerate(tasks)
    results: dict[int, Any] = {}
    in_flight: dict = {}
    tries: dict[int, int] = {}  # task index -> times sent again after its worker died
    later: list = []  # (when, actor, index, task): sent again once a restarting actor is back
    waited: dict[int, float] = {}  # task index -> since when its actor is unavailable

    def send(actor, i: int, task: Task) -> None:
        call = getattr(actor, task.method)  # a plain object (tests, benchmarks) computes here
        ref = call.remote(*task.args) if hasattr(call, "remote") else ray.put(call(*task.args))
        in_flight[ref] = (actor, i, task)

    def submit(actor) -> None:
        item = next(pending, None)
        if item is not None:
            send(actor, *item)

    try:
        for _ in range(in_flight_per_actor):
            for actor in actors:
                submit(actor)
        while in_flight or later:
            now = time.monotonic()
            for entry in [e for e in later if e[0] <= now]:
                later.remove(entry)
                send(*entry[1:])
            if not in_flight:
                time.sleep(max(0.0, min(e[0] for e in later) - now))
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0 if later else None)
            if not ready:
                continue
            actor, i, task = in_flight.pop(ready[0])
            try:
                value = ray.get(ready[0]) if fetch else ready[0]  # unfetched: a failure shows where it is merged
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:
                if retries and isinstance(e, ray.exceptions.RayActorError) and not killed_for_memory(e) \
                        and not getattr(e, "actor_init_failed", False):
                    if isinstance(e, ray.exceptions.ActorUnavailableError) and \
                            now - waited.setdefault(i, now) < UNAVAILABLE_WAIT:
                        later.append((now + 1.0, actor, i, task))  # Ray is restarting it: send it again then
                        continue
                    if tries.get(i, 0) < retries:
                        tries[i] = tries.get(i, 0) + 1
                        log.warning("%s: its worker died (%s); sending it again (%d of %d)", task.what,
                                    type(e).__name__, tries[i], retries)
                        send(actor, i, task)  # to the restarted actor (max_restarts), or it fails for good
                        continue
                raise worker_failure(e, task.what) from None
            tries.pop(i, None)
            waited.pop(i, None)
            if collect:
                results[i] = value
            if on_result is not None:
                on_result(task, value)
            submit(actor)
    finally:
        if kill:
            for actor in actors:
                ray.kill(actor)
    return [results[i] for i in range(len(results))] if collect else None
