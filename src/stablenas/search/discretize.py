"""Discretisation as a pluggable step: value-based rules here; iDARTS's decorrelation rule and
others register into ``DISCRETIZERS`` with the same signature ``(search) -> Genotype``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..genotype import Genotype
from ..registry import DISCRETIZERS
from ..skeletons.darts.genotype import derive_darts

if TYPE_CHECKING:
    from .loop import Search

Discretizer = Callable[["Search"], Genotype]


def register_discretizer(name: str, fn: Discretizer) -> None:
    DISCRETIZERS.register(name, fn)


@torch.no_grad()
def _default(search: Search) -> Genotype:
    """The space's skeleton's own rule (DARTS: top-2 edges per node; NB201: argmax per edge)."""
    return search.skeleton.derive(search.space, search.arch.op_weights(), search.arch.edge_weights())


@torch.no_grad()
def _darts(search: Search) -> Genotype:
    return derive_darts(search.space, search.arch.op_weights(), search.arch.edge_weights())


register_discretizer("default", _default)
register_discretizer("darts", _darts)
