"""One bench run: the measurements one after another (first order, second order, each method preset,
lambda_max and the exact Hessian), each from the same start weights and alpha with only its own
models and graphs alive, then peak memory (subprocesses) and scaling; the result is the JSON record
``format_table`` summarises."""

from __future__ import annotations

import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from ..utils import release_heap
from .hessian import curvature_record, time_lambda_max
from .memory import memory_record
from .options import BenchConfig, BenchOptions
from .scaling import scaling
from .steps import (
    Batch,
    base_config,
    batches,
    make_search,
    method_presets,
    plain_batch,
    plain_model,
    preset_config,
    search_iteration,
)
from .timing import Job, Measurements, load1, ratio


def run_bench(bc: BenchConfig | list[BenchConfig] | BenchOptions, log: Callable[[str], None] | None = None) -> dict:
    """Run every measurement of ``bc``; returns the JSON-able result (see the package docstring).
    Several configurations (sizes, or the sizes of validated :class:`BenchOptions`) run one after
    the other: ``{"sizes": {size: result}}``."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if isinstance(bc, BenchOptions):
        bc = bc.configs()
    if isinstance(bc, list):
        if len(bc) == 1:
            return run_bench(bc[0], log)
        return {"sizes": {b.size: run_bench(b, log) for b in bc}}
    threads = torch.get_num_threads()
    try:
        if bc.threads:
            torch.set_num_threads(bc.threads)
        return _run(bc, log)
    finally:
        torch.set_num_threads(threads)


def _run(bc: BenchConfig, log: Callable[[str], None]) -> dict:
    started = time.time()
    result = _header(bc)
    log(f"building: {bc.space}, {bc.cells} cells, {bc.channels} channels, batch {bc.batch}, input {bc.input}")
    first = make_search(base_config(bc, "first"), bc)
    result["environment"]["device"] = str(first.device)
    result["environment"]["engine"] = first.engine.record()  # the options "fast" runs, and where from
    m = Measurements(bc.warmup, bc.repeats, first.device, log)
    start = _time_updates(m, bc, first)
    presets = _time_presets(m, bc, first)
    objectives = time_lambda_max(m, bc, first, start) if bc.curvature else None
    timing = _timing(m, bc, presets)
    if objectives is not None:
        result["curvature"] = curvature_record(m, bc, objectives, log)
    # nothing timed stays alive while the memory workers run (parent + worker on a 24 GB machine)
    first = objectives = None
    _drop()
    if bc.memory:
        result["memory"] = memory_record(bc, log)
    if bc.scaling:
        log("scaling: fast first-order iteration at 2x batch / channels / cells")
        result["scaling"] = scaling(bc, log)
    result["timing"] = timing
    result["environment"]["load1_end"] = load1()
    result["environment"]["seconds"] = round(time.time() - started, 1)
    return result


def _header(bc: BenchConfig) -> dict[str, Any]:
    return {
        "config": {**asdict(bc), "input": "x".join(map(str, bc.input))},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                        "machine": platform.machine(), "load1_start": load1()},
        "notes": list(bc.notes),
    }


def _drop() -> None:
    """Between measurements: what the last one built is unreachable by now; return its heap, so
    each measurement runs in a process that holds only its own models and graphs (a real search
    does), not every earlier measurement's (at the paper size all of them held ~21 GB; timed
    beside them, the engine's first-order step took 7.34 s instead of 5.56 s, plain_cl's 13.89 s
    instead of 11.28 s: 1.89x instead of 2.03x)."""
    gc.collect()
    release_heap()


def _time_updates(m: Measurements, bc: BenchConfig, first) -> tuple[dict, dict]:
    """First- and second-order iterations, every engine side by side on the first search's batches;
    returns the start state (the network's and the architecture's) every measurement begins from."""
    train, val = batches(first)
    plain = {eng: (plain_batch(eng)(train), plain_batch(eng)(val)) for eng in bc.engines()[1:]}
    start = ({k: v.clone() for k, v in first.net.state_dict().items()},
             {k: v.clone() for k, v in first.arch.state_dict().items()})
    m.timed(_side_by_side("first_order", bc, first, (train, val), plain, False))
    _drop()
    if bc.second_order:
        second = make_search(base_config(bc, "second"), bc)
        second.net.load_state_dict(start[0])
        second.arch.load_state_dict(start[1])
        m.timed(_side_by_side("second_order", bc, second, (train, val), plain, True))
        second = None
        _drop()
    return start


def _side_by_side(key: str, bc: BenchConfig, search, fixed: tuple[Batch, Batch],
                  plain: dict[str, tuple[Batch, Batch]], unrolled: bool) -> list[Job]:
    """The fast step and each plain engine's (a plain model built from ``search``'s weights and alpha)."""
    train, val = fixed
    jobs: list[Job] = [(f"{key}/fast", search_iteration(search, train, val), bc.batch)]
    for eng, (t, v) in plain.items():
        _, step = plain_model(search, bc, channels_last=(eng == "plain_cl"))
        jobs.append((f"{key}/{eng}", _plain_job(step, t, v, unrolled), bc.batch))
    return jobs


def _plain_job(step, train: Batch, val: Batch, unrolled: bool) -> Callable[[], Any]:
    return lambda: step(train, val, unrolled=unrolled)


def _time_presets(m: Measurements, bc: BenchConfig, first) -> dict[str, dict]:
    """Each method preset's iteration at the bench's size in the middle of its run (``make_search``),
    interleaved repeat by repeat with a first-order DARTS iteration of ``first``
    (``preset/<name>/darts``), so the ratio compares two series taken under the same load; a preset
    that cannot run here is skipped with the reason, not an abort."""
    out: dict[str, dict] = {}
    train, val = batches(first)
    for name, raw, reason in method_presets(bc.methods):
        if raw is None:
            out[name] = {"skipped": reason}
            continue
        try:
            s = make_search(preset_config(raw, bc), bc, mid_run=True)
        except Exception as e:
            out[name] = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:240]}"}
            continue
        tb, vb = batches(s)
        out[name] = {"methods": [x.name for x in s.cfg.methods], "update": s.cfg.search.update, "epoch": s.epoch}
        m.timed([(f"preset/{name}", search_iteration(s, tb, vb), bc.batch),
                 (f"preset/{name}/darts", search_iteration(first, train, val), bc.batch)])
        s = tb = vb = None
        _drop()
    return out


def _timing(m: Measurements, bc: BenchConfig, presets: dict[str, dict]) -> dict[str, Any]:
    """The timing record: each order's engines and ratios, second over first order, the presets."""
    timing: dict[str, Any] = {"first_order": m.pair("first_order")}
    if bc.second_order:
        timing["second_order"] = m.pair("second_order")
        f1, f2 = m.series["first_order/fast"], m.series["second_order/fast"]
        if f1.wall and f2.wall:
            timing["second_over_first"] = {"fast": ratio(f2, f1)}
            if bc.plain and m.series["first_order/plain"].wall and m.series["second_order/plain"].wall:
                timing["second_over_first"]["plain"] = ratio(m.series["second_order/plain"],
                                                             m.series["first_order/plain"])
    for name, info in presets.items():
        s, darts = m.series.get(f"preset/{name}"), m.series.get(f"preset/{name}/darts")
        if s is None:
            continue
        if m.failed.get(f"preset/{name}"):
            info["error"] = m.failed[f"preset/{name}"]
        info.update(s.summary(bc.batch))
        if s.wall and darts is not None and darts.wall:
            info["vs_first_order"] = ratio(s, darts)  # over the interleaved DARTS iterations
    timing["presets"] = presets
    return timing
