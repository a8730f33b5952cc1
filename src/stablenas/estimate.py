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

from .search.loop import _sync, format_seconds

__all__ = ["estimate_search", "estimate_train", "format_estimate", "peak_memory_bytes"]


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
            _sync(s.device)
            t0 = time.perf_counter()
        s.step(next(it))
        s.step_in_epoch += 1
        s.global_step += 1
    _sync(s.device)
    per_step = (time.perf_counter() - t0) / max(n - warmup, 1)
    s.step_in_epoch = s.steps_per_epoch  # the end of epoch 1 as the run would reach it
    # the epoch's validation pass: two batches timed, scaled to the batches an epoch evaluates
    n_val = min(cfg.search.val_batches or len(s.val_eval_loader), len(s.val_eval_loader))
    k = min(2, n_val)
    s.evaluate(max_batches=1)  # warm-up
    _sync(s.device)
    t = time.perf_counter()
    s.evaluate(max_batches=k)
    _sync(s.device)
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
    _sync(s.device)
    s.evaluate = real_evaluate
    epoch_end = time.perf_counter() - t + val_seconds
    epochs = cfg.optim.epochs
    total = epochs * (s.steps_per_epoch * per_step + epoch_end)
    return {
        "kind": "search", "name": cfg.name, "device": str(s.device), "threads": torch.get_num_threads(),
        "epochs": epochs, "steps_per_epoch": s.steps_per_epoch, "timed_steps": n - warmup,
        "seconds_per_step": per_step, "seconds_epoch_end": epoch_end, "estimated_seconds": total,
        "peak_memory_bytes": peak_memory_bytes(s.device),
        "what": f"{cfg.space}, {cfg.data.dataset}, {cfg.network.layers} cells x {cfg.network.channels} ch, "
                f"batch {cfg.data.batch_size}, update {cfg.search.update}"
                + (f", methods {', '.join(m.name for m in cfg.methods)}" if cfg.methods else ""),
    }


def estimate_train(genotype, cfg, steps: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Time ``warmup`` + ``steps`` training steps and one evaluation batch of ``cfg``'s run."""
    from .evaluate.train import _Trainer, resolve_genotype

    g = resolve_genotype(genotype)
    tr = _Trainer(g, cfg, None, resume=False, progress=False, log=lambda m: None)
    _reset_peak(tr.device)
    full_steps = tr.steps
    n = min(warmup + steps, full_steps)
    warmup = min(warmup, n - 1)
    if warmup:
        tr.steps = warmup
        tr.train_epoch()
    tr.steps = n - warmup
    _sync(tr.device)
    t = time.perf_counter()
    tr.train_epoch()
    _sync(tr.device)
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
                _sync(tr.device)
                t = time.perf_counter()
                tr.model(x)
                _sync(tr.device)
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


def format_estimate(e: dict[str, Any]) -> str:
    """The lines ``--dry-run`` prints."""
    extra = (f" + {e['seconds_epoch_end']:.2f} s epoch end" if e["kind"] == "search"
             else f" + {e['seconds_eval']:.1f} s per evaluation")
    mem = e["peak_memory_bytes"] / 2**20
    where = "peak device memory" if e["device"].startswith("cuda") else "peak memory (process RSS)"
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
