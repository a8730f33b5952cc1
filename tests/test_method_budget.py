"""The resource budget: at one-hot op weights of a derived cell the expected cost equals the derived
network's multiply-adds and parameters counted on the evaluation network (and `stablenas info`'s count
at the CIFAR sizes), a table entry equals a hand count, the penalty's gradient moves weight to cheaper
ops above the budget and is zero below it, a tight budget lowers the expected cost of a search, the
config errors, searches on s3 and nb201, compositions, resume after SIGKILL, the CLI listing and the
2-rank data-parallel equivalence."""

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
from stablenas.methods._common import discrete_mix, genotype_of, sample_architecture
from stablenas.methods.budget import Budget
from stablenas.networks.evaluation import build_eval_network
from stablenas.networks.profile import count_macs, count_params, info
from stablenas.search.loop import Search

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*TINY_SEARCH, "search.val_batches=2"]
S3 = ["space=s3", "network.layers=3"]  # three cells: the evaluation network's cells are the supernet's
NB201 = ["space=nb201", "network.layers=1"]


def make(*extra, budget="max_madds: 0.3", preset="darts", out=None, resume=False):
    methods = f"methods=[{{name: budget, {budget}}}]" if budget else None
    sets = [*TINY, *extra] + ([methods] if methods and not any(e.startswith("methods=") for e in extra) else [])
    return Search(sn.load_config(preset, sets), out, resume=resume, progress=False, log=lambda m: None)


def budget(s) -> Budget:
    return next(m for m in s.methods if isinstance(m, Budget))


@pytest.mark.parametrize("space", ["s3", "nb201"])
@pytest.mark.parametrize("resource", ["madds", "params"])
def test_one_hot_weights_of_a_derived_cell_cost_what_its_network_counts(space, resource):
    extra = S3 if space == "s3" else NB201
    s = make(*extra, budget=f"resource: {resource}, max_{resource}: 1.0")
    m = budget(s)
    gen = torch.Generator().manual_seed(11)
    for _ in range(3):
        hard = sample_architecture(s.space, gen)
        g = genotype_of(s.space, hard)
        net = build_eval_network(g, "cifar" if space == "s3" else "nb201", C=8, layers=s.cfg.network.layers,
                                 num_classes=10, in_channels=1, stem_multiplier=2, auxiliary=False)
        want = count_macs(net, (1, 8, 8)) if resource == "madds" else count_params(net)
        got = m.costs.expected(discrete_mix(s.arch, hard, s.device).op)
        torch.testing.assert_close(got.double(), torch.tensor(want / 1e6, dtype=torch.float64), rtol=1e-6, atol=0)


def test_table_entries_equal_hand_counts():
    # s3 at C=8 on 8x8 digits, cells normal/reduce/reduce: sep_conv_3x3 in the normal cell is two
    # (depthwise 3x3 + pointwise) pairs: 2 * H * W * (9 C + C^2)
    s = make(*S3)
    assert float(budget(s).costs.tables["normal"][4, 2]) * 1e6 == pytest.approx(2 * 8 * 8 * (9 * 8 + 8 * 8))
    # nb201 N=1: nor_conv_3x3 (ReLU-conv-BN) once per stage, C * C * 9 * H * W at (8, 8x8), (16, 4x4), (32, 2x2)
    s = make(*NB201)
    want = 8 * 8 * 9 * 64 + 16 * 16 * 9 * 16 + 32 * 32 * 9 * 4
    assert float(budget(s).costs.tables["cell"][0, 3]) * 1e6 == pytest.approx(want)
    assert float(budget(s).costs.tables["cell"][0, 0]) == 0.0  # none


def test_the_cifar_sizes_count_what_stablenas_info_reports():
    s = make("space=s3", budget="max_madds: 600, network: cifar")
    hard = sample_architecture(s.space, torch.Generator().manual_seed(2))
    g = genotype_of(s.space, hard)
    got = budget(s).costs.expected(discrete_mix(s.arch, hard, s.device).op)
    assert float(got) == pytest.approx(info(g, "cifar")["macs_M"], rel=1e-6)


def test_penalty_pushes_weight_to_cheaper_ops_above_the_budget_and_is_zero_below():
    s = make(*NB201, "optim.arch_optimizer=sgd", "optim.arch_lr=1.0", "optim.arch_weight_decay=0",
             budget="max_madds: 0.05")
    m = budget(s)
    a = s.arch.alphas["cell"]
    with torch.no_grad():
        a.copy_(torch.randn(a.shape, generator=torch.Generator().manual_seed(0)))
    e0 = m.expected(s).detach()
    assert float(e0) > 0.05
    (grad,) = torch.autograd.grad(m.arch_penalty(s), [s.arch.alphas["cell"]])
    w = s.arch.op_weights()["cell"].detach()
    c = m.costs.tables["cell"]
    mean = (w * c).sum(-1, keepdim=True)  # softmax: each edge's expected op cost
    # d/d alpha_k of sum_j w_j c_j = w_k (c_k - mean): up for ops dearer than the mean, down for cheaper
    assert torch.equal(torch.sign(grad), torch.sign(c - mean))
    s.apply_arch_grads([torch.zeros_like(p) for p in s.arch.parameters()])  # the penalty's step alone
    assert float(m.expected(s).detach()) < float(e0)
    loose = make(*NB201, budget="max_madds: 1000")
    pen = budget(loose).arch_penalty(loose)
    assert float(pen.detach()) == 0.0
    (g,) = torch.autograd.grad(pen, [loose.arch.alphas["cell"]])
    assert torch.all(g == 0)


def test_a_tight_budget_lowers_the_expected_cost_of_a_search():
    common = ["space=s3", "optim.arch_lr=0.01", "search.steps_per_epoch=3"]
    free = make(*common, budget="max_madds: 1000.0, weight: 100.0").run()
    tight = make(*common, budget="max_madds: 0.01, weight: 100.0").run()
    key = "budget_expected_madds_M"
    assert free.metrics[-1][key] > tight.metrics[-1][key]
    assert tight.metrics[-1]["budget_max_madds_M"] == 0.01


@pytest.mark.parametrize("budget_opts,extra,match", [
    ("weight: 1.0", [], "needs max_madds"),
    ("max_madds: 1, max_params: 1", [], "takes max_madds, not max_params"),
    ("resource: params, max_madds: 1", [], "needs max_params"),
    ("max_madds: 1, network: imagenet", ["space=nb201"], "network 'imagenet' is not one of search, nb201"),
    ("max_madds: 1", ["space=ptb", "data.dataset=ptb"], r"method budget \(it counts each op's cost in the "
                                                        r"evaluation network\) needs op costs, which the rnn skeleton"),
])
def test_refuses_configs_it_cannot_work_with(budget_opts, extra, match):
    with pytest.raises(ConfigError, match=match):
        sn.load_config("darts", [*TINY, *extra, f"methods=[{{name: budget, {budget_opts}}}]"])


@pytest.mark.parametrize("space", ["s3", "nb201"])
def test_searches_two_epochs_and_writes_its_run(space, tmp_path):
    extra = NB201 if space == "nb201" else ["space=s3"]
    out = tmp_path / "run"
    r = make(*extra, "search.steps_per_epoch=2", budget="max_madds: 0.05", out=out).run()
    for f in ("config.yaml", "metrics.jsonl", "genotype.json", "checkpoint.pt"):
        assert (out / f).exists(), f
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(x["train_loss"]) for x in rows)
    assert all(x["budget_expected_madds_M"] > 0.05 for x in rows)  # over the budget: the penalty was on
    assert sn.Genotype.load(out) == r.genotype


@pytest.mark.parametrize("extra", [
    ["methods=[{name: budget, max_madds: 0.05}, {name: sdarts-rs}]"],
    ["methods=[{name: pc-darts}, {name: budget, max_madds: 0.05}]", "network.partial_channels=4",
     "arch.edge_betas=true", "network.channels=16"],
    ["methods=[{name: fair-darts}, {name: budget, max_madds: 0.05}]", "arch.activation=sigmoid"],
    ["methods=[{name: beta-darts, start: 1.0}, {name: budget, max_madds: 0.05}]"],
], ids=["sdarts-rs", "pc-darts", "fair-darts", "beta-darts"])
def test_composes_with_other_methods(extra):
    r = make("space=s3", *extra, "search.steps_per_epoch=2", budget=None).run()
    assert len(r.metrics) == 2 and all(math.isfinite(x["train_loss"]) for x in r.metrics)
    assert all(math.isfinite(float(a.detach().abs().sum())) for a in r.search.arch.parameters())
    assert math.isfinite(r.metrics[-1]["budget_expected_madds_M"])


def test_resume_after_sigkill_is_bit_identical(tmp_path, cut):  # noqa: F811
    extra = ["space=s3", "search.checkpoint_every=1", "threads=1", "evaluation.lookup=false",
             "methods=[{name: budget, max_madds: 0.05, weight: 10.0}]"]
    ref = make(*extra, out=tmp_path / "ref").run()
    d = tmp_path / "cut"
    argv = ["search", *_sets("darts", [*TINY, *extra]), "--out", str(d)]
    code, stderr = cut(4, signal.SIGKILL, argv, tmp_path / "stderr")
    assert code == -signal.SIGKILL, stderr
    res = make(*extra, out=d, resume=True).run()
    assert_same_search(ref, res, tmp_path / "ref", d)


def test_methods_command_lists_budget():
    out = CliRunner().invoke(app, ["methods"]).output
    line = next(x for x in out.splitlines() if x.startswith("budget "))
    assert "(no preset)" in line and Budget.description[:30] in line


def test_two_ranks_reduce_to_the_mean_of_shards_and_stay_in_lockstep(tmp_path, monkeypatch):
    import test_distributed

    monkeypatch.setenv("DDP_CASES", "budget")
    results, failure = test_distributed._spawn_job(tmp_path / "results.json")
    assert failure is None, failure
    test_distributed.test_two_ranks_reduce_to_the_mean_of_shards_and_stay_in_lockstep(results, "budget")
