"""The package-level import graph (every import in src/stablenas, function-level and type-only
``if TYPE_CHECKING:`` ones included) has no cycle; errors and registry sit at the bottom."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "stablenas"


def _unit(module: str) -> str:
    """stablenas.methods.gdas -> methods; stablenas.config -> config (a subpackage or top module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "stablenas"


def _imports(path: Path) -> set[str]:
    rel = path.relative_to(SRC.parent).with_suffix("")
    module = ".".join(rel.parts)
    package = module[: -len(".__init__")] if module.endswith(".__init__") else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                out |= {f"{target}.{a.name}" for a in node.names} if not node.module else {target}
            elif node.module:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m == "stablenas" or m.startswith("stablenas.")}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        src = _unit(rel.removesuffix(".__init__"))
        if src == "stablenas":  # the package's __init__ re-exports the public API
            continue
        for target in _imports(path):
            dst = _unit(target)
            if dst not in (src, "stablenas"):
                graph.setdefault(src, set()).add(dst)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_package_level_import_cycles():
    graph = import_graph()
    assert {"config", "methods", "search", "registry", "skeletons"} <= set(graph)  # the walk found them
    assert cycles(graph) == [], {k: sorted(v) for k, v in graph.items()}


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_bottom_of_the_graph():
    graph = import_graph()
    assert "errors" not in graph  # dependency-free
    assert graph["registry"] == {"errors"} and graph["plugins"] == {"errors"}
    assert graph["config"] <= {"errors", "registry", "plugins"}  # validates through the registries
