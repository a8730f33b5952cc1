"""The resource budget: at one-hot op weights of a derived cell the expected cost equals the derived
network's multiply-adds and parameters counted on the evaluation network (and `stablenas info`'s count
at the CIFAR sizes), a table entry equals a hand count, the penalty's gradient moves weight to cheaper
ops above the budget and is zero below it, a tight budget lowers the expected cost of a search, the
config errors; measured latency: the tables are the timer's numbers on the run's device, the expected
latency is differentiable through the op weights, a resumed search keeps the latencies it started with.
Searches on s3 and nb201, compositions, resume, listing and the 2-rank equivalence:
tests/methods/test_harness.py."""


import pytest
import torch
from conftest import TINY_SEARCH, assert_same_search

import stablenas as sn
from stablenas.config import ConfigError
from stablenas.methods import budget as budget_module
from stablenas.methods._common import discrete_mix, genotype_of, sample_architecture
from stablenas.methods.budget import Budget
from stablenas.networks.evaluation import build_eval_network
from stablenas.networks.profile import count_macs, count_params, info
from stablenas.search.loop import Search
from stablenas.spaces.ops import build_op

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
    ("resource: latency, max_madds: 1", [], r"needs max_latency \(in ms\)"),
    ("max_madds: 1, max_latency: 1", [], "takes max_madds, not max_latency"),
    ("max_madds: 1, network: imagenet", ["space=nb201"], "network 'imagenet' is not one of search, nb201"),
    ("max_madds: 1", ["space=ptb", "data.dataset=ptb"], r"method budget \(it counts each op's cost in the "
                                                        r"evaluation network\) needs op costs, which the rnn skeleton"),
])
def test_refuses_configs_it_cannot_work_with(budget_opts, extra, match):
    with pytest.raises(ConfigError, match=match):
        sn.load_config("darts", [*TINY, *extra, f"methods=[{{name: budget, {budget_opts}}}]"])


# ----------------------------------------------------------------------------------------------
# measured latency

LATENCY = "resource: latency, max_latency: 50.0, latency_batch: 3, latency_repeats: 4"


def fake_latency(module, x, repeats) -> float:
    """A timer whose numbers run against the multiply-adds (parameter-free ops are the slowest) and
    depend on the input's width, so a table built from anything else cannot match it."""
    return 1000.0 / (1 + count_params(module)) + x.shape[-1]


def test_latency_tables_are_the_timers_numbers_at_each_edges_shape(monkeypatch):
    calls = []

    def timer(module, x, repeats):
        calls.append((tuple(x.shape), x.device, repeats))
        return fake_latency(module, x, repeats)

    monkeypatch.setattr(budget_module, "median_latency", timer)
    s = make(*NB201, budget=LATENCY)
    m = budget(s)
    assert calls and all(b == 3 and d == s.device and r == 4 for (b, *_), d, r in calls)
    # nb201, N=1: one cell per stage, at (8 channels, 8x8), (16, 4x4), (32, 2x2); every edge stride 1
    stages = [(8, 8), (16, 4), (32, 2)]
    ops = s.space.edge_ops["cell"][0]
    row = [sum(1000.0 / (1 + count_params(build_op(op, C, 1, True))) + hw for C, hw in stages) for op in ops]
    for e in range(s.space.n_edges):
        torch.testing.assert_close(m.costs.tables["cell"][e].double(), torch.tensor(row, dtype=torch.float64),
                                   rtol=1e-6, atol=0)
    assert row.index(max(row)) == ops.index("none") and row[ops.index("nor_conv_3x3")] < row[ops.index("skip_connect")]
    zero = build_eval_network(s.skeleton.zero_genotype(s.space), "nb201", C=8, layers=1, num_classes=10,
                              in_channels=1, stem_multiplier=2, auxiliary=False)
    assert m.costs.fixed == pytest.approx(1000.0 / (1 + count_params(zero)) + 8)
    assert m.limit == 50.0


def test_expected_latency_and_its_penalty_are_differentiable_through_the_op_weights(monkeypatch):
    monkeypatch.setattr(budget_module, "median_latency", fake_latency)
    s = make(*NB201, budget=LATENCY)
    m = budget(s)
    c = m.costs.tables["cell"].double()
    w = torch.rand(c.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    w.requires_grad_(True)
    got = m.costs.expected({"cell": w.float()})
    (g,) = torch.autograd.grad(got, [w])
    total = w.detach().sum(-1, keepdim=True)
    per_edge = (w.detach() * c).sum(-1, keepdim=True) / total  # every edge keeps one op (nb201)
    torch.testing.assert_close(float(got.detach()), float(per_edge.sum()) + m.costs.fixed, rtol=1e-5, atol=0)
    torch.testing.assert_close(g, (c - per_edge) / total, rtol=1e-4, atol=1e-6)  # d/dw of sum_k w_k c_k / sum_k w_k
    with torch.no_grad():
        s.arch.alphas["cell"].copy_(torch.randn(6, 5, generator=torch.Generator().manual_seed(4)))
    (ga,) = torch.autograd.grad(m.arch_penalty(s), [s.arch.alphas["cell"]])
    a = s.arch.alphas["cell"].detach().double().requires_grad_(True)
    e = (torch.softmax(a, -1) * c).sum() + m.costs.fixed  # softmax weights sum to 1 per edge
    (want,) = torch.autograd.grad(torch.relu(e / 50.0 - 1.0), [a])
    assert float(e.detach()) > 50.0  # above the budget: the penalty is on
    torch.testing.assert_close(ga.double(), want, rtol=1e-4, atol=1e-7)


def test_a_resumed_search_keeps_the_latencies_it_started_with(monkeypatch, tmp_path):
    scale = [1.0]
    monkeypatch.setattr(budget_module, "median_latency", lambda m, x, r: scale[0] * fake_latency(m, x, r))
    extra = [*NB201, "search.checkpoint_every=1", "evaluation.lookup=false"]
    opts = f"{LATENCY}, weight: 10.0"
    ref = make(*extra, budget=opts, out=tmp_path / "ref").run()
    first = make(*extra, budget=opts, out=tmp_path / "r")
    first.start_epoch(0)
    first.train_epoch()
    first.end_epoch()
    first.close()
    scale[0] = 2.0  # the resumed process measures other numbers
    res = make(*extra, budget=opts, out=tmp_path / "r", resume=True)
    assert float(budget(res).costs.tables["cell"][0, 0]) == float(budget(ref.search).costs.tables["cell"][0, 0])
    res = res.run()
    assert_same_search(ref, res, tmp_path / "ref", tmp_path / "r")
    assert "budget_expected_latency_ms" in ref.metrics[-1] and ref.metrics[-1]["budget_max_latency_ms"] == 50.0


def test_latency_is_timed_on_the_device():
    s = make(*NB201, budget="resource: latency, max_latency: 1.0, latency_repeats: 2")
    m = budget(s)
    t = m.costs.tables["cell"]
    assert torch.isfinite(t).all() and bool((t > 0).all()) and m.costs.fixed > 0
    assert t.device == s.device
