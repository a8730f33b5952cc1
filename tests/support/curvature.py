"""The alpha Hessian-vector product both engine test files compare between the fused and the plain
supernet (tests/supernet/test_engine.py, tests/supernet/test_perf.py)."""

import torch
import torch.nn.functional as F


def alpha_hvp(net, arch, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss gradient with respect to the flat alpha, and its product with the Hessian along ``v``,
    by double backward through ``net``."""
    flat = arch.flat().detach().clone().requires_grad_(True)
    loss = F.cross_entropy(net(x, arch.op_weights(arch.unflatten(flat))), y)
    (g,) = torch.autograd.grad(loss, flat, create_graph=True)
    (hv,) = torch.autograd.grad(g, flat, v)
    return g.detach(), hv
