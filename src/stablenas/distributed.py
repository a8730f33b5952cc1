"""Data parallelism over ranks (torch.distributed): the few choke points where ranks meet.

A search or a training run launched by ``torchrun`` (or ``stablenas search --nproc N``, which starts
the ranks the same way: :mod:`stablenas.launch`) runs one copy per rank. Each rank takes a disjoint slice of every batch
(``data.batch_size`` is the *global* batch; see :meth:`stablenas.data.TensorLoader.set_shard`),
and everything else is identical on every rank: the same seed seeds the same global RNGs, so the
randomness that acts on the architecture (SDARTS-RS delta, MS-DARTS samples, GDAS Gumbel noise,
RS-ws paths, drop-path masks) is drawn identically everywhere, while augmentation draws from a
per-rank generator of the loader.

Why not ``DistributedDataParallel``: DARTS needs gradients that never come from a plain
``backward()`` (the unrolled virtual step, Hessian-vector products by double backward, PGD attack
gradients, Lanczos), and DDP's reducer neither reduces ``torch.autograd.grad`` results nor supports
double backward through its hooks. Instead every gradient is reduced where it is produced, by the
helpers below: one coalesced flat ``all_reduce`` per call (no per-tensor collectives), no host
sync beyond the collective itself. With one process every helper is the identity, so a
single-process run is bit-for-bit what it was.

After each weight step every rank holds identical weights, alpha, optimiser states and (averaged)
BN running statistics, so rank 0 alone writes the run directory and a resume restores every rank
from its checkpoint. A rank that dies breaks its peers' next collective: :func:`lost_ranks` tells
that apart from other errors and names the dead rank (the search then stops with its last checkpoint).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from .errors import StablenasError


class RankMismatchError(StablenasError):
    """Ranks that must hold the same state (alpha, weights) do not."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CURRENT = Dist()
_SUSPENDED = False  # inside local(): helpers act as in one process (tests build references)
_PEERS: list[tuple[str, int]] = []  # (host, pid) of every rank, gathered at setup: who died (lost_ranks)


def current() -> Dist:
    """The job this process belongs to (rank 0 of 1 unless :func:`setup` joined a group)."""
    return Dist() if _SUSPENDED else _CURRENT


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """The global rank the launcher gave this process (0 without one)."""
    return int(os.environ.get("RANK", "0"))


def setup(device: str = "auto", timeout_s: float = 1800.0) -> tuple[Dist, torch.device]:
    """Join the process group a launcher describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``); return the job and this rank's device: CUDA device
    ``LOCAL_RANK`` with nccl when CUDA is asked for (or ``auto`` finds it), else CPU with gloo."""
    global _CURRENT
    from .utils import resolve_device

    dev = resolve_device(device)
    if not launched():
        return current(), dev
    import torch.distributed as td

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not td.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        td.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                              device_id=dev if dev.type == "cuda" else None)
    _CURRENT = Dist(td.get_rank(), td.get_world_size(), local)
    peers: list = [None] * _CURRENT.world
    td.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    _PEERS[:] = peers
    return _CURRENT, dev


def shutdown() -> None:
    """Leave the process group (the end of a CLI command)."""
    global _CURRENT
    if _CURRENT.active:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
    _CURRENT = Dist()
    _PEERS.clear()


@contextmanager
def local() -> Iterator[None]:
    """Act as one process for a while (the helpers do nothing): reference computations in tests."""
    global _SUSPENDED
    was, _SUSPENDED = _SUSPENDED, True
    try:
        yield
    finally:
        _SUSPENDED = was


# ------------------------------------------------------------------------------------------------
# collectives (identity in one process)


def _reduce_flat(tensors: Sequence[torch.Tensor | None], mean: bool) -> list[torch.Tensor | None]:
    d = current()
    if not d.active:
        return list(tensors)
    import torch.distributed as td

    live = [(i, t) for i, t in enumerate(tensors) if t is not None]
    out: list[torch.Tensor | None] = list(tensors)
    by_dtype: dict[tuple[torch.dtype, torch.device], list[tuple[int, torch.Tensor]]] = {}
    for i, t in live:
        by_dtype.setdefault((t.dtype, t.device), []).append((i, t))
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for _, t in group])
        td.all_reduce(flat)
        if mean:
            flat = flat / d.world
        for (i, t), piece in zip(group, flat.split([t.numel() for _, t in group])):
            out[i] = piece.view(t.shape)
    return out


def all_reduce_mean(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Mean over ranks of every tensor (``None`` stays ``None``), one flat all_reduce per dtype.
    Returns new tensors; the inputs are not modified."""
    return _reduce_flat(tensors, True)


def all_reduce_sum(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Sum over ranks (sums of losses, counts, Gram matrices)."""
    return _reduce_flat(tensors, False)


def grad(outputs: torch.Tensor, inputs: Sequence[torch.Tensor], **kw) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad`` of this rank's shard loss, then averaged over ranks: the gradient of the
    global-batch loss (each shard loss is a mean over equal shards). With ``create_graph`` the result
    feeds another derivative and stays local: reduce what is finally taken from it."""
    g = torch.autograd.grad(outputs, inputs, **kw)
    if kw.get("create_graph"):
        return g
    return tuple(all_reduce_mean(g))


def reduce_grads_(params: Sequence[torch.Tensor], extra: Sequence[torch.Tensor] = (),
                  buffers: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
    """After a plain ``backward()``: average ``.grad`` of ``params`` and the float ``buffers`` (BN
    running statistics: every rank keeps the same) in place, and return ``extra`` averaged, all in
    one collective. A parameter without a gradient keeps none (the ranks agree on which are unused:
    the sampled architecture is the same everywhere)."""
    if not current().active:
        return list(extra)
    grads = [p.grad for p in params]
    floats = [b for b in buffers if b.is_floating_point()]
    red = all_reduce_mean([*grads, *floats, *extra])
    for p, g in zip(params, red[: len(grads)]):
        if g is not None:
            p.grad.copy_(g)
    for b, v in zip(floats, red[len(grads): len(grads) + len(floats)]):
        b.copy_(v)
    return list(red[len(grads) + len(floats):])


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` with rank ``src``'s values (in place, one flat broadcast per dtype)."""
    d = current()
    if not d.active:
        return
    import torch.distributed as td

    by: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        by.setdefault((t.dtype, t.device), []).append(t)
    with torch.no_grad():
        for group in by.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            td.broadcast(flat, src)
            for t, piece in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(piece.view(t.shape))


def barrier() -> None:
    if current().active:
        import torch.distributed as td

        td.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s Python object (a decision, an error line) on every rank."""
    if not current().active:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src)
    return box[0]


def agree(error: BaseException | None, what: str) -> None:
    """Rank 0 did something alone (took the run directory, read a checkpoint): raise its error on
    every rank, so no rank waits in a collective for a peer that has stopped."""
    info = broadcast_object(None if error is None else (type(error).__name__, str(error),
                                                        int(getattr(error, "exit_code", 2))))
    if error is not None:
        raise error
    if info is not None:
        name, msg, code = info
        err = StablenasError(f"{msg} (rank 0, {what})")
        err.exit_code = code
        raise err


def checksum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum and sum of squares in float64 of every tensor: equal bits on every rank iff in sync."""
    parts = [torch.stack([t.detach().double().sum(), t.detach().double().pow(2).sum()]) for t in tensors]
    return torch.cat(parts)


def check_same(tensors: Sequence[torch.Tensor], what: str) -> None:
    """All ranks hold bit-identical ``tensors`` (a checksum all_gather), else
    :class:`RankMismatchError` on every rank naming the ranks that differ."""
    d = current()
    if not d.active:
        return
    import torch.distributed as td

    mine = checksum(tensors)
    got = [torch.empty_like(mine) for _ in range(d.world)]
    td.all_gather(got, mine)
    bad = [r for r in range(d.world) if not torch.equal(got[r], got[0])]
    if bad:
        raise RankMismatchError(f"{what}: rank(s) {', '.join(map(str, bad))} hold a different state than "
                                "rank 0 (checksums differ); the ranks left lockstep (a nondeterministic op "
                                "or a rank-dependent random draw); the last checkpoint is kept")


def _gone(pid: int) -> bool:
    """Whether process ``pid`` of this machine has ended (no such process, or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def lost_ranks(error: BaseException, wait_s: float = 3.0) -> str | None:
    """``"rank N died (...)"`` when ``error`` is a collective that broke because other ranks of the
    job died (killed, crashed), else ``None``. Ranks on this machine are looked up by the pids
    gathered at :func:`setup` (a dying process closes its sockets a moment before it ends: wait up
    to ``wait_s``); in a 2-rank job a peer on another machine is the other rank."""
    d = current()
    if not d.active or not isinstance(error, RuntimeError) or len(_PEERS) != d.world:
        return None
    host = socket.gethostname()
    local = {r: pid for r, (h, pid) in enumerate(_PEERS) if h == host and r != d.rank}
    deadline = time.monotonic() + wait_s
    while True:
        dead = [r for r, pid in local.items() if _gone(pid)]
        if dead or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if dead:
        which = ", ".join(f"rank {r}" for r in dead)
        pids = ", ".join(str(local[r]) for r in dead)
        return f"{which} died (process {pids} ended mid-step)"
    if d.world == 2 and 1 - d.rank not in local:
        return f"rank {1 - d.rank} died (its connection closed: {' '.join(str(error).split())[:120]})"
    return None


__all__ = ["Dist", "RankMismatchError", "agree", "all_reduce_mean", "all_reduce_sum", "barrier", "broadcast_",
           "broadcast_object", "check_same", "current", "env_rank", "grad", "launched", "local", "lost_ranks",
           "reduce_grads_", "setup", "shutdown"]
