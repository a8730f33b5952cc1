"""Macro skeletons as plug-ins (see :mod:`stablenas.skeletons.base` for the interface).

Every module here registers its skeleton on import; a new skeleton is one new file (or a plug-in
module calling :func:`register_skeleton`)."""

import importlib
import pkgutil

from .base import CellGraph, SearchData, Skeleton, get_skeleton, register_skeleton, skeleton_of

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["CellGraph", "SearchData", "Skeleton", "get_skeleton", "register_skeleton", "skeleton_of"]
