"""Curvature of the validation loss with respect to alpha (robust-darts Sec. 4).

Everything here works on the *flat* alpha vector (``ArchParams.flat`` / ``unflatten``: the valid,
unpadded entries of every cell type in one vector) and only ever touches the Hessian through
Hessian-vector products computed by double backward. Finite differences in alpha are not an
option: ReLU and max-pool kinks make them wrong by large factors, whereas double
backward is exact for the piecewise-smooth function autograd differentiates.

* :class:`AlphaObjective` is ``L_val(w, softmax(alpha))`` on a fixed list of batches, with the
  loss summed over samples and divided by their total count (the mean over all samples, whatever
  the batch sizes). BN runs in ``train`` mode by default, as in the RobustDARTS analysis, which
  computes its Hessian inside the search loop right after the epoch's steps, with the model still
  in train mode (batch statistics), on the epoch's last validation mini-batch (a random one; the
  paper: "on a randomly sampled mini-batch") -- ``src/search/train_search.py`` and ``analyze.py``
  of automl/RobustDARTS. Here the batches are fixed across epochs (less noise in the series);
  ``bn="eval"`` uses the running statistics instead. Either way the network's buffers are never
  modified: every forward substitutes cloned buffers through ``torch.func.functional_call``.
  DropPath is switched off while measuring (it regularises the inner objective; a random mask
  would also make the operator random and consume the search's RNG).
* :func:`lanczos` (default) or :func:`power_iteration` give the dominant eigenvalue from ~20
  HVPs; :func:`hessian_matrix` builds the exact matrix row by row (one HVP per alpha entry) for
  the full spectrum (robust-darts Fig. 15/16 plot the top 30 by magnitude).

``lambda_max`` is the largest *algebraic* eigenvalue, as in the reference code
(``max(eigvals(H))``); power iteration alone would return the largest-magnitude one, so it
shifts and repeats when that one is negative.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from . import distributed as dist
from .supernet.network import double_backward_mode, weights_frozen
from .utils import release_heap

if TYPE_CHECKING:
    from .supernet.arch import ArchParams
    from .supernet.mix import Mix

Batch = tuple[torch.Tensor, torch.Tensor]
MatVec = Callable[[torch.Tensor], torch.Tensor]
BN_MODES = ("train", "eval")


class LiveSearch(Protocol):
    """What a measurement reads of a running search (``methods.context.SearchContext`` has it all)."""

    net: nn.Module
    arch: ArchParams
    device: torch.device

    def mix(self, phase: str, batch: Batch | None = None) -> Mix: ...
    def fixed_val_batches(self, n: int = 1, batch_size: int | None = None, seed_offset: int = 7) -> list[Batch]: ...


@contextmanager
def measuring_mode(net: nn.Module, bn: str):
    """Put ``net`` in the requested BN mode with DropPath off; restore both afterwards."""
    if bn not in BN_MODES:
        raise ValueError(f"bn mode {bn!r} is not one of {', '.join(BN_MODES)}")
    was_training = net.training
    drop = getattr(net, "drop_path_prob", None)
    net.train(bn == "train")
    if drop is not None:
        net.drop_path_prob = 0.0
    try:
        yield
    finally:
        net.train(was_training)
        if drop is not None:
            net.drop_path_prob = drop


def forward_keep_buffers(net: nn.Module, *args, **kwargs) -> torch.Tensor:
    """Forward with cloned buffers: train-mode BN updates the clones, never the network."""
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    return functional_call(net, buffers, args, kwargs)


class AlphaObjective:
    """``alpha_flat -> L_val`` on fixed batches; the function whose Hessian we study.

    ``edge_weights`` (PC-DARTS betas) are held fixed: curvature is taken w.r.t. alpha only.
    ``alpha_l2`` adds ``alpha_l2/2 * ||alpha||^2`` (the RobustDARTS code adds the architecture
    weight decay's gradient before differentiating again, i.e. ``+ alpha_l2 * I`` on H).
    ``skip``: the weight of DARTS-'s auxiliary skip path (``Mix.skip``), part of the supernet's function.
    """

    def __init__(self, net: nn.Module, arch: ArchParams, batches: Sequence[Batch], *, bn: str = "train",
                 edge_weights: dict[str, torch.Tensor] | None = None, alpha_l2: float = 0.0,
                 skip: float | None = None):
        if not batches:
            raise ValueError("AlphaObjective needs at least one batch")
        if bn not in BN_MODES:
            raise ValueError(f"bn mode {bn!r} is not one of {', '.join(BN_MODES)}")
        self.net = net
        self.arch = arch
        self.batches = list(batches)
        self.bn = bn
        self.edge_weights = None if edge_weights is None else {k: v.detach() for k, v in edge_weights.items()}
        self.alpha_l2 = float(alpha_l2)
        self.skip = skip
        self.count = sum(int(y.shape[0]) for _, y in self.batches)

    @classmethod
    def from_search(cls, search: LiveSearch, *, batches: int = 1, batch_size: int | None = None,
                    bn: str = "train", alpha_l2: float = 0.0) -> AlphaObjective:
        data = validation_batches(search, batches, batch_size)
        ew = search.arch.edge_weights()
        # the auxiliary skip weight the search's validation passes use (DARTS-); a sampling
        # transform (GDAS eval: sample) must not consume the search's RNG for it
        with torch.random.fork_rng(devices=[search.device] if search.device.type == "cuda" else []):
            skip = search.mix("eval").skip
        return cls(search.net, search.arch, data, bn=bn, edge_weights=ew, alpha_l2=alpha_l2, skip=skip)

    def alpha0(self) -> torch.Tensor:
        return self.arch.flat().detach().clone()

    def batch_loss(self, flat: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Summed cross-entropy of one batch (divide by ``count`` for the mean)."""
        x, y = batch
        weights = self.arch.op_weights(self.arch.unflatten(flat))
        kw = {} if self.skip is None else {"skip": self.skip}
        logits = forward_keep_buffers(self.net, x, weights, self.edge_weights, None, **kw)
        return F.cross_entropy(logits, y, reduction="sum")

    def l2(self, flat: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.alpha_l2 * flat.pow(2).sum()

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        """Mean loss over all samples (use inside :func:`measuring_mode`)."""
        total = sum(self.batch_loss(flat, b) for b in self.batches) / self.count
        return total + self.l2(flat) if self.alpha_l2 else total

    @contextmanager
    def mode(self):
        with measuring_mode(self.net, self.bn), double_backward_mode(self.net), weights_frozen(self.net):
            yield


class HVP:
    """Hessian-vector products of an :class:`AlphaObjective` at ``alpha`` by double backward.

    ``retain=True`` builds each batch's gradient graph once (``create_graph``) and reuses it for
    every product (one backward per batch per product); ``retain=False`` rebuilds it per product
    (forward + backward + double backward each time) to keep only one batch's graph in memory.
    Use as a context manager so the mode switch and the retained graphs end together.
    """

    def __init__(self, objective: AlphaObjective, alpha: torch.Tensor | None = None, *, retain: bool = True):
        self.obj = objective
        self.alpha = (objective.alpha0() if alpha is None else alpha.detach().clone()).requires_grad_(True)
        self.retain = retain
        self.n = self.alpha.numel()
        self.calls = 0
        self._grads: list[torch.Tensor] | None = None
        self._ctx = None

    def __enter__(self) -> HVP:
        self._ctx = self.obj.mode()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._grads = None
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
            self._ctx = None

    def _grad(self, batch: Batch) -> torch.Tensor:
        loss = self.obj.batch_loss(self.alpha, batch) / self.obj.count
        (g,) = torch.autograd.grad(loss, self.alpha, create_graph=True)
        return g

    def gradient(self) -> torch.Tensor:
        """grad_alpha of the objective (L2 term included), detached."""
        if self.retain:
            self._build()
            g = sum(gb.detach() for gb in self._grads)
        else:
            g = sum(self._grad(b).detach() for b in self.obj.batches)
        (g,) = dist.all_reduce_mean([g])  # data parallel: the job's objective (each rank its slices)
        return g + self.obj.alpha_l2 * self.alpha.detach()

    def _build(self) -> None:
        if self._grads is None:
            self._grads = [self._grad(b) for b in self.obj.batches]
            if self.alpha.device.type == "cpu":
                # the create_graph backward frees its temporary gradient maps in growing sizes (last
                # cell to first), so the products could not reuse the holes and glibc kept them
                # resident: one lambda_max estimate at the cpu-study size, peak RSS growth 2,224-2,308 MB
                # without this vs 1,788 MB with it (the retained graph itself is untouched)
                release_heap()

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.alpha)
        self.calls += 1
        out = torch.zeros_like(self.alpha)
        if self.retain:
            self._build()
            for g in self._grads:
                (hv,) = torch.autograd.grad(g, self.alpha, grad_outputs=v, retain_graph=True)
                out = out + hv
        else:
            for b in self.obj.batches:
                g = self._grad(b)
                (hv,) = torch.autograd.grad(g, self.alpha, grad_outputs=v)
                out = out + hv
        (out,) = dist.all_reduce_mean([out])  # one collective per product: the same Lanczos on every rank
        if self.obj.alpha_l2:
            out = out + self.obj.alpha_l2 * v
        return out.detach()

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Rows ``H v`` for the rows v of ``V`` (k, n): one vmapped backward per batch when the
        graph is retained (``is_grads_batched``), else a loop of products."""
        V = V.to(self.alpha)
        if self.retain:
            self._build()
            try:
                out = torch.zeros_like(V)
                for g in self._grads:
                    (hv,) = torch.autograd.grad(g, self.alpha, grad_outputs=V, retain_graph=True,
                                                is_grads_batched=True)
                    out = out + hv
                (out,) = dist.all_reduce_mean([out])
                self.calls += V.shape[0]
                if self.obj.alpha_l2:
                    out = out + self.obj.alpha_l2 * V
                return out.detach()
            except RuntimeError:  # an op without a batching rule: fall back to single products
                pass
        return torch.stack([self(v) for v in V])


# --------------------------------------------------------------------------------------------
# eigen-solvers on a mat-vec


def _start_vector(n: int, like: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    v = torch.randn(n, generator=g, dtype=torch.float64).to(like)
    return v / torch.linalg.vector_norm(v)


def lanczos(matvec: MatVec, n: int, iters: int = 20, *, like: torch.Tensor | None = None, seed: int = 0,
            tol: float = 1e-10, rtol: float | None = None) -> torch.Tensor:
    """Ritz values (ascending) after ``min(iters, n)`` Lanczos steps with full reorthogonalisation.

    The extreme Ritz values converge first; with ``iters >= n`` they are the whole spectrum.
    The small tridiagonal problem is solved in float64. With ``rtol``, stop early once the largest
    Ritz value moved by less than ``rtol`` (relative) in the last step: each HVP costs a forward and
    two backwards, so the few host syncs of this check are free by comparison.
    """
    like = like if like is not None else torch.zeros(1)
    m = max(1, min(int(iters), n))
    q = _start_vector(n, like, seed)
    Q = torch.zeros(m, n, dtype=q.dtype, device=q.device)
    a_list: list[torch.Tensor] = []
    b_list: list[torch.Tensor] = []
    prev = float("nan")
    for j in range(m):
        Q[j] = q
        w = matvec(q)
        a = torch.dot(w, q)
        a_list.append(a)
        basis = Q[: j + 1]
        for _ in range(2):  # classical Gram-Schmidt twice = numerically orthogonal
            w = w - basis.T @ (basis @ w)
        if j == m - 1:
            break
        b = torch.linalg.vector_norm(w)
        if float(b) <= tol * max(1.0, float(a.abs())):  # invariant subspace found: T is exact
            break
        b_list.append(b)
        q = w / b
        if rtol is not None and j >= 2:
            top = float(_tridiagonal_eigvals(a_list, b_list)[-1])
            if j >= 3 and abs(top - prev) <= rtol * max(abs(top), 1e-12):
                break
            prev = top
    return _tridiagonal_eigvals(a_list, b_list)


def _tridiagonal_eigvals(a_list: list[torch.Tensor], b_list: list[torch.Tensor]) -> torch.Tensor:
    """Eigenvalues (ascending, float64) of the Lanczos tridiagonal matrix built so far."""
    k = len(a_list)
    T = torch.diag(torch.stack(a_list).double().cpu())
    if k > 1:
        off = torch.stack(b_list[: k - 1]).double().cpu()
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(T)


def power_iteration(matvec: MatVec, n: int, iters: int = 100, *, like: torch.Tensor | None = None,
                    seed: int = 0, tol: float = 1e-4) -> tuple[float, int]:
    """Largest algebraic eigenvalue by power iteration; returns (value, products used).

    Power iteration converges to the largest-*magnitude* eigenvalue mu; if that is negative,
    iterate again on ``H - mu I`` (whose dominant eigenvalue is lambda_max - mu >= 0).
    """
    like = like if like is not None else torch.zeros(1)

    def run(op: MatVec) -> tuple[float, int]:
        v = _start_vector(n, like, seed)
        lam = None
        for i in range(1, int(iters) + 1):
            hv = op(v)
            new = float(torch.dot(v, hv))
            norm = torch.linalg.vector_norm(hv)
            if float(norm) == 0.0:
                return 0.0, i
            v = hv / norm
            if lam is not None and abs(new - lam) <= tol * max(abs(new), 1e-12):
                return new, i
            lam = new
        return float(lam), int(iters)

    mu, used = run(matvec)
    if mu >= 0:
        return mu, used
    shifted, used2 = run(lambda v: matvec(v) - mu * v)
    return shifted + mu, used + used2


def hessian_matrix(matvec: MatVec, n: int, *, like: torch.Tensor | None = None,
                   matmat: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   chunk: int = 32) -> torch.Tensor:
    """The exact n x n Hessian from n products with the unit vectors (symmetrised); ``matmat``
    takes ``chunk`` unit vectors at a time (bounded memory for big supernets)."""
    like = like if like is not None else torch.zeros(1)
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    if matmat is not None:
        H = torch.cat([matmat(eye[i:i + chunk]) for i in range(0, n, chunk)])
    else:
        H = torch.stack([matvec(eye[i]) for i in range(n)])
    return 0.5 * (H + H.T)


def top_by_magnitude(eigs: torch.Tensor, k: int) -> list[float]:
    """The k eigenvalues of largest magnitude, in that order (robust-darts Fig. 15/16)."""
    order = torch.argsort(eigs.abs(), descending=True)[:k]
    return [float(v) for v in eigs[order]]


# --------------------------------------------------------------------------------------------
# search-level entry points


def validation_batches(search: LiveSearch, n: int = 1, batch_size: int | None = None,
                       seed_offset: int = 7) -> list[Batch]:
    """``n`` fixed batches of the search's validation half (the alpha data), no augmentation.

    The same batches every call (fixed seed, loader-epoch 0), so a curvature series over epochs
    compares like with like, and the search's own validation stream is never consumed.
    """
    return search.fixed_val_batches(n, batch_size, seed_offset)


@dataclass
class Curvature:
    lambda_max: float
    ritz: list[float] = field(default_factory=list)  # Lanczos Ritz values, descending
    eigenvalues: list[float] | None = None  # exact spectrum (descending) when computed
    hvps: int = 0
    seconds: float = 0.0
    n: int = 0
    algorithm: str = "lanczos"

    def top_k(self, k: int) -> list[float]:
        if self.eigenvalues is None:
            return []
        return top_by_magnitude(torch.tensor(self.eigenvalues, dtype=torch.float64), k)


def _counted(fn: Callable, on_call: Callable[[int], None] | None, rows: bool = False) -> Callable:
    """``fn`` that reports each call (the number of HVPs it made) to ``on_call`` (progress)."""
    if on_call is None:
        return fn

    def wrapped(v):
        out = fn(v)
        on_call(int(v.shape[0]) if rows else 1)
        return out

    return wrapped


def dominant_eigenvalue(objective: AlphaObjective, *, iters: int = 20, algorithm: str = "lanczos",
                        seed: int = 0, retain: bool = True, tol: float = 1e-4,
                        rtol: float | None = 1e-3, on_hvp: Callable[[int], None] | None = None) -> Curvature:
    """lambda_max of the objective's Hessian at the current alpha, from HVPs only.

    ``iters`` caps the HVPs; Lanczos stops earlier once lambda_max moves by less than ``rtol``
    (relative) per step (``rtol=None`` always runs ``iters`` steps). ``on_hvp(n)`` is told of
    every product (progress bars)."""
    if algorithm not in ("lanczos", "power"):
        raise ValueError(f"unknown curvature algorithm {algorithm!r}; use 'lanczos' or 'power'")
    start = time.perf_counter()
    with HVP(objective, retain=retain) as hvp:
        if algorithm == "lanczos":
            ritz = lanczos(_counted(hvp, on_hvp), hvp.n, iters, like=hvp.alpha.detach(), seed=seed, rtol=rtol)
            lam = float(ritz[-1])
            ritz_list = [float(v) for v in ritz.flip(0)]
        else:
            lam, _ = power_iteration(_counted(hvp, on_hvp), hvp.n, iters, like=hvp.alpha.detach(), seed=seed,
                                     tol=tol)
            ritz_list = [lam]
        calls = hvp.calls
    return Curvature(lam, ritz_list, None, calls, time.perf_counter() - start, hvp.n, algorithm)


def exact_spectrum(objective: AlphaObjective, *, retain: bool = True, chunk: int = 32,
                   batched: bool = True, on_hvp: Callable[[int], None] | None = None
                   ) -> tuple[torch.Tensor, Curvature]:
    """The exact Hessian (rows from HVPs, ``chunk`` at a time when ``batched``) and its full
    spectrum via ``eigvalsh``; ``on_hvp(n)`` is told of every n rows computed."""
    start = time.perf_counter()
    with HVP(objective, retain=retain) as hvp:
        H = hessian_matrix(_counted(hvp, on_hvp), hvp.n, like=hvp.alpha.detach(),
                           matmat=_counted(hvp.matmat, on_hvp, rows=True) if batched else None, chunk=chunk)
        calls = hvp.calls
    eigs = torch.linalg.eigvalsh(H.double().cpu())
    desc = [float(v) for v in eigs.flip(0)]
    return H, Curvature(desc[0], [], desc, calls, time.perf_counter() - start, hvp.n, "exact")


def measure(search: LiveSearch, *, batches: int = 1, batch_size: int | None = None, bn: str = "train",
            iters: int = 20, algorithm: str = "lanczos", exact: bool = False, alpha_l2: float = 0.0,
            seed: int = 0, retain: bool = True) -> Curvature:
    """lambda_max of ``L_val`` w.r.t. alpha for a live search; ``exact`` adds the full spectrum."""
    obj = AlphaObjective.from_search(search, batches=batches, batch_size=batch_size, bn=bn, alpha_l2=alpha_l2)
    if exact or algorithm == "exact":
        _, cur = exact_spectrum(obj, retain=retain)
        return cur
    return dominant_eigenvalue(obj, iters=iters, algorithm=algorithm, seed=seed, retain=retain)


def finite(x: float) -> float | None:
    """JSON-safe float (NaN/inf -> None)."""
    return float(x) if math.isfinite(x) else None
