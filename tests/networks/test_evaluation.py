"""Evaluation networks, published genotypes and profiling, checked against reference numbers.

Reference numbers and where they come from:

* DARTS_V2 on CIFAR-10 (36 channels, 20 cells, auxiliary head excluded) has 3,349,342 parameters:
  the "param size = 3.349342MB" that the reference DARTS ``train.py`` logs with
  ``count_parameters_in_MB``; the paper rounds it to 3.3M. On ImageNet (48 channels, 14 cells)
  the reference count is 4,718,752, the paper's 4.7M.
* DARTS_V1 gives 3,169,414. It is exactly DARTS_V2 minus one dil_conv_3x3 per normal cell
  (6 cells each at 36, 72, 144 channels: 6 * (1692 + 5976 + 22320) = 179,928 fewer), so it rounds
  to 3.2M; the DARTS paper prints 3.3M for both orders, which the released V1 cell cannot give.
* PC-DARTS 3,634,678 (paper 3.6M), SDARTS-ADV 3,344,806 (paper 3.3M), GDAS 3,368,782 (3.4M).
* DARTS_V2 ImageNet multiply-adds: the paper reports 574M. Counting conv + linear layers
  analytically (what ``count_macs`` does) gives 529,911,552; torch's own FlopCounterMode agrees
  (1,059,823,104 FLOPs = 2 x MACs). The paper's counting code was never released and others
  counting the released model get 523M-545M (quark0/darts issue #46), so the paper's number is
  only checked to within 10 % (529.9M is 7.7 % below it) and below the 600M mobile limit.
* NB201 with nor_conv_3x3 on all six edges (C=16, N=5, 10 classes): 1,531,546 parameters, the
  largest network of NAS-Bench-201 (1.53M); derived analytically below.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import stablenas  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from stablenas.genotype import Genotype  # noqa: E402
from stablenas.networks.evaluation import build_eval_network  # noqa: E402
from stablenas.networks.profile import count_macs, count_params, info  # noqa: E402
from stablenas.networks.published import PUBLISHED, get_published  # noqa: E402
from stablenas.skeletons.darts.networks import (  # noqa: E402
    EvalCell,
    NetworkCIFAR,
    NetworkImageNet,
    _AuxPool,  # noqa: E402
)
from stablenas.skeletons.nb201.networks import NB201Network  # noqa: E402
from stablenas.spaces.catalog import get_space  # noqa: E402
from stablenas.spaces.ops import drop_path  # noqa: E402

# Small CPU forwards: one intra-op thread. With two threads on a busy 2-core machine the OpenMP workers spin-
# wait on each other and a 0.1 s forward takes ~10 s; restored afterwards.
pytestmark = pytest.mark.usefixtures("one_thread")


def _params_M(g: Genotype, network: str = "cifar") -> float:
    return round(count_params(build_eval_network(g, network)) / 1e6, 1)


# --------------------------------------------------------------------------------------------
# parameter counts against the papers / reference code


def test_darts_v2_cifar_params_exact():
    model = NetworkCIFAR(get_published("DARTS_V2"), C=36, num_classes=10, layers=20, auxiliary=True)
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [6, 13]
    n = count_params(model)
    assert n == 3_349_342
    assert round(n / 1e6, 1) == 3.3
    # the auxiliary head exists but is not counted by default
    assert count_params(model, exclude_aux=False) > n


def test_darts_v2_imagenet_params_exact():
    model = NetworkImageNet(get_published("DARTS_V2"), C=48, num_classes=1000, layers=14)
    n = count_params(model)
    assert n == 4_718_752
    assert round(n / 1e6, 1) == 4.7


def test_darts_v1_and_pcdarts_cifar_params():
    v1 = count_params(build_eval_network(get_published("DARTS_V1"), "cifar"))
    v2 = count_params(build_eval_network(get_published("DARTS_V2"), "cifar"))
    assert v1 == 3_169_414
    # the only difference is one dil_conv_3x3 (9C + C^2 + 2C params) per normal cell
    assert v2 - v1 == sum(6 * (9 * c + c * c + 2 * c) for c in (36, 72, 144))
    assert count_params(build_eval_network(get_published("PC-DARTS"), "cifar")) == 3_634_678
    assert _params_M(get_published("PC-DARTS")) == 3.6  # PC-DARTS paper


@pytest.mark.parametrize("name, paper_M", [("SDARTS-ADV", 3.3), ("GDAS", 3.4), ("DARTS_V2", 3.3)])
def test_published_params_match_papers(name: str, paper_M: float):
    assert _params_M(get_published(name)) == paper_M


def test_nb201_params_analytic():
    # stem 3*16*9 + BN 32; ResNet blocks 16->32 and 32->64 (two 3x3 ReLUConvBN + avgpool/1x1 conv);
    # final BN(64); classifier 64*10 + 10  ->  73,306 with parameter-free cells
    empty = NB201Network("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    stem, block1, block2 = 432 + 32, 4608 + 64 + 9216 + 64 + 512, 18432 + 128 + 36864 + 128 + 2048
    assert count_params(empty) == stem + block1 + block2 + 128 + 650 == 73_306
    # each nor_conv_3x3 edge adds 9C^2 + 2C; 6 edges x 5 cells per stage at C = 16, 32, 64
    full = NB201Network("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                        "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    assert count_params(full) == 73_306 + sum(30 * (9 * c * c + 2 * c) for c in (16, 32, 64)) == 1_531_546


# --------------------------------------------------------------------------------------------
# multiply-adds


def test_darts_v2_imagenet_macs():
    # conv + linear multiply-adds of one 3x224x224 image; aux head, BN, pooling, sums not counted
    r = info("DARTS_V2", network="imagenet")
    assert r["params"] == 4_718_752
    assert r["macs"] == 529_911_552
    assert abs(r["macs_M"] - 574) / 574 < 0.10  # paper: 574M, counted by unreleased code
    assert r["macs_M"] < 600  # the mobile setting's constraint
    assert r["input_size"] == (3, 224, 224) and r["C"] == 48 and r["layers"] == 14


def test_count_macs_small_analytic():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    assert count_macs(model, (3, 16, 16)) == 16 * 16 * 8 * 3 * 9 + 8 * 8 * 8 * 1 * 9 + 8 * 5
    model.train()
    count_macs(model, (1, 3, 16, 16))
    assert model.training  # mode restored


def test_macs_exclude_auxiliary_and_info_cifar():
    g = get_published("DARTS_V2")
    with_aux = NetworkCIFAR(g, C=8, layers=5, auxiliary=True)
    without = NetworkCIFAR(g, C=8, layers=5, auxiliary=False)
    without.load_state_dict({k: v for k, v in with_aux.state_dict().items() if "auxiliary" not in k})
    assert count_macs(with_aux, (3, 32, 32)) == count_macs(without, (3, 32, 32))
    assert count_params(with_aux) == count_params(without)
    r = info(g, "cifar", C=8, layers=5, input_size=28)
    assert r["input_size"] == (3, 28, 28) and r["params"] == count_params(without)
    assert set(r) >= {"params", "params_M", "macs", "macs_M", "C", "layers", "num_classes", "input_size"}


# --------------------------------------------------------------------------------------------
# forward behaviour


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 32, 32), (2, 3, 48, 48)])
def test_cifar_forward_shapes_and_aux(shape: tuple[int, ...]):
    torch.manual_seed(0)
    model = NetworkCIFAR(get_published("DARTS_V2"), C=4, num_classes=7, layers=5, auxiliary=True,
                         in_channels=shape[1])
    model.drop_path_prob = 0.2
    model.train()
    logits, aux = model(torch.randn(shape))
    assert logits.shape == (2, 7) and aux is not None and aux.shape == (2, 7)
    (logits.sum() + aux.sum()).backward()
    model.eval()
    with torch.no_grad():
        logits, aux = model(torch.randn(shape))
    assert logits.shape == (2, 7) and aux is None


def test_aux_head_does_not_alter_main_path():
    # with 2 cells the auxiliary head reads the last cell's output, which also feeds the classifier
    torch.manual_seed(0)
    g = get_published("DARTS_V2")
    with_aux = NetworkCIFAR(g, C=4, layers=2, auxiliary=True).train()
    without = NetworkCIFAR(g, C=4, layers=2, auxiliary=False).train()
    without.load_state_dict({k: v for k, v in with_aux.state_dict().items() if "auxiliary" not in k})
    x = torch.randn(4, 3, 16, 16)
    logits, aux = with_aux(x)
    assert aux is not None and torch.allclose(logits, without(x)[0])


def test_aux_pool_reference_path_at_reference_sizes():
    x = torch.randn(2, 4, 8, 8)  # CIFAR map at 32x32 input
    ref = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)(x)
    assert torch.equal(_AuxPool(3)(x), ref) and ref.shape[-2:] == (2, 2)
    x = torch.randn(2, 4, 7, 7)  # ImageNet map at 224x224 input
    assert torch.equal(_AuxPool(2)(x), nn.AvgPool2d(5, stride=2, count_include_pad=False)(x))
    assert _AuxPool(3)(torch.randn(2, 4, 7, 7)).shape[-2:] == (2, 2)  # 28x28 input: adaptive
    assert _AuxPool(3)(torch.randn(2, 4, 1, 1)).shape[-2:] == (2, 2)


@pytest.mark.parametrize("size", [64, 224])
def test_imagenet_forward_small(size: int):
    torch.manual_seed(0)
    model = NetworkImageNet(get_published("DARTS_V2"), C=4, num_classes=11, layers=5, auxiliary=True)
    model.train()
    logits, aux = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 11) and aux.shape == (2, 11)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size))[1] is None


def test_nb201_forward_shapes():
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"
    model = build_eval_network(Genotype(space="nb201", arch=arch), "cifar", C=8, N=1, num_classes=100)
    assert isinstance(model, NB201Network)
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100) and aux is None
    model = NB201Network(arch, C=8, N=2, num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28))[0].shape == (2, 10)
    # 3 stages of N cells plus 2 reduction blocks
    assert len(model.cells) == 3 * 2 + 2


def test_nb201_cell_sums_inputs():
    # node1 = x, node2 = x + node1, node3 = x + node1 + node2  ->  4x
    model = NB201Network("|skip_connect~0|+|skip_connect~0|skip_connect~1|+"
                         "|skip_connect~0|skip_connect~1|skip_connect~2|", C=4, N=1)
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(model.cells[0](x), 4 * x)


def test_s5_single_node_genotype():
    g = Genotype(space="s5", normal=(("sep_conv_3x3", 0), ("skip_connect", 1)), normal_concat=(2,),
                 reduce=(("max_pool_3x3", 0), ("sep_conv_3x3", 1)), reduce_concat=(2,))
    model = NetworkCIFAR(g, C=8, layers=5, num_classes=10)
    assert all(c.n_nodes == 1 and c.multiplier == 1 for c in model.cells)
    model.train()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)


def test_cell_output_channels_and_reduction():
    g = get_published("DARTS_V2")
    cell = EvalCell(g, "reduce", 16, 16, 8, reduction=True, reduction_prev=False)
    out = cell(torch.randn(2, 16, 16, 16), torch.randn(2, 16, 16, 16))
    assert out.shape == (2, 4 * 8, 8, 8)
    cell = EvalCell(g, "normal", 16, 32, 8, reduction=False, reduction_prev=True)
    out = cell(torch.randn(2, 16, 16, 16), torch.randn(2, 32, 8, 8))
    assert out.shape == (2, 32, 8, 8)


# --------------------------------------------------------------------------------------------
# drop path


def test_drop_path_function():
    torch.manual_seed(0)
    x = torch.ones(1000, 2, 3, 3)
    y = drop_path(x, 0.3)
    dropped = (y.flatten(1) == 0).all(1)
    assert 0.2 < dropped.float().mean() < 0.4
    assert torch.allclose(y[~dropped], torch.full_like(y[~dropped], 1 / 0.7))
    assert drop_path(x, 0.0) is x


def test_drop_path_in_cell_training_only():
    torch.manual_seed(0)
    convs = Genotype(space="s5", normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1)), normal_concat=(2,),
                     reduce=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1)), reduce_concat=(2,))
    cell = EvalCell(convs, "normal", 4, 4, 4, reduction=False, reduction_prev=False)
    s0, s1 = torch.randn(64, 4, 6, 6), torch.randn(64, 4, 6, 6)

    def zero_samples(out: torch.Tensor) -> int:
        return int((out.flatten(1) == 0).all(1).sum())

    cell.train()
    assert zero_samples(cell(s0, s1, drop_prob=0.9)) > 0  # both ops dropped for some samples
    assert zero_samples(cell(s0, s1, drop_prob=0.0)) == 0
    cell.eval()
    assert zero_samples(cell(s0, s1, drop_prob=0.9)) == 0  # never at test time

    # identity ops (skip_connect at stride 1) are never dropped
    skips = Genotype(space="s5", normal=(("skip_connect", 0), ("skip_connect", 1)), normal_concat=(2,),
                     reduce=(("skip_connect", 0), ("skip_connect", 1)), reduce_concat=(2,))
    cell = EvalCell(skips, "normal", 4, 4, 4, reduction=False, reduction_prev=False).train()
    assert zero_samples(cell(s0, s1, drop_prob=0.99)) == 0


# --------------------------------------------------------------------------------------------
# published registry and builder


def test_published_registry():
    for name in ("DARTS_V1", "DARTS_V2", "PC-DARTS", "SDARTS-RS", "SDARTS-ADV", "GDAS", "MS-DARTS"):
        g = get_published(name)
        assert g.space == "darts" and len(g.normal) == len(g.reduce) == 8
        assert g.extra["source"] and g.extra["paper"]
    assert get_published("darts_v2") is PUBLISHED["DARTS_V2"]
    with pytest.raises(KeyError, match="DARTS_V2"):
        get_published("NOT-A-NET")


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_ops_belong_to_their_space(name: str):
    """Every (op, input) is offered on that edge of its space: catches transcription slips."""
    g = PUBLISHED[name]
    g.validate()
    space = get_space(g.space)
    for ct in space.cell_types:
        for edge, op in g.skeleton.genotype_edges(space, g, ct):  # the skeleton maps (op, input) to edges
            assert op in space.edge_ops[ct][edge], (ct, edge, op)


def test_build_eval_network_dispatch():
    g = get_published("DARTS_V2")
    assert isinstance(build_eval_network(g, "cifar", C=8, layers=5), NetworkCIFAR)
    assert isinstance(build_eval_network(g, "imagenet", C=8, layers=5), NetworkImageNet)
    assert isinstance(build_eval_network("DARTS_V1", C=8, layers=5), NetworkCIFAR)
    assert isinstance(build_eval_network("|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                                         C=8, layers=1), NB201Network)
    with pytest.raises(ValueError):
        build_eval_network(g, "nb201")
    with pytest.raises(ValueError):
        build_eval_network(g, "resnet")
    with pytest.raises(ValueError):
        NetworkCIFAR(Genotype(space="nb201", arch="|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"))
