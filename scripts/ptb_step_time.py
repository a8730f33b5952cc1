"""Seconds per search step (1st-order DARTS: alpha step + weight step) of the PTB presets, interleaved.

Usage: OMP_NUM_THREADS=1 python scripts/ptb_step_time.py [--steps N] [--threads T] [--presets ptb,ptb-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import stablenas as sn
from stablenas.search.loop import Search


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--presets", default="ptb,ptb-cpu")
    ap.add_argument("--update", default="first")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    searches = {}
    for p in args.presets.split(","):
        cfg = sn.load_config(p, [f"search.update={args.update}", f"threads={args.threads}"])
        s = Search(cfg, None, progress=False, log=lambda m: None)
        s.start_epoch(0)
        s.step(next(iter(s.train_loader)))  # warm-up
        searches[p] = (s, iter(s.train_loader))
    times: dict[str, list[float]] = {p: [] for p in searches}
    for _ in range(args.steps):  # interleaved: load changes hit every preset alike
        for p, (s, it) in searches.items():
            b = next(it)
            t = time.perf_counter()
            s.step(b)
            times[p].append(time.perf_counter() - t)
    out = {p: {"seconds_per_step": sorted(v)[len(v) // 2], "all": [round(x, 3) for x in v]} for p, v in times.items()}
    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
