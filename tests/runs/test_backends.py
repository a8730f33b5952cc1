"""The backend layer of sweep / s5-table / study: local pool (default) and Ray (optional extra)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from stablenas.errors import ConfigError
from stablenas.experiments.sweep import SweepPlan, run_sweep
from stablenas.runs.backends import LocalBackend, RayBackend, get_backend


def _square(x: int) -> dict:
    return {"name": x, "value": x * x}


def test_local_backend_and_backend_errors():
    got: list[dict] = []
    LocalBackend(jobs=1).run(_square, [3, 1, 2], got.append)
    assert got == [{"name": 3, "value": 9}, {"name": 1, "value": 1}, {"name": 2, "value": 4}]
    assert isinstance(get_backend("local", jobs=2), LocalBackend)
    assert get_backend("local", jobs=4).threads_per_task() == max(1, (os.cpu_count() or 1) // 4)
    assert get_backend("ray", num_cpus=2, num_gpus=0.25).threads_per_task() == 2
    with pytest.raises(ConfigError, match="--backend 'slurm': use one of local, ray"):
        get_backend("slurm")
    with pytest.raises(ConfigError, match="--address is for --backend ray"):
        get_backend("local", address="auto")
    with pytest.raises(ConfigError, match="--gpus-per-task"):
        get_backend("ray", num_gpus=-1)


def _fail_or_mark(task: tuple[str, int]) -> dict:
    """Task 'bad' raises at once; every other task leaves a file (it started) and sleeps."""
    name, folder = task[0], task[1]
    if name == "bad":
        raise RuntimeError("a bug in one task")
    open(os.path.join(folder, name), "w").close()
    time.sleep(1.0)
    return {"name": name}


def test_a_raising_task_stops_the_pool_instead_of_running_the_whole_queue(tmp_path):
    """The exception reaches the caller while the queue is mostly unstarted (before: the pool ran all of
    it, reporting nothing, and raised only at the end)."""
    tasks = [("bad", str(tmp_path))] + [(f"t{i}", str(tmp_path)) for i in range(12)]
    got: list[dict] = []
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="a bug in one task"):
        LocalBackend(jobs=2).run(_fail_or_mark, tasks, got.append, key=lambda t: t[0])
    started = sorted(p.name for p in tmp_path.iterdir())
    assert len(started) <= 6, started  # running or already handed to a worker when "bad" failed (12 before)
    assert time.perf_counter() - t0 < 12.0


class _Owner:
    _signal = None


def _run_until_signalled(task: tuple[str, str]) -> dict:
    """A stand-in for a search: runs ~30 s, or on SIGINT/SIGTERM 'saves a checkpoint' and raises InterruptedRun."""
    from stablenas.errors import InterruptedRun
    from stablenas.runs.directory import stop_signals

    name, folder = task
    with open(os.path.join(folder, f"{name}.started"), "w") as f:
        f.write(str(os.getpid()))
    owner = _Owner()
    with stop_signals(owner):
        for _ in range(600):
            if owner._signal is not None:
                open(os.path.join(folder, f"{name}.saved"), "w").close()
                raise InterruptedRun(f"{name}: checkpoint saved", owner._signal)
            time.sleep(0.05)
    return {"name": name}


def _when_started(folder, n: int, then) -> threading.Thread:
    def watch():
        for _ in range(1200):
            started = sorted(p for p in os.listdir(folder) if p.endswith(".started"))
            if len(started) >= n:
                then([int(open(os.path.join(folder, p)).read() or 0) for p in started])
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("target", ["parent", "one-worker"])
def test_a_signal_stops_every_worker_and_no_queued_task_starts(tmp_path, target):
    """SIGTERM to the parent (before: it died and its workers ran on through the tasks already handed
    to them) or to one worker (before: it started the next task, the other ran its unit to the end):
    every running task saves its checkpoint, none of the queued ones starts, InterruptedRun (143)."""
    from stablenas.errors import InterruptedRun

    tasks = [(f"t{i}", str(tmp_path)) for i in range(8)]
    got: list[dict] = []

    def send(pids):
        time.sleep(0.3)
        os.kill(os.getpid() if target == "parent" else pids[0], signal.SIGTERM)

    watcher = _when_started(tmp_path, 2, send)
    t0 = time.perf_counter()
    with pytest.raises(InterruptedRun, match="run the same command again") as info:
        LocalBackend(jobs=2).run(_run_until_signalled, tasks, got.append, key=lambda t: t[0])
    watcher.join(5)
    assert info.value.exit_code == 143
    started = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".started"))
    saved = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".saved"))
    assert len(started) == 2, started
    assert [s.replace(".saved", "") for s in saved] == [s.replace(".started", "") for s in started]
    assert got == []
    assert time.perf_counter() - t0 < 25.0  # a task runs 30 s unless stopped
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _sleep_without_handler(task: tuple[str, str]) -> dict:
    """A stand-in for the moment between two runs of a study unit (search done, retraining not yet
    begun): ~30 s with no run's signal handler on."""
    name, folder = task
    with open(os.path.join(folder, f"{name}.started"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(30)
    return {"name": name}


@pytest.mark.parametrize("task", ["in-a-run", "between-runs"])
def test_one_job_stops_on_a_signal_with_the_resume_message(tmp_path, task):
    """--jobs 1 runs the tasks in this process. SIGTERM inside a run: it saves and no further task
    starts; between two runs (before: the default action, the process gone without a word, here the
    test process itself): InterruptedRun at once, exit code 143, the handlers restored."""
    from stablenas.errors import InterruptedRun

    fn = _run_until_signalled if task == "in-a-run" else _sleep_without_handler
    tasks = [(f"t{i}", str(tmp_path)) for i in range(3)]
    got: list[dict] = []
    watcher = _when_started(tmp_path, 1, lambda pids: (time.sleep(0.3), os.kill(os.getpid(), signal.SIGTERM)))
    t0 = time.perf_counter()
    with pytest.raises(InterruptedRun, match=r"SIGTERM.*0 of 3 finished.*run the same command again") as info:
        LocalBackend(jobs=1).run(fn, tasks, got.append, key=lambda t: t[0])
    watcher.join(5)
    assert info.value.exit_code == 143
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".started")) == ["t0.started"]
    assert (tmp_path / "t0.saved").exists() == (task == "in-a-run")
    assert got == [] and time.perf_counter() - t0 < 10.0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _kill_first_worker(run_dir, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the process writing ``run_dir`` once its first epoch is checkpointed (the pid is in run.lock)."""
    lock, metrics = run_dir / "run.lock", run_dir / "metrics.jsonl"
    while not stop.is_set():
        try:
            if metrics.exists() and metrics.read_text().count("\n") >= 1 and lock.exists():
                pid = int(lock.read_text().split()[0])
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.005)


def test_ray_cluster_runs_a_sweep_to_the_local_table_and_survives_a_killed_worker(tmp_path, tiny_overrides):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'stablenas[ray]')")
    plan = SweepPlan(config="darts", seeds=[0, 1], final="none",
                     overrides=[*tiny_overrides, "space=s5", "optim.epochs=4", "threads=1"])
    scores = lambda cands: [0.5, 0.6]  # noqa: E731 - selection is not what this test is about
    local = run_sweep(plan, tmp_path / "local", scorer=scores, log=lambda _m: None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        killed: list[int] = []
        stop = threading.Event()
        target = tmp_path / "ray" / "search" / "seed0"
        watcher = threading.Thread(target=_kill_first_worker, args=(target, killed, stop), daemon=True)
        watcher.start()
        t = run_sweep(plan, tmp_path / "ray", scorer=scores, log=lambda _m: None,
                      backend=RayBackend(num_cpus=1, max_retries=2))
        stop.set()
        watcher.join()
    finally:
        ray.shutdown()
    assert killed, "the worker finished before it could be killed"
    # the retried task resumed from its checkpoint: 4 epoch records, same genotype and alpha as uninterrupted
    for name in ("seed0", "seed1"):
        recs = [json.loads(x) for x in (tmp_path / "ray" / "search" / name / "metrics.jsonl").read_text().splitlines()]
        ref = [json.loads(x) for x in (tmp_path / "local" / "search" / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
        assert [r["op_weights"] for r in recs] == [r["op_weights"] for r in ref]
    assert [r["genotype"] for r in t["runs"]] == [r["genotype"] for r in local["runs"]]
    assert t["selected"] == local["selected"] == "seed1"
    assert "| seed1 (selected) |" in (tmp_path / "ray" / "table.md").read_text()


def test_ray_driver_stops_on_a_signal_like_the_local_pool(tmp_path):
    """SIGINT to a Ray driver: the running task is cancelled (Ray raises the interrupt in it: it saves),
    no queued task starts, InterruptedRun with the local pool's line (exit 130), handlers restored."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'stablenas[ray]')")
    import sys

    from stablenas.errors import InterruptedRun

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the task lives in this test module
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tasks = [(f"t{i}", str(tmp_path)) for i in range(3)]
        got: list[dict] = []
        watcher = _when_started(tmp_path, 1, lambda pids: (time.sleep(0.3), os.kill(os.getpid(), signal.SIGINT)))
        with pytest.raises(InterruptedRun, match=r"SIGINT.*0 of 3 finished.*run the same command again") as info:
            RayBackend(num_cpus=1, jobs=1).run(_run_until_signalled, tasks, got.append)
        watcher.join(5)
    finally:
        ray.shutdown()
    assert info.value.exit_code == 130 and got == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t0.saved", "t0.started"]
    assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_outside_any_run_says_the_interrupted_line(tmp_path, monkeypatch, capsys):
    """A KeyboardInterrupt escaping a command (a second Ctrl-C, or one where no run has its handler)
    ends with the interrupted line and exit 130, not typer's silent 130."""
    from stablenas import cli
    from stablenas.experiments import study

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run_study", interrupted)
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "cpu-collapse", "--out", str(tmp_path / "s")])
    assert e.value.code == 130
    assert capsys.readouterr().err == cli.INTERRUPTED + "\n"
