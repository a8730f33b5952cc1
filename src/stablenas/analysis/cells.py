"""Cells drawn as graphs: Graphviz ``dot`` when it is on PATH, a matplotlib drawing otherwise.

Graphviz set-up is a common stumbling block of DARTS code, so it is never required: the
fallback lays nodes out by depth and draws labelled arrows with matplotlib alone.
"""

from __future__ import annotations

import shutil
import subprocess

from ..genotype import Genotype
from ..spaces.ops import OPS

OP_COLORS = {"skip_connect": "#e6550d", "none": "#bdbdbd", "max_pool_3x3": "#31a354",
             "avg_pool_3x3": "#74c476", "noise": "#756bb1", "sep_conv_3x3": "#3182bd",
             "sep_conv_5x5": "#6baed6", "dil_conv_3x3": "#9e9ac8", "dil_conv_5x5": "#bcbddc",
             "nor_conv_3x3": "#3182bd", "nor_conv_1x1": "#6baed6"}


def cell_edges(genotype: Genotype, cell_type: str) -> tuple[list[str], list[tuple[str, str, str]], str]:
    """(node names, (src, dst, op) edges, output node name) of one cell."""
    g = genotype.skeleton.cell_graph(genotype, cell_type)
    n_in = g.n_inputs
    if not g.concat:  # the output is the last node itself (NB201); zero ops are no connection
        names = list(g.input_names) + [str(i + 1) for i in range(len(g.nodes))]
        edges = [(names[src], names[n_in + i], op) for i, node in enumerate(g.nodes) for src, op in node
                 if not OPS[op].is_zero]
        return names, edges, names[g.outputs[-1]]
    # nodes numbered as in the genotype (inputs 0..n_in-1, then n_in, n_in+1, ...): the text view,
    # the JSON and the op-weight panels (``i->j``) use the same numbers
    names = list(g.input_names) + [str(n_in + i) for i in range(len(g.nodes))] + ["c_{k}"]  # TeX-like ids
    edges = [(names[src], names[n_in + i], op) for i, node in enumerate(g.nodes) for src, op in node]
    edges += [(names[j], "c_{k}", "") for j in g.outputs]
    return names, edges, "c_{k}"


def to_dot(genotype: Genotype, cell_type: str) -> str:
    names, edges, out = cell_edges(genotype, cell_type)
    index = {n: i for i, n in enumerate(names)}
    lines = ["digraph cell {", '  rankdir=LR; bgcolor="white";',
             '  node [style="filled,rounded", shape=box, fontname="Helvetica", fontsize=16, penwidth=1.5];',
             '  edge [fontname="Helvetica", fontsize=13];']
    for n in names:
        if n.startswith("c_") or n == "in":
            color = "#a1d99b" if n == out else "#fdd0a2"
            label = f"<c<sub>{n[3:-1]}</sub>>" if n.startswith("c_") else '"input"'
            if n != out:  # a cell input: its node number too (the genotype's 0, 1)
                label = f"<c<sub>{n[3:-1]}</sub> ({index[n]})>" if n.startswith("c_") else '"input (0)"'
            lines.append(f'  "{n}" [fillcolor="{color}", label={label}];')
        else:
            lines.append(f'  "{n}" [fillcolor="#c6dbef", shape=circle, fixedsize=true, width=0.5];')
    for src, dst, op in edges:
        if op:
            color = OP_COLORS.get(op, "#636363")
            lines.append(f'  "{src}" -> "{dst}" [label="{op}", color="{color}", fontcolor="{color}", '
                         'penwidth=2];')
        else:
            lines.append(f'  "{src}" -> "{dst}" [color="#969696", style=dashed];')
    lines.append("}")
    return "\n".join(lines)


DOT_DPI = 80  # every cell at one resolution: the report shows them at one scale


def draw_dot(genotype: Genotype, cell_type: str, timeout: float = 30.0) -> bytes | None:
    """PNG via Graphviz, or None when ``dot`` is missing or fails."""
    dot = shutil.which("dot")
    if dot is None:
        return None
    try:
        res = subprocess.run([dot, "-Tpng", f"-Gdpi={DOT_DPI}"], input=to_dot(genotype, cell_type).encode(),
                             capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0 or not res.stdout.startswith(b"\x89PNG"):
        return None
    return res.stdout


def draw_matplotlib(genotype: Genotype, cell_type: str) -> bytes:
    """Fallback drawing: nodes in columns by depth, arrows coloured by op (legend below)."""
    from . import plots  # sets the Agg backend

    plt = plots.plt
    names, edges, out = cell_edges(genotype, cell_type)
    level = {n: 0 for n in names if n.startswith("c_") and n != out or n == "in"}
    for n in names:
        if n in level:
            continue
        srcs = [s for s, d, _ in edges if d == n]
        level[n] = 1 + max((level.get(s, 0) for s in srcs), default=0)
    cols: dict[int, list[str]] = {}
    for n in names:
        cols.setdefault(level[n], []).append(n)
    pos = {}
    for lv, ns in cols.items():
        for i, n in enumerate(ns):
            pos[n] = (lv * 2.2, (len(ns) - 1) / 2 - i)
    width = 2.2 * max(cols) + 2
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * width), 1.0 + 1.1 * max(len(v) for v in cols.values())))
    used: dict[str, str] = {}
    for src, dst, op in edges:
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        color = used.setdefault(op, OP_COLORS.get(op, f"C{len(used) % 10}")) if op else "#969696"
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=color, lw=2.2 if op else 1,
                                    ls="-" if op else "--", shrinkA=14, shrinkB=14,
                                    connectionstyle="arc3,rad=0.08"))
    # ops by colour in a legend: edge labels collide where several edges leave one input
    handles = [plt.Line2D([], [], color=c, lw=2.5) for c in used.values()]
    if handles:
        ax.legend(handles, list(used), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(used)),
                  fontsize=8, frameon=False)
    index = {n: i for i, n in enumerate(names)}
    for n, (x, y) in pos.items():
        is_input = n != out and (n.startswith("c_") or n == "in")
        fc = "#a1d99b" if n == out else ("#fdd0a2" if is_input else "#c6dbef")
        label = f"${n}$" if n.startswith("c_") else n
        ax.text(x, y, f"{label} ({index[n]})" if is_input else label, ha="center", va="center", fontsize=11,
                bbox=dict(boxstyle="round,pad=0.4", fc=fc, ec="#636363"))
    ax.set_xlim(-1, width - 0.5)
    ys = [p[1] for p in pos.values()]
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.axis("off")
    ax.set_title(f"{cell_type} cell", fontsize=10)
    return plots._png(fig)


def draw_cell(genotype: Genotype, cell_type: str) -> tuple[bytes, str]:
    """(PNG, 'graphviz' | 'matplotlib')."""
    png = draw_dot(genotype, cell_type)
    if png is not None:
        return png, "graphviz"
    return draw_matplotlib(genotype, cell_type), "matplotlib"


def cell_types(genotype: Genotype) -> list[str]:
    return genotype.cell_types()
