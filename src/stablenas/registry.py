"""One registry type for everything that is looked up by name.

Skeletons, spaces, ops, activations, discretisers, methods, datasets and ground-truth lookups are
all :class:`Registry` instances defined here, so every one follows the same rules (modelled on
timm's model registry):

- registration by decorator (``@METHODS.register()``) or call (``OPS.register("noise", spec)``);
- ``list(pattern)``: sorted names matching a shell pattern (``METHODS.list("sdarts*")``);
- one duplicate policy: registering a *different* object under a taken name (or alias) is an
  error, so a plug-in cannot silently replace a built-in; re-registering the very same object is
  a no-op (a module imported twice), and ``replace=True`` states an intended override;
- one error for a miss: ``unknown method 'toy'; available: darts-es, gdas, ...``
  (:class:`UnknownNameError`, a ``ConfigError`` and a ``KeyError``).

Built-ins are registered by the modules that define them. A registry names the module that holds
its built-ins (``builtins=``) and imports it on first use, so a consumer such as the config
validator needs only this module: it does not import methods, data or the supernet (no import
cycles), and a lookup never misses a built-in because nobody imported its module yet.

This module depends on nothing in the package but :mod:`stablenas.errors`.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, KeyError):
    """A name no registry entry carries; the message lists what is available."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(ConfigError):
    """A name (or alias) already taken by a different object."""


class Registry(Mapping[str, T], Generic[T]):
    """Name -> object, with aliases, a normaliser, lazy built-ins and one set of rules.

    ``kind`` names the thing in messages (``"method"``, ``"search space"``). ``normalize`` maps a
    user's spelling to the key (datasets: case and ``_`` vs ``-``); ``key`` derives the name from
    the object when none is given (methods: ``cls.name``).
    """

    def __init__(self, kind: str, *, builtins: str | tuple[str, ...] = (),
                 normalize: Callable[[str], str] | None = None,
                 key: Callable[[Any], str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._builtins = (builtins,) if isinstance(builtins, str) else tuple(builtins)
        self._loaded = not self._builtins
        self._normalize = normalize or (lambda s: s)
        self._key = key

    # -- registration ------------------------------------------------------------------------
    def register(self, name: str | T | None = None, obj: T | None = None, *, aliases: tuple[str, ...] = (),
                 replace: bool = False) -> Any:
        """``register(name, obj)``, ``register(obj)`` (name from ``key``) or as a decorator:
        ``@register()`` / ``@register("name")``. Returns ``obj`` (the decorated thing)."""
        if obj is None and name is not None and not isinstance(name, str):
            name, obj = None, name
        if obj is None:
            def deco(o: T) -> T:
                self._add(name, o, aliases, replace)  # type: ignore[arg-type]
                return o
            return deco
        self._add(name, obj, aliases, replace)  # type: ignore[arg-type]
        return obj

    def _add(self, name: str | None, obj: T, aliases: tuple[str, ...], replace: bool) -> None:
        if name is None:
            if self._key is None:
                raise TypeError(f"{self.kind} registry: a name is required")
            name = self._key(obj)
        if not name:
            raise DuplicateNameError(f"{self.kind} {obj!r} has no name")
        key = self._normalize(name)
        old = self._items.get(key)
        taken = old is not None and old is not obj and not replace
        if taken or (key in self._aliases and not replace):
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered")
        for a in aliases:
            ak = self._normalize(a)
            if (ak in self._items or self._aliases.get(ak, key) != key) and not replace:
                raise DuplicateNameError(f"{self.kind} alias {a!r} is already registered")
        self._items[key] = obj
        for a in aliases:
            self._aliases[self._normalize(a)] = key

    def unregister(self, name: str) -> T:
        """Remove an entry (tests, plug-in reloads); unknown names raise the usual error."""
        key = self.canonical(name)
        for a in [a for a, k in self._aliases.items() if k == key]:
            del self._aliases[a]
        return self._items.pop(key)

    # -- lookup -------------------------------------------------------------------------------
    def _ensure(self) -> None:
        if not self._loaded:
            self._loaded = True  # before importing: the modules register into this registry
            for mod in self._builtins:
                importlib.import_module(mod)

    def canonical(self, name: str) -> str:
        """The registered key for ``name`` (after normalising and resolving aliases)."""
        self._ensure()
        key = self._normalize(name) if isinstance(name, str) else name
        key = self._aliases.get(key, key)
        if key not in self._items:
            raise UnknownNameError(self.unknown_message(name))
        return key

    def unknown_message(self, name: object) -> str:
        return f"unknown {self.kind} {name!r}; available: {', '.join(self.list()) or '(none)'}"

    def __getitem__(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        self._ensure()
        if not isinstance(name, str):
            return False
        key = self._normalize(name)
        return self._aliases.get(key, key) in self._items

    def __iter__(self) -> Iterator[str]:
        self._ensure()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._ensure()
        return len(self._items)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching the shell pattern ``pattern``."""
        self._ensure()
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._items)} entries)"


# ------------------------------------------------------------------------------------------------
# the project's registries (filled by the modules named in ``builtins`` and by plug-ins)

def _dataset_key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


SKELETONS: Registry[Any] = Registry("skeleton", builtins="stablenas.skeletons.builtin", key=lambda s: s.name)
# the skeleton of genotypes that neither name a registered space nor are claimed by a skeleton
DEFAULT_SKELETON = "darts"
OPS: Registry[Any] = Registry("op", builtins=("stablenas.spaces.ops", "stablenas.skeletons.rnn.space"))
SPACES: Registry[Any] = Registry("search space", key=lambda s: s.name,
                                  builtins=("stablenas.spaces.catalog", "stablenas.skeletons.rnn.space"))
ACTIVATIONS: Registry[Any] = Registry("activation", builtins="stablenas.supernet.arch")
DISCRETIZERS: Registry[Any] = Registry("discretizer", builtins=("stablenas.search.discretize",
                                                                 "stablenas.methods"))
METHODS: Registry[Any] = Registry("method", builtins="stablenas.methods", key=lambda c: c.name)
DATASETS: Registry[Any] = Registry("dataset", builtins="stablenas.data.datasets", normalize=_dataset_key)
# evaluation networks a found genotype is trained in (``stablenas train`` / ``info``); each
# skeleton lists the ones that fit its genotypes
EVAL_NETWORKS: Registry[Any] = Registry("evaluation network", builtins="stablenas.skeletons.builtin")
# per-epoch ground truth of a derived genotype, by space name (the S5 table, NAS-Bench-201)
LOOKUPS: Registry[Any] = Registry("ground-truth lookup", builtins="stablenas.evaluate.lookup")

__all__ = ["ACTIVATIONS", "DATASETS", "DEFAULT_SKELETON", "DISCRETIZERS", "DuplicateNameError", "EVAL_NETWORKS",
           "LOOKUPS", "METHODS", "OPS", "Registry", "SKELETONS", "SPACES", "UnknownNameError"]
