"""Small shared helpers: atomic writes, seeding, devices."""

from __future__ import annotations

import errno
import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, DiskFullError


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0666 minus the umask): mkstemp's temp files are 0600,
    and a run directory, report or table shared with a group must stay readable after the rename."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write via a temp file in the same directory + rename, so readers never see a torn file. A full
    file system raises :class:`DiskFullError` naming it and ``path``; the old file stays as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        full = disk_full(e, path)
        if full is None:
            raise
        raise full from None
    try:
        os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = disk_full(e, path) if isinstance(e, OSError) else None
        if full is None:
            raise
        raise full from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`: serialised in memory first, since torch's own
    file writer reports a full disk as an anonymous ``RuntimeError`` (``unexpected pos``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


_FULL = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}


def disk_full(e: OSError, path: str | Path) -> DiskFullError | None:
    """The one-line error for a write that found the file system full (ENOSPC, EDQUOT), else None."""
    why = _FULL.get(getattr(e, "errno", None))
    return None if why is None else DiskFullError(f"{why} on {filesystem(path)} while writing {path}")


def filesystem(path: str | Path) -> str:
    """``DEVICE (mounted at MOUNT)`` of the file system holding ``path`` (the mount point alone where
    /proc/self/mounts does not say)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    try:
        with open("/proc/self/mounts") as f:
            devices = {fields[1]: fields[0] for fields in (line.split() for line in f) if len(fields) > 1}
    except OSError:
        devices = {}
    dev = devices.get(str(p))
    return f"{dev} (mounted at {p})" if dev else str(p)


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without its side import of
    ``torch._inductor.config`` (only there to set inductor's flag): that import alone costs 1.1 s of
    CPU per process with torch 2.13 (measured, as much as importing torch), paid by every search and
    training process. Nothing here compiles with inductor; when it has been imported anyway, its
    flag is set as torch sets it.

    Deterministic mode also makes torch fill every new uninitialised tensor (``empty``, ``resize_``)
    with NaN (``torch.utils.deterministic.fill_uninitialized_memory``), a guard against kernels that read
    memory they never wrote; no result of a correct kernel depends on it. It is switched off: those
    fills were 22% of the profiled CPU time of a search iteration (37k ``fill_`` calls, darts space,
    cpu-study size, ``benchmarks/engine_profile.py``), and the iteration 1.12x (cpu-study) and 1.13x (paper
    size) slower with them (interleaved, one process, one thread). Bit-identical resume is unchanged."""
    import sys

    det = getattr(torch.utils, "deterministic", None)
    if det is not None and hasattr(det, "fill_uninitialized_memory"):
        det.fill_uninitialized_memory = False
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a torch without the private setter: the public call
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = True
    setter(True, warn_only=True)


def rng_state() -> dict:
    """Every global RNG as tensors, lists and ints only, so a checkpoint holding it loads with
    ``torch.load(weights_only=True)`` (numpy's state is otherwise an ndarray inside a tuple)."""
    version, py_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict = {
        "python": [int(version), list(py_state), gauss],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in py_state), gauss))
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    else:  # an in-memory state from an older version
        np.random.set_state(n)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; never hard-code .cuda() elsewhere."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


def count_parameters(module: torch.nn.Module, exclude: tuple[str, ...] = ()) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not any(n.startswith(e) for e in exclude))


def release_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them resident otherwise, and the RSS with
    them); a no-op where there is no glibc. Why: a phase whose freed temporaries leave holes that the
    next phase cannot fill (tensors allocated in growing sizes, as a backward from the last cell to
    the first does) raises the peak RSS by all of them; see ``curvature.HVP``."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
