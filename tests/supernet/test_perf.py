"""The fast supernet computes exactly what the plain DARTS model computes.

Every fast-path change (shared ReLU, op weight folded into BN, polyphase dilated convs, ...) is
checked against ``supernet.reference``: the same weights loaded into both, then logits, loss,
every weight gradient and the alpha gradient must agree to float tolerance; also the ungrouped
path (engine option ``fused=False``) of the very same modules, Hessian-vector products by double backward,
and whole search iterations (first and second order) of ``Search`` against the plain architect.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from support.curvature import alpha_hvp

from stablenas.config import load_config
from stablenas.search.loop import Search
from stablenas.spaces.catalog import get_space
from stablenas.spaces.ops import DilConv, FactorizedReduce
from stablenas.supernet import fused
from stablenas.supernet import kernels as K
from stablenas.supernet import network as N
from stablenas.supernet.arch import ArchParams
from stablenas.supernet.reference import PlainDARTS, PlainSearchStep, build_plain

RTOL = 1e-4  # relative to each tensor's max magnitude (float32, different summation orders)


# tiny tensors: one intra-op thread avoids OpenMP spin-waits on a busy shared machine (2 threads made these
# tests ~20x slower under load). The supernet no longer runs oneDNN's channels_last 1x1 stride-2 conv, whose
# backward corrupts the heap with 2-4 input channels on one thread (see
# test_factorized_reduce_grads_in_channels_last).
pytestmark = pytest.mark.usefixtures("one_thread")


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL, atol: float = 1e-6) -> bool:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) <= rtol * float(b.abs().max()) + atol


def _pair(space: str, *, C: int = 4, layers: int = 3, in_ch: int = 1, cl: bool = False, seed: int = 0, **kw):
    torch.manual_seed(seed)
    sp = get_space(space)
    fast = N.build_supernet(sp, C=C, layers=layers, in_channels=in_ch, **kw)
    plain = build_plain(sp, C=C, layers=layers, in_channels=in_ch, **kw)
    plain.load_state_dict(fast.state_dict())
    if cl:
        fast = fast.to(memory_format=torch.channels_last)
        fast.channels_last = True
    arch = ArchParams(sp, init_scale=1.0, edge_betas=True, generator=torch.Generator().manual_seed(seed))
    return sp, fast, plain, arch


def _loss_and_grads(net, arch, x, y, edge: bool):
    w = arch.op_weights()
    ew = arch.edge_weights() if edge else None
    logits = net(x, w, ew)
    loss = F.cross_entropy(logits, y)
    params = [p for p in net.parameters()] + list(arch.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return logits.detach(), loss.detach(), grads


CASES = [
    ("darts", {}, 8),
    ("darts", {}, 7),  # odd sizes: FactorizedReduce padding, padded polyphase split
    ("s1", {}, 8),  # per-edge op sets
    ("s3", {}, 8),  # `none` skipped
    ("nb201", {"layers": 1}, 8),
    ("darts", {"partial_k": 2, "C": 8}, 8),  # PC-DARTS partial channels
    ("darts", {"node_norm": True}, 8),  # iDARTS node normalisation
]


# channels_last is the default engine; channels-first is checked on the DARTS space (even and odd sizes)
PARAMS = [(*c, True) for c in CASES] + [(*c, False) for c in CASES[:2]]


@pytest.mark.parametrize("space,kw,hw,cl", PARAMS,
                         ids=[f"{s}-{'-'.join(k)}-{h}-{'cl' if cl else 'cf'}" for s, k, h, cl in PARAMS])
def test_fast_supernet_matches_plain_darts(space, kw, hw, cl):
    sp, fast, plain, arch = _pair(space, cl=cl, **kw)
    x = torch.randn(4, 1, hw, hw)
    y = torch.randint(0, 10, (4,))
    for edge in (False, True):
        lf, loss_f, gf = _loss_and_grads(fast, arch, x, y, edge)
        lp, loss_p, gp = _loss_and_grads(plain, arch, x, y, edge)
        assert _close(lf, lp)
        assert abs(float(loss_f - loss_p)) < 1e-5
        names = [n for n, _ in fast.named_parameters()] + ["alpha." + n for n, _ in arch.named_parameters()]
        for name, a, b in zip(names, gf, gp):
            assert (a is None) == (b is None), name
            if a is not None:
                assert _close(a, b), f"{name}: max diff {float((a - b).abs().max()):.3g}"
    # BN running statistics moved the same way (two train-mode forwards each)
    sf, spl = fast.state_dict(), plain.state_dict()
    assert sf.keys() == spl.keys()
    for k in sf:
        assert _close(sf[k].float(), spl[k].float()), k
    # eval mode uses those statistics
    fast.eval()
    plain.eval()
    with torch.no_grad():
        w = arch.op_weights()
        assert _close(fast(x, w), plain(x, w))


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_fast_path_matches_ungrouped_modules(space):
    """Same module, fused arithmetic on vs off (every op module called as written)."""
    sp, fast, _, arch = _pair(space, layers=3 if space == "darts" else 1, cl=True)
    x = torch.randn(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    state = copy.deepcopy(fast.state_dict())
    _, loss_a, ga = _loss_and_grads(fast, arch, x, y, True)
    fast.load_state_dict(state)
    with N.engine_options(fast, fused=False):
        assert not fast.engine.fused and not fast.cells[0].edges[0].engine.fused
        _, loss_b, gb = _loss_and_grads(fast, arch, x, y, True)
    assert fast.engine.fused and fast.cells[0].edges[0].engine.fused
    assert abs(float(loss_a - loss_b)) < 1e-5
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None)
        if a is not None:
            assert _close(a, b)


def test_hard_and_drop_path_follow_the_module_path():
    """hard (one op per edge) and DropPath: same RNG draws and results as the ungrouped modules."""
    sp, fast, _, arch = _pair("darts", cl=True)
    fast.drop_path_prob = 0.3
    x = torch.randn(4, 1, 8, 8)
    hard = {ct: [(e * 3 + 1) % 8 for e in range(sp.n_edges)] for ct in sp.cell_types}
    hard["normal"][0] = 0  # a `none` choice: output zero but alpha keeps a gradient
    out = []
    for enabled in (True, False):
        torch.manual_seed(5)
        with N.engine_options(fast, fused=enabled):
            logits = fast(x, arch.op_weights(), None, hard)
            g = torch.autograd.grad(logits.sum(), list(arch.alphas.values()))
        out.append((logits.detach(), g))
    assert _close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        assert _close(a, b)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("hw", [8, 7])
@pytest.mark.parametrize("cl", [False, True])
def test_polyphase_dilated_conv_equals_dilated_conv(stride, kernel, hw, cl):
    torch.manual_seed(1)
    C = 4
    op = DilConv(C, C, kernel, stride, kernel - 1, 2, affine=False)
    x = torch.randn(3, C, hw, hw)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
        op = op.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.tensor(0.7, requires_grad=True)
    ref = w * op(x)
    got = fused._dil_conv(op, fused.Input(x, N.EngineOptions(phase_dilation="always")), w)
    assert got.shape == ref.shape
    assert _close(got, ref)
    g = torch.randn_like(ref)
    params = [x, w, op[1].weight, op[2].weight]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(ref, params, g)):
        assert _close(a, b)


def test_polyphase_layout_round_trip():
    for cl in (False, True):
        x = torch.randn(2, 3, 6, 4)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        p = K.to_phases(x)
        assert p.shape == (8, 3, 3, 2)
        assert torch.equal(p[0:2], x[:, :, 0::2, 0::2]) and torch.equal(p[6:8], x[:, :, 1::2, 1::2])
        assert torch.equal(p[2:4], x[:, :, 0::2, 1::2]) and torch.equal(p[4:6], x[:, :, 1::2, 0::2])
        assert torch.equal(K.from_phases(p, 2), x)
        assert K.from_phases(p, 2).is_contiguous(memory_format=torch.channels_last) == cl


def test_bn_with_folded_weight_in_channels_last():
    """w * BN(x) as BN with affine weight w; torch's CPU BN backward is wrong for an *expanded*
    (stride-0) weight when input and incoming grad are channels_last, hence the copy in _bn."""
    torch.manual_seed(2)
    bn = torch.nn.BatchNorm2d(4, affine=False)
    x = torch.randn(6, 4, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    g = torch.randn(6, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    w = torch.tensor(0.7, requires_grad=True)
    got = torch.autograd.grad(K.bn(copy.deepcopy(bn), x, w), (x, w), g)
    ref = torch.autograd.grad(w * copy.deepcopy(bn)(x), (x, w), g)
    for a, b in zip(got, ref):
        assert _close(a, b)


@pytest.mark.parametrize("cin", [2, 3, 4, 8])
def test_factorized_reduce_grads_in_channels_last(cin):
    """oneDNN's channels_last 1x1 stride-2 conv returns wrong weight grads for 2-4 input channels
    (torch 2.13); FactorizedReduce subsamples first, so its grads match a float64 reference."""
    torch.manual_seed(3)
    op = FactorizedReduce(cin, 4, affine=False)
    op64 = copy.deepcopy(op).double()
    x = torch.randn(6, cin, 8, 8)
    g = torch.randn(6, 4, 4, 4)
    opc = op.to(memory_format=torch.channels_last)
    y = opc(x.contiguous(memory_format=torch.channels_last))
    g_cl = g.contiguous(memory_format=torch.channels_last)
    got = torch.autograd.grad(y, [opc.conv_1.weight, opc.conv_2.weight], g_cl)
    y64 = op64(x.double())
    ref = torch.autograd.grad(y64, [op64.conv_1.weight, op64.conv_2.weight], g.double())
    for a, b in zip(got, ref):
        assert _close(a.double(), b, 1e-4)


def test_hessian_vector_products_match_plain():
    """Double backward (curvature wrt alpha) through the fused path equals the plain model's."""
    sp, fast, plain, arch = _pair("darts", layers=3, cl=True)
    x = torch.randn(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    v = torch.randn(arch.num_alpha())

    gf, hf = alpha_hvp(fast, arch, x, y, v)
    gp, hp = alpha_hvp(plain, arch, x, y, v)
    assert _close(gf, gp)
    assert _close(hf, hp, 1e-3)


# ---------------------------------------------------------------------------------------------
# whole search iterations: Search (fast engine) vs the plain DARTS architect


def _search(update: str) -> Search:
    cfg = load_config("darts", ["data.dataset=digits", "data.subset=null", "data.batch_size=8",
                                "network.channels=4", "network.layers=3", "network.stem_multiplier=2",
                                "optim.weight_decay=0", f"search.update={update}", "evaluation.lookup=false"])
    s = Search(cfg, None, progress=False, log=lambda m: None)
    s.start_epoch(0)
    return s


def _plain_twin(s: Search) -> tuple[PlainDARTS, PlainSearchStep]:
    n, o = s.cfg.network, s.cfg.optim
    model = PlainDARTS(s.space, C=n.channels, layers=n.layers, num_classes=s.num_classes,
                       in_channels=s.dataset.x.shape[1], stem_multiplier=n.stem_multiplier)
    model.net.load_state_dict(s.net.state_dict())
    for a, b in zip(model.arch_parameters(), s.arch.alphas.values()):
        a.data.copy_(b.data)
    step = PlainSearchStep(model, lr=s.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           grad_clip=o.grad_clip, arch_lr=o.arch_lr, arch_betas=tuple(o.arch_betas),
                           arch_weight_decay=o.arch_weight_decay)
    return model, step


@pytest.mark.parametrize("update", ["first", "second"])
def test_search_iteration_matches_plain_darts(update):
    """alpha gradient, then one full iteration (alpha step + weight step): same alpha and weights.
    Second order: the loop's unrolled rule is DARTS's with no momentum/weight decay in the virtual
    step (robust-darts eq. 12-14), which is the architect's at weight_decay 0 on the first step."""
    s = _search(update)
    model, step = _plain_twin(s)
    train = next(iter(s.train_loader))
    val = next(s.val_stream)
    xt, yt = train[0].contiguous(), train[1]
    xv, yv = val[0].contiguous(), val[1]

    grads = s.first_order_grad(val) if update == "first" else s.second_order_grad(train, val)
    arch2 = step.architect
    arch2.optimizer.zero_grad()
    if update == "first":
        arch2._backward_step(xv, yv)
    else:
        arch2._backward_step_unrolled(xt, yt, xv, yv, s.lr, step.optimizer)
    for g, a in zip(grads, model.arch_parameters()):
        assert _close(g, a.grad, 1e-3)

    # a full iteration from the same state
    s2 = _search(update)
    model, step = _plain_twin(s2)
    s2.arch_step(train, val)
    s2.weight_step(train)
    step((xt, yt), (xv, yv), unrolled=(update == "second"))
    for a, b in zip(s2.arch.alphas.values(), model.arch_parameters()):
        assert _close(a.detach(), b.detach(), 1e-3)
    for (name, a), b in zip(s2.net.named_parameters(), model.net.parameters()):
        assert _close(a.detach(), b.detach(), 1e-3), name


@pytest.mark.parametrize("k,p,d,hw", [(5, 2, 1, 4), (5, 2, 1, 5), (5, 2, 1, 8), (3, 1, 1, 9), (3, 2, 2, 8),
                                      (5, 4, 2, 6), (3, 0, 1, 6)])
def test_depthwise_function_matches_conv2d_to_second_order(k, p, d, hw):
    """The depthwise conv whose backward is built from depthwise convs (and, for small 5x5 maps, a
    weight gradient from four 3x3 tiles): same values, same gradients, and a correct double
    backward (gradgradcheck in float64) for every geometry the supernet uses."""
    torch.manual_seed(4)
    C = 3
    x = torch.randn(2, C, hw, hw, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, 1, k, k, dtype=torch.float64, requires_grad=True)
    f = lambda a, b: K.DWConv.apply(a, b, p, d)  # noqa: E731
    ref = F.conv2d(x, w, padding=p, dilation=d, groups=C)
    got = f(x, w)
    assert torch.allclose(got, ref)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(got, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
        assert torch.allclose(a, b)
    assert torch.autograd.gradgradcheck(f, (x, w))
    # float32 channels_last, the layout the engine runs
    xc = x.detach().float().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    wc = w.detach().float().requires_grad_(True)
    gc = g.float().contiguous(memory_format=torch.channels_last)
    for a, b in zip(torch.autograd.grad(f(xc, wc), (xc, wc), gc),
                    torch.autograd.grad(F.conv2d(xc, wc, padding=p, dilation=d, groups=C), (xc, wc), gc)):
        assert _close(a, b)


@pytest.mark.parametrize("hw", [7, 8])
def test_stride2_depthwise_in_double_backward_mode(hw):
    """Stride 2 = the stride-1 conv read at even positions, with a correct second derivative."""
    torch.manual_seed(5)
    x = torch.randn(2, 3, hw, hw, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)

    def f(a, b):
        conv = SimpleNamespace(kernel_size=(3, 3), bias=None, weight=b, groups=3)
        return fused._depthwise(conv, a, 2, 1, 1, N.EngineOptions(double_backward=True))

    assert torch.allclose(f(x, w), F.conv2d(x, w, None, 2, 1, 1, 3))
    assert torch.autograd.gradgradcheck(f, (x, w))
