"""DARTS-: every edge outputs its mixed op plus beta * aux(x) (the identity, a FactorizedReduce of its own
on a reduction edge) in the fused engine and in the plain reference, against a node sum written out in
float64; beta's per-epoch (and per-step) linear schedule reaching the supernet through ``Mix.skip``;
no trace of the path in alpha or the genotype; the functional (``params``) forward, both second-order
hypergradients and the curvature objective with the path; the recurrent space's config error. Preset
runs, compositions, resume, listing and the 2-rank equivalence: tests/methods/test_harness.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_SEARCH
from support.hypergradient import compare, smooth_relu  # noqa: F401 (the exact hypergradient and its fixture)

import stablenas as sn
from stablenas.config import ConfigError
from stablenas.curvature import AlphaObjective
from stablenas.methods.darts_minus import DartsMinus
from stablenas.search.loop import Search
from stablenas.spaces.catalog import get_space
from stablenas.spaces.ops import FactorizedReduce
from stablenas.supernet import network as N
from stablenas.supernet.arch import ArchParams
from stablenas.supernet.mix import Mix
from stablenas.supernet.reference import build_plain

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*TINY_SEARCH, "search.val_batches=2"]
S3 = ["space=s3", "network.layers=3"]  # three cells: a reduction cell with its stride-2 edges
NB201 = ["space=nb201", "network.layers=1"]
EXACT = {"rtol": 1e-12, "atol": 1e-12}  # float64: the same sums in another order


def make(*extra, preset="darts-minus", out=None, resume=False):
    return Search(sn.load_config(preset, [*TINY, *extra]), out, resume=resume, progress=False, log=lambda m: None)


def method(s) -> DartsMinus:
    return next(m for m in s.methods if isinstance(m, DartsMinus))


def _pair(space="darts", **kw):
    """The fused supernet and the plain reference with the same float64 weights, auxiliary modules built."""
    torch.manual_seed(0)
    sp = get_space(space)
    kw = {"C": 4, "layers": 3, **kw}
    fast = N.build_supernet(sp, in_channels=1, aux_skip=True, **kw).double().to(memory_format=torch.channels_last)
    fast.channels_last = True
    plain = build_plain(sp, in_channels=1, aux_skip=True, **kw).double()
    plain.load_state_dict(fast.state_dict())
    arch = ArchParams(sp, init_scale=1.0, edge_betas=True, generator=torch.Generator().manual_seed(0)).double()
    return sp, fast, plain, arch


def _cell_by_hand(cell, n_nodes, s0, s1, w, beta):
    """Preprocess, then node i = sum over its edges of (sum_k w_k op_k(h) + beta * aux(h)), every module
    called as written; aux(h) is h on a stride-1 edge and the edge's own FactorizedReduce on a stride-2 one."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    e = 0
    for _ in range(n_nodes):
        s = 0
        for h in list(states):
            edge = cell.edges[e]
            mixed = sum(wk * op(h) for wk, op in zip(w[e], edge.ops))
            s = s + mixed + beta * (h if edge.aux is None else edge.aux(h))
            e += 1
        states.append(s)
    return torch.cat(states[2:], dim=1)


@pytest.mark.parametrize("train", [True, False], ids=["batch-stats", "running-stats"])
def test_a_reduction_cell_is_its_mixed_ops_plus_beta_times_aux_in_both_engines(train):
    sp, fast, plain, arch = _pair()
    w = arch.op_weights()["reduce"].detach()
    beta = 0.625
    for net in (fast, plain):
        cell = net.cells[1]
        assert cell.cell_type == "reduce"
        # the stride-2 edges (from the two cell inputs) carry a FactorizedReduce; the others none
        assert [type(e.aux) for e in cell.edges].count(FactorizedReduce) == 2 * sp.n_nodes
        g = torch.Generator().manual_seed(1)
        s0 = torch.randn(2, cell.preprocess0[1].in_channels, 8, 8, generator=g, dtype=torch.float64)
        s1 = torch.randn(2, cell.preprocess1[1].in_channels, 8, 8, generator=g, dtype=torch.float64)
        if net is fast:
            s0, s1 = (t.contiguous(memory_format=torch.channels_last) for t in (s0, s1))
        net.train(train)
        with torch.no_grad():
            got = cell(s0, s1, w, None, None, 0.0, beta) if net is fast else cell(s0, s1, w, None, beta)
            with N.engine_options(net, fused=False):
                want = _cell_by_hand(cell, sp.n_nodes, s0, s1, w, beta)
            without = cell(s0, s1, w)
        torch.testing.assert_close(got, want, **EXACT)
        assert (got - without).abs().max() > 0.1  # the path is there


@pytest.mark.parametrize("space,kw", [("darts", {}), ("darts", {"partial_k": 2, "C": 8}), ("nb201", {"layers": 1})],
                         ids=["darts", "pc-darts", "nb201"])
def test_fused_engine_equals_the_reference_with_the_auxiliary_path(space, kw):
    """Logits and every gradient (weights, the auxiliary FactorizedReduce's, alpha, edge betas), twice
    (running statistics move alike), float64; the path bypasses edge weights and partial channels."""
    sp, fast, plain, arch = _pair(space, **kw)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    for _ in range(2):
        out = []
        for net in (fast, plain):
            loss = F.cross_entropy(net(x, arch.op_weights(), arch.edge_weights(), None, 0.4), y)
            out.append(torch.autograd.grad(loss, [*net.parameters(), *arch.parameters()], allow_unused=True))
        for a, b in zip(*out):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    names = [n for n, _ in fast.named_parameters()]
    assert (".aux." in " ".join(names)) == (space == "darts")  # nb201 cells have no stride-2 edge
    plain_state = plain.state_dict()  # once: the state dict of a whole supernet is no cheap lookup
    for k, v in fast.state_dict().items():
        torch.testing.assert_close(v, plain_state[k], rtol=1e-9, atol=1e-11)


def test_without_skip_the_aux_built_supernet_is_the_plain_one():
    """``skip=None``: the auxiliary modules exist but nothing reads them (the default engine unchanged)."""
    torch.manual_seed(0)
    sp = get_space("darts")
    with_aux = N.build_supernet(sp, C=4, layers=3, in_channels=1, aux_skip=True)
    torch.manual_seed(0)
    bare = N.build_supernet(sp, C=4, layers=3, in_channels=1)
    bare.load_state_dict({k: v for k, v in with_aux.state_dict().items() if ".aux." not in k})
    arch = ArchParams(sp, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(with_aux(x, arch.op_weights()), bare(x, arch.op_weights()))
    with pytest.raises(ValueError, match="aux_skip=True"):
        bare(x, arch.op_weights(), skip=0.5)


def test_beta_decays_linearly_per_epoch_and_reaches_every_phase():
    s = make(*S3, "optim.epochs=4")
    assert [e.name for e in s.cfg.methods] == ["darts-minus"]
    seen = []
    for e in range(4):
        s.start_epoch(e)
        batch = next(iter(s.train_loader))
        seen.append({s.mix(p, batch).skip for p in ("weights", "arch", "eval")})
        s.step_in_epoch = 2  # constant within an epoch
        assert s.mix("weights", batch).skip == 1.0 - e / 4
    assert seen == [{1.0}, {0.75}, {0.5}, {0.25}]  # the authors' 1 - e / epochs, e from 0
    step = make(*S3, "optim.epochs=2", "methods.0.ramp=step", "methods.0.beta=2.0")
    step.start_epoch(1)
    step.step_in_epoch = 1  # 3 steps per epoch: progress (1 + 1/3) / 2
    assert step.mix("weights").skip == pytest.approx(2.0 * (1 - (1 + 1 / 3) / 2), abs=1e-15)


def test_the_search_forward_is_the_reference_at_the_scheduled_beta():
    """``Search.forward`` of the fused supernet (plain and ``params`` / functional_call) equals the plain
    reference given beta = 1 - e / epochs by hand, and a changed beta or substituted aux weights show."""
    s = make(*S3, "optim.epochs=4")
    s.start_epoch(3)
    s.net.eval()
    ref = build_plain(s.space, C=8, layers=3, in_channels=1, stem_multiplier=2, aux_skip=True)
    ref.load_state_dict(s.net.state_dict())
    ref.eval()
    x, _ = next(iter(s.train_loader))
    mix = s.mix("eval").detached()
    with torch.no_grad():
        want = ref(x, mix.op, None, None, 0.25)
        torch.testing.assert_close(s.forward(x, mix), want, rtol=1e-5, atol=1e-5)
        params = dict(s.net.named_parameters())
        torch.testing.assert_close(s.forward(x, mix, params), want, rtol=1e-5, atol=1e-5)
        assert (s.forward(x, mix.replace(skip=None)) - want).abs().max() > 1e-3
        doubled = {k: (2 * v if ".aux." in k else v) for k, v in params.items()}
        assert (s.forward(x, mix, doubled) - want).abs().max() > 1e-3


def test_mix_carries_skip_through_detached_replace_and_other_methods():
    m = Mix({"cell": torch.ones(2, 3, requires_grad=True)}, skip=0.3)
    assert m.detached().skip == 0.3 and m.replace(op={}).skip == 0.3 and m.net_kwargs() == {"skip": 0.3}
    assert Mix({}).net_kwargs() == {}
    # transforms after it that replace the op weights keep the weight
    s = make(*S3, "methods=[{name: darts-minus}, {name: sdarts-rs}]")
    s.start_epoch(0)
    assert s.mix("weights", next(iter(s.train_loader))).skip == 1.0


def test_no_trace_in_alpha_or_the_genotype(tmp_path):
    r = make(*S3, "search.steps_per_epoch=2", out=tmp_path / "run").run()
    plain = make(*S3, preset="darts")
    assert {k: v.shape for k, v in r.search.arch.state_dict().items()} == \
        {k: v.shape for k, v in plain.arch.state_dict().items()}
    with torch.no_grad():
        for a, b in zip(plain.arch.parameters(), r.search.arch.parameters()):
            a.copy_(b)
    assert plain.genotype() == r.genotype == sn.Genotype.load(tmp_path / "run")
    ops = {op for ct in ("normal", "reduce") for op, _ in getattr(r.genotype, ct)}
    assert ops <= {op for e in r.search.space.edge_ops["normal"] for op in e}
    assert "aux" not in (tmp_path / "run" / "genotype.json").read_text()


def test_second_order_hypergradients_with_the_path(tiny_overrides):
    """The unrolled step sees the auxiliary path: the autograd HVP equals the exact hypergradient
    (tests/search/test_second_order.py's oracle) with beta = 1 in every forward."""
    cfg = sn.load_config("darts-minus", tiny_overrides + [
        "space=s3", "search.update=second", "search.xi=0.5", "data.batch_size=16", "network.layers=3",
        "search.unrolled_hvp=autograd"])
    s = Search(cfg, None, progress=False, log=lambda m: None)
    s.net.double()
    s.arch.double()
    s.start_epoch(0)
    assert s.mix("arch").skip == 1.0
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(16, 1, 12, 12, generator=g, dtype=torch.float64), next(iter(s.train_loader))[1])
    val = (torch.randn(16, 1, 12, 12, generator=g, dtype=torch.float64), next(s.val_stream)[1])
    cos, rel = compare(s, train, val)
    assert cos > 0.999999 and rel < 1e-6, (float(cos), float(rel))


def test_finite_difference_hypergradient_with_the_path(tiny_overrides, smooth_relu):  # noqa: F811
    """The DARTS finite-difference HVP on the unfused path (smooth ReLUs, as test_second_order)."""
    cfg = sn.load_config("darts-minus", tiny_overrides + [
        "space=s3", "search.update=second", "search.xi=0.5", "data.batch_size=16", "network.layers=3"])
    s = Search(cfg, None, progress=False, log=lambda m: None)
    s.net.double()
    s.arch.double()
    s.start_epoch(0)
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(16, 1, 12, 12, generator=g, dtype=torch.float64), next(iter(s.train_loader))[1])
    val = (torch.randn(16, 1, 12, 12, generator=g, dtype=torch.float64), next(s.val_stream)[1])
    cos, rel = compare(s, train, val)
    assert cos > 0.99 and rel < 0.05, (float(cos), float(rel))


def test_curvature_objective_includes_the_path_and_leaves_the_rng_alone():
    s = make(*S3, "optim.epochs=2")
    s.start_epoch(1)
    rng = torch.get_rng_state()
    obj = AlphaObjective.from_search(s, batches=1)
    assert torch.equal(rng, torch.get_rng_state())
    assert obj.skip == 0.5
    with obj.mode():
        with_path = float(obj(obj.alpha0()))
        obj.skip = None
        without = float(obj(obj.alpha0()))
    assert math.isfinite(with_path) and abs(with_path - without) > 1e-4


def test_refuses_the_recurrent_space():
    with pytest.raises(ConfigError, match="darts-minus needs aux skip"):
        sn.load_config("darts-minus", ["space=ptb", "data.dataset=ptb"])
