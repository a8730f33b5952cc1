"""Peak memory growth of one search iteration (or one lambda_max estimate) in this fresh process, with
engine options changed: what each memory-relevant option costs or saves.

    python benchmarks/engine_memory.py [--size cpu-study|paper] --what first_order|second_order|lambda_max
                                    [--engine fast|plain_cl] [--opts linear_pw=never,light_recompute=never]

The procedure of ``stablenas bench``'s memory worker (``bench.memory.measure_peak``: build, reset the RSS high-water
mark, run once, report VmHWM growth), plus ``--opts`` (``supernet.kernels.EngineOptions`` fields) applied
to the engine. Run one process per figure; prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
from dataclasses import replace

from stablenas.bench import add_size_arguments, sized_from_args
from stablenas.bench.memory import hwm_bytes, maxrss_bytes, reset_peak_rss, rss_bytes
from stablenas.bench.steps import (
    as_channels_last,
    base_config,
    batches,
    engine_objective,
    make_search,
    plain_model,
    search_iteration,
)
from stablenas.supernet.kernels import DEFAULT
from stablenas.supernet.network import set_engine


def _value(v: str):
    return {"True": True, "False": False}.get(v, int(v) if v.isdigit() else v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(p, "cpu-study")
    p.add_argument("--what", choices=("first_order", "second_order", "lambda_max"), default="first_order")
    p.add_argument("--engine", choices=("fast", "plain_cl"), default="fast")
    p.add_argument("--opts", default="", help="comma-separated EngineOptions changes, e.g. linear_pw=never")
    args = p.parse_args()
    changes = dict(a.split("=", 1) for a in args.opts.split(",") if a)
    changes = {k: _value(v) for k, v in changes.items()}
    bc = sized_from_args(args)
    s = make_search(base_config(bc, "second" if args.what == "second_order" else "first"), bc)
    set_engine(s.net, replace(DEFAULT, **changes))
    train, val = batches(s)
    if args.what == "lambda_max":
        from stablenas import curvature as cur

        obj = engine_objective(cur, s, bc, args.engine)
        fn = lambda: cur.dominant_eigenvalue(obj, iters=2)  # noqa: E731
    elif args.engine == "plain_cl":
        _, step = plain_model(s, bc, channels_last=True)
        t, v = as_channels_last(train), as_channels_last(val)
        fn = lambda: step(t, v, unrolled=args.what == "second_order")  # noqa: E731
    else:
        fn = search_iteration(s, train, val)
    gc.collect()
    reset_peak_rss()
    base = rss_bytes()
    fn()
    peak = hwm_bytes() or maxrss_bytes()
    print(json.dumps({"what": args.what, "engine": args.engine, "opts": changes,
                      "growth_mb": round((peak - base) / 2**20, 1)}))


if __name__ == "__main__":
    main()
