"""SNAS (Xie et al., ICLR 2019, "SNAS: Stochastic Neural Architecture Search"): a relaxed
Gumbel-softmax sample of the op weights in every forward.

Each edge mixes all its ops with the soft sample h = softmax((log p + g) / tau), g ~ Gumbel(0, 1)
(the concrete relaxation of a one-hot op choice; ``_get_categ_mask`` in the authors'
``SNAS/model_search.py``), drawn once per cell type and forward in the weight and the alpha phase.
Every op runs and alpha gets its gradient through all of them, unlike GDAS, whose straight-through
hard sample runs one op (both share ``_common.gumbel_softmax``). Validation passes sample too, as the
authors' ``infer`` does (``eval: sample``), or use the argmax cell or the plain softmax weights.

tau is annealed linearly per epoch from tau0 = 1 to tau_min = 0.03 (the authors' README command,
``--temp 1 --temp_min 0.03 --temp_annealing``; ``Temp_Scheduler`` in their ``utils.py``):
tau_e = tau_min + (tau0 - tau_min) * (1 - (e + 1) / E) for epoch e = 0 .. E-1, so the last epoch
runs at tau_min (the scheduler is stepped once before the first epoch; it fixes E at 150, their
search length, here E is ``search.schedule_epochs``, past which tau stays at tau_min).

SNAS trains weights and alpha from one loss in one backward pass: the ``snas`` preset uses
``search.update: single``. Its resource constraint is not part of this method (a resource budget
composes with any method).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ..supernet.mix import Mix
from ._common import argmax_mix, gumbel_softmax
from .base import Batch, Method, MethodOptions, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class SNASOptions(MethodOptions):
    # SNAS README: --temp 1 --temp_min 0.03 --temp_annealing
    tau0: float = Field(1.0, gt=0.0, description="temperature of the relaxed Gumbel-softmax at the start")
    tau_min: float = Field(0.03, gt=0.0, description="temperature at the end of the anneal")
    # validation forwards: the SNAS code samples there too
    eval: Literal["sample", "argmax", "soft"] = Field(
        "sample",
        description="op weights of validation forwards: a sample, the argmax op or the soft mixture")

    @model_validator(mode="after")
    def _annealed_down(self) -> SNASOptions:
        if self.tau_min > self.tau0:
            raise ValueError(f"tau_min ({self.tau_min}) exceeds tau0 ({self.tau0}): tau anneals from tau0 down "
                             "to tau_min")
        return self


def snas_temperature(tau0: float, tau_min: float, epoch: int, epochs: int) -> float:
    """The SNAS code's linear schedule at (0-based) epoch ``epoch`` of ``epochs``; tau_min past them."""
    return tau_min + (tau0 - tau_min) * (1.0 - min((epoch + 1) / epochs, 1.0))


@register_method
class SNAS(Method):
    name = "snas"
    paper = "Xie et al., ICLR 2019: 'SNAS: Stochastic Neural Architecture Search'"
    description = "SNAS: soft Gumbel-softmax op weights in every forward, tau 1 -> 0.03 linear, single-level"
    preset = "snas"
    Options = SNASOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.tau = self.opts.tau0

    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        self.tau = snas_temperature(self.opts.tau0, self.opts.tau_min, epoch, search.schedule_epochs)

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        if phase == "eval" and self.opts.eval != "sample":
            return mix if self.opts.eval == "soft" else argmax_mix(search.arch, mix)
        masks = {ct: search.arch.mask(ct) for ct in mix.op}
        op, _ = gumbel_softmax(mix.op, masks, self.tau, hard=False)
        return mix.replace(op=op, hard=None)

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        record["tau"] = self.tau
