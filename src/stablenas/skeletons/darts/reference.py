"""DARTS's search network written plainly (every op of an edge summed in a Python loop, ``none``
included, each conv op with its own ReLU): the twin of ``skeletons.darts.supernet`` that the
equivalence tests compare it with (see ``supernet.reference``). Module names mirror the supernet's
(``stem``, ``cells.i.preprocess0``, ``cells.i.edges.e.ops.k``, ``classifier``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ...spaces.catalog import SearchSpace
from ...spaces.ops import FactorizedReduce, ReLUConvBN
from ...supernet.reference import PlainMixedOp, check_no_hard

__all__ = ["PlainCell", "PlainNetwork"]


class PlainCell(nn.Module):
    """The DARTS search cell: preprocess both inputs, each node sums a mixed op per earlier state."""

    def __init__(self, space: SearchSpace, cell_type: str, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, partial_k: int = 1, node_norm: bool = False, aux_skip: bool = False):
        super().__init__()
        self.reduction = reduction
        self.cell_type = cell_type
        self.steps = space.n_nodes
        self.multiplier = space.n_nodes
        self.preprocess0 = FactorizedReduce(C_pp, C, affine=False) if reduction_prev else \
            ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        e = 0
        for i in range(self.steps):
            for j in range(space.n_inputs + i):
                stride = 2 if reduction and j < space.n_inputs else 1
                self.edges.append(PlainMixedOp(C, stride, space.edge_ops[cell_type][e], partial_k,
                                               aux_skip=aux_skip))
                e += 1
        self.node_norm = nn.ModuleList(nn.BatchNorm2d(C, affine=False) for _ in range(self.steps)) \
            if node_norm else None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                weights2: torch.Tensor | None = None, skip: float | None = None) -> torch.Tensor:
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for i in range(self.steps):
            if weights2 is None:
                s = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            else:
                s = sum(weights2[offset + j] * self.edges[offset + j](h, weights[offset + j])
                        for j, h in enumerate(states))
            if skip is not None:  # DARTS-: beta * aux(h) beside every edge
                s = s + sum(skip * (h if self.edges[offset + j].aux is None else self.edges[offset + j].aux(h))
                            for j, h in enumerate(states))
            if self.node_norm is not None:
                s = self.node_norm[i](s)
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)


class PlainNetwork(nn.Module):
    """DARTS's search network: stem, cells (reductions at 1/3 and 2/3), global pooling, classifier."""

    def __init__(self, space: SearchSpace, C: int = 16, layers: int = 8, num_classes: int = 10,
                 in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1, node_norm: bool = False,
                 aux_skip: bool = False):
        super().__init__()
        self.space = space
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            if layers >= 3 and i in (layers // 3, 2 * layers // 3):
                C_curr *= 2
                reduction = True
            else:
                reduction = False
            cell = PlainCell(space, "reduce" if reduction else "normal", C_pp, C_p, C_curr, reduction,
                             reduction_prev, partial_k, node_norm, aux_skip)
            reduction_prev = reduction
            self.cells.append(cell)
            C_pp, C_p = C_p, cell.multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
                edge_weights: Mapping[str, torch.Tensor] | None = None, hard: None = None,
                skip: float | None = None) -> torch.Tensor:
        check_no_hard(hard)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            w2 = None if edge_weights is None else edge_weights[cell.cell_type]
            s0, s1 = s1, cell(s0, s1, weights[cell.cell_type], w2, skip)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))
