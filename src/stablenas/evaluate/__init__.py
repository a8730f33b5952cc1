"""Evaluation networks, published genotypes and model profiling (params / multiply-adds)."""

from ..networks.evaluation import build_eval_network
from ..networks.profile import count_macs, count_params, info
from ..networks.published import PUBLISHED, get_published, list_published
from ..skeletons.darts.networks import (
    AuxiliaryHeadCIFAR,
    AuxiliaryHeadImageNet,
    EvalCell,
    NetworkCIFAR,
    NetworkImageNet,
    drop_path,
)
from ..skeletons.nb201.networks import NB201Cell, NB201Network
from .train import TrainConfig, resolve_genotype, train_config, train_genotype

__all__ = [
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "EvalCell",
    "NB201Cell",
    "NB201Network",
    "NetworkCIFAR",
    "NetworkImageNet",
    "PUBLISHED",
    "TrainConfig",
    "build_eval_network",
    "count_macs",
    "count_params",
    "drop_path",
    "get_published",
    "info",
    "list_published",
    "resolve_genotype",
    "train_config",
    "train_genotype",
]
