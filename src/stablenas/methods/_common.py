"""Small pieces the method hooks share: schedules, projections back onto the op-weight domain,
forwards with a chosen batch-norm mode, uniform discrete architectures and the Gumbel-softmax
sampler of GDAS and SNAS.

Kept here (not in the loop) because they are method semantics: SDARTS/MS-DARTS perturb op
weights *after* the activation and must land back where the activation lands (the simplex for
softmax and the Dirichlet mean, the box [0, 1] for sigmoid); the public SDARTS / MS-DARTS code
evaluates perturbed losses with batch norm in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..genotype import Genotype
from ..registry import SKELETONS
from ..supernet.mix import Mix
from .base import Method, MethodOptions

if TYPE_CHECKING:
    from ..supernet.arch import ArchParams
    from .context import SearchContext

OpWeights = dict[str, torch.Tensor]
Ramp = Literal["epoch", "step", "off"]
Projection = Literal["auto", "simplex", "box"]
BNMode = Literal["eval", "train"]


def linear_ramp(start: float, end: float, search: SearchContext, ramp: Ramp) -> float:
    """``start -> end`` linearly over the search. ``epoch``: constant within an epoch,
    ``start + (end - start) * epoch / epochs`` (the SmoothDARTS / MS-DARTS code); ``step``: the same
    line evaluated at every step; ``off``: always ``end``. ``epochs`` is ``search.schedule_epochs``;
    past it (DARTS-PT's selection phase) the ramp stays at ``end``."""
    if ramp == "off":
        return end
    done = search.epoch if ramp == "epoch" else search.epochs_done
    return start + (end - start) * min(done / search.schedule_epochs, 1.0)


class RampOptions(MethodOptions):
    """The perturbation radius of the weight step: ``epsilon_min -> epsilon_max`` (``linear_ramp``)."""

    # sdarts.txt Sec. 5.1
    epsilon_min: float = Field(0.03, ge=0.0, description="perturbation radius at the start of the ramp")
    epsilon_max: float = Field(0.3, ge=0.0, description="radius at the end of the ramp")
    # epoch: eps_e = min + (max - min) * e / epochs; step: per step; off: epsilon_max
    ramp: Ramp = Field("epoch", description="radius ramp: per epoch, per step, or off (epsilon_max throughout)")

    @field_validator("ramp", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        # YAML 1.1 (PyYAML) reads a bare ``off`` as False: ``ramp: off`` must still mean "off"
        return "off" if v is False else v

    @model_validator(mode="after")
    def _growing(self) -> RampOptions:
        if self.epsilon_min > self.epsilon_max:  # the radius grows over the search (sdarts.txt Sec. 5.1)
            raise ValueError(f"epsilon_min ({self.epsilon_min}) exceeds epsilon_max ({self.epsilon_max}): the "
                             "radius grows from epsilon_min to epsilon_max")
        return self


class RampedPerturbation(Method):
    """Base of the methods that move the weight step's op weights within a radius eps growing over the
    search (SDARTS-RS/ADV, MS-DARTS): one place for the schedule and its per-epoch record."""

    Options = RampOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.epsilon = self.opts.epsilon_min

    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        self.epsilon = linear_ramp(self.opts.epsilon_min, self.opts.epsilon_max, search, self.opts.ramp)

    def step_epsilon(self, search: SearchContext) -> float:
        """eps for this weight step (changes within an epoch only with ``ramp: step``)."""
        if self.opts.ramp == "step":
            self.epsilon = linear_ramp(self.opts.epsilon_min, self.opts.epsilon_max, search, "step")
        return self.epsilon

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        record["epsilon"] = self.epsilon


def projection_mode(arch: ArchParams, mode: Projection) -> str:
    """``auto``: the simplex for an activation declared simplex-valued (softmax, the Dirichlet mean),
    else the box [0, 1] (``supernet.arch.register_activation``)."""
    if mode != "auto":
        return mode
    return "simplex" if arch.simplex else "box"


def project(arch: ArchParams, weights: OpWeights, mode: Projection = "auto") -> OpWeights:
    """Back onto the activation's range after a perturbation.

    ``simplex``: clip to [0, 1] and renormalise per edge over the valid ops (``ArchParams.project``,
    the SDARTS ``clip``); an edge clipped to all zeros gets weight 1 on its largest perturbed entry,
    as SmoothDARTS does, so no edge silently vanishes. ``box``: clip to [0, 1] (independent
    sigmoid weights have no sum constraint)."""
    mode = projection_mode(arch, mode)
    if mode == "box":
        return {ct: w.clamp(0.0, 1.0) * arch.mask(ct) for ct, w in weights.items()}
    out = arch.project(weights)
    for ct, w in weights.items():
        m = arch.mask(ct)
        dead = (w.clamp(0.0, 1.0) * m).sum(-1, keepdim=True) <= 0
        best = w.masked_fill(~m, float("-inf")).argmax(-1, keepdim=True)
        onehot = torch.zeros_like(w).scatter_(-1, best, 1.0)
        out[ct] = torch.where(dead, onehot, out[ct])
    return out


def uniform_like(weights: OpWeights, eps: float | torch.Tensor, arch: ArchParams,
                 generator: torch.Generator | None = None) -> OpWeights:
    """delta ~ U[-eps, eps] on the valid entries (padding stays 0)."""
    out = {}
    for ct, w in weights.items():
        u = torch.rand_like(w) if generator is None else \
            torch.rand(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        out[ct] = (2.0 * u - 1.0) * eps * arch.mask(ct)
    return out


@contextmanager
def bn_mode(net: torch.nn.Module, mode: BNMode) -> Iterator[None]:
    """Temporarily switch the supernet to eval mode (BN running statistics, no drop path)."""
    was = net.training
    if mode == "eval":
        net.eval()
    try:
        yield
    finally:
        net.train(was)


def perturbed_loss(search: SearchContext, x: torch.Tensor, y: torch.Tensor, mix: Mix, mode: BNMode) -> torch.Tensor:
    """Training loss at perturbed op weights without touching BN running statistics: in ``eval``
    mode they are read, in ``train`` mode batch statistics are used and the running buffers go to
    throw-away copies (``Search.forward`` with ``params``)."""
    if mode == "eval":
        with bn_mode(search.net, "eval"):
            return search.loss(x, y, mix)
    return search.loss(x, y, mix, dict(search.net.named_parameters()))


# ----------------------------------------------------------------------------------------------
# discrete architectures as a Mix (RS-ws sampling, GDAS argmax evaluation)


def sample_architecture(space, generator: torch.Generator | None = None) -> dict[str, list[int]]:
    """A uniformly random discrete architecture under the space's rule, as an op index per edge
    (-1 = edge not kept); the skeleton's sampler (DARTS: per node ``inputs_per_node`` distinct
    incoming edges, a non-`none` op on each, Li & Talwalkar's sampler; NB201: an op, `none`
    included, on every edge)."""
    return SKELETONS[space.skeleton].sample(space, generator)


def discrete_mix(arch: ArchParams, hard: dict[str, list[int]], device: torch.device) -> Mix:
    """One-hot op weights and hard choices for a discrete architecture (no edge weights: a
    discrete cell sums its kept edges)."""
    op = {}
    for ct, choice in hard.items():
        w = torch.zeros(arch.alphas[ct].shape)
        rows = [e for e, k in enumerate(choice) if k >= 0]
        if rows:
            w[rows, [choice[e] for e in rows]] = 1.0
        if device.type == "cuda":  # pinned + non_blocking: no wait for the queued GPU work
            w = w.pin_memory().to(device, non_blocking=True)
        op[ct] = w.to(device)
    return Mix(op, None, {ct: list(v) for ct, v in hard.items()})


def genotype_of(space, hard: dict[str, list[int]]) -> Genotype:
    """The genotype of an op-index-per-edge architecture (-1 = edge not kept)."""
    return SKELETONS[space.skeleton].genotype_of(space, hard)


def argmax_mix(arch: ArchParams, mix: Mix) -> Mix:
    """A discrete forward on the largest op weight of every edge (one-hot weights, only that op runs):
    the GDAS / SNAS ``eval: argmax`` validation passes."""
    choice = {ct: w.detach().masked_fill(~arch.mask(ct), float("-inf")).argmax(-1) for ct, w in mix.op.items()}
    op = {ct: torch.zeros_like(w).scatter_(-1, choice[ct].unsqueeze(-1), 1.0) for ct, w in mix.op.items()}
    return mix.replace(op=op, hard={ct: c.tolist() for ct, c in choice.items()})


# ----------------------------------------------------------------------------------------------
# Gumbel-softmax samples of op weights (GDAS: hard, straight-through; SNAS: soft)


def gumbel_softmax(weights: OpWeights, masks: dict[str, torch.Tensor], tau: float, *, hard: bool,
                   generator: torch.Generator | None = None) -> tuple[OpWeights, dict[str, torch.Tensor]]:
    """One Gumbel-softmax sample per edge, h = softmax((log p + g) / tau) over its valid ops, with p
    the op weights normalised per edge (softmax's already sum to 1, sigmoid's do not) and
    g ~ Gumbel(0, 1) (Jang et al. 2017, eq. 1; Maddison et al. 2017). Returns the mixing weights and
    argmax h per edge, a draw from p at any tau (the Gumbel-max trick). ``hard``: the straight-through
    one_hot(argmax h) - h.detach() + h (GDAS); else h itself, SNAS's relaxed sample (every op runs)."""
    op, idx = {}, {}
    for ct, w in weights.items():
        p = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
        logp = torch.log(p.clamp_min(1e-30))
        u = torch.rand(w.shape, generator=generator, dtype=w.dtype).to(w.device) if generator is not None \
            else torch.rand_like(w)
        g = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
        h = torch.softmax(((logp + g) / tau).masked_fill(~masks[ct], float("-inf")), dim=-1)
        i = h.detach().argmax(-1)
        if hard:
            h = torch.zeros_like(h).scatter_(-1, i.unsqueeze(-1), 1.0) - h.detach() + h
        op[ct], idx[ct] = h, i
    return op, idx
