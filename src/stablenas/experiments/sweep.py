"""Evaluation protocols of the papers' tables: several searches, one selected architecture, retrained.

robust-darts Sec. 5.3 (after Liu et al. 2019): run the search several times -- with different seeds,
and for R-DARTS(L2) / R-DARTS(DP) with different regularisation strengths (L2 factor, or the
maximum ScheduledDropPath probability) -- train each resulting architecture from scratch *for a
limited number of epochs* and keep the one with the best *validation* accuracy; only that one is
retrained with the full evaluation protocol and reported on the test set.

:func:`run_sweep` does exactly that, in three resumable stages under one directory::

    OUT/search/<run>/   one search run per (regularisation value, seed)   (stablenas search)
    OUT/select/<run>/   short retraining of its genotype, scored on a held-out validation split
                        of the training set (``holdout`` images; the test split is never read)
    OUT/final/<run>-seed<k>/  the full retraining of the selected genotype (or of every run's)
    OUT/sweep.json, OUT/table.md, OUT/table.json

Re-running the same command skips finished runs and resumes interrupted ones. ``jobs`` > 1 runs
independent runs of a stage in that many processes on this machine; ``backend`` (a Ray cluster,
:mod:`stablenas.runs.backends`) runs them elsewhere, into the same table.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import config_from_dict, load_config
from ..errors import ConfigError
from ..evaluate.train import TrainConfig, train_config
from ..genotype import Genotype
from ..runs.backends import Backend, LocalBackend

__all__ = ["SweepPlan", "format_markdown", "run_sweep", "select_best"]

RegKind = Literal["l2", "drop-path"]
REG_KEYS: dict[str, str] = {"l2": "optim.weight_decay", "drop-path": "regularization.drop_path_max"}
REG_LABEL = {"l2": "L2", "drop-path": "DP"}


@dataclass
class SweepPlan:
    """What a sweep runs; everything needed to resume it is in here (saved as OUT/sweep.json)."""

    config: str  # search preset name or YAML path
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)  # search --set overrides
    reg: RegKind | None = None
    reg_values: list[float] = field(default_factory=list)
    train_preset: str = "darts"
    train_overrides: list[str] = field(default_factory=list)  # apply to both retrainings
    retrain_epochs: int | None = None  # None: final epochs // 6
    holdout: int = 5000  # validation images held out of the training split for selection
    final_epochs: int | None = None  # None: the training preset's
    final_seeds: list[int] = field(default_factory=lambda: [0])
    final: Literal["selected", "all", "none"] = "selected"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("sweep: give at least one search seed (--seeds 0 1 2)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"sweep: repeated seeds {self.seeds}")
        if self.reg is not None and self.reg not in REG_KEYS:
            raise ConfigError(f"sweep: unknown regularisation {self.reg!r}; use l2 or drop-path")
        if self.reg is not None and not self.reg_values:
            raise ConfigError(f"sweep: --{self.reg} needs at least one value")
        if self.reg is None and self.reg_values:
            raise ConfigError("sweep: regularisation values given without a kind (l2 or drop-path)")
        if self.final not in ("selected", "all", "none"):
            raise ConfigError(f"sweep: final must be selected, all or none, got {self.final!r}")
        if not self.final_seeds and self.final != "none":
            raise ConfigError("sweep: --final-seeds needs at least one seed")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunSpec:
    name: str
    seed: int
    reg_value: float | None
    config: dict  # validated search config as a dict


def search_runs(plan: SweepPlan) -> list[RunSpec]:
    """One search per (regularisation value, seed), in that order (the tie-break order)."""
    out = []
    values: Sequence[float | None] = plan.reg_values if plan.reg else [None]
    for v in values:
        for s in plan.seeds:
            extra = [f"seed={s}"]
            name = f"seed{s}"
            if v is not None and plan.reg is not None:
                extra.append(f"{REG_KEYS[plan.reg]}={v}")
                name = f"{plan.reg}={v:g}-seed{s}"
            cfg = load_config(plan.config, [*plan.overrides, *extra])
            out.append(RunSpec(name, s, v, cfg.to_dict()))
    return out


def _train_configs(plan: SweepPlan, search_cfg: dict) -> tuple[TrainConfig, TrainConfig]:
    """(short selection retraining, final retraining) configs on the search's dataset."""
    data = search_cfg["data"]
    base = train_config(
        plan.train_preset, plan.train_overrides, dataset=data["dataset"], data_root=data.get("root")
    )
    final_epochs = plan.final_epochs or base.epochs
    retrain_epochs = plan.retrain_epochs or max(1, final_epochs // 6)
    short = base.model_copy(
        update={"epochs": retrain_epochs, "holdout": plan.holdout, "evaluate_test": False}
    )
    final = base.model_copy(update={"epochs": final_epochs})
    return TrainConfig.model_validate(short.model_dump()), TrainConfig.model_validate(final.model_dump())


def select_best(candidates: Sequence[dict], key: str = "valid_acc") -> int:
    """Index of the candidate with the highest short-retraining validation accuracy.

    Ties go to the earliest candidate (search order: regularisation value, then seed), so the
    choice is deterministic; candidates without a score are never selected.
    """
    best, best_score = -1, float("-inf")
    for i, c in enumerate(candidates):
        score = c.get(key)
        if score is None:
            continue
        if score > best_score:
            best, best_score = i, score
    if best < 0:
        raise ValueError(f"no candidate has a {key!r} score to select by")
    return best


# --------------------------------------------------------------------------------------------
# workers (top level: they run in spawned processes)


def _search_task(args: tuple[str, dict, str, int | None]) -> dict:
    name, cfg_dict, out_dir, threads = args
    import torch

    from ..analysis.run import load_run
    from ..search.loop import Search

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    from ..runs.directory import RunDir

    if (out / "genotype.json").exists():
        run = load_run(out)
    else:
        cfg = config_from_dict(cfg_dict)
        resume = RunDir(out, kind="search", config_name="config.yaml").is_run()
        Search(cfg, out, resume=resume, progress=False, log=lambda s: None).run()
        run = load_run(out)
    last = run.metrics[-1] if run.metrics else {}
    return {
        "name": name,
        "genotype": run.genotype.to_dict(),
        "search_seconds": round(sum(m.get("seconds", 0.0) for m in run.metrics), 3),
        "epochs": len(run.metrics),
        "supernet_val_acc": last.get("val_acc"),
        "test_regret": last.get("test_regret"),
        "lookup_test_acc": last.get("test_acc"),
    }


def _train_task(args: tuple[str, dict, dict, str, int | None]) -> dict:
    name, genotype, cfg_dict, out_dir, threads = args
    import torch

    from ..evaluate.train import train_genotype

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig.model_validate(cfg_dict)
    from ..runs.directory import RunDir

    resume = RunDir(out_dir, kind="train", config_name="train.json").is_run()
    result = train_genotype(
        Genotype.from_dict(genotype), cfg, out_dir, resume=resume, progress=False, log=lambda s: None
    )
    return {"name": name, "result": result}


def _run_all(
    fn: Callable[[Any], dict], tasks: list, backend: Backend, log: Callable[[str], None], what: str,
    show: bool = False,
) -> list[dict]:
    if not tasks:
        return []
    out: list[dict] = []
    start = time.perf_counter()

    def done(r: dict) -> None:
        out.append(r)
        log(f"{what} {len(out)}/{len(tasks)}: {r['name']} done ({(time.perf_counter() - start) / 60:.1f} min)")

    from ..progress import bar

    with bar(len(tasks), f"sweep: {what}", show, unit="run") as b:
        def done_and_bar(r: dict) -> None:
            done(r)
            b.update(1)

        backend.run(fn, tasks, done_and_bar, key=lambda t: t[0], log=log)
    return out


# --------------------------------------------------------------------------------------------
# the sweep


def _mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


@dataclass
class _Stages:
    """How the sweep's stages run: under ``out``, on ``backend``, ``threads`` intra-op threads per run."""

    out: Path
    backend: Backend
    threads: int | None
    log: Callable[[str], None]
    show: bool  # a progress bar per stage

    def run(self, fn: Callable[[Any], dict], tasks: list, what: str) -> list[dict]:
        return _run_all(fn, tasks, self.backend, self.log, what, self.show)


def _searches(runs: list[RunSpec], st: _Stages) -> list[dict[str, Any]]:
    """Stage 1: every search (resumed), as candidates in search order."""
    results = st.run(_search_task, [(r.name, r.config, str(st.out / "search" / r.name), st.threads) for r in runs],
                     "search")
    by_name = {r["name"]: r for r in results}
    cands: list[dict[str, Any]] = []
    for r in runs:
        c = dict(by_name[r.name])
        c.update({"seed": r.seed, "reg_value": r.reg_value})
        cands.append(c)
    return cands


def _select(cands: list[dict], scorer: Callable[[list[dict]], list[float | None]] | None, short_cfg: TrainConfig,
            st: _Stages) -> tuple[int, float]:
    """Stage 2: each candidate's ``valid_acc`` after the short retraining on the held-out split (identical
    genotypes trained once); returns the chosen index and the selection's seconds."""
    t_select = 0.0
    if scorer is not None:
        for c, s in zip(cands, scorer(cands)):
            c["valid_acc"] = s
    elif len(cands) == 1:
        cands[0]["valid_acc"] = None
    else:
        uniq: dict[str, str] = {}
        for c in cands:
            uniq.setdefault(json.dumps(c["genotype"], sort_keys=True), c["name"])
        tasks = [(uniq[k], json.loads(k), short_cfg.model_dump(mode="json"), str(st.out / "select" / uniq[k]),
                  st.threads) for k in uniq]
        scored = {r["name"]: r["result"] for r in st.run(_train_task, tasks, "selection")}
        for c in cands:
            r = scored[uniq[json.dumps(c["genotype"], sort_keys=True)]]
            c["valid_acc"] = r["valid_acc"]
            c["select_seconds"] = r["seconds"]
        t_select = sum(r["seconds"] for r in scored.values())
    chosen = 0 if len(cands) == 1 else select_best(cands)
    for i, c in enumerate(cands):
        c["selected"] = i == chosen
    acc = cands[chosen].get("valid_acc")
    st.log(f"sweep: selected {cands[chosen]['name']}"
           + (f" (validation accuracy {acc:.4f})" if acc is not None else ""))
    return chosen, t_select


def _finals(plan: SweepPlan, cands: list[dict], chosen: int, final_cfg: TrainConfig, st: _Stages) -> None:
    """Stage 3: the full retraining of the selected genotype (or of every one) per final seed, into ``c['final']``."""
    finals = [] if plan.final == "none" else ([cands[chosen]] if plan.final == "selected" else cands)
    tasks = []
    for c in finals:
        for s in plan.final_seeds:
            cfg = final_cfg.model_copy(update={"seed": s})
            tasks.append((f"{c['name']}|{s}", c["genotype"], cfg.model_dump(mode="json"),
                          str(st.out / "final" / f"{c['name']}-seed{s}"), st.threads))
    final_results = st.run(_train_task, tasks, "final")
    for c in cands:
        c["final"] = sorted(
            (
                {
                    "seed": int(r["name"].split("|")[1]),
                    "test_acc": r["result"]["test_acc"],
                    "params": r["result"]["params"],
                    "macs": r["result"]["macs"],
                    "seconds": r["result"]["seconds"],
                }
                for r in final_results
                if r["name"].split("|")[0] == c["name"]
            ),
            key=lambda f: f["seed"],
        )


def run_sweep(
    plan: SweepPlan,
    out_dir: str | Path,
    *,
    jobs: int = 1,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    scorer: Callable[[list[dict]], list[float | None]] | None = None,
    backend: Backend | None = None,
    progress: bool | None = None,
) -> dict:
    """Run (or resume) the sweep and write OUT/table.md and OUT/table.json; returns the table dict.

    ``backend`` (:mod:`stablenas.runs.backends`) runs the searches and retrainings; default: the
    local pool with ``jobs`` processes. Every run resumes its own directory, whichever backend.

    ``scorer`` replaces the short retraining (it receives the candidate dicts and returns their
    validation accuracies); it exists for tests and for custom selection protocols. ``progress``: a
    bar per stage (default: when stderr is a terminal, not under CI).
    """
    from ..progress import progress_enabled
    from ..runs.records import check_plan, write_plan
    from ..utils import atomic_write_text

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out_dir)
    backend = backend or LocalBackend(jobs=jobs)
    if threads is None:
        threads = backend.threads_per_task()
    runs = search_runs(plan)  # validates every search config before anything is written
    short_cfg, final_cfg = _train_configs(plan, runs[0].config)
    plan_file = out / "sweep.json"
    check_plan(plan_file, plan.to_dict(),
               lambda old, new: sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)), what="sweep")
    out.mkdir(parents=True, exist_ok=True)
    write_plan(plan_file, plan.to_dict())
    log(
        f"sweep: {len(runs)} searches ({', '.join(r.name for r in runs)}); "
        f"selection by {short_cfg.epochs}-epoch "
        f"retraining on {plan.holdout} held-out training images; final retraining {final_cfg.epochs} epochs"
    )
    st = _Stages(out, backend, threads, log, progress_enabled(progress))
    cands = _searches(runs, st)
    chosen, t_select = _select(cands, scorer, short_cfg, st)
    _finals(plan, cands, chosen, final_cfg, st)
    table = _summarise(plan, cands, chosen, short_cfg, final_cfg, t_select, str(out))
    atomic_write_text(out / "table.json", json.dumps(table, indent=1) + "\n")
    atomic_write_text(out / "table.md", format_markdown(table))
    log(f"sweep: wrote {out / 'table.md'}")
    return table


def _summarise(
    plan: SweepPlan,
    cands: list[dict],
    chosen: int,
    short_cfg: TrainConfig,
    final_cfg: TrainConfig,
    t_select: float,
    out: str,
) -> dict:
    sel = cands[chosen]
    if plan.final == "all":
        errs = [100 * (1 - f["test_acc"]) for c in cands for f in c["final"]]
        params = [f["params"] for c in cands for f in c["final"]]
        over = f"{len(errs)} retrainings of the {len(cands)} searched architectures"
    else:
        errs = [100 * (1 - f["test_acc"]) for f in sel["final"]]
        params = [f["params"] for f in sel["final"]]
        over = f"{len(errs)} retraining seed(s) of the selected architecture"
    mean, std = _mean_std(errs)
    search_s = sum(c["search_seconds"] for c in cands)
    name = Path(plan.config).stem
    if plan.reg:
        name = f"{name} R-DARTS({REG_LABEL[plan.reg]}) {{{', '.join(f'{v:g}' for v in plan.reg_values)}}}"
    regrets = [c["test_regret"] for c in cands if c.get("test_regret") is not None]
    return {
        "method": name,
        "test_error_mean": mean,
        "test_error_std": std,
        "test_error_over": over,
        "params_M": statistics.fmean(params) / 1e6 if params else None,
        "search_cost_hours": (search_s + t_select) / 3600,
        "search_seconds": search_s,
        "selection_seconds": t_select,
        "selected": sel["name"],
        "selected_genotype": sel["genotype"],
        "selection_rule": (
            f"best validation accuracy after {short_cfg.epochs} epochs of retraining on the training "
            f"split minus {plan.holdout} held-out images (robust-darts Sec. 5.3); ties: first run"
        ),
        "final_protocol": final_cfg.model_dump(mode="json"),
        "selection_protocol": short_cfg.model_dump(mode="json"),
        "s5_test_regret_mean": statistics.fmean(regrets) if regrets else None,
        "runs": cands,
        "plan": plan.to_dict(),
        "out": out,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def format_markdown(t: dict) -> str:
    """The papers' table shape: method, test error (mean +- std), params, search cost; then per run."""
    err = "-" if t["test_error_mean"] is None else f"{t['test_error_mean']:.2f} ± {t['test_error_std']:.2f}"
    params = "-" if t["params_M"] is None else f"{t['params_M']:.3f}"
    lines = [
        "| Method | Test error (%) | Params (M) | Search cost (h) | Selected |",
        "|---|---|---|---|---|",
        f"| {t['method']} | {err} | {params} | {t['search_cost_hours']:.3f} | {t['selected']} |",
        "",
        f"Test error: mean ± std over {t['test_error_over']}. Search cost: all searches plus the selection "
        "retrainings, wall-clock on this machine.",
        f"Selection: {t['selection_rule']}.",
        "",
    ]
    s5 = any(c.get("test_regret") is not None for c in t["runs"])  # a column only where an S5 table scored
    lines += [f"| Run | Supernet val acc (%) | Selection val acc (%) | {'S5 test regret (%) | ' if s5 else ''}"
              "Final test error (%) | Params (M) | Search (min) |",
              "|---|---|---|" + ("---|" if s5 else "") + "---|---|---|"]
    for c in t["runs"]:
        errs = [100 * (1 - f["test_acc"]) for f in c["final"]]
        m, s = _mean_std(errs)
        fe = "-" if m is None else (f"{m:.2f}" if len(errs) == 1 else f"{m:.2f} ± {s:.2f}")
        pm = "-" if not c["final"] else f"{c['final'][0]['params'] / 1e6:.3f}"
        mark = " (selected)" if c["selected"] else ""
        regret = f"{_pct(c.get('test_regret'))} | " if s5 else ""
        lines.append(
            f"| {c['name']}{mark} | {_pct(c.get('supernet_val_acc'))} | {_pct(c.get('valid_acc'))} | "
            f"{regret}{fe} | {pm} | {c['search_seconds'] / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"
