"""Diagnostics of a search beyond curvature, each from one of the papers:

* :func:`discretization_drop` (robust-darts Sec. 4.2): validation accuracy/loss of the supernet at
  alpha* versus at the discretised alpha (one-hot weights of the genotype's ops on its kept
  edges, zero on every other edge), with the *same* weights; a sharp minimum loses more.
* :func:`landscape` (sdarts Fig. 1): validation accuracy on a grid around alpha spanned by the
  normalised gradient direction grad_alpha L_val and a random direction orthogonal to it.
* :func:`alpha_distance` (ms-darts Sec. 4.2, Fig. 4): ``||alpha_t - alpha_final||`` per epoch next
  to the training loss (raw alpha when the records carry it, else the op weights; the result
  says which).
* :func:`cell_stats` (sdarts Sec. 5.6 / App. 7.4): share of parameter-free ops, cell width (in
  units of c) and depth.
* :func:`gradient_correlation` (single-darts Sec. 5.2, eq. 8): the cross term that couples the
  alpha gradient to the previous weight step, for bi-level (validation x training batch) and
  single-level (training batch with itself) updates, per edge of the first, middle and last cell.

Supernet passes run on cloned BN buffers (``curvature.forward_keep_buffers``) so an
analysis never changes the network it inspects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..curvature import HVP, AlphaObjective, forward_keep_buffers, measuring_mode, validation_batches
from ..genotype import Genotype
from ..registry import SKELETONS
from ..spaces.catalog import SearchSpace
from ..spaces.ops import OPS, is_parameter_free

if TYPE_CHECKING:
    from ..search.loop import Search

Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# discretisation


def genotype_edges(space: SearchSpace, genotype: Genotype, cell_type: str) -> list[tuple[int, str]]:
    """(edge index, op) of every connection the genotype keeps in ``cell_type``."""
    return SKELETONS[space.skeleton].genotype_edges(space, genotype, cell_type)


def discrete_op_weights(space: SearchSpace, genotype: Genotype, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """One-hot op weights of the genotype: 1 for its op on each kept edge, 0 everywhere else."""
    out = {}
    K = space.max_ops()
    for ct in space.cell_types:
        w = torch.zeros(space.n_edges, K, dtype=dtype, device=device)
        for e, op in genotype_edges(space, genotype, ct):
            ops = space.edge_ops[ct][e]
            if op not in ops:
                raise ValueError(f"{ct}: op {op!r} is not a candidate of edge {e} ({', '.join(ops)})")
            w[e, ops.index(op)] += 1.0
        out[ct] = w
    return out


def discretization_drop(search: Search, genotype: Genotype | None = None,
                        max_batches: int | None = None, bn: str = "eval") -> dict:
    """Supernet accuracy/loss at alpha* and at the discretised alpha, same weights (robust-darts Sec. 4.2);
    BN with running statistics (``bn="eval"``) or with each batch's own (``bn="train"``)."""
    from ..supernet.mix import Mix

    genotype = genotype or search.genotype()
    arch = search.arch
    with torch.no_grad():
        ew = arch.edge_weights()
        cont = Mix({k: v.detach() for k, v in arch.op_weights().items()},
                   None if ew is None else {k: v.detach() for k, v in ew.items()})
        p = next(search.net.parameters())
        disc = Mix(discrete_op_weights(search.space, genotype, device=p.device, dtype=p.dtype))
    loss_c, acc_c = search.evaluate(max_batches=max_batches, mix=cont, bn=bn)
    loss_d, acc_d = search.evaluate(max_batches=max_batches, mix=disc, bn=bn)
    return {"acc_supernet": acc_c, "acc_discrete": acc_d, "acc_drop": acc_c - acc_d,
            "loss_supernet": loss_c, "loss_discrete": loss_d, "loss_increase": loss_d - loss_c,
            "genotype": genotype.to_dict(), "batches": max_batches, "bn": bn}


# --------------------------------------------------------------------------------------------
# landscape


def eval_batches(search: Search, n: int) -> list[Batch]:
    loader = search.val_eval_loader
    return [loader.batch(0, i) for i in range(min(int(n), len(loader)))]


@torch.no_grad()
def _acc_loss(search: Search, weights: dict[str, torch.Tensor], edge,
              batches: Sequence[Batch]) -> tuple[float, float]:
    tot = torch.zeros(3, dtype=torch.float64)
    for x, y in batches:
        logits = forward_keep_buffers(search.net, x, weights, edge, None)
        tot += torch.stack([F.cross_entropy(logits, y, reduction="sum").double().cpu(),
                            (logits.argmax(1) == y).sum().double().cpu(),
                            torch.tensor(float(y.shape[0]), dtype=torch.float64)])
    loss, correct, count = tot.tolist()
    return loss / count, correct / count


def landscape(search: Search, *, grid: int = 7, radius: float = 1.0, batches: int = 2, seed: int = 0,
              bn: str = "eval", on_point: Callable[[], None] | None = None) -> dict:
    """Validation accuracy/loss at alpha + x * d_grad + y * d_rand on a ``grid`` x ``grid`` lattice
    of [-radius, radius]^2 (flat alpha units; both directions unit-norm, orthogonal); ``on_point``
    is called after each point (progress bars)."""
    if grid < 2:
        raise ValueError(f"landscape grid must be >= 2, got {grid}")
    data = eval_batches(search, batches)
    arch = search.arch
    edge = arch.edge_weights()
    edge = None if edge is None else {k: v.detach() for k, v in edge.items()}
    obj = AlphaObjective(search.net, arch, data, bn=bn, edge_weights=edge)
    with HVP(obj, retain=False) as h:
        g = h.gradient()
    a0 = arch.flat().detach()
    n = a0.numel()
    d1 = g / torch.linalg.vector_norm(g).clamp_min(1e-30)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    r = torch.randn(n, generator=gen, dtype=torch.float64).to(a0)
    r = r - torch.dot(r, d1) * d1
    d2 = r / torch.linalg.vector_norm(r).clamp_min(1e-30)
    xs = torch.linspace(-radius, radius, grid).tolist()
    acc = [[0.0] * grid for _ in range(grid)]
    loss = [[0.0] * grid for _ in range(grid)]
    with measuring_mode(search.net, bn):
        for iy, yv in enumerate(xs):
            for ix, xv in enumerate(xs):
                a = a0 + xv * d1 + yv * d2
                weights = arch.op_weights(arch.unflatten(a))
                loss[iy][ix], acc[iy][ix] = _acc_loss(search, weights, edge, data)
                if on_point is not None:
                    on_point()
    return {"x": xs, "y": xs, "acc": acc, "loss": loss, "radius": radius, "grid": grid,
            "batches": len(data), "alpha_norm": float(torch.linalg.vector_norm(a0)),
            "grad_norm": float(torch.linalg.vector_norm(g)), "bn": bn,
            "x_axis": "gradient direction of L_val (unit)", "y_axis": "random orthogonal direction (unit)"}


# --------------------------------------------------------------------------------------------
# alpha distance


def _op_weight_vector(record: dict) -> list[float]:
    ow = record.get("op_weights") or {}
    return [w for ct in sorted(ow) for edge in ow[ct] for w in edge]


def alpha_distance(metrics: Sequence[dict]) -> dict:
    """Per epoch ``||alpha_t - alpha_final||`` and the training loss (MS-DARTS Fig. 4)."""
    if not metrics:
        return {"basis": None, "epochs": [], "distance": [], "train_loss": []}
    use_alpha = all("alpha" in r for r in metrics)
    key = (lambda r: r["alpha"]) if use_alpha else _op_weight_vector
    final = torch.tensor(key(metrics[-1]), dtype=torch.float64)
    dist = []
    for r in metrics:
        v = torch.tensor(key(r), dtype=torch.float64)
        dist.append(float(torch.linalg.vector_norm(v - final)) if v.shape == final.shape else float("nan"))
    return {"basis": "alpha" if use_alpha else "op_weights", "epochs": [int(r["epoch"]) for r in metrics],
            "distance": dist, "train_loss": [float(r["train_loss"]) for r in metrics],
            "val_loss": [float(r["val_loss"]) for r in metrics]}


# --------------------------------------------------------------------------------------------
# cell statistics


def cell_stats(genotype: Genotype) -> dict:
    """Per cell type: parameter-free share, width (units of c) and depth (sdarts App. 7.4).

    Depth: connections on the longest path from an input node to the output node (DARTS: the
    edge from an intermediate node into the concatenated output counts as one connection).
    Width: sum over intermediate nodes of c times the share of their inputs that come directly
    from the cell inputs (a node fed only by other intermediate nodes adds 0). ``none`` inputs are
    not connections. For NAS-Bench-201 the output is the last node itself. The share is ``None``
    where the skeleton does not define it (the recurrent cell).
    """
    sk = genotype.skeleton

    def share(ops: list[str]) -> float | None:
        if not sk.has_param_free_share:
            return None
        return sum(map(is_parameter_free, ops)) / len(ops) if ops else 0.0

    out: dict = {}
    all_ops: list[str] = []
    for ct in sk.cell_types(genotype):
        graph = sk.cell_graph(genotype, ct)
        n_in, nodes = graph.n_inputs, graph.nodes
        ops = [op for node in nodes for _, op in node]
        all_ops += ops
        depth = [0] * n_in + [0] * len(nodes)
        reach = [True] * n_in + [False] * len(nodes)
        width = 0.0
        for i, node in enumerate(nodes):
            conn = [(src, op) for src, op in node if not OPS[op].is_zero]
            j = n_in + i
            live = [src for src, _ in conn if reach[src]]
            if live:
                reach[j] = True
                depth[j] = 1 + max(depth[s] for s in live)
            if conn:
                width += sum(1 for src, _ in conn if src < n_in) / len(conn)
        if graph.concat:  # the concatenation is one more connection
            outs = [depth[j] for j in graph.outputs if reach[j]]
            cell_depth = 1 + max(outs) if outs else 0
        else:  # the output is a node itself
            j = graph.outputs[-1]
            cell_depth = depth[j] if reach[j] else 0
        out[ct] = {"param_free_share": share(ops), "width_c": width, "depth": cell_depth, "ops": len(ops)}
    out["all"] = {"param_free_share": share(all_ops)}
    return out


# --------------------------------------------------------------------------------------------
# gradient correlation


def _edge_io(search: Search, batch: Batch,
             cells: Sequence[int]) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """Per (cell, edge): the edge input x (N, Dx) and N * d(mean loss)/d(edge output) (N, Dg)."""
    net = search.net
    all_cells = [c for c in net.cells if hasattr(c, "edges")]
    captured: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for ci in cells:
        for ei, mop in enumerate(all_cells[ci].edges):
            def hook(mod, inp, out, key=(ci, ei)):
                captured[key] = (inp[0].detach(), out)
            hooks.append(mop.register_forward_hook(hook))
    arch = search.arch
    x, y = batch
    try:
        with measuring_mode(net, "train"), _plain_modules(net):
            ew = arch.edge_weights()
            weights = {k: v.detach() for k, v in arch.op_weights().items()}
            ew = None if ew is None else {k: v.detach() for k, v in ew.items()}
            logits = forward_keep_buffers(net, x, weights, ew, None)
            loss = F.cross_entropy(logits, y)
            keys = [k for k, (_, o) in captured.items() if o.requires_grad]
            grads = torch.autograd.grad(loss, [captured[k][1] for k in keys], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    n = x.shape[0]
    out = {}
    for k, g in zip(keys, grads):
        if g is None:
            continue
        out[k] = (captured[k][0].flatten(1).double(), (g * n).flatten(1).double())
    return out


@contextmanager
def _plain_modules(net):
    """Run every op module as written (the supernet's fused arithmetic bypasses module hooks)."""
    from ..supernet.network import engine_options

    with engine_options(net, fused=False):
        yield


def _corr(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """(1/NM) sum_jk (g_a^j . g_b^k)(x_a^j . x_b^k) -- single-darts eq. 8, averaged over pairs."""
    xa, ga = a
    xb, gb = b
    s = ((ga @ gb.T) * (xa @ xb.T)).sum()
    return float(s / (xa.shape[0] * xb.shape[0]))


def has_edge_modules(search: Search) -> bool:
    """Whether the supernet has per-edge op modules to hook (the recurrent cell has none)."""
    return hasattr(search.net, "cells")


def gradient_correlation(search: Search, *, batches: int = 1) -> dict:
    """Eq. 8 of single-darts per edge of the first, middle and last cell, averaged over ``batches``
    (validation, training) batch pairs. Bi-level pairs a validation batch with a training batch;
    single-level pairs the training batch with itself (both updates use the same batch). Also the
    bi-level value normalised to a cosine (it is 1 by construction for single-level)."""
    if not has_edge_modules(search):
        return {"skipped": "the supernet has no per-edge op modules (gradient correlation is defined on them)"}
    n_cells = len([c for c in search.net.cells if hasattr(c, "edges")])
    cells = sorted({0, n_cells // 2, n_cells - 1})
    vals = validation_batches(search, batches)
    bi: dict[tuple[int, int], list[float]] = {}
    single: dict[tuple[int, int], list[float]] = {}
    bi_cos: dict[tuple[int, int], list[float]] = {}
    n_train = len(search.train_loader)
    for b in range(len(vals)):
        tb = search.train_loader.batch(0, b % n_train)
        io_t = _edge_io(search, tb, cells)
        io_v = _edge_io(search, vals[b], cells)
        for key in io_t:
            if key not in io_v:
                continue
            c_bi = _corr(io_v[key], io_t[key])
            c_tt = _corr(io_t[key], io_t[key])
            c_vv = _corr(io_v[key], io_v[key])
            bi.setdefault(key, []).append(c_bi)
            single.setdefault(key, []).append(c_tt)
            denom = math.sqrt(max(c_tt, 0.0) * max(c_vv, 0.0))
            bi_cos.setdefault(key, []).append(c_bi / denom if denom > 0 else 0.0)

    def table(d: dict) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for (ci, _ei), v in sorted(d.items()):
            out.setdefault(str(ci), []).append(sum(v) / len(v))
        return out

    bi_t, single_t, cos_t = table(bi), table(single), table(bi_cos)
    summary = {ci: {"bi": _mean(bi_t[ci]), "single": _mean(single_t[ci]), "bi_cosine": _mean(cos_t[ci])}
               for ci in bi_t}
    return {"cells": cells, "bi": bi_t, "single": single_t, "bi_cosine": cos_t, "summary": summary,
            "batches": len(vals)}


def _mean(v: Sequence[float]) -> float:
    return sum(v) / len(v) if v else float("nan")
