"""Matplotlib figures of a run (Agg backend: no display needed). Every function returns PNG bytes
so the report can inline them and ``analyze`` can write them to disk."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 100
PAGE_WIDTH = 12.0  # inches at DPI: about the report's main column (1,100 px) once bbox_inches="tight" trims it


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _epoch_axis(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def curves(metrics: Sequence[dict], title: str = "", metric: str = "acc", label: str = "accuracy") -> bytes:
    """Train/validation loss and the skeleton's metric (``train_<metric>``, ``val_<metric>``) per epoch."""
    ep = [r["epoch"] for r in metrics]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.6))
    a1.plot(ep, [r["train_loss"] for r in metrics], "o-", label="train (weight half)")
    a1.plot(ep, [r["val_loss"] for r in metrics], "s-", label="validation (alpha half)")
    _epoch_axis(a1)
    a1.set_ylabel("loss")
    a1.legend()
    a2.plot(ep, [r.get(f"train_{metric}") for r in metrics], "o-", label="train")
    a2.plot(ep, [r.get(f"val_{metric}") for r in metrics], "s-", label="validation")
    _epoch_axis(a2)
    a2.set_ylabel(label)
    a2.legend()
    for a in (a1, a2):
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _png(fig)


def train_curves(metrics: Sequence[dict], title: str = "") -> bytes:
    """A training run (``stablenas train``): loss and accuracies per epoch (validation / test
    accuracy where the run evaluated them)."""
    ep = [r["epoch"] for r in metrics]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.6))
    a1.plot(ep, [r.get("train_loss") for r in metrics], "o-", label="train")
    a1.set_ylabel("loss")
    for key, style, lab in (("train_acc", "o-", "train"), ("valid_acc", "s-", "validation (holdout)"),
                            ("test_acc", "^-", "test")):
        pts = [(r["epoch"], r[key]) for r in metrics if _finite(r.get(key))]
        if pts:
            a2.plot([e for e, _ in pts], [v for _, v in pts], style, label=lab)
    a2.set_ylabel("accuracy")
    for a in (a1, a2):
        _epoch_axis(a)
        a.grid(alpha=0.3)
        a.legend()
    if title:
        fig.suptitle(title)
    return _png(fig)


def lambda_plot(series: Sequence[tuple[int, float]], local_avg: Sequence[tuple[int, float]] = (),
                stop: dict | None = None, simulated: dict | None = None, rollbacks: Sequence[dict] = (),
                title: str = "", analysis: dict | None = None, last_epoch: int = 0) -> bytes:
    """lambda_max per epoch (1-based epochs), its local average and the early-stopping marks;
    ``analysis`` ({"epoch", "lambda_max", "exact"?}) is the value ``stablenas analyze`` computed at
    the end of the search, drawn as its own marker so a run without tracking still shows it. The
    epoch axis runs from 1 to ``last_epoch`` (the run's last epoch) when given."""
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.8))
    if series:
        ax.plot([e for e, _ in series], [v for _, v in series], "o-", color="C0", label="lambda_max")
    if local_avg:
        ax.plot([e for e, _ in local_avg], [v for _, v in local_avg], "-", color="C1", lw=2.5, alpha=0.8,
                label="local average")
    vals = dict(series)
    for mark, style, lab in ((stop, "r*", "DARTS-ES stop (returned epoch)"),
                             (simulated, "kx", "ES rule would stop (returned epoch)")):
        if mark:
            e = mark["stop_epoch"]
            y = vals.get(e, min(vals.values()) if vals else 0.0)
            ax.plot([e], [y], style, ms=16, label=lab)
            ax.axvline(mark["decided_at"], color=style[0], ls=":", lw=1,
                       label=f"decided at epoch {mark['decided_at']}")
    for i, ev in enumerate(rollbacks):
        ax.axvline(ev["stop_epoch"], color="C2", ls="--", lw=1.2,
                   label="DARTS-ADA rollback" if i == 0 else None)
    has_end = analysis is not None and _finite(analysis.get("lambda_max"))
    if has_end:
        e = analysis["epoch"]
        ax.plot([e], [analysis["lambda_max"]], "D", color="C3", ms=9,
                label=f"end of search (analyze, Lanczos): {analysis['lambda_max']:.4g}")
        if _finite(analysis.get("exact")):
            ax.plot([e], [analysis["exact"]], "x", color="k", ms=11, mew=2,
                    label=f"end of search (exact Hessian): {analysis['exact']:.4g}")
        if not series:
            ax.set_xlim(0.5, e + 0.5)
            lo = min(v for v in (analysis["lambda_max"], analysis.get("exact")) if _finite(v))
            ax.set_ylim(min(0.0, lo * 1.2), max(analysis["lambda_max"], analysis.get("exact") or 0) * 1.25 or 1.0)
    if last_epoch:
        ax.set_xlim(0.5, last_epoch + 0.5)
    _epoch_axis(ax)
    ax.set_ylabel(r"$\lambda_{max}$ of $\nabla^2_\alpha L_{val}$")
    ax.grid(alpha=0.3)
    if series or local_avg or has_end:
        ax.legend(fontsize=8)
    if not series and has_end:
        ax.text(0.02, 0.04, "not tracked during the search (add method `hessian` for a series)",
                fontsize=8, color="#555", transform=ax.transAxes)
    elif not series:
        ax.text(0.5, 0.5, "no lambda_max in the metrics\n(add method `hessian`, or run `stablenas analyze`)",
                ha="center", va="center", transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return _png(fig)


def series_grid(series: dict[str, Sequence[tuple[int, float]]], last_epoch: int, title: str = "") -> bytes:
    """One small panel per named series over the epochs (a method's own numbers per epoch record)."""
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH, 2.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(series):
            ax.axis("off")
            continue
        name, pts = list(series.items())[i]
        ax.plot([e for e, _ in pts], [v for _, v in pts], "o-", ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0.5, max(last_epoch, 1) + 0.5)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def op_weights(metrics: Sequence[dict], edge_ops: dict[str, Sequence[Sequence[str]]], cell_type: str,
               title: str = "", edges: Sequence[tuple[int, int]] | None = None) -> bytes:
    """One panel per edge, titled ``i->j`` (source node i, target node j; 0, 1 are the cell inputs,
    as in the genotype and the TensorBoard tags): each candidate op's weight over the epochs."""
    ep = [r["epoch"] for r in metrics]
    n_edges = len(edge_ops[cell_type])
    cols = min(5, n_edges)
    rows = math.ceil(n_edges / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), sharex=True, sharey=True,
                             squeeze=False)
    ops_seen: dict[str, int] = {}
    for e in range(rows * cols):
        ax = axes[e // cols][e % cols]
        if e >= n_edges:
            ax.axis("off")
            continue
        ops = edge_ops[cell_type][e]
        for k, op in enumerate(ops):
            color = ops_seen.setdefault(op, len(ops_seen))
            ax.plot(ep, [r["op_weights"][cell_type][e][k] for r in metrics], color=f"C{color % 10}", lw=1.5)
        ax.set_title(f"edge {edges[e][0]}->{edges[e][1]}" if edges else f"edge {e}", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if e + cols >= n_edges:  # the lowest panel of its column: epoch ticks and label
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("epoch", fontsize=8)
        if e % cols == 0:
            ax.set_ylabel("op weight", fontsize=8)
    handles = [plt.Line2D([], [], color=f"C{c % 10}", lw=2) for c in ops_seen.values()]
    fig.legend(handles, list(ops_seen), loc="lower center", ncol=min(len(ops_seen), 5), fontsize=8,
               bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(title or f"op weights per edge ({cell_type} cell) over epochs", fontsize=10)
    # margins in inches from the uniform grid: tight_layout measures every tick label of every
    # panel, about as long as drawing the 14-edge figure itself
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.6 / w, right=1 - 0.1 / w, bottom=0.75 / h, top=1 - 0.45 / h,
                        wspace=0.12, hspace=0.35)
    return _png(fig)


def landscape_plot(land: dict, title: str = "") -> bytes:
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    x, y, acc = land["x"], land["y"], land["acc"]
    flat = [v for row in acc for v in row]
    lo, hi = min(flat), max(flat)
    if hi - lo < 1e-3:  # a flat landscape: keep a readable colour scale
        lo, hi = lo - 0.005, hi + 0.005
    step = (x[1] - x[0]) / 2 if len(x) > 1 else 0.5
    im = ax.imshow(acc, origin="lower", cmap="viridis", vmin=lo, vmax=hi, aspect="auto",
                   extent=(x[0] - step, x[-1] + step, y[0] - step, y[-1] + step))
    cb = fig.colorbar(im, ax=ax, label="validation accuracy")
    cb.formatter.set_useOffset(False)
    cb.update_ticks()
    if len(x) <= 9:
        for iy, yv in enumerate(y):
            for ix, xv in enumerate(x):
                v = acc[iy][ix]
                ax.text(xv, yv, f"{v:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if v < (lo + hi) / 2 else "black")
    # alpha itself: a ring around the centre cell, so its value stays readable
    ax.plot([0], [0], "o", ms=30 if len(x) <= 9 else 14, mfc="none", mec="red", mew=2, label="alpha")
    ax.set_xlabel("gradient direction of L_val")
    ax.set_ylabel("random orthogonal direction")
    ax.set_title(title or "validation accuracy around alpha")
    return _png(fig)


def alpha_distance_plot(ad: dict, title: str = "") -> bytes:
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.8))
    d, tl, ep = ad["distance"], ad["train_loss"], ad["epochs"]
    ax.plot(d, tl, "o-")
    for di, ti, e in zip(d, tl, ep):
        if e in (ep[0], ep[-1]) or len(ep) <= 12:
            ax.annotate(str(e), (di, ti), fontsize=7, xytext=(3, 3), textcoords="offset points")
    basis = "alpha" if ad.get("basis") == "alpha" else "op weights"
    ax.set_xlabel(f"||{basis}_t - {basis}_final||")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.set_title(title or "training loss vs distance to the final alpha (labels: epoch)")
    return _png(fig)


def spectrum_plot(eigs: Sequence[float], title: str = "") -> bytes:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.4))
    a1.bar(range(1, len(eigs) + 1), eigs, color=["C3" if v < 0 else "C0" for v in eigs])
    a1.set_xlabel("l-th eigenvalue (by magnitude)")
    a1.set_ylabel("eigenvalue")
    a1.grid(alpha=0.3)
    a2.hist(eigs, bins=min(30, max(5, len(eigs) // 2)), color="C0")
    a2.set_xlabel("eigenvalue")
    a2.set_ylabel("count")
    fig.suptitle(title or "top eigenvalues of the validation Hessian w.r.t. alpha")
    return _png(fig)


def grad_corr_plot(gc: dict, title: str = "") -> bytes:
    fig, axes = plt.subplots(1, len(gc["bi"]), figsize=(4 * len(gc["bi"]), 3.2), squeeze=False)
    for ax, ci in zip(axes[0], gc["bi"]):
        bi, single = gc["bi"][ci], gc["single"][ci]
        xs = list(range(len(bi)))
        ax.bar([x - 0.2 for x in xs], bi, 0.4, label="bi-level (val x train)")
        ax.bar([x + 0.2 for x in xs], single, 0.4, label="single-level (train x train)")
        ax.set_title(f"cell {ci}", fontsize=9)
        ax.set_xlabel("edge")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        small = [abs(v) for v in bi + single if _finite(v) and v != 0]
        # the linear part ends at a whole decade, one decade wide: 0 and the first log tick stay apart
        ax.set_yscale("symlog", linthresh=10.0 ** math.floor(math.log10(min(small))) if small else 1e-6,
                      linscale=1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("eq. 8 (mean over pairs)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(title or "gradient correlation (single-darts eq. 8)")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    return _png(fig)


def overlay(runs: Sequence[tuple[str, Sequence[tuple[float, float]]]], ylabel: str, title: str = "",
            points: Sequence[tuple[str, tuple[float, float]]] = ()) -> bytes:
    """Several runs' series on one axis (comparison page); ``points``: one marker per run (the
    value ``analyze`` computed at the end of the search), in the run's colour."""
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.8))
    colors = {name: f"C{i % 10}" for i, (name, _) in enumerate(runs)}
    for name, pts in runs:
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=name, color=colors[name])
    for name, (x, y) in points:
        ax.plot([x], [y], "D", ms=8, color=colors.get(name, "k"), label=f"{name}: end (analyze)")
    xs = [p[0] for _, pts in runs for p in pts] + [x for _, (x, _y) in points]
    if xs:  # epoch 1 to the last epoch any run reached
        ax.set_xlim(0.5, max(xs) + 0.5)
    _epoch_axis(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any(p for _, p in runs) or points:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _png(fig)
