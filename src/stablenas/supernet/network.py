"""The weight-sharing supernet: mixed op, search cells and the two macro skeletons.

Op weights are an *argument* of ``forward`` (see ``supernet.arch``), never stored in modules.
Per edge the mixed op computes ``sum_k w_k * op_k(x)`` over its own op list, skipping ops whose
output is identically zero (`none`): their weight still enters the softmax, so alpha's gradient
is unchanged, but no zeros are computed or stored. ``hard`` selects one op per edge (GDAS,
random search with weight sharing) and then only that op runs.

One forward path. The modules and parameter names are those of the plain definition
(``spaces.ops`` blocks inside ``MixedOp.ops``), so state dicts, ``functional_call`` and the
evaluation code are unaffected; only the order and grouping of the arithmetic changes, never its
result (up to float rounding, checked against ``supernet.reference`` in tests/test_perf.py). Which
optimisations run is an explicit attribute of every supernet module, ``engine``
(:class:`kernels.EngineOptions`; :func:`engine_options` changes it for a block of code, e.g.
``fused=False`` calls every op module as written so that forward hooks see every op output).
What the engine does, and why (kernel-level tricks live in ``supernet.kernels``):

* one ReLU per *tensor*, not per op: SepConv, DilConv, ReLUConvBN and FactorizedReduce all
  begin with ReLU, and a state feeds several edges (DARTS: ``c_{k-2}`` feeds 4 edges x 4 conv
  ops) and two cells' preprocessing. ``_Input`` computes ``relu(x)`` (and its derived forms)
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

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..registry import SKELETONS
from ..spaces.catalog import SearchSpace
from ..spaces.ops import (
    OPS,
    DilConv,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    SepConv,
    build_op,
)
from . import kernels as K
from .kernels import DEFAULT, EngineOptions
from .macro import NB201Macro

# the kernel helpers under the names the tests and older callers use
_DWConv = K.DWConv
_DWWeight = K.DWWeight
_bn = K.bn
_to_phases = K.to_phases
_from_phases = K.from_phases
_is_channels_last = K.is_channels_last

OpWeights = Mapping[str, torch.Tensor]
Hard = Mapping[str, Sequence[int]]

__all__ = ["EngineOptions", "engine_options", "weights_frozen", "MixedOp", "SearchCell", "SearchNetwork",
           "NB201SearchCell", "NB201SearchNetwork", "build_supernet", "channel_shuffle", "drop_path"]


def _engine_modules(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(getattr(m, "engine", None), EngineOptions)]


@contextmanager
def engine_options(net: nn.Module, **changes) -> Iterator[EngineOptions]:
    """Run ``net`` (every supernet module in it) with some engine options changed, e.g.
    ``engine_options(net, fused=False)`` (every op module as written, so hooks see op outputs) or
    ``engine_options(net, double_backward=True)`` (for code that differentiates twice). A module
    without engine options (the plain reference) is left as it is."""
    mods = _engine_modules(net)
    old = [m.engine for m in mods]
    for m in mods:
        m.engine = replace(m.engine, **changes)
    try:
        yield replace(getattr(net, "engine", DEFAULT), **changes)
    finally:
        for m, o in zip(mods, old):
            m.engine = o


def set_engine(net: nn.Module, opts: EngineOptions) -> None:
    """Set the engine options of every supernet module in ``net`` (permanently)."""
    for m in _engine_modules(net):
        m.engine = opts


def double_backward_mode(net: nn.Module, enabled: bool = True):
    """``engine_options(net, double_backward=enabled)``: every depthwise conv with a depthwise-conv
    backward, for code that differentiates twice (HVPs w.r.t. alpha, the exact unrolled gradient)."""
    return engine_options(net, double_backward=bool(enabled))


@contextmanager
def weights_frozen(net: nn.Module, keep: Sequence[torch.Tensor] = ()) -> Iterator[None]:
    """``net``'s parameters, but those in ``keep``, do not require grad inside (restored after, also
    on an exception): for code that differentiates w.r.t. alpha or op weights only (the first-order
    alpha step, the SDARTS-ADV attack, the alpha Hessian), or w.r.t. alpha and a few weights (OLES's
    validation gradient of the op weights).

    Why: autograd skips the weight gradients of library kernels that no requested input needs, but
    a custom Function's ``needs_input_grad`` is fixed when its forward runs, so :class:`kernels.DWConv`
    (every depthwise conv under double backward, small 5x5 ones always) computed and, under
    ``create_graph``, recorded weight gradients nobody asked for: building the alpha-gradient graph
    and 4 Hessian-vector products took 23.4 s, 18.6 s with the weights frozen (cpu-study size, one
    thread; identical products)."""
    kept = {id(p) for p in keep}
    params = [p for p in net.parameters() if p.requires_grad and id(p) not in kept]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """ScheduledDropPath: zero whole samples with prob p, rescale survivors by 1/(1-p)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS channel shuffle; keeps a channels_last input channels_last."""
    b, c, h, w = x.shape
    if _is_channels_last(x):
        y = x.permute(0, 2, 3, 1).reshape(b, h, w, groups, c // groups).transpose(3, 4).reshape(b, h, w, c)
        return y.permute(0, 3, 1, 2)
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


# -- fused building blocks ---------------------------------------------------------------------


class _Input:
    """A tensor that feeds several ops (and edges), with its derived forms computed once, and the
    engine options of the forward pass that made it."""

    __slots__ = ("x", "opts", "_cache")

    def __init__(self, x: torch.Tensor, opts: EngineOptions = DEFAULT):
        self.x = x
        self.opts = opts
        self._cache: dict = {}

    def derive(self, x: torch.Tensor) -> _Input:
        return _Input(x, self.opts)

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
            r = self._cache["phases"] = _to_phases(x)
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

    def head(self, c: int) -> _Input:
        """The first ``c`` channels (PC-DARTS), shared by every edge leaving this tensor."""
        key = ("head", c)
        r = self._cache.get(key)
        if r is None:
            r = self._cache[key] = self.derive(self.x[:, :c])
        return r


class _Phased:
    """An op output left in polyphase layout (``kernels.to_phases`` of a ``b``-sample map): summed
    in that layout with the other such outputs into the same node, converted back once."""

    __slots__ = ("y", "b")

    def __init__(self, y: torch.Tensor, b: int):
        self.y, self.b = y, b

    def tensor(self) -> torch.Tensor:
        return _from_phases(self.y, self.b)


class _Scaled:
    """``w * z`` for a map ``z`` that several edges share (a node's pooled and normalised input),
    left unmultiplied: a sum adds it with one ``addcmul_`` instead of writing the product as a new
    map and adding that (one full-map write and read less per pool op and edge)."""

    __slots__ = ("z", "w")

    def __init__(self, z: torch.Tensor, w: torch.Tensor):
        self.z, self.w = z, w

    def tensor(self) -> torch.Tensor:
        return self.z * self.w


class _Sum:
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

    def add(self, y: torch.Tensor | _Phased | _Scaled) -> None:
        if isinstance(y, _Scaled):
            self.addcmul(y.z, y.w)
        elif isinstance(y, _Phased):
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
        y = _from_phases(self.phased, self.b)
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


def _recompute_here(inp: _Input) -> bool:
    """Recompute the inner activations of the ops reading ``inp`` (large maps only: they hold most
    of the memory, while the small late maps are cheap to store and dispatch-bound to recompute)."""
    o = inp.opts
    return (o.recompute and (o.recompute_double or not o.double_backward)
            and min(inp.x.shape[-2:]) >= o.recompute_min_side)


def _pw_bn(pw: nn.Conv2d, bn: nn.BatchNorm2d, z: torch.Tensor, gamma: torch.Tensor | None,
           on: bool, opts: EngineOptions = DEFAULT) -> torch.Tensor:
    """``gamma * bn(pw(z))``; with ``on`` only ``z`` is kept for backward."""
    if not _plain_pw(pw):
        return _bn(bn, pw(z), gamma)

    if on and K.light_ok(opts, bn, z):
        return K.PwBN.apply(z, pw.weight, *K.folded(bn, gamma), bn)

    def f(update, z, w, g, bw, bb):
        return _bn(bn, K.pointwise(z, w, opts), g, update=update, params=(bw, bb))

    return _recompute(on, f, z, pw.weight, gamma, bn.weight, bn.bias)


def _dw_pw_bn(dw: nn.Conv2d, pw: nn.Conv2d, bn: nn.BatchNorm2d, inp: _Input, gamma: torch.Tensor | None,
              relu: torch.Tensor | None = None, phased: bool = False) -> torch.Tensor | _Phased:
    """DilConv's body on a shared ReLU: depthwise (maybe dilated) -> pointwise -> BN(gamma).
    ``phased``: an output computed in polyphase layout may stay there (:class:`_Phased`)."""
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
            y = _Phased(_pw_bn(pw, bn, z, gamma, _recompute_here(inp), opts), b)
            return y if phased else y.tensor()
        z = _from_phases(z, b)[:, :, :H, :W]
        return _pw_bn(pw, bn, z, gamma, _recompute_here(inp), opts)
    x = inp.relu() if relu is None else relu
    z = _depthwise(dw, x, s, p, d, opts) if _square(dw) else dw(x)
    return _pw_bn(pw, bn, z, gamma, _recompute_here(inp), opts)


def _dil_conv(op: DilConv, inp: _Input, gamma: torch.Tensor | None, phased: bool = False) -> torch.Tensor | _Phased:
    _, dw, pw, bn = op
    return _dw_pw_bn(dw, pw, bn, inp, gamma, phased=phased)


def _dil_conv_term(op: DilConv, inp: _Input, gamma: torch.Tensor | None) -> torch.Tensor | _Phased:
    """A dil conv as a term of a node's sum: left in phase layout under ``phase_sums``."""
    return _dil_conv(op, inp, gamma, phased=inp.opts.phase_sums)


def _sep_conv(op: SepConv, inp: _Input, gamma: torch.Tensor | None) -> torch.Tensor:
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
            y = _bn(a[3], K.pointwise(z, w, opts), None, update=update, params=(bw, bb))
            return K.depthwise(w2, F.relu(y), s2, p2, d2, opts)

        if K.light_ok(opts, a[3], z1) and s2 == 1:
            z2 = K.SepMid.apply(z1, a[2].weight, a[3].weight, a[3].bias, dw2.weight, a[3], (s2, p2, d2))
        else:
            z2 = _recompute(on, mid, z1, a[2].weight, a[3].weight, a[3].bias, dw2.weight)
        return _pw_bn(b[2], b[3], z2, gamma, on, opts)
    y = _dw_pw_bn(a[1], a[2], a[3], inp, None)
    return _dw_pw_bn(b[1], b[2], b[3], inp, gamma, relu=F.relu(y))


def _relu_conv_bn(op: ReLUConvBN, inp: _Input, gamma: torch.Tensor | None) -> torch.Tensor:
    _, conv, bn = op
    if _plain_pw(conv):
        return _bn(bn, K.pointwise(inp.relu(), conv.weight, inp.opts), gamma)
    return _bn(bn, conv(inp.relu()), gamma)


def _factorized_reduce(op: FactorizedReduce, inp: _Input, gamma: torch.Tensor | None) -> torch.Tensor:
    if inp.opts.shared_subsample and _plain_pw(op.conv_1) and _plain_pw(op.conv_2):
        even, odd = inp.relu_even_odd()
        opts = inp.opts
        y = torch.cat([K.pointwise(even, op.conv_1.weight, opts), K.pointwise(odd, op.conv_2.weight, opts)], dim=1)
        return _bn(op.bn, y, gamma)
    return _bn(op.bn, op.reduce(inp.relu()), gamma)


def _pool_bn(op: nn.Sequential, inp: _Input, gamma: torch.Tensor | None) -> torch.Tensor | _Scaled:
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
        return _Scaled(z, gamma) if inp.opts.scaled_terms else z * gamma
    return _bn(bn, inp.pooled(pool), gamma)


_FUSED = {"sep": _sep_conv, "dil": _dil_conv_term, "rcb": _relu_conv_bn, "fr": _factorized_reduce,
          "pool_bn": _pool_bn}


def _is_relu(m: nn.Module) -> bool:
    return type(m) is nn.ReLU


def _is_bn(m: nn.Module) -> bool:
    return type(m) is nn.BatchNorm2d


def _is_dilconv(m: nn.Module) -> bool:
    return (type(m) is DilConv and len(m) == 4 and _is_relu(m[0]) and type(m[1]) is nn.Conv2d
            and type(m[2]) is nn.Conv2d and _is_bn(m[3]))


def _kind(op: nn.Module) -> str:
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


def _preprocess(module: nn.Module, inp: _Input) -> torch.Tensor:
    kind = _kind(module)
    if kind in ("rcb", "fr"):
        return _FUSED[kind](module, inp, None)
    return module(inp.x)


class MixedOp(nn.Module):
    """Weighted sum of one edge's candidate ops.

    ``partial_k > 1`` is PC-DARTS's partial channel connection: only C/K channels go through the
    ops, the rest bypass (max-pooled when the edge reduces), then channels are shuffled.

    ``skip`` (a number, DARTS-'s beta) adds ``skip * aux(x)`` to the output, a path outside the
    candidates (no op weight, no alpha): ``aux`` is the identity on a stride-1 edge and, with
    ``aux_skip``, a FactorizedReduce of its own on a stride-2 edge (DARTS- ``model_search.py``,
    ``MixedOp``). It reads the whole input (all C channels under partial channels) and is never
    dropped (drop path) or scaled by edge weights: the cells add it beside the weighted edge.
    """

    def __init__(self, C: int, stride: int, ops: Sequence[str], partial_k: int = 1, pool_bn: bool = True,
                 affine: bool = False, aux_skip: bool = False):
        super().__init__()
        if C % partial_k:
            raise ValueError(f"partial channels: C={C} is not divisible by K={partial_k}")
        self.op_names = tuple(ops)
        self.stride = stride
        self.partial_k = partial_k
        c_op = C // partial_k
        self.ops = nn.ModuleList()
        self.active: list[int] = []  # indices of ops that are not identically zero
        for k, name in enumerate(ops):
            op = build_op(name, c_op, stride, affine)
            if pool_bn and "pool" in name:
                # DARTS: pooling outputs get a static BN so their scale matches the convs'
                op = nn.Sequential(op, nn.BatchNorm2d(c_op, affine=False))
            self.ops.append(op)
            if not OPS[name].is_zero:
                self.active.append(k)
        self.droppable = [not isinstance(op, Identity) for op in self.ops]
        # ceil_mode: on an odd map (7x7 after one reduction of 14x14) the stride-2 ops give ceil(H/2); the same
        # pooling as PC-DARTS's MaxPool2d(2, 2) on even maps
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if (partial_k > 1 and stride == 2) else None
        self.aux = FactorizedReduce(C, C, affine=False) if (aux_skip and stride == 2) else None
        self.engine = DEFAULT

    def _aux_module(self) -> FactorizedReduce:
        if self.aux is None:
            raise ValueError("an auxiliary skip on a stride-2 edge needs its FactorizedReduce: build the "
                             "supernet with aux_skip=True")
        return self.aux

    def auxiliary(self, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary skip path's output (unweighted), every module as written."""
        return x if self.stride == 1 else self._aux_module()(x)

    def _out_shape_zero(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return torch.zeros_like(x)
        return torch.zeros_like(x[:, :, ::self.stride, ::self.stride])

    # -- plain path: every op module as written ---------------------------------------------
    def _mix(self, x: torch.Tensor, w: torch.Tensor, hard: int | None, drop_prob: float) -> torch.Tensor:
        ks = self.active if hard is None else ([hard] if hard in self.active else [])
        out = None
        for k in ks:
            y = self.ops[k](x)
            if drop_prob > 0.0 and self.training and self.droppable[k]:
                y = drop_path(y, drop_prob)
            y = w[k] * y
            out = y if out is None else out + y
        if out is None:
            # every selected op is `none`; keep alpha in the graph for a defined gradient
            out = self._out_shape_zero(x) * w.sum()
        return out

    # -- fast path ---------------------------------------------------------------------------
    def _mix_fast(self, inp: _Input, w: torch.Tensor, hard: int | None, drop_prob: float, acc: _Sum) -> None:
        """Add ``sum_k w_k op_k(x)`` into ``acc`` (in place: see :class:`_Sum`)."""
        kinds = self.__dict__.get("_kinds")
        if kinds is None or len(kinds) != len(self.ops):
            kinds = self.__dict__["_kinds"] = [_kind(op) for op in self.ops]
        ks = self.active if hard is None else ([hard] if hard in self.active else [])
        drop = drop_prob > 0.0 and self.training
        added = False
        for k in ks:
            kind = kinds[k]
            added = True
            if kind == "identity":
                acc.addcmul(inp.x, w[k])
                continue
            fused = _FUSED.get(kind)
            if fused is not None:
                y = fused(self.ops[k], inp, w[k])
                if drop and self.droppable[k]:
                    y = drop_path(y.tensor() if isinstance(y, (_Phased, _Scaled)) else y, drop_prob)
            else:
                y = self.ops[k](inp.x)
                if drop and self.droppable[k]:
                    y = drop_path(y, drop_prob)
                y = w[k] * y
            acc.add(y)
        if not added:
            acc.add(self._out_shape_zero(inp.x) * w.sum())

    def _forward_fast(self, inp: _Input, w: torch.Tensor, hard: int | None, drop_prob: float,
                      edge_w: torch.Tensor | None = None, acc: _Sum | None = None, skip: float | None = None) -> _Sum:
        """The edge output, times ``edge_w`` when given (folded into the op weights), plus
        ``skip * aux(x)``, added into ``acc`` (a new sum when None), which is returned."""
        acc = _Sum() if acc is None else acc
        if edge_w is not None:
            w = w * edge_w
        if self.partial_k == 1:
            self._mix_fast(inp, w, hard, drop_prob, acc)
        else:
            self._partial_fast(inp, w, hard, drop_prob, edge_w, acc)
        if skip is not None:
            # the stride-2 path shares relu(x)'s even/odd pixels with the skip_connect candidate
            acc.add_scaled(inp.x if self.stride == 1 else _factorized_reduce(self._aux_module(), inp, None), skip)
        return acc

    def _partial_fast(self, inp: _Input, w: torch.Tensor, hard: int | None, drop_prob: float,
                      edge_w: torch.Tensor | None, acc: _Sum) -> None:
        """PC-DARTS: the first C/K channels mixed, the rest bypassing, shuffled; into ``acc``."""
        c = inp.x.shape[1] // self.partial_k
        part = _Sum()
        self._mix_fast(inp.head(c), w, hard, drop_prob, part)
        xb = inp.x[:, c:]
        if self.bypass_pool is not None:
            xb = self.bypass_pool(xb)
        if edge_w is not None:
            xb = xb * edge_w
        acc.add(channel_shuffle(torch.cat([part.tensor(), xb], dim=1), self.partial_k))

    def forward(self, x: torch.Tensor, w: torch.Tensor, hard: int | None = None,
                drop_prob: float = 0.0, skip: float | None = None) -> torch.Tensor:
        if self.engine.fused:
            return self._forward_fast(_Input(x, self.engine), w, hard, drop_prob, skip=skip).tensor()
        if self.partial_k == 1:
            y = self._mix(x, w, hard, drop_prob)
        else:
            c = x.shape[1] // self.partial_k
            xa, xb = x[:, :c], x[:, c:]
            ya = self._mix(xa, w, hard, drop_prob)
            if self.bypass_pool is not None:
                xb = self.bypass_pool(xb)
            y = channel_shuffle(torch.cat([ya, xb], dim=1), self.partial_k)
        return y if skip is None else y + skip * self.auxiliary(x)


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

    def _forward_fast(self, in0: _Input, in1: _Input, w: torch.Tensor, edge_w: torch.Tensor | None,
                      hard: Sequence[int] | None, drop_prob: float, skip: float | None = None) -> torch.Tensor:
        states = [in0.derive(_preprocess(self.preprocess0, in0)), in1.derive(_preprocess(self.preprocess1, in1))]
        for i, edges in enumerate(self.node_edges):
            acc = _Sum()
            for e in edges:
                self.edges[e]._forward_fast(states[self.sources[e]], w[e], None if hard is None else hard[e],
                                            drop_prob, None if edge_w is None else edge_w[e], acc, skip)
            s = acc.tensor()
            if self.node_norm is not None:
                s = self.node_norm[i](s)
            states.append(in1.derive(K.dense_grad(s, in1.opts)))
        return torch.cat([st.x for st in states[self.space.n_inputs:]], dim=1)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, w: torch.Tensor, edge_w: torch.Tensor | None = None,
                hard: Sequence[int] | None = None, drop_prob: float = 0.0, skip: float | None = None) -> torch.Tensor:
        if self.engine.fused:
            return self._forward_fast(_Input(s0, self.engine), _Input(s1, self.engine), w, edge_w, hard, drop_prob,
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


def cell_op_weights(weights: OpWeights, cells: Sequence[nn.Module]) -> list[torch.Tensor | None]:
    """Each cell's op weights ``[edges, ops]`` (None for a cell without, e.g. NB201's ResNet blocks):
    its type's, or, when the type's tensor is per cell ``[cells of the type, edges, ops]``, its own
    row, in network order (Lambda-DARTS differentiates every cell's op weights separately)."""
    seen: dict[str, int] = {}
    out: list[torch.Tensor | None] = []
    for cell in cells:
        ct = getattr(cell, "cell_type", None)
        if ct is None:
            out.append(None)
            continue
        i = seen[ct] = seen.get(ct, -1) + 1
        w = weights[ct]
        out.append(w[i] if w.dim() == 3 else w)
    return out


def _stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net.stem(x)``, channels_last when ``net.channels_last``, whatever the weights' strides.

    Why the output too: a conv picks its output layout from its input's and weight's strides, and a
    1-channel input or a weight with one input channel per group or a 1x1 kernel is contiguous in
    both layouts, so the layout follows the weight's strides. Weights made by arithmetic (the
    unrolled step's ``w - xi * dw``, the finite-difference ``w +- eps * v``) come back with
    channels-first strides, and the whole supernet then ran channels-first: the validation pass
    at the unrolled weights took 2.0x the time of a weight step on the same batch (measured, cpu-study
    size, one thread). Every later conv follows its (unambiguous) input, so fixing the stem's output
    fixes the network."""
    if not net.channels_last:
        return net.stem(x)
    cl = torch.channels_last
    return net.stem(x.contiguous(memory_format=cl)).contiguous(memory_format=cl)


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
        s0 = s1 = _stem(self, x)
        if self.engine.fused:
            # cell outputs feed two cells' preprocessing: share their ReLU through _Input
            in0 = in1 = _Input(s1, self.engine)
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
        states = [_Input(x, self.engine) if fast else x]
        for i, edges in enumerate(self.node_edges):
            s = None
            acc = _Sum()
            for e in edges:
                h = None if hard is None else hard[e]
                if fast:
                    self.edges[e]._forward_fast(states[self.sources[e]], w[e], h, drop_prob,
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
    """NAS-Bench-201 skeleton (``supernet.macro``) around :class:`NB201SearchCell`."""

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
        x = _stem(self, x)
        ew = None if edge_weights is None else edge_weights["cell"]
        h = None if hard is None else hard["cell"]
        for cell, w in zip(self.cells, cell_op_weights(weights, self.cells)):
            if isinstance(cell, NB201SearchCell):
                x = cell(x, w, ew, h, self.drop_path_prob, skip)
            else:
                x = cell(x)
        return self.head(x)


def build_supernet(space: SearchSpace, *, C: int = 16, layers: int = 8, num_classes: int = 10,
                   in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1,
                   node_norm: bool = False, aux_skip: bool = False) -> nn.Module:
    """The supernet of a space's skeleton (:mod:`stablenas.skeletons`). For nb201, ``layers`` is
    cells per stage (N). ``aux_skip``: the modules of DARTS-'s auxiliary skip (see :class:`MixedOp`)."""
    return SKELETONS[space.skeleton].build_supernet(
        space, C=C, layers=layers, num_classes=num_classes, in_channels=in_channels,
        stem_multiplier=stem_multiplier, partial_k=partial_k, node_norm=node_norm, aux_skip=aux_skip)
