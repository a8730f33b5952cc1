"""Building a genotype's evaluation network: the dispatch to the networks its skeleton registers in
``EVAL_NETWORKS`` (``skeletons.darts.networks``: ``cifar``, ``imagenet``; ``skeletons.nb201.networks``:
``nb201``)."""

from __future__ import annotations

from torch import nn

from ..genotype import Genotype
from ..registry import EVAL_NETWORKS

__all__ = ["build_eval_network"]


def build_eval_network(genotype: Genotype | str, network: str = "cifar", **sizes) -> nn.Module:
    """Build the evaluation network for ``genotype`` (a Genotype, a published name or an NB201 arch).

    ``network`` is one of the genotype's skeleton's evaluation networks (darts: ``"cifar"``,
    ``"imagenet"``; nb201: ``"nb201"``, which a NAS-Bench-201 genotype always gets, whatever
    ``network`` says, as it has no other) or ``"auto"`` for the skeleton's default. ``sizes`` are
    passed to the constructor (``C``, ``layers``/``N``, ``num_classes``, ``auxiliary``,
    ``in_channels``...). For ``nb201``, ``layers`` is accepted as an alias of ``N``.
    """
    if isinstance(genotype, str):
        if genotype.startswith("|"):
            genotype = Genotype.from_dict({"space": "nb201", "arch": genotype})
        else:
            from .published import get_published

            genotype = get_published(genotype)
    name = genotype.skeleton.resolve_eval_network(network)
    return EVAL_NETWORKS[name](genotype, **sizes)
