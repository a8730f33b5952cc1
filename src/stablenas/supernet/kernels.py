"""Kernel tricks of the supernet engine, and the options that switch each of them.

Everything here computes exactly what the textbook op computes (up to float rounding), only with
fewer or faster kernels; ``supernet.fused`` decides where to use it, ``EngineOptions`` (an
attribute of every supernet module, ``net.engine``) says which tricks are on. The bench and the
ablation switch them off one at a time with :func:`supernet.network.engine_options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Where = Literal["cpu", "always", "never"]


@dataclass(frozen=True)
class EngineOptions:
    """Which engine optimisations run; each can be undone on its own (the ablation on the
    performance page of the docs measures what each buys).

    * ``fused``: shared ReLU per tensor, op weight folded into the op's last BN, `none` skipped
      without a module call (off: every op module is called as written, so forward hooks see every
      op output).
    * ``shared_pools``: the pooling ops of all edges leaving a node pool the same input once and,
      in training mode, share their static BN (identical batch statistics).
    * ``conv_avg_pool``: 3x3 average pooling as a depthwise conv with a ones kernel (CPU avg_pool2d
      on channels_last maps is slow).
    * ``phase_dilation``: dilated depthwise convs as plain convs on polyphase components.
    * ``small_dw5`` / ``small_map`` (off): 5x5 depthwise weight gradients from four 3x3 tiles on
      maps up to ``small_map`` pixels a side; off because the library's kernel is as fast at every
      supernet shape measured.
    * ``double_backward``: every depthwise conv through :class:`DWConv`, whose backward is made of
      depthwise convs again (set by code that differentiates twice: Hessian-vector products, the
      exact unrolled gradient).
    * ``recompute`` / ``recompute_min_side``: the activations inside sep and dil convs after their
      first depthwise conv are recomputed in backward instead of stored, on maps at least
      ``recompute_min_side`` pixels a side (24: the first stage of both bench sizes, where most of
      the memory is). Not under ``double_backward`` unless ``recompute_double``: a graph built with
      ``create_graph`` keeps the recomputed activations anyway, so a checkpoint there only adds
      copies.
    * ``light_recompute``: where ``recompute`` applies and nothing differentiates twice, the
      recomputed segments are two autograd Functions (:class:`PwBN`, :class:`SepMid`) that
      recompute only the pointwise product and the normalisation from saved batch statistics
      (off: ``torch.utils.checkpoint``, which also supports double backward).
    * ``linear_pw``: 1x1 convs (stride 1, no groups, no bias) on channels_last maps as one matrix
      product over the pixels (``F.linear`` on the NHWC view, no copy).
    * ``dense_grads``: each node's gradient made dense (:func:`dense_grad`) before the BN backwards
      of the ops that feed the node read it.
    * ``shared_subsample``: the even and odd pixels of a rectified input (what FactorizedReduce and
      stride-2 dilated convs read) picked once per tensor by :class:`Subsample`.
    * ``phase_sums``: polyphase dil-conv outputs summed in that layout per node and converted back
      once per node, not once per op.
    * ``scaled_terms``: a shared pool's normalised output enters each edge's node sum as
      ``sum.addcmul_(z, w)`` rather than as a product map ``w * z`` added afterwards.
    * ``compile_step`` (off; CUDA only): the supernet forward of first-order steps runs through
      ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: one replay instead of thousands of
      kernel launches), eager when compiling fails; code that differentiates twice always runs
      eager (``supernet.engine.StepForward``).

    Each device type has its own defaults (``supernet.engine.defaults_for``); a
    ``stablenas bench --tune`` file overrides them.
    """

    fused: bool = True
    shared_pools: bool = True
    conv_avg_pool: bool = True
    phase_dilation: Where = "cpu"
    small_dw5: Where = "never"
    small_map: int = 8
    double_backward: bool = False
    recompute: bool = True
    recompute_min_side: int = 24
    recompute_double: bool = False
    dense_grads: bool = True
    linear_pw: Where = "cpu"
    light_recompute: Where = "cpu"
    shared_subsample: bool = True
    phase_sums: bool = True
    scaled_terms: bool = True
    compile_step: bool = False

    def where(self, mode: Where, x: torch.Tensor) -> bool:
        return mode == "always" or (mode == "cpu" and x.device.type == "cpu")

    def tile_limit(self, x: torch.Tensor) -> int:
        """Largest map side whose 5x5 depthwise weight gradient is tiled (0 = never)."""
        return self.small_map if self.where(self.small_dw5, x) else 0


DEFAULT = EngineOptions()


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def like(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def dense_grad(x: torch.Tensor, opts: EngineOptions = DEFAULT) -> torch.Tensor:
    """``x``, with the gradient that reaches it made dense in ``x``'s layout before it flows on
    (under ``opts.dense_grads``; otherwise ``x`` untouched).

    Why: a node's gradient arrives as a channel slice of the cell's concatenated output gradient
    (``torch.cat``'s backward), which in channels_last is not dense; the engine folds the op weight
    into each op's last BN, so that slice went straight into every BN backward that feeds the node,
    and torch's CPU BN backward on a non-dense gradient is 2-3x slower than on a dense one
    (measured: [64, 16, 14, 14] 2.17 vs 0.90 ms per call, cpu-study size, one thread). A plain
    supernet never sees this because its ``w * op(x)`` multiplication makes a dense copy. One copy
    per node here, instead of one per op.
    """
    if opts.dense_grads and x.requires_grad:
        fmt = like(x)
        x.register_hook(lambda g: g.contiguous(memory_format=fmt))
    return x


# -- batch norm with a folded scale --------------------------------------------------------------


def folded(bn: nn.BatchNorm2d, gamma: torch.Tensor | None,
           params: tuple[torch.Tensor | None, torch.Tensor | None] | None = None):
    """The affine (weight, bias) of ``gamma * bn(.)``: ``gamma`` folded into ``bn``'s own affine
    (or ``params``, tensors captured earlier)."""
    weight, bias = (bn.weight, bn.bias) if params is None else params
    if gamma is not None:
        # contiguous: torch's CPU BN backward returns wrong input grads for a stride-0 (expanded)
        # weight when input and grad are channels_last (measured on torch 2.13)
        weight = gamma.expand(bn.num_features).contiguous() if weight is None else weight * gamma
        bias = None if bias is None else bias * gamma
    return weight, bias


def bn(bn: nn.BatchNorm2d, x: torch.Tensor, gamma: torch.Tensor | None = None, *, update: bool = True,
       params: tuple[torch.Tensor | None, torch.Tensor | None] | None = None) -> torch.Tensor:
    """``gamma * bn(x)`` with the scale applied inside the BN kernel (as its affine weight).

    Mirrors ``nn.BatchNorm2d.forward`` (running-stat update, ``num_batches_tracked``, eval mode),
    so module state evolves exactly as when the module is called. Folding saves the separate
    multiplication, which would store the BN output for alpha's gradient. ``update=False``
    computes the same output without touching the running statistics (a recomputation in
    backward); ``params`` replaces the module's affine (weight, bias) by tensors captured earlier.
    """
    factor = 0.0 if bn.momentum is None else bn.momentum
    training_stats = bn.training and bn.track_running_stats and bn.num_batches_tracked is not None
    if training_stats and update:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    if training_stats and not update:
        factor = 0.0  # running stats passed (same saved tensors as the first call) but unchanged
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    weight, bias = folded(bn, gamma, params)
    return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None,
                        weight, bias, use_batch, factor, bn.eps)


# -- pointwise convs -------------------------------------------------------------------------


def pointwise(x: torch.Tensor, w: torch.Tensor, opts: EngineOptions = DEFAULT) -> torch.Tensor:
    """``F.conv2d(x, w)`` for a bias-free 1x1 conv ``w`` [C_out, C_in, 1, 1], stride 1.

    On a channels_last map a 1x1 conv is a [N*H*W, C_in] x [C_in, C_out] matrix product on the
    NHWC view (no copy in, a channels_last result out). Why: oneDNN's CPU 1x1 conv on the
    supernet's few-channel maps is dispatch- and reorder-bound, its backward most of all (measured,
    one thread, forward + backward: [64, 8, 28, 28] 4.77 ms as a conv vs 1.58 ms as a product,
    [64, 16, 14, 14] 0.92 vs 0.69, [64, 32, 7, 7] 0.95 vs 0.54). The product is also twice
    differentiable with plain matmuls (Hessian-vector products).
    """
    if is_channels_last(x) and opts.where(opts.linear_pw, x):
        return F.linear(x.permute(0, 2, 3, 1), w.flatten(1)).permute(0, 3, 1, 2)
    return F.conv2d(x, w)


# -- recomputing segments without a checkpoint ----------------------------------------------


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] channels_last -> its [N*H*W, C] matrix view (no copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _nchw(m: torch.Tensor, ref: torch.Tensor, c: int) -> torch.Tensor:
    """[N*H*W, c] -> [N, c, H, W] channels_last view, N/H/W those of ``ref``."""
    n, _, h, w = ref.shape
    return m.view(n, h, w, c).permute(0, 3, 1, 2)


def _bn_train(u: torch.Tensor, bn: nn.BatchNorm2d, weight: torch.Tensor | None, bias: torch.Tensor | None):
    """Training-mode BN of ``u`` with ``bn``'s running-stat update (as :func:`bn`); returns the
    output and the saved batch mean and inverse std."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    track = bn.track_running_stats and bn.running_mean is not None
    if track and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    return torch.ops.aten.native_batch_norm(u, weight, bias, bn.running_mean if track else None,
                                            bn.running_var if track else None, True, factor, bn.eps)


def _bn_grads(dy: torch.Tensor, u: torch.Tensor, weight, mean, invstd, eps, need_w: bool, need_b: bool):
    return torch.ops.aten.native_batch_norm_backward(
        dy.contiguous(memory_format=torch.channels_last), u, weight, None, None, mean, invstd, True, eps,
        [True, need_w and weight is not None, need_b])


def light_ok(opts: EngineOptions, bn: nn.BatchNorm2d, z: torch.Tensor) -> bool:
    """Whether :class:`PwBN` / :class:`SepMid` may replace the checkpoint for this segment."""
    return (opts.where(opts.light_recompute, z) and not opts.double_backward and bn.training
            and is_channels_last(z) and z.dtype == torch.float32 and torch.is_grad_enabled())


def _graph_backward(ctx, fn, inputs: tuple, grad: torch.Tensor) -> tuple:
    """The input gradients of ``fn(*inputs)`` for ``grad``, by rerunning ``fn`` with autograd: a
    backward that is itself differentiable (used when backward runs under ``create_graph``). Batch
    statistics are recomputed in the graph (training-mode BN without running stats), as in the
    forward, so the result is the exact derivative of the segment."""
    need = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        out = fn(*inputs)
        gs = torch.autograd.grad(out, [inputs[i] for i in need], grad, create_graph=True, allow_unused=True)
    res: list = [None] * len(inputs)
    for i, gi in zip(need, gs):
        res[i] = gi
    return tuple(res)


class PwBN(torch.autograd.Function):
    """``bn(pw(z))`` in training mode, keeping only ``z`` (and the batch statistics) for backward.

    Why: the pointwise output (the BN's input) is a full map; backward recomputes it with one
    matrix product (the cheapest kernel of the segment) instead of rerunning the whole segment as
    a checkpoint does. Under ``create_graph`` (a gradient that will be differentiated again)
    backward reruns the segment with autograd instead (:func:`_graph_backward`), so second
    derivatives stay exact."""

    @staticmethod
    def forward(ctx, z, w, weight, bias, bn):
        w2 = w.flatten(1)
        u = _nchw(_nhwc(z) @ w2.t(), z, w2.shape[0])
        y, mean, invstd = _bn_train(u, bn, weight, bias)
        ctx.save_for_backward(z, w, weight, bias, mean, invstd)
        ctx.eps = bn.eps
        return y

    @staticmethod
    def backward(ctx, dy):
        z, w, weight, bias, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (*_graph_backward(ctx, lambda z, w, weight, bias: F.batch_norm(
                pointwise(z, w, EngineOptions(linear_pw="always")), None, None, weight, bias, True, 0.0, ctx.eps),
                (z, w, weight, bias), dy), None)
        w2 = w.flatten(1)
        zm = _nhwc(z)
        u = _nchw(zm @ w2.t(), z, w2.shape[0])
        du, dweight, dbias = _bn_grads(dy, u, weight, mean, invstd, ctx.eps, ctx.needs_input_grad[2],
                                       ctx.needs_input_grad[3])
        dum = _nhwc(du)
        dz = _nchw(dum @ w2, z, z.shape[1]) if ctx.needs_input_grad[0] else None
        dw = (dum.t() @ zm).view_as(w) if ctx.needs_input_grad[1] else None
        return dz, dw, dweight, dbias, None


class SepMid(torch.autograd.Function):
    """The middle of a sep conv, ``dw2(relu(bn(pw(z))))``, keeping only ``z`` and the batch
    statistics: backward recomputes the pointwise product, normalises with the saved statistics
    and rectifies, but never reruns the depthwise conv (its output is not needed). First
    derivatives by rerunning the segment, as :class:`PwBN`."""

    @staticmethod
    def forward(ctx, z, w, weight, bias, w_dw, bn, geom):
        stride, padding, dilation = geom
        w2 = w.flatten(1)
        u = _nchw(_nhwc(z) @ w2.t(), z, w2.shape[0])
        y, mean, invstd = _bn_train(u, bn, weight, bias)
        r = F.relu(y)
        out = F.conv2d(r, w_dw, None, stride, padding, dilation, r.shape[1])
        ctx.save_for_backward(z, w, weight, bias, w_dw, mean, invstd)
        ctx.eps, ctx.geom = bn.eps, geom
        return out

    @staticmethod
    def backward(ctx, g):
        z, w, weight, bias, w_dw, mean, invstd = ctx.saved_tensors
        stride, padding, dilation = ctx.geom
        if torch.is_grad_enabled():
            def seg(z, w, weight, bias, w_dw):
                u = pointwise(z, w, EngineOptions(linear_pw="always"))
                r = F.relu(F.batch_norm(u, None, None, weight, bias, True, 0.0, ctx.eps))
                return F.conv2d(r, w_dw, None, stride, padding, dilation, r.shape[1])
            return (*_graph_backward(ctx, seg, (z, w, weight, bias, w_dw), g), None, None)
        w2 = w.flatten(1)
        zm = _nhwc(z)
        c = w2.shape[0]
        um = zm @ w2.t()
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        r = _nchw(torch.addcmul(shift, um, scale).clamp_min_(0), z, c)
        u = _nchw(um, z, c)
        dr, dw_dw = torch.ops.aten.convolution_backward(
            g.contiguous(memory_format=torch.channels_last), r, w_dw, None, [stride] * 2, [padding] * 2,
            [dilation] * 2, False, [0, 0], c, [True, ctx.needs_input_grad[4], False])[:2]
        dy = torch.ops.aten.threshold_backward(dr, r, 0)
        du, dweight, dbias = _bn_grads(dy, u, weight, mean, invstd, ctx.eps, ctx.needs_input_grad[2],
                                       ctx.needs_input_grad[3])
        dum = _nhwc(du)
        dz = _nchw(dum @ w2, z, z.shape[1]) if ctx.needs_input_grad[0] else None
        dw = (dum.t() @ zm).view_as(w) if ctx.needs_input_grad[1] else None
        return dz, dw, dweight, dbias, (dw_dw if ctx.needs_input_grad[4] else None), None, None


# -- polyphase layout (dilation 2 without dilation) ---------------------------------------------


def to_phases(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 2h, 2w) -> (4B, C, h, w): the 4 polyphase components stacked on the batch axis.

    A dilation-2 conv is exactly a plain conv on each component (oneDNN has no fast backward for
    dilated depthwise convs: a generic grouped path, ~10-30x slower than a plain 3x3 depthwise).
    """
    b, c, H, W = x.shape
    h, w = H // 2, W // 2
    if is_channels_last(x):
        y = x.permute(0, 2, 3, 1).reshape(b, h, 2, w, 2, c).permute(2, 4, 0, 1, 3, 5).reshape(4 * b, h, w, c)
        return y.permute(0, 3, 1, 2)
    return x.reshape(b, c, h, 2, w, 2).permute(3, 5, 0, 1, 2, 4).reshape(4 * b, c, h, w)


def from_phases(y: torch.Tensor, b: int) -> torch.Tensor:
    """Inverse of :func:`to_phases`."""
    _, c, h, w = y.shape
    if is_channels_last(y):
        z = y.permute(0, 2, 3, 1).reshape(2, 2, b, h, w, c).permute(2, 3, 0, 4, 1, 5)
        return z.reshape(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    return y.reshape(2, 2, b, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(b, c, 2 * h, 2 * w)


class Subsample(torch.autograd.Function):
    """``(x[..., 0::2, 0::2], x[..., 1::2, 1::2])`` of ``x`` zero-padded to even size, both in ``x``'s
    layout: the two pixel sets a FactorizedReduce reads (the first also all a stride-2 dilated conv
    reads). One backward for both picks: one zero map with both gradients written into it, where
    the four slices and their copies took two zero fills and two strided copies per pick. The
    backward is made of differentiable ops (double backward works)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        fmt = like(x)
        H, W = x.shape[-2:]
        ctx.shape, ctx.fmt = x.shape, fmt
        ctx.set_materialize_grads(False)
        even = x[:, :, 0::2, 0::2].contiguous(memory_format=fmt)
        if H % 2 or W % 2:
            x = F.pad(x, (0, W % 2, 0, H % 2))
        return even, x[:, :, 1::2, 1::2].contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx, g_even, g_odd):
        if g_even is None and g_odd is None:
            return None
        ref = g_even if g_even is not None else g_odd
        gx = torch.empty(ctx.shape, dtype=ref.dtype, device=ref.device, memory_format=ctx.fmt).zero_()
        if g_even is not None:
            gx[:, :, 0::2, 0::2] = g_even
        if g_odd is not None:
            H, W = ctx.shape[-2:]
            gx[:, :, 1::2, 1::2] = g_odd[:, :, :H // 2, :W // 2]
        return gx


# -- depthwise convs with a depthwise backward ------------------------------------------------


def dw5_weight_grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Weight gradient of a 5x5 'same' depthwise conv as four 3x3 ones on shifted windows.

    oneDNN has a fast depthwise backward-weights kernel only up to 3x3; for 5x5 it takes a generic
    grouped path that is ~5-9x slower on small maps (measured: 14.4 ms vs 1.7 ms for 256x64x4x4).
    Tap (i, j) of the 5x5 gradient is sum g[h, w] * xpad[h + i, w + j]; the 3x3 gradient of the
    window starting at (a, b) gives taps (a..a+2, b..b+2), and windows at a, b in {0, 2} cover all.
    """
    C = x.shape[1]
    H, W = x.shape[-2:]
    xp = F.pad(x, (2, 2, 2, 2))
    w3 = x.new_empty(C, 1, 3, 3)
    t = {}
    for a, b in ((0, 0), (0, 2), (2, 0), (2, 2)):
        t[a, b] = torch.ops.aten.convolution_backward(
            g, xp[:, :, a:a + H + 2, b:b + W + 2], w3, None, [1, 1], [0, 0], [1, 1], False, [0, 0], C,
            [False, True, False])[1]
    top = torch.cat([t[0, 0], t[0, 2][..., 1:]], dim=-1)
    bottom = torch.cat([t[2, 0][..., 1:, :], t[2, 2][..., 1:, 1:]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


class DWConv(torch.autograd.Function):
    """Stride-1 depthwise conv whose backward is made of depthwise convs again (this Function and
    :class:`DWWeight`), so every order of derivative stays a handful of fast kernels.

    Why: torch's double backward of a grouped conv (``_convolution_double_backward``) loops over the
    groups, i.e. one tiny conv per channel for a depthwise conv: a Hessian-vector product w.r.t.
    alpha on the DARTS supernet ran ~27k convolutions (measured 8 s at batch 16). Here the input
    gradient is a depthwise conv with the flipped kernel and padding d(k-1)-p, the weight gradient
    is :class:`DWWeight`, and their own backwards are again these two. ``tile`` is the largest
    map side whose 5x5 weight gradient uses :func:`dw5_weight_grad` (0: never).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, padding: int, dilation: int, tile: int = 8) -> torch.Tensor:
        # keep only what the gradients asked for need: x for the weight's, w for the input's. Under
        # create_graph this Function runs on every gradient map of the first backward, and with
        # frozen weights (the Hessian w.r.t. alpha) keeping x would hold each of them (292 MB of the
        # lambda_max graph at the cpu-study size)
        gx, gw = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if gw else None, w if gx else None)
        ctx.geom = (padding, dilation, tile, w.shape[-1])
        return F.conv2d(x, w, None, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        p, d, tile, k = ctx.geom
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = DWConv.apply(g, w.flip(-2, -1), d * (k - 1) - p, d, tile)
        if ctx.needs_input_grad[1]:
            gw = DWWeight.apply(x, g, k, p, d, tile)
        return gx, gw, None, None, None


class DWWeight(torch.autograd.Function):
    """Weight gradient of a stride-1 depthwise conv: ``gw[c, i, j] = sum g[n, c, h, w] *
    xpad[n, c, h + d i, w + d j]``; differentiable in both arguments through :class:`DWConv`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor, k: int, padding: int, dilation: int,
                tile: int = 8) -> torch.Tensor:
        ctx.save_for_backward(g if ctx.needs_input_grad[0] else None, x if ctx.needs_input_grad[1] else None)
        ctx.geom = (padding, dilation, tile)
        C = x.shape[1]
        if k == 5 and padding == 2 and dilation == 1 and max(x.shape[-2:]) <= tile:
            return dw5_weight_grad(x, g)
        w = x.new_empty(C, 1, k, k)
        return torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [padding, padding], [dilation, dilation],
                                                   False, [0, 0], C, [False, True, False])[1]

    @staticmethod
    def backward(ctx, u: torch.Tensor):
        g, x = ctx.saved_tensors
        p, d, tile = ctx.geom
        gx = gg = None
        if ctx.needs_input_grad[0]:  # d<u, gw>/dx: g correlated with the flipped u
            gx = DWConv.apply(g, u.flip(-2, -1), d * (u.shape[-1] - 1) - p, d, tile)
        if ctx.needs_input_grad[1]:  # d<u, gw>/dg: x convolved with u, the forward geometry
            gg = DWConv.apply(x, u, p, d, tile)
        return gx, gg, None, None, None, None


def depthwise(weight: torch.Tensor, x: torch.Tensor, stride: int, padding: int, dilation: int,
              opts: EngineOptions = DEFAULT) -> torch.Tensor:
    """A bias-free depthwise conv with the given geometry.

    Under ``opts.double_backward`` every depthwise conv goes through :class:`DWConv` (cheap double
    backward; stride 2 = the stride-1 conv read at even positions). Otherwise only small 5x5 maps
    do (their tiled weight gradient); the rest take the library conv, ~6% faster for a first-
    order step than the Function (measured at the bench's paper size).
    """
    k = weight.shape[-1]
    C = x.shape[1]
    if padding > dilation * (k - 1) or stride not in (1, 2):
        return F.conv2d(x, weight, None, stride, padding, dilation, C)
    tile = opts.tile_limit(x)
    small5 = k == 5 and stride == 1 and padding == 2 and dilation == 1 and max(x.shape[-2:]) <= tile
    if not opts.double_backward and not small5:
        return F.conv2d(x, weight, None, stride, padding, dilation, C)
    y = DWConv.apply(x, weight, padding, dilation, tile)
    return y if stride == 1 else y[:, :, ::2, ::2]


# -- pooling ---------------------------------------------------------------------------------


def avg_pool_conv(x: torch.Tensor, k: int, stride: int, padding: int, opts: EngineOptions = DEFAULT) -> torch.Tensor:
    """AvgPool2d(count_include_pad=False) as a depthwise conv with a ones kernel times 1/count.

    Why: torch's CPU avg_pool2d (and its backward) on channels_last maps with few channels is
    2-6x slower than oneDNN's depthwise conv of the same footprint (measured 18.7 ms vs 3.0 ms,
    forward + backward, at 64x8x28x28). The count map is a constant of the shape.
    """
    C, H, W = x.shape[1], x.shape[-2], x.shape[-1]
    ones = x.new_ones(C, 1, k, k)
    count = F.conv2d(x.new_ones(1, 1, H, W), x.new_ones(1, 1, k, k), None, stride, padding)
    return depthwise(ones, x, stride, padding, 1, opts) * count.reciprocal()


def is_plain_avg_pool(pool: nn.Module) -> bool:
    """An AvgPool2d that :func:`avg_pool_conv` reproduces exactly."""
    return (type(pool) is nn.AvgPool2d and not pool.count_include_pad and not pool.ceil_mode
            and pool.divisor_override is None and isinstance(pool.kernel_size, int)
            and isinstance(pool.stride, int) and isinstance(pool.padding, int)
            and 2 * pool.padding < pool.kernel_size)


def pool(module: nn.Module, x: torch.Tensor, opts: EngineOptions = DEFAULT) -> torch.Tensor:
    """``module(x)`` for a pooling module, by :func:`avg_pool_conv` where that is exact."""
    if opts.conv_avg_pool and is_plain_avg_pool(module):
        return avg_pool_conv(x, module.kernel_size, module.stride, module.padding, opts)
    return module(x)
