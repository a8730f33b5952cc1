"""The unrolled (2nd order) alpha gradient against the exact hypergradient of DARTS eq. 10-12, and the
smooth ReLU that a finite-difference check needs (tests/search/test_second_order.py says why;
tests/methods/test_darts_minus.py reuses both, tests/skeletons/test_ptb_search.py the exact
hypergradient of the recurrent cell)."""

import pytest
import torch
import torch.nn.functional as F

from stablenas.skeletons.darts import supernet as darts_supernet
from stablenas.skeletons.nb201 import supernet as nb201_supernet
from stablenas.supernet import network
from stablenas.supernet.kernels import EngineOptions


def exact_hypergradient(s, train, val, xi):
    names, ws = zip(*s.net.named_parameters())
    arch = list(s.arch.parameters())
    lt = s.loss(*train, s.mix("arch"), dict(zip(names, ws)))
    g = torch.autograd.grad(lt, ws, create_graph=True)
    w_virtual = [w - xi * gi for w, gi in zip(ws, g)]
    lv = s.loss(*val, s.mix("arch"), dict(zip(names, w_virtual)))
    return torch.autograd.grad(lv, arch)


def compare(s, train, val):
    approx = torch.cat([g.flatten() for g in s.second_order_grad(train, val)])
    exact = torch.cat([g.flatten() for g in exact_hypergradient(s, train, val, 0.5)])
    first = torch.cat([g.flatten() for g in s.first_order_grad(val)])
    # the Hessian term must matter, otherwise the test could not tell 1st from 2nd order
    assert (first - exact).norm() / exact.norm() > 0.05
    return F.cosine_similarity(approx, exact, dim=0), (approx - exact).norm() / exact.norm()


@pytest.fixture
def smooth_relu(monkeypatch):
    # the plain path runs every op module as written, so the patched ReLU modules are what runs
    monkeypatch.setattr(torch.nn.ReLU, "forward", lambda self, x: F.softplus(x, beta=4.0))
    # supernets built in the test call every op module as written (engine option fused=False)
    for module in (network, darts_supernet, nb201_supernet):
        monkeypatch.setattr(module, "DEFAULT", EngineOptions(fused=False))
    yield
