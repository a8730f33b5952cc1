"""Methods see the search only through ``stablenas.methods.context.SearchContext``.

Read from the method modules' source (every ``methods/*.py``, plug-in style methods included when
they live there): a hook may use only the names the protocol declares, may not assign to the
search's state (changes go through the protocol's operations), and no method module imports the
search loop. The search loop provides every member the protocol declares.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stablenas as sn
from stablenas.methods.context import SearchContext

METHODS_DIR = Path(sn.__file__).resolve().parent / "methods"
MEMBERS = set(SearchContext.__annotations__) | {
    n for n, v in vars(SearchContext).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}


def _context_params(fn: ast.FunctionDef) -> set[str]:
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    return {a.arg for a in args
            if a.annotation is not None and ast.unparse(a.annotation).strip("'\"") == "SearchContext"}


def _uses() -> list[tuple[str, int, str, str]]:
    """(module, line, attribute, 'read'|'write') for every use of a context parameter's attribute."""
    out = []
    for path in sorted(METHODS_DIR.glob("*.py")):
        if path.name == "context.py":
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            names = _context_params(fn)
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
                    kind = "write" if isinstance(node.ctx, ast.Store) else "read"
                    out.append((path.stem, node.lineno, node.attr, kind))
                if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):  # search.x.y = ..., search.x[i] = ...
                    for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        root = target
                        while isinstance(root, (ast.Attribute, ast.Subscript)):
                            root = root.value
                        chain = ast.unparse(target)
                        if (isinstance(root, ast.Name) and root.id in names and target is not root
                                and not (isinstance(target, ast.Attribute) and target.value is root)
                                and not chain.startswith(f"{root.id}.arch")):
                            out.append((path.stem, node.lineno, chain, "write"))
    return out


def test_hooks_take_the_context_not_the_loop():
    from stablenas.methods.base import Method

    hooks = [n for n in vars(Method) if not n.startswith("_") and callable(getattr(Method, n))]
    tree = ast.parse((METHODS_DIR / "base.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Method")
    typed = {f.name for f in cls.body if isinstance(f, ast.FunctionDef) and _context_params(f)}
    assert {"setup", "on_epoch_start", "arch_step", "arch_penalty", "freezes_alpha", "transform",
            "on_weight_grads", "on_epoch_end"} <= typed <= set(hooks)


def test_methods_read_only_what_the_context_declares():
    uses = _uses()
    assert len(uses) > 100  # the scan sees the methods' hooks
    undeclared = sorted({(m, a) for m, _, a, kind in uses if kind == "read" and a not in MEMBERS})
    assert undeclared == []


def test_methods_change_the_search_only_through_its_operations():
    writes = sorted({(m, line, a) for m, line, a, kind in uses_of_kind("write")})
    assert writes == []


def uses_of_kind(kind: str) -> list[tuple[str, int, str, str]]:
    return [u for u in _uses() if u[3] == kind]


def test_no_method_module_imports_the_search_loop():
    for path in sorted(METHODS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert not target.startswith(("..search", "stablenas.search")), f"{path.name} imports {target}"


@pytest.mark.usefixtures("one_thread")
def test_the_search_loop_provides_every_member(tiny_overrides, tmp_path):
    from stablenas.search.loop import Search

    search = Search(sn.load_config("darts", tiny_overrides))
    missing = sorted(m for m in MEMBERS if not hasattr(search, m))
    assert missing == []
