"""``stablenas bench``: how fast and how big a search step is, against plain DARTS, in one run.

Every figure is measured in the same process, one measurement after another (first order, second
order, each method preset, lambda_max), each with its engines interleaved repeat by repeat and only
its own models and graphs alive: with the library's engine (``search.loop.Search`` on the fast
supernet), with the plain reimplementation of the original DARTS search model
(``supernet.reference``: per-op Python loop, ``none`` computed, channels-first, DARTS's
architect), and with that same plain model after the one line a user tries first,
``model.to(memory_format=torch.channels_last)`` with channels_last inputs ("plain_cl", the fair
baseline: it is most of what the engine's layout work buys for free). All start from the same
weights and alpha and see the same seeded synthetic batches, so each figure comes with same-run
ratios, which is what survives a shared, noisy machine (the 1-minute load average is recorded
next to each repeat).

Two sizes are named (``SIZES``, ``--size``): ``paper`` (DARTS's search network: 8 cells x 16
channels, 3x32x32, batch 64) and ``cpu-study`` (5 cells x 8 channels, 1x28x28, batch 64, the
size of the CPU studies, where per-kernel overhead dominates even more); by default both run.

Measured, after ``warmup`` iterations, as the median over ``repeats``:

* seconds per first-order iteration (alpha step on a validation batch + weight step) and per
  second-order (unrolled) iteration, with images per second (training images of the weight step);
* seconds per iteration of every method preset in ``configs/`` (read at run time; a preset that
  does not fit the configuration is skipped with the reason);
* seconds per lambda_max estimate (Lanczos, :mod:`stablenas.curvature`) and per exact Hessian, with
  the relative error of lambda_max against the exact top eigenvalue (skipped with a note when the
  curvature module is not installed);
* with ``--nproc N`` instead: the data-parallel step (:func:`run_dp_bench`), N ranks against one
  process at the same global batch, rounds alternating;
* peak memory per measurement and engine (first order, second order, lambda_max): each one runs in
  a fresh subprocess and reports its peak RSS growth over the iteration (``ru_maxrss``; torch
  allocations are invisible to tracemalloc), or ``torch.cuda.max_memory_allocated`` on CUDA.

``python -m stablenas.bench worker '<json>'`` is the memory subprocess; it is not a user command.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .utils import release_heap

__all__ = ["BenchConfig", "SIZES", "format_dp", "format_table", "parse_input", "run_bench", "run_dp_bench", "sized"]

SYNTHETIC_PREFIX = "bench-synthetic"

# the named sizes: (cells, channels, batch, input)
SIZES: dict[str, dict[str, Any]] = {
    "paper": {"cells": 8, "channels": 16, "batch": 64, "input": (3, 32, 32)},
    "cpu-study": {"cells": 5, "channels": 8, "batch": 64, "input": (1, 28, 28)},
}
ENGINES = ("fast", "plain", "plain_cl")


@dataclass
class BenchConfig:
    space: str = "darts"
    cells: int = 8
    channels: int = 16
    batch: int = 64
    input: tuple[int, int, int] = (3, 32, 32)
    classes: int = 10
    repeats: int = 3
    warmup: int = 1
    methods: list[str] | None = None  # None = every preset in configs/ that configures a method
    second_order: bool = True
    plain: bool = True
    plain_cl: bool = True  # also the plain model in channels_last (with or without plain)
    curvature: bool = True
    curvature_iters: int = 20
    exact: bool = True  # exact Hessian for the fast engine (one HVP per alpha entry)
    plain_exact: bool = False  # also for the plain model (else extrapolated from its per-HVP time)
    memory: bool = True
    scaling: bool = False
    threads: int | None = None
    device: str = "auto"
    seed: int = 0
    channels_last: bool = True
    size: str = "custom"  # a name from SIZES, or custom
    notes: list[str] = field(default_factory=list)

    def engines(self) -> tuple[str, ...]:
        return ("fast",) + (("plain",) if self.plain else ()) + (("plain_cl",) if self.plain_cl else ())


def sized(name: str, **overrides: Any) -> BenchConfig:
    """A named size from ``SIZES`` (cells, channels, batch, input), other fields from ``overrides``
    (a ``None`` override keeps the size's value)."""
    if name not in SIZES:
        raise ValueError(f"--size {name!r}: unknown; available: {', '.join(SIZES)}")
    fields = dict(SIZES[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return BenchConfig(size=name, **fields)


def add_size_arguments(parser: Any, default_size: str) -> None:
    """The size options of the engine benchmarks (benchmarks/engine_*.py): a named size, each field overridable,
    the update rule and the thread count; read back with :func:`sized_from_args`."""
    parser.add_argument("--space", default="darts")
    parser.add_argument("--size", default=default_size, choices=sorted(SIZES))
    parser.add_argument("--cells", type=int)
    parser.add_argument("--channels", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--input")
    parser.add_argument("--update", default="first", choices=["first", "second"])
    parser.add_argument("--threads", type=int, default=None)


def sized_from_args(args: Any) -> BenchConfig:
    """The :class:`BenchConfig` of :func:`add_size_arguments`' options (sets the thread count first)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return sized(args.size, space=args.space, cells=args.cells, channels=args.channels, batch=args.batch,
                 input=parse_input(args.input) if args.input else None)


def parse_input(text: str) -> tuple[int, int, int]:
    """'3x32x32' -> (3, 32, 32)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input {text!r}: expected CxHxW with positive integers, e.g. 3x32x32")
    return shape  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# synthetic data through the real data path


def _synthetic_name(shape: tuple[int, int, int], classes: int) -> str:
    c, h, w = shape
    return f"{SYNTHETIC_PREFIX}-{c}x{h}x{w}-{classes}"


def synthetic_dataset(shape: tuple[int, int, int], classes: int, n: int, seed: int):
    """Seeded random uint8 images as an in-memory dataset; ``make_search`` hands it to ``Search``
    (nothing is registered globally)."""
    from .data.datasets import ImageDataset, _channel_stats

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, classes, size=(n,), dtype=np.int64)
    mean, std = _channel_stats(x)
    return ImageDataset(_synthetic_name(shape, classes), torch.from_numpy(x), torch.from_numpy(y), classes,
                        mean, std)


def _base_config(bc: BenchConfig, update: str = "first") -> dict:
    return {
        "name": "bench", "seed": bc.seed, "device": bc.device, "threads": bc.threads, "space": bc.space,
        # data.dataset is not loaded: make_search hands the search its synthetic images
        "data": {"dataset": "fashion-mnist", "batch_size": bc.batch, "subset": None, "train_portion": 0.5},
        "network": {"channels": bc.channels, "layers": bc.cells, "channels_last": bc.channels_last},
        "search": {"update": update},
        "evaluation": {"lookup": False},
    }


def _apply_bench(raw: dict, bc: BenchConfig) -> dict:
    """A preset's method settings at the bench's size, data and device."""
    raw = dict(raw)
    base = _base_config(bc)
    raw["space"] = bc.space
    raw["seed"] = bc.seed
    raw["device"] = bc.device
    raw["threads"] = bc.threads
    raw["data"] = base["data"]
    net = dict(raw.get("network") or {})
    net.update(channels=bc.channels, layers=bc.cells, channels_last=bc.channels_last)
    raw["network"] = net
    optim = dict(raw.get("optim") or {})
    optim["warmup_epochs"] = 0  # time the steady state: alpha steps on
    raw["optim"] = optim
    raw["evaluation"] = {"lookup": False}
    return raw


def make_search(raw: dict, bc: BenchConfig):
    """A ``Search`` on the bench's seeded synthetic images (given to it as its data), in epoch 0."""
    from .config import config_from_dict
    from .registry import SKELETONS, SPACES
    from .search.loop import Search
    from .utils import resolve_device

    cfg = config_from_dict(raw)
    data = SKELETONS[SPACES[cfg.space].skeleton].search_data(
        cfg, resolve_device(cfg.device), dataset=synthetic_dataset(bc.input, bc.classes, 4 * bc.batch, bc.seed))
    s = Search(cfg, None, progress=False, log=lambda _m: None, data=data)
    s.start_epoch(0)
    s.net.train()
    return s


def _batches(search) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    train = next(iter(search.train_loader))
    val = next(search.val_stream)
    return train, val


def _search_iteration(search, train, val) -> Callable[[], None]:
    """One step of ``Search.train_epoch``'s loop on fixed batches (``Search.step``)."""
    def run() -> None:
        search.step(train, val)
    return run


def _plain_model(search, bc: BenchConfig, channels_last: bool = False):
    """Plain DARTS model with the search's weights and alpha, on the search's device; with
    ``channels_last`` after ``model.to(memory_format=torch.channels_last)``."""
    from .supernet.reference import PlainDARTS, PlainSearchStep

    n = search.cfg.network
    o = search.cfg.optim
    model = PlainDARTS(search.space, C=n.channels, layers=n.layers, num_classes=search.num_classes,
                       in_channels=bc.input[0], stem_multiplier=n.stem_multiplier)
    model.net.load_state_dict(search.net.state_dict())
    if channels_last:
        model.to(search.device, memory_format=torch.channels_last)
    else:
        model.to(search.device)
    for a, b in zip(model.arch_parameters(), search.arch.alphas.values()):
        a.data.copy_(b.data)
    step = PlainSearchStep(model, lr=search.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           grad_clip=o.grad_clip, arch_lr=o.arch_lr, arch_betas=tuple(o.arch_betas),
                           arch_weight_decay=o.arch_weight_decay)
    return model, step


def _cf(batch):
    x, y = batch
    return x.contiguous(), y


def _cl(batch):
    x, y = batch
    return x.contiguous(memory_format=torch.channels_last), y


def _plain_batch(engine: str):
    return _cl if engine == "plain_cl" else _cf


# --------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on this platform
        return float("nan")


class _Series:
    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.load: list[float] = []

    def add(self, wall: float, cpu: float, load: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)
        self.load.append(load)

    def summary(self, images: int | None = None) -> dict:
        if not self.wall:
            return {}
        med = statistics.median(self.wall)
        out = {"median_s": round(med, 4), "wall_s": [round(v, 4) for v in self.wall],
               "cpu_s": [round(v, 4) for v in self.cpu],
               "median_cpu_s": round(statistics.median(self.cpu), 4), "load1": self.load}
        if images:
            out["images_per_s"] = round(images / med, 2)
        return out


def _time(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0, out


def _cuda_peak_reset(device: torch.device) -> int:
    """CUDA: reset the peak-memory counter; the memory allocated now (0 elsewhere)."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _cuda_peak_read(device: torch.device, base: int, into: dict) -> None:
    """CUDA: the largest ``torch.cuda.max_memory_allocated`` (and its growth over ``base``) of a job's calls."""
    if device.type != "cuda":
        return
    peak = torch.cuda.max_memory_allocated(device)
    into["cuda_peak_mb"] = max(into.get("cuda_peak_mb", 0.0), round(peak / 2**20, 1))
    into["cuda_growth_mb"] = max(into.get("cuda_growth_mb", 0.0), round((peak - base) / 2**20, 1))


def _ratio(slow: _Series, fast: _Series) -> dict:
    """Same-run ratios slow/fast: of medians, and the median of per-repeat paired ratios."""
    if not slow.wall or not fast.wall:
        return {}
    paired = [a / b for a, b in zip(slow.wall, fast.wall) if b > 0]
    paired_cpu = [a / b for a, b in zip(slow.cpu, fast.cpu) if b > 0]
    return {"of_medians": round(statistics.median(slow.wall) / statistics.median(fast.wall), 3),
            "paired_median": round(statistics.median(paired), 3) if paired else None,
            "cpu_paired_median": round(statistics.median(paired_cpu), 3) if paired_cpu else None}


def _objective(cur, search, net=None, to_batch=_cf):
    batches = cur.validation_batches(search, 1, search.cfg.data.batch_size)
    if net is not None:
        batches = [to_batch(b) for b in batches]
    return cur.AlphaObjective(search.net if net is None else net, search.arch, batches, bn="train",
                              edge_weights=search.arch.edge_weights())


def engine_objective(cur, search, bc: BenchConfig, engine: str):
    """The lambda_max objective of ``engine`` ("fast", "plain", "plain_cl") on the search's weights
    and alpha (a plain model is built for it; the objective keeps it alive)."""
    if engine in ("plain", "plain_cl"):
        model, _ = _plain_model(search, bc, channels_last=(engine == "plain_cl"))
        return _objective(cur, search, model.net, _plain_batch(engine))
    return _objective(cur, search)


# --------------------------------------------------------------------------------------------
# memory: one measurement per fresh subprocess


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _reset_peak_rss() -> bool:
    """Linux: reset the RSS high-water mark to the current RSS, so the peak is this measurement's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _worker(spec: dict) -> dict:
    """Build one measurement's objects, then run its iteration once and report the memory peak."""
    bc = BenchConfig(**{k: (tuple(v) if k == "input" else v) for k, v in spec["config"].items()})
    what, engine = spec["what"], spec["engine"]
    if bc.threads:
        torch.set_num_threads(bc.threads)
    update = "second" if what == "second_order" else "first"
    search = make_search(_base_config(bc, update), bc)
    train, val = _batches(search)
    device = search.device
    if what == "lambda_max":
        from . import curvature as cur

        obj = engine_objective(cur, search, bc, engine)
        fn = lambda: cur.dominant_eigenvalue(obj, iters=2)  # noqa: E731
    elif engine in ("plain", "plain_cl"):
        _, step = _plain_model(search, bc, channels_last=(engine == "plain_cl"))
        conv = _plain_batch(engine)
        train_p, val_p = conv(train), conv(val)
        fn = lambda: step(train_p, val_p, unrolled=(what == "second_order"))  # noqa: E731
    else:
        fn = _search_iteration(search, train, val)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        hwm = _reset_peak_rss()
        base = _rss_bytes()
    fn()
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        kind = "cuda_max_memory_allocated"
    else:
        peak = (_hwm_bytes() if hwm else None) or _maxrss_bytes()
        kind = "peak_rss (VmHWM after reset)" if hwm else "peak_rss (ru_maxrss, lifetime)"
    return {"what": what, "engine": engine, "kind": kind, "base_mb": round(base / 2**20, 1),
            "peak_mb": round(peak / 2**20, 1), "growth_mb": round(max(0, peak - base) / 2**20, 1)}


def _json_subprocess(cmd: list[str], env: dict, timeout: float | None, what: str) -> dict:
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


def _run_worker(spec: dict, timeout: float | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "stablenas.bench", "worker", json.dumps(spec)]
    return _json_subprocess(cmd, env, timeout, "worker exited")


# --------------------------------------------------------------------------------------------
# scaling


def _forward_flops(net: torch.nn.Module, x: torch.Tensor, weights) -> int:
    """Forward FLOPs of one batch (conv/linear/matmul), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was = net.training
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x, weights)
    net.train(was)
    return int(fc.get_total_flops())


def _scaling(bc: BenchConfig, log: Callable[[str], None]) -> list[dict]:
    variants = [("base", {}), ("batch x2", {"batch": 2 * bc.batch}),
                ("channels x2", {"channels": 2 * bc.channels}), ("cells x2", {"cells": 2 * bc.cells})]
    runs = []
    for name, change in variants:
        v = BenchConfig(**{**asdict(bc), **change})
        s = make_search(_base_config(v), v)
        train, val = _batches(s)
        w = {k: t.detach() for k, t in s.arch.op_weights().items()}
        flops = _forward_flops(s.net, train[0], w)
        runs.append((name, v, s, _search_iteration(s, train, val), flops, _Series()))
    for r in range(bc.warmup + bc.repeats):
        for _name, _v, s, fn, _flops, series in runs:
            wall, cpu, _ = _time(fn, s.device)
            if r >= bc.warmup:
                series.add(wall, cpu, _load())
        log(f"scaling repeat {r + 1}/{bc.warmup + bc.repeats}")
    base_t = statistics.median(runs[0][5].wall)
    base_f = runs[0][4]
    out = []
    for name, v, _s, _fn, flops, series in runs:
        t = statistics.median(series.wall)
        out.append({"variant": name, "batch": v.batch, "channels": v.channels, "cells": v.cells,
                    "forward_gflop": round(flops / 1e9, 3), "work_ratio": round(flops / base_f, 3),
                    "median_s": round(t, 4), "time_ratio": round(t / base_t, 3),
                    "time_per_work": round((t / base_t) / (flops / base_f), 3), "load1": series.load})
    return out


# --------------------------------------------------------------------------------------------
# the benchmark


def _method_presets(names: list[str] | None) -> list[tuple[str, dict | None, str | None]]:
    """(preset, raw config or None, reason when skipped)."""
    from .config import PRESET_DIR, list_presets, read_yaml

    out = []
    available = list_presets()
    wanted = names if names is not None else available
    for name in wanted:
        if name not in available:
            out.append((name, None, f"no preset {name!r} in configs/"))
            continue
        raw = read_yaml(PRESET_DIR / f"{name}.yaml") or {}
        if names is None and not raw.get("methods"):
            continue  # plain DARTS presets are the first/second-order rows
        out.append((name, raw, None))
    return out


def run_bench(bc: BenchConfig | list[BenchConfig], log: Callable[[str], None] | None = None) -> dict:
    """Run every measurement of ``bc``; returns the JSON-able result (see module docstring).
    Several configurations (sizes) run one after the other: ``{"sizes": {size: result}}``."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
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
    result: dict[str, Any] = {
        "config": {**asdict(bc), "input": "x".join(map(str, bc.input))},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                        "machine": platform.machine(), "load1_start": _load()},
        "notes": list(bc.notes),
    }
    log(f"building: {bc.space}, {bc.cells} cells, {bc.channels} channels, batch {bc.batch}, input {bc.input}")
    first = make_search(_base_config(bc, "first"), bc)
    device = first.device
    result["environment"]["device"] = str(device)
    result["environment"]["engine"] = first.engine.record()  # the options "fast" runs, and where from
    train, val = _batches(first)
    plain_engines = bc.engines()[1:]
    pbatch = {eng: (_plain_batch(eng)(train), _plain_batch(eng)(val)) for eng in plain_engines}

    def plain_job(step, eng: str, unrolled: bool) -> Callable[[], Any]:
        t, v = pbatch[eng]
        return lambda: step(t, v, unrolled=unrolled)

    series: dict[str, _Series] = {}
    images: dict[str, int | None] = {}
    values: dict[str, Any] = {}
    failed: dict[str, str] = {}
    cuda_peak: dict[str, dict] = {}  # CUDA: max_memory_allocated during each job's calls (in this process)
    total = bc.warmup + bc.repeats

    def timed(jobs: list[tuple[str, Callable[[], Any], int | None]]) -> None:
        """One measurement: its jobs (the engines side by side) interleaved repeat by repeat."""
        for name, _, img in jobs:
            series[name], images[name] = _Series(), img
        for r in range(total):
            for name, fn, _img in jobs:
                if name in failed:
                    continue
                try:
                    base = _cuda_peak_reset(device)
                    wall, cpu, out = _time(fn, device)
                    _cuda_peak_read(device, base, cuda_peak.setdefault(name, {}))
                except Exception as e:
                    failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:240] if str(e) else ''}"
                    log(f"  {name}: failed ({failed[name]})")
                    continue
                if r >= bc.warmup:
                    series[name].add(wall, cpu, _load())
                    if out is not None and hasattr(out, "lambda_max"):
                        values.setdefault(name, []).append({"lambda_max": out.lambda_max, "hvps": out.hvps})
                log(f"  repeat {r + 1}/{total} {'(warm-up) ' if r < bc.warmup else ''}{name}: {wall:.3f} s "
                    f"(load {_load()})")

    def dropped() -> None:
        """Between measurements: what the last one built is unreachable by now; return its heap, so
        each measurement runs in a process that holds only its own models and graphs (a real search
        does), not every earlier measurement's (at the paper size all of them held ~21 GB; timed
        beside them, the engine's first-order step took 7.34 s instead of 5.56 s, plain_cl's 13.89 s
        instead of 11.28 s: 1.89x instead of 2.03x)."""
        gc.collect()
        release_heap()

    # every measurement starts from the same weights and alpha
    net0 = {k: v.clone() for k, v in first.net.state_dict().items()}
    arch0 = {k: v.clone() for k, v in first.arch.state_dict().items()}

    def side_by_side(key: str, search, unrolled: bool) -> list[tuple[str, Callable[[], Any], int | None]]:
        jobs: list[tuple[str, Callable[[], Any], int | None]] = [
            (f"{key}/fast", _search_iteration(search, train, val), bc.batch)]
        for eng in plain_engines:
            _, step = _plain_model(search, bc, channels_last=(eng == "plain_cl"))
            jobs.append((f"{key}/{eng}", plain_job(step, eng, unrolled), bc.batch))
        return jobs

    timed(side_by_side("first_order", first, False))
    dropped()
    if bc.second_order:
        second = make_search(_base_config(bc, "second"), bc)
        second.net.load_state_dict(net0)
        second.arch.load_state_dict(arch0)
        timed(side_by_side("second_order", second, True))
        second = None
        dropped()

    methods_out: dict[str, dict] = {}
    for name, raw, reason in _method_presets(bc.methods):
        if raw is None:
            methods_out[name] = {"skipped": reason}
            continue
        try:
            s = make_search(_apply_bench(raw, bc), bc)
        except Exception as e:  # a preset that cannot run at this size/space: report, do not abort
            methods_out[name] = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:240]}"}
            continue
        tb, vb = _batches(s)
        methods_out[name] = {"methods": [m.name for m in s.cfg.methods], "update": s.cfg.search.update}
        timed([(f"preset/{name}", _search_iteration(s, tb, vb), bc.batch)])
        s = tb = vb = None
        dropped()

    from . import curvature

    cur = curvature if bc.curvature else None
    curv: dict[str, Any] = {}
    obj_fast = obj_plain = None
    if cur is not None:
        first.net.load_state_dict(net0)
        first.arch.load_state_dict(arch0)
        iters = bc.curvature_iters
        objs = {eng: engine_objective(cur, first, bc, eng) for eng in bc.engines()}
        obj_fast, obj_plain = objs["fast"], objs.get("plain")
        timed([(f"lambda_max/{eng}", (lambda o=o: cur.dominant_eigenvalue(o, iters=iters)), None)
               for eng, o in objs.items()])
        objs = None

    def pair(key: str) -> dict:
        f, p, pc = (series.get(f"{key}/{eng}") for eng in ENGINES)
        img = images.get(f"{key}/fast")
        d: dict[str, Any] = {}
        for eng in ENGINES:
            s = series.get(f"{key}/{eng}")
            if s is not None:
                d[eng] = s.summary(img) or {"error": failed.get(f"{key}/{eng}")}
                d[eng].update(cuda_peak.get(f"{key}/{eng}", {}))
        if f is not None and p is not None:
            d["speedup"] = _ratio(p, f)  # plain time / fast time
        if f is not None and pc is not None:
            d["speedup_vs_plain_cl"] = _ratio(pc, f)  # plain channels_last time / fast time
        return d

    timing: dict[str, Any] = {"first_order": pair("first_order")}
    if bc.second_order:
        timing["second_order"] = pair("second_order")
        f1, f2 = series["first_order/fast"], series["second_order/fast"]
        if f1.wall and f2.wall:
            timing["second_over_first"] = {"fast": _ratio(f2, f1)}
            if bc.plain and series["first_order/plain"].wall and series["second_order/plain"].wall:
                timing["second_over_first"]["plain"] = _ratio(series["second_order/plain"],
                                                              series["first_order/plain"])
    for name, info in methods_out.items():
        s = series.get(f"preset/{name}")
        if s is None:
            continue
        if failed.get(f"preset/{name}"):
            info["error"] = failed[f"preset/{name}"]
        info.update(s.summary(bc.batch))
        if s.wall and series["first_order/fast"].wall:
            info["vs_first_order"] = _ratio(s, series["first_order/fast"])
    timing["presets"] = methods_out

    if cur is not None:
        curv["lambda_max"] = pair("lambda_max")
        for eng in ENGINES:
            v = values.get(f"lambda_max/{eng}")
            if v and eng in curv["lambda_max"]:
                curv["lambda_max"][eng]["value"] = v[-1]["lambda_max"]
                curv["lambda_max"][eng]["hvps"] = v[-1]["hvps"]
        if bc.exact:
            log("exact Hessian (fast engine): one HVP per alpha entry")
            try:
                wall, cpu, (_, ex) = _time(lambda: cur.exact_spectrum(obj_fast), device)
                top = ex.eigenvalues[0]
                curv["exact_hessian"] = {"fast": {"seconds": round(wall, 3), "cpu_s": round(cpu, 3),
                                                  "n": ex.n, "hvps": ex.hvps, "top_eigenvalue": top,
                                                  "load1": _load()}}
                lm = curv["lambda_max"].get("fast", {})
                if "value" in lm and top != 0:
                    curv["lambda_max_vs_exact"] = {
                        "relative_error": round(abs(lm["value"] - top) / abs(top), 6),
                        "time_fraction": round(lm["median_s"] / wall, 4)}
                if bc.plain:
                    if bc.plain_exact:
                        wall_p, cpu_p, (_, exp) = _time(lambda: cur.exact_spectrum(obj_plain), device)
                        curv["exact_hessian"]["plain"] = {
                            "seconds": round(wall_p, 3), "cpu_s": round(cpu_p, 3),
                            "top_eigenvalue": exp.eigenvalues[0], "load1": _load()}
                    elif "plain" in curv["lambda_max"] and curv["lambda_max"]["plain"].get("median_s"):
                        pl = curv["lambda_max"]["plain"]
                        per_hvp = pl["median_s"] / max(pl.get("hvps", bc.curvature_iters), 1)
                        curv["exact_hessian"]["plain"] = {
                            "seconds_extrapolated": round(per_hvp * ex.n, 1),
                            "how": "plain lambda_max seconds / its HVPs x n (not run; --plain-exact runs it)"}
                    pe = curv["exact_hessian"].get("plain", {})
                    ps = pe.get("seconds", pe.get("seconds_extrapolated"))
                    if ps:
                        curv["exact_hessian"]["speedup"] = round(ps / wall, 3)
            except Exception as e:
                curv["exact_hessian"] = {"error": f"{type(e).__name__}: {str(e)[:240]}"}
        result["curvature"] = curv

    # nothing timed stays alive while the memory workers run (parent + worker on a 24 GB machine)
    first = obj_fast = obj_plain = None  # noqa: F841
    dropped()
    if bc.memory:
        log("memory: one fresh subprocess per measurement")
        mem: dict[str, Any] = {}
        whats = ["first_order"] + (["second_order"] if bc.second_order else []) + \
            (["lambda_max"] if cur is not None else [])
        spec_cfg = {**asdict(bc), "input": list(bc.input)}
        for what in whats:
            mem[what] = {}
            for eng in bc.engines():
                mem[what][eng] = _run_worker({"config": spec_cfg, "what": what, "engine": eng})
                log(f"  {what}/{eng}: {mem[what][eng]}")
            f = mem[what].get("fast", {})
            for eng, key in (("plain", "fast_over_plain"), ("plain_cl", "fast_over_plain_cl")):
                p = mem[what].get(eng, {})
                if f.get("growth_mb") and p.get("growth_mb"):
                    mem[what][key] = round(f["growth_mb"] / p["growth_mb"], 3)
        result["memory"] = mem

    if bc.scaling:
        log("scaling: fast first-order iteration at 2x batch / channels / cells")
        result["scaling"] = _scaling(bc, log)

    result["timing"] = timing
    result["environment"]["load1_end"] = _load()
    result["environment"]["seconds"] = round(time.time() - started, 1)
    return result


# --------------------------------------------------------------------------------------------
# output


def _fmt_s(d: dict | None) -> str:
    if not d or "median_s" not in d:
        return "-" if not d else ("error" if "error" in d else "-")
    return f"{d['median_s']:.3f}"


def format_table(res: dict) -> str:
    """A plain-text table of the result (the JSON has everything, this is the summary); one per
    size for a several-size result."""
    if "sizes" in res:
        return "\n\n".join(format_table(r) for r in res["sizes"].values())
    c = res["config"]
    env = res["environment"]
    lines = [f"stablenas bench [{c.get('size', 'custom')}]: space {c['space']}, {c['cells']} cells, "
             f"{c['channels']} channels, "
             f"batch {c['batch']}, input {c['input']}, {c['repeats']} repeats after {c['warmup']} warm-up; "
             f"device {env.get('device')}, {env['threads']} threads, torch {env['torch']}; "
             f"load1 {env['load1_start']} -> {env.get('load1_end')}",
             "",
             f"{'measurement':28s} {'fast s':>9s} {'plain s':>9s} {'speedup':>8s} {'paired':>7s} "
             f"{'plain-cl s':>10s} {'vs cl':>7s} {'paired':>7s} {'fast img/s':>10s} {'load1':>12s}"]
    t = res.get("timing", {})

    def x(sp: dict, key: str) -> str:
        return (str(sp.get(key)) + "x") if sp and sp.get(key) is not None else "-"

    def row(label: str, d: dict) -> None:
        f, p, sp = d.get("fast", {}), d.get("plain"), d.get("speedup", {})
        pc, spc = d.get("plain_cl"), d.get("speedup_vs_plain_cl", {})
        loads = f.get("load1") or []
        load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
        lines.append(f"{label:28s} {_fmt_s(f):>9s} {_fmt_s(p):>9s} {x(sp, 'of_medians'):>8s} "
                     f"{x(sp, 'paired_median'):>7s} {_fmt_s(pc):>10s} {x(spc, 'of_medians'):>7s} "
                     f"{x(spc, 'paired_median'):>7s} {f.get('images_per_s', '-')!s:>10s} {load:>12s}")

    for key, label in (("first_order", "first-order iteration"), ("second_order", "second-order iteration")):
        if key in t:
            row(label, t[key])
    if "second_over_first" in t:
        so = t["second_over_first"]
        lines.append(f"{'second / first order':28s} {str(so['fast']['of_medians']) + 'x':>9s} "
                     f"{(str(so['plain']['of_medians']) + 'x') if 'plain' in so else '-':>9s}")
    cur = res.get("curvature", {})
    if "lambda_max" in cur:
        row("lambda_max (Lanczos)", cur["lambda_max"])
    if "exact_hessian" in cur:
        e = cur["exact_hessian"]
        if "fast" in e:
            p = e.get("plain", {})
            ps = p.get("seconds", p.get("seconds_extrapolated"))
            lines.append(f"{'exact Hessian':28s} {e['fast']['seconds']:>9.3f} "
                         f"{(f'{ps:.1f}' + ('*' if 'seconds_extrapolated' in p else '')) if ps else '-':>9s} "
                         f"{(str(e.get('speedup')) + 'x') if e.get('speedup') else '-':>8s}")
        else:
            lines.append(f"{'exact Hessian':28s} {e.get('error', '-')}")
    if "lambda_max_vs_exact" in cur:
        lv = cur["lambda_max_vs_exact"]
        lines.append(f"lambda_max vs exact top eigenvalue: relative error {lv['relative_error']:.2e}, "
                     f"time fraction {lv['time_fraction']:.3f}")
    peaks = [(label, d) for label, d in (("first order", t.get("first_order")), ("second order", t.get("second_order")),
                                         ("lambda_max", cur.get("lambda_max"))) if d]
    if any("cuda_peak_mb" in d.get("fast", {}) for _, d in peaks):
        per = "; ".join(f"{label} " + ", ".join(f"{e} {d[e]['cuda_peak_mb']} (+{d[e]['cuda_growth_mb']})"
                                                for e in ENGINES if "cuda_peak_mb" in d.get(e, {}))
                        for label, d in peaks)
        lines.append(f"peak CUDA memory (torch.cuda.max_memory_allocated, MB; growth over the call's start): {per}")
    presets = t.get("presets", {})
    if presets:
        lines += ["", f"{'preset':28s} {'fast s':>9s} {'vs 1st-order':>12s} {'img/s':>9s}  methods"]
        for name, d in presets.items():
            if "skipped" in d:
                lines.append(f"{name:28s} skipped: {d['skipped']}")
                continue
            vs = d.get("vs_first_order", {}).get("of_medians")
            lines.append(f"{name:28s} {_fmt_s(d):>9s} {(str(vs) + 'x') if vs else '-':>12s} "
                         f"{d.get('images_per_s', '-')!s:>9s}  {', '.join(d.get('methods', []))}"
                         + (f"  error: {d['error']}" if d.get("error") else ""))
    mem = res.get("memory", {})
    if mem:
        lines += ["", f"{'peak memory (growth, MB)':28s} {'fast':>9s} {'plain':>9s} {'fast/plain':>10s} "
                      f"{'plain-cl':>9s} {'fast/cl':>8s}"]
        for what, d in mem.items():
            f, p, pc = d.get("fast", {}), d.get("plain", {}), d.get("plain_cl", {})
            lines.append(f"{what:28s} {f.get('growth_mb', f.get('error', '-'))!s:>9s} "
                         f"{p.get('growth_mb', p.get('error', '-'))!s:>9s} "
                         f"{d.get('fast_over_plain', '-')!s:>10s} "
                         f"{pc.get('growth_mb', pc.get('error', '-'))!s:>9s} "
                         f"{d.get('fast_over_plain_cl', '-')!s:>8s}")
    if res.get("scaling"):
        lines += ["", f"{'scaling (fast, 1st order)':28s} {'GFLOP fwd':>9s} {'work x':>7s} {'time x':>7s} "
                      f"{'time/work':>9s}"]
        for s in res["scaling"]:
            lines.append(f"{s['variant']:28s} {s['forward_gflop']:>9.3f} {s['work_ratio']:>7.2f} "
                         f"{s['time_ratio']:>7.2f} {s['time_per_work']:>9.2f}")
    for n in res.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


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


# --------------------------------------------------------------------------------------------
# data parallelism: N ranks against one process with the same global batch (``--nproc``)

DP_STEPS = 3  # timed first-order steps per round and side (after ``warmup`` untimed ones)


def _dp_worker(spec: dict) -> dict:
    """One side of a data-parallel round: ``spec["ranks"]`` > 1 runs under torchrun (every rank its
    slice of the global batch), 1 is the single process. Times ``steps`` first-order steps
    (``Search.step``) between two barriers; the slowest rank's time is the job's."""
    from . import distributed as dist

    bc = BenchConfig(**{k: (tuple(v) if k == "input" else v) for k, v in spec["config"].items()})
    torch.set_num_threads(int(spec["threads"]))
    d, _dev = dist.setup(bc.device)
    search = make_search(_base_config(bc, "first"), bc)
    train, val = _batches(search)
    for _ in range(bc.warmup):
        search.step(train, val)
    dist.barrier()
    _sync(search.device)
    t0 = time.perf_counter()
    for _ in range(int(spec["steps"])):
        search.step(train, val)
    _sync(search.device)
    mine = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    if d.active:
        import torch.distributed as td

        td.all_reduce(mine, op=td.ReduceOp.MAX)
    out = {"ranks": d.world, "threads": int(spec["threads"]), "per_rank_batch": int(train[1].shape[0]),
           "s_per_step": float(mine) / int(spec["steps"]), "device": str(search.device)}
    dist.shutdown()
    return out


def _dp_side(spec: dict, timeout: float) -> dict:
    import socket

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(spec["threads"])}
    body = ["-m", "stablenas.bench", "dp-worker", json.dumps(spec)]
    if spec["ranks"] > 1:
        with socket.socket() as sock:  # a free port for this round's rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={spec['ranks']}",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--local-ranks-filter=0", *body]
    else:
        cmd = [sys.executable, *body]
    return _json_subprocess(cmd, env, timeout, "exited")


def run_dp_bench(bc: BenchConfig, nproc: int, threads: int = 1, rounds: int | None = None,
                 steps: int = DP_STEPS, log: Callable[[str], None] | None = None,
                 timeout: float = 900.0) -> dict:
    """First-order step time of ``nproc`` ranks x ``threads`` threads against one process with
    ``nproc * threads`` threads (on CUDA: one device against ``nproc``), both at the global batch
    ``bc.batch``; rounds alternate the two sides (paired ratios survive a noisy machine).

    ``speedup`` = single / ranks (paired median); ``efficiency`` = speedup / (the ranks' devices /
    the single side's): on CPU both sides get the same cores, so efficiency = speedup and 1 means
    ranks use the cores as well as intra-op threads; on CUDA it is speedup / nproc. A third side,
    one process with one rank's threads (one device), gives the plain scaling (ideal: nproc)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if nproc < 2:
        raise ValueError(f"--nproc {nproc}: the data-parallel bench needs 2 or more ranks")
    if bc.batch % nproc:
        raise ValueError(f"--batch {bc.batch} is not divisible by --nproc {nproc} (the batch is global)")
    rounds = rounds or bc.repeats
    conf = asdict(bc)
    single = {"config": conf, "ranks": 1, "threads": nproc * threads, "steps": steps}
    multi = {"config": conf, "ranks": nproc, "threads": threads, "steps": steps}
    narrow = {"config": conf, "ranks": 1, "threads": threads, "steps": steps}  # one rank's resources
    one, many, base, loads = [], [], [], []
    for r in range(rounds):
        loads.append(_load())
        a = _dp_side(single, timeout)
        b = _dp_side(multi, timeout)
        c = _dp_side(narrow, timeout)
        for side in (a, b, c):
            if "error" in side:
                raise RuntimeError(f"data-parallel bench: {side['error']}")
        one.append(a)
        many.append(b)
        base.append(c)
        log(f"dp round {r + 1}/{rounds}: 1 x {nproc * threads} threads {a['s_per_step']:.4f} s/step, "
            f"{nproc} ranks x {threads} {b['s_per_step']:.4f} s/step, 1 x {threads} {c['s_per_step']:.4f} "
            f"s/step (load {loads[-1]})")
    t1 = [x["s_per_step"] for x in one]
    tn = [x["s_per_step"] for x in many]
    t0 = [x["s_per_step"] for x in base]
    paired = [a / b for a, b in zip(t1, tn)]
    speedup = statistics.median(paired)
    scaling = statistics.median([c / b for c, b in zip(t0, tn)])
    cuda = many[0]["device"].startswith("cuda")
    return {"nproc": nproc, "threads_per_rank": threads, "single_threads": nproc * threads,
            "global_batch": bc.batch, "per_rank_batch": many[0]["per_rank_batch"], "device": many[0]["device"],
            "size": bc.size, "steps_per_round": steps, "rounds": rounds,
            "single_s": [round(v, 4) for v in t1], "ranks_s": [round(v, 4) for v in tn],
            "one_rank_resources_s": [round(v, 4) for v in t0],
            "speedup_paired_median": round(speedup, 3),
            # against one process with one rank's threads (one device): ideal nproc
            "scaling_vs_one_rank_paired_median": round(scaling, 3),
            "efficiency": round(speedup / (nproc if cuda else 1), 3), "load1": loads}


def format_dp(res: dict) -> str:
    side = "1 device" if res["device"].startswith("cuda") else f"1 process x {res['single_threads']} threads"
    return (f"data parallel ({res['size']}, global batch {res['global_batch']}, {res['per_rank_batch']} per rank, "
            f"{res['device']}): {res['nproc']} ranks x {res['threads_per_rank']} thread(s) "
            f"{statistics.median(res['ranks_s']):.4f} s/step vs {side} {statistics.median(res['single_s']):.4f} "
            f"s/step; speedup {res['speedup_paired_median']:.3f} (paired median of {res['rounds']} rounds), "
            f"efficiency {res['efficiency']:.3f}; against 1 process x {res['threads_per_rank']} thread(s) "
            f"{statistics.median(res['one_rank_resources_s']):.4f} s/step: "
            f"{res['scaling_vs_one_rank_paired_median']:.3f}x (ideal {res['nproc']}); load {res['load1']}")


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "dp-worker":
        out = _dp_worker(json.loads(argv[1]))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(out), flush=True)
        return 0
    if len(argv) == 2 and argv[0] == "worker":
        _limit_memory()
        try:
            out = _worker(json.loads(argv[1]))
        except MemoryError:
            out = {"error": "out of memory (worker capped at 80% of available memory)"}
        except RuntimeError as e:
            msg = str(e)
            first_line = msg.splitlines()[0][:300] if msg else type(e).__name__
            out = {"error": ("out of memory: " if "memory" in msg.lower() else "") + first_line}
        print(json.dumps(out), flush=True)
        return 0
    print("usage: stablenas bench ... (this module's entry point is only the memory worker)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

