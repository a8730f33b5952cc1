"""GDAS (Dong & Yang 2019): one sampled op per edge, Gumbel-softmax straight-through gradients.

In every forward of the weight and the alpha phase each edge runs exactly one op, drawn as
argmax of the Gumbel-softmax h = softmax((log p + g) / tau), p the op weights, g ~ Gumbel(0, 1).
The mixing weight is the straight-through one_hot(argmax h) - h.detach() + h: its value is the
one-hot choice, its gradient that of h, so alpha is trained through the single op that ran. tau is
annealed linearly from 10 to 0.1, once per epoch: tau_e = tau_max - (tau_max - tau_min) * e /
(epochs - 1) (the GDAS code, ``search_model.set_tau``), epochs being ``search.schedule_epochs``
(past them, DARTS-PT's selection phase, tau stays at tau_min). Sampling is shared by all cells of a
cell type, as in GDAS. The hard choices are Python lists (the supernet runs only the chosen op), so
each sampled forward makes one small device-to-host copy of the indices.

Unlike the GDAS code, a sampled forward does not add the zero-valued weights of the ops that did
not run to the edge output; their alpha entries get gradient only through the softmax coupling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, model_validator

from ..supernet.mix import Mix
from ._common import argmax_mix, gumbel_softmax
from .base import Batch, Method, MethodOptions, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class GDASOptions(MethodOptions):
    # GDAS scripts: --tau_max 10 --tau_min 0.1
    tau_max: float = Field(10.0, gt=0.0, description="Gumbel-softmax temperature at the start of the anneal")
    tau_min: float = Field(0.1, gt=0.0, description="temperature at its end")
    # linear per epoch (GDAS code) or per step
    anneal: Literal["epoch", "step"] = Field("epoch", description="lower tau linearly once per epoch or at every step")
    # validation forwards: GDAS samples there too
    eval: Literal["sample", "argmax", "soft"] = Field(
        "sample",
        description="op weights of validation forwards: a sampled op, the argmax op or the soft mixture")

    @model_validator(mode="after")
    def _annealed_down(self) -> GDASOptions:
        if self.tau_min > self.tau_max:  # the GDAS scripts anneal the temperature down (set_tau)
            raise ValueError(f"tau_min ({self.tau_min}) exceeds tau_max ({self.tau_max}): tau anneals from tau_max "
                             "down to tau_min")
        return self


def gumbel_hard(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], tau: float,
                generator: torch.Generator | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Straight-through Gumbel-softmax samples per cell type (``_common.gumbel_softmax``): the mixing
    weights and the chosen op per edge as lists (the supernet runs only those)."""
    op, idx = gumbel_softmax(weights, masks, tau, hard=True, generator=generator)
    return op, {ct: i.tolist() for ct, i in idx.items()}


@register_method
class GDAS(Method):
    name = "gdas"
    paper = "Dong & Yang, CVPR 2019: 'Searching for A Robust Neural Architecture in Four GPU Hours'"
    description = "GDAS: one Gumbel-sampled op per edge, straight-through gradient, tau 10->0.1 linear"
    preset = "gdas"
    Options = GDASOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.tau = self.opts.tau_max

    def _tau(self, search: SearchContext) -> float:
        o = self.opts
        total = search.schedule_epochs
        done = search.epoch if o.anneal == "epoch" else search.epochs_done
        frac = min(done / (total - 1), 1.0) if total > 1 else 0.0
        return o.tau_max - (o.tau_max - o.tau_min) * frac

    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        self.tau = self._tau(search)

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        if phase == "eval" and self.opts.eval != "sample":
            return mix if self.opts.eval == "soft" else argmax_mix(search.arch, mix)
        if self.opts.anneal == "step" and phase != "eval":
            self.tau = self._tau(search)
        masks = {ct: search.arch.mask(ct) for ct in mix.op}
        op, hard = gumbel_hard(mix.op, masks, self.tau)
        return mix.replace(op=op, hard=hard)

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        record["tau"] = self.tau
