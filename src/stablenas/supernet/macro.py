"""NAS-Bench-201's macro skeleton, shared by the fast supernet and the plain reference.

Dong & Yang 2020 (Sec. 3, the authors' ``TinyNetwork``): a conv-BN stem, three stages of N cells at
C, 2C and 4C channels joined by stride-2 ResNet blocks, then BN-ReLU, global pooling and a linear
classifier. What the equivalence tests compare is the cell, so each network brings its own cell
(``supernet.network.NB201SearchCell``, ``supernet.reference.PlainNB201Cell``) and only this scaffolding
is written once. Modules are made in the same order in both (the same initial weights from one seed)
under the same names (``stem``, ``cells.i``, ``lastact``, ``classifier``: one state dict fits both).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..spaces.ops import ResNetBasicBlock


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
