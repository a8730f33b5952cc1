"""lambda_max over a DARTS search with and without search-time regularisation (the shape of
robust-darts Fig. 13 / 14), small enough for a CPU: space S3, Fashion-MNIST subset, 5 cells x 8
channels, first-order DARTS with the quickstart's alpha learning rate.

Three runs differ only in the regularisation of the inner (weight) problem:
  base : optim.weight_decay = 3e-4 (DARTS default)
  l2   : optim.weight_decay = 8.1e-3 (27x, the r-darts-l2 preset)
  dp   : regularization.drop_path_max = 0.4 and data.cutout = 16 (the r-darts-dp preset)
Each tracks lambda_max every epoch with method `hessian` (1 validation batch of 64, BN in train
mode, ``--iters`` Lanczos steps), then `analyze` + `report` run on it, and a figure overlays the
lambda_max trajectories with their 5-epoch local averages and where the DARTS-ES rule would stop.
Sized for a shared 2-core CPU (~7 CPU-minutes per variant at the defaults).

    nice -n 5 python scripts/curvature_regularization.py --out runs/curvature-reg --epochs 12 --subset 1024
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import stablenas as sn
from stablenas.analysis.analyze import analyze_run, lambda_info
from stablenas.analysis.report import write_comparison, write_report
from stablenas.search.loop import Search

VARIANTS = {
    "base": [],
    "l2": ["optim.weight_decay=8.1e-3"],
    "dp": ["regularization.drop_path_max=0.4", "data.cutout=16"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/curvature-reg")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--subset", type=int, default=1024)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--spectrum", default="no", help="exact Hessian spectrum in the analysis: yes | no")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--no-analyze", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    common = ["space=s3", "data.dataset=fashion-mnist", f"data.subset={args.subset}", "data.batch_size=64",
              "network.channels=8", "network.layers=5", f"optim.epochs={args.epochs}", "optim.arch_lr=3e-3",
              "search.val_batches=4", f"seed={args.seed}", f"threads={args.threads}",
              f"methods=[{{name: hessian, every: 1, batches: 1, iters: {args.iters}}}]"]
    summary = {}
    for name in args.variants:
        run_dir = out / name
        cfg = sn.load_config("quickstart", common + VARIANTS[name])
        t = time.perf_counter()
        resume = (run_dir / "checkpoint.pt").exists()
        res = Search(cfg, run_dir, resume=resume, progress=False).run()
        secs = time.perf_counter() - t
        lam = lambda_info(res.metrics)
        summary[name] = {"overrides": VARIANTS[name], "seconds": round(secs, 1),
                         "lambda_max": lam["lambda_max"], "local_average": lam["local_average"],
                         "es_simulated": lam["simulated_stop"], "final_val_acc": res.metrics[-1]["val_acc"],
                         "lambda_seconds_mean": sum(r.get("lambda_seconds", 0) for r in res.metrics) /
                         len(res.metrics), "epoch_seconds_mean": sum(r["seconds"] for r in res.metrics) /
                         len(res.metrics), "genotype": res.genotype.to_dict(), "loadavg": os.getloadavg()}
        if not args.no_analyze:
            a = analyze_run(run_dir, batches=1, grid=7, radius=1.0, spectrum=args.spectrum)
            summary[name].update({"acc_drop": a["discretization"]["acc_drop"], "cells": a["cells"],
                                  "spectrum_top5": a["curvature"].get("spectrum_top", [])[:5],
                                  "lambda_max_end_exact": a["curvature"].get("lambda_max_exact")})
            write_report(run_dir)
        print(json.dumps({name: summary[name]}, indent=1), flush=True)
    figure(summary, out / "lambda_regularization.png")
    if len(args.variants) > 1:
        write_comparison([out / n for n in args.variants], out / "comparison.html")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def figure(summary: dict, path: Path) -> None:
    from stablenas.analysis import plots

    plt = plots.plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, s) in enumerate(summary.items()):
        ep = list(range(1, len(s["lambda_max"]) + 1))
        a1.plot(ep, s["lambda_max"], "o-", color=f"C{i}", ms=3, label=name)
        la = s["local_average"]
        if la:
            a2.plot([e for e, _ in la], [v for _, v in la], "-", color=f"C{i}", lw=2, label=name)
        st = s["es_simulated"]
        if st:
            val = dict((e, v) for e, v in la).get(st["stop_epoch"])
            if val is not None:
                a2.plot([st["stop_epoch"]], [val], "*", color=f"C{i}", ms=14)
    a1.set_title("lambda_max per epoch")
    a2.set_title("local average (5 epochs); * = DARTS-ES stop (returned epoch)")
    for a in (a1, a2):
        plots._epoch_axis(a)
        a.grid(alpha=0.3)
        a.legend()
    a1.set_ylabel("dominant eigenvalue")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(plots._png(fig))


if __name__ == "__main__":
    main()
