"""Candidate operations and their registry.

Every op is built by a factory ``(C, stride, affine) -> nn.Module`` and keeps the channel count
``C``; ``stride`` 2 halves the spatial size (rounding up, as padding 1 with kernel 3 does).
Search-time ops use ``affine=False`` batch norm (DARTS convention, so the op weights alone carry
the scale); evaluation networks use ``affine=True``.

The registry is the single source of truth for op names: spaces, genotypes, the supernet and the
evaluation networks all look ops up here, so a new op becomes available everywhere by one call
to :func:`register_op`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import OPS

OpFactory = Callable[[int, int, bool], nn.Module]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of an op output with probability ``drop_prob`` (ScheduledDropPath, the
    DARTS/NASNet regulariser), shared by the supernet and the evaluation networks.

    Survivors are scaled by ``1 / keep_prob`` so the expected activation is unchanged. Not in
    place: the op output may be shared with the autograd graph of another branch.
    """
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


@dataclass(frozen=True)
class OpSpec:
    """A registered op: how to build it and what it is (for analysis and fast paths)."""

    name: str
    factory: OpFactory
    parametric: bool  # has learnable weights at stride 1 (pools/skip/zero/noise do not)
    is_zero: bool = False  # output is identically zero: the supernet may skip computing it


def register_op(name: str, factory: OpFactory, *, parametric: bool, is_zero: bool = False) -> None:
    """Add an op to the registry (overwriting is an error so typos in plugins surface)."""
    OPS.register(name, OpSpec(name, factory, parametric, is_zero))


def build_op(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    return OPS[name].factory(C, stride, affine)


def is_parameter_free(name: str) -> bool:
    """Parameter-free ops are the ones DARTS collapses to (skip, pooling, zero, noise)."""
    return not OPS[name].parametric


# --------------------------------------------------------------------------------------------
# building blocks


class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool,
                 dilation: int = 1):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU - depthwise (dilated) conv - pointwise conv - BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv blocks with dilation 1; only the first one strides."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(
            DilConv(C_in, C_in, kernel, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel, 1, padding, 1, affine),
        )


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The `none` op. Kept as a module so plain paths can run it; the supernet skips it."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Noise(nn.Module):
    """S4's harmful op: replaces the input by N(0, 1) noise of the (strided) shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.randn_like(x)


class FactorizedReduce(nn.Module):
    """Halves resolution with two offset 1x1 stride-2 convs (skip_connect at stride 2).

    A 1x1 conv with stride 2 reads only every other pixel, so each branch subsamples first (even
    pixels, odd pixels) and then applies a stride-1 1x1 conv: the same arithmetic as DARTS's
    ``conv_1(x)`` / ``conv_2(x[:, :, 1:, 1:])`` with stride 2, and it avoids a oneDNN bug: on CPU,
    channels_last float32 1x1 *stride-2* convs with 2-4 input channels return wrong weight
    gradients (torch 2.13; checked in tests/supernet/test_perf.py).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The two branches on an already rectified input, concatenated (before BN)."""
        # pad odd sizes so both branches agree in shape
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return torch.cat([self.conv_1(x[:, :, 0::2, 0::2]), self.conv_2(x[:, :, 1::2, 1::2])], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.reduce(self.relu(x)))


class ResNetBasicBlock(nn.Module):
    """NAS-Bench-201's reduction block between stages (``ResNetBasicblock`` of the NB201 code).

    The shortcut's 2x2 average pool rounds its output side up (``ceil_mode``), as the strided 3x3
    conv beside it does, so an odd input side (7 -> 4) works; for the even sides of the benchmark
    (32 -> 16 -> 8) the windows and results are exactly the code's floor-mode pool."""

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool = True):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, affine)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine)
        if stride == 2:  # a partial last window averages the pixels it has (no padding to count)
            self.downsample: nn.Module = nn.Sequential(
                nn.AvgPool2d(2, stride=2, padding=0, ceil_mode=True), nn.Conv2d(C_in, C_out, 1, bias=False))
        elif C_in != C_out:
            self.downsample = ReLUConvBN(C_in, C_out, 1, 1, 0, affine)
        else:
            self.downsample = Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def _pool(kind: str, stride: int) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


# --------------------------------------------------------------------------------------------
# the registry

register_op("none", lambda C, stride, affine: Zero(stride), parametric=False, is_zero=True)
register_op("noise", lambda C, stride, affine: Noise(stride), parametric=False)
register_op("max_pool_3x3", lambda C, stride, affine: _pool("max", stride), parametric=False)
register_op("avg_pool_3x3", lambda C, stride, affine: _pool("avg", stride), parametric=False)
register_op(
    "skip_connect",
    lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    parametric=False,
)
register_op("sep_conv_3x3", lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine), parametric=True)
register_op("sep_conv_5x5", lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine), parametric=True)
register_op("sep_conv_7x7", lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine), parametric=True)
register_op("dil_conv_3x3", lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine), parametric=True)
register_op("dil_conv_5x5", lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine), parametric=True)
# NAS-Bench-201's convolutions are ReLU-Conv-BN (not separable)
register_op("nor_conv_1x1", lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine), parametric=True)
register_op("nor_conv_3x3", lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine), parametric=True)

DARTS_OPS: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
