"""User plug-ins: code outside the package that registers methods, ops, spaces, skeletons,
activations, discretisers or datasets into the registries of :mod:`stablenas.registry`.

Three ways in, all ending in :func:`load_plugin`:

- the command line: ``stablenas --plugin my_method.py search ...`` (repeatable);
- a config: ``plugins: [my_method.py, mypkg.nas_ops]`` (files resolve relative to the config
  file). The saved ``config.yaml`` of a run records them resolved (absolute paths, module
  names), so ``analyze``, ``report``, ``train`` and ``--resume`` on that run load them again;
- Python packaging: an entry point in the group ``stablenas.plugins`` (loaded once, on the first
  config load or CLI command).

A plug-in is a Python file or an importable module; importing it is all that happens, so it
registers with the usual decorators (``@register_method``, ``register_op(...)``, ...). Each is
imported at most once per process (by resolved path or module name).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from .errors import ConfigError

ENTRY_POINT_GROUP = "stablenas.plugins"
_LOADED: dict[str, ModuleType] = {}
_entry_points_loaded = False


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def resolve_plugin(spec: str, base: str | Path | None = None) -> str:
    """The identity of a plug-in spec: an absolute file path, or the module name as given."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"plugins: expected a file path or module name, got {spec!r}")
    spec = spec.strip()
    if not _is_path(spec):
        return spec
    p = Path(spec).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return str(p.resolve())


def load_plugin(spec: str, base: str | Path | None = None) -> str:
    """Import one plug-in (file or module) unless already imported; returns its resolved spec."""
    key = resolve_plugin(spec, base)
    if key in _LOADED:
        return key
    try:
        if _is_path(key):
            path = Path(key)
            if not path.is_file():
                raise ConfigError(f"plugin {spec!r}: no such file {path}")
            name = f"stablenas_plugin_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
            mspec = importlib.util.spec_from_file_location(name, path)
            if mspec is None or mspec.loader is None:
                raise ConfigError(f"plugin {spec!r}: {path} cannot be imported as Python")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[name] = module
            try:
                mspec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            module = importlib.import_module(key)
    except ConfigError:
        raise
    except ModuleNotFoundError as e:
        if not _is_path(key) and e.name and key.startswith(e.name):
            raise ConfigError(f"plugin {spec!r}: no module named {e.name!r} (give a .py path or an importable "
                              "module)") from None
        raise ConfigError(f"plugin {spec!r} failed to import: {type(e).__name__}: {e}") from None
    except Exception as e:  # the user's code raised while registering
        raise ConfigError(f"plugin {spec!r} failed to import: {type(e).__name__}: {e}") from None
    _LOADED[key] = module
    return key


def load_plugins(specs: Iterable[str] | None, base: str | Path | None = None) -> list[str]:
    """Import several plug-ins (plus the installed entry points); returns their resolved specs."""
    load_entry_points()
    if specs is None:
        return []
    if isinstance(specs, str) or not isinstance(specs, Iterable):
        raise ConfigError(f"plugins: expected a list of file paths or module names, got {specs!r}")
    return [load_plugin(s, base) for s in specs]


def load_entry_points() -> None:
    """Import every installed ``stablenas.plugins`` entry point, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise ConfigError(f"plugin entry point {ep.name!r} ({ep.value}) failed to import: "
                              f"{type(e).__name__}: {e}") from None


def loaded_plugins() -> list[str]:
    return list(_LOADED)


_SESSION: list[str] = []


def add_session_plugins(specs: Iterable[str], base: str | Path | None = None) -> list[str]:
    """Load plug-ins given for the whole process (``stablenas --plugin``); every config loaded
    afterwards records them, so runs started with them find them again."""
    for key in load_plugins(specs, base):
        if key not in _SESSION:
            _SESSION.append(key)
    return list(_SESSION)


def session_plugins() -> list[str]:
    return list(_SESSION)


__all__ = ["ENTRY_POINT_GROUP", "add_session_plugins", "load_entry_points", "load_plugin", "load_plugins",
           "loaded_plugins", "resolve_plugin", "session_plugins"]
