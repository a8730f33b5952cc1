"""OLES (operation-level early stopping): the windowed train/validation gradient cosine per op against
loops written out, exactly the ops whose window mean is below the threshold freeze, frozen op weights
stay bit-identical through SGD steps (momentum and weight decay included) while the others move, the
validation gradient of the op weights against plain autograd and the config errors. Preset runs,
compositions, resume, listing and the 2-rank equivalence: tests/methods/test_harness.py."""

import math

import pytest
import torch
from conftest import TINY_SEARCH

import stablenas as sn
from stablenas.config import ConfigError
from stablenas.methods.oles import OLES
from stablenas.search.loop import Search

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*TINY_SEARCH, "search.val_batches=2"]
S3 = ["space=s3"]
NB201 = ["space=nb201", "network.layers=1"]


def make(*extra, out=None, resume=False, base=TINY):
    return Search(sn.load_config("oles", [*base, *extra]), out, resume=resume, progress=False, log=lambda m: None)


def oles(s) -> OLES:
    return next(m for m in s.methods if isinstance(m, OLES))


def cosine_by_hand(g: torch.Tensor, v: torch.Tensor) -> float:
    """The authors' per-parameter number, written out: cosine along dim 0 for every other index, averaged."""
    g, v = g.double().reshape(g.shape[0], -1), v.double().reshape(v.shape[0], -1)
    cols = [float(g[:, j] @ v[:, j] / (g[:, j].norm() * v[:, j].norm())) for j in range(g.shape[1])]
    return sum(cols) / len(cols)


def op_similarity_by_hand(params, train, val) -> float:
    return sum(cosine_by_hand(train[p], val[p]) for p in params) / len(params)


def test_step_similarity_is_the_mean_over_params_of_the_column_cosines():
    s = make(*S3)
    m = oles(s)
    gen = torch.Generator().manual_seed(0)
    train = [torch.randn(p.shape, generator=gen) for p in m.live_params]
    val = [t + 0.7 * torch.randn(t.shape, generator=gen) for t in train]
    sim, ran = m.step_similarity(train, val)
    assert torch.all(ran == 1)
    index = {id(p): i for i, p in enumerate(m.live_params)}
    for u, (_, params) in enumerate(m.units):
        ids = [index[id(p)] for p in params]
        want = sum(cosine_by_hand(train[i], val[i]) for i in ids) / len(ids)
        assert math.isclose(float(sim[u]), want, rel_tol=1e-5, abs_tol=1e-6)
    # an op that did not run (no gradient: a sampled architecture) is not observed
    train[0] = None
    sim, ran = m.step_similarity(train, val)
    owner = next(u for u, (_, ps) in enumerate(m.units) if ps[0] is m.live_params[0])
    assert ran[owner] == 0 and sim[owner] == 0 and int(ran.sum()) == len(m.units) - 1


def test_freezes_exactly_the_ops_whose_window_mean_is_below_the_threshold():
    """Per op a sequence of validation gradients: +g (cos 1), -g (cos -1) or unrelated (cos ~ 0).
    Two of three steps above 0.4 can still freeze (mean 1/3), one step far below need not (mean ~2/3):
    the rule is the window mean, not every step."""
    s = make(*S3, "methods.0.window=3", "methods.0.threshold=0.4")
    m = oles(s)
    gen = torch.Generator().manual_seed(1)
    patterns = [("+", "+", "+"), ("+", "+", "-"), ("-", "-", "-"), ("+", "r", "+"), ("-", "+", "+"),
                ("r", "r", "r")]
    plan = {u: patterns[u % len(patterns)] for u in range(len(m.units))}
    sums = {u: 0.0 for u in plan}
    for step in range(3):
        train = {p: torch.randn(p.shape, generator=gen) for p in m.live_params}
        val = {}
        for u, (_, params) in enumerate(m.units):
            kind = plan[u][step]
            for p in params:
                val[p] = {"+": train[p], "-": -train[p]}.get(kind, torch.randn(p.shape, generator=gen))
            sums[u] += op_similarity_by_hand(params, train, val)
        for p in m.live_params:
            p.grad = train[p].clone()
        m._val = [val[p] for p in m.live_params]
        m.on_weight_grads(s)
        if step < 2:
            assert not m.frozen.any()
    want = [sums[u] / 3 < 0.4 for u in range(len(m.units))]
    assert m.frozen.tolist() == want
    assert any(want) and not all(want)
    for u, (_, params) in enumerate(m.units):  # the deciding step's update is already dropped when frozen
        assert all((p.grad is None) == want[u] for p in params)
    assert m.steps == 0 and float(m.sum.abs().sum()) == 0.0  # a fresh window
    assert set(m.frozen_ops()) == {name for u, (name, _) in enumerate(m.units) if want[u]}


def test_frozen_op_weights_stay_bit_identical_and_the_others_move():
    s = make(*S3, "methods.0.window=1000", "search.steps_per_epoch=6")
    m = oles(s)
    s.start_epoch(0)
    it = iter(s.train_loader)
    for _ in range(2):  # momentum buffers exist for every weight before the freeze
        s.step(next(it))
    m.frozen[::2] = True
    m._regroup()
    frozen = {id(p) for name, ps in m.units for p in ps if name in m.frozen_ops()}
    before = {n: p.detach().clone() for n, p in s.net.named_parameters()}
    assert s.cfg.optim.momentum > 0 and s.cfg.optim.weight_decay > 0
    for _ in range(3):
        s.step(next(it))
    for n, p in s.net.named_parameters():
        if id(p) in frozen:
            assert torch.equal(p, before[n]), n
        elif p.requires_grad and "ops" in n:
            assert not torch.equal(p, before[n]), n
    # the frozen ops' validation gradient is no longer asked for
    assert not frozen & {id(p) for p in m.live_params}


def test_validation_gradient_of_the_op_weights_is_plain_autograd_of_the_alpha_loss():
    s = make(*S3)
    m = oles(s)
    s.start_epoch(0)
    vb = next(s.val_stream)
    alphas = list(s.arch.parameters())
    state = {k: v.clone() for k, v in s.net.state_dict().items()}
    got = s.first_order_grad(vb, m.live_params)
    s.net.load_state_dict(state)
    loss = s.loss(*vb, s.mix("arch", vb))
    want = torch.autograd.grad(loss, [*alphas, *m.live_params], allow_unused=True)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    s.net.load_state_dict(state)
    for a, b in zip(s.first_order_grad(vb), want[: len(alphas)]):  # alpha alone: the same numbers
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fix,match", [
    (["search.update=second"], "search.update: first"),
    (["search.update=single"], "search.update: first"),
    (["space=ptb", "data.dataset=ptb"], r"method oles \(it freezes single candidate ops\) needs op modules, which "
                                        r"the rnn skeleton does not have \(it supports: none\); spaces with it: darts"),
    (["methods=[{name: oles}, {name: test-own-arch-step}]"], "test-own-arch-step"),
])
def test_refuses_configs_it_cannot_work_with(fix, match):
    from stablenas.methods import METHODS, Method, register_method

    if "test-own-arch-step" not in METHODS:
        @register_method
        class _Own(Method):
            name = "test-own-arch-step"

            def arch_step(self, search, train_batch, val_batch):
                return True
    with pytest.raises(ConfigError, match=match):
        sn.load_config("oles", [*TINY, *fix])
