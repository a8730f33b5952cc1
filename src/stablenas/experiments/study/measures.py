"""What a unit's record measures of a cell: its parameter-free share, the per-epoch curves, table lookups.

One place for these definitions: the study's units, its records' readers (``studies/*/table.py``) and
the tests compute the share and the curves the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ...config import config_from_dict
from ...genotype import Genotype

__all__ = ["curves", "lookup", "lookup_test_acc", "param_free_share"]


def param_free_share(genotype: Genotype, cell_type: str | None = "normal") -> float | None:
    """Share of parameter-free ops (skip, pooling, none, noise) in one cell (``None``: all cells);
    ``None`` where the skeleton does not define the share (the recurrent cell)."""
    from ...spaces.ops import is_parameter_free

    if not genotype.skeleton.has_param_free_share:
        return None
    types = genotype.cell_types()
    ct = cell_type if cell_type in types else None
    ops = genotype.ops(ct)
    return sum(map(is_parameter_free, ops)) / len(ops) if ops else None


def lookup_test_acc(cfg_dict: dict, genotype: Genotype) -> float | None:
    """The space's ground-truth test accuracy of ``genotype`` (S5 table, NAS-Bench-201), if it has one."""
    return lookup(cfg_dict, genotype).get("test_acc")


def lookup(cfg_dict: dict, genotype: Genotype) -> dict:
    """What the space's lookup adds to a record of ``genotype`` (``test_acc``, ``test_regret``, ...)."""
    from types import SimpleNamespace

    from ...registry import LOOKUPS
    from ...spaces.catalog import get_space

    found = LOOKUPS.get(cfg_dict["space"])
    if found is None:
        return {}
    cfg = config_from_dict(cfg_dict)
    record: dict = {"genotype": genotype.to_dict()}
    found(SimpleNamespace(cfg=cfg, space=get_space(cfg.space), log=lambda _m: None, notes=set()), record)
    return record


def curves(metrics: Sequence[dict]) -> dict[str, list]:
    """Per-epoch series of a search: normal-cell and all-cells parameter-free share of the cell derived
    at that epoch, lambda_max (where measured), test regret (spaces with a lookup), train/val accuracy."""
    out: dict[str, list] = {"epoch": [], "share_normal": [], "share_all": [], "lambda_max": [],
                            "test_regret": [], "train_acc": [], "val_acc": []}
    for r in metrics:
        g = Genotype.from_dict(r["genotype"]) if r.get("genotype") else None
        out["epoch"].append(int(r["epoch"]))
        out["share_normal"].append(param_free_share(g) if g else None)
        out["share_all"].append(param_free_share(g, None) if g else None)
        lam = r.get("lambda_max")
        out["lambda_max"].append(lam if isinstance(lam, (int, float)) and math.isfinite(lam) else None)
        out["test_regret"].append(r.get("test_regret"))
        out["train_acc"].append(r.get("train_acc"))
        out["val_acc"].append(r.get("val_acc"))
    return out
