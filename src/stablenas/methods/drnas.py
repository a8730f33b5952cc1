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

``progressive: true`` is the search in stages of Sec. 2.4 (the authors' ``DARTS-space/train_search.py``;
``201-space/train_search_progressive.py`` on NB201; the ``drnas-progressive`` preset). Stage i runs
``stages[i]`` epochs with 1/``partial_channels[i]`` of the channels through the ops (PC-DARTS's
partial channels, ``network.partial_channels`` being the first K); alpha is frozen for the first
``stage_warmup_epochs`` epochs of every stage (their ``if epoch >= 10`` on the stage's own epoch
count). At a stage change each edge keeps its ``keep_ops`` ops of largest alpha (``model.pruning``:
``topk`` on alpha, the order of softmax(alpha) and of the Dirichlet mean); the kept alphas stay as
they are, the others are set to 0 and leave the mask, so the draw, the regulariser and the genotype
see the kept ops alone (their ``process_step_vector`` draws over all ops and renormalises over the
kept ones: the same distribution, by the aggregation property). Then the ops widen to the new K
(``model.wider``, ``net2wider.py``): old channels kept, copies of randomly drawn ones appended, not
rescaled, each momentum buffer widened like its weight (``configure_optimizer``); the weight lr's
cosine spans all stages and goes on (``configure_scheduler``), and alpha's Adam is not restarted.
Pruned ops stay in the modules and the engine skips them (``SearchContext.reshape_supernet``,
``supernet.reshape``); the checkpoint records K and the masks, so a resume rebuilds the shape first.
Differences: the widening indices come from a generator seeded by the run's seed and the stage (the
same on every rank), FactorizedReduce's BN copies follow their own conv's channels, and ``reg: kl``
sums over the kept ops only.

The Dirichlet sampler needs nothing of the skeleton, so the method runs on every space, the recurrent
cell included; the progressive search needs partial channels (not on the recurrent cell).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..registry import METHODS, SKELETONS, SPACES
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
    # the progressive search of DARTS-space/train_search.py (train_search_progressive.py on NB201)
    progressive: bool = Field(False, description="search in stages: prune ops and widen partial channels between them")
    # train_epochs = [25, 25] (NB201: [50, 50])
    stages: list[int] = Field([25, 25], min_length=1, description="epochs of each stage (they sum to optim.epochs)")
    # ks = [6, 4] (NB201: [4, 2]); the first is --k, network.partial_channels
    partial_channels: list[int] = Field([6, 4], min_length=1, description="PC-DARTS K of each stage")
    # num_keeps = [7, 4] (NB201: [5, 3]); the first stage keeps every op, so one entry per later stage
    keep_ops: list[int] = Field([4], description="ops kept per edge from the second stage on, one per stage change")
    # `if epoch >= 10: architect.step(...)`, epoch counted within the stage
    stage_warmup_epochs: int = Field(10, ge=0, description="epochs at the start of each stage with alpha frozen")


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
        if options.progressive:
            check_stages(cfg, options)
            fixed = [n for n in names if METHODS[n].needs_fixed_shape]
            if fixed:
                raise ConfigError(f"method drnas with progressive: true reshapes the supernet between stages; "
                                  f"{', '.join(fixed)} hold(s) the supernet's modules or a snapshot of its "
                                  "tensors and cannot follow: drop one of them")

    def setup(self, search: SearchContext) -> None:
        self.stage = 0

    def stage_of(self, epoch: int) -> tuple[int, int]:
        """The stage epoch ``epoch`` belongs to, and the epoch its stage starts at."""
        start = 0
        for i, n in enumerate(self.opts.stages[:-1]):
            if epoch < start + n:
                return i, start
            start += n
        return len(self.opts.stages) - 1, start

    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        """At a stage's first epoch: prune to the ``keep_ops`` best ops per edge by alpha (the order of
        softmax(alpha), of the Dirichlet mean and the authors' ``topk`` on alpha in ``utils.prune``),
        then widen to the stage's K with index draws seeded by the run's seed and the stage, the same
        on every rank. Idempotent: a resume replays this hook on a supernet already in shape."""
        if not self.opts.progressive:
            return
        stage, _ = self.stage_of(epoch)
        while self.stage < stage:
            self.stage += 1
            arch = search.arch
            keep = {ct: top_k_mask(a.detach(), arch.mask(ct), self.opts.keep_ops[self.stage - 1])
                    for ct, a in arch.alphas.items()}
            gen = torch.Generator().manual_seed(int(search.cfg.seed) * 1000 + self.stage)
            search.reshape_supernet(keep=keep, partial_channels=self.opts.partial_channels[self.stage], generator=gen)
            search.log(f"drnas: stage {self.stage + 1}: {self.opts.keep_ops[self.stage - 1]} ops per edge, "
                       f"partial channels 1/{self.opts.partial_channels[self.stage]}")

    def freezes_alpha(self, search: SearchContext) -> bool:
        if not self.opts.progressive:
            return False
        _, start = self.stage_of(search.epoch)
        return search.epoch - start < self.opts.stage_warmup_epochs

    def state_dict(self) -> dict:
        return {"stage": self.stage} if self.opts.progressive else {}

    def load_state_dict(self, state: dict) -> None:
        self.stage = int(state.get("stage", 0))  # a search in one stage records none

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
        if self.opts.progressive:
            record["drnas_stage"] = self.stage + 1


def top_k_mask(alpha: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Per edge, the ``k`` valid ops of largest alpha (all of them on an edge with fewer)."""
    idx = alpha.masked_fill(~mask, float("-inf")).topk(min(k, alpha.shape[-1]), dim=-1).indices
    return torch.zeros_like(mask).scatter(-1, idx, True) & mask


def check_stages(cfg, o: DrNASOptions) -> None:
    """The config errors of the progressive search: one line naming the option."""
    SKELETONS[SPACES[cfg.space].skeleton].require("partial_channels", "method drnas with progressive: true")
    n = len(o.stages)
    if len(o.partial_channels) != n or len(o.keep_ops) != n - 1:
        raise ConfigError(f"method drnas: partial_channels needs one K per stage ({n}) and keep_ops one entry per "
                          f"later stage ({n - 1}); got {len(o.partial_channels)} and {len(o.keep_ops)}")
    if sum(o.stages) != cfg.optim.epochs or min(o.stages) < 1:
        raise ConfigError(f"method drnas: stages {o.stages} must be positive and sum to optim.epochs "
                          f"({cfg.optim.epochs})")
    ks, C = o.partial_channels, cfg.network.channels
    if ks[0] != cfg.network.partial_channels:
        raise ConfigError(f"method drnas: the first stage's partial_channels ({ks[0]}) must be "
                          f"network.partial_channels ({cfg.network.partial_channels}); set it to {ks[0]}")
    if any(k < 1 or C % k for k in ks) or any(b > a for a, b in zip(ks, ks[1:])):
        raise ConfigError(f"method drnas: partial_channels {ks} must divide network.channels ({C}) and not "
                          "grow from stage to stage (channels are only ever widened)")
    if any(k < 1 for k in o.keep_ops) or any(b > a for a, b in zip(o.keep_ops, o.keep_ops[1:])):
        raise ConfigError(f"method drnas: keep_ops {o.keep_ops} must be >= 1 and not grow from stage to stage")
