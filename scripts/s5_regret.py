"""Test regret on S5 (robust-darts Fig. 2) of DARTS and stabilised methods, several seeds each.

Every run searches space S5 on Fashion-MNIST; the epoch records carry ``test_regret`` (best test
accuracy in S5 minus that of the architecture derived at that epoch) looked up in the packaged S5
table -- or, for runs made before the table existed, looked up here from the recorded genotypes.
Resumable: finished runs are skipped, interrupted ones continue from their checkpoint.

    nice -n 10 python scripts/s5_regret.py --out runs/s5-regret --jobs 2 --seeds 0 1 --epochs 12

Methods (all first order, so that the comparison isolates the stabilisation; pass --methods):
  darts       the DARTS preset (alternating 1st-order alpha and weight steps)
  sdarts-rs   SDARTS-RS: weight steps at randomly perturbed op weights
  r-darts-l2  R-DARTS(L2) strength i=27: weight decay 8.1e-3 during the search (1st order here;
              the preset's Hessian tracking is switched off: it does not change the search)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

COMMON = ["space=s5", "data.dataset=fashion-mnist", "data.subset=2560", "network.channels=8",
          "network.layers=5", "optim.arch_lr=3.0e-3", "search.val_batches=8", "threads=1"]
EXTRA = {
    "darts": [],
    "sdarts-rs": [],
    "r-darts-l2": ["search.update=first", "methods=[]"],
}


def _run(args: tuple[str, int, int, str]) -> dict:
    method, seed, epochs, out = args
    import torch

    from stablenas.analysis.run import load_run
    from stablenas.config import load_config
    from stablenas.search.loop import Search

    torch.set_num_threads(1)
    cfg = load_config(method, [*COMMON, *EXTRA.get(method, []), f"optim.epochs={epochs}", f"seed={seed}"])
    path = Path(out)
    t = time.perf_counter()
    if not (path / "genotype.json").exists():
        Search(cfg, path, resume=(path / "config.yaml").exists(), progress=False, log=lambda s: None).run()
    run = load_run(path)
    return {"method": method, "seed": seed, "dir": out, "wall": time.perf_counter() - t,
            "metrics": run.metrics}


def main(argv: list[str] | None = None) -> None:
    from stablenas.evaluate.s5 import load_table
    from stablenas.genotype import Genotype

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/s5-regret")
    p.add_argument("--methods", nargs="+", default=list(EXTRA))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    tasks = [(m, s, a.epochs, f"{a.out}/{m}-seed{s}") for m in a.methods for s in a.seeds]
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as ex:
        runs = list(ex.map(_run, tasks))
    table = load_table("fashion-mnist")
    if table is None or not table.covers():
        raise SystemExit("searches done, but there is no complete S5 table for fashion-mnist yet: run "
                         "`stablenas s5-table`, then this script again (it reuses the finished searches)")
    summary = {}
    lines = ["| Method | Seed | Test regret (%) per epoch | Last-epoch regret (%) | Last arch test acc (%) | "
             "Search (min) |", "|---|---|---|---|---|---|"]
    for r in runs:
        curve = []
        for m in r["metrics"]:
            g = Genotype.from_dict(m["genotype"])
            curve.append(m["test_regret"] if "test_regret" in m else table.regret(g))
        last = Genotype.from_dict(r["metrics"][-1]["genotype"])
        summary.setdefault(r["method"], []).append(curve[-1])
        mins = sum(m["seconds"] for m in r["metrics"]) / 60
        lines.append(f"| {r['method']} | {r['seed']} | {' '.join(f'{100 * c:.1f}' for c in curve)} | "
                     f"{100 * curve[-1]:.2f} | {100 * table.test_acc(last):.2f} | {mins:.1f} |")
    lines += ["", "| Method | Last-epoch test regret (%), mean ± std over seeds |", "|---|---|"]
    for m, v in summary.items():
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        lines.append(f"| {m} | {100 * statistics.fmean(v):.2f} ± {100 * sd:.2f} (n={len(v)}) |")
    s = table.summary()
    lines += ["", f"S5 table: best {100 * s['best']:.2f} %, median {100 * s['median']:.2f} %, worst "
                  f"{100 * s['worst']:.2f} % test accuracy ({table.meta.get('command')})"]
    text = "\n".join(lines) + "\n"
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "regret.md").write_text(text)
    (Path(a.out) / "regret.json").write_text(json.dumps({"last_regret": summary, "runs": [
        {k: v for k, v in r.items() if k != "metrics"} for r in runs]}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
