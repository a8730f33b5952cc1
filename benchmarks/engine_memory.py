"""Peak memory growth of one search iteration (or one lambda_max estimate) in this fresh process, with
engine options changed: what each memory-relevant option costs or saves.

    python benchmarks/engine_memory.py [--size cpu-study|paper] --what first_order|second_order|lambda_max
                                    [--engine fast|plain_cl] [--opts linear_pw=never,light_recompute=never]

The procedure of ``stablenas bench``'s memory worker (``bench._worker``: build, reset the RSS high-water
mark, run once, report VmHWM growth), plus ``--opts`` (``supernet.kernels.EngineOptions`` fields) applied
to the engine. Run one process per figure; prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
from dataclasses import replace

from stablenas import bench as B
from stablenas.supernet.kernels import DEFAULT
from stablenas.supernet.network import set_engine


def _value(v: str):
    return {"True": True, "False": False}.get(v, int(v) if v.isdigit() else v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_size_arguments(p, "cpu-study")
    p.add_argument("--what", choices=("first_order", "second_order", "lambda_max"), default="first_order")
    p.add_argument("--engine", choices=("fast", "plain_cl"), default="fast")
    p.add_argument("--opts", default="", help="comma-separated EngineOptions changes, e.g. linear_pw=never")
    args = p.parse_args()
    changes = dict(a.split("=", 1) for a in args.opts.split(",") if a)
    changes = {k: _value(v) for k, v in changes.items()}
    bc = B.sized_from_args(args)
    s = B.make_search(B._base_config(bc, "second" if args.what == "second_order" else "first"), bc)
    set_engine(s.net, replace(DEFAULT, **changes))
    train, val = B._batches(s)
    if args.what == "lambda_max":
        cur = B._curvature_module()
        obj = B.engine_objective(cur, s, bc, args.engine)
        fn = lambda: cur.dominant_eigenvalue(obj, iters=2)  # noqa: E731
    elif args.engine == "plain_cl":
        _, step = B._plain_model(s, bc, channels_last=True)
        t, v = B._cl(train), B._cl(val)
        fn = lambda: step(t, v, unrolled=args.what == "second_order")  # noqa: E731
    else:
        fn = B._search_iteration(s, train, val)
    gc.collect()
    B._reset_peak_rss()
    base = B._rss_bytes()
    fn()
    peak = B._hwm_bytes() or B._maxrss_bytes()
    print(json.dumps({"what": args.what, "engine": args.engine, "opts": changes,
                      "growth_mb": round((peak - base) / 2**20, 1)}))


if __name__ == "__main__":
    main()
