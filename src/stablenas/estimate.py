"""Cost before commitment: ``--dry-run`` builds a run exactly as it would start (config, data,
supernet or network, methods), times a few real steps and one epoch end, and extrapolates.

The estimate is ``epochs x (steps_per_epoch x t_step + t_epoch_end)`` for a search (the epoch end
is the validation pass, the derived genotype and every method's epoch work, e.g. lambda_max by
Lanczos for DARTS-ES) and ``epochs x steps x t_step + t_eval`` for a training run. Nothing is
written: the run directory is not created.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from .runs.lifecycle import format_seconds, sync

__all__ = ["estimate_s5_table", "estimate_search", "estimate_sweep", "estimate_train", "format_estimate",
           "peak_memory_bytes"]


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory on CUDA; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def estimate_search(cfg, steps: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Time ``warmup`` + ``steps`` search steps and one epoch end of the search ``cfg`` would run."""
    from .search.loop import Search

    s = Search(cfg, None, progress=False, log=lambda m: None)
    _reset_peak(s.device)
    s.start_epoch(0)
    s.net.train()
    it = iter(s.train_loader)
    n = min(warmup + steps, s.steps_per_epoch)
    warmup = min(warmup, n - 1)
    t0 = None
    for i in range(n):
        if i == warmup:
            sync(s.device)
            t0 = time.perf_counter()
        s.step(next(it))
        s.step_in_epoch += 1
        s.global_step += 1
    sync(s.device)
    per_step = (time.perf_counter() - t0) / max(n - warmup, 1)
    s.step_in_epoch = s.steps_per_epoch  # the end of epoch 1 as the run would reach it
    # the epoch's validation pass: two batches timed, scaled to the batches an epoch evaluates
    n_val = min(cfg.search.val_batches or len(s.val_eval_loader), len(s.val_eval_loader))
    k = min(2, n_val)
    s.evaluate(max_batches=1)  # warm-up
    sync(s.device)
    t = time.perf_counter()
    s.evaluate(max_batches=k)
    sync(s.device)
    val_seconds = (time.perf_counter() - t) * n_val / max(k, 1)
    # the rest of the epoch end (genotype, lookups, every method's epoch work such as lambda_max)
    # runs for real; only its first validation pass (timed above) is skipped
    real_evaluate, calls = s.evaluate, []

    def evaluate_once_skipped(*a, **kw):
        calls.append(1)
        return (0.0, 0.0) if len(calls) == 1 else real_evaluate(*a, **kw)

    s.evaluate = evaluate_once_skipped
    t = time.perf_counter()
    s._end_epoch()
    sync(s.device)
    s.evaluate = real_evaluate
    epoch_end = time.perf_counter() - t + val_seconds
    epochs = cfg.optim.epochs
    total = epochs * (s.steps_per_epoch * per_step + epoch_end)
    return {
        "kind": "search", "name": cfg.name, "device": str(s.device), "threads": torch.get_num_threads(),
        "epochs": epochs, "steps_per_epoch": s.steps_per_epoch, "timed_steps": n - warmup,
        "seconds_per_step": per_step, "seconds_epoch_end": epoch_end, "estimated_seconds": total,
        "peak_memory_bytes": peak_memory_bytes(s.device), "genotype": s.genotype().to_dict(),
        "what": f"{cfg.space}, {cfg.data.dataset}, {s.skeleton.describe_network(cfg.to_dict())}, "
                f"batch {cfg.data.batch_size}, update {cfg.search.update}"
                + (f", methods {', '.join(m.name for m in cfg.methods)}" if cfg.methods else ""),
    }


def estimate_train(genotype, cfg, steps: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Time ``warmup`` + ``steps`` training steps and one evaluation batch of ``cfg``'s run."""
    from .evaluate.train import resolve_genotype
    from .evaluate.trainer import ImageTrainer

    g = resolve_genotype(genotype)
    tr = ImageTrainer(g, cfg, None, resume=False, progress=False, log=lambda m: None)
    _reset_peak(tr.device)
    full_steps = tr.steps
    n = min(warmup + steps, full_steps)
    warmup = min(warmup, n - 1)
    if warmup:
        tr.steps = warmup
        tr.train_epoch()
    tr.steps = n - warmup
    sync(tr.device)
    t = time.perf_counter()
    tr.train_epoch()
    sync(tr.device)
    per_step = (time.perf_counter() - t) / tr.steps
    # evaluation: one batch of the test (or holdout) loader, scaled to the loader's length
    eval_seconds = 0.0
    evals = [ld for ld in (tr.valid_loader, tr.test_loader) if ld is not None]
    if evals:
        tr.model.eval()
        with torch.no_grad():
            for ld in evals:
                ld.set_epoch(0)
                x, _ = next(iter(ld))
                tr.model(x)  # warm-up
                sync(tr.device)
                t = time.perf_counter()
                tr.model(x)
                sync(tr.device)
                eval_seconds += (time.perf_counter() - t) * len(ld)
    n_evals = 1 + (cfg.epochs // cfg.eval_every if cfg.eval_every else 0)
    total = cfg.epochs * full_steps * per_step + n_evals * eval_seconds
    return {
        "kind": "train", "name": cfg.dataset, "device": str(tr.device), "threads": torch.get_num_threads(),
        "epochs": cfg.epochs, "steps_per_epoch": full_steps, "timed_steps": tr.steps,
        "seconds_per_step": per_step, "seconds_eval": eval_seconds, "estimated_seconds": total,
        "peak_memory_bytes": peak_memory_bytes(tr.device),
        "params": tr.params, "macs": tr.macs,
        "what": f"{tr.network} network, {cfg.layers} cells x {cfg.channels} ch, {cfg.dataset} "
                f"{'x'.join(map(str, tr.input_shape))}, batch {cfg.batch_size}",
    }


def _stages(kind: str, what: str, stages: list[tuple[str, int, dict[str, Any]]], jobs: int) -> dict[str, Any]:
    """Stages of ``count`` runs each costing its estimate ``e``, ``jobs`` at a time (whole waves:
    a wave lasts as long as one run)."""
    rows, total = [], 0.0
    for name, count, e in stages:
        if count <= 0:
            continue
        waves = -(-count // max(jobs, 1))
        rows.append({"stage": name, "runs": count, "seconds_each": e["estimated_seconds"],
                     "seconds": waves * e["estimated_seconds"], "what": e["what"]})
        total += waves * e["estimated_seconds"]
    peak = max((e["peak_memory_bytes"] for _, _, e in stages), default=0)
    device = stages[0][2]["device"] if stages else "cpu"
    return {"kind": kind, "what": what, "jobs": jobs, "stages": rows, "estimated_seconds": total,
            "peak_memory_bytes": peak, "device": device, "threads": stages[0][2]["threads"] if stages else 1}


def estimate_sweep(plan, jobs: int = 1, threads: int | None = None) -> dict[str, Any]:
    """``sweep --dry-run``: one search of the plan timed (every search has the same supernet and
    budget; the regularisation values do not change a step's cost), one selection retraining and
    one final retraining of the genotype that search starts from; the stage counts come from the
    plan (selection: at most one per search, fewer when searches agree)."""
    import os

    from .config import config_from_dict
    from .experiments.sweep import _train_configs, search_runs

    runs = search_runs(plan)
    if threads is None and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    short, final = _train_configs(plan, runs[0].config)
    if threads:  # every stage's run gets these intra-op threads (run_sweep passes them on)
        short, final = (c.model_copy(update={"threads": threads}) for c in (short, final))
    es = estimate_search(config_from_dict(runs[0].config, [f"threads={threads}"] if threads else None))
    stages = [("search", len(runs), es)]
    if len(runs) > 1:
        stages.append(("selection retraining", len(runs), estimate_train(es["genotype"], short)))
    n_final = 0 if plan.final == "none" else (1 if plan.final == "selected" else len(runs))
    if n_final:
        stages.append(("final retraining", n_final * len(plan.final_seeds), estimate_train(es["genotype"], final)))
    return _stages("sweep", f"{len(runs)} searches of {plan.config}", stages, jobs)


def estimate_s5_table(overrides: dict[str, Any] | None = None, *, jobs: int = 1, repeat_archs=(0, 17, 40, 80),
                      repeat_seeds=(1, 2), seeds=None) -> dict[str, Any]:
    """``s5-table --dry-run``: one S5 training under the protocol timed (the 81 cells differ only
    in which cheap op sits on each edge), times the trainings the table needs."""
    from .evaluate.train import train_config
    from .experiments.s5 import S5_PROTOCOL
    from .skeletons.darts.s5_table import enumerate_s5

    protocol = {**S5_PROTOCOL, **(overrides or {})}
    cfg = train_config(None, protocol)
    archs = enumerate_s5()
    seeds = tuple(dict.fromkeys(int(x) for x in seeds)) if seeds else (cfg.seed,)
    all_seeds = tuple(dict.fromkeys((*seeds, *repeat_seeds)))
    tasks = {(i, s) for i in repeat_archs for s in all_seeds} | {(i, s) for i in range(len(archs)) for s in seeds}
    e = estimate_train(archs[0], cfg)
    return _stages("s5-table", f"{len(tasks)} S5 trainings", [("training", len(tasks), e)], jobs)


def format_estimate(e: dict[str, Any]) -> str:
    """The lines ``--dry-run`` prints."""
    mem = e["peak_memory_bytes"] / 2**20
    where = "peak device memory" if e["device"].startswith("cuda") else "peak memory (process RSS)"
    if "stages" in e:
        lines = [f"dry run ({e['kind']}): {e['what']}, {e['jobs']} job(s) at a time"]
        for r in e["stages"]:
            lines.append(f"  {r['stage']}: {r['runs']} x {format_seconds(r['seconds_each'])} "
                         f"= {format_seconds(r['seconds'])}  ({r['what']})")
        lines += [f"estimated wall time: {format_seconds(e['estimated_seconds'])}", f"{where}: {mem:,.0f} MiB"]
        return "\n".join(lines)
    extra = (f" + {e['seconds_epoch_end']:.2f} s epoch end" if e["kind"] == "search"
             else f" + {e['seconds_eval']:.1f} s per evaluation")
    return "\n".join([
        f"dry run ({e['kind']}): {e['what']}",
        f"timed {e['timed_steps']} steps on {e['device']} ({e['threads']} threads): "
        f"{e['seconds_per_step']:.3f} s/step{extra}",
        f"estimated wall time: {format_seconds(e['estimated_seconds'])} "
        f"({e['epochs']} epochs x {e['steps_per_epoch']} steps)",
        f"{where}: {mem:,.0f} MiB",
    ])


def print_estimate(e: dict[str, Any], echo: Callable[[str], None] = print) -> None:
    echo(format_estimate(e))
