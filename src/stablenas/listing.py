"""What the CLI's listings print: one table format for ``spaces``, ``presets`` and ``methods``, and
the page ``methods NAME`` prints from a method's class and its pydantic ``Options``."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any, Literal


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, the header first; the last column is not padded (a
    long description runs on rather than widening every row)."""
    all_rows = [list(header), *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip() for r in all_rows)


def type_name(annotation: Any) -> str:
    """A field's type as a user writes it in YAML: ``float``, ``int or null``, ``epoch | step``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        kinds = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(annotation)[0])}" if typing.get_args(annotation) else "list"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "(required)"
    v = field.get_default(call_default_factory=True)
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def method_page(cls: Any) -> str:
    """``stablenas methods NAME``: what the method does, its paper, every option (type, default, one
    line) and how to use it."""
    lines = [f"{cls.name}: {cls.description}"]
    if cls.paper:
        lines.append(f"paper: {cls.paper}")
    fields = cls.Options.model_fields
    if fields:
        rows = [(k, type_name(f.annotation), _default(f), f.description or "") for k, f in fields.items()]
        lines += ["", "options:", table(("option", "type", "default", "meaning"), rows)]
    else:
        lines += ["", "options: none"]
    lines.append("")
    if cls.preset:
        lines.append(f"preset: stablenas search {cls.preset}  (the paper's settings; --print-config shows them)")
    example = f"{{name: {cls.name}{', ' + next(iter(fields)) + ': ...' if fields else ''}}}"
    lines.append(f"in a config: methods: [{example}]")
    return "\n".join(lines)


__all__ = ["method_page", "table", "type_name"]
