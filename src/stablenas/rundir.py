"""The one run-directory module: used by ``search``, ``train``, ``sweep`` and ``s5-table``.

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

Plan files and process pools of multi-run commands (``sweep``, ``s5-table``) live here too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import (
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
from .utils import atomic_torch_save, atomic_write_text, disk_full

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
STATUS = "status.json"
LOCK = "run.lock"
CHECKPOINT_FORMAT = 2

# files that only a stablenas run writes: their presence makes a directory a run
_RUN_MARKERS = (STATUS, CHECKPOINT, METRICS, LOCK)


# --------------------------------------------------------------------------------------------
# JSON that stays JSON


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def dumps_record(record: Mapping) -> str:
    return json.dumps(finite_json(record), allow_nan=False)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file, stopping at the first torn or invalid line (a kill mid-write)."""
    out: list[dict] = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: cannot read ({e})") from None
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(rec, dict):
            break
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------
# config comparison


def diff_keys(a: Any, b: Any, prefix: str = "", ignore: Iterable[str] = ()) -> list[str]:
    """Dotted keys where two config trees differ (floats compared with isclose)."""
    ignore = set(ignore)
    out: set[str] = set()

    def walk(x: Any, y: Any, pre: str) -> None:
        if pre in ignore:
            return
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            for k in set(x) | set(y):
                walk(x.get(k), y.get(k), f"{pre}.{k}" if pre else str(k))
            return
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                out.add(pre)
                return
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{pre}.{i}")
            return
        if isinstance(x, float) or isinstance(y, float):
            try:
                if math.isclose(float(x), float(y)) or (math.isnan(float(x)) and math.isnan(float(y))):
                    return
            except (TypeError, ValueError):
                pass
            out.add(pre)
            return
        if x != y:
            out.add(pre)

    walk(a, b, prefix)
    return sorted(out)


# --------------------------------------------------------------------------------------------
# the lock


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


# locks this process holds, by resolved path: a second RunDir of the same process takes the lock
# over (a run object dropped after an exception, then resumed in the same interpreter)
_HELD: dict[str, RunLock] = {}


def _key(path: Path) -> str:
    return str(Path(path).resolve())


def _forget_held_locks_in_child() -> None:
    """A forked child is another writer: it must not inherit (and "take over") its parent's locks. Its
    copies of the descriptors are closed (the parent's flock stays: it lives while any copy is open in
    the parent) and a lock the child asks for is taken or refused like any other process's."""
    for lock in list(_HELD.values()):
        if lock.fd is not None:
            try:
                os.close(lock.fd)
            except OSError:
                pass
            lock.fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_held_locks_in_child)


def lock_holder(path: Path) -> int | None:
    """The pid of another live process holding ``path``'s lock, or ``None`` (free, stale, absent
    or held by this process).

    Read-only: the file is opened for reading and a shared non-blocking lock is tried."""
    import fcntl

    held = _HELD.get(_key(path))
    if held is not None and held.fd is not None:
        return None

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read_pid(path) or -1
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """An exclusive ``flock`` on a file that records the holder's pid.

    The kernel drops the lock when its process dies, so a lock file left behind by a killed run
    is simply locked again (and reported as taken over).  On release the file is removed; a
    waiter that locked the removed file notices (inode changed) and retries on the new one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.took_over: int | None = None  # pid of the dead process whose lock file we took

    def acquire(self, what: str) -> None:
        import fcntl

        mine = _HELD.get(_key(self.path))
        if mine is not None and mine is not self and mine.fd is not None:
            self.fd, mine.fd = mine.fd, None  # handed over within this process
            _HELD[_key(self.path)] = self
            return
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    pid = _read_pid(self.path)
                    who = f"process {pid}" if pid else "another process"
                    raise RunLockedError(f"{what} is being written by {who} (lock {self.path}); wait for it "
                                         "to finish or stop it, then retry") from None
                raise RunDirError(f"{self.path}: cannot lock ({e.strerror})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file as we locked it: lock the new one
                os.close(fd)
                continue
            old = _read_pid(self.path)
            if old and old != os.getpid():
                self.took_over = old
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                full = disk_full(e, self.path)
                if full is None:
                    raise
                raise full from None
            self.fd = fd
            _HELD[_key(self.path)] = self
            return
        raise RunDirError(f"{self.path}: could not take the lock (the file keeps changing)")

    def release(self) -> None:
        import fcntl

        if self.fd is None:
            return
        if _HELD.get(_key(self.path)) is self:
            del _HELD[_key(self.path)]
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None


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
            from .config import load_yaml

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


# --------------------------------------------------------------------------------------------
# safe checkpoint loading


def load_checkpoint(path: str | Path, *, kind: str | None = None, map_location: Any = "cpu") -> dict:
    """A checkpoint read with ``weights_only=True``: tensors, numbers, strings, lists and dicts only.

    Anything else (a pickled object with code in ``__reduce__``, a torn write, another program's
    file, a checkpoint of another kind of run) is refused with one line."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint")
    try:
        st = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refused, torn zip, not a torch file
        msg = str(e)
        if "Unsupported global" in msg or "GLOBAL" in msg:
            why = "it holds Python objects other than tensors and numbers (refused: loading it could run code)"
        else:
            detail = next((ln.strip() for ln in msg.splitlines()[::-1] if ln.strip().startswith("Unsupported")),
                          msg.splitlines()[0][:120] if msg else "")
            why = f"not a readable checkpoint ({type(e).__name__}: {detail}; torn write or another program's file?)"
        raise CheckpointError(f"{path}: {why}; delete it to restart the run, or restore a good copy") from None
    if not isinstance(st, dict):
        raise CheckpointError(f"{path}: not a stablenas checkpoint (holds a {type(st).__name__})")
    if st.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {st.get('format')!r}, this version reads "
                              f"{CHECKPOINT_FORMAT}; delete it to restart the run")
    if kind is not None and st.get("kind") != kind:
        raise CheckpointError(f"{path}: a {st.get('kind')} checkpoint, not a {kind} one")
    return st


# --------------------------------------------------------------------------------------------
# multi-run commands: plan files and process pools


def check_plan(path: Path, plan: dict, diff: Callable[[dict, dict], list[str]], *, what: str,
               noun: str = "different settings") -> None:
    """Refuse a plan that differs from the one a multi-run directory was started with (read-only)."""
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise RunDirError(f"{path.parent} is a file, not a directory; choose another directory")
    if not path.exists():
        if path.parent.is_dir() and any(path.parent.iterdir()):
            entries = sorted(e.name for e in os.scandir(path.parent))
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise RunDirError(f"{path.parent} is not empty ({shown}) and holds no {what}; choose a new or "
                              "empty directory")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: cannot read the {what} plan ({type(e).__name__}); restore it or use "
                          "another directory") from None
    keys = diff(old, json.loads(json.dumps(plan)))
    if keys:
        raise ConfigError(f"{path.parent} holds a {what} started with {noun} ({', '.join(keys)}); "
                          "re-run with the same arguments to resume, or choose another directory")


def write_plan(path: Path, plan: dict) -> None:
    atomic_write_text(Path(path), json.dumps(plan, indent=1) + "\n")


# --------------------------------------------------------------------------------------------
# process pools: stopping on a signal
#
# Why: a pool's workers are processes of their own. SIGTERM to the parent alone (a scheduler, `kill`)
# killed it and left the workers running, each taking the tasks already handed to it; a worker
# signalled alone (Ctrl-C reaches every process of the terminal's group) saved its checkpoint but
# then started the next queued task, and the other workers ran their units to the end. Now a
# signal to the parent is passed to every worker, a signalled worker starts no further task, and
# the pool ends with InterruptedRun once every running task has saved its checkpoint.

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
    signal rule (before: a SIGTERM between two runs of a task, where no run had its handler on,
    ended the process without a word). A run's own handler checkpoints and raises; between runs the
    task stops at once; after a task no further one starts."""
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
    if not tasks:
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    done: set = set()
    finished = 0
    stop: list[int] = []
    signalled: list[bool] = []
    current: list[Any] = []

    def stop_workers(ex: Any) -> None:  # once: a second signal makes a worker's run give up its step
        if not signalled:
            signalled.append(True)
            _signal_workers(ex, signal.SIGTERM)

    def handler(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)
        for ex in current:
            stop_workers(ex)

    main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        for attempt in range(restarts + 1):
            todo = [t for t in tasks if key is None or key(t) not in done]
            try:
                with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                         initializer=_pool_worker_init) as ex:
                    current[:] = [ex]
                    futures = {ex.submit(_pool_call, fn, t): t for t in todo}
                    for f in as_completed(futures):
                        try:
                            r = f.result()
                        except BrokenProcessPool:
                            raise
                        except InterruptedRun as e:
                            # one task was signalled (or this process was): every worker saves and stops
                            if not stop:
                                stop.append(e.signum)
                            stop_workers(ex)
                            ex.shutdown(wait=True, cancel_futures=True)
                            break
                        except BaseException:
                            # a task raised: stop now, not after the whole queue (leaving the `with` would
                            # wait for every queued task); running tasks finish, the queued ones never start
                            ex.shutdown(wait=True, cancel_futures=True)
                            raise
                        if key is not None:
                            done.add(key(futures[f]))
                        finished += 1
                        on_done(r)
                    else:
                        if not stop or finished == len(tasks):
                            return
                    ex.shutdown(wait=True, cancel_futures=True)
                break
            except BrokenProcessPool:
                if stop:
                    break
                if key is None or attempt == restarts:
                    raise
                if log:
                    log(f"a worker process died; restarting the pool (attempt {attempt + 2}/{restarts + 1})")
            finally:
                current.clear()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if stop:
        raise InterruptedRun(_stopped_message(stop[0], finished, len(tasks)), stop[0])


__all__ = [
    "CHECKPOINT",
    "LOCK",
    "METRICS",
    "STATUS",
    "RunDir",
    "RunLock",
    "Status",
    "check_plan",
    "diff_keys",
    "dumps_record",
    "finite_json",
    "load_checkpoint",
    "lock_holder",
    "read_jsonl",
    "run_pool",
    "write_plan",
]
