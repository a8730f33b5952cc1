"""``stablenas bench --tune``: time the engine options that matter on this device and store the
choice (``supernet.engine``: ``engine-<device>.json`` in the user's cache) that searches then run.

One option at a time, from the device's defaults: the first-order search step (``Search.step`` on
fixed synthetic batches, the bench's path) with the option at its default and at the other value,
interleaved repeat by repeat; the other value is kept when the median of the paired ratios is below
``1 - MARGIN`` (a same-run ratio survives a shared, noisy machine), and the next option is timed on
top of what was kept. Options left when the time budget is spent keep their defaults.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from ..supernet import engine
from ..supernet.kernels import EngineOptions
from ..supernet.network import set_engine
from .options import BenchConfig, BenchOptions
from .steps import base_config, batches, make_search, search_iteration
from .timing import time_call

MARGIN = 0.03  # a change must buy at least 3 % to be kept (below that is noise on a shared machine)

# (option, the value tried against the device default); the order puts the largest CPU effects first
CANDIDATES: dict[str, list[tuple[str, Any]]] = {
    "cpu": [("phase_dilation", "never"), ("linear_pw", "never"), ("recompute", False),
            ("light_recompute", "never"), ("conv_avg_pool", False), ("dense_grads", False)],
    # compile_step last: its first call compiles (slow); what was timed before it is stored already
    "cuda": [("recompute", True), ("conv_avg_pool", True), ("linear_pw", "always"), ("phase_dilation", "always"),
             ("dense_grads", False), ("compile_step", True)],
}


def _timer(search, train, val) -> Callable[[EngineOptions], float]:
    step = search_iteration(search, train, val)

    def run(opts: EngineOptions) -> float:
        if search.net.engine != opts:
            set_engine(search.net, opts)
        wall, _cpu, _ = time_call(step, search.device)
        return wall
    return run


def _try(time_step: Callable[[EngineOptions], float], current: EngineOptions, tried: EngineOptions,
         bc: BenchConfig) -> tuple[list[float], list[float]]:
    """The step with ``current`` and with ``tried``, alternating: warm-up, then the timed repeats."""
    for _ in range(bc.warmup):
        time_step(current)
        time_step(tried)
    a, b = [], []
    for _ in range(bc.repeats):
        a.append(time_step(current))
        b.append(time_step(tried))
    return a, b


def run_tune(bc: BenchConfig | BenchOptions, budget_s: float | None = None, write: bool = True,
             log: Callable[[str], None] | None = None) -> dict:
    """Tune the first-order step at ``bc``'s size on ``bc``'s device (validated options: their
    :meth:`~BenchOptions.tune_config` and ``tune_budget``; else 120 s); write the device's file
    (unless ``write`` is false) and return what was timed and chosen."""
    if isinstance(bc, BenchOptions):
        budget_s = bc.tune_budget if budget_s is None else budget_s
        bc = bc.tune_config()
    budget_s = 120.0 if budget_s is None else budget_s
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    search = make_search(base_config(bc, "first"), bc)
    device = search.device
    if getattr(search.net, "engine", None) is None:
        raise ValueError(f"--tune: the {bc.space} network has no engine options to tune")
    train, val = batches(search)
    base = engine.defaults_for(device.type)
    time_step = _timer(search, train, val)
    kept: dict[str, Any] = {}
    rows: list[dict] = []
    size = {"name": bc.size, "cells": bc.cells, "channels": bc.channels, "batch": bc.batch,
            "input": "x".join(map(str, bc.input))}
    started = time.perf_counter()  # the budget is for timing options, not for building the search or its batches
    for name, value in CANDIDATES.get(device.type, CANDIDATES["cpu"]):
        if time.perf_counter() - started > budget_s:
            rows.append({"option": name, "skipped": f"time budget of {budget_s:.0f} s spent"})
            continue
        current = replace(base, **kept)
        tried = replace(current, **{name: value})
        if tried == current:
            continue
        a, b = _try(time_step, current, tried, bc)
        ratio = statistics.median(y / x for x, y in zip(a, b))
        keep = ratio < 1 - MARGIN
        if keep:
            kept[name] = value
        rows.append({"option": name, "default": getattr(current, name), "tried": value,
                     "default_s": round(statistics.median(a), 4), "tried_s": round(statistics.median(b), 4),
                     "ratio": round(ratio, 3), "kept": keep})
        log(f"  {name}={value!r}: {statistics.median(b):.4f} s vs {statistics.median(a):.4f} s "
            f"(paired ratio {ratio:.3f}){' kept' if keep else ''}")
        if write:  # after every option: a run cut short keeps what it measured
            engine.write_tuned(device, kept, {"size": size, "options": rows})
    out = {"device": str(device), "device_name": engine.device_name(device), "size": size, "repeats": bc.repeats,
           "options": rows, "changes": kept, "chosen": asdict(replace(base, **kept)),
           "seconds": round(time.perf_counter() - started, 1)}
    if write:
        out["file"] = str(engine.write_tuned(device, kept, {"size": size, "options": rows}))
    return out


def format_tune(res: dict) -> str:
    """The tuning result as a short table."""
    s = res["size"]
    lines = [f"stablenas bench --tune: {res['device']} ({res['device_name']}), {s['cells']} cells x "
             f"{s['channels']} channels, batch {s['batch']}, input {s['input']}, first-order step, "
             f"{res['repeats']} paired repeats, {res['seconds']} s",
             f"{'option':18s} {'default':>8s} {'tried':>8s} {'default s':>10s} {'tried s':>10s} {'ratio':>7s}  kept"]
    for r in res["options"]:
        if "skipped" in r:
            lines.append(f"{r['option']:18s} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['option']:18s} {r['default']!s:>8s} {r['tried']!s:>8s} {r['default_s']:>10.4f} "
                     f"{r['tried_s']:>10.4f} {r['ratio']:>7.3f}  {'yes' if r['kept'] else 'no'}")
    changes = ", ".join(f"{k}={v!r}" for k, v in res["changes"].items()) or "none (the defaults are fastest)"
    lines.append(f"changes from the {res['device'].split(':')[0]} defaults: {changes}")
    if res.get("file"):
        lines.append(f"stored: {res['file']} (searches on this device run it)")
    return "\n".join(lines)
