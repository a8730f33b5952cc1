"""Macro skeletons as plug-ins (see :mod:`stablenas.skeletons.base` for the interface).

A built-in skeleton is a sub-package holding all of its code (``darts/``, ``nb201/``, ``rnn/``: see
their docstrings); :mod:`.builtin` imports each so it registers itself, and the skeleton registry
loads that module on first use. A new skeleton is one new sub-package plus one line there (or a
plug-in module calling :func:`register_skeleton`). Importing this package alone imports no
skeleton, so a skeleton's space module can register its ops and spaces early without a cycle."""

from .base import CellGraph, SearchData, Skeleton, get_skeleton, register_skeleton, skeleton_of

__all__ = ["CellGraph", "SearchData", "Skeleton", "get_skeleton", "register_skeleton", "skeleton_of"]
