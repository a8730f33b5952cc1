"""SDARTS-ADV (Chen & Hsieh 2020, sdarts.txt Sec. 3.3, eq. 4): adversarial smoothing of the weight step.

delta maximises the training loss in the l_inf ball of radius eps around the op weights A (after the
activation), found by PGD; the weights then step at A + delta and alpha is untouched. The PGD
follows the public SmoothDARTS attack (``Linf_PGD_alpha``): random start A + U[-eps, eps] projected
onto the simplex; ``steps`` (7, Sec. 5.1) signed-gradient ascent steps of size 2 * eps / steps,
each followed by clipping A' - A to [-eps, eps] and projecting onto the simplex (clip to [0, 1],
renormalise); BN in eval mode during the attack; and if the attack ends with a *lower* loss than
the clean weights, the clean weights are kept. Note the order (ball, then simplex) means the final
point is on the simplex but may leave the ball by the renormalisation, exactly as in that code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from .. import distributed as dist
from ..supernet.mix import Mix
from ..supernet.network import weights_frozen
from ._common import BNMode, Projection, RampedPerturbation, RampOptions, perturbed_loss, project, uniform_like
from .base import Batch, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class ADVOptions(RampOptions):
    # "7-step PGD attack under l_inf norm ball"
    steps: int = Field(7, ge=1, description="PGD steps of the l_inf attack on the op weights")
    # None: 2 * eps / steps (SmoothDARTS Linf_SGD lr)
    step_size: float | None = Field(None, gt=0.0, description="PGD step size (null: 2 * epsilon / steps)")
    random_start: bool = Field(True, description="start the attack at a uniform random point of the epsilon ball")
    # SmoothDARTS: restore A if the attack lowered the loss
    keep_clean_if_weaker: bool = Field(True, description="keep the clean op weights when the attack lowered the loss")
    # SmoothDARTS runs the attack with model.eval()
    bn_mode: BNMode = Field("eval",
                            description="BatchNorm during the attack: running statistics (eval) or batch ones (train)")
    projection: Projection = Field(
        "auto",
        description="back onto the op-weight domain: auto (simplex for softmax, box for sigmoid), simplex, box")


def pgd_attack(search: SearchContext, clean: dict[str, torch.Tensor], mix: Mix, batch: Batch, eps: float,
               opts: ADVOptions) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The SDARTS-ADV attack; returns (perturbed op weights, clean loss, attacked loss), no host sync."""
    x, y = batch
    arch = search.arch
    lr = opts.step_size if opts.step_size is not None else 2.0 * eps / opts.steps
    edge = None if mix.edge is None else {k: v.detach() for k, v in mix.edge.items()}

    def loss_at(w: dict[str, torch.Tensor]) -> torch.Tensor:
        return perturbed_loss(search, x, y, mix.replace(op=w, edge=edge), opts.bn_mode)

    with torch.no_grad():
        (loss_clean,) = dist.all_reduce_mean([loss_at(clean)])  # the job's loss (every rank decides alike)
    a = clean
    if opts.random_start:
        delta = uniform_like(clean, eps, arch)
        a = project(arch, {ct: clean[ct] + delta[ct] for ct in clean}, opts.projection)
    for _ in range(opts.steps):
        a = {ct: w.detach().requires_grad_(True) for ct, w in a.items()}
        cts = list(a)
        # allow_unused: a cell type may have no cell in a shallow network (layers < 3: no reductions)
        # averaged over ranks: the ascent direction of the global-batch loss
        with weights_frozen(search.net):  # the ascent needs op-weight gradients only
            grads = dist.grad(loss_at(a), [a[ct] for ct in cts], allow_unused=True)
        with torch.no_grad():
            stepped = {ct: a[ct] if g is None else a[ct] + lr * g.sign() for ct, g in zip(cts, grads)}
            ball = {ct: clean[ct] + (stepped[ct] - clean[ct]).clamp(-eps, eps) for ct in cts}
            a = project(arch, ball, opts.projection)
    a = {ct: w.detach() for ct, w in a.items()}
    with torch.no_grad():
        (loss_adv,) = dist.all_reduce_mean([loss_at(a)])
        if opts.keep_clean_if_weaker:
            keep = loss_adv < loss_clean
            a = {ct: torch.where(keep, clean[ct], a[ct]) for ct in a}
            loss_adv = torch.maximum(loss_adv, loss_clean)
    return a, loss_clean, loss_adv


@register_method
class SDARTSADV(RampedPerturbation):
    name = "sdarts-adv"
    paper = ("Chen & Hsieh, ICML 2020: "
             "'Stabilizing Differentiable Architecture Search via Perturbation-based Regularization'")
    description = "SDARTS-ADV: weight step at op weights + 7-step PGD l_inf attack (simplex), eps 0.03->0.3"
    preset = "sdarts-adv"
    Options = ADVOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._gain = None  # running sum of (attacked - clean) training loss, tensor (no syncs)
        self._count = 0

    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        super().on_epoch_start(search, epoch)
        self._gain, self._count = None, 0

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        if phase != "weights" or batch is None:
            return mix
        clean = {ct: w.detach() for ct, w in mix.op.items()}
        adv, l0, l1 = pgd_attack(search, clean, mix, batch, self.step_epsilon(search), self.opts)
        gain = (l1 - l0).detach()
        self._gain = gain if self._gain is None else self._gain + gain
        self._count += 1
        # delta is a constant; under single-level updates alpha gets the gradient at A + delta
        return mix.replace(op={ct: mix.op[ct] + (adv[ct] - clean[ct]) for ct in mix.op})

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        super().on_epoch_end(search, epoch, record)
        if self._gain is not None:
            record["adv_loss_gain"] = float(self._gain) / max(self._count, 1)
