"""The study's summary: per (space, method) means over seeds, the lambda_max-error correlation, ``table.md``.

Written from the finished units alone (``results.json`` holds them all), so a partial study, a resumed
one and a table of committed records are summarised alike.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Collection, Sequence
from pathlib import Path

import yaml

from .protocol import StudyProtocol
from .records import load_results
from .units import Unit, study_units

__all__ = ["fmt_mean_std", "fmt_value", "format_table", "pearson", "regret_spaces", "summarise"]


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r (None below 3 points or for a constant series)."""
    if len(xs) < 3 or len(xs) != len(ys):
        return None
    try:
        return statistics.correlation(list(map(float, xs)), list(map(float, ys)))
    except statistics.StatisticsError:
        return None


def _ms(xs: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    v = [float(x) for x in xs if x is not None]
    if not v:
        return None, None, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def _per_epoch(series: list[list[float | None]]) -> dict[str, list]:
    """Mean, std and count per epoch over runs (runs may have different lengths: DARTS-ES stops)."""
    n = max((len(s) for s in series), default=0)
    mean, std, count = [], [], []
    for i in range(n):
        m, s, c = _ms([s[i] for s in series if i < len(s)])
        mean.append(m)
        std.append(s)
        count.append(c)
    return {"mean": mean, "std": std, "n": count}


def _at_epochs(rs: list[dict]) -> dict[str, dict]:
    """Retrained test accuracy of the cell derived at each retrained epoch (the last: the unit's own cell),
    mean, std and n over seeds; empty when the protocol retrains no earlier cells of this method."""
    epochs = sorted({e for r in rs for e in r.get("test_acc_at_epoch") or {}}, key=int)
    if not epochs:
        return {}
    out = {e: _ms([(r.get("test_acc_at_epoch") or {}).get(e) for r in rs]) for e in epochs}
    out[str(max(r["epochs"] for r in rs))] = _ms([r.get("test_acc") for r in rs])
    return {e: {"mean": m, "std": s, "n": n} for e, (m, s, n) in out.items()}


def regret_spaces(units: Sequence[Unit]) -> set[str]:
    """The spaces whose units are scored by an S5 table (every cell of the space in the table of the
    unit's dataset): only their units record a test regret."""
    from ...skeletons.darts.s5_table import has_table

    return {u.space for u in units if has_table(u.space, u.search["data"]["dataset"])}


def _row(space: str, method: str, rs: list[dict], ref_ep: float | None) -> dict:
    """One table row: ``rs``, the finished units of (space, method), as means and stds over seeds."""
    share = _ms([r["share_normal"] for r in rs])
    acc = _ms([r.get("test_acc") for r in rs])
    regret = _ms([r.get("test_regret_final") for r in rs])
    drop = _ms([(r.get("discretization") or {}).get("acc_drop") for r in rs])
    drop_b = _ms([((r.get("discretization") or {}).get("batch_bn") or {}).get("acc_drop") for r in rs])
    lam = _ms([r.get("lambda_max_final") for r in rs])
    ep = _ms([r["search_seconds"] / max(r["epochs"], 1) for r in rs])[0]
    return {
        "space": space, "method": method, "n": len(rs), "seeds": [r["seed"] for r in rs],
        "share_normal_mean": share[0], "share_normal_std": share[1],
        "share_normal_per_seed": [r["share_normal"] for r in rs],
        "test_acc_mean": acc[0], "test_acc_std": acc[1], "test_source": rs[0].get("test_source"),
        "test_regret_mean": regret[0], "test_regret_std": regret[1],
        "acc_drop_mean": drop[0], "acc_drop_std": drop[1],
        "acc_drop_batch_bn_mean": drop_b[0], "acc_drop_batch_bn_std": drop_b[1],
        "lambda_max_final_mean": lam[0], "lambda_max_final_std": lam[1],
        "epochs_mean": statistics.fmean(r["epochs"] for r in rs),
        "search_seconds_mean": statistics.fmean(r["search_seconds"] for r in rs),
        "seconds_per_epoch_rel": (ep / ref_ep) if ep and ref_ep else None,
        "curves": {k: _per_epoch([r["curves"][k] for r in rs]) for k in ("share_normal", "lambda_max", "test_regret")},
        "test_acc_at_epoch": _at_epochs(rs),
    }


def _rows(protocol: StudyProtocol, runs: list[dict]) -> list[dict]:
    """Every (space, method) of the protocol in its order, ``n: 0`` where no unit has finished."""
    rows = []
    by: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        by.setdefault((r["space"], r["method"]), []).append(r)
    for space in protocol.spaces:
        ref = by.get((space, protocol.reference), [])
        ref_ep = _ms([r["search_seconds"] / max(r["epochs"], 1) for r in ref])[0]
        for method in protocol.methods:
            rs = by.get((space, method), [])
            rows.append(_row(space, method, rs, ref_ep) if rs else {"space": space, "method": method, "n": 0})
    return rows


def _correlation(protocol: StudyProtocol, runs: list[dict]) -> dict[str, dict]:
    """Pearson r of lambda_max at the end of search and test error, over all units and per space."""
    pairs = [(r["lambda_max_final"], 1.0 - r["test_acc"]) for r in runs
             if r.get("lambda_max_final") is not None and r.get("test_acc") is not None]
    corr = {"all": {"r": pearson(*zip(*pairs)) if pairs else None, "n": len(pairs)}}
    for space in protocol.spaces:
        p = [(r["lambda_max_final"], 1.0 - r["test_acc"]) for r in runs if r["space"] == space
             and r.get("lambda_max_final") is not None and r.get("test_acc") is not None]
        corr[space] = {"r": pearson(*zip(*p)) if p else None, "n": len(p)}
    return corr


def summarise(protocol: StudyProtocol, out_dir: str | Path, *, plots: bool = True) -> dict:
    """Aggregate the finished units: ``results.json``, ``table.md`` and ``plots/`` under ``out_dir``."""
    from ...utils import atomic_write_text
    from .plots import write_plots

    out = Path(out_dir)
    units = study_units(protocol)
    runs = load_results(protocol, out)
    summary = {
        "protocol": protocol.to_dict(),
        "units_total": len(units),
        "units_done": len(runs),
        "partial": len(runs) < len(units),
        "rows": _rows(protocol, runs),
        "lambda_error_correlation": _correlation(protocol, runs),
        "runs": runs,
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "table.md", format_table(summary, regret_spaces=regret_spaces(units)))
    if plots:
        summary["plots"] = [str(p) for p in write_plots(summary, out / "plots")]
    return summary


def fmt_value(x: float | None, nd: int = 3, scale: float = 1.0) -> str:
    """``x`` to ``nd`` decimals (times ``scale``), ``-`` for none."""
    return "-" if x is None else f"{scale * x:.{nd}f}"


def fmt_mean_std(m: float | None, s: float | None, nd: int = 3, scale: float = 1.0) -> str:
    """``mean ± std`` to ``nd`` decimals (times ``scale``), ``-`` for none."""
    if m is None:
        return "-"
    return f"{scale * m:.{nd}f} ± {scale * (s or 0.0):.{nd}f}"


def _space_section(summary: dict, space: str, regret: bool) -> list[str]:
    """One space's table: a row per method; the S5 regret column only where an S5 table scores the space."""
    p = summary["protocol"]
    head = ["method", "n", "param-free share, normal (mean ± std)", "test acc % (mean ± std)",
            *(["S5 regret %"] if regret else []), "disc. drop %, running BN", "disc. drop %, batch BN",
            "lambda_max (end)", "epochs", "s/epoch rel. to " + p["reference"]]
    lines = [f"## space {space}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        if r["space"] != space:
            continue
        if not r["n"]:
            lines.append(f"| {r['method']} | 0 |" + " - |" * (len(head) - 2))
            continue
        acc = fmt_mean_std(r["test_acc_mean"], r["test_acc_std"], 2, 100)
        if r.get("test_source") == "lookup" and acc != "-":
            acc += " (table)"
        cells = [r["method"], str(r["n"]), fmt_mean_std(r["share_normal_mean"], r["share_normal_std"]), acc,
                 *([fmt_mean_std(r["test_regret_mean"], r["test_regret_std"], 2, 100)] if regret else []),
                 fmt_mean_std(r["acc_drop_mean"], r["acc_drop_std"], 2, 100),
                 fmt_mean_std(r.get("acc_drop_batch_bn_mean"), r.get("acc_drop_batch_bn_std"), 2, 100),
                 fmt_mean_std(r["lambda_max_final_mean"], r["lambda_max_final_std"], 4), f"{r['epochs_mean']:.1f}",
                 fmt_value(r["seconds_per_epoch_rel"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _at_epoch_section(rows: list[dict]) -> list[str]:
    """Retrained test accuracy of the cells derived at earlier epochs (iDARTS Fig. 7), where retrained."""
    at = [r for r in rows if r.get("test_acc_at_epoch")]
    if not at:
        return []
    lines = ["## test acc % of the cell derived at epoch e, retrained (iDARTS Fig. 7)", "",
             "| space | method | " + " | ".join(f"epoch {e} (n)" for e in at[0]["test_acc_at_epoch"]) + " |",
             "|---|---|" + "---|" * len(at[0]["test_acc_at_epoch"])]
    for r in at:
        cells = [f"{fmt_mean_std(v['mean'], v['std'], 2, 100)} ({v['n']})" for v in r["test_acc_at_epoch"].values()]
        lines.append(f"| {r['space']} | {r['method']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def format_table(summary: dict, *, regret_spaces: Collection[str]) -> str:
    """table.md: per space, one row per method; then the correlation and the protocol. ``regret_spaces``:
    the spaces an S5 table scores (:func:`regret_spaces`), the only ones with an S5 regret column."""
    p = summary["protocol"]
    state = (f"PARTIAL: {summary['units_done']} of {summary['units_total']} units finished"
             if summary["partial"] else f"complete: all {summary['units_total']} units")
    lines = [f"# Study {p['name']} ({state})", "", p.get("description") or "", ""]
    for space in p["spaces"]:
        lines += _space_section(summary, space, space in regret_spaces)
    lines += _at_epoch_section(summary["rows"])
    lines += ["## lambda_max at the end of search vs test error (robust-darts Fig. 4: r = 0.867)", "",
              "| runs | Pearson r | n |", "|---|---|---|"]
    for k, v in summary["lambda_error_correlation"].items():
        lines.append(f"| {k} | {fmt_value(v['r'], 3)} | {v['n']} |")
    lines += ["", "Test acc: the returned cell retrained from scratch with the protocol's retraining budget "
              "(`(table)`: the space's ground-truth table, no training). Disc. drop: supernet validation accuracy "
              "at alpha minus at the discretised alpha, same weights (robust-darts Sec. 4.2), with BN's running "
              "statistics (gathered under the op mixture) or each batch's own. s/epoch: wall-clock "
              "from the runs' records, not interleaved (machine load differs between runs).", "",
              "Protocol:", "", "```yaml", yaml.safe_dump({k: v for k, v in p.items() if k != "estimate"},
                                                          sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
