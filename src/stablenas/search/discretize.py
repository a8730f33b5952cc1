"""Discretisation as a pluggable step: value-based rules here; iDARTS's decorrelation rule and
others register into ``DISCRETIZERS`` with the same signature ``(search) -> Genotype``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..genotype import Genotype, derive_darts, derive_nb201
from ..registry import DISCRETIZERS

if TYPE_CHECKING:
    from .loop import Search

Discretizer = Callable[["Search"], Genotype]


def register_discretizer(name: str, fn: Discretizer) -> None:
    DISCRETIZERS.register(name, fn)


@torch.no_grad()
def _default(search: Search) -> Genotype:
    arch = search.arch
    if search.space.skeleton == "nb201":
        return derive_nb201(search.space, arch.op_weights(), arch.edge_weights())
    return derive_darts(search.space, arch.op_weights(), arch.edge_weights())


@torch.no_grad()
def _darts(search: Search) -> Genotype:
    return derive_darts(search.space, search.arch.op_weights(), search.arch.edge_weights())


register_discretizer("default", _default)
register_discretizer("darts", _darts)
