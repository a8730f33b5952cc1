"""The engine's newer tricks, each against the textbook computation.

* shared pools (one pool + one static BN per node), average pooling as a ones-kernel depthwise
  conv, recomputed sep/dil inner activations: forward, backward and double backward equal to
  ``supernet.reference`` / torch's own ops; BN running statistics move exactly as the plain
  model's;
* every engine option can be switched off on its own (``engine_options``), and each setting
  computes the same function;
* recomputation captures the weights it reads, so ``functional_call`` with substituted weights
  (the second-order virtual step) gives the same hypergradient with and without it.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from support.curvature import alpha_hvp
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from stablenas.spaces.catalog import get_space
from stablenas.supernet import kernels as K
from stablenas.supernet import network as N
from stablenas.supernet.arch import ArchParams
from stablenas.supernet.reference import build_plain

pytestmark = pytest.mark.usefixtures("one_thread")


def _close(a, b, rtol=1e-4, atol=1e-6):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) <= rtol * float(b.abs().max()) + atol


ALL_ON = N.EngineOptions(recompute_min_side=1)  # recompute on every map size (tests use tiny maps)


def _pair(space="darts", layers=3, C=4, **kw):
    torch.manual_seed(0)
    sp = get_space(space)
    fast = N.build_supernet(sp, C=C, layers=layers, in_channels=1, **kw).to(memory_format=torch.channels_last)
    fast.channels_last = True
    plain = build_plain(sp, C=C, layers=layers, in_channels=1, **kw)
    plain.load_state_dict(fast.state_dict())
    arch = ArchParams(sp, init_scale=1.0, edge_betas=True, generator=torch.Generator().manual_seed(0))
    return sp, fast, plain, arch


def _grads(net, arch, x, y):
    loss = F.cross_entropy(net(x, arch.op_weights(), arch.edge_weights()), y)
    params = list(net.parameters()) + list(arch.parameters())
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("opts", [ALL_ON, N.EngineOptions(recompute=False), N.EngineOptions(dense_grads=False),
                                  N.EngineOptions(linear_pw="never"), N.EngineOptions(linear_pw="always"),
                                  N.EngineOptions(shared_pools=False),
                                  N.EngineOptions(conv_avg_pool=False), N.EngineOptions(phase_dilation="never"),
                                  N.EngineOptions(small_dw5="always"), N.EngineOptions(double_backward=True),
                                  N.EngineOptions(shared_subsample=False), N.EngineOptions(phase_sums=False),
                                  N.EngineOptions(scaled_terms=False)],
                         ids=["all-on", "no-recompute", "no-dense-grads", "conv-pw", "linear-pw-always",
                              "no-shared-pools", "no-conv-avg-pool", "no-phase", "tiled-dw5", "double-backward",
                              "no-shared-subsample", "no-phase-sums", "no-scaled-terms"])
@pytest.mark.parametrize("space,kw", [("darts", {}), ("darts", {"partial_k": 2, "C": 8}), ("nb201", {"layers": 1})],
                         ids=["darts", "pc-darts", "nb201"])
def test_every_option_setting_matches_plain(opts, space, kw):
    sp, fast, plain, arch = _pair(space, **kw)
    N.set_engine(fast, opts)
    assert all(m.engine == opts for m in fast.modules() if hasattr(m, "engine"))
    x = torch.randn(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    for _ in range(2):  # twice: running statistics must move the same way
        lf, gf = _grads(fast, arch, x, y)
        lp, gp = _grads(plain, arch, x, y)
        assert abs(float(lf - lp)) < 1e-5
        for a, b in zip(gf, gp):
            assert (a is None) == (b is None)
            if a is not None:
                assert _close(a, b)
    sf, spl = fast.state_dict(), plain.state_dict()
    for k in sf:
        assert _close(sf[k].float(), spl[k].float()), k
    fast.eval()
    plain.eval()
    with torch.no_grad():
        assert _close(fast(x, arch.op_weights()), plain(x, arch.op_weights()))


@pytest.mark.parametrize("side", [14, 10])
def test_partial_channels_on_odd_maps(side):
    """PC-DARTS where a reduction cell reads an odd map (14x14 -> 7x7 -> 4x4, as fashion-mnist-14 in the
    collapse study): the bypassed channels are max-pooled to the ops' ceil(H/2), engine and plain agree."""
    sp, fast, plain, arch = _pair(partial_k=2, C=8)
    x = torch.randn(3, 1, side, side)
    y = torch.randint(0, 10, (3,))
    lf, gf = _grads(fast, arch, x, y)
    lp, gp = _grads(plain, arch, x, y)
    assert abs(float(lf - lp)) < 1e-5
    assert all((a is None) == (b is None) and (a is None or _close(a, b)) for a, b in zip(gf, gp))


@pytest.mark.parametrize("recompute_double", [True, False], ids=["checkpointed", "stored"])
def test_hvp_through_recomputed_activations_matches_plain(recompute_double):
    """Double backward (alpha HVP) through the checkpointed segments (and, the default under
    double backward, with them stored) equals the plain model's."""
    sp, fast, plain, arch = _pair()
    N.set_engine(fast, replace(ALL_ON, recompute_double=recompute_double))
    x = torch.randn(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    v = torch.randn(arch.num_alpha())

    with N.engine_options(fast, double_backward=True):
        gf, hf = alpha_hvp(fast, arch, x, y, v)
    gp, hp = alpha_hvp(plain, arch, x, y, v)
    assert _close(gf, gp)
    assert _close(hf, hp, 1e-3)


def test_recompute_reads_the_substituted_weights():
    """functional_call with virtual weights w' (second-order step): the recomputation in backward
    must use w', not the module's own parameters: same gradients as without recomputation."""
    sp, fast, _, arch = _pair()
    x = torch.randn(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    names, ws = zip(*fast.named_parameters())
    state = {k: v.clone() for k, v in fast.state_dict().items()}
    out = []
    for opts in (ALL_ON, N.EngineOptions(recompute=False)):
        fast.load_state_dict(state)
        N.set_engine(fast, opts)
        lt = F.cross_entropy(fast(x, arch.op_weights()), y)
        g = torch.autograd.grad(lt, ws, create_graph=True)
        virtual = {n: w - 0.5 * gi for n, w, gi in zip(names, ws, g)}
        lv = F.cross_entropy(functional_call(fast, virtual, (x, arch.op_weights())), y)
        out.append(torch.autograd.grad(lv, list(arch.parameters()) + list(ws), allow_unused=True))
    for a, b in zip(*out):
        assert (a is None) == (b is None)
        if a is not None:
            assert _close(a, b, 1e-3)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [8, 7])
def test_avg_pool_as_depthwise_conv(stride, hw):
    torch.manual_seed(1)
    x = torch.randn(2, 3, hw, hw, dtype=torch.float64, requires_grad=True)
    for opts in (K.DEFAULT, K.EngineOptions(double_backward=True)):
        ref = F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
        f = lambda a, o=opts: K.avg_pool_conv(a, 3, stride, 1, o)  # noqa: E731
        got = f(x)
        assert got.shape == ref.shape and torch.allclose(got, ref)
        g = torch.randn_like(ref)
        assert torch.allclose(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(ref, x, g)[0])
        assert torch.autograd.gradgradcheck(f, (x,))
    pool = torch.nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    assert K.is_plain_avg_pool(pool) and not K.is_plain_avg_pool(torch.nn.AvgPool2d(3, stride, 1))


def test_shared_pool_runs_once_per_node_and_updates_every_edge_bn():
    sp, fast, plain, arch = _pair()
    calls = []
    orig = K.pool

    def counting(module, x, opts=K.DEFAULT):
        calls.append(type(module).__name__)
        return orig(module, x, opts)

    x = torch.randn(4, 1, 8, 8)
    try:
        K.pool = counting
        fast(x, arch.op_weights())
        shared = len(calls)
        calls.clear()
        with N.engine_options(fast, shared_pools=False):
            fast(x, arch.op_weights())
        per_edge = len(calls)
    finally:
        K.pool = orig
    # darts: 2 pool kinds; per node (5 sources) vs per edge (14 edges) in each of the 3 cells
    assert per_edge == 3 * 14 * 2 and shared == 3 * 5 * 2
    # every edge's pool BN counted both batches (they are never skipped)
    for m in fast.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats:
            assert int(m.num_batches_tracked) == 2


def test_engine_options_is_scoped_and_leaves_plain_modules_alone():
    sp, fast, plain, arch = _pair()
    with N.engine_options(fast, fused=False, recompute=False) as o:
        assert not o.fused and not fast.cells[1].edges[3].engine.fused
    assert fast.engine == N.EngineOptions() and fast.cells[1].edges[3].engine == N.EngineOptions()
    with N.engine_options(plain, fused=False):  # the plain reference has no engine: unchanged
        pass
    assert not hasattr(plain, "engine")


@pytest.mark.parametrize("space,layers", [("darts", 3), ("nb201", 1)])
def test_channels_last_whatever_the_substituted_weights_strides(space, layers):
    """Weights made by arithmetic (the unrolled step's w - xi * dw) come back channels-first; on a
    1-channel input, where every stem weight and input is contiguous in both layouts, the network
    ran channels-first from the stem on (2x slower). The last cell's output (the global pooling's
    input: the fused path calls no cell module) must still be channels_last."""
    _, fast, _, arch = _pair(space, layers=layers)
    x = torch.randn(4, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    seen = []
    hook = fast.global_pooling.register_forward_pre_hook(lambda m, args: seen.append(K.is_channels_last(args[0])))
    try:
        cf = {n: p.detach().clone(memory_format=torch.contiguous_format) for n, p in fast.named_parameters()}
        assert not any(K.is_channels_last(v) for v in cf.values())
        out_sub = functional_call(fast, cf, (x, arch.op_weights()))
        out_own = fast(x, arch.op_weights())
    finally:
        hook.remove()
    assert seen == [True, True]
    assert _close(out_sub, out_own)


def test_weights_frozen_gives_the_same_alpha_gradients_and_restores():
    """Frozen weights change only what is computed, not the alpha gradient (double backward too), and
    every parameter that required grad requires it again afterwards, also after an exception."""
    _, fast, _, arch = _pair(layers=3, C=4)
    x = torch.randn(4, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    frozen_by_user = fast.classifier.bias
    frozen_by_user.requires_grad_(False)
    out = []
    for freeze in (False, True):
        with N.double_backward_mode(fast), (N.weights_frozen(fast) if freeze else contextlib.nullcontext()):
            loss = F.cross_entropy(fast(x, arch.op_weights(), arch.edge_weights()), y)
            g = torch.autograd.grad(loss, list(arch.parameters()), create_graph=True)
            v = [torch.ones_like(t) for t in g]
            hv = torch.autograd.grad(g, list(arch.parameters()), grad_outputs=v)
        out.append([t.detach() for t in g] + list(hv))
    for a, b in zip(*out):
        assert _close(a, b, 1e-5)
    with pytest.raises(RuntimeError), N.weights_frozen(fast):
        assert not any(p.requires_grad for p in fast.parameters())
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in fast.parameters() if p is not frozen_by_user)
    assert not frozen_by_user.requires_grad


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("seg", ["pw_bn", "sep_mid"])
def test_light_recompute_segments_match_autograd(seg, affine):
    """PwBN / SepMid (recompute without a checkpoint): output, running statistics, first derivatives
    (their own backward: saved batch statistics, no depthwise rerun) and second derivatives (the
    rerun-with-autograd backward under create_graph) equal the textbook ops' (float64 gradcheck)."""
    torch.manual_seed(7)
    C = 4
    z = torch.randn(3, C, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    z.requires_grad_(True)
    w = torch.randn(C, C, 1, 1, dtype=torch.float64, requires_grad=True)
    wb = (torch.rand(C, dtype=torch.float64) + 0.5).requires_grad_(True) if affine else None
    bb = torch.randn(C, dtype=torch.float64, requires_grad=True) if affine else None
    wd = torch.randn(C, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    bn_a = torch.nn.BatchNorm2d(C, affine=False).double()
    bn_b = torch.nn.BatchNorm2d(C, affine=False).double()

    def light(z, w, wb, bb, wd):
        if seg == "pw_bn":
            return K.PwBN.apply(z, w, wb, bb, bn_a)
        return K.SepMid.apply(z, w, wb, bb, wd, bn_a, (1, 1, 1))

    def textbook(z, w, wb, bb, wd):
        y = F.batch_norm(F.conv2d(z, w), bn_b.running_mean, bn_b.running_var, wb, bb, True, 0.1, 1e-5)
        return y if seg == "pw_bn" else F.conv2d(F.relu(y), wd, None, 1, 1, 1, C)

    args = (z, w, wb, bb, wd)
    a, b = light(*args), textbook(*args)
    assert torch.allclose(a, b)
    assert torch.allclose(bn_a.running_mean, bn_b.running_mean) and torch.allclose(bn_a.running_var, bn_b.running_var)
    g = torch.randn_like(b)
    used = [t for t in args if t is not None and (seg == "sep_mid" or t is not wd)]
    for x, y in zip(torch.autograd.grad(a, used, g), torch.autograd.grad(b, used, g)):
        assert torch.allclose(x, y)
    ins = tuple(t for t in args if t is not None)

    def f(*ts):
        it = iter(ts)
        return light(*[next(it) if t is not None else None for t in args])

    assert torch.autograd.gradcheck(f, ins)
    assert torch.autograd.gradgradcheck(f, ins)


def test_dwconv_keeps_only_what_the_requested_gradients_need():
    """DWConv/DWWeight save x only for the weight gradient and w only for the input gradient: with
    frozen weights (Hessian w.r.t. alpha) a create_graph backward must not hold every gradient map
    it convolves. Gradients (first and second order) still equal torch's conv."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = K.DWConv.apply(x, w, 1, 1)
    assert not any(t is x for t in saved) and any(t is w for t in saved)
    ref = F.conv2d(x, w, None, 1, 1, 1, 3)
    v = torch.randn_like(ref)
    (gx,) = torch.autograd.grad((y * v).sum(), x)
    (rx,) = torch.autograd.grad((ref * v).sum(), x)
    assert torch.allclose(gx, rx)
    wq = w.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: K.DWConv.apply(a, b, 1, 1), (x, wq))
    assert torch.autograd.gradgradcheck(lambda a, b: K.DWConv.apply(a, b, 1, 1), (x, wq))
    assert torch.autograd.gradgradcheck(lambda b: K.DWConv.apply(x.detach(), b, 2, 2), (wq,))


@pytest.mark.parametrize("side", [6, 7])
@pytest.mark.parametrize("cl", [True, False])
def test_subsample_picks_even_and_odd_pixels_with_one_exact_backward(side, cl):
    """kernels.Subsample against the slices FactorizedReduce takes (odd sizes zero-padded), in both
    layouts: values, layout, gradients of either pick alone or both, and second derivatives."""
    x = torch.randn(2, 3, side, side, dtype=torch.float64)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    even, odd = K.Subsample.apply(x)
    xp = F.pad(x, (0, side % 2, 0, side % 2))
    ref_even, ref_odd = x[:, :, 0::2, 0::2], xp[:, :, 1::2, 1::2]
    assert torch.equal(even, ref_even) and torch.equal(odd, ref_odd)
    assert K.is_channels_last(even) == cl and K.is_channels_last(odd) == cl
    ge, go = torch.randn_like(even), torch.randn_like(odd)
    for use in ("even", "odd", "both"):
        e, o = K.Subsample.apply(x)
        loss = (e * ge).sum() * (use != "odd") + (o * go).sum() * (use != "even")
        ref = (ref_even * ge).sum() * (use != "odd") + (ref_odd * go).sum() * (use != "even")
        (g,) = torch.autograd.grad(loss, x)
        (gr,) = torch.autograd.grad(ref, x, retain_graph=True)
        assert torch.equal(g, gr), use
    assert torch.autograd.gradcheck(lambda t: K.Subsample.apply(t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: K.Subsample.apply(t), (x,))


def test_phase_sums_convert_once_per_node():
    """Under phase_sums the dil convs' phase-layout outputs are summed per node: one conversion back
    per node (4 per cell here), not one per dil op, with the same result as converting each."""
    sp, fast, plain, arch = _pair(layers=1, C=4)
    x = torch.randn(4, 1, 8, 8)
    calls = []
    orig = K.from_phases

    def counting(y, b):
        calls.append(1)
        return orig(y, b)

    outs = []
    try:
        K.from_phases = counting
        for on in (True, False):
            calls.clear()
            with N.engine_options(fast, phase_sums=on):
                outs.append(fast(x, arch.op_weights()))
            n_dil = sum(1 for e in fast.cells[0].edges for name in e.op_names if name.startswith("dil_conv"))
            assert len(calls) == (sp.n_nodes if on else n_dil)
    finally:
        K.from_phases = orig
    assert _close(outs[0], outs[1])


def test_scaled_terms_add_pool_outputs_without_product_maps():
    """Under scaled_terms a shared pool's output enters each edge's node sum by one addcmul_: the
    forward makes no full-map product per pool op and edge (here 2 pools x 14 edges) beyond each
    node sum's first term, and gives the same output and gradients as the product maps."""
    sp, fast, plain, arch = _pair(layers=1, C=4)
    x = torch.randn(4, 1, 8, 8)
    n_pool = sum(1 for e in fast.cells[0].edges for name in e.op_names if "pool" in name)
    assert n_pool == 28

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.mul.Tensor and args[0].dim() == 4 and args[1].dim() == 0:
                self.n += 1
            return func(*args, **(kwargs or {}))

    counts, outs, grads = [], [], []
    for on in (True, False):
        with N.engine_options(fast, scaled_terms=on), Count() as c:
            w = arch.op_weights()
            out = fast(x, w)
        counts.append(c.n)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [*arch.alphas.values(), *fast.parameters()],
                                         allow_unused=True))
    # on: one product per node, its sum's first term (max pool is the first op of every edge);
    # off: one per pool op and edge
    assert counts == [sp.n_nodes, n_pool]
    assert _close(outs[0], outs[1])
    for a, b in zip(grads[0], grads[1]):
        assert (a is None) == (b is None)
        if a is not None:
            assert _close(a, b)
