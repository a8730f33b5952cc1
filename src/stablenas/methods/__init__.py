"""Search methods as composable hooks into one search loop (see ``methods.base``); each hook sees
the search as a ``SearchContext`` (``methods.context``), what a method may read and do.

Every module of this package is imported here, and each registers its methods on import (idarts
also the ``decorrelation`` discretiser): a new method is one new file, no import list to edit.
User methods come from plug-ins (``stablenas --plugin``, see :mod:`stablenas.plugins`).
"""

import importlib
import pkgutil

from .base import METHODS, Method, MethodOptions, register_method
from .context import SearchContext

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name not in ("base", "context"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Method", "MethodOptions", "SearchContext", "register_method"]
