"""Compare the stabilised search methods with first-order DARTS on one small budget.

For every method and seed (--seeds): one search on the quickstart budget (space S3, Fashion-MNIST subset, 5 cells of
8 channels, batch 64) with only the method's defining settings changed, and the share of
parameter-free ops (skip_connect / none / pooling) in the normal cell it returns -- the quantity of
sdarts.txt Table 5. Then the seconds per search step (alpha step + weight step, as the loop runs
them) relative to first-order DARTS, measured in one process, interleaved round-robin after a
warm-up, median over rounds, so machine load affects all methods alike.

    nice -n 5 /work/venv/bin/python scripts/compare_methods.py --out runs/compare-methods --seeds 2 3

Writes ``results.json`` and ``table.md`` in --out (and the search runs under --out/runs/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import stablenas as sn
from stablenas.search.loop import Search
from stablenas.spaces.ops import is_parameter_free

# method -> overrides of the quickstart preset that make the search that method (paper settings that
# define the method; the budget -- epochs, lr, data -- stays the quickstart's for every method)
METHODS: dict[str, list[str]] = {
    "darts": [],
    "sdarts-rs": ["methods=[{name: sdarts-rs}]"],
    "sdarts-adv": ["methods=[{name: sdarts-adv}]"],
    "ms-darts": ["methods=[{name: ms-darts}]"],
    "single-darts": ["search.update=single", "arch.activation=sigmoid", "arch.init=-1.9459101",
                     "optim.arch_weight_decay=0.0", "methods=[{name: single-darts}]"],
    "idarts": ["network.node_norm=true", "search.discretizer=decorrelation",
               "methods=[{name: idarts, images: 2000}]"],
    "pc-darts": ["network.partial_channels=4", "arch.edge_betas=true", "methods=[{name: pc-darts}]"],
    "gdas": ["methods=[{name: gdas}]"],
    "rs-ws": ["search.update=none", "methods=[{name: rs-ws, samples: 100, eval_batches: 2, top_k: 5}]"],
}


def config(name: str, args: argparse.Namespace, seed: int) -> sn.SearchConfig:
    base = [f"optim.epochs={args.epochs}", f"data.subset={args.subset}", f"seed={seed}",
            f"threads={args.threads}", "evaluation.lookup=false"]
    return sn.load_config("quickstart", base + METHODS[name])


def param_free_share(genotype: sn.Genotype) -> float:
    ops = genotype.ops("normal")
    return sum(is_parameter_free(op) for op in ops) / len(ops)


def one_step(s: Search, it) -> None:
    """One iteration of the search loop body (Search.train_epoch), without the bookkeeping."""
    s.step(next(it))


def time_steps(names: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    searches = {n: Search(config(n, args, args.seeds[0]), None, progress=False, log=lambda m: None) for n in names}
    iters = {}
    for s in searches.values():
        s.start_epoch(0)
        s.net.train()
        iters[s] = iter(s.train_loader)
    for s in searches.values():  # warm-up: allocator, oneDNN primitive caches, lazy state
        for _ in range(args.warmup_steps):
            one_step(s, iters[s])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for n in order:
            s = searches[n]
            t0 = time.perf_counter()
            for _ in range(args.steps_per_round):
                one_step(s, iters[s])
            times[n].append((time.perf_counter() - t0) / args.steps_per_round)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/compare-methods"))
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--subset", type=int, default=3840)
    p.add_argument("--seeds", type=int, nargs="+", default=[2],
                   help="one search per method and seed (run processes on disjoint seeds, then one with all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=4, help="timing rounds (each method once per round)")
    p.add_argument("--steps-per-round", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--skip-search", action="store_true", help="timing only")
    p.add_argument("--skip-timing", action="store_true",
                   help="searches only (run several such processes on disjoint --methods, then one with all)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.methods if n in METHODS]
    if "darts" not in names and not args.skip_timing:  # the timing is relative to DARTS
        names.insert(0, "darts")
    args.out.mkdir(parents=True, exist_ok=True)
    load = {"start": os.getloadavg()}
    cpu0 = time.process_time()

    results: dict[str, dict] = {n: {} for n in names}
    if not args.skip_search:
        for n in names:
            per_seed = {}
            for seed in args.seeds:
                run_dir = args.out / "runs" / f"{n}-seed{seed}"
                t0, c0 = time.perf_counter(), time.process_time()
                # a finished or interrupted run in --out is resumed (a finished one returns at once)
                s = Search(config(n, args, seed), run_dir, resume=(run_dir / "checkpoint.pt").exists(),
                           progress=False, log=lambda m, n=n, seed=seed: print(f"[{n} {seed}] {m}", flush=True))
                r = s.run()
                per_seed[seed] = {"genotype": r.genotype.to_dict(), "normal_ops": r.genotype.ops("normal"),
                                  "param_free_share": param_free_share(r.genotype),
                                  "final_val_acc": r.metrics[-1]["val_acc"],
                                  "search_s": sum(m.get("seconds", 0.0) for m in r.metrics),
                                  "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
                print(f"{n} seed {seed}: param-free share {per_seed[seed]['param_free_share']:.3f}  "
                      f"{r.genotype}", flush=True)
            shares = [v["param_free_share"] for v in per_seed.values()]
            results[n] = {"seeds": per_seed, "param_free_share": statistics.mean(shares),
                          "final_val_acc": statistics.mean(v["final_val_acc"] for v in per_seed.values())}
    load["after_search"] = os.getloadavg()
    if args.skip_timing:
        return

    times = time_steps(names, args)
    load["end"] = os.getloadavg()
    base = statistics.median(times["darts"])
    for n in names:
        results.setdefault(n, {})
        results[n]["s_per_step"] = statistics.median(times[n])
        results[n]["rel_step_time"] = statistics.median(times[n]) / base
        results[n]["step_times"] = times[n]

    meta = {"args": {k: str(v) for k, v in vars(args).items()}, "loadavg": load,
            "cpu_s_total": time.process_time() - cpu0, "torch": torch.__version__}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = ["| method | param-free share, normal cell (mean) | per seed | final val acc (mean) "
             "| s/step | rel. to DARTS |", "|---|---|---|---|---|---|"]
    for n in names:
        r = results[n]
        share = f"{r['param_free_share']:.3f}" if "param_free_share" in r else "-"
        per = " / ".join(f"{v['param_free_share']:.3f}" for v in r.get("seeds", {}).values()) or "-"
        acc = f"{r['final_val_acc']:.3f}" if "final_val_acc" in r else "-"
        lines.append(f"| {n} | {share} | {per} | {acc} | {r['s_per_step']:.3f} | {r['rel_step_time']:.2f} |")
    lines.append("")
    for n in names:
        for seed, v in results[n].get("seeds", {}).items():
            lines.append(f"- {n} seed {seed}: normal cell {', '.join(v['normal_ops'])}")
    lines.append("")
    lines.append(f"load average (1/5/15 min): start {load['start']}, end {load['end']}; "
                 f"process CPU {meta['cpu_s_total']:.0f} s")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
