"""The DARTS evaluation networks a derived cell is trained in, matching the layer structure of the
code the papers report their numbers with, so that parameter counts and multiply-adds line up
(Liu et al. 2019, Sec. 3.2-3.3; the authors' ``model.py``):

* :class:`NetworkCIFAR` -- stem, ``layers`` stacked cells with reduction cells at 1/3 and 2/3
  depth, optional auxiliary tower after the second reduction cell;
* :class:`NetworkImageNet` -- the "mobile setting" network (two strided stems, first cell sees a
  reduced input, auxiliary tower for 224x224).

Both return ``(logits, logits_aux)`` from ``forward`` (``logits_aux`` is ``None`` unless the
network has an auxiliary head and is in training mode), as every skeleton's evaluation networks
do, so one training loop serves them all. The auxiliary head is registered under the attribute
name ``auxiliary_head``: parameter counting follows the DARTS convention of skipping parameters
whose name contains ``auxiliary``. Registered in ``EVAL_NETWORKS`` as ``cifar`` and ``imagenet``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...genotype import Genotype
from ...registry import EVAL_NETWORKS
from ...spaces.ops import FactorizedReduce, Identity, ReLUConvBN, build_op, drop_path

__all__ = ["AuxiliaryHeadCIFAR", "AuxiliaryHeadImageNet", "EvalCell", "NetworkCIFAR", "NetworkImageNet"]


def _is_identity(op: nn.Module) -> bool:
    return isinstance(op, (Identity, nn.Identity))


class EvalCell(nn.Module):
    """A discrete DARTS cell: two inputs, ``len(pairs) // 2`` intermediate nodes of two ops each.

    The number of intermediate nodes is read off the genotype, so reduced spaces (RobustDARTS S5
    has a single node) and the standard 4-node cells are handled alike. Inputs are first mapped to
    ``C`` channels: ``s0`` by a FactorizedReduce when the previous cell halved the resolution (so
    both inputs agree in size), else a 1x1 ReLU-Conv-BN; ``s1`` always by a 1x1 ReLU-Conv-BN.
    """

    def __init__(self, genotype: Genotype, cell_type: str, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.cell_type = cell_type
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=True)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=True)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=True)

        pairs = genotype.cell(cell_type)
        if not pairs or len(pairs) % 2:
            raise ValueError(f"{cell_type} cell needs two (op, input) pairs per node, got {len(pairs)}")
        self.n_nodes = len(pairs) // 2
        self.indices: tuple[int, ...] = tuple(int(i) for _, i in pairs)
        for k, inp in enumerate(self.indices):
            if not 0 <= inp < 2 + k // 2:
                raise ValueError(f"{cell_type} cell: pair {k} reads state {inp}, which does not exist yet")
        concat = tuple(genotype.concat(cell_type)) or tuple(range(2, 2 + self.n_nodes))
        if any(not 0 <= i < 2 + self.n_nodes for i in concat):
            raise ValueError(f"{cell_type} cell: concat {concat} refers to missing states")
        self.concat = concat
        self.multiplier = len(concat)
        # only edges leaving the cell inputs stride; later nodes already live at the reduced size
        self.ops = nn.ModuleList(
            build_op(op, C, 2 if reduction and inp < 2 else 1, True) for op, inp in pairs)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        apply_drop = self.training and drop_prob > 0.0
        for n in range(self.n_nodes):
            total = None
            for k in (2 * n, 2 * n + 1):
                op = self.ops[k]
                h = op(states[self.indices[k]])
                if apply_drop and not _is_identity(op):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class _AuxPool(nn.Module):
    """The auxiliary towers' pooling, made size-agnostic.

    The reference heads pool with a fixed 5x5 window (stride 3 on CIFAR's 8x8 maps, stride 2 on
    ImageNet's 7x7 maps) to get exactly 2x2, which the following 2x2 conv collapses to 1x1. That
    only holds at the reference input size: at 28x28 input the CIFAR map is 7x7 and the fixed pool
    gives 1x1 (the 2x2 conv then fails), at 64x64 it gives 4x4 (the classifier then gets the wrong
    width). So the fixed pool is used whenever it yields 2x2 -- bit-identical to the reference at
    the reference size -- and an adaptive average pool to 2x2 is used otherwise.
    """

    def __init__(self, stride: int):
        super().__init__()
        self.fixed = nn.AvgPool2d(5, stride=stride, padding=0, count_include_pad=False)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h >= 5 and w >= 5 and (h - 5) // self.stride + 1 == 2 and (w - 5) // self.stride + 1 == 2:
            return self.fixed(x)
        return F.adaptive_avg_pool2d(x, 2)


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS auxiliary tower for CIFAR (reference: 8x8 input maps from a 32x32 image)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # its input is also the next cell's input: do not overwrite it
            _AuxPool(stride=3),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """DARTS auxiliary tower for ImageNet (reference: 7x7 maps from a 224x224 image).

    As in the reference experiments, there is no batch norm after the 768-channel conv.
    """

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # its input is also the next cell's input: do not overwrite it
            _AuxPool(stride=2),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _check_darts_genotype(genotype: Genotype) -> None:
    if not isinstance(genotype, Genotype):
        raise TypeError(f"expected a Genotype, got {type(genotype).__name__}")
    if not genotype.skeleton.supports("reduction_cells"):
        raise ValueError(f"a {genotype.skeleton.name}-skeleton genotype does not fit a DARTS-skeleton network; "
                         f"use network={genotype.skeleton.eval_networks[0]!r}")


class _CellStack(nn.Module):
    """Shared DARTS body: cells with reductions at ``layers // 3`` and ``2 * layers // 3``."""

    drop_path_prob: float

    def _build_cells(self, genotype: Genotype, C: int, layers: int, C_prev_prev: int, C_prev: int,
                     reduction_prev: bool) -> int:
        """Create ``self.cells``; returns the channel count fed to the auxiliary head."""
        self._layers = layers
        self.reduction_layers = (layers // 3, 2 * layers // 3)
        self.aux_position = 2 * layers // 3
        self.cells = nn.ModuleList()
        C_curr = C
        C_aux = C_prev
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, "reduce" if reduction else "normal", C_prev_prev, C_prev, C_curr,
                            reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_position:
                C_aux = C_prev
        self.C_final = C_prev
        return C_aux

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        return s1, logits_aux


class NetworkCIFAR(_CellStack):
    """DARTS CIFAR evaluation network (defaults: 36 channels, 20 cells -> 3.3M params for DARTS).

    ``in_channels`` lets it take grey-scale inputs (e.g. 1x28x28); any input size works, the
    auxiliary head adapting its pooling (see :class:`_AuxPool`).
    """

    def __init__(self, genotype: Genotype, C: int = 36, num_classes: int = 10, layers: int = 20,
                 auxiliary: bool = True, in_channels: int = 3, stem_multiplier: int = 3):
        super().__init__()
        _check_darts_genotype(genotype)
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.genotype = genotype
        self.drop_path_prob = 0.0
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        C_aux = self._build_cells(genotype, C, layers, C_stem, C_stem, reduction_prev=False)
        self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.C_final, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.stem(x)
        out, logits_aux = self._run_cells(s, s)
        return self.classifier(self.global_pooling(out).flatten(1)), logits_aux


class NetworkImageNet(_CellStack):
    """DARTS ImageNet (mobile setting) network: 48 channels, 14 cells, 224x224 input.

    Two strided stems bring 224 down to 28 before the first cell; as the second stem already
    halved the resolution relative to the first, the first cell treats its ``s0`` input as
    coming from a reduction (``reduction_prev=True``). The reference's final ``AvgPool2d(7)``
    is an adaptive average pool here, identical at 224x224 and valid at other sizes.
    """

    def __init__(self, genotype: Genotype, C: int = 48, num_classes: int = 1000, layers: int = 14,
                 auxiliary: bool = True, in_channels: int = 3):
        super().__init__()
        _check_darts_genotype(genotype)
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if C % 2:
            raise ValueError(f"NetworkImageNet needs an even channel count, got {C}")
        self.genotype = genotype
        self.drop_path_prob = 0.0
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),  # stem0's output is also the first cell's s0
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_aux = self._build_cells(genotype, C, layers, C, C, reduction_prev=True)
        self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.C_final, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        out, logits_aux = self._run_cells(s0, s1)
        return self.classifier(self.global_pooling(out).flatten(1)), logits_aux


def _imagenet_builder(genotype: Genotype, **sizes) -> nn.Module:
    sizes.pop("stem_multiplier", None)  # the ImageNet stem is fixed (two stride-2 convolutions)
    return NetworkImageNet(genotype, **sizes)


EVAL_NETWORKS.register("cifar", NetworkCIFAR)
EVAL_NETWORKS.register("imagenet", _imagenet_builder)
