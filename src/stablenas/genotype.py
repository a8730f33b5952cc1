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
from .registry import OPS, SKELETONS, SPACES
from .spaces.catalog import SearchSpace, get_space

Pair = tuple[str, int]
# the skeleton of genotypes that neither name a registered space nor are claimed by a skeleton
DEFAULT_SKELETON = "darts"


@dataclass(frozen=True)
class Genotype:
    """A discrete architecture. The fields are the union of what the built-in skeletons store
    (DARTS: per cell type ``[op, input]`` pairs and the concatenated nodes; NB201: ``arch``);
    reading, writing, printing and the per-cell views belong to the space's skeleton
    (:mod:`stablenas.skeletons`), which every method here asks."""

    space: str
    normal: tuple[Pair, ...] = ()
    normal_concat: tuple[int, ...] = ()
    reduce: tuple[Pair, ...] = ()
    reduce_concat: tuple[int, ...] = ()
    arch: str | None = None  # NAS-Bench-201 arch string
    extra: dict = field(default_factory=dict, compare=False)

    # -- views -------------------------------------------------------------------------------
    @property
    def skeleton(self):
        """The :class:`~stablenas.skeletons.base.Skeleton` this genotype belongs to."""
        return genotype_skeleton(self)

    def cell_types(self) -> list[str]:
        return self.skeleton.cell_types(self)

    def cell(self, cell_type: str) -> tuple[Pair, ...]:
        return self.skeleton.cell_pairs(self, cell_type)

    def concat(self, cell_type: str) -> tuple[int, ...]:
        return {"normal": self.normal_concat, "reduce": self.reduce_concat}[cell_type]

    def ops(self, cell_type: str | None = None) -> list[str]:
        types = [cell_type] if cell_type else self.cell_types()
        return [op for ct in types for op, _ in self.cell(ct)]

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return self.skeleton.genotype_to_dict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        from .utils import atomic_write_text

        atomic_write_text(Path(path), self.to_json(indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: Mapping) -> Genotype:
        if not isinstance(d, Mapping):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(d).__name__}")
        return genotype_skeleton(d).genotype_from_dict(d)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype is not valid JSON: {e}") from None

    @classmethod
    def from_text(cls, text: str, space: str = "darts") -> Genotype:
        """JSON, or the DARTS repositories' Python form ``Genotype(normal=[('sep_conv_3x3', 0), ...],
        normal_concat=range(2, 6), reduce=[...], reduce_concat=[2, 3, 4, 5])`` (optionally as
        ``NAME = Genotype(...)``), read with :mod:`ast` -- never evaluated."""
        t = text.strip()
        if t.startswith(("{", "[")) or not looks_like_darts_python(t):
            return cls.from_json(t)
        return cls.from_dict(parse_darts_python(t, space))

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        if path.is_dir():
            path = path / "genotype.json"
        if not path.exists():
            raise GenotypeError(f"no genotype at {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or "not UTF-8 text: a genotype is a JSON file"
            raise GenotypeError(f"{path}: cannot read the genotype ({why})") from None
        try:
            return cls.from_text(text)
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None

    def validate(self) -> None:
        """The skeleton's structural checks (DARTS: every node takes inputs from earlier nodes)."""
        self.skeleton.validate_genotype(self)

    def __str__(self) -> str:
        return self.skeleton.genotype_str(self)


def genotype_skeleton(obj: Genotype | Mapping):
    """The skeleton of a genotype (or genotype dict): its space's, else the first registered
    skeleton that claims it, else the default (``darts``)."""
    space = obj.space if isinstance(obj, Genotype) else obj.get("space")
    if isinstance(space, str) and space in SPACES:
        return SKELETONS[SPACES[space].skeleton]
    for sk in SKELETONS.values():
        if sk.owns(obj) if isinstance(obj, Genotype) else sk.claims(obj):
            return sk
    return SKELETONS[DEFAULT_SKELETON]


# --------------------------------------------------------------------------------------------
# the DARTS repositories' Python form


def looks_like_darts_python(text: str) -> bool:
    return "Genotype(" in text and "normal" in text


def parse_darts_python(text: str, space: str = "darts") -> dict:
    """``Genotype(normal=[(op, i), ...], normal_concat=..., reduce=..., reduce_concat=...)`` as a
    genotype dict. Only literals, ``range(a, b)`` and ``list(range(a, b))`` are accepted: the text
    is parsed with :mod:`ast`, nothing in it runs."""
    import ast

    t = text.strip()
    try:
        tree = ast.parse(t, mode="exec")
    except SyntaxError as e:
        raise GenotypeError(f"genotype text is neither JSON nor DARTS's Genotype(...) form: {e.msg} "
                            f"(line {e.lineno})") from None
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Genotype"]
    if len(calls) != 1:
        raise GenotypeError("expected exactly one Genotype(normal=[...], normal_concat=..., reduce=[...], "
                            f"reduce_concat=...) in the genotype text, found {len(calls)}")
    call = calls[0]
    names = ("normal", "normal_concat", "reduce", "reduce_concat")
    args = dict(zip(names, call.args))
    for kw in call.keywords:
        if kw.arg not in names:
            raise GenotypeError(f"Genotype(...): unknown argument {kw.arg!r}; expected {', '.join(names)}")
        args[kw.arg] = kw.value
    missing = [n for n in names if n not in args]
    if missing:
        raise GenotypeError(f"Genotype(...): missing {', '.join(missing)}")

    def value(node: ast.AST, key: str):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("range", "list") and not node.keywords:
            if node.func.id == "list" and len(node.args) == 1:
                return value(node.args[0], key)
            if node.func.id == "range" and 1 <= len(node.args) <= 3:
                return list(range(*[int(value(a, key)) for a in node.args]))
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise GenotypeError(f"Genotype(...): {key} must be a literal or range(a, b), got "
                                f"{ast.unparse(node)!r}") from None

    out = {"space": space}
    for n in names:
        v = value(args[n], n)
        out[n] = [list(p) if isinstance(p, tuple) else p for p in v]
    return out


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
    return SKELETONS[space.skeleton].derive(space, op_weights, edge_weights)
