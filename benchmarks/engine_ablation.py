"""What each engine change buys: seconds per search iteration with one change undone at a time,
against the full engine and the plain DARTS reimplementation (channels-first and channels_last),
interleaved in one process.

    python benchmarks/engine_ablation.py [--size cpu-study | --cells 8 --channels 16 --batch 64 --input 3x32x32]
                                      [--update first|second] [--repeats 3] [--threads 1]
                                      [--only no-recompute,plain-darts-cl]

Variants (each undoes one change; the rest of the engine stays on; engine options are
``supernet.kernels.EngineOptions``, switched with ``supernet.network.engine_options``):
  engine            everything on (what `stablenas search` runs)
  channels-first    network.channels_last=false
  no-fused-path     fused=False: every op module called as written (none still skipped)
  no-shared-pools   every edge pools (and batch-normalises the pooled map) on its own
  no-conv-avg-pool  average pooling by torch's avg_pool2d instead of a ones-kernel depthwise conv
  no-phase-dilation dilated depthwise convs run as dilated convs, not as plain convs on polyphase inputs
  tiled-dw5         (off by default) 5x5 depthwise weight gradients on small maps from four 3x3 tiles
  no-recompute      activations inside sep/dil convs stored for backward instead of recomputed
  checkpoint-recompute  the recomputation by torch.utils.checkpoint instead of the PwBN/SepMid Functions
  no-dense-grads    node gradients reach the BN backwards that read them as channel slices (not dense)
  conv-pointwise    1x1 convs by the library conv instead of a matrix product on the NHWC view
  no-shared-subsample  FactorizedReduce and stride-2 dil convs slice the rectified input per op
  no-phase-sums     each dil conv's phase-layout output converted back on its own, not once per node
  no-scaled-terms   each shared pool output multiplied by the op weight into a new map, then added
  recompute-from-16 recomputation also on 16x16 maps (recompute_min_side 16)
  plain-darts       supernet.reference: per-op Python loop, `none` computed, channels-first
  plain-darts-cl    the same after model.to(memory_format=torch.channels_last), channels_last inputs
Writes a JSON line per variant and a markdown table (median, min-max, x engine) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from stablenas.bench import add_size_arguments, sized_from_args
from stablenas.bench.steps import (
    as_channels_first,
    as_channels_last,
    base_config,
    batches,
    make_search,
    plain_model,
    search_iteration,
)
from stablenas.bench.timing import load1
from stablenas.supernet.network import engine_options


def _time_rotated(variants: dict, warmup: int, repeats: int, clock) -> dict[str, list[float]]:
    """Each variant's timed calls after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(warmup + repeats):
        # rotate the order every round: no variant always runs first (cold caches) or last
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, ctx = variants[name]
            with ctx():
                t = clock()
                fn()
                dt = clock() - t
            if r >= warmup:
                times[name].append(dt)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(p, "paper")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--only", default="", help="comma-separated variants to run (engine always runs)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time (a machine shared with other jobs)")
    args = p.parse_args()
    bc = sized_from_args(args)
    cl = make_search(base_config(bc, args.update), bc)
    cf_cfg = base_config(bc, args.update)
    cf_cfg["network"] = {**cf_cfg["network"], "channels_last": False}
    cf = make_search(cf_cfg, bc)
    cf.net.load_state_dict(cl.net.state_dict())
    cf.arch.load_state_dict(cl.arch.state_dict())
    train, val = batches(cl)
    it_cl = search_iteration(cl, train, val)
    it_cf = search_iteration(cf, as_channels_first(train), as_channels_first(val))
    unrolled = args.update == "second"
    _, plain_step = plain_model(cl, bc)
    _, plain_cl_step = plain_model(cl, bc, channels_last=True)
    tp, vp = as_channels_first(train), as_channels_first(val)
    tc, vc = as_channels_last(train), as_channels_last(val)

    def undo(**change):
        return lambda: engine_options(cl.net, **change)

    variants = {
        "engine": (it_cl, contextlib.nullcontext),
        "channels-first": (it_cf, contextlib.nullcontext),
        "no-fused-path": (it_cl, undo(fused=False)),
        "no-shared-pools": (it_cl, undo(shared_pools=False)),
        "no-conv-avg-pool": (it_cl, undo(conv_avg_pool=False)),
        "no-phase-dilation": (it_cl, undo(phase_dilation="never")),
        "tiled-dw5": (it_cl, undo(small_dw5="cpu")),
        "no-recompute": (it_cl, undo(recompute=False)),
        "checkpoint-recompute": (it_cl, undo(light_recompute="never")),
        "no-dense-grads": (it_cl, undo(dense_grads=False)),
        "conv-pointwise": (it_cl, undo(linear_pw="never")),
        "no-shared-subsample": (it_cl, undo(shared_subsample=False)),
        "no-phase-sums": (it_cl, undo(phase_sums=False)),
        "no-scaled-terms": (it_cl, undo(scaled_terms=False)),
        "recompute-from-16": (it_cl, undo(recompute_min_side=16)),
        "plain-darts": (lambda: plain_step(tp, vp, unrolled=unrolled), contextlib.nullcontext),
        "plain-darts-cl": (lambda: plain_cl_step(tc, vc, unrolled=unrolled), contextlib.nullcontext),
    }
    if args.only:
        wanted = {"engine", *args.only.split(",")}
        unknown = wanted - variants.keys()
        if unknown:
            p.error(f"--only: unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(variants)}")
        variants = {k: v for k, v in variants.items() if k in wanted}
    times = _time_rotated(variants, args.warmup, args.repeats,
                          time.perf_counter if args.clock == "wall" else time.process_time)
    _report(times, bc, args)


def _report(times: dict[str, list[float]], bc, args) -> None:
    """One JSON line and one markdown row per variant, relative to the engine."""
    base = statistics.median(times["engine"])
    print(f"{bc.size}: {bc.cells} cells x {bc.channels} channels, batch {bc.batch}, input {bc.input}; "
          f"{args.update}-order iteration; {torch.get_num_threads()} threads; {args.clock} clock; load1 {load1()}")
    print(f"| variant | s / {args.update}-order iteration (median) | min-max | x engine time (paired median) |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        paired = statistics.median([a / b for a, b in zip(ts, times["engine"])])
        print(json.dumps({"variant": name, "median_s": round(m, 3), "times": [round(t, 3) for t in ts]}))
        print(f"| {name} | {m:.2f} | {min(ts):.2f}-{max(ts):.2f} | {m / base:.2f} ({paired:.2f}) |")


if __name__ == "__main__":
    main()
