"""The NAS-Bench-201 supernet: its macro skeleton and the search cell on the shared mixed op
(``supernet.network.MixedOp``, fused engine ``supernet.fused``).

Dong & Yang 2020 (Sec. 3, the authors' ``TinyNetwork``): a conv-BN stem, three stages of N cells at
C, 2C and 4C channels joined by stride-2 ResNet blocks, then BN-ReLU, global pooling and a linear
classifier. What the equivalence tests compare is the cell, so each network brings its own cell
(:class:`NB201SearchCell` here, ``skeletons.nb201.reference.PlainNB201Cell``) and only
:class:`NB201Macro` is shared. Modules are made in the same order in both (the same initial weights
from one seed) under the same names (``stem``, ``cells.i``, ``lastact``, ``classifier``: one state
dict fits both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...spaces.catalog import SearchSpace
from ...spaces.ops import ResNetBasicBlock
from ...supernet import kernels as K
from ...supernet.fused import Input, Sum
from ...supernet.kernels import DEFAULT
from ...supernet.network import Hard, MixedOp, OpWeights, cell_op_weights, run_stem

__all__ = ["NB201Macro", "NB201SearchCell", "NB201SearchNetwork"]


class NB201Macro(nn.Module):
    """Stem, the cell stages (``cell(c)`` builds one cell of ``c`` channels) and the classifier head."""

    def __init__(self, C: int, N: int, num_classes: int, in_channels: int, cell: Callable[[int], nn.Module]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers: list[nn.Module] = []
        c = C
        for stage in range(3):
            if stage > 0:
                layers.append(ResNetBasicBlock(c, 2 * c, 2))
                c *= 2
            layers.extend(cell(c) for _ in range(N))
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output."""
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))


class NB201SearchCell(nn.Module):
    """NAS-Bench-201 cell: node i sums mixed ops from every earlier node; output = last node."""

    def __init__(self, space: SearchSpace, C: int, partial_k: int = 1, node_norm: bool = False,
                 aux_skip: bool = False):
        super().__init__()
        self.space = space
        self.cell_type = "cell"
        self.edges = nn.ModuleList(
            MixedOp(C, 1, space.edge_ops["cell"][e], partial_k=partial_k, pool_bn=False, aux_skip=aux_skip)
            for e in range(space.n_edges))
        self.node_edges = [list(space.node_edges(i)) for i in range(space.n_nodes)]
        self.sources = [src for src, _ in space.edges]
        self.node_norm = nn.ModuleList(nn.BatchNorm2d(C, affine=False) for _ in range(space.n_nodes)) \
            if node_norm else None
        self.engine = DEFAULT

    def forward(self, x: torch.Tensor, w: torch.Tensor, edge_w: torch.Tensor | None = None,
                hard: Sequence[int] | None = None, drop_prob: float = 0.0, skip: float | None = None) -> torch.Tensor:
        fast = self.engine.fused
        states = [Input(x, self.engine) if fast else x]
        for i, edges in enumerate(self.node_edges):
            s = None
            acc = Sum()
            for e in edges:
                h = None if hard is None else hard[e]
                if fast:
                    self.edges[e].forward_fused(states[self.sources[e]], w[e], h, drop_prob,
                                                None if edge_w is None else edge_w[e], acc, skip)
                else:
                    y = self.edges[e](states[self.sources[e]], w[e], h, drop_prob)
                    if edge_w is not None:
                        y = edge_w[e] * y
                    if skip is not None:
                        y = y + skip * self.edges[e].auxiliary(states[self.sources[e]])
                    s = y if s is None else s + y
            if fast:
                s = acc.tensor()
            if self.node_norm is not None:
                s = self.node_norm[i](s)
            states.append(states[0].derive(K.dense_grad(s, self.engine)) if fast else s)
        return states[-1].x if fast else states[-1]


class NB201SearchNetwork(NB201Macro):
    """NAS-Bench-201 skeleton (:class:`NB201Macro`) around :class:`NB201SearchCell`."""

    def __init__(self, space: SearchSpace, C: int = 16, N: int = 5, num_classes: int = 10,
                 in_channels: int = 3, partial_k: int = 1, node_norm: bool = False, aux_skip: bool = False):
        super().__init__(C, N, num_classes, in_channels,
                         lambda c: NB201SearchCell(space, c, partial_k, node_norm, aux_skip))
        self.space = space
        self.drop_path_prob = 0.0
        self.channels_last = False
        self.engine = DEFAULT

    def forward(self, x: torch.Tensor, weights: OpWeights, edge_weights: OpWeights | None = None,
                hard: Hard | None = None, skip: float | None = None) -> torch.Tensor:
        x = run_stem(self, x)
        ew = None if edge_weights is None else edge_weights["cell"]
        h = None if hard is None else hard["cell"]
        for cell, w in zip(self.cells, cell_op_weights(weights, self.cells)):
            if isinstance(cell, NB201SearchCell):
                x = cell(x, w, ew, h, self.drop_path_prob, skip)
            else:
                x = cell(x)
        return self.head(x)
