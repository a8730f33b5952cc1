"""The timing harness: a measurement's jobs (its engines side by side) interleaved repeat by repeat,
wall and process CPU seconds per call with the 1-minute load average beside each, and same-run
ratios of two series (of the medians, and the median of the per-repeat paired ratios, the figure
that survives a shared, noisy machine)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..runs.lifecycle import sync
from .options import ENGINES

# (name, the call to time, training images per call or None)
Job = tuple[str, Callable[[], Any], int | None]


def load1() -> float:
    """The 1-minute load average (nan where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on this platform
        return float("nan")


class Series:
    """The timed repeats of one job."""

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


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """Wall and process CPU seconds of one call (the device synchronised on both sides), and its result."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0, out


def ratio(slow: Series, fast: Series) -> dict:
    """Same-run ratios slow/fast: of medians, and the median of per-repeat paired ratios."""
    if not slow.wall or not fast.wall:
        return {}
    paired = [a / b for a, b in zip(slow.wall, fast.wall) if b > 0]
    paired_cpu = [a / b for a, b in zip(slow.cpu, fast.cpu) if b > 0]
    return {"of_medians": round(statistics.median(slow.wall) / statistics.median(fast.wall), 3),
            "paired_median": round(statistics.median(paired), 3) if paired else None,
            "cpu_paired_median": round(statistics.median(paired_cpu), 3) if paired_cpu else None}


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


class Measurements:
    """Every job a bench run times, by name (``<measurement>/<engine>``): its series, training
    images per call, returned lambda_max values, failure (a job that raises is reported, not
    retried) and, on CUDA, its peak memory in this process."""

    def __init__(self, warmup: int, repeats: int, device: torch.device, log: Callable[[str], None]) -> None:
        self.warmup, self.total, self.device, self.log = warmup, warmup + repeats, device, log
        self.series: dict[str, Series] = {}
        self.images: dict[str, int | None] = {}
        self.values: dict[str, list[dict]] = {}
        self.failed: dict[str, str] = {}
        self.cuda_peak: dict[str, dict] = {}

    def timed(self, jobs: list[Job]) -> None:
        """One measurement: its jobs (the engines side by side) interleaved repeat by repeat."""
        for name, _, img in jobs:
            self.series[name], self.images[name] = Series(), img
        for r in range(self.total):
            for name, fn, _img in jobs:
                if name not in self.failed:
                    self._repeat(r, name, fn)

    def _repeat(self, r: int, name: str, fn: Callable[[], Any]) -> None:
        try:
            base = _cuda_peak_reset(self.device)
            wall, cpu, out = time_call(fn, self.device)
            _cuda_peak_read(self.device, base, self.cuda_peak.setdefault(name, {}))
        except Exception as e:
            self.failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:240] if str(e) else ''}"
            self.log(f"  {name}: failed ({self.failed[name]})")
            return
        if r >= self.warmup:
            self.series[name].add(wall, cpu, load1())
            if out is not None and hasattr(out, "lambda_max"):
                self.values.setdefault(name, []).append({"lambda_max": out.lambda_max, "hvps": out.hvps})
        self.log(f"  repeat {r + 1}/{self.total} {'(warm-up) ' if r < self.warmup else ''}{name}: {wall:.3f} s "
                 f"(load {load1()})")

    def pair(self, key: str) -> dict:
        """A measurement's summary per engine, with the plain engines' times over the fast one's."""
        f, p, pc = (self.series.get(f"{key}/{eng}") for eng in ENGINES)
        img = self.images.get(f"{key}/fast")
        d: dict[str, Any] = {}
        for eng in ENGINES:
            s = self.series.get(f"{key}/{eng}")
            if s is not None:
                d[eng] = s.summary(img) or {"error": self.failed.get(f"{key}/{eng}")}
                d[eng].update(self.cuda_peak.get(f"{key}/{eng}", {}))
        if f is not None and p is not None:
            d["speedup"] = ratio(p, f)  # plain time / fast time
        if f is not None and pc is not None:
            d["speedup_vs_plain_cl"] = ratio(pc, f)  # plain channels_last time / fast time
        return d
