"""DrNAS (Chen et al., ICLR 2021, "DrNAS: Dirichlet Neural Architecture Search"): op weights drawn
from a Dirichlet distribution whose concentration alpha parameterises.

Every forward of the weight and the alpha phase draws each edge's op weights w ~ Dir(beta),
beta = elu(alpha) + 1 (``process_step_vector(..., 'dirichlet')`` in the authors' ``utils.py``): one
draw per cell type and forward, shared by all cells of that type (their ``Network.forward``), with
the pathwise gradient of ``Dirichlet.rsample`` (implicit reparameterisation through Gamma samples),
so alpha learns through the sample. Validation passes, the epoch records and discretisation read the
Dirichlet mean, beta normalised: the ``dirichlet`` activation, which this method requires. (The
authors' code also samples in its validation passes and ranks ops by softmax(alpha) for the genotype;
the op picked per edge is the same, the comparison of edges across a node is not.) Edges with fewer
valid ops than the widest draw over their own ops: padding gets weight exactly 0 and no gradient.

A regulariser pulls the distribution toward the prior Dir(1), added to the alpha objective through
``Method.arch_penalty``: ``reg: l2`` adds reg_scale / 2 * ||alpha||^2 (alpha = 0 is beta = 1; the
authors' ``architect.py`` passes reg_scale as Adam's weight decay on alpha, the same gradient),
``reg: kl`` adds reg_scale * sum over edges of KL(Dir(beta) || Dir(1)) (``_get_kl_reg`` in
``DARTS-space/model_search.py``). Defaults l2 and 1e-3 (``--reg_type``, ``--reg_scale`` of both
``train_search.py``). With ``reg: l2`` keep ``optim.arch_weight_decay: 0`` (the preset does), or
alpha decays twice.

The progressive variant (prune ops and widen the partial channels between stages,
``train_search_progressive.py``) is not implemented. The sampler needs nothing of the skeleton, so
the method runs on every space, the recurrent cell included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..registry import METHODS
from ..supernet.arch import dirichlet_concentration
from ..supernet.mix import Mix
from .base import Batch, Method, MethodOptions, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class DrNASOptions(MethodOptions):
    # DrNAS train_search.py: --reg_type l2 (choices l2, kl)
    reg: Literal["l2", "kl"] = Field(
        "l2",
        description="regulariser of the Dirichlet concentration towards its prior: l2 or kl")
    # --reg_scale 1e-3 ("proper for l2")
    reg_scale: float = Field(1e-3, ge=0.0, description="weight of that regulariser")


def dirichlet_sample(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One reparameterised draw per edge from Dir(elu(alpha) + 1) over its valid ops. Padding slots
    (concentration 1, a constant) are dropped and the rest renormalised: by the aggregation
    property of the Dirichlet that is a draw from the valid ops' own Dirichlet."""
    conc = dirichlet_concentration(alpha, mask)
    w = torch.distributions.Dirichlet(conc, validate_args=False).rsample() * mask  # unchecked: no host sync
    return w / w.sum(-1, keepdim=True)


def kl_to_uniform(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(Dir(beta) || Dir(1)) per edge over its K valid ops, beta = elu(alpha) + 1:
    ln G(b0) - ln G(K) - sum ln G(b_i) + sum (b_i - 1) (psi(b_i) - psi(b0)), b0 = sum b_i (the prior's
    sum ln G(1) is 0). Padding has b = 1 and drops out of both sums."""
    b = dirichlet_concentration(alpha, mask)
    b0 = (b * mask).sum(-1)
    k = mask.sum(-1).to(b.dtype)
    return (torch.lgamma(b0) - torch.lgamma(k) - torch.lgamma(b).sum(-1)
            + ((b - 1.0) * (torch.digamma(b) - torch.digamma(b0).unsqueeze(-1))).sum(-1))


@register_method
class DrNAS(Method):
    name = "drnas"
    paper = "Chen et al., ICLR 2021: 'DrNAS: Dirichlet Neural Architecture Search'"
    description = "DrNAS: op weights ~ Dirichlet(elu(alpha)+1), pathwise gradients, prior regulariser, mean at eval"
    preset = "drnas"
    Options = DrNASOptions

    requires = {"arch.activation": "dirichlet"}

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        names = [m.name for m in cfg.methods]
        before = names[: names.index(cls.name)]
        editing = [n for n in before if METHODS[n].transform is not Method.transform]
        if editing:  # their edits of the op weights would be replaced by the draw from alpha
            raise ConfigError(f"method drnas draws the op weights from alpha, so it must come before "
                              f"{', '.join(editing)} in methods (each edits the op weights it is handed)")

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        if phase == "eval":
            return mix  # the activation's Dirichlet mean
        arch = search.arch
        return mix.replace(op={ct: dirichlet_sample(arch.alphas[ct], arch.mask(ct)) for ct in mix.op})

    def arch_penalty(self, search: SearchContext) -> torch.Tensor | None:
        o = self.opts
        if o.reg_scale == 0:
            return None
        arch = search.arch
        if o.reg == "l2":
            terms = [0.5 * (a * a * arch.mask(ct)).sum() for ct, a in arch.alphas.items()]
        else:
            terms = [kl_to_uniform(a, arch.mask(ct)).sum() for ct, a in arch.alphas.items()]
        return o.reg_scale * sum(terms[1:], terms[0])

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        with torch.no_grad():
            penalty = self.arch_penalty(search)
        record["dirichlet_reg"] = 0.0 if penalty is None else float(penalty)
