"""The curvature measurements: seconds per lambda_max estimate (Lanczos, :mod:`stablenas.curvature`)
per engine on the same weights and alpha, and the exact Hessian of the fast engine (one HVP per
alpha entry), whose top eigenvalue checks the estimate (relative error) and whose time puts the
estimate's in proportion. The plain model's exact Hessian runs with ``plain_exact``; otherwise its
time is extrapolated from its seconds per HVP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .options import ENGINES, BenchConfig
from .steps import engine_objective
from .timing import Measurements, load1, time_call


def time_lambda_max(m: Measurements, bc: BenchConfig, search, start: tuple[dict, dict]) -> tuple[Any, Any]:
    """Time lambda_max of every engine from the start weights and alpha (``start``: the network's and
    the architecture's state); returns the fast and the plain objective (None without plain)."""
    from .. import curvature as cur

    search.net.load_state_dict(start[0])
    search.arch.load_state_dict(start[1])
    iters = bc.curvature_iters
    objs = {eng: engine_objective(cur, search, bc, eng) for eng in bc.engines()}
    m.timed([(f"lambda_max/{eng}", (lambda o=o: cur.dominant_eigenvalue(o, iters=iters)), None)
             for eng, o in objs.items()])
    return objs["fast"], objs.get("plain")


def curvature_record(m: Measurements, bc: BenchConfig, objectives: tuple[Any, Any],
                     log: Callable[[str], None]) -> dict:
    """lambda_max per engine (its value and HVPs) and, with ``bc.exact``, the exact Hessian check."""
    from .. import curvature as cur

    curv: dict[str, Any] = {"lambda_max": m.pair("lambda_max")}
    for eng in ENGINES:
        v = m.values.get(f"lambda_max/{eng}")
        if v and eng in curv["lambda_max"]:
            curv["lambda_max"][eng]["value"] = v[-1]["lambda_max"]
            curv["lambda_max"][eng]["hvps"] = v[-1]["hvps"]
    if bc.exact:
        log("exact Hessian (fast engine): one HVP per alpha entry")
        try:
            _exact(cur, curv, bc, objectives, m.device)
        except Exception as e:
            curv["exact_hessian"] = {"error": f"{type(e).__name__}: {str(e)[:240]}"}
    return curv


def _exact(cur, curv: dict, bc: BenchConfig, objectives: tuple[Any, Any], device) -> None:
    obj_fast, obj_plain = objectives
    wall, cpu, (_, ex) = time_call(lambda: cur.exact_spectrum(obj_fast), device)
    top = ex.eigenvalues[0]
    curv["exact_hessian"] = {"fast": {"seconds": round(wall, 3), "cpu_s": round(cpu, 3), "n": ex.n,
                                      "hvps": ex.hvps, "top_eigenvalue": top, "load1": load1()}}
    lm = curv["lambda_max"].get("fast", {})
    if "value" in lm and top != 0:
        curv["lambda_max_vs_exact"] = {"relative_error": round(abs(lm["value"] - top) / abs(top), 6),
                                       "time_fraction": round(lm["median_s"] / wall, 4)}
    if bc.plain:
        plain = _exact_plain(cur, curv["lambda_max"], bc, obj_plain, ex.n, device)
        if plain is not None:
            curv["exact_hessian"]["plain"] = plain
        pe = curv["exact_hessian"].get("plain", {})
        ps = pe.get("seconds", pe.get("seconds_extrapolated"))
        if ps:
            curv["exact_hessian"]["speedup"] = round(ps / wall, 3)


def _exact_plain(cur, lambda_max: dict, bc: BenchConfig, obj_plain, n: int, device) -> dict | None:
    """The plain model's exact Hessian: timed with ``plain_exact``, else its lambda_max seconds per
    HVP times ``n``."""
    if bc.plain_exact:
        wall_p, cpu_p, (_, exp) = time_call(lambda: cur.exact_spectrum(obj_plain), device)
        return {"seconds": round(wall_p, 3), "cpu_s": round(cpu_p, 3), "top_eigenvalue": exp.eigenvalues[0],
                "load1": load1()}
    if "plain" in lambda_max and lambda_max["plain"].get("median_s"):
        pl = lambda_max["plain"]
        per_hvp = pl["median_s"] / max(pl.get("hvps", bc.curvature_iters), 1)
        return {"seconds_extrapolated": round(per_hvp * n, 1),
                "how": "plain lambda_max seconds / its HVPs x n (not run; --plain-exact runs it)"}
    return None
