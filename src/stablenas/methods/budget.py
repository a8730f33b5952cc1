"""A resource budget: a penalty on the expected multiply-adds, parameters or measured latency of the
derived network, differentiable through the op weights, so a search can run under "at most N M
multiply-adds".

Cost model. The network a genotype of this config trains in (``stablenas train``: the darts skeleton's
CIFAR network, the NAS-Bench-201 network) at the search's sizes (``network: search``: the config's
channels, cells, stem multiplier and image shape) or at an evaluation network's published sizes
(``network: cifar | imagenet | nb201``, those of ``stablenas info``). Its cost is a fixed part (stem,
cell preprocessing, reduction blocks, classifier: the network with every op `none`) plus each
chosen op, counted by ``networks.profile`` (``count_macs``, ``count_params``) on the op module at the
channel count, stride and feature map of its edge in every cell. With three or more cells the cells
are the supernet's own; with fewer the evaluation network reduces where the supernet does not, and
that network is the one counted.

Latency (``resource: latency``, in ms): the same tables, each entry timed instead of counted: the op
module (the fixed part: the all-`none` network) in eval mode without gradients on the run's device at
its edge's shape, ``latency_batch`` images, the median of ``latency_repeats`` forwards after one
warm-up. Latencies add up over the ops as in ProxylessNAS's latency model (Cai et al. 2019, Sec. 3.3).
They are measured once, at setup, on rank 0 (sent to every rank) and kept in the method state, so a
resumed search uses the tables it started with.

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

import statistics
import time
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from .. import distributed as dist
from ..errors import ConfigError
from ..networks.evaluation import build_eval_network
from ..networks.profile import DEFAULTS, count_macs, count_params
from ..registry import OPS, SKELETONS, SPACES
from ..skeletons.darts.networks import EvalCell
from ..skeletons.nb201.networks import NB201Cell
from ..spaces.ops import build_op
from .base import Method, MethodOptions, register_method

if TYPE_CHECKING:
    from ..spaces.catalog import SearchSpace
    from .context import SearchContext

Resource = Literal["madds", "params", "latency"]
LIMIT = {"madds": "max_madds", "params": "max_params", "latency": "max_latency"}


class BudgetOptions(MethodOptions):
    resource: Resource = Field(
        "madds", description="what the budget limits: expected multiply-adds, parameters or measured latency")
    max_madds: float | None = Field(None, gt=0.0, description="budget in millions of multiply-adds (resource: madds)")
    max_params: float | None = Field(None, gt=0.0, description="budget in millions of parameters (resource: params)")
    max_latency: float | None = Field(None, gt=0.0, description="budget in ms of forward time (resource: latency)")
    # no paper default: one image per forward, the median of 5 forwards after a warm-up
    latency_batch: int = Field(1, ge=1, description="images per timed forward (resource: latency)")
    latency_repeats: int = Field(5, ge=1, description="timed forwards per op, their median taken (resource: latency)")
    # no paper default: one unit of relative excess = one nat of loss
    weight: float = Field(1.0, ge=0.0, description="weight of the penalty relu(E[size] / max - 1) on the alpha loss")
    network: str = Field(
        "search", description="sizes counted: the search supernet's (search) or an evaluation network's (cifar, ...)")


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


def median_latency(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median wall time in ms of ``repeats`` forwards of ``module`` on ``x`` after one warm-up (eval
    mode, no gradients), the device synchronised around each."""
    module.eval()
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda *a: None)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            sync(x.device)
            t = time.perf_counter()
            module(x)
            sync(x.device)
            if i:
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def cost_tables(space: SearchSpace, network: str, sizes: dict, image: tuple[int, int, int], resource: str,
                device: torch.device | None = None, batch: int = 1, repeats: int = 5
                ) -> tuple[float, dict[str, torch.Tensor]]:
    """(fixed cost, per cell type a table (edges, max_ops) of each op's cost summed over the cells of
    that type), in millions (latency: in ms, timed on ``device``). Leaves the global RNG as it was
    (module construction and the timed inputs draw from it)."""
    if resource == "latency":
        def count(m, shape):
            return median_latency(m.to(device), torch.randn(batch, *shape, device=device), repeats)
    elif resource == "madds":
        def count(m, shape):
            return count_macs(m, shape)
    else:
        def count(m, shape):
            return count_params(m)
    with torch.random.fork_rng(devices=[] if device is None or device.type == "cpu" else [device]):
        net = build_eval_network(SKELETONS[space.skeleton].zero_genotype(space), network, **sizes,
                                 in_channels=image[0], auxiliary=False)
        shapes = _cell_shapes(net, image)
        fixed = count(net, image)
        tables = {ct: torch.zeros(space.n_edges, space.max_ops(), dtype=torch.float64) for ct in space.cell_types}
        memo: dict[tuple, float] = {}
        for ct, reduction, C, hw_in, hw_out in shapes:
            for e, (src, _dst) in enumerate(space.edges):
                stride = 2 if reduction and src < space.n_inputs else 1
                hw = hw_in if src < space.n_inputs else hw_out
                for k, op in enumerate(space.edge_ops[ct][e]):
                    key = (op, C, stride, hw)
                    if key not in memo:
                        memo[key] = count(build_op(op, C, stride, True), (C, *hw))
                    tables[ct][e, k] += memo[key]
    unit = 1.0 if resource == "latency" else 1e-6
    return fixed * unit, {ct: t * unit for ct, t in tables.items()}


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
    description = ("resource budget: weight * relu(E[madds, params or latency] / max - 1) on the alpha loss "
                   "(max in millions or ms)")
    Options = BudgetOptions

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        skeleton = SKELETONS[SPACES[cfg.space].skeleton]
        skeleton.require("op_costs", "method budget (it counts each op's cost in the evaluation network)")
        allowed = ("search", *skeleton.eval_networks)
        if options.network not in allowed:
            raise ConfigError(f"method budget: network {options.network!r} is not one of {', '.join(allowed)}")
        want = LIMIT[options.resource]
        unit = "ms" if options.resource == "latency" else "millions"
        if getattr(options, want) is None:
            raise ConfigError(f"method budget with resource: {options.resource} needs {want} (in {unit})")
        for other in LIMIT.values():
            if other != want and getattr(options, other) is not None:
                raise ConfigError(f"method budget with resource: {options.resource} takes {want}, not {other}")

    def setup(self, search: SearchContext) -> None:
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
        fixed, tables = cost_tables(space, network, sizes, image, o.resource, search.device, o.latency_batch,
                                    o.latency_repeats)
        if o.resource == "latency":  # one measurement for all ranks: rank 0's
            sent = [torch.tensor([fixed], dtype=torch.float64, device=search.device),
                    *[t.to(search.device) for t in tables.values()]]
            dist.broadcast_(sent)
            fixed, tables = float(sent[0]), {ct: t.cpu() for ct, t in zip(tables, sent[1:])}
        self.space, self.device = space, search.device
        self.load_tables(fixed, tables)
        self.limit = getattr(o, LIMIT[o.resource])
        if fixed >= self.limit:
            search.log(f"budget: the fixed part of the network alone costs {fixed:.3f} {self.unit} {o.resource}, at "
                       f"or above the budget of {self.limit} {self.unit}; the penalty can only shrink the ops "
                       "towards it")

    @property
    def unit(self) -> str:
        return "ms" if self.opts.resource == "latency" else "M"

    def load_tables(self, fixed: float, tables: dict[str, torch.Tensor]) -> None:
        self.fixed, self.tables = fixed, tables
        self.costs = CostModel(self.space, fixed, tables, self.device)

    def expected(self, search: SearchContext) -> torch.Tensor:
        return self.costs.expected(search.arch.op_weights())

    def arch_penalty(self, search: SearchContext) -> torch.Tensor | None:
        return self.opts.weight * torch.relu(self.expected(search) / self.limit - 1.0)

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        with torch.no_grad():
            record[f"budget_expected_{self.opts.resource}_{self.unit}"] = float(self.expected(search))
        record[f"budget_max_{self.opts.resource}_{self.unit}"] = self.limit

    def state_dict(self) -> dict:
        # measured latencies differ run to run: a resumed search keeps the ones it started with
        if self.opts.resource != "latency":
            return {}
        return {"fixed": self.fixed, "tables": {ct: t.clone() for ct, t in self.tables.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.load_tables(state["fixed"], state["tables"])
