"""The loop's term on the alpha objective (``Method.arch_penalty``): its gradient joins every alpha
update rule. Reference: c * ||alpha||^2 has gradient 2c * alpha, which is exactly what plain SGD's
weight decay 2c adds, so a search with the penalty and no decay must follow the search with decay
and no penalty. Three layers, so both cell types are in the network: SGD skips a parameter without a
gradient, while the penalty reaches every alpha."""

import pytest
import torch
from conftest import TINY_SEARCH
from pydantic import Field

import stablenas as sn
from stablenas.methods import METHODS, Method, MethodOptions, register_method
from stablenas.search.loop import Search

pytestmark = pytest.mark.usefixtures("one_thread")


class _L2Options(MethodOptions):
    c: float = Field(0.05, ge=0.0)


class _L2Penalty(Method):
    name = "test-l2-penalty"
    description = "c * ||alpha||^2 on the alpha objective (test)"
    Options = _L2Options

    def arch_penalty(self, search):
        return self.opts.c * sum((a * a).sum() for a in search.arch.parameters())


@pytest.fixture(autouse=True, scope="module")
def _registered():
    """The test method is registered while this module runs, and only then (other modules list every method)."""
    register_method(_L2Penalty)
    yield
    METHODS.unregister(_L2Penalty.name)


BASE = [*TINY_SEARCH, "search.val_batches=2", "space=s3", "network.layers=3", "optim.arch_optimizer=sgd",
        "optim.arch_lr=0.1", "optim.epochs=1"]


def _alphas(*extra):
    s = Search(sn.load_config("quickstart", BASE + list(extra)), None, progress=False, log=lambda m: None)
    s.run()
    return {k: v.detach().clone() for k, v in s.arch.alphas.items()}


@pytest.mark.parametrize("update", ["first", "second", "single"])
def test_penalty_gradient_joins_every_alpha_update_rule(update):
    rule = f"search.update={update}"
    with_penalty = _alphas(rule, "optim.arch_weight_decay=0", "methods=[{name: test-l2-penalty, c: 0.05}]")
    with_decay = _alphas(rule, "optim.arch_weight_decay=0.1")
    plain = _alphas(rule, "optim.arch_weight_decay=0")
    for ct in plain:
        torch.testing.assert_close(with_penalty[ct], with_decay[ct], rtol=1e-5, atol=1e-7)
        assert not torch.allclose(with_penalty[ct], plain[ct], rtol=0, atol=1e-7)


def test_no_penalty_means_none():
    s = Search(sn.load_config("quickstart", BASE), None, progress=False, log=lambda m: None)
    assert s.arch_penalty() is None
