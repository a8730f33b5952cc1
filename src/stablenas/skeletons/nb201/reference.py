"""NAS-Bench-201's search network written plainly: the twin of ``skeletons.nb201.supernet`` that the
equivalence tests compare it with (see ``supernet.reference``), in the same macro skeleton
(:class:`~stablenas.skeletons.nb201.supernet.NB201Macro`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ...spaces.catalog import SearchSpace
from ...supernet.reference import PlainMixedOp, check_no_hard
from .supernet import NB201Macro

__all__ = ["PlainNB201Cell", "PlainNB201Network"]


class PlainNB201Cell(nn.Module):
    """NAS-Bench-201 search cell: node i = sum over j < i of the mixed op on edge (j -> i)."""

    def __init__(self, space: SearchSpace, C: int, partial_k: int = 1, node_norm: bool = False):
        super().__init__()
        self.cell_type = "cell"
        self.n_nodes = space.n_nodes
        self.edges = nn.ModuleList(PlainMixedOp(C, 1, ops, partial_k, pool_bn=False)
                                   for ops in space.edge_ops["cell"])  # stride 1: the auxiliary skip is x
        self.node_norm = nn.ModuleList(nn.BatchNorm2d(C, affine=False) for _ in range(self.n_nodes)) \
            if node_norm else None

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                weights2: torch.Tensor | None = None, skip: float | None = None) -> torch.Tensor:
        nodes = [x]
        e = 0
        for i in range(self.n_nodes):
            inter = []
            for j in range(i + 1):
                y = self.edges[e](nodes[j], weights[e])
                inter.append(y if weights2 is None else weights2[e] * y)
                if skip is not None:  # DARTS-: beta * x beside every edge
                    inter.append(skip * nodes[j])
                e += 1
            s = sum(inter)
            if self.node_norm is not None:
                s = self.node_norm[i](s)
            nodes.append(s)
        return nodes[-1]


class PlainNB201Network(NB201Macro):
    """NAS-Bench-201's search network (:class:`NB201Macro`) around :class:`PlainNB201Cell`.
    ``aux_skip`` builds nothing: the cells have no stride-2 edge, DARTS-'s auxiliary path is x."""

    def __init__(self, space: SearchSpace, C: int = 16, N: int = 5, num_classes: int = 10,
                 in_channels: int = 3, partial_k: int = 1, node_norm: bool = False, aux_skip: bool = False):
        super().__init__(C, N, num_classes, in_channels, lambda c: PlainNB201Cell(space, c, partial_k, node_norm))
        self.space = space

    def forward(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
                edge_weights: Mapping[str, torch.Tensor] | None = None, hard: None = None,
                skip: float | None = None) -> torch.Tensor:
        check_no_hard(hard)
        x = self.stem(x)
        w2 = None if edge_weights is None else edge_weights["cell"]
        for cell in self.cells:
            x = cell(x, weights["cell"], w2, skip) if isinstance(cell, PlainNB201Cell) else cell(x)
        return self.head(x)
