"""A CPU-budget PTB comparison: DARTS (1st), SDARTS-RS, SDARTS-ADV, R-DARTS(L2) at two factors, several seeds.

Every search starts from the ``ptb-cpu`` preset (space ``ptb``, 32 units, 30k training tokens) shrunk further
by ``--epochs`` / ``--steps``; every found cell is retrained from scratch with the ``ptb-cpu`` training preset
(shrunk by ``--train-epochs`` / ``--train-tokens``) and tested on the first ``--test-tokens`` of PTB test.
Writes one JSON line per finished (method, seed) to ``--out``/table.jsonl (resumable: finished rows are skipped).

Usage: OMP_NUM_THREADS=1 python scripts/ptb_budget_table.py --out runs/ptb-table [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import stablenas as sn
from stablenas.rnn.train import rnn_train_config, train_recurrent
from stablenas.rundir import RunDir
from stablenas.search.loop import Search

METHODS = {
    "DARTS (1st)": [],
    "SDARTS-RS": ["methods=[{name: sdarts-rs}]"],
    "SDARTS-ADV": ["methods=[{name: sdarts-adv, steps: %(adv_steps)d}]"],
    "R-DARTS(L2) 45e-7": ["optim.weight_decay=4.5e-6"],
    "R-DARTS(L2) 135e-7": ["optim.weight_decay=1.35e-5"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--adv-steps", type=int, default=3)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--train-tokens", type=int, default=40000)
    ap.add_argument("--test-tokens", type=int, default=20000)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "table.jsonl"
    done = {(r["method"], r["seed"]) for r in map(json.loads, table.read_text().splitlines())} \
        if table.exists() else set()
    for seed in args.seeds:
        for name in args.methods.split(","):
            if (name, seed) in done:
                continue
            extra = [s % {"adv_steps": args.adv_steps} for s in METHODS[name]]
            cfg = sn.load_config("ptb-cpu", [f"seed={seed}", f"optim.epochs={args.epochs}",
                                             f"search.steps_per_epoch={args.steps}", "threads=1", *extra])
            tag = name.replace(" ", "_").replace("(", "").replace(")", "")
            t0 = time.perf_counter()
            run_dir = args.out / f"{tag}-s{seed}"
            res = Search(cfg, run_dir, resume=(run_dir / "config.yaml").exists(), progress=False,
                         log=lambda m: None).run()
            search_s = time.perf_counter() - t0
            g = res.genotype
            tcfg = rnn_train_config("ptb-cpu", {"epochs": args.train_epochs, "train_tokens": args.train_tokens,
                                                "test_tokens": args.test_tokens, "seed": seed, "threads": 1})
            t1 = time.perf_counter()
            train_dir = args.out / f"{tag}-s{seed}-train"
            resume = RunDir(train_dir, kind="train", config_name="train.json").is_run()
            tr = train_recurrent(g, tcfg, train_dir, resume=resume, log=lambda m: None)
            row = {"method": name, "seed": seed, "genotype": g.to_dict(), "identity_share": g.share("identity"),
                   "none_share": g.share("none"), "search_val_ppl": res.metrics[-1]["val_ppl"],
                   "search_seconds": round(search_s, 1), "retrain_valid_ppl": tr["valid_ppl"],
                   "retrain_test_ppl": tr.get("test_ppl"), "retrain_seconds": round(time.perf_counter() - t1, 1),
                   "protocol": {"search": cfg.to_dict(), "train": tcfg.model_dump()}}
            with open(table, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} seed {seed}: identity {row['identity_share']:.2f}  search val ppl "
                  f"{row['search_val_ppl']:.1f}  retrained test ppl {row['retrain_test_ppl']:.1f}  "
                  f"({row['search_seconds']:.0f}s + {row['retrain_seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
