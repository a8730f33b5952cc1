"""Progress bars for long work (search epochs, training, ``analyze``'s Lanczos and landscape, the
stages of ``sweep`` and ``s5-table``): tqdm on stderr, one rule for when they show.

A bar only reports; it never touches a random generator or a tensor, so results are the same with
or without it (tests/analysis/test_report.py compares ``analyze`` with the bars on and off).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def progress_enabled(flag: bool | None = None) -> bool:
    """``--progress/--no-progress`` when given; otherwise on when stderr is a terminal and the
    environment is not CI (``CI`` set, as CI services do), so logs and pipes get no bar."""
    if flag is not None:
        return bool(flag)
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def bar(total: int | None, desc: str, enabled: bool, *, unit: str = "it", initial: int = 0) -> Any:
    """A tqdm bar on stderr (a do-nothing one when not ``enabled``); use as a context manager."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, leave=False,
                file=sys.stderr, dynamic_ncols=True)


def write(msg: str) -> None:
    """A log line on stderr that a live bar does not break: tqdm clears its bars, prints the line and
    redraws them below it (a plain print lands inside the bar's line). The default log of searches
    and trainings."""
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)
    sys.stderr.flush()


__all__ = ["bar", "progress_enabled", "write"]
