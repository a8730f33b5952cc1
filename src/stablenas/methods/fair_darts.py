"""FairDARTS (Chu et al., ECCV 2020): independent sigmoid op weights, a zero-one loss, threshold selection.

Sigmoid instead of softmax removes the exclusive competition between an edge's ops (``arch.activation:
sigmoid``, required). The zero-one loss pushes every op weight away from 0.5 towards 0 or 1, so that
reading the architecture off the weights loses little: ``weight * -mean((sigmoid(alpha) - 0.5)^2)``
over every valid op weight of every cell type, weight 10. That squared form is the authors' default
(``fairdarts/separate_loss.py`` ``ConvSeparateLoss``, ``--sep_loss l2`` in ``train_search.py``); the
paper's absolute form ``-mean|sigmoid(alpha) - 0.5|`` is their ``TriSeparateLoss``, ``loss: l1`` here.
The term is a function of alpha, on the alpha objective of every update rule (and the single-level
loss, as in their ``--single_level``).

Selection is the ``fair`` discretiser (``search.discretizer: fair``, threshold 0.85 from
``--op_threshold``), the authors' ``threshold_sparse`` parse (``fairdarts/utils.py``): per node the
skeleton's ``keep_per_node`` (DARTS: two) incoming edges whose strongest non-`none` op is strongest
(the DARTS edge rule), and on each its strongest op only if that weight reaches the threshold.
Fewer than two may pass; the authors' cell then has fewer inputs, and a node with none is left out of the output concat
(their ``DCOCell``). Here a genotype always lists two inputs per node, so a slot whose op falls short
takes the `none` op (it adds zero: the same cell) and nodes left with only `none` inputs leave the
concat (all nodes stay if none passes anywhere, so the cell keeps an output). Spaces whose edge lacks
`none` (S1, S2, S4) keep the strongest op there, as DARTS would. On NAS-Bench-201 every edge keeps its
strongest op (`none` included, the benchmark's rule) if it reaches the threshold, else `none`. Edge
betas (PC-DARTS) are not part of the rule: the threshold reads the sigmoid weights themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..registry import DISCRETIZERS, OPS, SKELETONS, SPACES
from .base import Method, MethodOptions, register_method

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..genotype import Genotype
    from ..skeletons.base import Skeleton
    from ..spaces.catalog import SearchSpace
    from ..supernet.arch import ArchParams
    from .context import SearchContext

class FairOptions(MethodOptions):
    # train_search.py --aux_loss_weight 10
    weight: float = Field(10.0, ge=0.0,
                          description="weight of the zero-one loss pushing each sigmoid op weight to 0 or 1")
    # --sep_loss l2 (ConvSeparateLoss) | l1 (TriSeparateLoss)
    loss: Literal["l2", "l1"] = Field("l2", description="zero-one loss: l2 (ConvSeparateLoss) or l1 (TriSeparateLoss)")
    # --op_threshold; configures search.discretizer: fair
    threshold: float = Field(0.85, gt=0.0, lt=1.0,
                             description="ops whose sigmoid weight exceeds it are kept (search.discretizer: fair)")


def zero_one_loss(arch: ArchParams, kind: str = "l2") -> torch.Tensor:
    """-mean((w - 0.5)^2) (``l2``) or -mean|w - 0.5| (``l1``) over the valid op weights of all cell types."""
    weights = arch.op_weights()
    d = torch.cat([w[arch.mask(ct)] for ct, w in weights.items()]) - 0.5
    return -(d * d).mean() if kind == "l2" else -d.abs().mean()


# ----------------------------------------------------------------------------------------------
# the threshold rule


def _cell(sk: Skeleton, space: SearchSpace, ct: str, W: torch.Tensor,
          threshold: float) -> tuple[list[list[tuple[int, int]]], tuple[int, ...]]:
    """Per node the kept (edge, op index) slots in rank order, and the nodes with a non-zero op."""
    zero_ok = sk.zero_is_choice(space)
    chosen, live = [], []
    for node in range(space.n_nodes):
        cand = []
        for e in space.node_edges(node):
            ops = space.edge_ops[ct][e]
            real = [k for k, op in enumerate(ops) if zero_ok or not OPS[op].is_zero] or list(range(len(ops)))
            k = max(real, key=lambda i: float(W[e, i]))  # first maximum on ties
            cand.append((float(W[e, k]), e, k))
        ranked = sorted(cand, key=lambda t: -t[0])[:sk.keep_per_node(space, node)]  # stable: earlier edge
        slots = []
        for w, e, k in ranked:
            zero = next((i for i, op in enumerate(space.edge_ops[ct][e]) if OPS[op].is_zero), None)
            slots.append((e, k if w >= threshold or zero is None else zero))
        chosen.append(slots)
        if any(not OPS[space.edge_ops[ct][e][k]].is_zero for e, k in slots):
            live.append(space.n_inputs + node)
    return chosen, tuple(live) or tuple(range(space.n_inputs, space.n_inputs + space.n_nodes))


def fair_genotype(space: SearchSpace, op_weights: Mapping[str, torch.Tensor], threshold: float = 0.85) -> Genotype:
    """The threshold rule on (sigmoid) op weights, shape (edges, max_ops) per cell type."""
    sk = SKELETONS[space.skeleton]
    sk.require("none_slots", "search.discretizer: fair", "use search.discretizer: default")
    W = {ct: w.detach().float().cpu() for ct, w in op_weights.items()}
    cells = {ct: _cell(sk, space, ct, W[ct], threshold) for ct in space.cell_types}
    return sk.genotype_of(space, {ct: c[0] for ct, c in cells.items()}, outputs={ct: c[1] for ct, c in cells.items()})


class FairDiscretizer:
    """``search.discretizer: fair``; the fair-darts method installs one with its own threshold."""

    def __init__(self, threshold: float = 0.85):
        self.threshold = threshold

    @torch.no_grad()
    def __call__(self, search: SearchContext) -> Genotype:
        return fair_genotype(search.space, search.arch.op_weights(), self.threshold)


DISCRETIZERS.register("fair", FairDiscretizer())


@register_method
class FairDARTS(Method):
    name = "fair-darts"
    paper = "Chu et al., ECCV 2020: 'Fair DARTS: Eliminating Unfair Advantages in Differentiable Architecture Search'"
    description = "FairDARTS: sigmoid op weights, zero-one loss (weight 10), threshold-0.85 selection"
    preset = "fair-darts"
    Options = FairOptions
    requires = {"arch.activation": "sigmoid"}

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        fair = cfg.search.discretizer == "fair"
        if "threshold" in options.model_fields_set and not fair:
            raise ConfigError(f"method fair-darts: threshold configures search.discretizer: fair (got "
                              f"{cfg.search.discretizer!r}); set search.discretizer: fair or drop threshold")
        if fair:
            SKELETONS[SPACES[cfg.space].skeleton].require("none_slots", "search.discretizer: fair",
                                                          "use search.discretizer: default")

    def setup(self, search: SearchContext) -> None:
        if search.cfg.search.discretizer == "fair":
            search.set_discretizer(FairDiscretizer(self.opts.threshold))

    def arch_penalty(self, search: SearchContext) -> torch.Tensor | None:
        return self.opts.weight * zero_one_loss(search.arch, self.opts.loss)

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        with torch.no_grad():
            record["fair_zero_one"] = float(zero_one_loss(search.arch, self.opts.loss))
            w = torch.cat([w[search.arch.mask(ct)] for ct, w in search.arch.op_weights().items()])
            record["fair_above_threshold"] = float((w >= self.opts.threshold).float().mean())
