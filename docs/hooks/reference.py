"""MkDocs hook: the reference pages are generated from the code, so they cannot drift from it.

A page holds a marker comment and the hook replaces it with Markdown built from the live objects:

- ``<!-- ref:methods -->``: every registered method (description, paper, preset, the module docstring,
  its options with type, default and meaning);
- ``<!-- ref:config MODULE:CLASS -->``: a pydantic config model, one table per section;
- ``<!-- ref:cli -->``: ``--help`` of every command, as the CLI prints it;
- ``<!-- ref:exit-codes -->``: the exit-code map of ``stablenas.errors``;
- ``<!-- ref:spaces -->`` and ``<!-- ref:presets -->``: the registered spaces and shipped presets.

A field's meaning is its ``Field(description=...)`` (method options: what `stablenas methods NAME`
prints too), else the comment beside it in the source (``name: type = default  # comment``).
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from pydantic import BaseModel

MARKER = re.compile(r"<!-- ref:([a-z-]+)(?: ([\w.:]+))? -->")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARKER.sub(lambda m: RENDER[m.group(1)](m.group(2)), markdown)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _field_comments(cls: type) -> dict[str, str]:
    """``name -> comment`` for the annotated fields of a class body, from its source."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in src.splitlines():
            m = re.match(r"\s+(\w+):[^#]*#\s*(.+)$", line)
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return re.sub(r"typing\.|<class '|'>", "", text).replace(" | ", " or ")


def _options_table(model: type[BaseModel]) -> str:
    comments = _field_comments(model)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            continue
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        rows.append(f"| `{name}` | `{_cell(_type_name(f.annotation))}` | `{_cell(default)}` | "
                    f"{_cell(f.description or comments.get(name, ''))} |")
    return "\n".join(rows)


def render_methods(_: str | None) -> str:
    from stablenas.methods import METHODS

    parts = []
    for name, cls in sorted(METHODS.items()):
        doc = inspect.getdoc(inspect.getmodule(cls)) or ""
        preset = f"`{cls.preset}` (`stablenas search {cls.preset}`)" if cls.preset else "none (add it to `methods:`)"
        paper = [f"Paper: {cls.paper}.", ""] if cls.paper else []
        section = [f"### `{name}`", "", f"{cls.description}.", "", *paper, f"Preset: {preset}.", "", doc, ""]
        if cls.Options.model_fields:
            section += ["Options (`methods: [{name: " + name + ", ...}]`):", "", _options_table(cls.Options), ""]
        parts.append("\n".join(section))
    return "\n".join(parts)


def render_config(target: str | None) -> str:
    module, _, name = (target or "stablenas.config:SearchConfig").partition(":")
    model = getattr(importlib.import_module(module), name)
    parts = ["Top level:", "", _options_table(model), ""]
    for key, f in model.model_fields.items():
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            parts += [f"`{key}:`", "", _options_table(sub), ""]
    return "\n".join(parts)


def render_cli(_: str | None) -> str:
    import click
    import typer

    from stablenas.cli import app

    group = typer.main.get_command(app)
    parts = []
    with click.Context(group, info_name="stablenas", terminal_width=100, max_content_width=100) as ctx:
        parts += ["```", group.get_help(ctx), "```", ""]
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            with click.Context(cmd, info_name=name, parent=ctx, terminal_width=100, max_content_width=100) as sub:
                parts += [f"### `stablenas {name}`", "", "```", cmd.get_help(sub), "```", ""]
    return "\n".join(parts)


def render_exit_codes(_: str | None) -> str:
    from stablenas import errors

    rows = ["| exit code | error | when |", "|---|---|---|"]
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.StablenasError)]
    for cls in sorted(classes, key=lambda c: (str(getattr(c, "exit_code", "")), c.__name__)):
        code = cls.exit_code if isinstance(cls.exit_code, int) else "128 + signal (130 SIGINT, 143 SIGTERM)"
        first = (inspect.getdoc(cls) or "").split("\n\n")[0]
        rows.append(f"| {code} | `{cls.__name__}` | {_cell(first)} |")
    return "\n".join(rows)


def render_spaces(_: str | None) -> str:
    from stablenas.spaces.catalog import list_spaces

    rows = ["| space | skeleton | nodes | edges | architectures | ops | description |", "|---|---|---|---|---|---|---|"]
    for s in list_spaces():
        ops = ", ".join(s.all_ops()) if s.is_uniform() else "per edge, from " + ", ".join(s.all_ops())
        rows.append(f"| `{s.name}` | {s.skeleton} | {s.n_nodes} | {s.n_edges} | {s.num_architectures():.3g} | "
                    f"{_cell(ops)} | {_cell(s.description)} |")
    return "\n".join(rows)


def render_presets(_: str | None) -> str:
    import yaml

    from stablenas.config import PRESET_DIR, list_presets

    rows = ["| preset | description |", "|---|---|"]
    for name in list_presets():
        raw = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {}
        rows.append(f"| `{name}` | {_cell(raw.get('description', ''))} |")
    return "\n".join(rows)


RENDER = {"methods": render_methods, "config": render_config, "cli": render_cli, "exit-codes": render_exit_codes,
          "spaces": render_spaces, "presets": render_presets}
