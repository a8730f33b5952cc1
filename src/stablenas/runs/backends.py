"""Where the runs of a multi-run command execute: the one backend layer of ``sweep``, ``s5-table`` and ``study``.

A multi-run command hands a backend a top-level function and its tasks; every task is one resumable
unit of work (a search, a training, a study run) that writes only its own run directory, so any
task may be run again after its process died and continues from its own checkpoint. Two backends:

- :class:`LocalBackend` (the embedded default, no extra dependency): the tasks in this process
  (``jobs`` = 1) or in ``jobs`` spawned processes; a worker killed from outside breaks the pool,
  which is restarted with the unfinished tasks.
- :class:`RayBackend` (``pip install 'stablenas[ray]'``): every task is a Ray task with declared
  resources (``num_cpus``, fractional ``num_gpus``) on a local or remote cluster
  (``address="auto"`` joins the running one); a task whose worker dies is retried by Ray
  (``max_retries``) and resumes from its checkpoint.

Results arrive through ``on_done`` in completion order; the caller keys them itself.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, InterruptedRun
from .pool import _stopped_message

__all__ = ["BACKENDS", "Backend", "LocalBackend", "RayBackend", "get_backend"]

Task = Any
OnDone = Callable[[dict], None]


@dataclass
class Backend:
    """Runs ``fn`` over tasks. Subclasses implement :meth:`run`."""

    name = "base"

    def run(self, fn: Callable[[Task], dict], tasks: list[Task], on_done: OnDone, *,
            key: Callable[[Task], Any] | None = None, log: Callable[[str], None] | None = None) -> None:
        raise NotImplementedError

    def threads_per_task(self) -> int | None:
        """torch intra-op threads for each task when the command does not say (None: torch's default)."""
        return None


@dataclass
class LocalBackend(Backend):
    """This machine: in-process for ``jobs`` <= 1, else a pool of ``jobs`` spawned processes."""

    jobs: int = 1
    restarts: int = 4
    name = "local"

    def threads_per_task(self) -> int | None:
        import os

        return max(1, (os.cpu_count() or 1) // self.jobs) if self.jobs > 1 else None

    def run(self, fn: Callable[[Task], dict], tasks: list[Task], on_done: OnDone, *,
            key: Callable[[Task], Any] | None = None, log: Callable[[str], None] | None = None) -> None:
        """With ``key`` (task -> identity) a broken pool (a worker killed from outside) is restarted
        with the unfinished tasks up to ``restarts`` times; each task resumes its own run directory
        (:func:`stablenas.runs.directory.run_pool`)."""
        from .pool import run_pool

        run_pool(fn, tasks, self.jobs, on_done, key=key, restarts=self.restarts, log=log)


@dataclass
class RayBackend(Backend):
    """Ray tasks with declared resources; a dead worker's task is retried (it resumes its run directory).

    ``address``: ``None`` starts (or reuses) a local Ray instance, ``"auto"`` joins the cluster this
    machine belongs to, ``"ray://host:10001"`` a remote one. ``jobs`` caps the tasks in flight
    (0: as many as the cluster's resources allow)."""

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3
    jobs: int = 0
    name = "ray"

    def threads_per_task(self) -> int | None:
        return max(1, int(self.num_cpus))  # what the task declared to the scheduler

    @staticmethod
    def available() -> bool:
        try:
            import ray  # noqa: F401
        except ImportError:
            return False
        return True

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray: Ray is not installed; pip install 'stablenas[ray]' (or use "
                              "--backend local)") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        return ray

    def run(self, fn: Callable[[Task], dict], tasks: list[Task], on_done: OnDone, *,
            key: Callable[[Task], Any] | None = None, log: Callable[[str], None] | None = None) -> None:
        """SIGINT/SIGTERM to this driver stop the command as the local pool does: no queued task
        starts, every running one is cancelled (Ray raises the interrupt in it: a run saves its
        checkpoint), and :class:`InterruptedRun` says so once they have ended (a second signal:
        ``KeyboardInterrupt`` at once)."""
        if not tasks:
            return
        ray = self._ray()
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries,
                            retry_exceptions=False)(fn)
        queue = list(tasks)
        limit = self.jobs if self.jobs > 0 else len(queue)
        pending: list = []
        stop: list[int] = []
        finished, cancelled = 0, False

        def handler(signum, frame):
            if stop:
                raise KeyboardInterrupt
            stop.append(signum)

        main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            while pending or (queue and not stop):
                while queue and not stop and len(pending) < limit:
                    pending.append(remote.remote(queue.pop(0)))
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.2)
                if stop and not cancelled:
                    for ref in pending:
                        ray.cancel(ref)
                    cancelled = True
                for ref in ready:
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.TaskCancelledError, InterruptedRun, KeyboardInterrupt):
                        if not stop:
                            raise
                        continue
                    finished += 1
                    on_done(result)
            if stop:
                raise InterruptedRun(_stopped_message(stop[0], finished, len(tasks)), stop[0])
        finally:
            for s, h in old.items():
                signal.signal(s, h)


BACKENDS = ("local", "ray")


def get_backend(name: str = "local", *, jobs: int = 1, address: str | None = None, num_cpus: float | None = None,
                num_gpus: float = 0.0, max_retries: int = 3) -> Backend:
    """The backend a command's ``--backend/--jobs/--address/--cpus-per-task/--gpus-per-task`` name."""
    if name == "local":
        if address is not None:
            raise ConfigError("--address is for --backend ray; the local backend runs on this machine")
        return LocalBackend(jobs=max(1, jobs))
    if name == "ray":
        if num_gpus < 0 or (num_cpus is not None and num_cpus <= 0):
            raise ConfigError("--cpus-per-task must be > 0 and --gpus-per-task >= 0 (fractions allowed: 0.25)")
        return RayBackend(address=address, num_cpus=1.0 if num_cpus is None else float(num_cpus),
                          num_gpus=float(num_gpus), max_retries=max_retries, jobs=max(0, jobs))
    raise ConfigError(f"--backend {name!r}: use one of {', '.join(BACKENDS)}")
