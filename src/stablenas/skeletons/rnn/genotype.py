"""Recurrent genotypes: one ``(op, predecessor)`` per node, and the nodes averaged into h_t.

JSON: ``{"space": "ptb", "recurrent": [[op, pred], ...], "concat": [1, ..., 8]}``; node i (1-based,
node 0 is the highway input s0) reads ``pred`` in 0..i-1. The discretisation rule (DARTS
``model_search.genotype``): per node, the predecessor whose strongest non-`none` op weight is
largest, with that op; ties go to the earlier predecessor / earlier op.
Saving and loading are ``Genotype``'s (JSON text, ``save``, ``load``); this class supplies
``to_dict`` / ``from_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ...errors import GenotypeError
from ...genotype import Genotype
from ...registry import SPACES
from ...spaces.catalog import SearchSpace
from .space import CELL, RNN_OPS, RNN_SKELETON

Pair = tuple[str, int]


@dataclass(frozen=True, init=False)
class RecurrentGenotype(Genotype):
    """A :class:`~stablenas.genotype.Genotype` of the recurrent skeleton (its CNN fields stay empty)."""

    recurrent: tuple[Pair, ...] = ()
    recurrent_concat: tuple[int, ...] = ()

    is_recurrent = True

    def __init__(self, space: str, recurrent: tuple[Pair, ...], concat: tuple[int, ...] = (),
                 extra: dict | None = None):
        object.__setattr__(self, "space", space)
        for name in ("normal", "normal_concat", "reduce", "reduce_concat"):
            object.__setattr__(self, name, ())
        object.__setattr__(self, "arch", None)
        object.__setattr__(self, "extra", dict(extra or {}))
        object.__setattr__(self, "recurrent", tuple((str(op), int(p)) for op, p in recurrent))
        object.__setattr__(self, "recurrent_concat", tuple(concat) or tuple(range(1, len(self.recurrent) + 1)))

    # -- views (the CNN Genotype's API, cell type "recurrent") ------------------------------------
    @property
    def n_nodes(self) -> int:
        return len(self.recurrent)

    def cell(self, cell_type: str = CELL) -> tuple[Pair, ...]:
        if cell_type != CELL:
            raise KeyError(cell_type)
        return self.recurrent

    def concat(self, cell_type: str = CELL) -> tuple[int, ...]:
        if cell_type != CELL:
            raise KeyError(cell_type)
        return self.recurrent_concat

    def cell_types(self) -> list[str]:
        return [CELL]

    def ops(self, cell_type: str | None = None) -> list[str]:
        return [op for op, _ in self.recurrent]

    def share(self, op: str) -> float:
        """Fraction of the nodes using ``op`` (``identity`` share: the RNN analogue of skip collapse)."""
        return sum(o == op for o, _ in self.recurrent) / max(len(self.recurrent), 1)

    def cell_edges(self, cell_type: str = CELL) -> tuple[list[str], list[tuple[str, str, str]], str]:
        """(node names, (src, dst, op) edges, output name) for drawing: x_t/h_{t-1} -> 0 -> ... -> h_t."""
        names = ["x_t", "h_{t-1}"] + [str(i) for i in range(self.n_nodes + 1)] + ["h_t"]
        edges = [("x_t", "0", "highway"), ("h_{t-1}", "0", "highway")]
        edges += [(str(pred), str(i + 1), op) for i, (op, pred) in enumerate(self.recurrent)]
        edges += [(str(j), "h_t", "") for j in self.recurrent_concat]
        return names, edges, "h_t"

    def to_dot(self) -> str:
        names, edges, out = self.cell_edges()
        lines = ["digraph recurrent {", '  rankdir=LR; bgcolor="white";',
                 '  node [style="filled,rounded", shape=box, fontname="Helvetica", fontsize=14];',
                 '  edge [fontname="Helvetica", fontsize=11];']
        colors = {"tanh": "#3182bd", "relu": "#31a354", "sigmoid": "#756bb1", "identity": "#e6550d",
                  "highway": "#636363"}
        for n in names:
            if n in ("x_t", "h_{t-1}", "h_t"):
                fill = "#a1d99b" if n == out else "#fdd0a2"
                label = {"x_t": "<x<sub>t</sub>>", "h_{t-1}": "<h<sub>t-1</sub>>", "h_t": "<h<sub>t</sub>>"}[n]
                lines.append(f'  "{n}" [fillcolor="{fill}", label={label}];')
            else:
                lines.append(f'  "{n}" [fillcolor="#c6dbef", shape=circle, fixedsize=true, width=0.5];')
        for src, dst, op in edges:
            if op:
                c = colors.get(op, "#636363")
                lines.append(f'  "{src}" -> "{dst}" [label="{op}", color="{c}", fontcolor="{c}", penwidth=2];')
            else:
                lines.append(f'  "{src}" -> "{dst}" [color="#969696", style=dashed];')
        lines.append("}")
        return "\n".join(lines)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"space": self.space, "recurrent": [[op, p] for op, p in self.recurrent],
                "concat": list(self.recurrent_concat)}

    @classmethod
    def from_dict(cls, d: Mapping) -> RecurrentGenotype:
        if not isinstance(d, Mapping):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(d).__name__}")
        allowed = {"space", "recurrent", "concat"}
        unknown = set(d) - allowed
        if unknown:
            raise GenotypeError(f"unknown recurrent genotype keys {sorted(unknown)}; allowed: space, recurrent, concat")
        if "recurrent" not in d:
            raise GenotypeError("recurrent genotype is missing 'recurrent' ([[op, predecessor], ...])")
        space = d.get("space", "ptb")
        sp = SPACES.get(space) if isinstance(space, str) else None
        if sp is None or sp.skeleton != RNN_SKELETON:
            names = [n for n, s in SPACES.items() if s.skeleton == RNN_SKELETON]
            raise GenotypeError(f"genotype space: {space!r} is not a recurrent space; recurrent spaces: "
                                f"{', '.join(names)}")
        if not isinstance(d["recurrent"], list):
            got = "null" if d["recurrent"] is None else type(d["recurrent"]).__name__
            raise GenotypeError(f"recurrent: expected a list of [op, predecessor] pairs, got {got}")
        pairs = []
        for k, item in enumerate(d["recurrent"]):
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], int)
                    and not isinstance(item[1], bool)):
                raise GenotypeError(f"recurrent: entry {k} must be [op, predecessor], got {item!r}")
            pairs.append((str(item[0]), int(item[1])))
        concat = d.get("concat") or ()
        if not isinstance(concat, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                             for i in concat):
            raise GenotypeError(f"concat must be a list of node numbers, got {concat!r}")
        g = cls(space=space, recurrent=tuple(pairs), concat=tuple(int(i) for i in concat))
        g.validate()
        return g

    def validate(self) -> None:
        if not self.recurrent:
            raise GenotypeError("recurrent genotype has no nodes")
        valid_ops = [o for o in RNN_OPS if o != "none"]
        for k, (op, pred) in enumerate(self.recurrent):
            if op not in valid_ops:
                raise GenotypeError(f"recurrent: node {k + 1} has op {op!r}; allowed: {', '.join(valid_ops)}")
            if not 0 <= pred <= k:
                raise GenotypeError(f"recurrent: node {k + 1} reads node {pred}; allowed predecessors are 0..{k}")
        for j in self.recurrent_concat:
            if not 0 <= j <= self.n_nodes:
                raise GenotypeError(f"concat: node {j} does not exist (nodes 0..{self.n_nodes})")

    def __str__(self) -> str:
        cell = " ".join(f"{op}<-{p}" for op, p in self.recurrent)
        return f"recurrent: {cell} | mean of {list(self.recurrent_concat)}"


def derive_recurrent(space: SearchSpace, op_weights: Mapping[str, torch.Tensor]) -> RecurrentGenotype:
    """The DARTS rule on op weights ``(36, K)``: per node the single strongest non-`none` (op, predecessor)."""
    W = op_weights[CELL].detach().float().cpu()
    ops = space.edge_ops[CELL]
    pairs: list[Pair] = []
    for node in range(space.n_nodes):
        best: tuple[float, int, str] | None = None
        for e in space.node_edges(node):
            for k, op in enumerate(ops[e]):
                if op == "none":
                    continue
                w = float(W[e, k])
                if best is None or w > best[0]:
                    best = (w, space.edges[e][0], op)
        assert best is not None, "a recurrent space offers a non-none op on every edge"
        pairs.append((best[2], best[1]))
    return RecurrentGenotype(space=space.name, recurrent=tuple(pairs),
                             concat=tuple(range(1, space.n_nodes + 1)))


# The published cells, from github.com/quark0/darts rnn/genotypes.py. DARTS_V2 is the cell of the
# paper's PTB results (the file's default ``DARTS = DARTS_V2``, the README's 55.68 test perplexity);
# DARTS_V1 is the repository's first-release cell (named ``DARTS`` at its release commit).
DARTS_V1_RNN = RecurrentGenotype(
    space="ptb",
    recurrent=(("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1), ("relu", 5),
               ("relu", 1)),
    concat=tuple(range(1, 9)),
    extra={"source": "github.com/quark0/darts rnn/genotypes.py DARTS_V1 (the release commit's DARTS)",
           "paper": "Liu et al., DARTS (the code release of arXiv:1806.09055)"})
DARTS_V2_RNN = RecurrentGenotype(
    space="ptb",
    recurrent=(("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5),
               ("tanh", 3), ("relu", 5)),
    concat=tuple(range(1, 9)),
    extra={"source": "github.com/quark0/darts rnn/genotypes.py DARTS_V2 (= DARTS)",
           "paper": "Liu et al., DARTS, ICLR 2019 (second order)",
           "reported": "PTB: 58.1 valid / 55.7 test perplexity, 23M parameters (DARTS Table 2)"})
PUBLISHED_RNN = {"DARTS_V1_RNN": DARTS_V1_RNN, "DARTS_V2_RNN": DARTS_V2_RNN}
