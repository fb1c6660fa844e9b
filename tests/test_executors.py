"""Executors and the shared store: serial and Ray give the same tables; workers on one store
never compute a key twice nor leave a half-written artifact; bad options fail before any work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import stitchlib
from stitchlib import data as D
from stitchlib.__main__ import main
from stitchlib.experiments import executors as X
from stitchlib.experiments import make_plan
from stitchlib.experiments.compute import KeyContext, Numerics
from stitchlib.experiments.tasks import Checkpoint, RandomModel, TrainedModel
from stitchlib.store import Store

from test_experiments import assert_tables_equal

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(widths=[0.0625], seeds=[0, 1, 2, 3], train_samples=512, test_samples=256, epochs=1.0, stitch_samples=256,
            stitch_epochs=0.5, ls_samples=256, cka_samples=128, architectures={"myrtle": {"width": 0.125}})
IDENTITY = {"name": "cifar10", "source": "x", "sha256": "0"}


def _setup(tmp_path, name, executor, **kw):
    return stitchlib.setup("connectivity", device="cpu", store=str(tmp_path / name / "store"),
                           figures_dir=str(tmp_path / name / "figures"), executor=executor, **{**TINY, **kw})


def test_serial_ray_and_local_give_identical_tables(tmp_path):
    """The same plan on the serial executor, on Ray started inside the run and on local worker
    processes (two one-thread workers each): every number and every per-image bit the same, in
    stores written independently."""
    pytest.importorskip("ray")
    serial = _setup(tmp_path, "serial", "serial")
    ray_run = _setup(tmp_path, "ray", "ray")
    assert serial.executor.name == "serial" and ray_run.executor.name == "ray"
    a = stitchlib.connectivity(serial).table
    computed = ray_run.compute(ray_run.plan.tasks(), "ray")
    assert computed == 25  # 8 trained models, 8 stitches, 8 CKAs, 1 CKA matrix: each once, the random nets in place
    b = stitchlib.connectivity(ray_run).table
    assert_tables_equal(a, b)
    assert a["error"].notna().all() and len(a) == 2 * (2 * 10 + 2 * 5)
    # Local worker processes (no Ray): the same again.
    local = _setup(tmp_path, "local", "local")
    assert local.executor.name == "local" and local.compute(local.plan.tasks(), "local") == 25
    assert_tables_equal(a, stitchlib.connectivity(local).table)
    # The stores hold the same artifacts under the same keys.
    names = {p.parent.name + "/" + p.name for p in (tmp_path / "serial" / "store").glob("*/*.pt")}
    for other in ("ray", "local"):
        assert names == {p.parent.name + "/" + p.name for p in (tmp_path / other / "store").glob("*/*.pt")}
    assert len(names) == 25


def test_a_result_is_keyed_by_its_numerics():
    plan = make_plan("connectivity", "smoke", **TINY)
    model, stitch = plan.comparisons[0].top, plan.comparisons[0].stitch

    def keys(device, **numerics):
        return KeyContext(Store("/nonexistent"), IDENTITY, device, 3, Numerics(**numerics))

    one, two = keys("cpu", threads=1), keys("cpu", threads=2)
    assert one.key(model) != two.key(model)
    gpu_one, gpu_two = keys("cuda", threads=1), keys("cuda", threads=2)
    assert gpu_one.key(model) == gpu_two.key(model) != one.key(model)  # a GPU's numbers do not depend on it
    # bfloat16 and compiled training change the numbers: every artifact's key changes with them.
    bf16, compiled = keys("cuda", precision="bf16"), keys("cuda", compile=True)
    for task in (model, stitch):
        assert len({gpu_one.key(task), bf16.key(task), compiled.key(task)}) == 3
    assert make_plan("connectivity", "fast").params.numerics() == Numerics(1, "bf16", False)
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        make_plan("connectivity", "smoke", threads=0)


def test_jobs_skip_what_needs_no_worker_and_order_the_critical_path_first():
    plan = make_plan("more_is_better", "smoke")
    keys = KeyContext(Store("/nonexistent"), IDENTITY, "cpu", 3)
    todo, after = X.jobs(plan.tasks(), keys)
    assert not any(isinstance(j, (RandomModel, Checkpoint)) for j in todo)
    # Freeze training's frozen run is decided from results: no job until then.
    assert not any(isinstance(j, TrainedModel) and j.frozen is not None for j in todo)
    run = next(j for j in todo if isinstance(j, TrainedModel) and j.keep_checkpoints)
    assert run.plain() in after[run]  # the checkpointed run trains only its early part after it
    for job, deps in after.items():
        assert deps <= set(todo) and job not in deps
    length = X._critical_path(todo, after, plan.params.data_info["shape"])
    for job, deps in after.items():
        for d in deps:
            assert length[d] > length[job]  # whatever waits on a job makes its chain longer
    stitch = next(c.stitch for c in plan.comparisons if c.stitch is not None)
    assert set(X._job_of(t) for t in stitch.deps()) <= set(after[stitch]) | {None}


def test_progress_says_done_running_waiting_and_time_left(capsys):
    plan = make_plan("connectivity", "smoke", **TINY)
    jobs = [c.top for c in plan.comparisons[:3:2]] + [plan.comparisons[0].stitch]
    progress = X.Progress(jobs, (3, 32, 32), "test", "serial")
    progress.update([], jobs[:1])
    assert "running 1, waiting 2" in progress.bar.postfix and jobs[0].label in progress.bar.postfix
    progress.update(jobs[:1], jobs[1:3])
    assert progress.bar.n == 1 and "running 2, waiting 0" in progress.bar.postfix
    assert " to go" in progress.bar.postfix
    progress.close()


@pytest.mark.parametrize("options, error, match", [
    (dict(executor="spark"), ValueError, r"unknown executor 'spark'; valid: \['auto', 'serial', 'ray', 'local'\]"),
    (dict(executor="ray", gpu_fraction=1.5), ValueError, r"gpu_fraction must be a number in \(0, 1\]"),
    (dict(executor="ray", gpu_fraction=0), ValueError, r"gpu_fraction must be a number in \(0, 1\]"),
    (dict(executor="ray", gpu_fraction=-0.5), ValueError, r"gpu_fraction must be a number in \(0, 1\]"),
    (dict(executor="ray", ray_address="nonsense"), ValueError, "is not an address"),
    (dict(executor="serial", ray_address="auto"), ValueError, "needs executor=\"ray\""),
    (dict(executor="ray", ray_address="ray://127.0.0.1:9"), ConnectionError, "cannot reach the Ray cluster"),
])
def test_bad_executor_options_fail_within_seconds_before_any_work(tmp_path, monkeypatch, options, error, match):
    pytest.importorskip("ray")

    def no_data(*a, **k):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(D, "load_dataset", no_data)
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        stitchlib.setup("connectivity", store=str(tmp_path), **options, **TINY)
    assert time.perf_counter() - start < 2 * X.CONNECT_TIMEOUT_S


def test_auto_takes_the_environment_then_ray_when_two_tasks_fit(monkeypatch):
    monkeypatch.setenv(X.ENV_EXECUTOR, "serial")
    assert X.make_executor("auto").name == "serial"
    monkeypatch.setenv(X.ENV_EXECUTOR, "dask")
    with pytest.raises(ValueError, match=r"\$STITCHLIB_EXECUTOR='dask' is not an executor"):
        X.make_executor("auto")
    monkeypatch.delenv(X.ENV_EXECUTOR)
    monkeypatch.setattr(X, "ray_installed", lambda: True)
    monkeypatch.setattr(X, "cpu_count", lambda: 2)
    assert X.make_executor("auto", threads=1).name == "ray"
    assert X.make_executor("auto", threads=2).name == "serial"  # one task at a time: Ray only costs its start
    monkeypatch.setattr(X, "ray_installed", lambda: False)
    # Without Ray (the GPU image has torch alone), worker processes of this machine.
    assert X.make_executor("auto", threads=1).name == "local"
    assert X.make_executor("auto", threads=2).name == "serial"
    with pytest.raises(ValueError, match="needs executor=\"ray\""):
        X.make_executor("local", ray_address="auto")


def test_a_store_that_cannot_be_written_stops_the_run_before_any_training(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    s = stitchlib.setup("connectivity", device="cpu", store=str(tmp_path / "a-file" / "store"),
                        figures_dir=str(tmp_path / "f"), executor="serial", **TINY)
    monkeypatch.setattr("stitchlib.experiments.compute.train_model",
                        lambda *a, **k: pytest.fail("trained before the store was checked"))
    with pytest.raises(PermissionError, match="the artifact store .* is not writable"):
        stitchlib.connectivity(s)


def test_a_store_the_workers_do_not_share_is_detected(tmp_path):
    """What each node's probe task checks: it sees the driver's file with the driver's token."""
    root = tmp_path / "store"
    root.mkdir()
    missing = X._probe_store(str(root), "abc")
    assert "cannot be read" in missing and str(root) in missing
    (root / ".shared-check.abc").write_text("abc")
    assert X._probe_store(str(root), "abc") is None
    (root / ".shared-check.abc").write_text("another run's")
    assert "holds something else" in X._probe_store(str(root), "abc")


# ------------------------------------------------------------------ several processes, one store

_CACHED = r"""
import os, sys, time, torch
from stitchlib import store
store.code_version = lambda: sys.argv[3]  # the parent's, whatever was edited since
def compute():
    with open(sys.argv[2], "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(float(sys.argv[4]))
    return {"w": torch.full((3,), float(os.getpid()))}
print(store.Store(sys.argv[1]).cached("model", {"a": 1}, compute)["w"][0].item(), flush=True)
"""


def _cached(tmp_path, seconds: float) -> subprocess.Popen:
    from stitchlib.store import code_version

    return subprocess.Popen([sys.executable, "-c", _CACHED, str(tmp_path / "store"), str(tmp_path / "log"),
                             code_version(), str(seconds)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_two_workers_compute_a_key_once_and_read_the_same_payload(tmp_path):
    procs = [_cached(tmp_path, 2.0) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    computed = (tmp_path / "log").read_text().split()
    assert len(computed) == 1  # the second waited for the lock, then loaded
    assert outputs[0] == outputs[1] == f"{float(computed[0])}"


def test_a_killed_workers_lock_is_taken_over_and_nothing_half_written_is_left(tmp_path):
    killed = _cached(tmp_path, 600.0)
    deadline = time.time() + 60
    while not (tmp_path / "log").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "log").exists(), "the first worker never started computing"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    store = Store(tmp_path / "store")
    assert not list(store.root.glob("model/*.pt")) and store.load("model", {"a": 1}) is None
    assert list(store.root.glob(".locks/model/*.lock"))  # the lock file stays; the kernel dropped the lock
    start = time.perf_counter()
    rerun = _cached(tmp_path, 0.0)
    assert rerun.communicate(timeout=120)[0].strip() == f"{float(rerun.pid)}"
    assert time.perf_counter() - start < 60  # taken over at once, not after a timeout
    assert len((tmp_path / "log").read_text().split()) == 2


_NOTEBOOK = r"""
import json, sys
import stitchlib
from stitchlib.store import Store
real = Store.save
def logged(self, kind, config, payload):
    with open(sys.argv[2], "a") as log:
        log.write(self.key(kind, config) + "\n")
    return real(self, kind, config, payload)
Store.save = logged
s = stitchlib.setup("connectivity", device="cpu", store=sys.argv[1], figures_dir=sys.argv[3], executor="serial",
                    **json.loads(sys.argv[4]))
print(stitchlib.connectivity(s).table["error"].sum())
"""


def test_two_notebooks_started_at_once_train_nothing_twice(tmp_path):
    """Two runs of one plan started together on one store (as two notebooks would be): every
    artifact is saved once, and both get the same table."""
    small = dict(TINY, architectures={})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _NOTEBOOK, str(tmp_path / "store"), str(tmp_path / "saved"),
                               str(tmp_path / f"figures{i}"), json.dumps(small)], stdout=subprocess.PIPE, text=True,
                              env=env) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0].split()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    saved = (tmp_path / "saved").read_text().split()
    assert len(saved) == len(set(saved)) == 13  # 4 models, 4 stitches, 4 CKAs, 1 CKA matrix: once each
    assert outputs[0] == outputs[1]


def test_a_run_killed_mid_task_leaves_no_half_written_artifact_and_a_rerun_finishes(tmp_path):
    args = [sys.executable, "-m", "stitchlib", "run", "01", "--executor", "serial", "--device", "cpu",
            "--store", str(tmp_path / "store"), "--figures", str(tmp_path / "figures"),
            *[a for k, v in TINY.items() if not isinstance(v, (list, dict)) for a in ("-p", k, str(v))],
            "-y", "widths: [0.0625]", "-y", "architectures: {}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = tmp_path / "store"
    deadline = time.time() + 300
    while len(list(store.glob("model/*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    for pt in store.glob("*/*.pt"):
        assert pt.with_suffix(".json").exists(), pt  # no artifact without its sidecar
    first = {p.name for p in store.glob("*/*.pt")}
    assert 2 <= len(first) < 13
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "01_connectivity" in done.stdout and "verdict" in done.stdout
    assert first < {p.name for p in store.glob("*/*.pt")} and len(list(store.glob("*/*.pt"))) == 13


@pytest.mark.parametrize("argv, message", [
    (["run", "06"], "unknown experiment or notebook '06'"),
    (["run", "01", "--executor", "spark"], "unknown executor 'spark'"),
    (["run", "01", "--executor", "ray", "--gpu-fraction", "2"], r"gpu_fraction must be a number in \(0, 1\]"),
    (["run", "all", "-p", "sample", "3"], "unknown parameters \\['sample'\\] for every notebook"),
    (["run", "01", "-p", "threads", "0"], "threads must be an int >= 1"),
])
def test_run_command_refuses_bad_input_before_any_work(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    import re
    assert re.search(message, err), err


def test_the_wall_time_estimate_schedules_the_plan_as_ray_would():
    plan = make_plan("more_is_better", "paper")
    todo, after = X.jobs(plan.tasks(), None)
    seconds = {job: job.cost(plan.params.data_info["shape"])[1] / 1e15 for job in todo}
    chain = max(X._critical_path(todo, after, None, seconds).values())
    one, eight, endless = (X.makespan(todo, after, seconds, n) for n in (1, 8, len(todo)))
    assert one == pytest.approx(sum(seconds.values()))  # one worker: the sum
    assert endless == pytest.approx(chain)  # enough workers: the longest chain
    assert max(chain, one / 8) <= eight + 1e-9 and eight < one  # no better than either bound, and faster
    assert plan.wall_hours(1) == pytest.approx(plan.cost().iloc[-1]["gpu_hours"])
    assert plan.wall_hours(8) < plan.wall_hours(1)
    # A task never starts before what it waits for: a two-job chain takes both, whatever the workers.
    b = next(j for j in todo if after[j])
    dep = next(iter(after[b]))
    assert X.makespan([dep, b], {dep: set(), b: {dep}}, {dep: 2.0, b: 3.0}, 4) == 5.0
