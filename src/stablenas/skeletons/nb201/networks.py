"""The NAS-Bench-201 evaluation network a derived cell is trained in (Dong & Yang 2020, Sec. 3; the
authors' ``TinyNetwork`` with a discrete cell), registered in ``EVAL_NETWORKS`` as ``nb201``.
``forward`` returns ``(logits, None)`` like every skeleton's evaluation networks (there is no
auxiliary head), so one training loop serves them all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...genotype import Genotype
from ...registry import EVAL_NETWORKS
from ...spaces.ops import ResNetBasicBlock, build_op
from .genotype import parse_nb201

__all__ = ["NB201Cell", "NB201Network"]


class NB201Cell(nn.Module):
    """NAS-Bench-201 cell: node i is the sum over j < i of op_{j->i}(node j); output = last node.

    ``nodes`` is the parsed arch string: per intermediate node, its ``(op, input)`` pairs.
    """

    def __init__(self, nodes: Sequence[Sequence[tuple[str, int]]], C: int):
        super().__init__()
        self.edges: list[list[int]] = []
        self.ops = nn.ModuleList()
        for pairs in nodes:
            srcs = []
            for op, j in pairs:
                self.ops.append(build_op(op, C, 1, True))
                srcs.append(int(j))
            self.edges.append(srcs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        k = 0
        for srcs in self.edges:
            total = None
            for j in srcs:
                h = self.ops[k](states[j])
                k += 1
                total = h if total is None else total + h
            states.append(total)
        return states[-1]


class NB201Network(nn.Module):
    """NAS-Bench-201 macro network: stem, 3 stages of ``N`` cells at C, 2C, 4C channels.

    Stages are separated by ResNet basic blocks with stride 2; the head is BN-ReLU, global
    average pool and a linear classifier. ``forward`` returns ``(logits, None)`` like the DARTS
    networks (there is no auxiliary head); ``drop_path_prob`` exists for interface parity only.
    """

    def __init__(self, genotype_or_arch: Genotype | str, C: int = 16, N: int = 5, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        arch = genotype_or_arch.arch if isinstance(genotype_or_arch, Genotype) else genotype_or_arch
        if arch is None:
            raise ValueError("NB201Network needs a NAS-Bench-201 genotype (with an arch string)")
        nodes = parse_nb201(arch)
        self.arch = arch
        self.drop_path_prob = 0.0
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells: list[nn.Module] = []
        C_prev = C
        for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                cells.append(ResNetBasicBlock(C_prev, C_curr, 2, affine=True))
            cells.extend(NB201Cell(nodes, C_curr) for _ in range(N))
            C_prev = C_curr
        self.cells = nn.Sequential(*cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = self.lastact(self.cells(self.stem(x)))
        return self.classifier(self.global_pooling(out).flatten(1)), None


def _nb201_builder(genotype: Genotype, **sizes) -> nn.Module:
    sizes = dict(sizes)
    if "layers" in sizes:
        if "N" in sizes:
            raise TypeError("give either N or layers for nb201, not both")
        sizes["N"] = sizes.pop("layers")
    sizes.pop("auxiliary", None)  # NB201 has no auxiliary tower
    sizes.pop("stem_multiplier", None)
    return NB201Network(genotype, **sizes)


EVAL_NETWORKS.register("nb201", _nb201_builder)
