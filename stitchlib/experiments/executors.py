"""Executors: where a plan's tasks run.

A plan's tasks are independent except where a stitch needs its two models (and a fine-tuning
run its frozen source), so they can run side by side. An executor takes the tasks a run needs,
skips those the store holds, and computes the rest, each after its dependencies:

- `serial`: in this process, one after another, in the plan's order;
- `ray`: as Ray tasks, on the cores and GPUs of this machine (Ray started inside the run) or of a
  running cluster (`ray_address="auto"` or `"ray://host:port"`). Each task reserves `threads` CPUs,
  and on GPUs `gpu_fraction` of one, so several small models share a GPU. Ready tasks start
  longest-chain first (by estimated FLOPs), so the run's critical path starts early;
- `local`: the same scheduling on a pool of worker processes of this machine, without Ray (a GPU
  machine with torch alone): cores / threads workers on a CPU, GPUs / gpu_fraction on GPUs, each
  worker bound to one GPU, so that several tasks share a GPU.

Either way a task runs the same code (`run_task`: a `Runner` on the task's own thread count, with
its own seeds) and writes the same content-addressed store, which workers share through per-key
locks: results do not depend on the executor.
"""

from __future__ import annotations

import abc
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import data as data_mod
from ..store import Store
from .compute import KeyContext, Numerics, Runner
from .tasks import CKA, Checkpoint, RandomModel, Stitch, Task, TrainedModel

EXECUTORS = ("auto", "serial", "ray", "local")
ENV_EXECUTOR = "STITCHLIB_EXECUTOR"
# How long joining a cluster may take before the run says it cannot reach it.
CONNECT_TIMEOUT_S = 5.0
# Ray retries a task whose worker died (killed, out of memory): the store keeps nothing half-written.
RETRIES = 2


@dataclass(frozen=True)
class Where:
    """What a worker needs besides the task: which data (by name, folder and identity), which
    store, which device type, which numerics (threads, precision, compiling). Picklable, and small."""

    dataset: str
    data_root: str
    identity: dict
    store: str
    device: str
    numerics: Numerics

    @property
    def threads(self) -> int:
        return self.numerics.threads


_DATASETS: dict = {}


def _dataset(where: Where) -> data_mod.Dataset:
    """The worker's copy of the data, loaded once per process (from the decoded cache)."""
    key = (where.dataset, where.data_root)
    if key not in _DATASETS:
        ds = data_mod.load_dataset(where.dataset, where.data_root, download=False)
        if ds.identity != where.identity:
            raise RuntimeError(f"this worker ({socket.gethostname()}) reads {where.dataset} with identity "
                               f"{ds.identity}, the run {where.identity}: every worker must see the same data "
                               f"folder ({where.data_root})")
        _DATASETS[key] = ds
    return _DATASETS[key]


def run_task(task: Task, where: Where, dataset: data_mod.Dataset | None = None) -> float:
    """Compute one task into the store (dependencies already there); returns its seconds. A fresh
    runner per task: nothing is carried from one task to the next but the store."""
    start = time.perf_counter()
    device = torch.device(where.device)
    Runner(dataset or _dataset(where), Store(where.store), device, where.numerics).compute(task)
    return time.perf_counter() - start


def _job_of(task: Task) -> Task | None:
    """The task that computes `task`'s artifact: a checkpoint is its run; a random network is
    built where it is used; a task decided while running has no job yet."""
    if isinstance(task, Checkpoint):
        return task.run
    if isinstance(task, RandomModel):
        return None
    return task


def jobs(tasks: list[Task], keys: KeyContext | None) -> tuple[list[Task], dict]:
    """(what must be computed, in the plan's order; {job: the jobs it waits for}). Stored tasks and
    tasks whose key is not known yet (decided from results) are left out; with `keys` None, every
    job is (to estimate a whole run)."""
    todo = {}
    for t in tasks:
        job = _job_of(t)
        if job is not None and (keys is None or (isinstance(job, (TrainedModel, Stitch, CKA))
                                                 and keys.stored(job) is False)):
            todo[job] = None
    after = {}
    for job in todo:
        deps = {d for d in (_job_of(d) for d in job.deps()) if d in todo}
        # A checkpointed run trains only its early part once the same run without checkpoints is
        # stored: let that run go first when both are to be computed.
        if isinstance(job, TrainedModel) and job.checkpoints and job.plain() in todo:
            deps.add(job.plain())
        after[job] = deps
    return list(todo), after


def _critical_path(todo: list[Task], after: dict, shape, cost: dict | None = None) -> dict:
    """Each job's cost (`cost[job]`, else its estimated FLOPs) plus that of the longest chain of
    jobs waiting on it."""
    waiting = {job: [] for job in todo}
    for job, deps in after.items():
        for d in deps:
            waiting[d].append(job)
    length: dict = {}

    def visit(job):
        if job not in length:
            own = cost[job] if cost is not None else job.cost(shape)[1]
            length[job] = own + max((visit(w) for w in waiting[job]), default=0.0)
        return length[job]

    for job in todo:
        visit(job)
    return length


def makespan(todo: list[Task], after: dict, seconds: dict, slots: int) -> float:
    """The wall time of running `todo` on `slots` workers as the Ray executor schedules them
    (longest chain first whenever a worker is free), each job taking `seconds[job]`."""
    import heapq

    length = _critical_path(todo, after, None, seconds)
    waiting = {job: set(deps) for job, deps in after.items()}
    ready = [job for job in todo if not waiting[job]]
    running: list = []  # (finish time, order, job)
    now, order = 0.0, 0
    while ready or running:
        ready.sort(key=lambda j: length[j])
        while ready and len(running) < slots:
            job = ready.pop()
            heapq.heappush(running, (now + seconds[job], order, job))
            order += 1
        now, _, job = heapq.heappop(running)
        for other, deps in waiting.items():
            if job in deps:
                deps.discard(job)
                if not deps:
                    ready.append(other)
    return now


class Progress:
    """One bar over the jobs: done of total, with how many run, how many are left and the time
    left, estimated from the FLOPs done so far."""

    def __init__(self, todo: list[Task], shape, desc: str, where: str):
        self.cost = {job: job.cost(shape)[1] for job in todo}
        self.total, self.done = sum(self.cost.values()), 0.0
        self.start = time.perf_counter()
        self.bar = tqdm(total=len(todo), desc=f"{desc} ({where})", unit="task")

    def update(self, finished: list[Task], running: list[Task]) -> None:
        for job in finished:
            self.done += self.cost[job]
        self.bar.update(len(finished))
        waiting = self.bar.total - self.bar.n - len(running)
        text = f"running {len(running)}, waiting {waiting}"
        if self.done > 0 and self.bar.n < self.bar.total:
            seconds = (time.perf_counter() - self.start) * (self.total - self.done) / self.done
            text += f", about {_duration(seconds)} to go"
        if len(running) == 1:
            text += f" | {running[0].label}"
        self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Executor(abc.ABC):
    """Computes jobs into the store. Use as a context manager to keep one executor (one Ray
    session) over several runs; otherwise each `run` starts and stops what it needs."""

    name = ""

    def __init__(self):
        self._depth = 0

    def __enter__(self):
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self.close()

    def close(self) -> None:
        pass

    def run(self, tasks: list[Task], where: Where, keys: KeyContext, shape, desc: str = "computing",
            dataset: data_mod.Dataset | None = None) -> int:
        """Compute every task of `tasks` the store lacks (and whose key is known); returns how many."""
        todo, after = jobs(tasks, keys)
        if not todo:
            return 0
        Store(where.store).check_writable()
        with self:  # outside a `with` block, what this run started stops with it
            self._compute(todo, after, where, shape, desc, dataset)
        return len(todo)

    @abc.abstractmethod
    def _compute(self, todo, after, where, shape, desc, dataset) -> None:
        """Compute the jobs `todo` (each after the jobs `after[job]`) into the store."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class SerialExecutor(Executor):
    """One job after another in this process, in the plan's order (dependencies first)."""

    name = "serial"

    def _compute(self, todo, after, where, shape, desc, dataset) -> None:
        progress = Progress(todo, shape, desc, "serial")
        try:
            for job in todo:
                progress.update([], [job])
                run_task(job, where, dataset)
                progress.update([job], [])
        finally:
            progress.close()


def _probe_store(root: str, token: str) -> str | None:
    """On a worker: None if it sees the probe file the driver wrote in the store and can write
    there; otherwise what is wrong."""
    here = socket.gethostname()
    probe = Path(root) / f".shared-check.{token}"
    try:
        if probe.read_text() != token:
            return f"on {here}, {probe} holds something else"
    except OSError as err:
        return f"on {here}, the file the driver wrote ({probe}) cannot be read: {type(err).__name__}: {err}"
    try:
        Store(root).check_writable()
    except PermissionError as err:
        return f"on {here}: {err}"
    return None


def check_address(address: str, *, connect: bool = True) -> None:
    """Raise ValueError if `address` is not one, and (with `connect`) ConnectionError within
    seconds if it cannot be reached (a TCP connection to host:port), rather than letting Ray retry
    for minutes."""
    if address in ("", "auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray_address {address!r} is not an address: give \"ray://host:port\" (Ray Client, port "
                         "10001 by default), \"host:port\" (the head node's GCS, port 6379), \"auto\" (the cluster "
                         "this node belongs to) or \"\" (start Ray inside the run)")
    if not connect:
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r} within {CONNECT_TIMEOUT_S:g} s "
                              f"({type(err).__name__}: {err}); start it (`ray start --head` on the head node), "
                              "check the address and port, or run with executor=\"serial\"") from None


class RayExecutor(Executor):
    """Jobs as Ray tasks, on a Ray started inside the run (`address=""`) or a running cluster."""

    name = "ray"

    def __init__(self, address: str = "", gpu_fraction: float = 0.25):
        super().__init__()
        self.address, self.gpu_fraction = address, gpu_fraction
        self._started = False
        self._checked_stores: set = set()

    def __repr__(self) -> str:
        return f"<RayExecutor {self.address or 'inside the run'}, {self.gpu_fraction:g} GPU per GPU task>"

    def _ray(self):
        import ray

        if ray.is_initialized():
            return ray
        check_address(self.address)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False, logging_level="WARNING")
            else:
                ray.init(num_gpus=torch.cuda.device_count(), include_dashboard=False, log_to_driver=False,
                         logging_level="WARNING")
        except ConnectionError as err:
            raise ConnectionError(f"cannot join the Ray cluster at {self.address!r}: {err}. With \"auto\", run on a "
                                  "node of a running cluster (`ray start --head` first); or run with "
                                  "executor=\"serial\", or ray_address=\"\" to start Ray inside the run") from None
        self._started = True
        return ray

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
            self._checked_stores.clear()

    def slots(self, ray, where: Where) -> int:
        """How many jobs can run at once: the cluster's CPUs (or GPUs) over what a job reserves."""
        resources = ray.cluster_resources()
        if where.device == "cuda":
            return max(1, int(resources.get("GPU", 0) / self.gpu_fraction + 1e-9))
        return max(1, int(resources.get("CPU", 1) // where.threads))

    def check_shared_store(self, ray, root: str) -> None:
        """Every node must see the store the driver sees and be able to write it: a probe file
        from the driver, read back by a task pinned to each node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = uuid.uuid4().hex
        probe = Path(root) / f".shared-check.{token}"
        probe.write_text(token)
        try:
            check = ray.remote(num_cpus=0)(_probe_store)
            refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                    .remote(root, token) for node in ray.nodes() if node.get("Alive")]
            problems = [p for p in ray.get(refs, timeout=120) if p]
        finally:
            probe.unlink(missing_ok=True)
        if problems:
            raise RuntimeError(f"the artifact store {root} is not shared by the workers of this cluster: "
                               + "; ".join(problems) + ". Put it on a file system every node mounts at the same "
                               "path (store=... or $STITCHLIB_STORE)")

    def _compute(self, todo, after, where, shape, desc, dataset) -> None:
        ray = self._ray()
        if where.store not in self._checked_stores:
            self.check_shared_store(ray, where.store)
            self._checked_stores.add(where.store)
        remote = ray.remote(run_task).options(
            num_cpus=where.threads, num_gpus=self.gpu_fraction if where.device == "cuda" else 0,
            max_retries=RETRIES)
        started: list = []

        def start(job):
            started.append(remote.remote(job, where))
            return started[-1]

        def wait(running):
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                try:
                    ray.get(ref)
                except Exception as err:
                    raise RuntimeError(f"{running[ref].label} failed on a Ray worker: {err}") from err
            return finished

        try:
            # Slots asked anew each time: a cluster may grow or shrink while the run goes.
            _schedule(todo, after, shape, lambda: self.slots(ray, where), start, wait, desc,
                      f"ray, {self.slots(ray, where)} at a time")
        except BaseException:
            for ref in started:
                ray.cancel(ref, force=True)
            raise


def _schedule(todo, after, shape, slots, start, wait, desc: str, where: str) -> None:
    """Run `todo` with at most `slots()` at a time, each after `after[job]`, the ready job with the
    longest chain first: `start(job)` returns a handle, `wait(handles)` returns the finished
    handles and raises for a failed one."""
    priority = _critical_path(todo, after, shape)
    waiting = {job: set(deps) for job, deps in after.items()}
    ready = [job for job in todo if not waiting[job]]
    running: dict = {}
    progress = Progress(todo, shape, desc, where)
    try:
        while ready or running:
            ready.sort(key=lambda j: priority[j])
            limit = slots()
            while ready and len(running) < limit:
                job = ready.pop()
                running[start(job)] = job
            progress.update([], list(running.values()))
            done = []
            for handle in wait(running):
                job = running.pop(handle)
                done.append(job)
                for other, deps in waiting.items():
                    if job in deps:
                        deps.discard(job)
                        if not deps:
                            ready.append(other)
            progress.update(done, list(running.values()))
    finally:
        progress.close()


def _bind_gpu(gpus) -> None:
    """A local worker's start: take the next GPU of the round (each worker keeps one)."""
    if gpus is not None:
        torch.cuda.set_device(gpus.get())


class LocalExecutor(Executor):
    """Jobs on a pool of worker processes of this machine, scheduled as the Ray executor does,
    without Ray: cores / threads workers on a CPU; on GPUs, 1 / gpu_fraction workers per GPU, each
    bound to one, so that several tasks share a GPU (their kernels interleave)."""

    name = "local"

    def __init__(self, gpu_fraction: float = 0.25):
        super().__init__()
        self.gpu_fraction = gpu_fraction

    def __repr__(self) -> str:
        return f"<LocalExecutor gpu_fraction={self.gpu_fraction}>"

    def slots(self, where: Where) -> int:
        if where.device == "cuda":
            return max(1, int(torch.cuda.device_count() / self.gpu_fraction + 1e-9))
        return max(1, cpu_count() // where.threads)

    def _compute(self, todo, after, where, shape, desc, dataset) -> None:
        import concurrent.futures as cf
        import multiprocessing

        slots = min(self.slots(where), len(todo))
        # spawn: a fresh interpreter per worker (CUDA cannot be used in a forked child).
        context = multiprocessing.get_context("spawn")
        gpus = None
        if where.device == "cuda":
            gpus = context.Queue()
            for k in range(slots):
                gpus.put(k % torch.cuda.device_count())
        pool = cf.ProcessPoolExecutor(slots, mp_context=context, initializer=_bind_gpu, initargs=(gpus,))

        def wait(running):
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                try:
                    future.result()
                except Exception as err:
                    raise RuntimeError(f"{running[future].label} failed in a local worker: {err}") from err
            return finished

        try:
            _schedule(todo, after, shape, lambda: slots, lambda job: pool.submit(run_task, job, where), wait, desc,
                      f"local, {slots} at a time")
        except BaseException:
            # Stop at once: queued jobs are cancelled and running workers killed (the store keeps
            # nothing half-written, and a rerun computes what is missing).
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def cpu_count() -> int:
    """The cores this process may use (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ray_installed() -> bool:
    # Found, not imported: importing Ray takes seconds, and a run with everything stored needs none of it.
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def make_executor(name: str | Executor = "auto", *, ray_address: str = "", gpu_fraction: float = 0.25,
                  device: str = "cpu", threads: int = 1, connect: bool = True) -> Executor:
    """The executor called `name`, its options checked before any work. "auto": the one in
    $STITCHLIB_EXECUTOR, else, when at least two tasks fit on this machine at once (cores /
    threads, or GPUs / gpu_fraction), Ray if it is installed and local worker processes if not;
    else serial. `connect=False` checks a cluster address's form without reaching it."""
    if isinstance(name, Executor):
        return name
    if not isinstance(name, str) or name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; valid: {list(EXECUTORS)}")
    if not isinstance(ray_address, str):
        raise TypeError(f"ray_address must be a str, got {type(ray_address).__name__} {ray_address!r}")
    if isinstance(gpu_fraction, bool) or not isinstance(gpu_fraction, (int, float)) or not 0 < gpu_fraction <= 1:
        raise ValueError(f"gpu_fraction must be a number in (0, 1] (the share of one GPU a task reserves; a task "
                         f"uses one device), got {gpu_fraction!r}")
    if name == "auto":
        chosen = os.environ.get(ENV_EXECUTOR)
        if chosen:
            if chosen not in EXECUTORS[1:]:
                raise ValueError(f"${ENV_EXECUTOR}={chosen!r} is not an executor; valid: {list(EXECUTORS[1:])}")
            name = chosen
        elif ray_address:
            name = "ray"
        else:
            fits = torch.cuda.device_count() / gpu_fraction if device == "cuda" else cpu_count() // threads
            name = ("ray" if ray_installed() else "local") if fits >= 2 else "serial"
    if name in ("serial", "local"):
        if ray_address:
            raise ValueError(f"ray_address={ray_address!r} needs executor=\"ray\" (or \"auto\"), not {name!r}")
        return SerialExecutor() if name == "serial" else LocalExecutor(float(gpu_fraction))
    if not ray_installed():
        raise ImportError("executor=\"ray\" needs Ray: pip install 'ray>=2.9' (it comes with stitchlib's own "
                          "dependencies), or use executor=\"serial\"")
    check_address(ray_address, connect=connect)
    return RayExecutor(ray_address, float(gpu_fraction))


__all__ = ["EXECUTORS", "Executor", "SerialExecutor", "RayExecutor", "LocalExecutor", "Where", "make_executor",
           "run_task", "jobs", "check_address"]
