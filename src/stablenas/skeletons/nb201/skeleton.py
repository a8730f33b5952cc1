"""The NAS-Bench-201 skeleton: a stem, three stages of N cells (C, 2C, 4C channels) joined by
ResNet blocks, global pooling and a classifier (Dong & Yang 2020, Sec. 3).

One cell type with one input; node i sums one op from every earlier node and the last node is
the output. Every edge keeps exactly one op, `none` included (the benchmark counts it as a
choice), so the space has prod(ops per edge) architectures. A genotype is the benchmark's arch
string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ...genotype import Genotype, GenotypeError
from ...registry import SPACES
from ..base import CellGraph, Skeleton, register_skeleton
from .genotype import derive_nb201, nb201_string, parse_nb201

if TYPE_CHECKING:
    from torch import nn

    from ...spaces.catalog import SearchSpace


@register_skeleton
class NB201Skeleton(Skeleton):
    name = "nb201"
    description = "NAS-Bench-201: three stages of one-input cells joined by ResNet blocks"
    capabilities = frozenset({"partial_channels", "node_norm", "edge_betas", "aux_skip", "data_parallel",
                              "op_modules", "several_cells", "op_costs", "none_slots", "perturbation_selection"})
    eval_networks = ("nb201",)
    keeps_every_edge = True

    def check_space(self, space: SearchSpace) -> None:
        if space.cell_types != ("cell",) or space.n_inputs != 1:
            raise ValueError(f"space {space.name!r}: the nb201 skeleton needs one cell type 'cell' with one input")

    def num_architectures(self, space: SearchSpace) -> int:
        total = 1
        for ops in space.edge_ops.values():
            for e in ops:
                total *= len(e)
        return total

    # -- supernet --------------------------------------------------------------------------------
    def build_supernet(self, space: SearchSpace, *, C: int = 16, layers: int = 5, num_classes: int = 10,
                       in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1,
                       node_norm: bool = False, aux_skip: bool = False) -> nn.Module:
        """``layers`` is cells per stage (N); there is no stem multiplier."""
        from .supernet import NB201SearchNetwork

        return NB201SearchNetwork(space, C=C, N=layers, num_classes=num_classes, in_channels=in_channels,
                                  partial_k=partial_k, node_norm=node_norm, aux_skip=aux_skip)

    def build_reference(self, space: SearchSpace, *, C: int = 16, layers: int = 5, num_classes: int = 10,
                        in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1,
                        node_norm: bool = False, aux_skip: bool = False) -> nn.Module:
        from .reference import PlainNB201Network

        return PlainNB201Network(space, C, layers, num_classes, in_channels, partial_k, node_norm, aux_skip)

    # -- genotypes -------------------------------------------------------------------------------
    def owns(self, genotype: Genotype) -> bool:
        return genotype.arch is not None

    def claims(self, d: Mapping) -> bool:
        return "arch" in d

    def genotype_from_dict(self, d: Mapping) -> Genotype:
        space = d.get("space", "darts")
        unknown = set(d) - {"space", "arch"}
        if unknown:
            raise GenotypeError(f"unknown genotype keys {sorted(unknown)}; an nb201 genotype has 'space' and 'arch'")
        if "arch" not in d:
            raise GenotypeError("an nb201 genotype needs 'arch' (e.g. '|nor_conv_3x3~0|+|skip_connect~0|...')")
        nodes = parse_nb201(d["arch"])  # validates
        sp = SPACES.get(space)
        if sp is not None and sp.skeleton == self.name and len(nodes) != sp.n_nodes:
            raise GenotypeError(f"malformed nb201 arch string {d['arch']!r}: {len(nodes)} nodes, "
                                f"space {space!r} has {sp.n_nodes}")
        return Genotype(space=space, arch=str(d["arch"]))

    def genotype_to_dict(self, genotype: Genotype) -> dict:
        return {"space": genotype.space, "arch": genotype.arch}

    def genotype_str(self, genotype: Genotype) -> str:
        return genotype.arch or ""

    def cell_types(self, genotype: Genotype) -> list[str]:
        return ["cell"]

    def cell_pairs(self, genotype: Genotype, cell_type: str) -> tuple[tuple[str, int], ...]:
        if cell_type != "cell":
            raise KeyError(cell_type)
        return tuple(p for node in parse_nb201(genotype.arch or "") for p in node)

    def cell_graph(self, genotype: Genotype, cell_type: str) -> CellGraph:
        nodes = parse_nb201(genotype.arch or "")
        return CellGraph(1, tuple(tuple((src, op) for op, src in node) for node in nodes), (len(nodes),),
                         concat=False, input_names=("in",))

    def derive(self, space: SearchSpace, op_weights: Mapping[str, torch.Tensor],
               edge_weights: Mapping[str, torch.Tensor] | None = None) -> Genotype:
        return derive_nb201(space, op_weights, edge_weights)

    def genotype_of(self, space: SearchSpace, hard: Mapping[str, Any], fallback: Genotype | None = None,
                    outputs: Mapping[str, tuple[int, ...]] | None = None) -> Genotype:
        """``outputs`` does not apply: the cell's output is its last node."""
        choice = hard["cell"]
        if choice and isinstance(choice[0], (list, tuple)):  # per node (edge, op index) lists
            flat = [-1] * space.n_edges
            for node in choice:
                for e, k in node:
                    flat[e] = k
            choice = flat
        names = [space.edge_ops["cell"][e][k] for e, k in enumerate(choice)]
        return Genotype(space=space.name, arch=nb201_string(names, space.n_nodes))

    def zero_genotype(self, space: SearchSpace) -> Genotype:
        return Genotype(space=space.name, arch=nb201_string(["none"] * space.n_edges, space.n_nodes))

    def genotype_edges(self, space: SearchSpace, genotype: Genotype, cell_type: str) -> list[tuple[int, str]]:
        pairs = self.cell_pairs(genotype, cell_type)
        if len(pairs) != space.n_edges:
            raise ValueError(f"nb201 genotype has {len(pairs)} edges, space {space.name} has {space.n_edges}")
        return [(e, op) for e, (op, _) in enumerate(pairs)]

    def genotype_text(self, genotype: Genotype) -> str:
        return f"{genotype.arch}\n\n{genotype.to_json()}"

    def resolve_eval_network(self, network: str | None) -> str:
        """An NB201 cell only fits the NB201 network, whatever was asked for (as before)."""
        return "nb201"
