"""Every op of every space: shapes at stride 1 and 2, and parameter-free ops have no parameters."""

import pytest
import torch

from stablenas.spaces.catalog import SPACES, get_space
from stablenas.spaces.ops import OPS, build_op, is_parameter_free

ALL_SPACE_OPS = sorted({op for s in SPACES.values() for op in s.all_ops()})


@pytest.mark.parametrize("name", ALL_SPACE_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [8, 7])
def test_op_shapes(name, stride, hw):
    C = 6
    op = build_op(name, C, stride, affine=False)
    x = torch.randn(2, C, hw, hw)
    y = op(x)
    expect = hw if stride == 1 else (hw + 1) // 2
    assert y.shape == (2, C, expect, expect)


@pytest.mark.parametrize("name", ALL_SPACE_OPS)
def test_parameter_free_ops_have_no_parameters(name):
    op = build_op(name, 8, 1, affine=True)
    n = sum(p.numel() for p in op.parameters())
    if is_parameter_free(name):
        assert n == 0
    else:
        assert n > 0


def test_skip_connect_reduces_with_parameters():
    # at stride 2 DARTS's skip is a FactorizedReduce: two 1x1 convs of C/2 each (+ BN affine)
    op = build_op("skip_connect", 8, 2, affine=False)
    assert sum(p.numel() for p in op.parameters()) == 2 * 8 * 4


def test_zero_and_noise_semantics():
    x = torch.randn(3, 4, 6, 6)
    assert torch.count_nonzero(build_op("none", 4, 1, False)(x)) == 0
    torch.manual_seed(0)
    y = build_op("noise", 4, 2, False)(x)
    assert y.shape == (3, 4, 3, 3) and not torch.equal(y, torch.zeros_like(y))
    assert abs(float(y.std()) - 1.0) < 0.5


def test_space_definitions():
    assert get_space("darts").n_edges == 14 and len(get_space("darts").all_ops()) == 8
    assert get_space("s5").num_architectures() == 81
    assert get_space("nb201").num_architectures() == 5 ** 6
    s1 = get_space("s1")
    assert not s1.is_uniform()
    assert all(len(e) == 2 for ct in s1.cell_types for e in s1.edge_ops[ct])
    assert s1.edge_ops["normal"][0] == ("skip_connect", "dil_conv_3x3")
    assert s1.edge_ops["reduce"][13] == ("skip_connect", "dil_conv_5x5")
    assert get_space("s3").all_ops() == ("none", "skip_connect", "sep_conv_3x3")
    assert set(get_space("idarts-s2").all_ops()) == {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                                      "sep_conv_3x3"}
    with pytest.raises(KeyError, match="available"):
        get_space("s9")


def test_registry_lists_required_ops():
    for op in ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
               "dil_conv_3x3", "dil_conv_5x5", "noise", "nor_conv_1x1", "nor_conv_3x3"]:
        assert op in OPS
