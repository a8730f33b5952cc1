"""DARTS- (Chu et al., ICLR 2021): an auxiliary skip connection beside every mixed op.

Every edge outputs ``sum_k w_k op_k(x) + beta * aux(x)``: ``aux`` is the identity on a stride-1
edge and a FactorizedReduce of its own on a reduction cell's stride-2 edge (the authors'
``model_search.py``, ``MixedOp``: ``auxiliary_op``). The path is outside the candidates: no op
weight, no alpha, never in the genotype. It takes skip_connect's advantage of training the deep
supernet like a residual net out of the competition, so alpha stops rewarding skip_connect for it
(the paper's Sec. 3). beta decays linearly from ``beta`` to 0 over the search, per epoch as the
authors' ``DecayScheduler(decay_type="linear")`` stepped at every epoch start:
``beta_e = beta * (1 - e / epochs)``, e counted from 0, so the last epoch runs at beta / epochs
(the authors' plots list 50/50 ... 1/50). The path is in every forward of the search, weight step,
alpha step and the validation passes alike (their ``infer`` runs the same model).

The weight rides on ``Mix.skip`` into the supernet (both engines, ``supernet.network.MixedOp``); the
reduction edges' FactorizedReduce modules are built because the method declares them
(``supernet_options``). A pure function of the epoch (or step): nothing to checkpoint.
Works on every CNN space (darts, s1-s5, idarts-*, nb201: its cells have no stride-2 edge, the path
is the identity everywhere); the recurrent cell has no mixed-op edge to put it beside (a config error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..registry import SKELETONS, SPACES
from ..supernet.mix import Mix
from ._common import linear_ramp
from .base import Batch, Method, MethodOptions, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class DartsMinusOptions(MethodOptions):
    # authors' args.py --skip_beta 1.0: the auxiliary weight at epoch 0
    beta: float = Field(1.0, ge=0.0, description="weight of the auxiliary skip at epoch 0; decays linearly to 0")
    # epoch: beta_e = beta * (1 - e / epochs), the authors' per-epoch DecayScheduler (--decay linear);
    # step: the same line evaluated at every step
    ramp: Literal["epoch", "step"] = Field("epoch", description="decay beta once per epoch or at every step")


@register_method
class DartsMinus(Method):
    name = "darts-minus"
    paper = "Chu et al., ICLR 2021: 'DARTS-: Robustly Stepping out of Performance Collapse Without Indicators'"
    description = "DARTS-: auxiliary skip beta * x beside every mixed op, beta 1 -> 0 linearly"
    preset = "darts-minus"
    Options = DartsMinusOptions
    supernet_options = {"aux_skip": True}

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        SKELETONS[SPACES[cfg.space].skeleton].require("aux_skip", "method darts-minus")

    def beta(self, search: SearchContext) -> float:
        """The auxiliary skip's weight now."""
        return linear_ramp(self.opts.beta, 0.0, search, self.opts.ramp)

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        return mix.replace(skip=self.beta(search))

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        record["skip_beta"] = self.beta(search)
