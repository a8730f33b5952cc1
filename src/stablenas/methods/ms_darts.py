"""MS-DARTS (Hsieh et al. 2022, ms-darts.txt Alg. 1-2, eq. 11): mean-shift smoothing of the weight step.

Before each weight step, T times: sample N architectures A_p = proj(A_t + U[-eps, eps]) around the
current op weights A_t, weight each by omega_p (a function of its training loss: worse = heavier)
times the Gaussian kernel G(||(A_t - A_p) / h||^2) = exp(-||A_t - A_p||^2 / (2 h^2)), and move to
the weighted mean A_{t+1} = sum_p omega_p G_p A_p / sum_p omega_p G_p (eq. 11). The weights then
step at A_T (eq. 9); alpha is untouched (Alg. 2 step 6, the loop detaches).

Details from the public MS-DARTS code (``attacker/perturb_ms.py``, ``train_search_ms.py``) where the
paper is silent: the perturbation acts on the op weights after the softmax; the sample losses are
the training loss of the weight step's batch with BN in eval mode; omega = softmax over the N
losses; the kernel is computed per cell type (normal / reduce separately); eps ramps per epoch from
eps_max / 10 to eps_max = 0.25; h = 1, N = 3, T = 2 (the paper: "T = 2, 3 performs the best ...
N = 2, 3, 4"). One deliberate difference: that code averages the *unprojected* samples while
evaluating the projected ones; here the mean is over the architectures actually evaluated, so
A_t stays on the simplex (a convex combination of simplex points).

The N losses are computed in one batched forward (``torch.func.vmap`` over the op weights) when BN
is in eval mode; nothing is synchronised with the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from .. import distributed as dist
from ..supernet.mix import Mix
from ._common import (
    BNMode,
    Projection,
    RampedPerturbation,
    RampOptions,
    bn_mode,
    perturbed_loss,
    project,
    uniform_like,
)
from .base import Batch, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class MSOptions(RampOptions):
    # MS-DARTS code: epsilon_alpha / 10
    epsilon_min: float = Field(0.025, ge=0.0, description="sampling radius at the start of the ramp")
    # MS-DARTS code default --epsilon_alpha 0.25
    epsilon_max: float = Field(0.25, ge=0.0, description="sampling radius at the end of the ramp")
    # h; code default 1 (paper Table 4: h in 0.2..1.4)
    bandwidth: float = Field(1.0, gt=0.0, description="h: bandwidth of the Gaussian kernel")
    # N (paper: N = 2, 3, 4; code default 3)
    samples: int = Field(3, ge=1, description="N: architectures sampled per mean-shift iteration")
    # T (paper: T = 2, 3; code default 2)
    iterations: int = Field(2, ge=1, description="T: mean-shift iterations per weight step")
    # omega = softmax(losses) (code) or loss / sum
    weighting: Literal["softmax", "linear"] = Field(
        "softmax",
        description="omega of a sample from its loss: softmax over the N losses, or loss / sum")
    # per cell type (code) or all of A (eq. 11)
    kernel: Literal["cell_type", "joint"] = Field(
        "cell_type",
        description="kernel distance per cell type, or over all op weights at once (eq. 11)")
    bn_mode: BNMode = Field(
        "eval",
        description="BatchNorm for the sample losses: running statistics (eval) or batch ones (train)")
    # vmap the N sample losses (eval-mode BN only)
    batched: bool = Field(True, description="compute the N sample losses in one vmapped forward (eval-mode BN only)")
    projection: Projection = Field(
        "auto",
        description="back onto the op-weight domain: auto (simplex for softmax, box for sigmoid), simplex, box")


def mean_shift_step(center: dict[str, torch.Tensor], samples: dict[str, torch.Tensor], losses: torch.Tensor,
                    bandwidth: float, weighting: str = "softmax", kernel: str = "cell_type"
                    ) -> dict[str, torch.Tensor]:
    """One iteration of eq. 11. ``center[ct]``: (E, K); ``samples[ct]``: (N, E, K); ``losses``: (N,)."""
    omega = torch.softmax(losses, 0) if weighting == "softmax" else losses / losses.sum()
    d2 = {ct: ((samples[ct] - center[ct]) ** 2).flatten(1).sum(1) / bandwidth**2 for ct in center}
    if kernel == "joint":
        total = sum(d2.values())
        d2 = {ct: total for ct in center}
    out = {}
    for ct, s in samples.items():
        # a constant shift of the exponent cancels in the ratio and keeps exp() in range
        g = torch.exp(-0.5 * (d2[ct] - d2[ct].min()))
        w = omega * g
        out[ct] = (w.view(-1, *([1] * (s.dim() - 1))) * s).sum(0) / w.sum()
    return out


def sample_losses(search: SearchContext, x: torch.Tensor, y: torch.Tensor, samples: dict[str, torch.Tensor],
                  mix: Mix, mode: BNMode, batched: bool, memo: dict | None = None) -> torch.Tensor:
    """Training loss at each of the N sampled op weights, shape (N,). Batched: one vmapped forward;
    where vmap cannot run the supernet (some memory-format queries are not implemented under vmap)
    it falls back to N forwards, which give the same numbers. ``memo`` (the caller's, e.g. the
    method's own dict) remembers that fallback so it is not retried every step."""
    edge = None if mix.edge is None else {k: v.detach() for k, v in mix.edge.items()}
    n = next(iter(samples.values())).shape[0]
    with torch.no_grad():
        if batched and mode == "eval" and not (memo or {}).get("no_vmap"):
            from torch.func import vmap

            def one(w: dict[str, torch.Tensor]) -> torch.Tensor:
                return search.criterion(search.net(x, w, edge, mix.hard, **mix.net_kwargs()), y)

            with bn_mode(search.net, "eval"):
                try:
                    return vmap(one)(samples)
                except RuntimeError as e:
                    if "vmap" not in str(e):
                        raise
                    if memo is not None:
                        memo["no_vmap"] = True  # do not retry every step
        return torch.stack([perturbed_loss(search, x, y, mix.replace(op={ct: s[i] for ct, s in samples.items()},
                                                                     edge=edge), mode) for i in range(n)])


@register_method
class MSDARTS(RampedPerturbation):
    name = "ms-darts"
    paper = "Hsieh et al. 2022: 'MS-DARTS: Mean-Shift Based Differentiable Architecture Search'"
    description = "MS-DARTS: weight step at a loss-weighted Gaussian mean shift of sampled op weights"
    preset = "ms-darts"
    Options = MSOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._shift = None
        self._count = 0
        self._memo: dict = {}  # sample_losses: vmap cannot run this supernet

    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        super().on_epoch_start(search, epoch)
        self._shift, self._count = None, 0

    def shift(self, search: SearchContext, mix: Mix, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.opts
        x, y = batch
        a = {ct: w.detach() for ct, w in mix.op.items()}
        arch = search.arch
        for _ in range(o.iterations):
            stacked = {ct: w.unsqueeze(0).expand(o.samples, *w.shape) for ct, w in a.items()}
            delta = uniform_like(stacked, self.epsilon, arch)
            samples = project(arch, {ct: stacked[ct] + delta[ct] for ct in a}, o.projection)
            losses = sample_losses(search, x, y, samples, mix, o.bn_mode, o.batched, self._memo)
            (losses,) = dist.all_reduce_mean([losses])  # the job's sample losses: one shift on every rank
            a = mean_shift_step(a, samples, losses, o.bandwidth, o.weighting, o.kernel)
        return a

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        if phase != "weights" or batch is None:
            return mix
        self.step_epsilon(search)
        clean = {ct: w.detach() for ct, w in mix.op.items()}
        shifted = self.shift(search, mix, batch)
        with torch.no_grad():
            d = torch.stack([(shifted[ct] - clean[ct]).abs().max() for ct in clean]).max()
            self._shift = d if self._shift is None else self._shift + d
            self._count += 1
        return mix.replace(op={ct: mix.op[ct] + (shifted[ct] - clean[ct]) for ct in mix.op})

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        super().on_epoch_end(search, epoch, record)
        if self._shift is not None:
            record["mean_shift_linf"] = float(self._shift) / max(self._count, 1)

