"""A resource budget: a penalty on the expected multiply-adds (or parameters) of the derived network,
differentiable through the op weights, so a search can run under "at most N M multiply-adds".

Cost model. The network a genotype of this config trains in (``stablenas train``: the darts skeleton's
CIFAR network, the NAS-Bench-201 network) at the search's sizes (``network: search``: the config's
channels, cells, stem multiplier and image shape) or at an evaluation network's published sizes
(``network: cifar | imagenet | nb201``, those of ``stablenas info``). Its cost is a fixed part (stem,
cell preprocessing, reduction blocks, classifier: the network with every op `none`) plus each
chosen op, counted by ``networks.profile`` (``count_macs``, ``count_params``) on the op module at the
channel count, stride and feature map of its edge in every cell. With three or more cells the cells
are the supernet's own; with fewer the evaluation network reduces where the supernet does not, and
that network is the one counted.

Expected cost. Per choice the derived cell makes, the op weights' expectation of its cost
(ProxylessNAS, Cai et al. 2019, Sec. 3.3: E[latency] = sum_j p_j F(o_j)): where the skeleton keeps
every edge (NAS-Bench-201) each edge keeps one op, E = sum_k w_k c_k / sum_k w_k; else each node keeps
the skeleton's ``keep_per_node`` edges (``inputs_per_node``, DARTS) with a non-`none` op, E =
keep_per_node * sum_(e,k) w_ek c_ek / sum_(e, k non-none) w_ek over the node's edges. For one-hot
weights of a derived cell (the kept edges' ops at 1, all else 0) that is exactly the derived
network's count; the normalisation also makes sigmoid weights (which do not sum to 1) usable.

Penalty. ``weight * relu(E / budget - 1)``: zero under the budget (the search is left as it is) and
linear in the relative excess above it. A log-barrier -log(1 - E / budget) would need a feasible start,
and uniform op weights mixing the convolutions usually exceed a tight budget, where the barrier is
undefined. Edge betas (PC-DARTS) are not part of the expectation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..networks.evaluation import EvalCell, NB201Cell, build_eval_network
from ..networks.profile import DEFAULTS, count_macs, count_params
from ..registry import OPS, SKELETONS, SPACES
from ..spaces.ops import build_op
from .base import Method, MethodOptions, register_method

if TYPE_CHECKING:
    from ..search.loop import Search
    from ..spaces.registry import SearchSpace

class BudgetOptions(MethodOptions):
    resource: Literal["madds", "params"] = "madds"
    max_madds: float | None = Field(None, gt=0.0)  # millions of multiply-adds (resource: madds)
    max_params: float | None = Field(None, gt=0.0)  # millions of parameters (resource: params)
    weight: float = Field(1.0, ge=0.0)  # no paper default: one unit of relative excess = one nat of loss
    network: str = "search"  # the sizes counted: the search's, or an evaluation network's (cifar, ...)


def _cell_shapes(net: torch.nn.Module, image: tuple[int, int, int]) -> list[tuple[str, bool, int, tuple, tuple]]:
    """Per cell, in order: (cell type, reduction, C, input (H, W), output (H, W)), from one forward."""
    shapes, handles = [], []

    def hook(mod, args, out):
        if isinstance(mod, EvalCell):
            shapes.append((mod.cell_type, mod.reduction, out.shape[1] // mod.multiplier, tuple(args[1].shape[-2:]),
                           tuple(out.shape[-2:])))
        else:
            shapes.append(("cell", False, args[0].shape[1], tuple(args[0].shape[-2:]), tuple(out.shape[-2:])))

    for m in net.modules():
        if isinstance(m, (EvalCell, NB201Cell)):
            handles.append(m.register_forward_hook(hook))
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *image))
    finally:
        for h in handles:
            h.remove()
    return shapes


def cost_tables(space: SearchSpace, network: str, sizes: dict, image: tuple[int, int, int],
                resource: str) -> tuple[float, dict[str, torch.Tensor]]:
    """(fixed cost, per cell type a table (edges, max_ops) of each op's cost summed over the cells of
    that type), in millions. Leaves the global RNG as it was (module construction draws from it)."""
    count = (lambda m, shape: count_macs(m, shape)) if resource == "madds" else (lambda m, shape: count_params(m))
    with torch.random.fork_rng(devices=[]):
        net = build_eval_network(SKELETONS[space.skeleton].zero_genotype(space), network, **sizes,
                                 in_channels=image[0], auxiliary=False)
        fixed = count(net, image)
        tables = {ct: torch.zeros(space.n_edges, space.max_ops(), dtype=torch.float64) for ct in space.cell_types}
        memo: dict[tuple, int] = {}
        for ct, reduction, C, hw_in, hw_out in _cell_shapes(net, image):
            for e, (src, _dst) in enumerate(space.edges):
                stride = 2 if reduction and src < space.n_inputs else 1
                hw = hw_in if src < space.n_inputs else hw_out
                for k, op in enumerate(space.edge_ops[ct][e]):
                    key = (op, C, stride, hw)
                    if key not in memo:
                        memo[key] = count(build_op(op, C, stride, True), (C, *hw))
                    tables[ct][e, k] += memo[key]
    return fixed / 1e6, {ct: t / 1e6 for ct, t in tables.items()}


class CostModel:
    """E[cost] of the derived network under given op weights (module docstring), in millions."""

    def __init__(self, space: SearchSpace, fixed: float, tables: dict[str, torch.Tensor], device: torch.device):
        self.fixed = fixed
        self.tables = {ct: t.float().to(device) for ct, t in tables.items()}
        sk = SKELETONS[space.skeleton]
        if sk.keeps_every_edge:  # one group per edge, one pick
            groups = torch.eye(space.n_edges)
            picks = torch.ones(space.n_edges)
        else:  # one group per node: its incoming edges, keep_per_node picks
            groups = torch.zeros(space.n_nodes, space.n_edges)
            for i in range(space.n_nodes):
                groups[i, list(space.node_edges(i))] = 1.0
            picks = torch.tensor([float(sk.keep_per_node(space, i)) for i in range(space.n_nodes)])
        zero_ok = sk.zero_is_choice(space)  # else the picks are among the non-`none` ops
        self.eligible = {ct: self._valid(space, ct, lambda op: zero_ok or not OPS[op].is_zero)
                         for ct in space.cell_types}
        self.groups, self.picks = groups.to(device), picks.to(device)
        self.eligible = {ct: m.to(device) for ct, m in self.eligible.items()}

    @staticmethod
    def _valid(space: SearchSpace, ct: str, keep) -> torch.Tensor:
        m = torch.zeros(space.n_edges, space.max_ops())
        for e, ops in enumerate(space.edge_ops[ct]):
            for k, op in enumerate(ops):
                m[e, k] = float(keep(op))
        return m

    def expected(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=self.groups.device)
        for ct, w in weights.items():
            num = self.groups @ (w * self.tables[ct]).sum(-1)
            den = (self.groups @ (w * self.eligible[ct]).sum(-1)).clamp_min(1e-12)
            total = total + (self.picks * num / den).sum()
        return total + self.fixed


@register_method
class Budget(Method):
    name = "budget"
    description = "resource budget: weight * relu(E[madds or params] / max - 1) on the alpha loss (max in millions)"
    Options = BudgetOptions

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        skeleton = SKELETONS[SPACES[cfg.space].skeleton]
        skeleton.require("op_costs", "method budget (it counts each op's cost in the evaluation network)")
        allowed = ("search", *skeleton.eval_networks)
        if options.network not in allowed:
            raise ConfigError(f"method budget: network {options.network!r} is not one of {', '.join(allowed)}")
        want, other = ("max_madds", "max_params") if options.resource == "madds" else ("max_params", "max_madds")
        if getattr(options, want) is None:
            raise ConfigError(f"method budget with resource: {options.resource} needs {want} (in millions)")
        if getattr(options, other) is not None:
            raise ConfigError(f"method budget with resource: {options.resource} takes {want}, not {other}")

    def setup(self, search: Search) -> None:
        o, space = self.opts, search.space
        if o.network == "search":
            n = search.cfg.network
            sizes = {"C": n.channels, "layers": n.layers, "num_classes": search.data.num_classes,
                     "stem_multiplier": n.stem_multiplier}
            image = tuple(search.dataset.shape)
            network = search.skeleton.eval_networks[0]
        else:
            d = DEFAULTS[o.network]
            sizes = {"C": d["C"], "layers": d["layers"], "num_classes": d["num_classes"]}
            image, network = tuple(d["input_size"]), o.network
        fixed, tables = cost_tables(space, network, sizes, image, o.resource)
        self.costs = CostModel(space, fixed, tables, search.device)
        self.limit = o.max_madds if o.resource == "madds" else o.max_params
        if fixed >= self.limit:
            search.log(f"budget: the fixed part of the network alone costs {fixed:.3f} M {o.resource}, at or above "
                       f"the budget of {self.limit} M; the penalty can only shrink the ops towards it")

    def expected(self, search: Search) -> torch.Tensor:
        return self.costs.expected(search.arch.op_weights())

    def arch_penalty(self, search: Search) -> torch.Tensor | None:
        return self.opts.weight * torch.relu(self.expected(search) / self.limit - 1.0)

    def on_epoch_end(self, search: Search, epoch: int, record: dict) -> None:
        with torch.no_grad():
            record[f"budget_expected_{self.opts.resource}_M"] = float(self.expected(search))
        record[f"budget_max_{self.opts.resource}_M"] = self.limit
