"""Discrete architectures (genotypes): the JSON format, loading, and the DARTS / NB201 rules.

A DARTS-skeleton genotype lists, per cell type, ``[op, input]`` pairs two per intermediate node
(inputs 0 and 1 are the cell inputs c_{k-2}, c_{k-1}; 2.. the intermediate nodes) and the nodes
concatenated into the cell output. A NAS-Bench-201 genotype is its arch string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``. Both round-trip through JSON so a search result can be
handed straight to ``stablenas train``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import GenotypeError
from .spaces.ops import OPS
from .spaces.registry import SearchSpace, get_space

Pair = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    space: str
    normal: tuple[Pair, ...] = ()
    normal_concat: tuple[int, ...] = ()
    reduce: tuple[Pair, ...] = ()
    reduce_concat: tuple[int, ...] = ()
    arch: str | None = None  # NAS-Bench-201 arch string
    extra: dict = field(default_factory=dict, compare=False)

    # -- views -------------------------------------------------------------------------------
    @property
    def is_nb201(self) -> bool:
        return self.arch is not None

    def cell(self, cell_type: str) -> tuple[Pair, ...]:
        if self.is_nb201:
            if cell_type != "cell":
                raise KeyError(cell_type)
            return tuple(p for node in parse_nb201(self.arch) for p in node)
        return {"normal": self.normal, "reduce": self.reduce}[cell_type]

    def concat(self, cell_type: str) -> tuple[int, ...]:
        return {"normal": self.normal_concat, "reduce": self.reduce_concat}[cell_type]

    def ops(self, cell_type: str | None = None) -> list[str]:
        types = [cell_type] if cell_type else (["cell"] if self.is_nb201 else ["normal", "reduce"])
        return [op for ct in types for op, _ in self.cell(ct)]

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        if self.is_nb201:
            return {"space": self.space, "arch": self.arch}
        return {
            "space": self.space,
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        from .utils import atomic_write_text

        atomic_write_text(Path(path), self.to_json(indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: Mapping) -> Genotype:
        if not isinstance(d, Mapping):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(d).__name__}")
        space = d.get("space", "darts")
        if "arch" in d:
            unknown = set(d) - {"space", "arch"}
            if unknown:
                raise GenotypeError(f"unknown genotype keys {sorted(unknown)}; an nb201 genotype has "
                                    "'space' and 'arch'")
            nodes = parse_nb201(d["arch"])  # validates
            from .spaces.registry import SPACES

            sp = SPACES.get(space)
            if sp is not None and sp.skeleton == "nb201" and len(nodes) != sp.n_nodes:
                raise GenotypeError(f"malformed nb201 arch string {d['arch']!r}: {len(nodes)} nodes, "
                                    f"space {space!r} has {sp.n_nodes}")
            return cls(space=space, arch=str(d["arch"]))
        required = ("normal", "normal_concat", "reduce", "reduce_concat")
        missing = [k for k in required if k not in d]
        if missing:
            raise GenotypeError(f"genotype is missing {missing}; expected keys: space, {', '.join(required)} "
                                "(or space, arch for nb201)")
        unknown = set(d) - {"space", *required}
        if unknown:
            raise GenotypeError(f"unknown genotype keys {sorted(unknown)}; allowed: space, {', '.join(required)}")

        def pairs(key: str) -> tuple[Pair, ...]:
            out = []
            for item in d[key]:
                if not (isinstance(item, (list, tuple)) and len(item) == 2):
                    raise GenotypeError(f"{key}: each entry must be [op, input], got {item!r}")
                op, inp = item
                if op not in OPS:
                    raise GenotypeError(f"{key}: unknown op {op!r}; registered: {', '.join(sorted(OPS))}")
                out.append((str(op), int(inp)))
            return tuple(out)

        g = cls(space=space, normal=pairs("normal"), normal_concat=tuple(int(i) for i in d["normal_concat"]),
                reduce=pairs("reduce"), reduce_concat=tuple(int(i) for i in d["reduce_concat"]))
        g.validate()
        return g

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype is not valid JSON: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        if path.is_dir():
            path = path / "genotype.json"
        if not path.exists():
            raise GenotypeError(f"no genotype at {path}")
        return cls.from_json(path.read_text())

    def validate(self) -> None:
        """Every node has its inputs from earlier nodes only."""
        for ct in ("normal", "reduce"):
            pairs = self.cell(ct)
            if len(pairs) % 2:
                raise GenotypeError(f"{ct}: expected two [op, input] pairs per node, got {len(pairs)} entries")
            for k, (_, inp) in enumerate(pairs):
                node = 2 + k // 2
                if not 0 <= inp < node:
                    raise GenotypeError(f"{ct}: entry {k} feeds node {node} from {inp}; "
                                        f"allowed inputs are 0..{node - 1}")

    def __str__(self) -> str:
        if self.is_nb201:
            return self.arch or ""
        n = " ".join(f"{op}<-{i}" for op, i in self.normal)
        r = " ".join(f"{op}<-{i}" for op, i in self.reduce)
        return f"normal: {n} | reduce: {r}"


# --------------------------------------------------------------------------------------------
# NAS-Bench-201 strings

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


# --------------------------------------------------------------------------------------------
# discretisation rules on op weights (post-activation), shape (edges, max_ops) per cell type


def _edge_ops(space: SearchSpace, cell_type: str, e: int) -> tuple[str, ...]:
    return space.edge_ops[cell_type][e]


def derive_darts(space: SearchSpace, op_weights: Mapping[str, torch.Tensor],
                 edge_weights: Mapping[str, torch.Tensor] | None = None) -> Genotype:
    """DARTS rule: per node keep the ``inputs_per_node`` edges whose strongest non-`none` op is
    strongest; on each kept edge take that op. Ties go to the earlier edge / earlier op.

    ``edge_weights`` (PC-DARTS betas, normalised per node) scale each edge's op weights first,
    as PC-DARTS ranks edges by beta * alpha.
    """
    cells: dict[str, tuple[Pair, ...]] = {}
    for ct in space.cell_types:
        W = op_weights[ct].detach().float().cpu()
        if edge_weights is not None and ct in edge_weights:
            W = W * edge_weights[ct].detach().float().cpu()[:, None]
        pairs: list[Pair] = []
        for node in range(space.n_nodes):
            cand = []
            for e in space.node_edges(node):
                ops = _edge_ops(space, ct, e)
                best_op, best_w = None, float("-inf")
                for k, op in enumerate(ops):
                    if op == "none":
                        continue
                    w = float(W[e, k])
                    if w > best_w:
                        best_op, best_w = op, w
                if best_op is None:  # an edge offering only `none`
                    best_op = "none"
                src = space.edges[e][0]
                cand.append((best_w, src, best_op))
            k_keep = min(space.inputs_per_node, len(cand))
            # stable sort by strength descending keeps the earlier edge first on ties
            ranked = sorted(cand, key=lambda t: -t[0])[:k_keep]
            pairs.extend((op, src) for _, src, op in ranked)
        cells[ct] = tuple(pairs)
    concat = tuple(range(space.n_inputs, space.n_inputs + space.n_nodes))
    return Genotype(space=space.name, normal=cells["normal"], normal_concat=concat,
                    reduce=cells["reduce"], reduce_concat=concat)


def derive_nb201(space: SearchSpace, op_weights: Mapping[str, torch.Tensor],
                 edge_weights: Mapping[str, torch.Tensor] | None = None) -> Genotype:
    """NAS-Bench-201 rule: every edge keeps its strongest op (`none` included, as the benchmark
    treats `none` as a legitimate choice)."""
    W = op_weights["cell"].detach().float().cpu()
    chosen = []
    for e in range(space.n_edges):
        ops = _edge_ops(space, "cell", e)
        k = int(torch.argmax(W[e, : len(ops)]))  # argmax returns the first maximum on ties
        chosen.append(ops[k])
    return Genotype(space=space.name, arch=nb201_string(chosen, space.n_nodes))


def derive(space: SearchSpace | str, op_weights: Mapping[str, torch.Tensor],
           edge_weights: Mapping[str, torch.Tensor] | None = None) -> Genotype:
    """The default value-based rule of the space's skeleton."""
    if isinstance(space, str):
        space = get_space(space)
    if space.skeleton == "nb201":
        return derive_nb201(space, op_weights, edge_weights)
    return derive_darts(space, op_weights, edge_weights)
