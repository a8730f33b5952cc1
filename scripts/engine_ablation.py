"""What each engine change buys: seconds per first-order search iteration with one change undone at a
time, against the full engine and the plain DARTS reimplementation, interleaved in one process.

    python scripts/engine_ablation.py [--cells 8 --channels 16 --batch 64 --input 3x32x32] [--repeats 3]

Variants (each undoes one change; the rest of the engine stays on):
  engine            everything on (what `stablenas search` runs)
  channels-first    network.channels_last=false
  no-fused-path     supernet.network.fast_path(False): every op module called as written (none still skipped)
  no-phase-dilation dilated depthwise convs run as dilated convs, not as plain convs on polyphase inputs
  no-tiled-dw5      5x5 depthwise weight gradients on small maps by the library kernel
  plain-darts       supernet.reference: per-op Python loop, `none` computed, channels-first
Writes a JSON line per variant and a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from stablenas import bench as B
from stablenas.supernet import network as N


@contextlib.contextmanager
def module_flag(name: str, value):
    old = getattr(N, name)
    setattr(N, name, value)
    try:
        yield
    finally:
        setattr(N, name, old)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="darts")
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input", default="3x32x32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    bc = B.BenchConfig(space=args.space, cells=args.cells, channels=args.channels, batch=args.batch,
                       input=B.parse_input(args.input))
    cl = B.make_search(B._base_config(bc), bc)
    cf_cfg = B._base_config(bc)
    cf_cfg["network"] = {**cf_cfg["network"], "channels_last": False}
    cf = B.make_search(cf_cfg, bc)
    cf.net.load_state_dict(cl.net.state_dict())
    cf.arch.load_state_dict(cl.arch.state_dict())
    train, val = B._batches(cl)
    it_cl, it_cf = B._search_iteration(cl, train, val), B._search_iteration(cf, B._cf(train), B._cf(val))
    _, plain_step = B._plain_model(cl, bc)
    tp, vp = B._cf(train), B._cf(val)
    variants = {
        "engine": (it_cl, contextlib.nullcontext),
        "channels-first": (it_cf, contextlib.nullcontext),
        "no-fused-path": (it_cl, lambda: N.fast_path(False)),
        "no-phase-dilation": (it_cl, lambda: module_flag("PHASE_DILATION", "never")),
        "no-tiled-dw5": (it_cl, lambda: module_flag("SMALL_DW5", "never")),
        "plain-darts": (lambda: plain_step(tp, vp, unrolled=False), contextlib.nullcontext),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.warmup + args.repeats):
        for name, (fn, ctx) in variants.items():
            with ctx():
                t = time.perf_counter()
                fn()
                dt = time.perf_counter() - t
            if r >= args.warmup:
                times[name].append(dt)
    base = statistics.median(times["engine"])
    print(f"| variant | s / first-order iteration | x engine time |  (load {torch.get_num_threads()} threads)")
    print("|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(json.dumps({"variant": name, "median_s": round(m, 3), "times": [round(t, 3) for t in ts]}))
        print(f"| {name} | {m:.2f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
