"""One writer per run directory: ``run.lock`` held with ``fcntl.flock``.

The kernel releases the lock when its process dies, so a lock left by a killed run is taken over;
a second live writer is refused with the pid of the first.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import (
    RunDirError,
    RunLockedError,
)
from ..utils import disk_full

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
