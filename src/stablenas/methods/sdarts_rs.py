"""SDARTS-RS (Chen & Hsieh 2020, sdarts.txt Sec. 3.3, eq. 3): random smoothing of the weight step.

Before every weight step the op weights *after* the activation are perturbed by
delta ~ U[-eps, eps], projected back onto the simplex (clip to [0, 1], renormalise), and the
weights take their SGD step at A + delta. alpha is never written: the loop hands the weight step a
detached copy of the transformed op weights, so "restore A" is implicit. eps grows linearly from
0.03 to 0.3 over the search, per epoch as in the SmoothDARTS code (Sec. 5.1: "We initialize the
norm ball eps as 0.03 and linearly increase it to 0.3 in all our experiments").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from ._common import Projection, Ramp, linear_ramp, project, uniform_like
from .base import Batch, Method, MethodOptions, Mix, register_method

if TYPE_CHECKING:
    from ..search.loop import Search


class RSOptions(MethodOptions):
    epsilon_min: float = Field(0.03, ge=0.0)  # sdarts.txt Sec. 5.1
    epsilon_max: float = Field(0.3, ge=0.0)
    ramp: Ramp = "epoch"  # epoch: eps_e = min + (max - min) * e / epochs; step: per step; off: epsilon_max
    projection: Projection = "auto"  # simplex for softmax op weights, box [0, 1] for sigmoid


@register_method
class SDARTSRS(Method):
    name = "sdarts-rs"
    description = "SDARTS-RS: weight step at op weights + U[-eps, eps] (simplex-projected), eps 0.03->0.3"
    preset = "sdarts-rs"
    Options = RSOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.epsilon = self.opts.epsilon_min

    def on_epoch_start(self, search: Search, epoch: int) -> None:
        self.epsilon = linear_ramp(self.opts.epsilon_min, self.opts.epsilon_max, search, self.opts.ramp)

    def transform(self, search: Search, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        if phase != "weights":
            return mix
        if self.opts.ramp == "step":
            self.epsilon = linear_ramp(self.opts.epsilon_min, self.opts.epsilon_max, search, "step")
        clean = {ct: w.detach() for ct, w in mix.op.items()}
        delta = uniform_like(clean, self.epsilon, search.arch)
        # delta is a constant: under single-level updates alpha still gets the gradient at A + delta
        shifted = {ct: mix.op[ct] + delta[ct] for ct in mix.op}
        return mix.replace(op=project(search.arch, shifted, self.opts.projection))

    def on_epoch_end(self, search: Search, epoch: int, record: dict) -> None:
        record["epsilon"] = self.epsilon
