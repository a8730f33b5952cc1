"""RobustDARTS space S5: every one of its 81 architectures trained from scratch into the regret table.

robust-darts Sec. 3 builds S5 (one intermediate node per cell, ops {sep_conv_3x3, skip_connect,
max_pool_3x3} on both edges, normal and reduction cell: 3^2 x 3^2 = 81 architectures) so that
the global optimum is known and a search can be scored by its *test regret*: the test error of
the architecture it currently deems best minus the lowest test error in the space (their Fig. 2).

:func:`generate_table` trains all 81 with one fixed protocol (:data:`S5_PROTOCOL`) and writes the
table that ships in ``stablenas/resources/s5_<dataset>.json``; :mod:`stablenas.skeletons.darts.s5_table`
reads it (``load_table``, ``regret``). Generation checkpoints every architecture after every epoch, so an
interrupted run continues where it stopped when the same command is run again, and it can spread
the 81 trainings over several processes.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..genotype import Genotype
from ..skeletons.darts.s5_table import canonical_key, enumerate_s5, forget_cached

if TYPE_CHECKING:
    from ..runs.backends import Backend

__all__ = ["REPEAT_ARCHS", "S5_PROTOCOL", "generate_table"]

# The fixed ground-truth protocol (see the module docstring of benchmarks/s5_calibrate.py and the
# report in the table file for why these values): a small network trained briefly, all 10,000 test
# images for the accuracy. No augmentation or regularisers: over a few epochs they only slow
# convergence and add variance, and the point is a ranking of the 81 cells, not a record accuracy.
S5_PROTOCOL: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "network": "cifar",
    "channels": 8,
    "layers": 5,
    "stem_multiplier": 3,
    "epochs": 4,
    "batch_size": 64,
    "lr": 0.05,
    "lr_min": 0.0,
    "weight_decay": 3e-4,
    "grad_clip": 5.0,
    "auxiliary": False,
    "drop_path": 0.0,
    "cutout": 0,
    "crop_padding": 0,
    "flip": False,
    "subset": 4000,
    "seed": 0,
    "data_seed": 0,
    "threads": 1,
    "channels_last": False,
    "precise_bn": True,
}

TABLE_DESCRIPTION = (
    "Test accuracy (fraction of the full test split) of every architecture of "
    "RobustDARTS space S5, each trained from scratch once with the protocol below "
    "(seed = protocol.seed); 'repeats' trains a few of them with more seeds to show "
    "the seed noise."
)

# Architectures trained again with other seeds to measure seed noise (indices into enumerate_s5():
# all sep_conv, DARTS-like mix, all skip_connect, all max_pool).
REPEAT_ARCHS: tuple[int, ...] = (0, 17, 40, 80)
REPEAT_SEEDS: tuple[int, ...] = (1, 2)






# --------------------------------------------------------------------------------------------
# generation


def _task(args: tuple[int, int, dict, str]) -> dict:
    """One (architecture, seed) training in a worker process; resumes its own run directory."""
    index, seed, protocol, run_dir = args
    from ..evaluate.train import train_config, train_genotype

    cfg = train_config(None, {**protocol, "seed": seed})
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    g = enumerate_s5()[index]
    from ..runs.directory import RunDir

    resume = RunDir(run_dir, kind="train", config_name="train.json").is_run()
    result = train_genotype(g, cfg, run_dir, resume=resume, progress=False, log=lambda s: None)
    return {"index": index, "seed": seed, "result": result}


def _command(
    out: Path,
    work: Path,
    jobs: int,
    overrides: dict[str, Any],
    repeat_archs: Sequence[int],
    repeat_seeds: Sequence[int],
    seeds: Sequence[int] = (),
    seed: int = 0,
) -> str:
    parts = ["stablenas", "s5-table", "--out", str(out), "--work", str(work), "--jobs", str(jobs)]
    for k, v in overrides.items():
        parts += ["--set", f"{k}={json.dumps(v)}"]
    if seeds and tuple(seeds) != (seed,):
        parts += ["--seeds", ",".join(str(s) for s in seeds)]
    if tuple(repeat_archs) != REPEAT_ARCHS:
        parts += ["--repeat-archs", ",".join(str(i) for i in repeat_archs) or "''"]
    if tuple(repeat_seeds) != REPEAT_SEEDS:
        parts += ["--repeat-seeds", ",".join(str(s) for s in repeat_seeds) or "''"]
    return " ".join(parts)


def _tasks(n_archs: int, repeat_archs: Sequence[int], seeds: Sequence[int], all_seeds: Sequence[int]) -> list:
    """The (architecture, seed) trainings in queue order: the seed repeats first, so the noise estimate is
    known after a few minutes, not at the very end."""
    tasks = [(i, s) for i in repeat_archs for s in all_seeds]
    tasks += [(i, s) for i in range(n_archs) for s in seeds]
    return list(dict.fromkeys(tasks))


def _train_all(
    tasks: list[tuple[int, int]],
    protocol: dict[str, Any],
    work: Path,
    jobs: int,
    backend: Backend | None,
    progress: bool | None,
    log: Callable[[str], None],
) -> dict[tuple[int, int], dict]:
    """Every (architecture, seed) training's result: finished ones read back, the rest run (resumed)."""
    from ..progress import bar, progress_enabled
    from ..runs.backends import LocalBackend

    def run_dir(i: int, s: int) -> str:
        return str(work / f"arch{i:02d}-seed{s}")

    results: dict[tuple[int, int], dict] = {}
    todo = []
    for i, s in tasks:
        rf = Path(run_dir(i, s)) / "result.json"
        if rf.exists():
            results[(i, s)] = json.loads(rf.read_text())
        else:
            todo.append((i, s, protocol, run_dir(i, s)))
    log(
        f"s5-table: {len(tasks)} trainings ({len(results)} already done, {len(todo)} to run) with "
        f"{jobs} job(s) in {work}"
    )
    start = time.perf_counter()

    def note(r: dict) -> None:
        results[(r["index"], r["seed"])] = r["result"]
        el = time.perf_counter() - start
        log(
            f"[{len(results)}/{len(tasks)}] arch {r['index']:2d} seed {r['seed']}: test_acc "
            f"{r['result']['test_acc']:.4f} ({r['result']['seconds']:.0f} s; {el / 60:.1f} min elapsed)"
        )

    backend = backend or LocalBackend(jobs=jobs)
    with bar(len(todo), "s5-table", progress_enabled(progress), unit="run") as b:
        def note_and_bar(r: dict) -> None:
            note(r)
            b.update(1)

        backend.run(_task, todo, note_and_bar, key=lambda t: (t[0], t[1]), log=lambda m: log(f"s5-table: {m}"))
    return results


def _entries(archs: list[Genotype], results: dict[tuple[int, int], dict], seeds: Sequence[int]) -> list[dict]:
    """One table entry per architecture: the mean over ``seeds`` (and each seed's accuracy when several)."""
    entries = []
    for i, g in enumerate(archs):
        rs = [results[(i, s)] for s in seeds]
        e = {
            "index": i,
            "key": canonical_key(g),
            "genotype": g.to_dict(),
            "test_acc": statistics.fmean(r["test_acc"] for r in rs),
            "test_loss": statistics.fmean(r["test_loss"] for r in rs),
            "params": rs[0]["params"],
            "macs": rs[0]["macs"],
            "seconds": round(sum(r["seconds"] for r in rs), 3),
        }
        if len(seeds) > 1:
            e["test_acc_by_seed"] = {str(s): r["test_acc"] for s, r in zip(seeds, rs)}
        entries.append(e)
    return entries


def _seed_noise(
    archs: list[Genotype],
    results: dict[tuple[int, int], dict],
    seeds: Sequence[int],
    all_seeds: Sequence[int],
    repeat_archs: Sequence[int],
) -> tuple[list[dict], list[float]]:
    """The seed repeats (per repeated architecture) and the seed std of every architecture trained more than once."""
    repeats = []
    noise = []
    for i in range(len(archs)) if len(seeds) > 1 else repeat_archs:
        accs = {s: results[(i, s)]["test_acc"] for s in all_seeds if (i, s) in results}
        if i not in repeat_archs:
            noise.append(statistics.stdev(accs.values()))
            continue
        repeats.append(
            {
                "index": i,
                "key": canonical_key(archs[i]),
                "test_acc_by_seed": accs,
                "mean": statistics.fmean(accs.values()),
                "std": statistics.stdev(accs.values()) if len(accs) > 1 else 0.0,
            }
        )
        if len(accs) > 1:
            noise.append(statistics.stdev(accs.values()))
    return repeats, noise


def _summary(entries: list[dict], noise: list[float], results: dict[tuple[int, int], dict]) -> dict[str, Any]:
    accs = sorted(e["test_acc"] for e in entries)
    return {
        "best": accs[-1],
        "median": statistics.median(accs),
        "worst": accs[0],
        "std_across_archs": statistics.pstdev(accs),
        "best_index": max(entries, key=lambda e: e["test_acc"])["index"],
        "seed_std_mean": statistics.fmean(noise) if noise else None,
        "seed_std_max": max(noise) if noise else None,
        "train_seconds_total": round(sum(r["seconds"] for r in results.values()), 1),
    }


def _generated(jobs: int) -> dict[str, Any]:
    """Where and when the table was made (its timings depend on the machine and its load)."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": __import__("torch").__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "jobs": jobs,
        "load_avg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _table(
    protocol: dict[str, Any],
    command: str,
    results: dict[tuple[int, int], dict],
    seeds: Sequence[int],
    all_seeds: Sequence[int],
    repeat_archs: Sequence[int],
    jobs: int,
) -> dict[str, Any]:
    """The table file's content: every architecture's entry, the seed repeats, a summary, provenance."""
    archs = enumerate_s5()
    entries = _entries(archs, results, seeds)
    repeats, noise = _seed_noise(archs, results, seeds, all_seeds, repeat_archs)
    return {
        "format": 1,
        "space": "s5",
        "dataset": protocol["dataset"],
        "description": TABLE_DESCRIPTION,
        "command": command,
        "protocol": protocol,
        "seeds": list(seeds),
        "summary": _summary(entries, noise, results),
        "repeats": repeats,
        "generated": _generated(jobs),
        "architectures": entries,
    }


def _start_work_dir(work: Path, out: Path, plan: dict) -> None:
    """The work directory's plan, checked against the one it holds (a resume) and written."""
    from ..evaluate.train import config_diff
    from ..runs.records import check_plan, write_plan

    plan_file = work / "plan.json"
    check_plan(plan_file, plan, lambda old, new: config_diff(old.get("protocol", {}), new["protocol"]),
               what="s5-table work directory", noun="a different protocol")
    if out.exists() and out.is_dir():
        from ..errors import RunDirError

        raise RunDirError(f"--out {out} is a directory; give a file path for the table")
    work.mkdir(parents=True, exist_ok=True)
    write_plan(plan_file, plan)


def generate_table(
    work_dir: str | Path,
    out_path: str | Path | None = None,
    *,
    jobs: int = 1,
    overrides: dict[str, Any] | None = None,
    repeat_archs: Sequence[int] = REPEAT_ARCHS,
    repeat_seeds: Sequence[int] = REPEAT_SEEDS,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
    seeds: Sequence[int] | None = None,
    backend: Backend | None = None,
    progress: bool | None = None,
) -> dict:
    """Train every S5 architecture (plus seed repeats) under :data:`S5_PROTOCOL` and write the table.

    ``seeds`` (default: the protocol's seed) trains every architecture once per seed; the table
    then holds the mean test accuracy (seed noise shrinks by sqrt(len(seeds))) and the per-seed values.

    ``work_dir`` holds one training run directory per (architecture, seed); re-running the same
    call skips finished ones and resumes interrupted ones from their last epoch. ``jobs`` > 1
    trains that many architectures at once in separate processes (``protocol['threads']``
    intra-op threads each); ``backend`` (:mod:`stablenas.runs.backends`, e.g. Ray) replaces that local
    pool. Returns the table as a dict (also written to ``out_path``).
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    overrides = dict(overrides or {})
    protocol = {**S5_PROTOCOL, **overrides}
    from ..evaluate.train import train_config
    from ..utils import atomic_write_text

    cfg = train_config(None, protocol)  # validate once, up front
    work = Path(work_dir)
    # never write into the installed package: the default table goes into the work directory
    out = Path(out_path) if out_path is not None else work / f"s5_{cfg.dataset}.json"
    archs = enumerate_s5()
    bad = [i for i in repeat_archs if not 0 <= i < len(archs)]
    if bad:
        raise ValueError(f"repeat architecture indices {bad} outside [0, {len(archs)})")
    seeds = tuple(dict.fromkeys(int(x) for x in seeds)) if seeds else (cfg.seed,)
    all_seeds = tuple(dict.fromkeys((*seeds, *repeat_seeds)))
    tasks = _tasks(len(archs), repeat_archs, seeds, all_seeds)
    _start_work_dir(work, out, {"protocol": cfg.model_dump(mode="json"), "tasks": tasks})
    results = _train_all(tasks, protocol, work, jobs, backend, progress, log)
    command = command or _command(out, work, jobs, overrides, repeat_archs, repeat_seeds, seeds, cfg.seed)
    table = _table(cfg.model_dump(mode="json"), command, results, seeds, all_seeds, repeat_archs, jobs)
    atomic_write_text(out, json.dumps(table, indent=1) + "\n")
    summary = table["summary"]
    log(
        f"s5-table: wrote {out}: best {summary['best']:.4f}, median {summary['median']:.4f}, worst "
        f"{summary['worst']:.4f}; seed std (mean over repeats) {summary['seed_std_mean']}"
    )
    forget_cached()
    return table
