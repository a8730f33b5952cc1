"""The weight-sharing supernet: mixed op, search cells and the two macro skeletons.

Op weights are an *argument* of ``forward`` (see ``supernet.arch``), never stored in modules.
Per edge the mixed op computes ``sum_k w_k * op_k(x)`` over its own op list, skipping ops whose
output is identically zero (`none`): their weight still enters the softmax, so alpha's gradient
is unchanged, but no zeros are computed or stored. ``hard`` selects one op per edge (GDAS,
random search with weight sharing) and then only that op runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..spaces.ops import OPS, FactorizedReduce, Identity, ReLUConvBN, ResNetBasicBlock, build_op
from ..spaces.registry import SearchSpace

OpWeights = Mapping[str, torch.Tensor]
Hard = Mapping[str, Sequence[int]]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """ScheduledDropPath: zero whole samples with prob p, rescale survivors by 1/(1-p)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    """Weighted sum of one edge's candidate ops.

    ``partial_k > 1`` is PC-DARTS's partial channel connection: only C/K channels go through the
    ops, the rest bypass (max-pooled when the edge reduces), then channels are shuffled.
    """

    def __init__(self, C: int, stride: int, ops: Sequence[str], partial_k: int = 1, pool_bn: bool = True,
                 affine: bool = False):
        super().__init__()
        if C % partial_k:
            raise ValueError(f"partial channels: C={C} is not divisible by K={partial_k}")
        self.op_names = tuple(ops)
        self.stride = stride
        self.partial_k = partial_k
        c_op = C // partial_k
        self.ops = nn.ModuleList()
        self.active: list[int] = []  # indices of ops that are not identically zero
        for k, name in enumerate(ops):
            op = build_op(name, c_op, stride, affine)
            if pool_bn and "pool" in name:
                # DARTS: pooling outputs get a static BN so their scale matches the convs'
                op = nn.Sequential(op, nn.BatchNorm2d(c_op, affine=False))
            self.ops.append(op)
            if not OPS[name].is_zero:
                self.active.append(k)
        self.droppable = [not isinstance(op, Identity) for op in self.ops]
        self.bypass_pool = nn.MaxPool2d(2, 2) if (partial_k > 1 and stride == 2) else None

    def _out_shape_zero(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return torch.zeros_like(x)
        return torch.zeros_like(x[:, :, ::self.stride, ::self.stride])

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

    def forward(self, x: torch.Tensor, w: torch.Tensor, hard: int | None = None,
                drop_prob: float = 0.0) -> torch.Tensor:
        if self.partial_k == 1:
            return self._mix(x, w, hard, drop_prob)
        c = x.shape[1] // self.partial_k
        xa, xb = x[:, :c], x[:, c:]
        ya = self._mix(xa, w, hard, drop_prob)
        if self.bypass_pool is not None:
            xb = self.bypass_pool(xb)
        return channel_shuffle(torch.cat([ya, xb], dim=1), self.partial_k)


class SearchCell(nn.Module):
    """A DARTS-skeleton search cell: 2 inputs, ``n_nodes`` intermediate nodes, concat output."""

    def __init__(self, space: SearchSpace, cell_type: str, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, partial_k: int = 1, node_norm: bool = False):
        super().__init__()
        self.space = space
        self.cell_type = cell_type
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_pp, C, affine=False) if reduction_prev else \
            ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for e, (src, _dst) in enumerate(space.edges):
            stride = 2 if reduction and src < space.n_inputs else 1
            self.edges.append(MixedOp(C, stride, space.edge_ops[cell_type][e], partial_k=partial_k))
        # iDARTS node normalisation: static BN on each node's summed input
        self.node_norm = nn.ModuleList(nn.BatchNorm2d(C, affine=False) for _ in range(space.n_nodes)) \
            if node_norm else None
        self.node_edges = [list(space.node_edges(i)) for i in range(space.n_nodes)]
        self.sources = [src for src, _ in space.edges]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, w: torch.Tensor, edge_w: torch.Tensor | None = None,
                hard: Sequence[int] | None = None, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i, edges in enumerate(self.node_edges):
            s = None
            for e in edges:
                y = self.edges[e](states[self.sources[e]], w[e], None if hard is None else hard[e], drop_prob)
                if edge_w is not None:
                    y = edge_w[e] * y
                s = y if s is None else s + y
            if self.node_norm is not None:
                s = self.node_norm[i](s)
            states.append(s)
        return torch.cat(states[self.space.n_inputs:], dim=1)


class SearchNetwork(nn.Module):
    """DARTS macro skeleton: stem, ``layers`` cells with reductions at 1/3 and 2/3, GAP, linear."""

    def __init__(self, space: SearchSpace, C: int = 16, layers: int = 8, num_classes: int = 10,
                 in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1, node_norm: bool = False):
        super().__init__()
        if space.skeleton != "darts":
            raise ValueError(f"space {space.name!r} uses the {space.skeleton} skeleton; use build_supernet()")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.space = space
        self.drop_path_prob = 0.0
        self.channels_last = False
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        reduce_at = {layers // 3, 2 * layers // 3} if layers >= 3 else set()
        for i in range(layers):
            reduction = i in reduce_at
            if reduction:
                C_curr *= 2
            cell = SearchCell(space, "reduce" if reduction else "normal", C_pp, C_p, C_curr, reduction,
                              reduction_prev, partial_k=partial_k, node_norm=node_norm)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, space.n_nodes * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor, weights: OpWeights, edge_weights: OpWeights | None = None,
                hard: Hard | None = None) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            ct = cell.cell_type
            s0, s1 = s1, cell(s0, s1, weights[ct], None if edge_weights is None else edge_weights[ct],
                              None if hard is None else hard[ct], self.drop_path_prob)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))


class NB201SearchCell(nn.Module):
    """NAS-Bench-201 cell: node i sums mixed ops from every earlier node; output = last node."""

    def __init__(self, space: SearchSpace, C: int, partial_k: int = 1, node_norm: bool = False):
        super().__init__()
        self.space = space
        self.cell_type = "cell"
        self.edges = nn.ModuleList(
            MixedOp(C, 1, space.edge_ops["cell"][e], partial_k=partial_k, pool_bn=False)
            for e in range(space.n_edges))
        self.node_edges = [list(space.node_edges(i)) for i in range(space.n_nodes)]
        self.sources = [src for src, _ in space.edges]
        self.node_norm = nn.ModuleList(nn.BatchNorm2d(C, affine=False) for _ in range(space.n_nodes)) \
            if node_norm else None

    def forward(self, x: torch.Tensor, w: torch.Tensor, edge_w: torch.Tensor | None = None,
                hard: Sequence[int] | None = None, drop_prob: float = 0.0) -> torch.Tensor:
        states = [x]
        for i, edges in enumerate(self.node_edges):
            s = None
            for e in edges:
                y = self.edges[e](states[self.sources[e]], w[e], None if hard is None else hard[e], drop_prob)
                if edge_w is not None:
                    y = edge_w[e] * y
                s = y if s is None else s + y
            if self.node_norm is not None:
                s = self.node_norm[i](s)
            states.append(s)
        return states[-1]


class NB201SearchNetwork(nn.Module):
    """NAS-Bench-201 skeleton: stem, 3 stages of N cells (C, 2C, 4C) joined by ResNet blocks."""

    def __init__(self, space: SearchSpace, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3,
                 partial_k: int = 1, node_norm: bool = False):
        super().__init__()
        self.space = space
        self.drop_path_prob = 0.0
        self.channels_last = False
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers: list[nn.Module] = []
        c = C
        for stage in range(3):
            if stage > 0:
                layers.append(ResNetBasicBlock(c, 2 * c, 2))
                c *= 2
            layers.extend(NB201SearchCell(space, c, partial_k, node_norm) for _ in range(N))
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor, weights: OpWeights, edge_weights: OpWeights | None = None,
                hard: Hard | None = None) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        w = weights["cell"]
        ew = None if edge_weights is None else edge_weights["cell"]
        h = None if hard is None else hard["cell"]
        for cell in self.cells:
            if isinstance(cell, NB201SearchCell):
                x = cell(x, w, ew, h, self.drop_path_prob)
            else:
                x = cell(x)
        x = self.lastact(x)
        return self.classifier(self.global_pooling(x).flatten(1))


def build_supernet(space: SearchSpace, *, C: int = 16, layers: int = 8, num_classes: int = 10,
                   in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1,
                   node_norm: bool = False) -> nn.Module:
    """The supernet of a space's skeleton. For nb201, ``layers`` is cells per stage (N)."""
    if space.skeleton == "nb201":
        return NB201SearchNetwork(space, C=C, N=layers, num_classes=num_classes, in_channels=in_channels,
                                  partial_k=partial_k, node_norm=node_norm)
    return SearchNetwork(space, C=C, layers=layers, num_classes=num_classes, in_channels=in_channels,
                         stem_multiplier=stem_multiplier, partial_k=partial_k, node_norm=node_norm)
