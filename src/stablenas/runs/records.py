"""Run records that stay JSON: finite floats, line-per-record files, config diffs, plan files.

Every record a run writes (``metrics.jsonl``, ``status.json``, a multi-run plan) goes through
these helpers, so a non-finite number is ``null`` and a torn last line never breaks a reader.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import (
    ConfigError,
    RunDirError,
)
from ..utils import atomic_write_text

# --------------------------------------------------------------------------------------------
# JSON that stays JSON


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def dumps_record(record: Mapping) -> str:
    return json.dumps(finite_json(record), allow_nan=False)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file, stopping at the first torn or invalid line (a kill mid-write)."""
    out: list[dict] = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: cannot read ({e})") from None
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(rec, dict):
            break
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------
# config comparison


def diff_keys(a: Any, b: Any, prefix: str = "", ignore: Iterable[str] = ()) -> list[str]:
    """Dotted keys where two config trees differ (floats compared with isclose)."""
    ignore = set(ignore)
    out: set[str] = set()

    def walk(x: Any, y: Any, pre: str) -> None:
        if pre in ignore:
            return
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            for k in set(x) | set(y):
                walk(x.get(k), y.get(k), f"{pre}.{k}" if pre else str(k))
            return
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                out.add(pre)
                return
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{pre}.{i}")
            return
        if isinstance(x, float) or isinstance(y, float):
            try:
                if math.isclose(float(x), float(y)) or (math.isnan(float(x)) and math.isnan(float(y))):
                    return
            except (TypeError, ValueError):
                pass
            out.add(pre)
            return
        if x != y:
            out.add(pre)

    walk(a, b, prefix)
    return sorted(out)


# --------------------------------------------------------------------------------------------
# multi-run commands: plan files and process pools


def check_plan(path: Path, plan: dict, diff: Callable[[dict, dict], list[str]], *, what: str,
               noun: str = "different settings") -> None:
    """Refuse a plan that differs from the one a multi-run directory was started with (read-only)."""
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise RunDirError(f"{path.parent} is a file, not a directory; choose another directory")
    if not path.exists():
        if path.parent.is_dir() and any(path.parent.iterdir()):
            entries = sorted(e.name for e in os.scandir(path.parent))
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise RunDirError(f"{path.parent} is not empty ({shown}) and holds no {what}; choose a new or "
                              "empty directory")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: cannot read the {what} plan ({type(e).__name__}); restore it or use "
                          "another directory") from None
    keys = diff(old, json.loads(json.dumps(plan)))
    if keys:
        raise ConfigError(f"{path.parent} holds a {what} started with {noun} ({', '.join(keys)}); "
                          "re-run with the same arguments to resume, or choose another directory")


def write_plan(path: Path, plan: dict) -> None:
    atomic_write_text(Path(path), json.dumps(plan, indent=1) + "\n")
