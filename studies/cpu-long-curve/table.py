"""Per-epoch table of the long-search curves: param-free share / train acc / lambda_max per run.

Reads each run's ``metrics.jsonl`` through ``stablenas.experiments.study.curves`` (the study's own
share definition: parameter-free ops among the ops of the normal cell derived at that epoch; the
whole cell in NAS-Bench-201, which has one cell type). Usage::

    python studies/cpu-long-curve/table.py [RUN_DIR ...] [--every N] [--summary]

With no RUN_DIR, every folder beside this script that holds a ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stablenas.experiments.study import curves
from stablenas.genotype import Genotype
from stablenas.spaces.ops import is_parameter_free


def load(run: Path) -> dict[str, list]:
    """The per-epoch series of one run, plus the free-op count of each epoch's cell."""
    with open(run / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f if line.strip()]
    series = curves(records)
    cells = [_cell_ops(r.get("genotype")) for r in records]
    series["free_ops"] = [_named(ops) for ops in cells]
    series["free_count"] = [None if ops is None else sum(map(is_parameter_free, ops)) for ops in cells]
    return series


def _cell_ops(genotype: dict | None) -> list[str] | None:
    """Ops of the normal cell (the one NAS-Bench-201 cell) of a recorded genotype."""
    if not genotype:
        return None
    g = Genotype.from_dict(genotype)
    return g.ops("normal" if "normal" in g.cell_types() else None)


def _named(ops: list[str] | None) -> str:
    """The parameter-free ops of a cell by name, e.g. ``avg_pool_3x3 x6``."""
    if ops is None:
        return "-"
    free = [op for op in ops if is_parameter_free(op)]
    return ", ".join(f"{op} x{free.count(op)}" for op in sorted(set(free))) or "none"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(runs: dict[str, dict[str, list]], every: int) -> list[str]:
    """Markdown rows: epochs 1, 1 + every, 1 + 2 every, ... (where the tracker measures lambda_max when
    every is its period) and the last of each run; one column per run."""
    names = list(runs)
    rows = ["| epoch | " + " | ".join(f"{n}: share / train acc / lambda_max" for n in names) + " |",
            "|---|" + "---|" * len(names)]
    by_epoch = {n: dict(zip(s["epoch"], range(len(s["epoch"])))) for n, s in runs.items()}
    lasts = {s["epoch"][-1] for s in runs.values() if s["epoch"]}
    for e in sorted({e for idx in by_epoch.values() for e in idx}):
        if (e - 1) % every and e not in lasts:
            continue
        cells = []
        for n in names:
            i = by_epoch[n].get(e)
            s = runs[n]
            cells.append("" if i is None else
                         f"{_fmt(s['share_normal'][i])} / {_fmt(s['train_acc'][i])} / {_fmt(s['lambda_max'][i])}")
        rows.append(f"| {e} | " + " | ".join(cells) + " |")
    return rows


def summary(runs: dict[str, dict[str, list]]) -> list[str]:
    """One line a run: epochs, first epoch train acc >= 0.999, largest lambda_max, final share and its
    free ops; then per run the count of free ops of each epoch's cell, one digit an epoch."""
    rows = ["| run | epochs | first epoch train acc >= 0.999 | max lambda_max (epoch) | final share | final free ops |",
            "|---|---|---|---|---|---|"]
    digits = []
    for n, s in runs.items():
        fit = next((e for e, a in zip(s["epoch"], s["train_acc"]) if a is not None and a >= 0.999), None)
        lams = [(v, e) for e, v in zip(s["epoch"], s["lambda_max"]) if v is not None]
        top = max(lams) if lams else None
        rows.append(f"| {n} | {s['epoch'][-1]} | {fit if fit else '-'} | "
                    f"{_fmt(top[0]) + f' ({top[1]})' if top else '-'} | {_fmt(s['share_normal'][-1])} | "
                    f"{s['free_ops'][-1]} |")
        digits.append(f"{n}: " + "".join("-" if v is None else str(v) for v in s["free_count"]))
    return rows + ["", "free ops per epoch (one digit an epoch):", "```", *digits, "```"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run folders (each with a metrics.jsonl)")
    ap.add_argument("--every", type=int, default=1, help="print epochs 1, 1+N, 1+2N, ... and the last")
    ap.add_argument("--summary", action="store_true", help="one line a run instead of the per-epoch table")
    args = ap.parse_args()
    dirs = args.runs or sorted(p for p in Path(__file__).parent.iterdir() if (p / "metrics.jsonl").exists())
    missing = [str(d) for d in dirs if not (d / "metrics.jsonl").is_file()]
    if missing:
        raise SystemExit(f"error: no metrics.jsonl in {', '.join(missing)}; pass run folders")
    runs = {d.name: load(d) for d in dirs}
    print("\n".join(summary(runs) if args.summary else table(runs, max(1, args.every))))


if __name__ == "__main__":
    main()
