"""Process pools of multi-run commands (``sweep``, ``study``, ``s5-table``) and how they stop.

A pool's workers are processes of their own: a signal to the parent alone (a scheduler, ``kill``)
would leave them running, and a worker signalled alone (Ctrl-C reaches the whole process group)
would save its checkpoint and start the next task. So a signal to the parent is passed to every
worker, a signalled worker starts no further task, and the pool ends with ``InterruptedRun`` once
every running task has saved its checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from ..errors import (
    InterruptedRun,
)

_WORKER_STOP: int | None = None  # in a pool worker: the signal that stopped it
_IN_TASK = False  # in a pool worker: a task is running


def _worker_signal(signum, frame) -> None:
    """A pool worker's handler where no run has its own (a run checkpoints, then raises): inside a
    task it stops the task (a second signal at once), between tasks it only keeps the next one from
    starting."""
    global _WORKER_STOP
    first = _WORKER_STOP is None
    if first:
        _WORKER_STOP = signum
    if _IN_TASK:
        if not first:
            raise KeyboardInterrupt
        raise InterruptedRun(f"stopped by {signal.Signals(signum).name} between runs", signum)


def _pool_worker_init() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _worker_signal)


def _pool_call(fn: Callable[[Any], dict], task: Any) -> dict:
    """``fn(task)`` in a pool worker, unless a signal stopped this worker already (then not started)."""
    global _WORKER_STOP, _IN_TASK
    if _WORKER_STOP is not None:
        raise InterruptedRun("not started: the worker was stopped", _WORKER_STOP)
    _IN_TASK = True
    try:
        return fn(task)
    except InterruptedRun as e:
        _WORKER_STOP = _WORKER_STOP or e.signum
        raise
    except KeyboardInterrupt:
        _WORKER_STOP = _WORKER_STOP or signal.SIGINT
        raise
    finally:
        _IN_TASK = False


def _signal_workers(ex: Any, signum: int) -> None:
    for p in list((getattr(ex, "_processes", None) or {}).values()):
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(p.pid, signum)


def _stopped_message(signum: int, finished: int, total: int) -> str:
    return (f"interrupted by {signal.Signals(signum).name}: every running task saved its checkpoint and no queued "
            f"one started ({finished} of {total} finished); run the same command again to resume")


def _run_here(fn: Callable[[Any], dict], tasks: list, on_done: Callable[[dict], None]) -> None:
    """``run_pool`` with one job: the tasks one after another in this process, under the workers'
    signal rule, so a SIGTERM between two runs of a task (where no run has its handler on) still ends
    with a word. A run's own handler checkpoints and raises; between runs the task stops at once;
    after a task no further one starts."""
    global _WORKER_STOP
    main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, _worker_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    finished = 0
    try:
        for t in tasks:
            r = _pool_call(fn, t)
            finished += 1
            on_done(r)
            if _WORKER_STOP is not None:  # signalled while on_done ran: no further task
                break
        if _WORKER_STOP is not None and finished < len(tasks):
            raise InterruptedRun(_stopped_message(_WORKER_STOP, finished, len(tasks)), _WORKER_STOP)
    except InterruptedRun as e:
        raise InterruptedRun(_stopped_message(e.signum, finished, len(tasks)), e.signum) from None
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        _WORKER_STOP = None


def run_pool(fn: Callable[[Any], dict], tasks: list, jobs: int, on_done: Callable[[dict], None], *,
             key: Callable[[Any], Any] | None = None, restarts: int = 4,
             log: Callable[[str], None] | None = None) -> None:
    """Run ``fn`` over ``tasks`` (in ``jobs`` spawned processes when > 1), calling ``on_done`` with
    each result as it arrives.  A worker killed from outside breaks the pool; with ``key`` (task ->
    result identity) the unfinished tasks are retried in a new pool up to ``restarts`` times (each
    task resumes its own run directory).  SIGINT/SIGTERM to this process, or a task interrupted by
    one, stops every worker (each running task saves its checkpoint, no queued task starts) and
    raises :class:`InterruptedRun`; a second signal raises ``KeyboardInterrupt`` at once."""
    if jobs <= 1:
        _run_here(fn, tasks, on_done)
        return
    if tasks:
        _Pool(fn, tasks, jobs, on_done, key).run(restarts, log)


class _Pool:
    """The state of one ``run_pool`` call across its restarts: finished tasks, the stopping signal."""

    def __init__(self, fn: Callable[[Any], dict], tasks: list, jobs: int, on_done: Callable[[dict], None],
                 key: Callable[[Any], Any] | None):
        self.fn, self.tasks, self.jobs, self.on_done, self.key = fn, tasks, jobs, on_done, key
        self.done: set = set()
        self.finished = 0
        self.stop: list[int] = []
        self.signalled = False
        self.current: list[Any] = []

    def stop_workers(self, ex: Any) -> None:
        """Once: a second signal makes a worker's run give up its step."""
        if not self.signalled:
            self.signalled = True
            _signal_workers(ex, signal.SIGTERM)

    def handler(self, signum, frame) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop.append(signum)
        for ex in self.current:
            self.stop_workers(ex)

    def run(self, restarts: int, log: Callable[[str], None] | None) -> None:
        from concurrent.futures.process import BrokenProcessPool

        main = threading.current_thread() is threading.main_thread()
        old = {sig: signal.signal(sig, self.handler) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            for attempt in range(restarts + 1):
                try:
                    if self.one_pool():
                        return
                    break
                except BrokenProcessPool:
                    if self.stop:
                        break
                    if self.key is None or attempt == restarts:
                        raise
                    if log:
                        log(f"a worker process died; restarting the pool (attempt {attempt + 2}/{restarts + 1})")
                finally:
                    self.current.clear()
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
        if self.stop:
            raise InterruptedRun(_stopped_message(self.stop[0], self.finished, len(self.tasks)), self.stop[0])

    def one_pool(self) -> bool:
        """One pool over the unfinished tasks; True when every result arrived and no signal came."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        todo = [t for t in self.tasks if self.key is None or self.key(t) not in self.done]
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_pool_worker_init) as ex:
            self.current[:] = [ex]
            futures = {ex.submit(_pool_call, self.fn, t): t for t in todo}
            for f in as_completed(futures):
                try:
                    r = f.result()
                except BrokenProcessPool:
                    raise
                except InterruptedRun as e:
                    # one task was signalled (or this process was): every worker saves and stops
                    if not self.stop:
                        self.stop.append(e.signum)
                    self.stop_workers(ex)
                    ex.shutdown(wait=True, cancel_futures=True)
                    return False
                except BaseException:
                    # a task raised: stop now, not after the whole queue (leaving the `with` would
                    # wait for every queued task); running tasks finish, the queued ones never start
                    ex.shutdown(wait=True, cancel_futures=True)
                    raise
                if self.key is not None:
                    self.done.add(self.key(futures[f]))
                self.finished += 1
                self.on_done(r)
            if not self.stop or self.finished == len(self.tasks):
                return True
            ex.shutdown(wait=True, cancel_futures=True)
        return False
