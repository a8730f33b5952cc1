"""The alpha step of the search loop: the first-order gradient, DARTS's unrolled second-order
gradient (Liu et al. 2019, Sec. 2.3; robust-darts App. A, eq. 12-14), the methods' penalties on the
alpha objective, and the optimiser step. A part of :class:`stablenas.search.loop.Search`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .. import distributed as dist
from ..supernet.network import double_backward_mode, weights_frozen

if TYPE_CHECKING:
    from .loop import Batch


class AlphaSteps:
    """Updates of alpha from validation batches (mixed into ``Search``, whose state they use)."""

    def arch_step(self, train_batch: Batch, val_batch: Batch) -> None:
        for m in self.methods:
            if m.arch_step(self, train_batch, val_batch):
                return
        rule = self.cfg.search.update
        if rule == "first":
            grads = self.first_order_grad(val_batch)
        elif rule == "second":
            grads = self.second_order_grad(train_batch, val_batch)
        else:
            return
        self.apply_arch_grads(grads)

    def arch_penalty(self) -> torch.Tensor | None:
        """The sum of the methods' terms on the alpha objective (``Method.arch_penalty``), None when
        no method adds one. They depend on alpha alone, which every rank holds alike, so their
        gradient is never all-reduced."""
        terms = [t for m in self.methods if (t := m.arch_penalty(self)) is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def apply_arch_grads(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One optimiser step of alpha on ``grads`` (the data term) plus the methods' penalties."""
        params = list(self.arch.parameters())
        penalty = self.arch_penalty()
        if penalty is not None:
            extra = torch.autograd.grad(penalty, params, allow_unused=True)
            grads = [e if g is None else (g if e is None else g + e) for g, e in zip(grads, extra)]
        for p, g in zip(params, grads):
            p.grad = g
        self.a_optimizer.step()
        self.a_optimizer.zero_grad(set_to_none=True)

    def first_order_grad(self, val_batch: Batch, weights: Sequence[torch.Tensor] = ()) -> list[torch.Tensor | None]:
        """grad_alpha L_val(w, alpha), then (from the same backward) grad_w L_val of the network
        parameters ``weights`` (OLES compares them with the weight step's gradients)."""
        xv, yv = val_batch
        # alpha (and ``weights``) only: no other weight gradients computed (custom kernels too)
        with weights_frozen(self.net, keep=weights):
            loss = self.loss(xv, yv, self.mix("arch", val_batch))
            return list(dist.grad(loss, [*self.arch.parameters(), *weights], allow_unused=True))

    def second_order_grad(self, train_batch: Batch, val_batch: Batch) -> list[torch.Tensor]:
        """DARTS unrolled gradient (robust-darts App. A, eq. 12-14).

        w' = w - xi * grad_w L_train(w, a); returns
        grad_a L_val(w', a) - xi * [grad_a L_train(w+, a) - grad_a L_train(w-, a)] / (2 eps)
        with w+- = w +- eps * grad_w' L_val(w', a) and eps = 0.01 / ||grad_w' L_val||.
        """
        xt, yt = train_batch
        xv, yv = val_batch
        xi = self.cfg.search.xi if self.cfg.search.xi is not None else self.lr
        names, weights = zip(*[(n, p) for n, p in self.net.named_parameters()])
        arch_params = list(self.arch.parameters())

        # virtual step
        loss_t = self.loss(xt, yt, self.mix("arch", train_batch).detached(), dict(zip(names, weights)))
        g = dist.grad(loss_t, weights)  # every gradient is averaged over ranks where it is made
        del loss_t
        w_virtual = [(w - xi * gw).detach().requires_grad_(True) for w, gw in zip(weights, g)]

        # validation loss at w'
        loss_v = self.loss(xv, yv, self.mix("arch", val_batch), dict(zip(names, w_virtual)))
        grads = dist.grad(loss_v, arch_params + w_virtual, allow_unused=True)
        del loss_v
        d_alpha, d_w = grads[: len(arch_params)], grads[len(arch_params):]
        d_w = [torch.zeros_like(w) if gw is None else gw for w, gw in zip(w_virtual, d_w)]

        if self.cfg.search.unrolled_hvp == "autograd":
            # exact mixed second derivative by double backward: d/d alpha <grad_w L_train(w, a), v>
            with double_backward_mode(self.net):
                lt = self.loss(xt, yt, self.mix("arch", train_batch), dict(zip(names, weights)))
            gw = torch.autograd.grad(lt, weights, create_graph=True)  # local: reduced below
            dot = sum((a * b).sum() for a, b in zip(gw, d_w))
            mixed = dist.grad(dot, arch_params, allow_unused=True)
            return [(torch.zeros_like(p) if da is None else da) - xi * (torch.zeros_like(p) if m is None else m)
                    for da, m, p in zip(d_alpha, mixed, arch_params)]

        # finite-difference Hessian-vector product in weight space (no host sync: eps is a tensor)
        eps = 0.01 / torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in d_w]))
        hvp = []
        for sign in (1.0, -1.0):
            shifted = {n: (w + sign * eps * v).detach() for n, w, v in zip(names, weights, d_w)}
            lt = self.loss(xt, yt, self.mix("arch", train_batch), shifted)
            hvp.append(dist.grad(lt, arch_params, allow_unused=True))
            del lt
        out = []
        for da, gp, gm, p in zip(d_alpha, hvp[0], hvp[1], arch_params):
            da = torch.zeros_like(p) if da is None else da
            gp = torch.zeros_like(p) if gp is None else gp
            gm = torch.zeros_like(p) if gm is None else gm
            out.append(da - xi * (gp - gm) / (2 * eps))
        return out
