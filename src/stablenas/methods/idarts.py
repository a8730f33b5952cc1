"""iDARTS (Wang et al., idarts.txt Sec. III-C): node normalisation + decorrelation discretisation.

Node normalisation is in the supernet (``network.node_norm: true``): a static BN (no affine) on
each intermediate node's summed input, so every node, skip-connected or not, feeds the next ops
at the same scale ("pre-normalization", Fig. 4a).

Decorrelation discretisation (Algorithm 1, eq. 6) is registered as the discretiser
``decorrelation`` so any optimiser can use it (``search.discretizer: decorrelation``). On a held-out
set (5,000 random images of the search's training data, Sec. IV-A) it looks, per node, for the
candidate (incoming edge, op) whose output is most similar (cosine, averaged over the cells of the
type) to the node output y = sum of the node's mixed edges, then removes that op's component from
*every* node output, and repeats until each node has its inputs. Each step takes the best
(node, candidate) pair over the nodes that still need inputs; a node's inputs are distinct edges;
`none` is never a DARTS-skeleton candidate and is an NB201 candidate of cosine 0.

Everything is linear in the op outputs, so one pass over the held-out set accumulates, per cell,
the Gram matrix of the candidates' outputs and the node outputs (float64), and the greedy loop runs
exactly on those small matrices (coefficient vectors instead of feature maps). ``projection:
span`` keeps each residual orthogonal to all ops selected so far (Alg. 1 line 6 "orthogonalize by
all selected operators": the new op is Gram-Schmidt-orthogonalised against the earlier ones
before eq. 6); ``sequential`` applies eq. 6 with the raw op output.

Cost: a full forward of the held-out set; the Gram matrices add (ops + nodes)^2 * features per
image per cell. The paper applies it once, at the end; so does this discretiser by default
(``every_epoch: false``: earlier epoch records use the value-based rule).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from .. import distributed as dist
from ..data import TensorLoader
from ..genotype import Genotype
from ..registry import DISCRETIZERS, OPS, SKELETONS
from ..skeletons.darts.supernet import SearchCell
from ..skeletons.nb201.supernet import NB201SearchCell
from ..supernet.mix import Mix
from ..supernet.network import MixedOp, channel_shuffle, engine_options
from .base import Method, MethodOptions, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class IDARTSOptions(MethodOptions):
    # held-out images for discretisation (Sec. IV-A: 5,000 on CIFAR-10)
    images: int = Field(5000, ge=1, description="held-out images of the decorrelation discretisation")
    # all = whole search data (the paper's training set)
    split: Literal["all", "train", "val"] = Field(
        "all",
        description="where they come from: all search data, or its train or val half")
    # forward batch; one cell's op outputs for a batch are held at once
    batch_size: int = Field(
        64, ge=1,
        description="forward batch of that pass (one cell's op outputs for a batch are held at once)")
    projection: Literal["span", "sequential"] = Field(
        "span",
        description="span: orthogonalise each op against the ops selected so far; sequential: raw op outputs")
    # decorrelation for every epoch record too (a held-out pass each)
    every_epoch: bool = Field(
        False,
        description="discretise by decorrelation for every epoch's record too (one held-out pass each)")


@register_method
class IDARTS(Method):
    """iDARTS; its options configure the ``decorrelation`` discretiser (also usable without this
    method, with default options, after any optimiser)."""

    name = "idarts"
    paper = "Wang et al.: 'iDARTS: Improving DARTS by Node Normalization and Decorrelation Discretization'"
    description = "iDARTS: node normalisation (static BN per node) + decorrelation discretisation (Alg. 1)"
    preset = "idarts"
    Options = IDARTSOptions

    requires = {"search.discretizer": "decorrelation"}  # its options configure that discretiser

    def setup(self, search: SearchContext) -> None:
        cfg = search.cfg
        search.set_discretizer(DecorrelationDiscretizer(self.opts))
        if not cfg.network.node_norm:
            search.log("idarts: network.node_norm is off, so this is the decorrelation-only ablation "
                       "(idarts.txt Table II); set network.node_norm: true for iDARTS")


# ----------------------------------------------------------------------------------------------
# the greedy selection on Gram matrices (pure function: tested on constructed vectors)


def decorrelate_select(gram: torch.Tensor, node_vec: list[int],
                       candidates: list[list[tuple[int, int, int | None]]], inputs: list[int],
                       projection: str = "span") -> list[list[tuple[int, int]]]:
    """Algorithm 1 on Gram matrices.

    ``gram``: (cells, V, V) inner products of V vectors per cell (candidate op outputs and node
    outputs); ``node_vec[n]``: index of node n's output vector; ``candidates[n]``: (edge, op, vector
    index or None for a zero op) entering node n; ``inputs[n]``: how many distinct edges node n keeps.
    Returns per node the chosen (edge, op) in selection order.
    """
    G = gram.double()
    cells, V, _ = G.shape
    N = len(node_vec)
    eye = torch.eye(V, dtype=G.dtype)
    R = eye[node_vec].unsqueeze(0).repeat(cells, 1, 1)  # residual coefficients (cells, N, V)
    basis: list[torch.Tensor] = []  # orthogonalised selected ops, coefficients (cells, V)
    chosen: list[list[tuple[int, int]]] = [[] for _ in range(N)]
    diag = torch.diagonal(G, dim1=1, dim2=2)  # (cells, V)
    for _ in range(sum(inputs)):
        best, best_score = None, None
        RG = torch.einsum("cnv,cvw->cnw", R, G)  # <r_n, v_w>
        rnorm = torch.einsum("cnw,cnw->cn", RG, R).clamp_min(0).sqrt()  # ||r_n||
        for n in range(N):
            if len(chosen[n]) >= inputs[n]:
                continue
            used = {e for e, _ in chosen[n]}
            for e, k, j in candidates[n]:
                if e in used:
                    continue
                if j is None:
                    score = 0.0
                else:
                    denom = (rnorm[:, n] * diag[:, j].clamp_min(0).sqrt()).clamp_min(1e-300)
                    score = float((RG[:, n, j] / denom).mean())
                if best_score is None or score > best_score:
                    best, best_score = (n, e, k, j), score
        if best is None:
            break
        n, e, k, j = best
        chosen[n].append((e, k))
        if j is None:
            continue
        u = eye[j].unsqueeze(0).repeat(cells, 1)
        if projection == "span":
            for b in basis:
                coef = _inner(u, b, G) / _inner(b, b, G).clamp_min(1e-300)
                u = u - coef.unsqueeze(-1) * b
        uu = _inner(u, u, G)
        if float(uu.min()) <= 1e-12 * float(diag.max().clamp_min(1e-300)):
            continue  # the op lies in the span of earlier picks: nothing left to remove
        basis.append(u)
        coef = torch.einsum("cnv,cvw,cw->cn", R, G, u) / uu.unsqueeze(-1)
        R = R - coef.unsqueeze(-1) * u.unsqueeze(1)
    return chosen


def _inner(a: torch.Tensor, b: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    return torch.einsum("cv,cvw,cw->c", a, G, b)


# ----------------------------------------------------------------------------------------------
# collecting Gram matrices with forward hooks


def _candidates(space, ct: str) -> tuple[list[list[tuple[int, int]]], list[tuple[int, int]]]:
    """Per node the (edge, op) candidates, and the flat list of candidates that get a vector."""
    zero_choice = SKELETONS[space.skeleton].zero_is_choice(space)  # NB201: `none` may win an edge
    per_node, vectors = [], []
    for n in range(space.n_nodes):
        cands = []
        for e in space.node_edges(n):
            for k, name in enumerate(space.edge_ops[ct][e]):
                if OPS[name].is_zero:
                    if zero_choice:
                        cands.append((e, k))
                    continue
                cands.append((e, k))
                vectors.append((e, k))
        per_node.append(cands)
    return per_node, vectors


def _edge_vector(mixed: MixedOp, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What the edge outputs if only this op is kept: the op output, plus PC-DARTS's bypass channels."""
    if mixed.partial_k == 1:
        return y
    c = x.shape[1] // mixed.partial_k
    xb = x[:, c:]
    if mixed.bypass_pool is not None:
        xb = mixed.bypass_pool(xb)
    return channel_shuffle(torch.cat([y, xb], dim=1), mixed.partial_k)


class _GramCollector:
    """Hooks on one supernet: per search cell, the Gram matrix of [candidate op outputs, node outputs]."""

    def __init__(self, search: SearchContext, mix: Mix):
        self.space = search.space
        self.mix = mix
        self.grams: dict[str, list[torch.Tensor]] = {}
        self.vectors = {ct: _candidates(self.space, ct)[1] for ct in self.space.cell_types}
        self.handles = []
        self.cells = [c for c in search.net.modules() if isinstance(c, (SearchCell, NB201SearchCell))]
        for ci, cell in enumerate(self.cells):
            self.grams.setdefault(cell.cell_type, [])
            self.handles.append(cell.register_forward_hook(self._cell_done(ci)))
            for e, mixed in enumerate(cell.edges):
                self.handles.append(mixed.register_forward_hook(self._edge_out(ci, e)))
                for k, op in enumerate(mixed.ops):
                    self.handles.append(op.register_forward_hook(self._op_out(ci, e, k)))
        self.acc: list[torch.Tensor | None] = [None] * len(self.cells)
        self.buf: list[dict] = [{"ops": {}, "edges": {}} for _ in self.cells]

    def _op_out(self, ci: int, e: int, k: int):
        def hook(mod, inp, out):
            self.buf[ci]["ops"][(e, k)] = out
        return hook

    def _edge_out(self, ci: int, e: int):
        def hook(mod, inp, out):
            self.buf[ci]["edges"][e] = (inp[0], out)
        return hook

    def _cell_done(self, ci: int):
        def hook(mod, inp, out):
            ct = mod.cell_type
            buf = self.buf[ci]
            edge_w = None if self.mix.edge is None else self.mix.edge[ct]
            vecs = []
            for e, k in self.vectors[ct]:
                x_in, _ = buf["edges"][e]
                vecs.append(_edge_vector(mod.edges[e], x_in, buf["ops"][(e, k)]))
            for n in range(self.space.n_nodes):
                s = None
                for e in self.space.node_edges(n):
                    z = buf["edges"][e][1]
                    z = z if edge_w is None else edge_w[e] * z
                    s = z if s is None else s + z
                vecs.append(s)
            V = torch.stack([v.reshape(-1) for v in vecs]).float()
            g = (V @ V.T).double()
            self.acc[ci] = g if self.acc[ci] is None else self.acc[ci] + g
            self.buf[ci] = {"ops": {}, "edges": {}}
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def result(self) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {}
        for cell, g in zip(self.cells, self.acc):
            if g is not None:
                out.setdefault(cell.cell_type, []).append(g.cpu())
        return {ct: torch.stack(gs) for ct, gs in out.items()}


def heldout_indices(search: SearchContext, opts: IDARTSOptions) -> torch.Tensor:
    parts = {"train": [search.train_loader.indices], "val": [search.val_eval_loader.indices],
             "all": [search.train_loader.indices, search.val_eval_loader.indices]}[opts.split]
    pool = torch.cat([p if p is not None else torch.arange(len(search.dataset)) for p in parts])
    g = torch.Generator().manual_seed(search.cfg.seed * 31337 + 5)
    return pool[torch.randperm(pool.numel(), generator=g)[: opts.images]].sort().values


@torch.no_grad()
def collect_grams(search: SearchContext, opts: IDARTSOptions) -> dict[str, torch.Tensor]:
    """Per cell type, (cells, V, V) Gram matrices over the held-out set (supernet in eval mode,
    mixed by alpha's op and edge weights; method transforms are not applied)."""
    idx = heldout_indices(search, opts)
    loader = TensorLoader(search.dataset, idx, opts.batch_size, shuffle=False, drop_last=False, augment=None,
                          device=search.device, seed=0, channels_last=search.cfg.network.channels_last)
    d = dist.current()
    loader.set_shard(d.rank, d.world)  # data parallel: each rank its slice, the Gram sums reduced below
    mix = Mix(search.arch.op_weights(), search.arch.edge_weights())
    collector = _GramCollector(search, mix)
    was = search.net.training
    search.net.eval()
    try:
        loader.set_epoch(0)
        # the fused arithmetic bypasses module forwards: call every op module, so hooks see every output
        with engine_options(search.net, fused=False):
            for x, _ in loader:
                search.forward(x, mix)
    finally:
        collector.remove()
        search.net.train(was)
    grams = collector.result()
    summed = dist.all_reduce_sum([g.to(search.device) for g in grams.values()])
    return {ct: g.cpu() for ct, g in zip(grams, summed)}


def decorrelation_genotype_from_grams(space, grams: dict[str, torch.Tensor], projection: str = "span",
                                      fallback: Genotype | None = None) -> Genotype:
    """Algorithm 1 for every cell type; a cell type with no cell in the network (a shallow
    supernet without reductions) keeps ``fallback``'s cell."""
    sk = SKELETONS[space.skeleton]
    chosen: dict[str, list[list[tuple[int, int]]]] = {}
    for ct in space.cell_types:
        if ct not in grams:
            continue
        per_node, vectors = _candidates(space, ct)
        index = {ek: i for i, ek in enumerate(vectors)}
        node_vec = [len(vectors) + n for n in range(space.n_nodes)]
        cands = [[(e, k, index.get((e, k))) for e, k in node] for node in per_node]
        inputs = [sk.keep_per_node(space, n) for n in range(space.n_nodes)]
        chosen[ct] = decorrelate_select(grams[ct], node_vec, cands, inputs, projection)
    # per node the chosen (edge, op index) pairs; cell types without Gram matrices: the fallback
    return sk.genotype_of(space, chosen, fallback)


class DecorrelationDiscretizer:
    """The ``decorrelation`` discretiser: Algorithm 1 at the end of the search (and at every epoch
    with ``every_epoch``). Its options are given explicitly: the idarts method installs one with
    its own options on its search (``search.discretizer``); the registered instance, used by
    ``search.discretizer: decorrelation`` without the method, has the defaults. It remembers its
    last result for one (search, step), so the last epoch record and the result share one pass."""

    def __init__(self, opts: IDARTSOptions | None = None):
        self.opts = opts or IDARTSOptions()
        self._last: tuple[weakref.ref, int, Genotype] | None = None

    def __call__(self, search: SearchContext) -> Genotype:
        opts = self.opts
        final = search.epoch >= search.cfg.optim.epochs - 1 or search.stop_reason is not None
        if not (final or opts.every_epoch):
            return DISCRETIZERS["default"](search)
        key = search.global_step
        if self._last is not None and self._last[0]() is search and self._last[1] == key:
            return self._last[2]
        geno = decorrelation_genotype_from_grams(search.space, collect_grams(search, opts), opts.projection,
                                                 fallback=DISCRETIZERS["default"](search))
        self._last = (weakref.ref(search), key, geno)
        return geno


decorrelation_discretizer = DecorrelationDiscretizer()
DISCRETIZERS.register("decorrelation", decorrelation_discretizer)
