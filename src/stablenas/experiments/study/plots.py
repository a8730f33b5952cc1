"""The study's figures: per-epoch curves per method as small multiples, lambda_max against test error.

Optional: without matplotlib a study writes its table and results and no plots.
"""

from __future__ import annotations

from pathlib import Path

from .summary import fmt_value

__all__ = ["write_plots"]


def _curve(r: dict, key: str) -> tuple[list[int], list[float], list[float]]:
    c = r["curves"][key]
    xs = [i + 1 for i, v in enumerate(c["mean"]) if v is not None]
    return xs, [v for v in c["mean"] if v is not None], [c["std"][i] or 0.0 for i in (x - 1 for x in xs)]


def _small_multiples(plt, summary: dict, rows: list[dict], key: str, label: str, space: str, folder: Path) -> Path:
    """One panel per method (mean ± std over seeds), the reference method in grey in every panel: twelve
    bands on one axis cannot be told apart."""
    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.2 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    ref = next((r for r in rows if r["method"] == summary["protocol"].get("reference")), None)
    for ax, r in zip(axes.flat, rows):
        if ref is not None and r is not ref:
            xs, m, _ = _curve(ref, key)
            ax.plot(xs, m, color="0.6", lw=1, label=ref["method"])
        xs, m, sd = _curve(r, key)
        ax.plot(xs, m, color="C0", lw=1.5)
        ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color="C0", alpha=0.2)
        ax.set_title(f"{r['method']} (n={r['n']})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    fig.supxlabel("search epoch", fontsize=9)
    fig.supylabel(label, fontsize=9)
    ref_note = f"; grey: {ref['method']}" if ref is not None else ""
    fig.suptitle(f"{summary['protocol']['name']}, space {space}: {label} (mean ± std over seeds{ref_note})",
                 fontsize=10)
    fig.tight_layout()
    path = folder / f"{key}_{space}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _lambda_vs_error(plt, summary: dict, folder: Path) -> Path | None:
    """lambda_max at the end of search against the retrained test error, one colour per space."""
    pts = [(r["lambda_max_final"], 100 * (1 - r["test_acc"]), r["space"]) for r in summary["runs"]
           if r.get("lambda_max_final") is not None and r.get("test_acc") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    for space in summary["protocol"]["spaces"]:
        p = [(x, y) for x, y, s in pts if s == space]
        if p:
            ax.scatter(*zip(*p), label=space, s=14)
    c = summary["lambda_error_correlation"]["all"]
    ax.set_xlabel("lambda_max at the end of search")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"r = {fmt_value(c['r'], 3)} (n = {c['n']})")
    ax.legend()
    fig.tight_layout()
    path = folder / "lambda_vs_error.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(summary: dict, folder: Path) -> list[Path]:
    """share / lambda_max / regret per epoch per method (mean ± std over seeds), lambda vs error."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, label in (("share_normal", "param-free share (normal cell)"), ("lambda_max", "lambda_max"),
                       ("test_regret", "test regret")):
        for space in summary["protocol"]["spaces"]:
            rows = [r for r in summary["rows"] if r["space"] == space and r["n"]
                    and any(v is not None for v in r["curves"][key]["mean"])]
            if rows:
                written.append(_small_multiples(plt, summary, rows, key, label, space, folder))
    path = _lambda_vs_error(plt, summary, folder)
    return written if path is None else [*written, path]
