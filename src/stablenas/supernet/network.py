"""The weight-sharing supernet's shared parts: the mixed op, the engine switches and the
dispatch to a skeleton's supernet (the cells and networks live with their skeleton:
``skeletons.darts.supernet``, ``skeletons.nb201.supernet``).

Op weights are an *argument* of ``forward`` (see ``supernet.arch``), never stored in modules.
Per edge the mixed op computes ``sum_k w_k * op_k(x)`` over its own op list, skipping ops whose
output is identically zero (`none`): their weight still enters the softmax, so alpha's gradient
is unchanged, but no zeros are computed or stored. ``hard`` selects one op per edge (GDAS,
random search with weight sharing) and then only that op runs.

One forward path. The modules and parameter names are those of the plain definition
(``spaces.ops`` blocks inside ``MixedOp.ops``), so state dicts, ``functional_call`` and the
evaluation code are unaffected. Which optimisations run is an explicit attribute of every
supernet module, ``engine`` (:class:`kernels.EngineOptions`; :func:`engine_options` changes it
for a block of code, e.g. ``fused=False`` calls every op module as written so that forward hooks
see every op output). What the fused engine does, and why: ``supernet.fused`` (op arithmetic)
and ``supernet.kernels`` (kernel-level tricks).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from ..registry import SKELETONS
from ..spaces.catalog import SearchSpace
from ..spaces.ops import OPS, FactorizedReduce, Identity, build_op, drop_path
from . import kernels as K
from .fused import FUSED, Input, Phased, Scaled, Sum, factorized_reduce, op_kind
from .kernels import DEFAULT, EngineOptions

OpWeights = Mapping[str, torch.Tensor]
Hard = Mapping[str, Sequence[int]]

__all__ = ["EngineOptions", "engine_options", "weights_frozen", "MixedOp", "build_supernet", "cell_op_weights",
           "channel_shuffle", "drop_path", "run_stem"]


def _engine_modules(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(getattr(m, "engine", None), EngineOptions)]


@contextmanager
def engine_options(net: nn.Module, **changes) -> Iterator[EngineOptions]:
    """Run ``net`` (every supernet module in it) with some engine options changed, e.g.
    ``engine_options(net, fused=False)`` (every op module as written, so hooks see op outputs) or
    ``engine_options(net, double_backward=True)`` (for code that differentiates twice). A module
    without engine options (the plain reference) is left as it is."""
    mods = _engine_modules(net)
    old = [m.engine for m in mods]
    for m in mods:
        m.engine = replace(m.engine, **changes)
    try:
        yield replace(getattr(net, "engine", DEFAULT), **changes)
    finally:
        for m, o in zip(mods, old):
            m.engine = o


def set_engine(net: nn.Module, opts: EngineOptions) -> None:
    """Set the engine options of every supernet module in ``net`` (permanently)."""
    for m in _engine_modules(net):
        m.engine = opts


def double_backward_mode(net: nn.Module, enabled: bool = True):
    """``engine_options(net, double_backward=enabled)``: every depthwise conv with a depthwise-conv
    backward, for code that differentiates twice (HVPs w.r.t. alpha, the exact unrolled gradient)."""
    return engine_options(net, double_backward=bool(enabled))


@contextmanager
def weights_frozen(net: nn.Module, keep: Sequence[torch.Tensor] = ()) -> Iterator[None]:
    """``net``'s parameters, but those in ``keep``, do not require grad inside (restored after, also
    on an exception): for code that differentiates w.r.t. alpha or op weights only (the first-order
    alpha step, the SDARTS-ADV attack, the alpha Hessian), or w.r.t. alpha and a few weights (OLES's
    validation gradient of the op weights).

    Why: autograd skips the weight gradients of library kernels that no requested input needs, but
    a custom Function's ``needs_input_grad`` is fixed when its forward runs, so :class:`kernels.DWConv`
    (every depthwise conv under double backward, small 5x5 ones always) computed and, under
    ``create_graph``, recorded weight gradients nobody asked for: building the alpha-gradient graph
    and 4 Hessian-vector products took 23.4 s, 18.6 s with the weights frozen (cpu-study size, one
    thread; identical products)."""
    kept = {id(p) for p in keep}
    params = [p for p in net.parameters() if p.requires_grad and id(p) not in kept]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS channel shuffle; keeps a channels_last input channels_last."""
    b, c, h, w = x.shape
    if K.is_channels_last(x):
        y = x.permute(0, 2, 3, 1).reshape(b, h, w, groups, c // groups).transpose(3, 4).reshape(b, h, w, c)
        return y.permute(0, 3, 1, 2)
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    """Weighted sum of one edge's candidate ops.

    ``partial_k > 1`` is PC-DARTS's partial channel connection: only C/K channels go through the
    ops, the rest bypass (max-pooled when the edge reduces), then channels are shuffled.

    ``skip`` (a number, DARTS-'s beta) adds ``skip * aux(x)`` to the output, a path outside the
    candidates (no op weight, no alpha): ``aux`` is the identity on a stride-1 edge and, with
    ``aux_skip``, a FactorizedReduce of its own on a stride-2 edge (DARTS- ``model_search.py``,
    ``MixedOp``). It reads the whole input (all C channels under partial channels) and is never
    dropped (drop path) or scaled by edge weights: the cells add it beside the weighted edge.
    """

    def __init__(self, C: int, stride: int, ops: Sequence[str], partial_k: int = 1, pool_bn: bool = True,
                 affine: bool = False, aux_skip: bool = False):
        super().__init__()
        if C % partial_k:
            raise ValueError(f"partial channels: C={C} is not divisible by K={partial_k}")
        self.op_names = tuple(ops)
        self.stride = stride
        self.channels = C
        self.pool_bn, self.affine = pool_bn, affine
        self.ops = nn.ModuleList(self.build_candidate(name, C // partial_k) for name in ops)
        self.nonzero = [k for k, name in enumerate(ops) if not OPS[name].is_zero]
        self.active: list[int] = list(self.nonzero)  # the ops that run: not identically zero, not pruned
        self.droppable = [not isinstance(op, Identity) for op in self.ops]
        self.set_partial(partial_k)
        self.aux = FactorizedReduce(C, C, affine=False) if (aux_skip and stride == 2) else None
        self.engine = DEFAULT

    def build_candidate(self, name: str, c_op: int) -> nn.Module:
        """Candidate op ``name`` on ``c_op`` channels, as this edge builds it."""
        op = build_op(name, c_op, self.stride, self.affine)
        if self.pool_bn and "pool" in name:
            # DARTS: pooling outputs get a static BN so their scale matches the convs'
            op = nn.Sequential(op, nn.BatchNorm2d(c_op, affine=False))
        return op

    def set_partial(self, k: int) -> None:
        """Send 1/``k`` of the channels through the ops (the op modules must be built for it)."""
        self.partial_k = k
        # ceil_mode: on an odd map (7x7 after one reduction of 14x14) the stride-2 ops give ceil(H/2); the same
        # pooling as PC-DARTS's MaxPool2d(2, 2) on even maps
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if (k > 1 and self.stride == 2) else None
        self.__dict__.pop("_kinds", None)

    def set_candidates(self, keep: Sequence[bool]) -> None:
        """Run only the ops ``keep`` marks (progressive pruning: the others have op weight 0)."""
        self.active = [k for k in self.nonzero if keep[k]]

    def op_channels(self) -> int:
        """The channels each candidate op reads (C / K)."""
        return self.channels // self.partial_k

    def _aux_module(self) -> FactorizedReduce:
        if self.aux is None:
            raise ValueError("an auxiliary skip on a stride-2 edge needs its FactorizedReduce: build the "
                             "supernet with aux_skip=True")
        return self.aux

    def auxiliary(self, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary skip path's output (unweighted), every module as written."""
        return x if self.stride == 1 else self._aux_module()(x)

    def _out_shape_zero(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return torch.zeros_like(x)
        return torch.zeros_like(x[:, :, ::self.stride, ::self.stride])

    # -- plain path: every op module as written ---------------------------------------------
    def _mix(self, x: torch.Tensor, w: torch.Tensor, hard: int | None, drop_prob: float) -> torch.Tensor:
        ks = self.active if hard is None else ([hard] if hard in self.active else [])
        out = None
        for k in ks:
            y = self.ops[k](x)
            if drop_prob > 0.0 and self.training and self.droppable[k]:
                y = drop_path(y, drop_prob)
            y = w[k] * y
            out = y if out is None else out + y
        if out is None:
            # every selected op is `none`; keep alpha in the graph for a defined gradient
            out = self._out_shape_zero(x) * w.sum()
        return out

    # -- fast path ---------------------------------------------------------------------------
    def _mix_fast(self, inp: Input, w: torch.Tensor, hard: int | None, drop_prob: float, acc: Sum) -> None:
        """Add ``sum_k w_k op_k(x)`` into ``acc`` (in place: see :class:`Sum`)."""
        kinds = self.__dict__.get("_kinds")
        if kinds is None or len(kinds) != len(self.ops):
            kinds = self.__dict__["_kinds"] = [op_kind(op) for op in self.ops]
        ks = self.active if hard is None else ([hard] if hard in self.active else [])
        drop = drop_prob > 0.0 and self.training
        added = False
        for k in ks:
            kind = kinds[k]
            added = True
            if kind == "identity":
                acc.addcmul(inp.x, w[k])
                continue
            fused = FUSED.get(kind)
            if fused is not None:
                y = fused(self.ops[k], inp, w[k])
                if drop and self.droppable[k]:
                    y = drop_path(y.tensor() if isinstance(y, (Phased, Scaled)) else y, drop_prob)
            else:
                y = self.ops[k](inp.x)
                if drop and self.droppable[k]:
                    y = drop_path(y, drop_prob)
                y = w[k] * y
            acc.add(y)
        if not added:
            acc.add(self._out_shape_zero(inp.x) * w.sum())

    def forward_fused(self, inp: Input, w: torch.Tensor, hard: int | None, drop_prob: float,
                      edge_w: torch.Tensor | None = None, acc: Sum | None = None, skip: float | None = None) -> Sum:
        """The edge output, times ``edge_w`` when given (folded into the op weights), plus
        ``skip * aux(x)``, added into ``acc`` (a new sum when None), which is returned."""
        acc = Sum() if acc is None else acc
        if edge_w is not None:
            w = w * edge_w
        if self.partial_k == 1:
            self._mix_fast(inp, w, hard, drop_prob, acc)
        else:
            self._partial_fast(inp, w, hard, drop_prob, edge_w, acc)
        if skip is not None:
            # the stride-2 path shares relu(x)'s even/odd pixels with the skip_connect candidate
            acc.add_scaled(inp.x if self.stride == 1 else factorized_reduce(self._aux_module(), inp, None), skip)
        return acc

    def _partial_fast(self, inp: Input, w: torch.Tensor, hard: int | None, drop_prob: float,
                      edge_w: torch.Tensor | None, acc: Sum) -> None:
        """PC-DARTS: the first C/K channels mixed, the rest bypassing, shuffled; into ``acc``."""
        c = inp.x.shape[1] // self.partial_k
        part = Sum()
        self._mix_fast(inp.head(c), w, hard, drop_prob, part)
        xb = inp.x[:, c:]
        if self.bypass_pool is not None:
            xb = self.bypass_pool(xb)
        if edge_w is not None:
            xb = xb * edge_w
        acc.add(channel_shuffle(torch.cat([part.tensor(), xb], dim=1), self.partial_k))

    def forward(self, x: torch.Tensor, w: torch.Tensor, hard: int | None = None,
                drop_prob: float = 0.0, skip: float | None = None) -> torch.Tensor:
        if self.engine.fused:
            return self.forward_fused(Input(x, self.engine), w, hard, drop_prob, skip=skip).tensor()
        if self.partial_k == 1:
            y = self._mix(x, w, hard, drop_prob)
        else:
            c = x.shape[1] // self.partial_k
            xa, xb = x[:, :c], x[:, c:]
            ya = self._mix(xa, w, hard, drop_prob)
            if self.bypass_pool is not None:
                xb = self.bypass_pool(xb)
            y = channel_shuffle(torch.cat([ya, xb], dim=1), self.partial_k)
        return y if skip is None else y + skip * self.auxiliary(x)


def cell_op_weights(weights: OpWeights, cells: Sequence[nn.Module]) -> list[torch.Tensor | None]:
    """Each cell's op weights ``[edges, ops]`` (None for a cell without, e.g. NB201's ResNet blocks):
    its type's, or, when the type's tensor is per cell ``[cells of the type, edges, ops]``, its own
    row, in network order (Lambda-DARTS differentiates every cell's op weights separately)."""
    seen: dict[str, int] = {}
    out: list[torch.Tensor | None] = []
    for cell in cells:
        ct = getattr(cell, "cell_type", None)
        if ct is None:
            out.append(None)
            continue
        i = seen[ct] = seen.get(ct, -1) + 1
        w = weights[ct]
        out.append(w[i] if w.dim() == 3 else w)
    return out


def run_stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net.stem(x)``, channels_last when ``net.channels_last``, whatever the weights' strides.

    Why the output too: a conv picks its output layout from its input's and weight's strides, and a
    1-channel input or a weight with one input channel per group or a 1x1 kernel is contiguous in
    both layouts, so the layout follows the weight's strides. Weights made by arithmetic (the
    unrolled step's ``w - xi * dw``, the finite-difference ``w +- eps * v``) come back with
    channels-first strides, and the whole supernet then ran channels-first: the validation pass
    at the unrolled weights took 2.0x the time of a weight step on the same batch (measured, cpu-study
    size, one thread). Every later conv follows its (unambiguous) input, so fixing the stem's output
    fixes the network."""
    if not net.channels_last:
        return net.stem(x)
    cl = torch.channels_last
    return net.stem(x.contiguous(memory_format=cl)).contiguous(memory_format=cl)


def build_supernet(space: SearchSpace, *, C: int = 16, layers: int = 8, num_classes: int = 10,
                   in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1,
                   node_norm: bool = False, aux_skip: bool = False) -> nn.Module:
    """The supernet of a space's skeleton (:mod:`stablenas.skeletons`). For nb201, ``layers`` is
    cells per stage (N). ``aux_skip``: the modules of DARTS-'s auxiliary skip (see :class:`MixedOp`)."""
    return SKELETONS[space.skeleton].build_supernet(
        space, C=C, layers=layers, num_classes=num_classes, in_channels=in_channels,
        stem_multiplier=stem_multiplier, partial_k=partial_k, node_norm=node_norm, aux_skip=aux_skip)
