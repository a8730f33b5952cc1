"""Calibrate the S5 ground-truth protocol: do architectures differ by more than seed noise?

Trains four S5 architectures that span the space -- all sep_conv (index 0), a DARTS-like mix
(normal sep_conv + skip, reduce max_pool x2: index 17), all skip_connect (40), and
max_pool normal + sep_conv reduce (index 74) -- for two seeds each under a candidate protocol,
recording the test accuracy after every epoch (so one run shows how the ranking develops with
training length). Prints one JSON line per run and a summary (spread between architectures vs.
spread between seeds).

    nice -n 10 python benchmarks/s5_calibrate.py --out runs/s5-calibrate --jobs 2 \
        [--set epochs=4 --set subset=4000 ...]   # protocol changes on top of S5_PROTOCOL
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ARCHS = (0, 17, 40, 74)


def _one(args: tuple[int, int, dict, str]) -> dict:
    index, seed, protocol, out = args
    import torch

    from stablenas.evaluate.train import train_config, train_genotype
    from stablenas.skeletons.darts.s5_table import enumerate_s5

    cfg = train_config(None, {**protocol, "seed": seed, "eval_every": 1})
    torch.set_num_threads(cfg.threads or 1)
    from stablenas.runs.directory import RunDir

    resume = RunDir(out, kind="train", config_name="train.json").is_run()  # --resume on a missing dir is refused
    r = train_genotype(enumerate_s5()[index], cfg, out, resume=resume, progress=False, log=lambda s: None)
    curve = [m.get("test_acc") for m in map(json.loads, open(Path(out) / "metrics.jsonl"))][:-1]
    return {"index": index, "seed": seed, "test_acc": r["test_acc"], "curve": [*curve, r["test_acc"]],
            "params": r["params"], "seconds": r["seconds"]}


def main(argv: list[str] | None = None) -> None:
    from stablenas.config import apply_overrides
    from stablenas.experiments.s5 import S5_PROTOCOL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/s5-calibrate")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args(argv)
    protocol = apply_overrides(dict(S5_PROTOCOL), a.overrides, example="epochs=8")  # the one --set parser
    tasks = [(i, s, protocol, f"{a.out}/arch{i:02d}-seed{s}") for s in a.seeds for i in ARCHS]
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as ex:
        results = list(ex.map(_one, tasks))
    for r in results:
        print(json.dumps(r), flush=True)
    by_arch = {i: [r["test_acc"] for r in results if r["index"] == i] for i in ARCHS}
    means = [statistics.fmean(v) for v in by_arch.values()]
    seed_sd = [statistics.stdev(v) for v in by_arch.values() if len(v) > 1]
    print(json.dumps({"protocol": protocol, "arch_means": dict(zip(ARCHS, means)),
                      "range_between_archs": max(means) - min(means),
                      "mean_seed_std": statistics.fmean(seed_sd) if seed_sd else None}), file=sys.stderr)


if __name__ == "__main__":
    main()
