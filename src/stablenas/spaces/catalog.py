"""Search spaces as data.

A space names the macro skeleton it uses (a registered :mod:`stablenas.skeletons` plug-in:
``darts`` stacked normal/reduction cells, the ``nb201`` three-stage network, ...), how many input
and intermediate nodes a cell has, and the candidate ops *of every edge* of every cell type.
Per-edge op sets are the general case; a uniform space is just one where every edge lists the
same ops. Spaces are looked up by name like timm's model registry: ``get_space("s3")``; new ones
are added with :func:`register_space`.

This module holds the ``SearchSpace`` type and the catalogue of built-in spaces (DARTS, NAS-Bench-201,
the S1-S4 spaces of RobustDARTS); the name -> space table itself is ``stablenas.registry.SPACES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

from ..registry import OPS, SKELETONS, SPACES
from .ops import DARTS_OPS, NB201_OPS


@dataclass(frozen=True)
class SearchSpace:
    name: str
    skeleton: str  # a registered skeleton (stablenas.skeletons): darts, nb201, or a plug-in's
    n_inputs: int  # cell inputs: 2 (c_{k-2}, c_{k-1}) for darts, 1 for nb201
    n_nodes: int  # intermediate nodes
    edge_ops: dict[str, tuple[tuple[str, ...], ...]]  # cell type -> per-edge candidate ops
    description: str = ""
    inputs_per_node: int = 2  # edges kept per node by the DARTS discretisation
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_edges = self.n_edges
        for cell_type, ops in self.edge_ops.items():
            if len(ops) != n_edges:
                raise ValueError(f"space {self.name!r}: cell {cell_type!r} lists {len(ops)} edges, "
                                 f"expected {n_edges}")
            for edge in ops:
                if not edge:
                    raise ValueError(f"space {self.name!r}: an edge of {cell_type!r} has no ops")
                for op in edge:
                    if op not in OPS:
                        raise ValueError(f"space {self.name!r}: unknown op {op!r}; "
                                         f"registered: {', '.join(sorted(OPS))}")

    @property
    def cell_types(self) -> tuple[str, ...]:
        return tuple(self.edge_ops)

    @property
    def n_edges(self) -> int:
        return sum(self.n_inputs + i for i in range(self.n_nodes))

    @property
    def edges(self) -> list[tuple[int, int]]:
        """(source node, target node) per edge; nodes 0..n_inputs-1 are the cell inputs."""
        return [(j, self.n_inputs + i) for i in range(self.n_nodes) for j in range(self.n_inputs + i)]

    def node_edges(self, node: int) -> range:
        """Indices of the edges entering intermediate node ``node`` (0-based)."""
        start = sum(self.n_inputs + i for i in range(node))
        return range(start, start + self.n_inputs + node)

    def max_ops(self) -> int:
        return max(len(e) for ops in self.edge_ops.values() for e in ops)

    def all_ops(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for ops in self.edge_ops.values():
            for e in ops:
                seen.update(dict.fromkeys(e))
        return tuple(seen)

    def is_uniform(self) -> bool:
        first = next(iter(self.edge_ops.values()))[0]
        return all(e == first for ops in self.edge_ops.values() for e in ops)

    def num_architectures(self) -> int:
        """Size of the discrete space under its skeleton's discretisation rule."""
        return SKELETONS[self.skeleton].num_architectures(self)


def register_space(space: SearchSpace) -> SearchSpace:
    """Add a space (a taken name is an error, like every registry)."""
    return SPACES.register(space)


def get_space(name: str) -> SearchSpace:
    return SPACES[name]


def list_spaces() -> list[SearchSpace]:
    return list(SPACES.values())


def _uniform(ops: tuple[str, ...], n_edges: int, cell_types=("normal", "reduce")):
    return {ct: tuple(tuple(ops) for _ in range(n_edges)) for ct in cell_types}


# --------------------------------------------------------------------------------------------
# built-in spaces

register_space(SearchSpace(
    "darts", "darts", 2, 4, _uniform(DARTS_OPS, 14),
    "DARTS CNN space: 8 ops, 2 input + 4 intermediate nodes, normal and reduction cells",
    source="Liu et al. 2019"))

# S1 (robust-darts App. B, Fig. 9): two ops per edge, different on every edge, as published in
# the RobustDARTS repository (edge order: node 0 <- {0,1}, node 1 <- {0,1,2}, ...).
_S1_NORMAL = (
    ("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "dil_conv_5x5"), ("skip_connect", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"),
    ("max_pool_3x3", "skip_connect"), ("skip_connect", "sep_conv_3x3"), ("skip_connect", "sep_conv_3x3"),
    ("skip_connect", "dil_conv_3x3"),
    ("skip_connect", "sep_conv_3x3"), ("max_pool_3x3", "skip_connect"), ("skip_connect", "dil_conv_3x3"),
    ("dil_conv_3x3", "dil_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5"),
)
_S1_REDUCE = (
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "dil_conv_3x3"),
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"),
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"),
    ("skip_connect", "dil_conv_5x5"),
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"),
)
register_space(SearchSpace(
    "s1", "darts", 2, 4, {"normal": _S1_NORMAL, "reduce": _S1_REDUCE},
    "RobustDARTS S1: a different pair of ops on every edge", source="Zela et al. 2020, App. B"))
register_space(SearchSpace(
    "s2", "darts", 2, 4, _uniform(("skip_connect", "sep_conv_3x3"), 14),
    "RobustDARTS S2: {sep_conv_3x3, skip_connect}", source="Zela et al. 2020, Sec. 3"))
register_space(SearchSpace(
    "s3", "darts", 2, 4, _uniform(("none", "skip_connect", "sep_conv_3x3"), 14),
    "RobustDARTS S3: {sep_conv_3x3, skip_connect, none}", source="Zela et al. 2020, Sec. 3"))
register_space(SearchSpace(
    "s4", "darts", 2, 4, _uniform(("noise", "sep_conv_3x3"), 14),
    "RobustDARTS S4: {sep_conv_3x3, noise}", source="Zela et al. 2020, Sec. 3"))
register_space(SearchSpace(
    "s5", "darts", 2, 1, _uniform(("sep_conv_3x3", "skip_connect", "max_pool_3x3"), 2),
    "RobustDARTS S5: 1 intermediate node, 3 ops, 81 architectures with known optimum",
    source="Zela et al. 2020, Sec. 3"))
register_space(SearchSpace(
    "idarts-s2", "darts", 2, 4,
    _uniform(("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"), 14),
    "iDARTS S2: {none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3}",
    source="Wang et al., iDARTS Sec. IV-C"))
register_space(SearchSpace(
    "idarts-s3", "darts", 2, 4, _uniform(("sep_conv_3x3", "skip_connect", "none"), 14),
    "iDARTS S3: {sep_conv_3x3, skip_connect, none}", source="Wang et al., iDARTS Sec. IV-C"))
register_space(SearchSpace(
    "nb201", "nb201", 1, 3, _uniform(NB201_OPS, 6, cell_types=("cell",)),
    "NAS-Bench-201 cell: 4 nodes, 6 edges, 5 ops, 15,625 architectures",
    inputs_per_node=0, source="Dong & Yang 2020"))

__all__ = ["SearchSpace", "SPACES", "get_space", "list_spaces", "register_space", "product"]
