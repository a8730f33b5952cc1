"""What ``stablenas analyze`` computes and what it costs, before it runs (``--dry-run``, and the
first lines of every analysis).

The sizes come from the run (alpha entries, the Hessian mode, the landscape grid, the batches);
the time from one timed unit of each kind on the run's own supernet and data, as ``search
--dry-run`` times search steps: a validation pass (discretisation drop: two; landscape: one per
grid point), a gradient with its graph for double backward (each curvature measurement builds one;
gradient correlation: two plain passes) and a Hessian-vector product (Lanczos: up to ``iters``; the
exact spectrum: one per alpha entry).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..search.loop import Search

# --spectrum auto computes the exact Hessian (one product per alpha entry) only for an alpha this
# small; above it Lanczos' top Ritz values stand for the spectrum (``iters`` products)
EXACT_MAX_ALPHA = 32


def wants_exact(spectrum: str, n_alpha: int) -> bool:
    return spectrum == "yes" or (spectrum == "auto" and n_alpha <= EXACT_MAX_ALPHA)


def analysis_plan(search: Search, *, batches: int, curvature_batches: int, iters: int, spectrum: str,
                  landscape: bool, grid: int, grad_corr: bool) -> dict[str, Any]:
    """The sizes of every diagnostic ``analyze`` runs with these options."""
    from .diagnostics import has_edge_modules

    n = search.arch.num_alpha()
    return {"space": search.space.name, "network": search.skeleton.describe_network(search.cfg.to_dict()),
            "n_alpha": n, "batches": batches, "curvature_batches": curvature_batches, "iters": iters,
            "spectrum": spectrum, "exact": wants_exact(spectrum, n), "grid": grid if landscape else 0,
            "grad_corr": grad_corr and has_edge_modules(search), "grad_corr_defined": has_edge_modules(search)}


def time_units(search: Search, plan: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """Seconds of one validation pass, one gradient build and one Hessian-vector product (the second
    of two: the first pays for lazy initialisation), on the batches the analysis uses."""
    from .. import curvature as cv
    from ..runs.lifecycle import sync

    dev = search.device

    def timed(fn) -> float:
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        return time.perf_counter() - t

    t_eval = timed(lambda: search.evaluate(max_batches=plan["batches"]))
    obj = cv.AlphaObjective.from_search(search, batches=plan["curvature_batches"], bn="train")
    with cv.HVP(obj) as h:
        t_grad = timed(h.gradient)
        v = torch.randn(h.n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(h.alpha)
        h(v)
        t_hvp = timed(lambda: h(v))
    return {"evaluation": t_eval, "gradient": t_grad, "hvp": t_hvp}


def estimate(plan: dict[str, Any], t: dict[str, float]) -> dict[str, float]:
    """Seconds per stage (Lanczos at its cap of ``iters`` products: it may stop earlier)."""
    parts = {"loading": t.get("setup", 0.0), "discretisation drop": 2 * t["evaluation"],
             "lambda_max": t["gradient"] + plan["iters"] * t["hvp"]}
    if plan["exact"]:
        parts["exact spectrum"] = t["gradient"] + plan["n_alpha"] * t["hvp"]
    if plan["grid"]:
        parts["landscape"] = t["gradient"] + plan["grid"] ** 2 * t["evaluation"]
    if plan["grad_corr"]:
        parts["gradient correlation"] = 2 * t["gradient"]
    return parts


def format_plan(plan: dict[str, Any]) -> str:
    """The lines ``analyze --dry-run`` prints (and ``analyze`` before it starts)."""
    from ..runs.lifecycle import format_seconds

    t, parts, n = plan["timing"], plan["estimate"], plan["n_alpha"]
    lines = [f"analyze plan: {plan['run']} ({plan['space']}, {plan['network']}, {n} alpha entries, "
             f"{plan['epochs_done']} epochs done)",
             f"  discretisation drop: supernet vs discretised alpha, {plan['batches']} validation batches each",
             f"  lambda_max: Lanczos, at most {plan['iters']} Hessian-vector products on "
             f"{plan['curvature_batches']} search batch(es), top Ritz values kept"]
    if plan["exact"]:
        lines.append(f"  exact Hessian spectrum: {n} x {n} ({n} products)")
    else:
        why = "--spectrum no" if plan["spectrum"] == "no" else f"{n} alpha entries > {EXACT_MAX_ALPHA}"
        lines.append(f"  exact Hessian spectrum: not computed ({why}; --spectrum yes adds {n} products, "
                     f"~{format_seconds(t['gradient'] + n * t['hvp'])})")
    g = plan["grid"]
    lines.append(f"  landscape: {g} x {g} grid, {plan['batches']} validation batches a point" if g
                 else "  landscape: not computed (--no-landscape)")
    lines.append("  gradient correlation: one (validation, training) batch pair, first, middle and last cell"
                 if plan["grad_corr"] else "  gradient correlation: not computed (" + (
                     "--no-grad-corr)" if plan["grad_corr_defined"] else "the supernet has no per-edge op modules)"))
    lines.append(f"timed on {plan['device']} ({plan['threads']} threads): validation pass {t['evaluation']:.2f} s, "
                 f"gradient {t['gradient']:.2f} s, Hessian-vector product {t['hvp']:.3f} s")
    total = sum(parts.values())
    lines.append(f"estimated wall time: {format_seconds(total)} ("
                 + ", ".join(f"{k} {format_seconds(v)}" for k, v in parts.items()) + "; plots besides)")
    return "\n".join(lines)


def plan_search(search: Search, run_path: str, epochs_done: int, setup_seconds: float, *, seed: int = 0,
                **options: Any) -> dict[str, Any]:
    """The plan of an analysis of ``search`` with its timed units and the estimate."""
    plan = analysis_plan(search, **options)
    t = time_units(search, plan, seed)
    t["setup"] = setup_seconds
    plan.update(run=run_path, epochs_done=epochs_done, device=str(search.device),
                threads=torch.get_num_threads(), timing=t)
    plan["estimate"] = estimate(plan, t)
    return plan
