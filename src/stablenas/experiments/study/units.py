"""The study's units: one (seed, space, method) each, planned from the protocol and run start to end.

:func:`run_unit` is a top-level function because it runs in spawned processes and Ray workers; it
resumes whatever part of its unit (search, discretisation drop, retrainings) a kill interrupted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import config_from_dict, load_config
from ...errors import ConfigError
from ...genotype import Genotype
from .measures import curves, lookup, lookup_test_acc, param_free_share
from .protocol import StudyProtocol

__all__ = ["Unit", "run_unit", "study_units"]

UnitArgs = tuple[str, dict, dict | None, str, int | None, int | None, tuple[int, ...]]  # what run_unit receives


@dataclass
class Unit:
    """One (seed, space, method): its search config and (optional) retraining config, as dicts."""

    name: str
    seed: int
    space: str
    method: str
    search: dict
    train: dict | None  # None: the space's ground-truth lookup gives the test accuracy
    at_epochs: tuple[int, ...] = ()  # search epochs whose derived cells are retrained too

    def key(self) -> str:
        return self.name


def _has_lookup(space: str) -> bool:
    from ...registry import LOOKUPS

    return LOOKUPS.get(space) is not None


def _search_config(protocol: StudyProtocol, space: str, seed: int, sets: list[str]) -> dict:
    """One unit's search config: the base, the protocol's overrides, the method's, then the tracker."""
    cfg = load_config(protocol.base, [*protocol.set, f"space={space}", *protocol.space_set.get(space, []),
                                      f"seed={seed}", *sets])
    d = cfg.to_dict()
    if protocol.track:
        d["methods"] = [*d["methods"], dict(protocol.track)]
        d = config_from_dict(d).to_dict()
    return d


def _train_config(protocol: StudyProtocol, space: str, search: dict, where: str) -> dict | None:
    """The retraining config of a unit in ``space``; ``None`` where its lookup table gives the test accuracy."""
    from ...evaluate.train import train_config

    rt = protocol.retrain
    if rt is None or not (space in rt.spaces if rt.spaces is not None else not _has_lookup(space)):
        return None
    try:
        tc = train_config(rt.preset, dict(rt.set), dataset=search["data"]["dataset"],
                          data_root=search["data"].get("root"))
    except ConfigError as e:
        raise ConfigError(f"{where}: retrain: {e}") from None
    return tc.model_dump(mode="json")


def study_units(protocol: StudyProtocol) -> list[Unit]:
    """Every unit, validated, in queue order: seed-major, then space, then method (protocol order)."""
    units = []
    rt = protocol.retrain
    for seed in protocol.seeds:
        for space in protocol.spaces:
            for method, sets in protocol.methods.items():
                where = f"protocol {protocol.name}, method {method}, space {space}"
                try:
                    d = _search_config(protocol, space, seed, sets)
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
                train = _train_config(protocol, space, d, where)
                at = ()
                if train is not None and (rt.at_epochs_methods is None or method in rt.at_epochs_methods):
                    at = tuple(e for e in rt.at_epochs if e < d["optim"]["epochs"])  # the last: the unit's own
                units.append(Unit(f"{space}-{method}-seed{seed}", seed, space, method, d, train, at))
    return units


def run_unit(args: UnitArgs) -> dict:
    """Search (resumed if interrupted), discretisation drop, retraining (resumed) -> ``result.json``.

    A search that diverges is a result, not a crash of the study: the unit returns ``{"failed": why}``
    (also written to ``failed.json``), the study goes on, and the next run of the study tries it again."""
    from ...errors import DivergedError

    try:
        return _run_unit(args)
    except DivergedError as e:
        from ...utils import atomic_write_text

        msg = " ".join(str(e).split())
        atomic_write_text(Path(args[3]) / "failed.json", json.dumps({"name": args[0], "failed": msg}) + "\n")
        return {"name": args[0], "failed": msg}


def _run_unit(args: UnitArgs) -> dict:
    name, search_cfg, train_cfg, unit_dir, threads, disc_batches, at_epochs = args
    import torch

    from ...analysis.run import load_run
    from ...utils import atomic_write_text

    if threads:
        torch.set_num_threads(threads)
    unit = Path(unit_dir)
    done = unit / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    _search(search_cfg, unit / "search")
    run = load_run(unit / "search")
    result = _search_result(name, search_cfg, train_cfg, run, _discretization(unit, disc_batches))
    if train_cfg is not None:
        tr = _retrain(run.genotype, train_cfg, unit / "train")
        result.update(test_acc=tr["test_acc"], test_source="retrained", params=tr.get("params"),
                      train_seconds=tr.get("seconds"))
        if at_epochs:
            result["test_acc_at_epoch"] = _retrain_at_epochs(run.metrics, at_epochs, train_cfg, unit)
    else:
        result.update(test_acc=lookup_test_acc(search_cfg, run.genotype), test_source="lookup", params=None,
                      train_seconds=0.0)
    # of the returned cell (DARTS-ES returns an earlier epoch's, RS-ws its best sample), not the last epoch's
    result["test_regret_final"] = lookup(search_cfg, run.genotype).get("test_regret")
    result["wall_seconds_this_call"] = round(time.perf_counter() - t0, 3)
    atomic_write_text(done, json.dumps(result, indent=1) + "\n")
    return result


def _search(search_cfg: dict, sdir: Path) -> None:
    """The unit's search, resumed from its checkpoint; nothing once it has written its genotype."""
    from ...runs.directory import RunDir
    from ...search.loop import Search

    if (sdir / "genotype.json").exists():
        return
    cfg = config_from_dict(search_cfg)
    resume = RunDir(sdir, kind="search", config_name="config.yaml").is_run()
    Search(cfg, sdir, resume=resume, progress=False, log=lambda _m: None, loggers="none").run()


def _discretization(unit: Path, disc_batches: int | None) -> dict:
    """The accuracy drop at discretisation (robust-darts Sec. 4.2), computed once into ``discretization.json``."""
    from ...analysis.analyze import load_search
    from ...analysis.diagnostics import discretization_drop
    from ...utils import atomic_write_text

    disc_file = unit / "discretization.json"
    if disc_file.exists():
        return json.loads(disc_file.read_text())
    search = load_search(unit / "search")
    current = search.genotype()  # once: iDARTS's decorrelation rule is a pass over held-out images
    disc = discretization_drop(search, current, max_batches=disc_batches)
    disc.pop("genotype", None)
    # the same with batch statistics: the running ones were gathered under the op mixture, and a
    # discretised cell's activations have other statistics (eval-mode drops of 63-74 points on S5)
    batch_bn = discretization_drop(search, current, max_batches=disc_batches, bn="train")
    disc["batch_bn"] = {k: v for k, v in batch_bn.items() if k != "genotype"}
    atomic_write_text(disc_file, json.dumps(disc) + "\n")
    return disc


def _search_result(name: str, search_cfg: dict, train_cfg: dict | None, run: Any, disc: dict) -> dict[str, Any]:
    """The search half of ``result.json``: configs, returned cell, seconds, shares, drop and curves."""
    genotype = run.genotype
    result: dict[str, Any] = {
        "name": name,
        "search_config": search_cfg,
        "train_config": train_cfg,
        "genotype": genotype.to_dict(),
        "epochs": len(run.metrics),
        "search_seconds": round(sum(m.get("seconds", 0.0) for m in run.metrics), 3),
        "track_seconds": round(sum(m.get("lambda_seconds") or 0.0 for m in run.metrics), 3),
        "share_normal": param_free_share(genotype),
        "share_all": param_free_share(genotype, None),
        "supernet_val_acc": run.metrics[-1].get("val_acc") if run.metrics else None,
        "discretization": disc,
        "curves": curves(run.metrics),
    }
    lam = [v for v in result["curves"]["lambda_max"] if v is not None]
    result["lambda_max_final"] = lam[-1] if lam else None
    return result


def _retrain(genotype: Genotype, train_cfg: dict, tdir: Path) -> dict:
    """``genotype`` trained from scratch with the unit's budget in ``tdir``, resumed from its checkpoint."""
    from ...evaluate.train import TrainConfig, train_genotype
    from ...runs.directory import RunDir

    resume = RunDir(tdir, kind="train", config_name="train.json").is_run()
    return train_genotype(genotype, TrainConfig.model_validate(train_cfg), tdir, resume=resume, progress=False,
                          log=lambda _m: None, loggers="none")


def _retrain_at_epochs(metrics: Sequence[dict], epochs: Sequence[int], train_cfg: dict, unit: Path) -> dict:
    """Test accuracy of the cell derived at each search epoch, retrained with the unit's budget (each its own
    resumable ``train-epochE`` directory); ``None`` where that epoch recorded no cell."""
    cells = {int(r["epoch"]): r.get("genotype") for r in metrics}
    out: dict[str, float | None] = {}
    for e in epochs:
        if not cells.get(e):
            out[str(e)] = None
            continue
        out[str(e)] = _retrain(Genotype.from_dict(cells[e]), train_cfg, unit / f"train-epoch{e}")["test_acc"]
    return out
