"""NAS-Bench-201 genotype code: the benchmark's arch string ``|op~0|+|op~0|op~1|+...`` (read,
validated, written) and the NAS-Bench-201 discretisation rule (Dong & Yang 2020, Sec. 3)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ...errors import GenotypeError
from ...genotype import Genotype, Pair
from ...registry import OPS
from ...spaces.catalog import SearchSpace

__all__ = ["derive_nb201", "nb201_string", "parse_nb201"]

_NB201_NODE = re.compile(r"^\|(?:[a-z0-9_]+~\d+\|)+$")


def parse_nb201(arch: str) -> list[list[Pair]]:
    """``|a~0|+|b~0|c~1|+...`` -> per node, [(op, input), ...]; validated."""
    if not isinstance(arch, str) or not arch:
        raise GenotypeError(f"nb201 arch must be a string like '|op~0|+|op~0|op~1|+...', got {arch!r}")
    nodes = []
    for n, part in enumerate(arch.split("+")):
        if not _NB201_NODE.match(part):
            raise GenotypeError(f"malformed nb201 arch string {arch!r} at {part!r}")
        pairs = []
        for tok in part.strip("|").split("|"):
            op, inp = tok.split("~")
            if op not in OPS:
                raise GenotypeError(f"nb201 arch: unknown op {op!r}")
            if int(inp) > n:
                raise GenotypeError(f"nb201 arch: node {n + 1} cannot take input {inp}")
            pairs.append((op, int(inp)))
        if [i for _, i in pairs] != list(range(n + 1)):
            raise GenotypeError(f"malformed nb201 arch string {arch!r}: node {n + 1} must list one op from "
                                f"each of inputs 0..{n} in order")
        nodes.append(pairs)
    return nodes


def nb201_string(ops_per_edge: list[str], n_nodes: int = 3) -> str:
    parts, e = [], 0
    for i in range(n_nodes):
        toks = []
        for j in range(i + 1):
            toks.append(f"{ops_per_edge[e]}~{j}")
            e += 1
        parts.append("|" + "|".join(toks) + "|")
    return "+".join(parts)


def derive_nb201(space: SearchSpace, op_weights: Mapping[str, torch.Tensor],
                 edge_weights: Mapping[str, torch.Tensor] | None = None) -> Genotype:
    """NAS-Bench-201 rule: every edge keeps its strongest op (`none` included, as the benchmark
    treats `none` as a legitimate choice)."""
    W = op_weights["cell"].detach().float().cpu()
    chosen = []
    for e in range(space.n_edges):
        ops = space.edge_ops["cell"][e]
        k = int(torch.argmax(W[e, : len(ops)]))  # argmax returns the first maximum on ties
        chosen.append(ops[k])
    return Genotype(space=space.name, arch=nb201_string(chosen, space.n_nodes))
