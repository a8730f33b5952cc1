"""Peak memory per measurement and engine, one measurement per fresh subprocess
(``python -m stablenas.bench worker '<json>'``): build the measurement's objects, reset the RSS
high-water mark (Linux ``clear_refs``), run its iteration once and report the peak's growth over
the start (torch allocations are invisible to tracemalloc); ``torch.cuda.max_memory_allocated``
on CUDA. The worker's address space is capped, so a measurement too big for the machine fails alone."""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from ..runs.lifecycle import sync
from .options import BenchConfig
from .steps import base_config, batches, engine_objective, make_search, plain_batch, plain_model, search_iteration


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def reset_peak_rss() -> bool:
    """Linux: reset the RSS high-water mark to the current RSS, so the peak is this measurement's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_kib(path: str, key: str) -> int | None:
    """A ``key: N kB`` field of a /proc file in bytes (None off Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def hwm_bytes() -> int | None:
    return _proc_kib("/proc/self/status", "VmHWM:")


def _mem_available() -> int | None:
    return _proc_kib("/proc/meminfo", "MemAvailable:")


def config_of(spec: dict) -> BenchConfig:
    """The :class:`BenchConfig` a worker's JSON spec carries."""
    return BenchConfig(**{k: (tuple(v) if k == "input" else v) for k, v in spec["config"].items()})


def _measured_call(what: str, engine: str, bc: BenchConfig) -> tuple[Callable[[], Any], list]:
    """One measurement's iteration, and everything built for it (alive through the measurement)."""
    update = "second" if what == "second_order" else "first"
    search = make_search(base_config(bc, update), bc)
    train, val = batches(search)
    if what == "lambda_max":
        from .. import curvature as cur

        obj = engine_objective(cur, search, bc, engine)
        fn = lambda: cur.dominant_eigenvalue(obj, iters=2)  # noqa: E731
    elif engine in ("plain", "plain_cl"):
        _, step = plain_model(search, bc, channels_last=(engine == "plain_cl"))
        conv = plain_batch(engine)
        train_p, val_p = conv(train), conv(val)
        fn = lambda: step(train_p, val_p, unrolled=(what == "second_order"))  # noqa: E731
    else:
        fn = search_iteration(search, train, val)
    return fn, [search, train, val]


def measure_peak(spec: dict) -> dict:
    """Build one measurement's objects, then run its iteration once and report the memory peak."""
    bc = config_of(spec)
    what, engine = spec["what"], spec["engine"]
    if bc.threads:
        torch.set_num_threads(bc.threads)
    fn, built = _measured_call(what, engine, bc)
    device = built[0].device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        hwm = reset_peak_rss()
        base = rss_bytes()
    fn()
    sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        kind = "cuda_max_memory_allocated"
    else:
        peak = (hwm_bytes() if hwm else None) or maxrss_bytes()
        kind = "peak_rss (VmHWM after reset)" if hwm else "peak_rss (ru_maxrss, lifetime)"
    return {"what": what, "engine": engine, "kind": kind, "base_mb": round(base / 2**20, 1),
            "peak_mb": round(peak / 2**20, 1), "growth_mb": round(max(0, peak - base) / 2**20, 1)}


def json_subprocess(cmd: list[str], env: dict, timeout: float | None, what: str) -> dict:
    """Run a bench worker process and return the last JSON line it printed, or ``{"error": ...}``
    (timeout, non-zero exit or no result) with the last line of its output."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{what} {p.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1])


def run_worker(spec: dict, timeout: float | None = None) -> dict:
    """One memory measurement (``spec``: config, what, engine) in a fresh subprocess."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "stablenas.bench", "worker", json.dumps(spec)]
    return json_subprocess(cmd, env, timeout, "worker exited")


def memory_record(bc: BenchConfig, log: Callable[[str], None]) -> dict:
    """Every measurement's peak per engine (a subprocess each), with the fast/plain growth ratios."""
    log("memory: one fresh subprocess per measurement")
    mem: dict[str, Any] = {}
    whats = ["first_order"] + (["second_order"] if bc.second_order else []) + \
        (["lambda_max"] if bc.curvature else [])
    spec_cfg = {**asdict(bc), "input": list(bc.input)}
    for what in whats:
        mem[what] = {}
        for eng in bc.engines():
            mem[what][eng] = run_worker({"config": spec_cfg, "what": what, "engine": eng})
            log(f"  {what}/{eng}: {mem[what][eng]}")
        f = mem[what].get("fast", {})
        for eng, key in (("plain", "fast_over_plain"), ("plain_cl", "fast_over_plain_cl")):
            p = mem[what].get(eng, {})
            if f.get("growth_mb") and p.get("growth_mb"):
                mem[what][key] = round(f["growth_mb"] / p["growth_mb"], 3)
    return mem


def _limit_memory() -> None:
    """Cap the worker's address space so a too-big measurement fails alone instead of taking the
    (shared) machine down with it."""
    avail = _mem_available()
    if not avail:
        return
    try:
        with open("/proc/self/statm") as f:
            vsize = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return
    limit = vsize + int(0.8 * avail) + (2 << 30)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def worker_main(spec: dict) -> dict:
    """The memory worker process: capped, one measurement, an out-of-memory reported as an error."""
    _limit_memory()
    try:
        return measure_peak(spec)
    except MemoryError:
        return {"error": "out of memory (worker capped at 80% of available memory)"}
    except RuntimeError as e:
        msg = str(e)
        first_line = msg.splitlines()[0][:300] if msg else type(e).__name__
        return {"error": ("out of memory: " if "memory" in msg.lower() else "") + first_line}
