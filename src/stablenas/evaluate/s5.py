"""RobustDARTS space S5: every one of its 81 architectures trained from scratch, and regret lookups.

robust-darts Sec. 3 builds S5 (one intermediate node per cell, ops {sep_conv_3x3, skip_connect,
max_pool_3x3} on both edges, normal and reduction cell: 3^2 x 3^2 = 81 architectures) so that
the global optimum is known and a search can be scored by its *test regret*: the test error of
the architecture it currently deems best minus the lowest test error in the space (their Fig. 2).

:func:`generate_table` trains all 81 with one fixed protocol (:data:`S5_PROTOCOL`) and writes the
table that ships in ``stablenas/resources/s5_<dataset>.json``; :func:`load_table` / :func:`regret`
look genotypes up in it. Generation checkpoints every architecture after every epoch, so an
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..genotype import Genotype
from ..spaces.catalog import get_space

if TYPE_CHECKING:
    from .backends import Backend

__all__ = [
    "REPEAT_ARCHS",
    "S5Table",
    "S5_PROTOCOL",
    "canonical_key",
    "enumerate_s5",
    "generate_table",
    "load_table",
    "regret",
    "table_path",
]

RESOURCES = Path(__file__).resolve().parent.parent / "resources"

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

# Architectures trained again with other seeds to measure seed noise (indices into enumerate_s5():
# all sep_conv, DARTS-like mix, all skip_connect, all max_pool).
REPEAT_ARCHS: tuple[int, ...] = (0, 17, 40, 80)
REPEAT_SEEDS: tuple[int, ...] = (1, 2)


# --------------------------------------------------------------------------------------------
# the 81 architectures


def enumerate_s5(space: str = "s5") -> list[Genotype]:
    """All architectures of a one-node DARTS-skeleton space, normal-cell-major.

    Index ``i`` has normal ops ``(ops[a], ops[b])`` on the edges from inputs 0 and 1 and reduce
    ops ``(ops[c], ops[d])`` with ``i = ((a * k + b) * k + c) * k + d`` for ``k`` ops per edge.
    """
    sp = get_space(space)
    if set(sp.cell_types) != {"normal", "reduce"} or sp.n_nodes != 1 or sp.n_inputs != 2:
        raise ValueError(f"space {space!r} is not a one-node DARTS-skeleton space like s5")
    cells = {}
    for ct in ("normal", "reduce"):
        e0, e1 = sp.edge_ops[ct]
        cells[ct] = [((a, 0), (b, 1)) for a, b in product(e0, e1)]
    concat = (2,)
    return [
        Genotype(space=space, normal=n, normal_concat=concat, reduce=r, reduce_concat=concat)
        for n, r in product(cells["normal"], cells["reduce"])
    ]


def canonical_key(genotype: Genotype) -> str:
    """Order-free identity of a cell pair: the (op, input) pairs of each node sorted by input.

    The DARTS discretisation lists a node's two edges strongest first, so the same architecture
    appears as ``[(a, 1), (b, 0)]`` or ``[(b, 0), (a, 1)]``; a node is a sum, so both are one cell.
    """
    if genotype.cell_types() != ["normal", "reduce"]:
        raise ValueError(f"a {genotype.skeleton.name}-skeleton genotype has no S5 key")
    parts = []
    for ct in ("normal", "reduce"):
        pairs = genotype.cell(ct)
        nodes = [sorted(pairs[k : k + 2], key=lambda p: (p[1], p[0])) for k in range(0, len(pairs), 2)]
        parts.append(f"{ct}:" + "+".join(",".join(f"{op}~{i}" for op, i in node) for node in nodes))
    return "|".join(parts)


# --------------------------------------------------------------------------------------------
# the table


def table_path(dataset: str = "fashion-mnist") -> Path:
    return RESOURCES / f"s5_{dataset.strip().lower().replace('-', '_')}.json"


@dataclass
class S5Table:
    """Test accuracy (fraction) of every S5 architecture under one protocol, keyed by canonical_key."""

    dataset: str
    entries: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> S5Table:
        entries = {}
        for e in d["architectures"]:
            g = Genotype.from_dict(e["genotype"])
            entries[canonical_key(g)] = e
        meta = {k: v for k, v in d.items() if k != "architectures"}
        return cls(d["dataset"], entries, meta)

    @classmethod
    def load(cls, path: str | Path) -> S5Table:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, genotype: Genotype) -> bool:
        return canonical_key(genotype) in self.entries

    def covers(self, space: str = "s5") -> bool:
        """True when every architecture of ``space`` has an entry."""
        return all(canonical_key(g) in self.entries for g in enumerate_s5(space))

    @property
    def best_acc(self) -> float:
        return max(e["test_acc"] for e in self.entries.values())

    def test_acc(self, genotype: Genotype) -> float:
        key = canonical_key(genotype)
        try:
            return float(self.entries[key]["test_acc"])
        except KeyError:
            raise KeyError(
                f"architecture {key} is not in the S5 table for {self.dataset} ({len(self.entries)} entries)"
            ) from None

    def regret(self, genotype: Genotype) -> float:
        """Best test accuracy in the table minus this architecture's (>= 0; a fraction, x100 for %)."""
        return self.best_acc - self.test_acc(genotype)

    def summary(self) -> dict[str, Any]:
        accs = sorted(e["test_acc"] for e in self.entries.values())
        best_key = max(self.entries, key=lambda k: self.entries[k]["test_acc"])
        return {
            "n": len(accs),
            "best": accs[-1],
            "median": statistics.median(accs),
            "worst": accs[0],
            "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            "best_key": best_key,
        }


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> S5Table:
    return S5Table.load(path)


def load_table(dataset: str = "fashion-mnist", path: str | Path | None = None) -> S5Table | None:
    """The shipped (or given) S5 table for ``dataset``; ``None`` when there is none."""
    p = Path(path) if path is not None else table_path(dataset)
    if not p.exists():
        return None
    return _load_cached(str(p), p.stat().st_mtime)


def regret(genotype: Genotype, dataset: str = "fashion-mnist", table: S5Table | None = None) -> float:
    """Test regret of ``genotype`` on ``dataset``: best accuracy in S5 minus its accuracy."""
    table = table or load_table(dataset)
    if table is None:
        raise FileNotFoundError(
            f"no S5 table for {dataset} (expected {table_path(dataset)}); "
            "generate it with `stablenas s5-table`"
        )
    return table.regret(genotype)


# --------------------------------------------------------------------------------------------
# generation


def _task(args: tuple[int, int, dict, str]) -> dict:
    """One (architecture, seed) training in a worker process; resumes its own run directory."""
    index, seed, protocol, run_dir = args
    from .train import train_config, train_genotype

    cfg = train_config(None, {**protocol, "seed": seed})
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    g = enumerate_s5()[index]
    from ..rundir import RunDir

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
    intra-op threads each); ``backend`` (:mod:`stablenas.evaluate.backends`, e.g. Ray) replaces that local
    pool. Returns the table as a dict (also written to ``out_path``).
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    overrides = dict(overrides or {})
    protocol = {**S5_PROTOCOL, **overrides}
    from .train import train_config

    cfg = train_config(None, protocol)  # validate once, up front
    dataset = cfg.dataset
    work = Path(work_dir)
    # never write into the installed package: the default table goes into the work directory
    out = Path(out_path) if out_path is not None else work / f"s5_{dataset}.json"
    archs = enumerate_s5()
    bad = [i for i in repeat_archs if not 0 <= i < len(archs)]
    if bad:
        raise ValueError(f"repeat architecture indices {bad} outside [0, {len(archs)})")
    seeds = tuple(dict.fromkeys(int(x) for x in seeds)) if seeds else (cfg.seed,)
    all_seeds = tuple(dict.fromkeys((*seeds, *repeat_seeds)))
    # the seed repeats first: the noise estimate is known after a few minutes, not at the very end
    tasks = [(i, s) for i in repeat_archs for s in all_seeds]
    tasks += [(i, s) for i in range(len(archs)) for s in seeds]
    tasks = list(dict.fromkeys(tasks))
    plan = {"protocol": cfg.model_dump(mode="json"), "tasks": tasks}
    plan_file = work / "plan.json"
    from ..rundir import check_plan, write_plan
    from ..utils import atomic_write_text
    from .train import config_diff

    check_plan(plan_file, plan, lambda old, new: config_diff(old.get("protocol", {}), new["protocol"]),
               what="s5-table work directory", noun="a different protocol")
    if out.exists() and out.is_dir():
        from ..errors import RunDirError

        raise RunDirError(f"--out {out} is a directory; give a file path for the table")
    work.mkdir(parents=True, exist_ok=True)
    write_plan(plan_file, plan)

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

    from ..progress import bar, progress_enabled
    from .backends import LocalBackend

    backend = backend or LocalBackend(jobs=jobs)
    with bar(len(todo), "s5-table", progress_enabled(progress), unit="run") as b:
        def note_and_bar(r: dict) -> None:
            note(r)
            b.update(1)

        backend.run(_task, todo, note_and_bar, key=lambda t: (t[0], t[1]), log=lambda m: log(f"s5-table: {m}"))

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
    accs = sorted(e["test_acc"] for e in entries)
    summary = {
        "best": accs[-1],
        "median": statistics.median(accs),
        "worst": accs[0],
        "std_across_archs": statistics.pstdev(accs),
        "best_index": max(entries, key=lambda e: e["test_acc"])["index"],
        "seed_std_mean": statistics.fmean(noise) if noise else None,
        "seed_std_max": max(noise) if noise else None,
        "train_seconds_total": round(sum(r["seconds"] for r in results.values()), 1),
    }
    cmd = command or _command(out, work, jobs, overrides, repeat_archs, repeat_seeds, seeds, cfg.seed)
    table = {
        "format": 1,
        "space": "s5",
        "dataset": dataset,
        "description": (
            "Test accuracy (fraction of the full test split) of every architecture of "
            "RobustDARTS space S5, each trained from scratch once with the protocol below "
            "(seed = protocol.seed); 'repeats' trains a few of them with more seeds to show "
            "the seed noise."
        ),
        "command": cmd,
        "protocol": cfg.model_dump(mode="json"),
        "seeds": list(seeds),
        "summary": summary,
        "repeats": repeats,
        "generated": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": __import__("torch").__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "jobs": jobs,
            "load_avg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "architectures": entries,
    }
    atomic_write_text(out, json.dumps(table, indent=1) + "\n")
    log(
        f"s5-table: wrote {out}: best {summary['best']:.4f}, median {summary['median']:.4f}, worst "
        f"{summary['worst']:.4f}; seed std (mean over repeats) {summary['seed_std_mean']}"
    )
    _load_cached.cache_clear()
    return table
