"""What a study still costs (``study --plan``): measured seconds of its finished units, else the protocol's figures.

Kept from running: it reads results and records, and runs nothing.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .protocol import StudyProtocol
from .records import load_results, recorded_results
from .units import Unit, study_units

__all__ = ["estimate_cost"]


def _finished(protocol: StudyProtocol, out_dir: str | Path | None, records: str | Path | None) -> list[dict]:
    """The finished units' results: in ``out_dir``, then the records a run would import for the rest."""
    runs = load_results(protocol, out_dir) if out_dir is not None and Path(out_dir).exists() else []
    if records is not None and Path(records).is_dir():
        here = {(r["space"], r["method"], r["seed"]) for r in runs}
        runs += [r for r in recorded_results(protocol, records) if (r["space"], r["method"], r["seed"]) not in here]
    return runs


def _search_seconds(protocol: StudyProtocol, u: Unit, per_epoch: dict[tuple[str, str], list[float]]) -> float | None:
    """Seconds of ``u``'s search (with its lambda_max measurements); ``None`` without a figure."""
    est = protocol.estimate
    epochs = u.search["optim"]["epochs"]
    if (u.space, u.method) in per_epoch:
        return statistics.fmean(per_epoch[(u.space, u.method)]) * epochs
    if u.space not in est.epoch_seconds or u.method not in est.relative:
        return None
    cost = est.epoch_seconds[u.space] * est.relative[u.method] * epochs
    if protocol.track and u.space in est.track_seconds:
        every = int(protocol.track.get("every", 1))
        cost += est.track_seconds[u.space] * sum(e % every == 0 or e == epochs - 1 for e in range(epochs))
    return cost


def estimate_cost(protocol: StudyProtocol, out_dir: str | Path | None = None,
                  records: str | Path | None = None) -> dict:
    """Seconds the units still to run will take: measured seconds per epoch of finished units of the
    same (space, method) when there are any, else the protocol's ``estimate`` figures. Finished:
    in ``out_dir`` or recorded in ``records`` (the units a run or ``--summary`` imports).
    ``unknown``: units without a search figure (not in ``seconds``); ``retrain_unpriced``: units
    whose retraining has no figure yet (their search is in ``seconds``, the retraining is not)."""
    units = study_units(protocol)
    runs = _finished(protocol, out_dir, records)
    done = {(r["space"], r["method"], r["seed"]) for r in runs}
    per_epoch: dict[tuple[str, str], list[float]] = {}
    retrain: dict[str, list[float]] = {}
    for r in runs:
        secs = r["search_seconds"] + (r.get("track_seconds") or 0.0)
        per_epoch.setdefault((r["space"], r["method"]), []).append(secs / max(r["epochs"], 1))
        if r.get("train_seconds"):
            retrain.setdefault(r["space"], []).append(r["train_seconds"])
    total, unknown, unpriced, rows = 0.0, [], [], {}
    for u in units:
        if (u.space, u.method, u.seed) in done:
            continue
        cost = _search_seconds(protocol, u, per_epoch)
        if cost is None:
            unknown.append(u.name)
            continue
        tr = 0.0
        if u.train is not None:
            if u.space in retrain:
                tr = statistics.fmean(retrain[u.space])
            elif u.space in protocol.estimate.retrain_seconds:
                tr = protocol.estimate.retrain_seconds[u.space]
            else:
                unpriced.append(u.name)
        total += cost + tr
        rows[u.name] = cost + tr
    todo = [u.name for u in units if (u.space, u.method, u.seed) not in done]
    return {"units": len(units), "done": len(done), "to_run": len(todo), "todo": todo, "seconds": total,
            "unknown": unknown, "retrain_unpriced": unpriced, "per_unit": rows}
