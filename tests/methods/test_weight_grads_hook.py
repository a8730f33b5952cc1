"""The loop's weight-gradient hook (``Method.on_weight_grads``): it runs once per weight step, after the
gradients are made and before the optimiser step. References: halving every gradient with no weight
decay and no clipping is plain SGD at half the learning rate; a dropped gradient (``p.grad = None``)
leaves the parameter bit-identical, momentum and weight decay included."""

import pytest
import torch
from conftest import TINY_SEARCH

import stablenas as sn
from stablenas.methods import METHODS, Method, register_method
from stablenas.search.loop import Search

pytestmark = pytest.mark.usefixtures("one_thread")

if "test-halve-grads" not in METHODS:
    @register_method
    class _Halve(Method):
        name = "test-halve-grads"
        description = "every weight gradient times 0.5 (test)"

        def setup(self, search):
            self.calls = 0

        def on_weight_grads(self, search):
            self.calls += 1
            for p in search.net.parameters():
                if p.grad is not None:
                    p.grad.mul_(0.5)

    @register_method
    class _DropClassifier(Method):
        name = "test-drop-classifier"
        description = "the classifier's gradients dropped (test)"

        def on_weight_grads(self, search):
            for p in search.net.classifier.parameters():
                p.grad = None


BASE = [*TINY_SEARCH, "search.val_batches=2", "space=s3", "optim.epochs=1"]


def _run(*extra):
    s = Search(sn.load_config("darts", BASE + list(extra)), None, progress=False, log=lambda m: None)
    s.run()
    return s


def test_halved_gradients_are_sgd_at_half_the_learning_rate():
    plain = ["optim.weight_decay=0", "optim.grad_clip=null"]
    halved = _run(*plain, "methods=[{name: test-halve-grads}]")
    slow = _run(*plain, "optim.lr=0.0125", "optim.lr_min=0.0005")
    assert halved.methods[0].calls == halved.global_step == 3
    for (n, a), b in zip(halved.net.named_parameters(), slow.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=n)
    full = _run(*plain)
    assert not torch.allclose(full.net.classifier.weight, halved.net.classifier.weight)


def test_a_dropped_gradient_leaves_the_parameter_bit_identical():
    start = Search(sn.load_config("darts", BASE), None, progress=False, log=lambda m: None)
    w0 = start.net.classifier.weight.detach().clone()
    s = _run("methods=[{name: test-drop-classifier}]")
    assert s.cfg.optim.momentum > 0 and s.cfg.optim.weight_decay > 0
    assert torch.equal(s.net.classifier.weight, w0) and not torch.equal(s.net.stem[0].weight,
                                                                         start.net.stem[0].weight)
