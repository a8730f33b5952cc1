"""The Skeleton plug-in: dispatch, capabilities, and no skeleton/space-name branches elsewhere."""

import ast
from pathlib import Path

import pytest
import torch

import stablenas as sn
from stablenas.errors import ConfigError
from stablenas.genotype import Genotype
from stablenas.registry import SKELETONS, SPACES
from stablenas.skeletons import skeleton_of
from stablenas.skeletons.darts import DartsSkeleton
from stablenas.spaces.catalog import SearchSpace

SRC = Path(__file__).resolve().parents[2] / "src" / "stablenas"
SKELETON_CODE = {"skeletons"}  # the skeletons' own packages (rnn: the recurrent skeleton)
NB = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|"


def test_no_skeleton_or_space_name_branches_outside_skeletons():
    names = set(SKELETONS.list()) | set(SPACES.list())
    hits = []
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC)
        if rel.parts[0] in SKELETON_CODE:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(s, ast.Attribute) and s.attr in ("skeleton", "is_nb201") for s in sides) or \
                        any(isinstance(s, ast.Constant) and s.value in names for s in sides):
                    hits.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, (ast.If, ast.IfExp)) and "is_nb201" in ast.unparse(node.test):
                hits.append(f"{rel}:{node.lineno}: {ast.unparse(node.test)}")
    assert hits == []


def test_dispatch_by_space_genotype_and_dict():
    assert skeleton_of("s3").name == "darts" and skeleton_of(sn.get_space("nb201")).name == "nb201"
    g = Genotype.from_dict({"space": "nb201", "arch": NB})
    assert skeleton_of(g).name == "nb201" and g.cell_types() == ["cell"] and str(g) == NB
    assert skeleton_of({"arch": NB}).name == "nb201"  # no space: the skeleton that claims the keys
    d = sn.derive("s3", {ct: torch.rand(14, 3) for ct in ("normal", "reduce")})
    assert skeleton_of(d).name == "darts" and Genotype.from_dict(d.to_dict()) == d
    # the skeleton's counts, graph and evaluation networks
    assert sn.get_space("nb201").num_architectures() == 5 ** 6
    graph = g.skeleton.cell_graph(g, "cell")
    assert graph.n_inputs == 1 and graph.outputs == (3,) and not graph.concat
    assert graph.nodes[1] == ((0, "skip_connect"), (1, "none"))
    assert g.skeleton.resolve_eval_network("cifar") == "nb201"  # an NB201 cell only fits its network
    with pytest.raises(ConfigError, match="network 'nb201' does not fit a darts-skeleton genotype"):
        d.skeleton.resolve_eval_network("nb201")


class _NoPartialChannels(DartsSkeleton):
    name = "test-nopc"
    capabilities = frozenset({"reduction_cells"})


@pytest.fixture
def nopc_space():
    SKELETONS.register(_NoPartialChannels())
    sn.register_space(SearchSpace("test-nopc-s", "test-nopc", 2, 1,
                                  {ct: (("skip_connect", "sep_conv_3x3"),) * 2 for ct in ("normal", "reduce")}))
    yield "test-nopc-s"
    SPACES.unregister("test-nopc-s")
    SKELETONS.unregister("test-nopc")


def test_a_skeleton_without_a_capability_refuses_it_in_one_line(nopc_space):
    assert sn.config_from_dict({"space": nopc_space}).space == nopc_space
    with pytest.raises(ConfigError, match=r"network.partial_channels > 1 needs partial channels, which the "
                                          r"test-nopc skeleton does not have"):
        sn.config_from_dict({"space": nopc_space, "network": {"partial_channels": 2}})
    with pytest.raises(ConfigError, match="method pc-darts needs partial channels") as e:
        sn.config_from_dict({"space": nopc_space, "methods": [{"name": "pc-darts"}]})
    # the line ends with the spaces whose skeleton has it, or with what to do instead
    assert str(e.value).endswith("(it supports: reduction_cells); spaces with it: " + ", ".join(
        n for n in SPACES if SPACES[n].skeleton in ("darts", "nb201") and n != nopc_space))
    with pytest.raises(ConfigError, match=r"^x needs op modules, which the test-nopc skeleton does not have "
                                          r"\(it supports: reduction_cells\); do y$"):
        SKELETONS["test-nopc"].require("op_modules", "x", "do y")


def test_the_discrete_structure_methods_ask_for():
    nb, s3 = sn.get_space("nb201"), sn.get_space("s3")
    darts, nb201 = SKELETONS["darts"], SKELETONS["nb201"]
    # every kept connection `none`: NB201 every edge, DARTS two inputs (c_{k-2}, c_{k-1}) per node
    assert nb201.zero_genotype(nb).arch == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    z = darts.zero_genotype(s3)
    assert z.normal == z.reduce == (("none", 0), ("none", 1)) * 4 and z.normal_concat == (2, 3, 4, 5)
    # per node (edge, op index) slots keep their order; outputs set the concat of the cell they name
    per_node = [[(1, 2), (0, 1)], [(2, 2), (4, 1)], [(5, 2), (6, 2)], [(9, 1), (13, 0)]]
    g = darts.genotype_of(s3, {"normal": per_node, "reduce": per_node}, outputs={"normal": (2, 3)})
    assert g.normal[:4] == (("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("skip_connect", 2))
    assert g.normal[-1] == ("none", 4) and g.normal_concat == (2, 3) and g.reduce_concat == (2, 3, 4, 5)
    assert nb201.genotype_of(nb, {"cell": [[(0, 1)], [(2, 0), (1, 4)], [(5, 2), (3, 3), (4, 0)]]}).arch == \
        "|skip_connect~0|+|avg_pool_3x3~0|none~1|+|nor_conv_3x3~0|none~1|nor_conv_1x1~2|"


def test_skeleton_options_section():
    with pytest.raises(ConfigError, match=r"model \(darts skeleton\): unknown option 'emsize'; valid options: "
                                          r"\(none\)"):
        sn.config_from_dict({"model": {"emsize": 300}})
