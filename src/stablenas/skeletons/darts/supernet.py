"""The DARTS supernet: search cells with two inputs and concatenated nodes, stacked with
reductions at 1/3 and 2/3 of the depth (Liu et al. 2019, Sec. 2.1), on the shared mixed op
(``supernet.network.MixedOp``) and its fused engine (``supernet.fused``). Its plain twin, which
the equivalence tests compare it with, is ``skeletons.darts.reference``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...spaces.catalog import SearchSpace
from ...spaces.ops import FactorizedReduce, ReLUConvBN
from ...supernet import kernels as K
from ...supernet.fused import Input, Sum, preprocess
from ...supernet.kernels import DEFAULT
from ...supernet.network import Hard, MixedOp, OpWeights, cell_op_weights, run_stem

__all__ = ["SearchCell", "SearchNetwork"]


class SearchCell(nn.Module):
    """A DARTS-skeleton search cell: 2 inputs, ``n_nodes`` intermediate nodes, concat output."""

    def __init__(self, space: SearchSpace, cell_type: str, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, partial_k: int = 1, node_norm: bool = False, aux_skip: bool = False):
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
            self.edges.append(MixedOp(C, stride, space.edge_ops[cell_type][e], partial_k=partial_k,
                                      aux_skip=aux_skip))
        # iDARTS node normalisation: static BN on each node's summed input
        self.node_norm = nn.ModuleList(nn.BatchNorm2d(C, affine=False) for _ in range(space.n_nodes)) \
            if node_norm else None
        self.node_edges = [list(space.node_edges(i)) for i in range(space.n_nodes)]
        self.sources = [src for src, _ in space.edges]
        self.engine = DEFAULT

    def _forward_fast(self, in0: Input, in1: Input, w: torch.Tensor, edge_w: torch.Tensor | None,
                      hard: Sequence[int] | None, drop_prob: float, skip: float | None = None) -> torch.Tensor:
        states = [in0.derive(preprocess(self.preprocess0, in0)), in1.derive(preprocess(self.preprocess1, in1))]
        for i, edges in enumerate(self.node_edges):
            acc = Sum()
            for e in edges:
                self.edges[e].forward_fused(states[self.sources[e]], w[e], None if hard is None else hard[e],
                                            drop_prob, None if edge_w is None else edge_w[e], acc, skip)
            s = acc.tensor()
            if self.node_norm is not None:
                s = self.node_norm[i](s)
            states.append(in1.derive(K.dense_grad(s, in1.opts)))
        return torch.cat([st.x for st in states[self.space.n_inputs:]], dim=1)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, w: torch.Tensor, edge_w: torch.Tensor | None = None,
                hard: Sequence[int] | None = None, drop_prob: float = 0.0, skip: float | None = None) -> torch.Tensor:
        if self.engine.fused:
            return self._forward_fast(Input(s0, self.engine), Input(s1, self.engine), w, edge_w, hard, drop_prob,
                                      skip)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i, edges in enumerate(self.node_edges):
            s = None
            for e in edges:
                x = states[self.sources[e]]
                y = self.edges[e](x, w[e], None if hard is None else hard[e], drop_prob)
                if edge_w is not None:
                    y = edge_w[e] * y
                if skip is not None:
                    y = y + skip * self.edges[e].auxiliary(x)
                s = y if s is None else s + y
            if self.node_norm is not None:
                s = self.node_norm[i](s)
            states.append(s)
        return torch.cat(states[self.space.n_inputs:], dim=1)


class SearchNetwork(nn.Module):
    """DARTS macro skeleton: stem, ``layers`` cells with reductions at 1/3 and 2/3, GAP, linear."""

    def __init__(self, space: SearchSpace, C: int = 16, layers: int = 8, num_classes: int = 10,
                 in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1, node_norm: bool = False,
                 aux_skip: bool = False):
        super().__init__()
        if set(space.cell_types) != {"normal", "reduce"}:  # a space of another skeleton
            raise ValueError(f"space {space.name!r} uses the {space.skeleton} skeleton; use build_supernet()")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.space = space
        self.drop_path_prob = 0.0
        self.channels_last = False
        self.engine = DEFAULT
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        reduce_at = {layers // 3, 2 * layers // 3} if layers >= 3 else set()
        for i in range(layers):
            reduction = i in reduce_at
            if reduction:
                C_curr *= 2
            cell = SearchCell(space, "reduce" if reduction else "normal", C_pp, C_p, C_curr, reduction,
                              reduction_prev, partial_k=partial_k, node_norm=node_norm, aux_skip=aux_skip)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, space.n_nodes * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor, weights: OpWeights, edge_weights: OpWeights | None = None,
                hard: Hard | None = None, skip: float | None = None) -> torch.Tensor:
        s0 = s1 = run_stem(self, x)
        if self.engine.fused:
            # cell outputs feed two cells' preprocessing: share their ReLU through Input
            in0 = in1 = Input(s1, self.engine)
            for cell, w in zip(self.cells, cell_op_weights(weights, self.cells)):
                ct = cell.cell_type
                out = cell._forward_fast(in0, in1, w,
                                         None if edge_weights is None else edge_weights[ct],
                                         None if hard is None else hard[ct], self.drop_path_prob, skip)
                in0, in1 = in1, in1.derive(out)
            s1 = in1.x
        else:
            for cell, w in zip(self.cells, cell_op_weights(weights, self.cells)):
                ct = cell.cell_type
                s0, s1 = s1, cell(s0, s1, w, None if edge_weights is None else edge_weights[ct],
                                  None if hard is None else hard[ct], self.drop_path_prob, skip)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))
