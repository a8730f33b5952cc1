"""Lambda-DARTS (Movahedi et al., ICLR 2023, "Λ-DARTS: Mitigating Performance Collapse by Harmonizing
Operation Selection among Cells"): the weight step also raises the agreement of the cells' op-weight
gradients.

The cells of a type share alpha but each receives its own op weights ``A_l``; ``g_l = dL_train/dA_l``.
The harmony term is ``R(w) = 2/(L(L-1)) sum_{i<j} cos(g_i, g_j)`` over the L cells of a type, and the
weight gradient becomes ``grad_w L_train - lambda_t * grad_w R``. ``grad_w R = (dg/dw)^T p`` with
``p_l = dR/dg_l = 2/(L(L-1)) (I - u_l u_l^T) sum_j u_j / |g_l|`` (``u = g/|g|``) is taken by a central
difference of the training gradient along ``p`` in op-weight space: with ``eps = epsilon / |p|``,
``-grad_w R ~ (grad_w L(A - eps p) - grad_w L(A + eps p)) / (2 eps)`` (the authors'
``sota/cnn/model_search.py``: ``get_perturbations`` with ``corr_type='corr'``, ``get_reg_grads``; the
loop in ``train_search.py``). ``lambda_t = lambda * epoch / (epochs - 1)`` (``train_search.py``), epochs
being ``search.schedule_epochs`` (lambda past them, in DARTS-PT's selection phase);
lambda 0.125, epsilon 1e-4 (its defaults and the NAS-Bench-201 CIFAR-10 script; the SVHN scripts use
0.25 and 1e-3). The authors' DARTS-space code zeroes the reduction cells' ``p`` (``reduce_cells``).

Where this differs from the authors' code: the three extra passes (for ``g`` and the two displaced
gradients) run with throw-away BN running statistics, so the buffers move once per step as in every
other method; ``g`` comes from a pass of its own (weights frozen, no weight gradients) rather than
from the weight step's backward, three extra forward/backward passes per step instead of two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from .. import distributed as dist
from ..errors import ConfigError
from ..registry import SKELETONS, SPACES
from ..supernet.network import weights_frozen
from .base import Method, MethodOptions, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class LambdaOptions(MethodOptions):
    # train_search.py --lambda_ 0.125 (SVHN scripts: 0.25)
    strength: float = Field(0.125, ge=0.0,
                            description="lambda: weight of the term aligning the cells' op-weight gradients")
    # train_search.py --epsilon_0 1e-4 (SVHN scripts: 1e-3)
    epsilon: float = Field(1e-4, gt=0.0, description="finite-difference step of that term's gradient")
    # lambda_t = lambda * epoch / (epochs - 1) (train_search.py); false: lambda throughout
    ramp: bool = Field(True, description="raise lambda linearly from 0 over the epochs (false: lambda throughout)")
    # the authors' DARTS code aligns the normal cells only
    reduce_cells: bool = Field(False, description="align the reduction cells too, not only the normal cells")


def harmony_direction(g: torch.Tensor) -> torch.Tensor:
    """``p = dR/dg`` for per-cell gradients ``g`` of shape ``[L, D]``, R the mean pairwise cosine."""
    n = g.shape[0]
    norm = g.norm(dim=1, keepdim=True).clamp_min(1e-30)
    u = g / norm
    s = u.sum(0, keepdim=True)
    return (s - (u * s).sum(1, keepdim=True) * u) / norm * (2.0 / (n * (n - 1)))


@register_method
class LambdaDARTS(Method):
    name = "lambda-darts"
    paper = ("Movahedi et al., ICLR 2023: "
             "'Lambda-DARTS: Mitigating Performance Collapse by Harmonizing Operation Selection among Cells'")
    description = "Lambda-DARTS: weight step raises the cosine of the cells' op-weight gradients (finite diff.)"
    preset = "lambda-darts"
    Options = LambdaOptions

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        SKELETONS[SPACES[cfg.space].skeleton].require("several_cells",
                                                      "method lambda-darts (it aligns the cells' op-weight gradients)")

    def __init__(self, options=None):
        super().__init__(options)
        self.strength = 0.0 if self.opts.ramp else self.opts.strength

    def setup(self, search: SearchContext) -> None:
        counts: dict[str, int] = {}
        for cell in search.net.cells:
            ct = getattr(cell, "cell_type", None)
            if ct is not None:
                counts[ct] = counts.get(ct, 0) + 1
        self.cells = {ct: n for ct, n in counts.items() if n >= 2 and (self.opts.reduce_cells or ct != "reduce")}
        if not self.cells:
            raise ConfigError(f"method lambda-darts needs two or more cells of a type to align (got {counts}); "
                              "raise network.layers")

    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        if self.opts.ramp:
            self.strength = self.opts.strength * min(epoch / max(search.schedule_epochs - 1, 1), 1.0)

    def cell_gradients(self, search: SearchContext) -> dict[str, torch.Tensor]:
        """``g`` per aligned cell type, ``[cells, edges, ops]``: the training loss of the weight step's
        batch differentiated w.r.t. each cell's own op weights (averaged over ranks)."""
        x, y = search.weight_batch
        mix = search.weight_mix.detached()
        a = {ct: mix.op[ct].expand(n, *mix.op[ct].shape).clone().requires_grad_(True) for ct, n in self.cells.items()}
        with weights_frozen(search.net):
            loss = search.loss(x, y, mix.replace(op={**mix.op, **a}), dict(search.net.named_parameters()))
            grads = dist.grad(loss, list(a.values()))
        return dict(zip(a, grads))

    def perturbation(self, g: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(``eps * p`` per cell type, ``eps``), ``eps = epsilon / |p|`` over all aligned cells."""
        p = {ct: harmony_direction(t.reshape(t.shape[0], -1)).reshape(t.shape) for ct, t in g.items()}
        eps = self.opts.epsilon / torch.sqrt(sum((t * t).sum() for t in p.values())).clamp_min(1e-30)
        return {ct: t * eps for ct, t in p.items()}, eps

    def on_weight_grads(self, search: SearchContext) -> None:
        if self.strength == 0.0:
            return
        step, eps = self.perturbation(self.cell_gradients(search))
        x, y = search.weight_batch
        mix = search.weight_mix.detached()
        params = [p for p in search.net.parameters() if p.grad is not None]
        named = dict(search.net.named_parameters())
        grads = []
        for sign in (-1.0, 1.0):
            n = {ct: mix.op[ct].expand_as(d) for ct, d in step.items()}
            op = {**mix.op, **{ct: n[ct] + sign * d for ct, d in step.items()}}
            loss = search.loss(x, y, mix.replace(op=op), named)
            grads.append(dist.grad(loss, params, allow_unused=True))
        scale = self.strength / (2.0 * eps)
        with torch.no_grad():
            for p, f, b in zip(params, *grads):
                if f is not None and b is not None:
                    p.grad.add_((f - b) * scale)

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        record["lambda"] = self.strength
