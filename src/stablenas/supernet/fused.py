"""The fused engine's building blocks: each op's arithmetic on shared inputs, which
:class:`supernet.network.MixedOp` and every skeleton's search cell run when ``engine.fused``.

An op's modules and parameters stay those of the plain definition (``spaces.ops``); only the
order and grouping of the arithmetic changes, never its result (up to float rounding, checked
against ``supernet.reference`` in tests/supernet/test_engine.py and tests/supernet/test_perf.py). What the engine
does, and why (kernel-level tricks live in ``supernet.kernels``):

* one ReLU per *tensor*, not per op: SepConv, DilConv, ReLUConvBN and FactorizedReduce all
  begin with ReLU, and a state feeds several edges (DARTS: ``c_{k-2}`` feeds 4 edges x 4 conv
  ops) and two cells' preprocessing. ``Input`` computes ``relu(x)`` (and its derived forms)
  once and shares it: fewer passes and, above all, fewer saved activations.
* op weight folded into the op's last BatchNorm: ``w * BN(z)`` is ``BN(z)`` with affine scale
  ``w`` (and ``w * beta_edge`` with PC-DARTS edge weights). The BN kernel then produces the
  weighted output directly, and autograd keeps only BN's input instead of also keeping the op
  output for the multiplication's alpha gradient (one activation less per op).
* pools shared by the edges leaving a node: every edge out of node j max/avg-pools the same
  tensor and (training mode) normalises it with identical batch statistics, so pool and BN run
  once per node, each edge only scales the result by its op weight (running statistics of each
  edge's BN are still updated). Average pooling runs as a depthwise conv with a ones kernel.
* dilated depthwise convs without dilation (CPU): oneDNN has no fast kernel for the backward of
  dilated depthwise convs (it falls back to a generic grouped path, ~10-30x slower than a plain
  3x3 depthwise). A dilation-2 conv is exactly a plain conv on each of the 4 polyphase
  components of its input (stride 1), or on the even component alone (stride 2), so we run it
  that way; the pointwise conv and BN that follow are per-pixel and run on the phase layout too.
* pointwise convs as matrix products on the NHWC view of a channels_last map (CPU; no copy).
* inner activations of sep/dil convs on large maps recomputed in backward (memory), by two
  small autograd Functions that redo only the pointwise product and the normalisation
  (``kernels.PwBN``, ``kernels.SepMid``); stored under double backward, whose gradient graph keeps
  them anyway (``recompute_double``: recomputed by ``torch.utils.checkpoint``).
* each node's gradient made dense once before the BN backwards of the ops that feed it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..spaces.ops import DilConv, FactorizedReduce, Identity, ReLUConvBN, SepConv
from . import kernels as K
from .kernels import DEFAULT, EngineOptions

__all__ = ["FUSED", "Input", "Phased", "Scaled", "Sum", "factorized_reduce", "op_kind", "preprocess"]


class Input:
    """A tensor that feeds several ops (and edges), with its derived forms computed once, and the
    engine options of the forward pass that made it."""

    __slots__ = ("x", "opts", "_cache")

    def __init__(self, x: torch.Tensor, opts: EngineOptions = DEFAULT):
        self.x = x
        self.opts = opts
        self._cache: dict = {}

    def derive(self, x: torch.Tensor) -> Input:
        return Input(x, self.opts)

    def relu(self) -> torch.Tensor:
        r = self._cache.get("relu")
        if r is None:
            r = self._cache["relu"] = F.relu(self.x)
        return r

    def relu_even(self) -> torch.Tensor:
        """relu(x)[..., ::2, ::2]: all a stride-2, dilation-2 conv ever reads."""
        if self.opts.shared_subsample:
            return self.relu_even_odd()[0]
        r = self._cache.get("even")
        if r is None:
            r = self._cache["even"] = self.relu()[:, :, ::2, ::2].contiguous(memory_format=K.like(self.x))
        return r

    def relu_even_odd(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The even and odd pixels of relu(x) (zero-padded to even size), once per tensor
        (:class:`kernels.Subsample`): what FactorizedReduce's two branches read."""
        r = self._cache.get("even_odd")
        if r is None:
            r = self._cache["even_odd"] = K.Subsample.apply(self.relu())
        return r

    def relu_phases(self) -> torch.Tensor:
        """Polyphase components of relu(x), zero-padded to even size (zeros = the conv's padding)."""
        r = self._cache.get("phases")
        if r is None:
            x = self.relu()
            H, W = x.shape[-2:]
            if H % 2 or W % 2:
                x = F.pad(x, (0, W % 2, 0, H % 2))
            r = self._cache["phases"] = K.to_phases(x)
        return r

    def pooled(self, pool: nn.Module) -> torch.Tensor:
        """``pool(x)``, once per tensor: every edge leaving a node pools the same input."""
        if not self.opts.shared_pools:
            return K.pool(pool, self.x, self.opts)
        key = ("pool", type(pool), pool.kernel_size, pool.stride, pool.padding)
        r = self._cache.get(key)
        if r is None:
            r = self._cache[key] = K.pool(pool, self.x, self.opts)
        return r

    def pooled_normed(self, pool: nn.Module, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``BN(pool(x))`` with batch statistics (no affine), and those statistics (mean, unbiased
        variance) for the running-stat updates. The edges leaving a node all apply a static BN
        to the same pooled input, so in training mode their outputs are identical: computed once
        (one BN instead of one per edge, and one stored input instead of one per edge)."""
        key = ("pool_bn", type(pool), pool.kernel_size, pool.stride, pool.padding, eps)
        r = self._cache.get(key)
        if r is None:
            z = self.pooled(pool)
            # the BN kernel hands out its batch statistics through running buffers with momentum 1
            # (mean, unbiased variance): one pass over z instead of a separate var_mean, which on
            # channels_last maps took longer than the BN itself (1.9 ms/call at [64, 8, 28, 28])
            mean = z.new_zeros(z.shape[1])
            var = z.new_ones(z.shape[1])
            r = self._cache[key] = (F.batch_norm(z, mean, var, None, None, True, 1.0, eps), mean, var)
        return r

    def head(self, c: int) -> Input:
        """The first ``c`` channels (PC-DARTS), shared by every edge leaving this tensor."""
        key = ("head", c)
        r = self._cache.get(key)
        if r is None:
            r = self._cache[key] = self.derive(self.x[:, :c])
        return r


class Phased:
    """An op output left in polyphase layout (``kernels.to_phases`` of a ``b``-sample map): summed
    in that layout with the other such outputs into the same node, converted back once."""

    __slots__ = ("y", "b")

    def __init__(self, y: torch.Tensor, b: int):
        self.y, self.b = y, b

    def tensor(self) -> torch.Tensor:
        return K.from_phases(self.y, self.b)


class Scaled:
    """``w * z`` for a map ``z`` that several edges share (a node's pooled and normalised input),
    left unmultiplied: a sum adds it with one ``addcmul_`` instead of writing the product as a new
    map and adding that (one full-map write and read less per pool op and edge)."""

    __slots__ = ("z", "w")

    def __init__(self, z: torch.Tensor, w: torch.Tensor):
        self.z, self.w = z, w

    def tensor(self) -> torch.Tensor:
        return self.z * self.w


class Sum:
    """A running sum of op (or edge) outputs, with a separate part for outputs in polyphase layout.

    Sums in place: the first term of each part must be a fresh tensor no backward reads (a product
    by an op weight, a BN output), which holds for every term the fused path makes; autograd's
    version check would raise if that ever stopped holding."""

    __slots__ = ("plain", "phased", "b")

    def __init__(self):
        self.plain: torch.Tensor | None = None
        self.phased: torch.Tensor | None = None
        self.b = 0

    def empty(self) -> bool:
        return self.plain is None and self.phased is None

    def add(self, y: torch.Tensor | Phased | Scaled) -> None:
        if isinstance(y, Scaled):
            self.addcmul(y.z, y.w)
        elif isinstance(y, Phased):
            self.b = y.b
            self.phased = y.y if self.phased is None else self.phased.add_(y.y)
        else:
            self.plain = y if self.plain is None else self.plain.add_(y)

    def addcmul(self, x: torch.Tensor, w: torch.Tensor) -> None:
        self.plain = x * w if self.plain is None else self.plain.addcmul_(x, w)

    def add_scaled(self, x: torch.Tensor, c: float) -> None:
        """``+= c * x`` for a plain number ``c`` (DARTS-'s auxiliary skip weight)."""
        self.plain = x * c if self.plain is None else self.plain.add_(x, alpha=c)

    def tensor(self) -> torch.Tensor:
        if self.phased is None:
            return self.plain
        y = K.from_phases(self.phased, self.b)
        # into the plain part: it keeps the layout (a 1x1 phase map is contiguous in both layouts,
        # so from_phases cannot tell which one it came from)
        return y if self.plain is None else self.plain.add_(y)


def _depthwise(dw: nn.Conv2d, x: torch.Tensor, stride: int, padding: int, dilation: int,
               opts: EngineOptions = DEFAULT) -> torch.Tensor:
    """``dw``'s weights applied with the given geometry (see :func:`kernels.depthwise`)."""
    if dw.bias is not None:
        return F.conv2d(x, dw.weight, dw.bias, stride, padding, dilation, dw.groups)
    return K.depthwise(dw.weight, x, stride, padding, dilation, opts)


def _square(dw: nn.Conv2d) -> bool:
    """A depthwise conv with the same geometry along both axes and zero padding."""
    return (dw.padding_mode == "zeros" and dw.groups == dw.in_channels == dw.out_channels
            and dw.kernel_size[0] == dw.kernel_size[1] and dw.stride[0] == dw.stride[1]
            and dw.padding[0] == dw.padding[1] and dw.dilation[0] == dw.dilation[1])


def _plain_pw(pw: nn.Module) -> bool:
    return (type(pw) is nn.Conv2d and pw.kernel_size == (1, 1) and pw.stride == (1, 1) and pw.padding == (0, 0)
            and pw.dilation == (1, 1) and pw.groups == 1 and pw.bias is None)


def _recompute(on: bool, fn, *args):
    """``fn(True, *args)``, storing only ``args`` for backward under ``opts.recompute``: autograd's
    non-reentrant checkpoint recomputes the rest (``fn(False, *args)``: BN outputs without a
    second running-stat update) when backward needs it; it also works under double backward.

    Why: the activations inside a sep/dil conv after its depthwise conv (pointwise output, BN
    output and its ReLU) are cheap to recompute from the depthwise output, but each is a full map
    held until backward. Every tensor ``fn`` reads must be in ``args`` (module parameters too):
    under ``functional_call`` the substituted weights are gone by the time backward recomputes.
    """
    if not (on and torch.is_grad_enabled()):
        return fn(True, *args)
    calls = [0]

    def run(*a):
        calls[0] += 1
        return fn(calls[0] == 1, *a)

    return checkpoint(run, *args, use_reentrant=False, preserve_rng_state=False)


def _recompute_here(inp: Input) -> bool:
    """Recompute the inner activations of the ops reading ``inp`` (large maps only: they hold most
    of the memory, while the small late maps are cheap to store and dispatch-bound to recompute)."""
    o = inp.opts
    return (o.recompute and (o.recompute_double or not o.double_backward)
            and min(inp.x.shape[-2:]) >= o.recompute_min_side)


def _pw_bn(pw: nn.Conv2d, bn: nn.BatchNorm2d, z: torch.Tensor, gamma: torch.Tensor | None,
           on: bool, opts: EngineOptions = DEFAULT) -> torch.Tensor:
    """``gamma * bn(pw(z))``; with ``on`` only ``z`` is kept for backward."""
    if not _plain_pw(pw):
        return K.bn(bn, pw(z), gamma)

    if on and K.light_ok(opts, bn, z):
        return K.PwBN.apply(z, pw.weight, *K.folded(bn, gamma), bn)

    def f(update, z, w, g, bw, bb):
        return K.bn(bn, K.pointwise(z, w, opts), g, update=update, params=(bw, bb))

    return _recompute(on, f, z, pw.weight, gamma, bn.weight, bn.bias)


def _dw_pw_bn(dw: nn.Conv2d, pw: nn.Conv2d, bn: nn.BatchNorm2d, inp: Input, gamma: torch.Tensor | None,
              relu: torch.Tensor | None = None, phased: bool = False) -> torch.Tensor | Phased:
    """DilConv's body on a shared ReLU: depthwise (maybe dilated) -> pointwise -> BN(gamma).
    ``phased``: an output computed in polyphase layout may stay there (:class:`Phased`)."""
    k, d, p, s = dw.kernel_size[0], dw.dilation[0], dw.padding[0], dw.stride[0]
    opts = inp.opts
    if relu is None and d == 2 and p == k - 1 and s in (1, 2) and _square(dw) and \
            opts.where(opts.phase_dilation, inp.x):
        if s == 2:
            z = _depthwise(dw, inp.relu_even(), 1, (k - 1) // 2, 1, opts)
            return _pw_bn(pw, bn, z, gamma, _recompute_here(inp), opts)
        xp = inp.relu_phases()
        b = inp.x.shape[0]
        z = _depthwise(dw, xp, 1, (k - 1) // 2, 1, opts)
        H, W = inp.x.shape[-2:]
        if H % 2 == 0 and W % 2 == 0:
            # pointwise conv and BN are per pixel: stay in phase layout (same BN statistics)
            y = Phased(_pw_bn(pw, bn, z, gamma, _recompute_here(inp), opts), b)
            return y if phased else y.tensor()
        z = K.from_phases(z, b)[:, :, :H, :W]
        return _pw_bn(pw, bn, z, gamma, _recompute_here(inp), opts)
    x = inp.relu() if relu is None else relu
    z = _depthwise(dw, x, s, p, d, opts) if _square(dw) else dw(x)
    return _pw_bn(pw, bn, z, gamma, _recompute_here(inp), opts)


def _dil_conv(op: DilConv, inp: Input, gamma: torch.Tensor | None, phased: bool = False) -> torch.Tensor | Phased:
    _, dw, pw, bn = op
    return _dw_pw_bn(dw, pw, bn, inp, gamma, phased=phased)


def _dil_conv_term(op: DilConv, inp: Input, gamma: torch.Tensor | None) -> torch.Tensor | Phased:
    """A dil conv as a term of a node's sum: left in phase layout under ``phase_sums``."""
    return _dil_conv(op, inp, gamma, phased=inp.opts.phase_sums)


def _sep_conv(op: SepConv, inp: Input, gamma: torch.Tensor | None) -> torch.Tensor:
    a, b = op[0], op[1]
    opts = inp.opts
    on = _recompute_here(inp)
    if on and _square(a[1]) and a[1].bias is None and _plain_pw(a[2]) and _square(b[1]) and b[1].bias is None:
        # keep only the two depthwise outputs: BN -> ReLU -> depthwise of the second half is
        # recomputed from the first pointwise conv's input
        dw1, dw2 = a[1], b[1]
        z1 = _depthwise(dw1, inp.relu(), dw1.stride[0], dw1.padding[0], dw1.dilation[0], opts)
        s2, p2, d2 = dw2.stride[0], dw2.padding[0], dw2.dilation[0]

        def mid(update, z, w, bw, bb, w2):
            y = K.bn(a[3], K.pointwise(z, w, opts), None, update=update, params=(bw, bb))
            return K.depthwise(w2, F.relu(y), s2, p2, d2, opts)

        if K.light_ok(opts, a[3], z1) and s2 == 1:
            z2 = K.SepMid.apply(z1, a[2].weight, a[3].weight, a[3].bias, dw2.weight, a[3], (s2, p2, d2))
        else:
            z2 = _recompute(on, mid, z1, a[2].weight, a[3].weight, a[3].bias, dw2.weight)
        return _pw_bn(b[2], b[3], z2, gamma, on, opts)
    y = _dw_pw_bn(a[1], a[2], a[3], inp, None)
    return _dw_pw_bn(b[1], b[2], b[3], inp, gamma, relu=F.relu(y))


def _relu_conv_bn(op: ReLUConvBN, inp: Input, gamma: torch.Tensor | None) -> torch.Tensor:
    _, conv, bn = op
    if _plain_pw(conv):
        return K.bn(bn, K.pointwise(inp.relu(), conv.weight, inp.opts), gamma)
    return K.bn(bn, conv(inp.relu()), gamma)


def factorized_reduce(op: FactorizedReduce, inp: Input, gamma: torch.Tensor | None) -> torch.Tensor:
    if inp.opts.shared_subsample and _plain_pw(op.conv_1) and _plain_pw(op.conv_2):
        even, odd = inp.relu_even_odd()
        opts = inp.opts
        y = torch.cat([K.pointwise(even, op.conv_1.weight, opts), K.pointwise(odd, op.conv_2.weight, opts)], dim=1)
        return K.bn(op.bn, y, gamma)
    return K.bn(op.bn, op.reduce(inp.relu()), gamma)


def _pool_bn(op: nn.Sequential, inp: Input, gamma: torch.Tensor | None) -> torch.Tensor | Scaled:
    pool, bn = op[0], op[1]
    if (inp.opts.shared_pools and bn.training and bn.track_running_stats and bn.momentum is not None and not bn.affine
            and bn.running_mean is not None):
        z, mean, var = inp.pooled_normed(pool, bn.eps)
        with torch.no_grad():
            m = bn.momentum
            bn.running_mean.mul_(1.0 - m).add_(mean, alpha=m)
            bn.running_var.mul_(1.0 - m).add_(var, alpha=m)
            bn.num_batches_tracked.add_(1)
        if gamma is None:
            return z
        return Scaled(z, gamma) if inp.opts.scaled_terms else z * gamma
    return K.bn(bn, inp.pooled(pool), gamma)


FUSED = {"sep": _sep_conv, "dil": _dil_conv_term, "rcb": _relu_conv_bn, "fr": factorized_reduce,
          "pool_bn": _pool_bn}


def _is_relu(m: nn.Module) -> bool:
    return type(m) is nn.ReLU


def _is_bn(m: nn.Module) -> bool:
    return type(m) is nn.BatchNorm2d


def _is_dilconv(m: nn.Module) -> bool:
    return (type(m) is DilConv and len(m) == 4 and _is_relu(m[0]) and type(m[1]) is nn.Conv2d
            and type(m[2]) is nn.Conv2d and _is_bn(m[3]))


def op_kind(op: nn.Module) -> str:
    """How the fast path runs an op; exact type checks so a plugin subclass is never mistaken."""
    t = type(op)
    if t is Identity:
        return "identity"
    if _is_dilconv(op):
        return "dil"
    if t is SepConv and len(op) == 2 and all(_is_dilconv(m) for m in op):
        return "sep"
    if t is ReLUConvBN and len(op) == 3 and _is_relu(op[0]) and type(op[1]) is nn.Conv2d and _is_bn(op[2]):
        return "rcb"
    if t is FactorizedReduce:
        return "fr"
    if t is nn.Sequential and len(op) == 2 and type(op[0]) in (nn.MaxPool2d, nn.AvgPool2d) and _is_bn(op[1]):
        return "pool_bn"
    return "generic"


def preprocess(module: nn.Module, inp: Input) -> torch.Tensor:
    kind = op_kind(module)
    if kind in ("rcb", "fr"):
        return FUSED[kind](module, inp, None)
    return module(inp.x)
