"""Discretisation on hand-set op weights equals hand-derived genotypes; JSON and nb201 round trips."""

import json

import pytest
import torch

from stablenas.genotype import Genotype, GenotypeError, derive
from stablenas.skeletons.nb201.genotype import nb201_string, parse_nb201
from stablenas.spaces.catalog import SearchSpace, get_space


def _weights(space, rows_normal, rows_reduce=None):
    K = space.max_ops()

    def t(rows):
        out = torch.zeros(space.n_edges, K)
        for e, r in enumerate(rows):
            out[e, : len(r)] = torch.tensor(r)
        return out

    return {"normal": t(rows_normal), "reduce": t(rows_reduce or rows_normal)}


def test_darts_rule_excludes_none_and_keeps_two_strongest_edges():
    space = get_space("s3")  # ops: none, skip_connect, sep_conv_3x3
    rows = [
        [0.90, 0.05, 0.05],  # e0 (0->n0): none dominates; best non-none 0.05 (skip first on tie)
        [0.10, 0.20, 0.70],  # e1 (1->n0): sep 0.70
        [0.00, 0.60, 0.40],  # e2 (0->n1): skip 0.60
        [0.00, 0.30, 0.30],  # e3 (1->n1): tie skip/sep at 0.30 -> skip (earlier op)
        [0.00, 0.50, 0.10],  # e4 (2->n1): skip 0.50
        [0.0, 0.1, 0.2], [0.0, 0.3, 0.1], [0.0, 0.2, 0.2], [0.0, 0.25, 0.05],  # n2: e5..e8
        [0.0, 0.4, 0.4], [0.0, 0.1, 0.4], [0.0, 0.4, 0.1], [0.0, 0.05, 0.01], [0.0, 0.02, 0.03],  # n3
    ]
    g = derive(space, _weights(space, rows))
    assert g.normal == (
        ("sep_conv_3x3", 1), ("skip_connect", 0),  # n0: e1 (0.70) then e0 (0.05)
        ("skip_connect", 0), ("skip_connect", 2),  # n1: e2 0.60, e4 0.50 (e3 0.30 dropped)
        ("skip_connect", 1), ("skip_connect", 3),  # n2: e6 0.3, e8 0.25
        ("skip_connect", 0), ("sep_conv_3x3", 1),  # n3: e9 0.4 (tie -> skip), e10 0.4 sep; tie edges -> earlier
    )
    assert g.normal_concat == (2, 3, 4, 5)


def test_edge_ties_go_to_the_earlier_edge():
    space = get_space("s2")  # skip_connect, sep_conv_3x3
    rows = [[0.5, 0.5]] * 14
    g = derive(space, _weights(space, rows))
    assert [i for _, i in g.normal[:2]] == [0, 1]
    assert [i for _, i in g.normal[2:4]] == [0, 1]
    assert all(op == "skip_connect" for op, _ in g.normal)


def test_per_edge_op_sets_s1():
    space = get_space("s1")
    # prefer the 2nd op of every edge
    rows = [[0.2, 0.8]] * 14
    g = derive(space, _weights(space, rows))
    ops_n = space.edge_ops["normal"]
    # node 0 edges 0,1 ; choose sorted by strength (all 0.8 -> edge order)
    assert g.normal[0] == (ops_n[0][1], 0)
    assert g.normal[1] == (ops_n[1][1], 1)
    assert g.reduce[0] == (space.edge_ops["reduce"][0][1], 0)  # avg_pool_3x3
    assert g.reduce[0][0] == "avg_pool_3x3"


def test_per_edge_sets_of_different_sizes_with_padding():
    ops = (("none", "skip_connect", "sep_conv_3x3"), ("skip_connect",), ("max_pool_3x3", "sep_conv_5x5"))
    space = SearchSpace("uneven-test", "darts", 2, 2, {"normal": ops + ops[:2], "reduce": ops + ops[:2]})
    assert space.n_edges == 5 and space.max_ops() == 3
    from stablenas.supernet.arch import ArchParams

    arch = ArchParams(space)
    w = arch.op_weights()
    assert torch.all(w["normal"][1, 1:] == 0)  # padded slots get zero weight
    assert torch.allclose(w["normal"].sum(-1), torch.ones(5))


def test_nb201_rule_and_string_roundtrip():
    space = get_space("nb201")  # none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
    W = torch.tensor([
        [0.1, 0.1, 0.1, 0.6, 0.1],  # 0->1 conv3
        [0.5, 0.1, 0.1, 0.2, 0.1],  # 0->2 none (kept: nb201 treats none as an op)
        [0.1, 0.7, 0.1, 0.0, 0.1],  # 1->2 skip
        [0.2, 0.2, 0.2, 0.2, 0.2],  # 0->3 tie -> first (none)
        [0.0, 0.0, 0.9, 0.0, 0.1],  # 1->3 conv1
        [0.0, 0.0, 0.0, 0.1, 0.9],  # 2->3 avg pool
    ])
    g = derive(space, {"cell": W})
    assert g.arch == "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|nor_conv_1x1~1|avg_pool_3x3~2|"
    assert Genotype.from_json(g.to_json()) == g
    assert [[op for op, _ in node] for node in parse_nb201(g.arch)] == [
        ["nor_conv_3x3"], ["none", "skip_connect"], ["none", "nor_conv_1x1", "avg_pool_3x3"]]
    assert nb201_string(["a"] * 6).count("~") == 6


def test_json_roundtrip_and_format(tmp_path):
    g = Genotype("darts", (("sep_conv_3x3", 0), ("skip_connect", 1)), (2,), (("max_pool_3x3", 0),
                 ("dil_conv_5x5", 1)), (2,))
    d = json.loads(g.to_json())
    assert d == {"space": "darts", "normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2],
                 "reduce": [["max_pool_3x3", 0], ["dil_conv_5x5", 1]], "reduce_concat": [2]}
    g.save(tmp_path / "genotype.json")
    assert Genotype.load(tmp_path) == g


@pytest.mark.parametrize("bad,match", [
    ({"space": "darts", "normal": [["sep_conv_3x3", 0]]}, "missing"),
    ({"space": "darts", "normal": [["conv9", 0], ["skip_connect", 1]], "normal_concat": [2], "reduce": [],
      "reduce_concat": []}, "unknown op"),
    ({"space": "darts", "normal": [["skip_connect", 0], ["skip_connect", 2]], "normal_concat": [2],
      "reduce": [], "reduce_concat": []}, "allowed inputs"),
    ({"space": "nb201", "arch": "|nor_conv_3x3~0|+|none~0|"}, "malformed"),
    ({"space": "darts", "normal": [], "normal_concat": [], "reduce": [], "reduce_concat": [], "x": 1}, "unknown"),
])
def test_bad_genotypes_give_one_clear_error(bad, match):
    with pytest.raises(GenotypeError, match=match):
        Genotype.from_dict(bad)
