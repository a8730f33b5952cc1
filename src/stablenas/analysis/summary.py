"""What ``stablenas show`` prints about a run: progress, the last epoch, and the numbers a stability
study reads first -- the derived cell's parameter-free share (the collapse signal, robust-darts
Sec. 3), the last measured lambda_max (Sec. 4), the benchmark test accuracy and regret where the
space has a lookup (S5, NAS-Bench-201), perplexity for the recurrent cell -- with the genotype in
its one-line per-node form (the JSON stays in genotype.json)."""

from __future__ import annotations

import math
from pathlib import Path

from .run import Run


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _epoch_line(m: dict, splits: tuple[str, ...]) -> str:
    """``train loss L acc A  val loss L acc A`` (perplexity instead of accuracy where recorded)."""
    parts = []
    for s in splits:
        kv = [(k, m.get(f"{s}_{k}")) for k in ("loss", "ppl", "acc")]
        kv = [(k, v) for k, v in kv if _num(v)]
        if any(k == "ppl" for k, _ in kv):
            kv = [(k, v) for k, v in kv if k != "acc"]
        if kv:
            parts.append(f"{s} " + " ".join(f"{k} {v:.2f}" if k == "ppl" else f"{k} {v:.4f}" for k, v in kv))
    return "last epoch: " + "  ".join(parts) if parts else ""


def param_free_line(genotype) -> str:
    """Share of parameter-free ops (skip, pooling, none, noise) per cell type and over all cells;
    empty where the skeleton has no share (the recurrent cell)."""
    from ..spaces.ops import is_parameter_free

    if not genotype.skeleton.has_param_free_share:
        return ""
    cells = {ct: genotype.ops(ct) for ct in genotype.cell_types()}
    shares = [f"{ct} {sum(map(is_parameter_free, ops)) / len(ops):.2f}" for ct, ops in cells.items() if ops]
    every = [op for ops in cells.values() for op in ops]
    if len(cells) > 1 and every:
        shares.append(f"all {sum(map(is_parameter_free, every)) / len(every):.2f}")
    return "parameter-free share: " + "  ".join(shares) if shares else ""


def _stability_lines(metrics: list[dict], space: object) -> list[str]:
    out = []
    lam = [(m.get("epoch"), m["lambda_max"]) for m in metrics if _num(m.get("lambda_max"))]
    if lam:
        first = f"  (first {lam[0][1]:.4g} at epoch {lam[0][0]})" if len(lam) > 1 else ""
        out.append(f"lambda_max: {lam[-1][1]:.4g} at epoch {lam[-1][0]}{first}")
    last = metrics[-1] if metrics else {}
    bench = [f"test acc {last['test_acc'] * 100:.2f}%"] if _num(last.get("test_acc")) else []
    if _num(last.get("test_regret")):
        bench.append(f"regret {last['test_regret'] * 100:.2f}%")
    if bench:
        out.append(f"derived cell ({space} lookup): " + "  ".join(bench))
    return out


def search_lines(run: Run, run_dir: Path) -> list[str]:
    cfg = run.config
    lines = [f"run: {run_dir}",
             f"space: {cfg.get('space')}  dataset: {cfg.get('data', {}).get('dataset')}  "
             f"methods: {', '.join(m['name'] for m in cfg.get('methods', [])) or 'darts'}  "
             f"update: {cfg.get('search', {}).get('update')}  seed: {cfg.get('seed')}",
             f"epochs: {len(run.metrics)}/{cfg.get('optim', {}).get('epochs')}  status: {run.status}"]
    if run.metrics:
        lines.append(_epoch_line(run.metrics[-1], ("train", "val")))
    lines += _stability_lines(run.metrics, cfg.get("space"))
    if run.genotype is not None:
        lines += [param_free_line(run.genotype), f"genotype: {run.genotype}"]
    return [s for s in lines if s]


def train_lines(run: Run, run_dir: Path) -> list[str]:
    """``show`` for a directory of ``stablenas train``."""
    cfg, res = run.config, run.result or {}
    lines = [f"training run: {run_dir}"]
    if "nhid" in cfg:  # the recurrent language model
        lines.append(f"dataset: ptb  units: {cfg.get('nhid')}  batch: {cfg.get('batch_size')}  seed: {cfg.get('seed')}")
    else:
        lines.append(f"dataset: {cfg.get('dataset')}  network: {cfg.get('network')}  C={cfg.get('channels')}  "
                     f"layers: {cfg.get('layers')}  batch: {cfg.get('batch_size')}  seed: {cfg.get('seed')}")
    lines.append(f"epochs: {len(run.metrics)}/{cfg.get('epochs')}  status: {run.status}")
    if run.metrics:
        lines.append(_epoch_line(run.metrics[-1], ("train", "valid", "test")))
    if res:
        parts = [f"{k} {res[k] * 100:.2f}%" for k in ("test_acc", "valid_acc") if _num(res.get(k))]
        parts += [f"{k.replace('_', ' ')} {res[k]:.2f}" for k in ("test_ppl", "valid_ppl") if _num(res.get(k))]
        if _num(res.get("params")):
            parts.append(f"params {res['params'] / 1e6:.3f}M")
        if _num(res.get("macs")):
            parts.append(f"multiply-adds {res['macs'] / 1e6:.2f}M")
        lines.append("result: " + "  ".join(parts))
    if run.genotype is not None:
        lines += [param_free_line(run.genotype), f"genotype: {run.genotype}"]
    return [s for s in lines if s]


def show_lines(run: Run, run_dir: Path) -> list[str]:
    return train_lines(run, run_dir) if run.kind == "train" else search_lines(run, run_dir)


__all__ = ["param_free_line", "show_lines"]
