"""Lambda-DARTS: the harmony direction against autograd of the mean pairwise cosine, the weight-gradient term
against -lambda * grad_w R by exact double backward through per-cell op weights, per-cell op weights in the
supernet, the lambda ramp and the config errors. Preset runs, compositions, resume, listing and the 2-rank
equivalence: tests/methods/test_harness.py."""

import itertools
import math

import pytest
import torch
from conftest import TINY_METHOD as TINY
from conftest import preset_search

import stablenas as sn
from stablenas.config import ConfigError
from stablenas.methods.lambda_darts import LambdaDARTS, harmony_direction

pytestmark = pytest.mark.usefixtures("one_thread")

S3 = ["space=s3"]
NB201 = ["space=nb201", "network.layers=1"]


def make(*extra, out=None, resume=False):
    return preset_search("lambda-darts", *extra, out=out, resume=resume)


def mean_pairwise_cosine(g: torch.Tensor) -> torch.Tensor:
    pairs = list(itertools.combinations(range(g.shape[0]), 2))
    return sum(g[i] @ g[j] / (g[i].norm() * g[j].norm()) for i, j in pairs) / len(pairs)


def test_harmony_direction_is_the_gradient_of_the_mean_pairwise_cosine():
    g = torch.randn(4, 30, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad(mean_pairwise_cosine(g), g)
    torch.testing.assert_close(harmony_direction(g.detach()), want, rtol=1e-10, atol=1e-12)


def test_per_cell_op_weights_equal_to_the_shared_ones_give_the_same_logits_and_split_the_gradient():
    s = make(*S3, "network.layers=4")  # normal, reduce, reduce, normal
    s.start_epoch(0)
    x, _ = next(iter(s.train_loader))
    s.net.eval()
    mix = s.mix("weights").detached()
    shared = s.forward(x, mix)
    a = mix.op["normal"].expand(2, *mix.op["normal"].shape).clone().requires_grad_(True)
    per_cell = s.forward(x, mix.replace(op={**mix.op, "normal": a}))
    torch.testing.assert_close(per_cell, shared, rtol=0, atol=0)
    w = mix.op["normal"].clone().requires_grad_(True)
    (g_shared,) = torch.autograd.grad(s.forward(x, mix.replace(op={**mix.op, "normal": w})).sum(), w)
    (g_cells,) = torch.autograd.grad(per_cell.sum(), a)
    torch.testing.assert_close(g_cells.sum(0), g_shared, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(g_cells[0], g_cells[1])


@pytest.mark.parametrize("space", [S3, NB201], ids=["s3", "nb201"])
def test_weight_gradient_term_is_the_central_difference_along_the_harmony_gradient(space):
    """In float64: p from autograd of R written out, eps = epsilon / |p|, and the two training gradients at
    A -+ eps p taken with plain autograd; the term added to the weight gradients must be
    lambda (grad_w L(A - eps p) - grad_w L(A + eps p)) / (2 eps)."""
    s = make(*space, "methods.0.ramp=false", "methods.0.strength=0.5", "methods.0.epsilon=1e-3")
    m = next(x for x in s.methods if isinstance(x, LambdaDARTS))
    s.net.double()
    s.start_epoch(0)
    x, y = next(iter(s.train_loader))
    mix = s.mix("weights").detached()
    mix = mix.replace(op={ct: w.double() for ct, w in mix.op.items()})
    s.weight_batch, s.weight_mix = (x.double(), y), mix
    params = [p for p in s.net.parameters() if p.requires_grad]
    base = [torch.randn_like(p) for p in params]
    for p, b in zip(params, base):
        p.grad = b.clone()
    m.on_weight_grads(s)
    got = torch.cat([(p.grad - b).flatten() for p, b in zip(params, base)])

    named = dict(s.net.named_parameters())
    a = {ct: mix.op[ct].expand(n, *mix.op[ct].shape).clone().requires_grad_(True) for ct, n in m.cells.items()}
    gs = torch.autograd.grad(s.loss(x.double(), y, mix.replace(op={**mix.op, **a}), named), list(a.values()))
    gs = [g.detach().requires_grad_(True) for g in gs]
    dr = torch.autograd.grad(sum(mean_pairwise_cosine(g.flatten(1)) for g in gs), gs)
    eps = 1e-3 / torch.cat([d.flatten() for d in dr]).norm()

    def grad_at(sign):
        op = {**mix.op, **{ct: a[ct].detach() + sign * eps * d for ct, d in zip(a, dr)}}
        return torch.cat([g.flatten() for g in torch.autograd.grad(s.loss(x.double(), y, mix.replace(op=op), named),
                                                                   params)])

    want = 0.5 * (grad_at(-1.0) - grad_at(1.0)) / (2 * eps)
    assert float(want.norm()) > 0
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_lambda_ramps_linearly_from_zero_by_epoch():
    s = make(*S3, "optim.epochs=5")
    m = next(x for x in s.methods if isinstance(x, LambdaDARTS))
    for e in range(5):
        m.on_epoch_start(s, e)
        assert math.isclose(m.strength, 0.125 * e / 4)


def test_refuses_what_it_cannot_align():
    with pytest.raises(ConfigError, match=r"method lambda-darts \(it aligns the cells' op-weight gradients\) needs "
                                          r"several cells, which the rnn skeleton does not have .*spaces with it: "):
        sn.load_config("lambda-darts", [*TINY, "space=ptb", "data.dataset=ptb"])
    with pytest.raises(ConfigError, match="two or more cells"):
        make(*S3, "network.layers=1")
