"""Finished units on disk: their ``result.json`` under a study directory, and the small records kept in git.

A records directory (``--records``) holds per unit ``config.yaml``, ``metrics.jsonl``, ``genotype.json``
and ``result.json``, no checkpoints; a record stands in for a unit only when it was made with the
unit's settings (runtime keys such as the device and thread count aside).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from .protocol import StudyProtocol
from .units import Unit, study_units

__all__ = ["export_record", "import_record", "load_results", "record_differs", "recorded_results"]

RECORD_FILES = ("config.yaml", "metrics.jsonl", "genotype.json")  # + result.json, written last
SEARCH_RUNTIME_KEYS = ("device", "threads", "description")
TRAIN_RUNTIME_KEYS = ("device", "threads")


def record_differs(result: dict, unit: Unit) -> list[str]:
    """The settings in which a finished unit's ``result`` differs from ``unit`` (empty: it stands in for it)."""
    from ...runs.records import diff_keys

    keys = [f"search.{k}" for k in diff_keys(result.get("search_config") or {}, unit.search)
            if k.split(".")[0] not in SEARCH_RUNTIME_KEYS]
    if (result.get("train_config") is None) != (unit.train is None):
        keys.append("train")
    elif unit.train is not None:
        keys += [f"train.{k}" for k in diff_keys(result["train_config"], unit.train)
                 if k.split(".")[0] not in TRAIN_RUNTIME_KEYS]
    if sorted(result.get("test_acc_at_epoch") or {}, key=int) != [str(e) for e in unit.at_epochs]:
        keys.append("retrain.at_epochs")
    return keys


def import_record(records: Path, unit: Unit, unit_dir: Path, log: Callable[[str], None]) -> bool:
    """Copy a finished unit's record into ``unit_dir`` when it matches the unit's configs; a record
    it leaves out (unreadable, made with other settings) gets one ``log`` line naming it."""
    src = records / unit.name
    rf = src / "result.json"
    if not rf.exists():
        return False
    try:
        result = json.loads(rf.read_text())
    except (OSError, ValueError):
        log(f"study: record {rf} is unreadable; ignored")
        return False
    bad = record_differs(result, unit)
    if bad:
        log(f"study: record {src} was made with other settings ({', '.join(bad[:4])}); ignored")
        return False
    from ...utils import atomic_write_text

    (unit_dir / "search").mkdir(parents=True, exist_ok=True)
    for f in RECORD_FILES:
        if (src / f).exists():
            shutil.copyfile(src / f, unit_dir / "search" / f)
    atomic_write_text(unit_dir / "result.json", rf.read_text())
    return True


def export_record(records: Path, unit_dir: Path, name: str) -> None:
    """The unit's small files into ``records/<name>/`` (result.json last: a record is whole once it exists)."""
    from ...utils import atomic_write_text

    dst = records / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in RECORD_FILES:
        p = unit_dir / "search" / f
        if p.exists():
            atomic_write_text(dst / f, p.read_text())
    atomic_write_text(dst / "result.json", (unit_dir / "result.json").read_text())


def load_results(protocol: StudyProtocol, out_dir: str | Path) -> list[dict]:
    """The finished units' result records under ``out_dir``, in queue order."""
    out = Path(out_dir)
    res = []
    for u in study_units(protocol):
        f = out / "runs" / u.name / "result.json"
        if f.exists():
            r = json.loads(f.read_text())
            r.update(seed=u.seed, space=u.space, method=u.method)
            res.append(r)
    return res


def recorded_results(protocol: StudyProtocol, records: str | Path) -> list[dict]:
    """The units' records under ``records`` that a study would import (:func:`import_record`'s
    test: readable, made with the unit's settings), in queue order."""
    res = []
    for u in study_units(protocol):
        f = Path(records) / u.name / "result.json"
        try:
            r = json.loads(f.read_text()) if f.is_file() else None
        except (OSError, ValueError):
            r = None
        if r is not None and not record_differs(r, u):
            r.update(seed=u.seed, space=u.space, method=u.method)
            res.append(r)
    return res
