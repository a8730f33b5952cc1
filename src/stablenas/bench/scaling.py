"""How the fast first-order step scales: its time at twice the batch, the channels and the cells,
against its forward FLOPs (torch's ``FlopCounterMode``), variants interleaved repeat by repeat;
``time_per_work`` below 1 means the larger size uses the machine better than the base."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict

import torch

from .options import BenchConfig
from .steps import base_config, batches, make_search, search_iteration
from .timing import Series, load1, time_call


def _forward_flops(net: torch.nn.Module, x: torch.Tensor, weights) -> int:
    """Forward FLOPs of one batch (conv/linear/matmul), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was = net.training
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x, weights)
    net.train(was)
    return int(fc.get_total_flops())


def _variants(bc: BenchConfig) -> list[tuple]:
    """(name, config, search, its step, forward FLOPs, series) of the base and each doubled size."""
    changes = [("base", {}), ("batch x2", {"batch": 2 * bc.batch}),
               ("channels x2", {"channels": 2 * bc.channels}), ("cells x2", {"cells": 2 * bc.cells})]
    runs = []
    for name, change in changes:
        v = BenchConfig(**{**asdict(bc), **change})
        s = make_search(base_config(v), v)
        train, val = batches(s)
        w = {k: t.detach() for k, t in s.arch.op_weights().items()}
        flops = _forward_flops(s.net, train[0], w)
        runs.append((name, v, s, search_iteration(s, train, val), flops, Series()))
    return runs


def scaling(bc: BenchConfig, log: Callable[[str], None]) -> list[dict]:
    """One row per variant: its FLOPs and time, each relative to the base."""
    runs = _variants(bc)
    for r in range(bc.warmup + bc.repeats):
        for _name, _v, s, fn, _flops, series in runs:
            wall, cpu, _ = time_call(fn, s.device)
            if r >= bc.warmup:
                series.add(wall, cpu, load1())
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
