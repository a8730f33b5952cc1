"""stablenas: stable differentiable neural architecture search.

Python API (everything the CLI does)::

    import stablenas as sn
    cfg = sn.load_config("quickstart", overrides=["optim.epochs=2"])
    result = sn.run_search(cfg, out_dir="runs/quick")
    print(result.genotype, result.metrics[-1]["val_acc"])

The names below load on first use (PEP 562): ``import stablenas`` and the CLI's help and listings
need no torch, which takes seconds to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ConfigError, SearchConfig, config_from_dict, list_presets, load_config
    from .genotype import Genotype, GenotypeError, derive
    from .methods import METHODS, Method, MethodOptions, SearchContext, register_method
    from .spaces.catalog import SPACES, SearchSpace, get_space, list_spaces, register_space
    from .spaces.ops import OPS, register_op
    from .supernet.arch import ArchParams, register_activation
    from .supernet.mix import Mix
    from .supernet.network import build_supernet

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    **dict.fromkeys(("ConfigError", "SearchConfig", "config_from_dict", "list_presets", "load_config"), "config"),
    **dict.fromkeys(("Genotype", "GenotypeError", "derive"), "genotype"),
    **dict.fromkeys(("METHODS", "Method", "MethodOptions", "SearchContext", "register_method"), "methods"),
    **dict.fromkeys(("OPS", "register_op"), "spaces.ops"),
    **dict.fromkeys(("SPACES", "SearchSpace", "get_space", "list_spaces", "register_space"), "spaces.catalog"),
    **dict.fromkeys(("ArchParams", "register_activation"), "supernet.arch"),
    "Mix": "supernet.mix",
    "build_supernet": "supernet.network",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stablenas' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def run_search(config, out_dir=None, *, resume: bool = False, progress=None, log=None, loggers=None):
    """Build and run a search from a ``SearchConfig``; returns a ``SearchResult``. ``loggers``:
    live logging (``"auto"``, ``"tensorboard"``, ``"wandb"``, ``"mlflow"``; see stablenas.loggers)."""
    from .search.loop import run_search as _run

    return _run(config, out_dir, resume=resume, progress=progress, log=log, loggers=loggers)


def build_network(genotype, network="auto", **sizes):
    """The evaluation network of a genotype (a Genotype, genotype.json, run directory, NB201 arch string
    or published name): ``network`` auto | cifar | imagenet | nb201 | ptb (recurrent), ``sizes`` its
    constructor's (``C``, ``layers``, ``num_classes``, ``auxiliary``, ``in_channels``; ptb: ``ntoken``,
    ``nhid``). ``stablenas export`` writes it as a file that runs without stablenas."""
    from .export import build_network as _build

    return _build(genotype, network, **sizes)


def load_run(path):
    """Read a run directory: config, metrics and genotype."""
    from .analysis.run import load_run as _load

    return _load(path)


__all__ = [
    "ArchParams", "ConfigError", "Genotype", "GenotypeError", "METHODS", "Method", "MethodOptions", "Mix", "OPS",
    "SearchContext",
    "SPACES", "SearchConfig", "SearchSpace", "build_network", "build_supernet", "config_from_dict", "derive",
    "get_space", "list_presets", "list_spaces", "load_config", "load_run", "register_activation", "register_method",
    "register_op", "register_space", "run_search",
]
