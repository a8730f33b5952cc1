"""The run directory: used by ``search``, ``train``, ``sweep`` and ``s5-table``.

A run directory holds the run's config (``config.yaml`` for a search, ``train.json`` for a training),
``metrics.jsonl`` (one JSON record per epoch), ``checkpoint.pt`` (atomic, safe to load),
``status.json`` (what the run is doing or how it ended) and, while a process writes it,
``run.lock``.  The rules, the same for every kind of run:

- **Nothing is written before everything is validated.**  :meth:`RunDir.check` only reads; the
  caller then builds its data and model, and only :meth:`RunDir.begin` creates the directory,
  takes the lock and writes the config.  A start that fails leaves the directory as it was.
- **A non-empty directory that is not a run is never written into**, and a run is only
  continued with ``resume``; ``resume`` on a missing or empty directory is an error.
- **One writer.**  ``run.lock`` is held with ``fcntl.flock`` (released by the kernel when the
  process dies, so a lock left by a killed process is taken over) and records the pid; a second
  writer is refused with the pid of the first.
- **Resume is checked twice**: against the config file and against the config stored in the
  checkpoint (so deleting ``config.yaml`` does not bypass the check).
- **Checkpoints are data, not code**: written via a temp file + rename, read with
  ``torch.load(weights_only=True)``; anything holding other objects is refused with one line.
- **metrics.jsonl is always valid JSON**: non-finite floats are written as ``null``; on resume
  the file is rewritten from the checkpoint's records (a kill may leave a torn line or an epoch
  past the checkpoint).

Plan files live in :mod:`stablenas.runs.records`, process pools in :mod:`stablenas.runs.pool`.
"""


from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    CheckpointError,
    ConfigError,
    DiskFullError,
    DivergedError,
    InterruptedRun,
    RunDirError,
    RunExistsError,
    RunLockedError,
    StablenasError,
)
from ..utils import atomic_torch_save, atomic_write_text, disk_full
from .checkpoint import CHECKPOINT, CHECKPOINT_FORMAT, load_checkpoint
from .lock import RunLock, lock_holder
from .records import diff_keys, dumps_record, read_jsonl

METRICS = "metrics.jsonl"
STATUS = "status.json"
LOCK = "run.lock"

# files that only a stablenas run writes: their presence makes a directory a run
_RUN_MARKERS = (STATUS, CHECKPOINT, METRICS, LOCK)


# --------------------------------------------------------------------------------------------
# status


@dataclass
class Status:
    state: str  # running | interrupted | complete | failed | diverged | new
    pid: int | None = None
    reason: str | None = None

    def __str__(self) -> str:
        if self.state == "running":
            return f"running (pid {self.pid})"
        if self.reason:
            return f"{self.state}: {self.reason}"
        return self.state


# --------------------------------------------------------------------------------------------
# the run directory


@dataclass
class Outcome:
    """How a run ended, as :meth:`RunDir.recording` writes it to ``status.json``."""

    state: str = "complete"
    reason: str | None = None

    def set(self, state: str, reason: str | None = None) -> None:
        self.state, self.reason = state, reason


@contextlib.contextmanager
def stop_signals(owner: Any, attr: str = "_signal") -> Iterator[None]:
    """While the body runs, SIGINT/SIGTERM only set ``owner.<attr>`` to the signal number: the run
    reads it after each step, saves a checkpoint there and raises :class:`InterruptedRun`. A second
    signal raises ``KeyboardInterrupt`` at once (the last checkpoint is kept). Outside the main
    thread (signals cannot be caught there) the body just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if getattr(owner, attr, None) is not None:
            raise KeyboardInterrupt
        setattr(owner, attr, signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


class RunDir:
    """One run directory of kind ``search`` or ``train`` (see the module docstring).

    ``config_name`` is the file holding the run's config; ``runtime_keys`` are config keys that
    may change between a run and its resume without changing the result (device, threads)."""

    def __init__(self, path: str | Path, *, kind: str, config_name: str,
                 runtime_keys: Iterable[str] = (),
                 differ: Callable[[dict, dict], list[str]] | None = None):
        self.path = Path(path)
        self.differ = differ
        self._ck_cache: tuple[tuple, dict] | None = None
        self.kind = kind
        self.config_name = config_name
        self.runtime_keys = tuple(runtime_keys)
        self.lock = RunLock(self.path / LOCK)
        self.created = False
        self.status_info: dict[str, Any] = {}  # more fields of every status record (e.g. the engine options)

    # -- paths ----------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / self.config_name

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def status_file(self) -> Path:
        return self.path / STATUS

    # -- read-only checks -----------------------------------------------------------------------
    def is_run(self) -> bool:
        return self.path.is_dir() and any((self.path / m).exists() for m in _RUN_MARKERS)

    def _check_kind(self) -> None:
        st = self.read_status_file()
        kind = st.get("kind") if st else None
        if kind and kind != self.kind:
            raise RunDirError(f"{self.path} holds a {kind} run, not a {self.kind} run; choose another --out")
        other = "train.json" if self.config_name != "train.json" else "config.yaml"
        if not kind and not self.config_file.exists() and (self.path / other).exists():
            raise RunDirError(f"{self.path} holds a run of another kind ({other}); choose another --out")

    def check(self, resume: bool, config: dict | None, *, extra: Mapping[str, Any] | None = None) -> None:
        """Refuse, without writing anything, a start that would damage or mix runs.

        ``config`` is the run's config as a plain dict (compared on resume with the config file and
        the checkpoint's stored config; ``None``: the directory's state only, before the config and
        the plug-ins it names are loaded); ``extra`` holds further stored fields that must match
        (the genotype of a training run)."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"--out {p} is a file, not a directory; choose a directory (new or empty)")
        if not resume:
            if p.is_dir() and self.is_run():
                self._check_kind()
                holder = lock_holder(self.lock.path)
                if holder:
                    raise RunLockedError(f"{p} is being written by process {holder}; choose another --out")
                raise RunExistsError(f"{p} already holds a run; pass --resume to continue it or choose another "
                                     "--out")
            if p.is_dir():
                try:
                    entries = sorted(e.name for e in os.scandir(p))
                except OSError as e:
                    raise RunDirError(f"--out {p}: cannot list the directory ({e.strerror})") from None
                if entries:
                    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                    raise RunDirError(f"--out {p} is not empty ({shown}) and holds no stablenas run; "
                                      "choose a new or empty directory")
            return
        # resume
        if not p.exists():
            raise RunDirError(f"--resume: {p} does not exist; start the run without --resume")
        if not self.is_run():
            what = "is empty" if not any(p.iterdir()) else "holds no stablenas run"
            raise RunDirError(f"--resume: {p} {what}; start a new run without --resume (in a new or empty "
                              "directory)")
        self._check_kind()
        holder = lock_holder(self.lock.path)
        if holder:
            raise RunLockedError(f"--resume: {p} is being written by process {holder} (running); wait for it "
                                 "or stop it first")
        if config is not None:
            self._compare(config, extra)

    def _compare(self, config: dict, extra: Mapping[str, Any] | None) -> None:
        now = {"config": config, **dict(extra or {})}
        saved = self.read_config()
        if saved is not None:
            if self.config_name.endswith(".json") and isinstance(saved, dict):
                stored = {"config": saved.get("config"), **{k: saved.get(k) for k in (extra or {})}}
            else:
                stored = {"config": saved}
            self._raise_diff(stored, now, where=self.config_name)
        if self.checkpoint.exists():
            ck = self.load_checkpoint()
            if not isinstance(ck.get("config"), dict):
                raise CheckpointError(f"{self.checkpoint}: holds no config to check the resume against")
            stored = {"config": ck["config"], **{k: ck.get(k) for k in (extra or {})}}
            self._raise_diff(stored, now, where=CHECKPOINT)

    def _raise_diff(self, saved: dict, now: dict, *, where: str) -> None:
        if self.differ is not None:
            keys = self.differ(saved, now)
        else:
            keys = [k.removeprefix("config.") for k in diff_keys(saved, now)]
            keys = [k for k in keys if not _under(k, self.runtime_keys)]
        if keys:
            shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
            hint = (f"`stablenas search {self.config_file} --out {self.path} --resume`"
                    if self.kind == "search" else "the same genotype and settings")
            raise ConfigError(f"--resume: {self.path} was started with a different config ({shown}; per its "
                              f"{where}); resume with {hint} or choose another --out")

    def read_config(self) -> Any:
        f = self.config_file
        if not f.exists():
            return None
        try:
            text = f.read_text()
            if f.suffix == ".json":
                return json.loads(text)
            from ..config import load_yaml

            return load_yaml(text)
        except Exception as e:  # noqa: BLE001 - any parse error is a corrupt file
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise RunDirError(f"{f}: cannot read the run's config ({why}); restore it or "
                              "delete it (the checkpoint carries the config too)") from None

    # -- writing ----------------------------------------------------------------------------------
    def begin(self, resume: bool, config: dict, config_text: str, *,
              extra: Mapping[str, Any] | None = None) -> None:
        """Create the directory (if new), take the lock, re-check under the lock, write the config
        (new run, or resume with the config file deleted) and mark the run running."""
        existed = self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            full = disk_full(e, self.path)
            if full is not None:
                raise full from None
            raise RunDirError(f"--out {self.path}: cannot create the directory ({e.strerror})") from None
        self.created = not existed
        try:
            self.lock.acquire(str(self.path))
            # someone else may have started here between check() and now
            if not resume:
                others = [m for m in _RUN_MARKERS if m != LOCK and (self.path / m).exists()]
                if others:
                    raise RunExistsError(f"{self.path} already holds a run; pass --resume to continue it")
            else:
                self._compare(config, extra)
            if not self.config_file.exists():
                atomic_write_text(self.config_file, config_text)
            self.set_status("running")
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Undo :meth:`begin` after a failed start: release the lock and remove what we created."""
        self.lock.release()
        if self.created:
            try:
                for f in self.path.iterdir():
                    f.unlink()
                self.path.rmdir()
            except OSError:
                pass
            self.created = False

    def end(self, state: str, reason: str | None = None) -> None:
        """Record how the run ended and release the lock. On a full disk the status file is
        overwritten in place (its block is already allocated), so ``show`` still tells why."""
        if self.lock.held:
            try:
                self.set_status(state, reason)
            except DiskFullError:
                self._status_in_place(state, reason)
            finally:
                self.lock.release()

    @contextlib.contextmanager
    def recording(self) -> Iterator[Outcome]:
        """Run the body and record how it ended in ``status.json`` (complete, interrupted, diverged,
        failed with its reason), then release the lock: :meth:`end` on every path out. The body may
        set the outcome of a normal exit itself (``outcome.set("interrupted", ...)``)."""
        outcome = Outcome()
        try:
            yield outcome
        except InterruptedRun as e:
            outcome.set("interrupted", str(e))
            raise
        except DivergedError as e:
            outcome.set("diverged", str(e))
            raise
        except DiskFullError as e:  # resumable once there is space: the checkpoint is intact
            outcome.set("interrupted", str(e))
            raise
        except StablenasError as e:
            outcome.set("failed", str(e))
            raise
        except KeyboardInterrupt:
            outcome.set("interrupted", "KeyboardInterrupt; resume with --resume from the last checkpoint")
            raise
        except BaseException as e:
            outcome.set("failed", f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
            raise
        finally:
            self.end(outcome.state, outcome.reason)

    def disk_full(self, e: DiskFullError, kept: str | None, resume: str) -> DiskFullError:
        """``e`` completed with what survives and how to go on: ``kept`` names the intact checkpoint
        (None: none yet), ``resume`` the command that continues the run."""
        if not self.is_run():  # a start that failed: begin() removed what it created
            return DiskFullError(f"{e}; nothing was kept; free space and run the command again")
        what = f"the last checkpoint ({kept}) is intact" if kept else "no checkpoint was written yet"
        return DiskFullError(f"{e}; {what}; free space and resume with {resume}")

    def _status_record(self, state: str, reason: str | None) -> str:
        rec = {"kind": self.kind, "state": state, "pid": os.getpid(), "reason": reason,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **self.status_info}
        return json.dumps(rec) + "\n"

    def set_status(self, state: str, reason: str | None = None) -> None:
        atomic_write_text(self.status_file, self._status_record(state, reason))

    def _status_in_place(self, state: str, reason: str | None) -> None:
        """Best effort when no new block can be had: rewrite status.json over its own bytes (a torn
        one reads as no status, and the checkpoint then says "interrupted")."""
        with contextlib.suppress(OSError):
            with open(self.status_file, "r+b") as f:
                f.write(self._status_record(state, reason).encode())
                f.truncate()
                f.flush()
                os.fsync(f.fileno())

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "kind": self.kind, **state}, self.checkpoint)

    def load_checkpoint(self) -> dict:
        """The checkpoint (on CPU), read safely; cached while the file is unchanged (the resume
        check and the resume itself read it once)."""
        try:
            st = os.stat(self.checkpoint)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if key is not None and self._ck_cache is not None and self._ck_cache[0] == key:
            return self._ck_cache[1]
        ck = load_checkpoint(self.checkpoint, kind=self.kind, map_location="cpu")
        if key is not None:
            self._ck_cache = (key, ck)
        return ck

    # -- metrics ------------------------------------------------------------------------------------
    def append_metrics(self, record: Mapping) -> None:
        line = dumps_record(record) + "\n"
        try:
            with open(self.metrics_file, "a") as f:
                f.write(line)
                f.flush()
        except OSError as e:  # a torn last line is dropped on read and rewritten on resume
            full = disk_full(e, self.metrics_file)
            if full is None:
                raise
            raise full from None

    def write_metrics(self, records: Iterable[Mapping]) -> None:
        atomic_write_text(self.metrics_file, "".join(dumps_record(r) + "\n" for r in records))

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_file)

    # -- status -------------------------------------------------------------------------------------
    def read_status_file(self) -> dict | None:
        try:
            st = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None
        return st if isinstance(st, dict) else None

    def status(self, finished: Callable[[], bool] | None = None) -> Status:
        """running (pid N) / interrupted / complete / failed / diverged, read without writing."""
        holder = lock_holder(self.lock.path)
        if holder:
            return Status("running", pid=holder if holder > 0 else None)
        st = self.read_status_file()
        if st:
            state = st.get("state")
            if state == "running":  # the writer died without a word (SIGKILL, power loss)
                pid = st.get("pid")
                return Status("interrupted", reason=f"process {pid} died; resume with --resume")
            if state in ("complete", "failed", "diverged", "interrupted"):
                reason = st.get("reason")
                if state == "interrupted" and not reason:
                    reason = "resume with --resume"
                return Status(state, reason=reason)
        if finished is not None and finished():
            return Status("complete")
        if self.checkpoint.exists() or self.metrics_file.exists():
            return Status("interrupted", reason="resume with --resume")
        return Status("new")


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)
