"""DARTS-skeleton genotype code: the DARTS repositories' Python form of a genotype, and the DARTS
discretisation rule (Liu et al. 2019, Sec. 2.4)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...errors import GenotypeError
from ...genotype import Genotype, Pair
from ...spaces.catalog import SearchSpace

__all__ = ["derive_darts", "looks_like_darts_python", "parse_darts_python"]


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
                ops = space.edge_ops[ct][e]
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
