"""beta-DARTS (Ye et al., CVPR 2022): Beta-Decay regularisation of the alpha objective.

The alpha loss gains ``lambda_e * mean_edges logsumexp_ops(alpha)``: the smoothmax of each edge's
alpha (over the ops the edge offers, so the padding of per-edge op sets never enters), averaged over
the edges of every cell type. Its gradient is the softmax itself, so it pulls the largest alphas
down hardest and keeps the value and variance of the softmax-activated weights from growing (the
paper's Sec. 3). lambda grows linearly with the epoch, ``lambda_e = start + coef * e / ramp_epochs``
with e counted from 0, constant within an epoch; the authors' ``optimizers/darts/architect.py``
(``mlc_loss`` and ``_backward_step``: ``0 + 50 * epoch / 100``) fixes start 0, coef 50 and the
divisor 100 whatever the search length, which is also the line their DARTS-space searches get (that code has
no other schedule). ``ramp_epochs: null`` divides by the search's own epoch count instead
(``search.schedule_epochs``); past that count (DARTS-PT's selection phase) e stays at it.

Defined on softmax-activated alpha only (a config error otherwise); the term is a function of alpha
alone, so it runs on every space, the recurrent one included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from ..errors import ConfigError
from .base import Method, MethodOptions, register_method

if TYPE_CHECKING:
    from ..supernet.arch import ArchParams
    from .context import SearchContext


class BetaDecayOptions(MethodOptions):
    start: float = Field(0.0, ge=0.0, description="lambda at epoch 0")  # the "0 +" of that line
    # architect.py _backward_step: 50 * epoch / 100
    coef: float = Field(50.0, ge=0.0,
                        description="lambda's rise over ramp_epochs: lambda_e = start + coef * e / ramp_epochs")
    # the divisor 100 of that line; None: search.schedule_epochs
    ramp_epochs: int | None = Field(100, gt=0, description="epochs of the linear rise (null: search.schedule_epochs)")


def smoothmax_mean(arch: ArchParams) -> torch.Tensor:
    """mean over the edges of all cell types of logsumexp over each edge's valid ops (``mlc_loss``)."""
    rows = [torch.logsumexp(a.masked_fill(~arch.mask(ct), float("-inf")), dim=-1) for ct, a in arch.alphas.items()]
    return torch.cat(rows).mean()


@register_method
class BetaDARTS(Method):
    name = "beta-darts"
    paper = "Ye et al., CVPR 2022: 'beta-DARTS: Beta-Decay Regularization for Differentiable Architecture Search'"
    description = "beta-DARTS: alpha loss + lambda * mean logsumexp(alpha), lambda = 50 * epoch / 100"
    preset = "beta-darts"
    Options = BetaDecayOptions

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        if cfg.arch.activation != "softmax":
            raise ConfigError(f"method beta-darts regularises softmax-activated alpha: arch.activation must be "
                              f"softmax (got {cfg.arch.activation!r})")

    def coefficient(self, search: SearchContext) -> float:
        """lambda of the current epoch."""
        span = search.schedule_epochs
        return self.opts.start + self.opts.coef * min(search.epoch, span) / (self.opts.ramp_epochs or span)

    def arch_penalty(self, search: SearchContext) -> torch.Tensor | None:
        lam = self.coefficient(search)
        return None if lam == 0.0 else lam * smoothmax_mean(search.arch)

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        record["beta_lambda"] = self.coefficient(search)
        with torch.no_grad():
            record["beta_smoothmax"] = float(smoothmax_mean(search.arch))
