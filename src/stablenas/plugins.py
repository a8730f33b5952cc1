"""User plug-ins: code outside the package that registers methods, ops, spaces, skeletons,
activations, discretisers or datasets into the registries of :mod:`stablenas.registry`.

Three ways in, all ending in :func:`load_plugin`:

- the command line: ``stablenas --plugin my_method.py search ...`` (repeatable);
- a config: ``plugins: [my_method.py, mypkg.nas_ops]`` (files resolve relative to the config
  file). The saved ``config.yaml`` of a run records them resolved (absolute paths, module
  names), so ``search --resume`` of that run loads them again;
- Python packaging: an entry point in the group ``stablenas.plugins`` (loaded once, on the first
  config load or CLI command).

A plug-in is a Python file or an importable module; importing it is all that happens, so it
registers with the usual decorators (``@register_method``, ``register_op(...)``, ...). Each is
imported at most once per process (by resolved path or module name). Any failure of the import,
``SystemExit`` and ``KeyboardInterrupt`` included, is a :class:`PluginError` naming the plug-in.

A run directory is data that may come from anyone, and importing a plug-in runs its code. So the
commands that read a run (``show``, ``report``, ``info``, ``analyze``, ``train``) call
:func:`trust_run_plugins` with ``False`` unless the user passes ``--trust-plugins``: the plug-ins
the run's config names are then imported only when already loaded (``--plugin``, an entry point),
and :func:`run_plugins` says on stderr which it left out. The Python API trusts by default (sweeps
and studies read back runs they wrote themselves).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from .errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "stablenas.plugins"
_LOADED: dict[str, ModuleType] = {}
_entry_points_loaded = False
_TRUST_RUNS = True  # import the plug-ins a run directory names (see trust_run_plugins)
_DECLINED: dict[str, str] = {}  # plug-in -> the run that named it, not imported


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
                raise PluginError(f"plugin {spec!r}: no such file {path}")
            name = f"stablenas_plugin_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
            mspec = importlib.util.spec_from_file_location(name, path)
            if mspec is None or mspec.loader is None:
                raise PluginError(f"plugin {spec!r}: {path} cannot be imported as Python")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[name] = module
            try:
                mspec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            module = importlib.import_module(key)
    except PluginError:
        raise
    except ModuleNotFoundError as e:
        if not _is_path(key) and e.name and key.startswith(e.name):
            raise PluginError(f"plugin {spec!r}: no module named {e.name!r} (give a .py path or an importable "
                              "module)") from None
        raise PluginError(f"plugin {spec!r} failed to import: {_what(e)}") from None
    except BaseException as e:  # noqa: BLE001 - the user's code raised (or exited) while registering
        raise PluginError(f"plugin {spec!r} failed to import: {_what(e)}") from None
    _LOADED[key] = module
    return key


def _what(e: BaseException) -> str:
    """``SystemExit: 3``, ``KeyboardInterrupt``, ``RuntimeError: boom``: the exception in a few words."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _check_list(specs: object) -> None:
    if isinstance(specs, str) or not isinstance(specs, Iterable):
        raise ConfigError(f"plugins: expected a list of file paths or module names, got {specs!r}")


def load_plugins(specs: Iterable[str] | None, base: str | Path | None = None) -> list[str]:
    """Import several plug-ins (plus the installed entry points); returns their resolved specs.
    Plug-ins that :func:`run_plugins` declined in this command are left out."""
    load_entry_points()
    if specs is None:
        return []
    _check_list(specs)
    return [load_plugin(s, base) for s in specs if resolve_plugin(s, base) not in _DECLINED]


def trust_run_plugins(trust: bool) -> None:
    """Whether :func:`run_plugins` imports what a run directory names (``True``) or only what is
    already loaded (``False``: the reading commands without ``--trust-plugins``). Resets the record of
    declined plug-ins."""
    global _TRUST_RUNS
    _TRUST_RUNS = bool(trust)
    _DECLINED.clear()


def run_plugins(specs: Iterable[str] | None, run: str | Path) -> list[str]:
    """The plug-ins a run directory's saved config names (resolved when it was written): imported
    when trusted (see :func:`trust_run_plugins`) or already loaded; the others are left out, with one
    ``note:`` line on stderr naming them. Returns the loaded ones."""
    load_entry_points()
    if not specs:
        return []
    _check_list(specs)
    loaded, declined = [], []
    for s in specs:
        key = resolve_plugin(s)
        if _TRUST_RUNS or key in _LOADED or (not _is_path(key) and key in sys.modules):
            loaded.append(load_plugin(key))
        elif key not in _DECLINED:
            declined.append(key)
            _DECLINED[key] = str(run)
    if declined:
        print(f"note: {run} names plug-in(s) {', '.join(declined)}, not loaded; pass --trust-plugins to "
              "load them", file=sys.stderr, flush=True)
    return loaded


def declined_plugins() -> list[str]:
    """The plug-ins :func:`run_plugins` left out in this command."""
    return list(_DECLINED)


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
        except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt of its code too
            raise PluginError(f"plugin entry point {ep.name!r} ({ep.value}) failed to import: {_what(e)}") from None


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


__all__ = ["ENTRY_POINT_GROUP", "add_session_plugins", "declined_plugins", "load_entry_points", "load_plugin",
           "load_plugins", "loaded_plugins", "resolve_plugin", "run_plugins", "session_plugins", "trust_run_plugins"]
