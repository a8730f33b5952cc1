"""The DARTS skeleton: a stem, stacked normal and reduction cells (reductions at 1/3 and 2/3 of
the depth), global pooling and a classifier (Liu et al. 2019, Sec. 2.1 and 3.1).

A cell has two inputs (c_{k-2}, c_{k-1}) and ``n_nodes`` intermediate nodes; a genotype keeps
``inputs_per_node`` edges per node (two in DARTS) with one non-`none` op each, lists them as
``[op, input]`` pairs two per node and concatenates the intermediate nodes into the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import TYPE_CHECKING, Any

import torch

from ...genotype import Genotype, GenotypeError
from ...registry import OPS
from ..base import CellGraph, Skeleton, register_skeleton
from .genotype import derive_darts, looks_like_darts_python, parse_darts_python

if TYPE_CHECKING:
    from torch import nn

    from ...spaces.catalog import SearchSpace

_KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")


def _check_genotype_dict(d: Mapping) -> None:
    """Types that the structural checks take for granted, each failure one line naming the key: a
    registered space; cell lists of ``[op, int input]`` pairs (not null, no ``"x"`` index);
    concat lists of ints."""
    from ...registry import SPACES

    space = d.get("space", "darts")
    if not isinstance(space, str) or space not in SPACES:
        raise GenotypeError(f"genotype space: unknown {space!r}; available: {', '.join(SPACES)}")
    if "arch" in d:
        return
    for ct in ("normal", "reduce"):
        if ct not in d:
            continue  # reported with the other missing keys
        pairs = d[ct]
        if not isinstance(pairs, list):
            raise GenotypeError(f"genotype {ct}: expected a list of [op, input] pairs, got "
                                f"{'null' if pairs is None else type(pairs).__name__}")
        for k, item in enumerate(pairs):
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise GenotypeError(f"genotype {ct}[{k}]: each entry must be [op, input], got {item!r}")
            op, inp = item
            if isinstance(inp, bool) or not isinstance(inp, int):
                raise GenotypeError(f"genotype {ct}[{k}]: input {inp!r} is not an integer node index")
        key = f"{ct}_concat"
        if key in d and (not isinstance(d[key], list)
                         or any(isinstance(i, bool) or not isinstance(i, int) for i in d[key])):
            raise GenotypeError(f"genotype {key}: expected a list of integer node indices, got {d[key]!r}")


def _check_genotype_space(g: Genotype) -> None:
    """After the structural checks: non-empty concat lists inside the cell, every op in the space."""
    from ...registry import SPACES

    sp = SPACES[g.space]
    for ct in ("normal", "reduce"):
        pairs, concat = g.cell(ct), g.concat(ct)
        key = f"{ct}_concat"
        if not concat:
            raise GenotypeError(f"genotype {key}: empty; list the nodes whose outputs form the cell, e.g. [2, 3]")
        n_nodes = 2 + len(pairs) // 2
        out = [i for i in concat if not 2 <= i < n_nodes]
        if out:
            raise GenotypeError(f"genotype {key}: node {out[0]} outside the cell's intermediate nodes "
                                f"2..{n_nodes - 1}")
        if ct in sp.edge_ops:
            allowed = {op for edge in sp.edge_ops[ct] for op in edge}
            for k, (op, _) in enumerate(pairs):
                if op not in allowed:
                    raise GenotypeError(f"genotype {ct}[{k}]: op {op!r} is not in space {g.space!r} "
                                        f"(its ops: {', '.join(sorted(allowed))})")



@register_skeleton
class DartsSkeleton(Skeleton):
    name = "darts"
    description = "stacked normal/reduction cells with two inputs each (DARTS CNN)"
    capabilities = frozenset({"partial_channels", "node_norm", "edge_betas", "aux_skip", "reduction_cells",
                              "data_parallel", "op_modules", "several_cells", "op_costs", "none_slots",
                              "perturbation_selection"})
    eval_networks = ("cifar", "imagenet")

    def check_space(self, space: SearchSpace) -> None:
        if set(space.cell_types) != {"normal", "reduce"}:
            raise ValueError(f"space {space.name!r}: the darts skeleton needs cell types normal and reduce, "
                             f"got {', '.join(space.cell_types)}")

    def num_architectures(self, space: SearchSpace) -> int:
        total = 1
        for ops in space.edge_ops.values():
            for node in range(space.n_nodes):
                edges = list(space.node_edges(node))
                count = 0
                for combo in combinations(edges, min(space.inputs_per_node, len(edges))):
                    c = 1
                    for e in combo:
                        c *= len([o for o in ops[e] if o != "none"])
                    count += c
                total *= count
        return total

    # -- supernet --------------------------------------------------------------------------------
    def build_supernet(self, space: SearchSpace, *, C: int = 16, layers: int = 8, num_classes: int = 10,
                       in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1,
                       node_norm: bool = False, aux_skip: bool = False) -> nn.Module:
        from .supernet import SearchNetwork

        return SearchNetwork(space, C=C, layers=layers, num_classes=num_classes, in_channels=in_channels,
                             stem_multiplier=stem_multiplier, partial_k=partial_k, node_norm=node_norm,
                             aux_skip=aux_skip)

    def build_reference(self, space: SearchSpace, *, C: int = 16, layers: int = 8, num_classes: int = 10,
                        in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1,
                        node_norm: bool = False, aux_skip: bool = False) -> nn.Module:
        from .reference import PlainNetwork

        return PlainNetwork(space, C, layers, num_classes, in_channels, stem_multiplier, partial_k, node_norm, aux_skip)

    # -- genotypes -------------------------------------------------------------------------------
    def owns(self, genotype: Genotype) -> bool:
        return genotype.arch is None

    def claims(self, d: Mapping) -> bool:
        return any(k in d for k in _KEYS)

    def parse_genotype_text(self, text: str, space: str) -> dict | None:
        """The DARTS repositories' Python form ``Genotype(normal=[...], normal_concat=..., ...)``."""
        return parse_darts_python(text, space) if looks_like_darts_python(text) else None

    def genotype_from_dict(self, d: Mapping) -> Genotype:
        _check_genotype_dict(d)
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise GenotypeError(f"genotype is missing {missing}; expected keys: space, {', '.join(_KEYS)} "
                                "(or space, arch for nb201)")
        unknown = set(d) - {"space", *_KEYS}
        if unknown:
            raise GenotypeError(f"unknown genotype keys {sorted(unknown)}; allowed: space, {', '.join(_KEYS)}")

        def pairs(key: str) -> tuple[tuple[str, int], ...]:
            out = []
            for item in d[key]:
                if not (isinstance(item, (list, tuple)) and len(item) == 2):
                    raise GenotypeError(f"{key}: each entry must be [op, input], got {item!r}")
                op, inp = item
                if op not in OPS:
                    raise GenotypeError(f"{key}: unknown op {op!r}; registered: {', '.join(OPS.list())}")
                out.append((str(op), int(inp)))
            return tuple(out)

        g = Genotype(space=d.get("space", "darts"), normal=pairs("normal"),
                     normal_concat=tuple(int(i) for i in d["normal_concat"]), reduce=pairs("reduce"),
                     reduce_concat=tuple(int(i) for i in d["reduce_concat"]))
        self.validate_genotype(g)
        _check_genotype_space(g)
        return g

    def validate_genotype(self, genotype: Genotype) -> None:
        """Every node has its inputs from earlier nodes only."""
        for ct in ("normal", "reduce"):
            pairs = self.cell_pairs(genotype, ct)
            if len(pairs) % 2:
                raise GenotypeError(f"{ct}: expected two [op, input] pairs per node, got {len(pairs)} entries")
            for k, (_, inp) in enumerate(pairs):
                node = 2 + k // 2
                if not 0 <= inp < node:
                    raise GenotypeError(f"{ct}: entry {k} feeds node {node} from {inp}; "
                                        f"allowed inputs are 0..{node - 1}")

    def genotype_to_dict(self, genotype: Genotype) -> dict:
        return {
            "space": genotype.space,
            "normal": [[op, i] for op, i in genotype.normal],
            "normal_concat": list(genotype.normal_concat),
            "reduce": [[op, i] for op, i in genotype.reduce],
            "reduce_concat": list(genotype.reduce_concat),
        }

    def genotype_str(self, genotype: Genotype) -> str:
        n = " ".join(f"{op}<-{i}" for op, i in genotype.normal)
        r = " ".join(f"{op}<-{i}" for op, i in genotype.reduce)
        return f"normal: {n} | reduce: {r}"

    def cell_types(self, genotype: Genotype) -> list[str]:
        return ["normal", "reduce"]

    def cell_pairs(self, genotype: Genotype, cell_type: str) -> tuple[tuple[str, int], ...]:
        return {"normal": genotype.normal, "reduce": genotype.reduce}[cell_type]

    def cell_graph(self, genotype: Genotype, cell_type: str) -> CellGraph:
        pairs = self.cell_pairs(genotype, cell_type)
        n_nodes = len(pairs) // 2
        nodes = tuple(tuple((src, op) for op, src in pairs[2 * i:2 * i + 2]) for i in range(n_nodes))
        concat = tuple(genotype.concat(cell_type)) or tuple(range(2, 2 + n_nodes))
        return CellGraph(2, nodes, concat, concat=True, input_names=("c_{k-2}", "c_{k-1}"))

    def derive(self, space: SearchSpace, op_weights: Mapping[str, torch.Tensor],
               edge_weights: Mapping[str, torch.Tensor] | None = None) -> Genotype:
        return derive_darts(space, op_weights, edge_weights)

    def genotype_of(self, space: SearchSpace, hard: Mapping[str, Any], fallback: Genotype | None = None,
                    outputs: Mapping[str, tuple[int, ...]] | None = None) -> Genotype:
        cells = {}
        for ct in space.cell_types:
            if ct not in hard:
                if fallback is None:
                    raise KeyError(ct)
                cells[ct] = self.cell_pairs(fallback, ct)
                continue
            choice = hard[ct]
            if choice and isinstance(choice[0], (list, tuple)):  # per node (edge, op index) lists
                cells[ct] = tuple((space.edge_ops[ct][e][k], space.edges[e][0]) for node in choice for e, k in node)
                continue
            pairs = []
            for node in range(space.n_nodes):
                for e in space.node_edges(node):
                    k = choice[e]
                    if k >= 0:
                        pairs.append((space.edge_ops[ct][e][k], space.edges[e][0]))
            cells[ct] = tuple(pairs)
        concat = {ct: tuple(range(space.n_inputs, space.n_inputs + space.n_nodes)) for ct in space.cell_types}
        concat.update(outputs or {})
        return Genotype(space=space.name, normal=cells["normal"], normal_concat=concat["normal"],
                        reduce=cells["reduce"], reduce_concat=concat["reduce"])

    def zero_genotype(self, space: SearchSpace) -> Genotype:
        pairs = tuple(("none", j) for _ in range(space.n_nodes) for j in (0, 1))
        concat = tuple(range(space.n_inputs, space.n_inputs + space.n_nodes))
        return Genotype(space=space.name, normal=pairs, normal_concat=concat, reduce=pairs, reduce_concat=concat)

    def genotype_edges(self, space: SearchSpace, genotype: Genotype, cell_type: str) -> list[tuple[int, str]]:
        out = []
        edges = space.edges
        for k, (op, src) in enumerate(self.cell_pairs(genotype, cell_type)):
            node = space.n_inputs + k // 2
            if (src, node) not in edges:
                raise ValueError(f"{cell_type}: genotype connects {src} -> {node}, which is not an edge of "
                                 f"space {space.name}")
            out.append((edges.index((src, node)), op))
        return out

    def genotype_text(self, genotype: Genotype) -> str:
        n_nodes = len(self.cell_pairs(genotype, "normal")) // 2
        inner = "2" if n_nodes == 1 else f"2-{1 + n_nodes}"
        lines = [f"nodes: 0 = c_{{k-2}}, 1 = c_{{k-1}} (cell inputs), {inner} intermediate "
                 "(numbered as in the cell diagrams and the JSON)"]
        for ct in ("normal", "reduce"):
            pairs = self.cell_pairs(genotype, ct)
            for k in range(0, len(pairs), 2):
                ins = ", ".join(f"{op} <- {src}" for op, src in pairs[k:k + 2])
                lines.append(f"{ct:7s} node {2 + k // 2}: {ins}")
            lines.append(f"{ct:7s} concat {list(genotype.concat(ct))}")
        return "\n".join(lines) + "\n\n" + genotype.to_json()
