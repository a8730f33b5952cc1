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

from ..supernet.mix import Mix
from ._common import Projection, RampedPerturbation, RampOptions, project, uniform_like
from .base import Batch, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class RSOptions(RampOptions):
    # simplex for softmax op weights, box [0, 1] for sigmoid
    projection: Projection = Field(
        "auto",
        description="back onto the op-weight domain: auto (simplex for softmax, box for sigmoid), simplex, box")


@register_method
class SDARTSRS(RampedPerturbation):
    name = "sdarts-rs"
    paper = ("Chen & Hsieh, ICML 2020: "
             "'Stabilizing Differentiable Architecture Search via Perturbation-based Regularization'")
    description = "SDARTS-RS: weight step at op weights + U[-eps, eps] (simplex-projected), eps 0.03->0.3"
    preset = "sdarts-rs"
    Options = RSOptions

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        if phase != "weights":
            return mix
        clean = {ct: w.detach() for ct, w in mix.op.items()}
        delta = uniform_like(clean, self.step_epsilon(search), search.arch)
        # delta is a constant: under single-level updates alpha still gets the gradient at A + delta
        shifted = {ct: mix.op[ct] + delta[ct] for ct in mix.op}
        return mix.replace(op=project(search.arch, shifted, self.opts.projection))
