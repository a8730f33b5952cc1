"""The backend layer of sweep / s5-table / study: local pool (default) and Ray (optional extra)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from stablenas.errors import ConfigError
from stablenas.evaluate.backends import LocalBackend, RayBackend, get_backend
from stablenas.evaluate.sweep import SweepPlan, run_sweep


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
