"""Where a search iteration's time goes: operator dispatches and the top operators by self time, for the
engine and the plain DARTS model in channels_last (bench's ``plain_cl``), on the same weights and batches.

    python benchmarks/engine_profile.py [--size cpu-study | --cells 5 --channels 8 --batch 64 --input 1x28x28]
                                     [--update first|second] [--threads 1] [--top 15]

Fewer, larger kernels make a faster step; this counts them (aten calls seen by torch.profiler in one
iteration, forward + backward + optimiser steps; on CUDA also the kernel launches) so a change can be
judged by its count as well as by its time. Profiling adds overhead per call: compare counts and
shares, take times from ``stablenas bench``.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from stablenas.bench import add_size_arguments, sized_from_args
from stablenas.bench.steps import as_channels_last, base_config, batches, make_search, plain_model, search_iteration
from stablenas.runs.lifecycle import sync


def _profile(fn, device: torch.device, top: int) -> dict:
    fn()  # warm-up (allocator, first-call paths)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    calls = sum(e.count for e in events)
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    out = {"aten_calls": calls, "self_cpu_ms": round(total / 1e3, 1),
           "top": [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
                    "share": round(e.self_cpu_time_total / max(total, 1), 3)} for e in rows]}
    if device.type == "cuda":
        out["cuda_kernels"] = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(p, "cpu-study")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    args = p.parse_args()
    bc = sized_from_args(args)
    search = make_search(base_config(bc, args.update), bc)
    train, val = batches(search)
    _, step = plain_model(search, bc, channels_last=True)
    t, v = as_channels_last(train), as_channels_last(val)
    unrolled = args.update == "second"
    res = {"config": f"{bc.space}, {bc.cells} cells x {bc.channels} ch, batch {bc.batch}, input "
                     f"{'x'.join(map(str, bc.input))}, {args.update} order, {torch.get_num_threads()} threads",
           "engine": _profile(search_iteration(search, train, val), search.device, args.top),
           "plain_cl": _profile(lambda: step(t, v, unrolled=unrolled), search.device, args.top)}
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"# one search iteration: {res['config']}\n")
    for name in ("engine", "plain_cl"):
        r = res[name]
        extra = f", {r['cuda_kernels']} CUDA kernels" if "cuda_kernels" in r else ""
        print(f"## {name}: {r['aten_calls']} aten calls, {r['self_cpu_ms']} ms self CPU (profiled){extra}\n")
        print("| op | calls | self CPU ms | share |\n|---|---|---|---|")
        for row in r["top"]:
            print(f"| {row['op']} | {row['calls']} | {row['self_cpu_ms']} | {row['share']:.1%} |")
        print()


if __name__ == "__main__":
    main()
