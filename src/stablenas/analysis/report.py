"""``stablenas report RUN_DIR [RUN_DIR ...]``: self-contained HTML reports.

One file per run (``RUN_DIR/report.html``) and, for several runs, a comparison page. Every image
is a base64 ``data:`` URI and the style sheet is inline, so a report is a single file that opens
anywhere (mail it, attach it to an issue) with no network access. The numbers of ``stablenas
analyze`` appear when ``analysis.json`` exists; the rest comes from ``metrics.jsonl``.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from .analyze import (
    applies_early_stop,
    end_curvature,
    figures,
    lambda_info,
    load_analysis,
    method_metrics,
    run_skeleton,
)
from .run import Run, load_run

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#243447;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#c9d3de;font-size:13px}
nav{background:#fff;border-bottom:1px solid #dde;padding:8px 28px;font-size:13px;position:sticky;top:0}
nav a{margin-right:14px;color:#2b6cb0;text-decoration:none}
main{padding:8px 28px 40px;max-width:1180px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:6px;margin:16px 0;padding:12px 18px}
h2{font-size:17px;margin:4px 0 10px;color:#243447}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #e2e5ea;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f0f3f7}
img{max-width:100%;height:auto;display:block;margin:6px 0}
img.plot{width:100%}
.row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.row figure{margin:0;flex:1 1 380px}
figcaption{font-size:12px;color:#555}
.note{font-size:12px;color:#666}
pre{background:#f6f8fa;padding:8px;font-size:12px;white-space:pre-wrap;word-break:normal;overflow-wrap:normal;
overflow-x:auto}
.cells figure{margin:0 0 10px} .cells img{max-width:none}
.num{text-align:right;font-variant-numeric:tabular-nums}
"""

SECTIONS = [("summary", "Summary"), ("cells", "Cells"), ("curves", "Training curves"),
            ("lambda", "Curvature (lambda_max)"), ("method-metrics", "Method metrics"), ("op-weights", "Op weights"),
            ("landscape", "Landscape"), ("alpha-distance", "Alpha distance"), ("diagnostics", "Diagnostics"),
            ("genotype", "Genotype")]


def _img(png: bytes, alt: str, width: int | None = None, cls: str | None = None) -> str:
    """``cls="plot"``: a plot drawn at the page's width, scaled with it (CSS ``img.plot``)."""
    size = f' width="{width}"' if width else ""
    size += f' class="{cls}"' if cls else ""
    return (f'<img alt="{html.escape(alt)}"{size} src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">')


CELL_WIDTH = 1080  # px the report's main column has for a cell drawing


def _png_width(png: bytes) -> int:
    """Pixel width from the PNG header (IHDR: bytes 16-20)."""
    return int.from_bytes(png[16:20], "big")


def _cells_html(pngs: Sequence[tuple[str, bytes]]) -> str:
    """Every cell of a genotype one below the other at ONE scale (the widest fits the column), so
    the normal and the reduction cell read alike; drawings are made at one resolution."""
    if not pngs:
        return ""
    scale = min(1.0, CELL_WIDTH / max(_png_width(p) for _, p in pngs))
    return "".join(f"<figure>{_img(p, ct, round(_png_width(p) * scale))}<figcaption>{html.escape(ct)} cell"
                   f"</figcaption></figure>" for ct, p in pngs)


DASH = "\u2013"  # a missing value: the character itself, so cells built from several values escape once


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return DASH
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(rows: Sequence[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td class='num'>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: str) -> str:
    links = "".join(f'<a href="#{i}">{html.escape(t)}</a>' for i, t in nav)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><p>{subtitle}</p></header><nav>{links}</nav>"
            f"<main>{body}</main></body></html>\n")


def _methods(cfg: dict) -> str:
    return ", ".join(m.get("name", "?") for m in cfg.get("methods", [])) or "darts"


def cell_statistics(run: Run, a: dict | None) -> dict | None:
    """Parameter-free share, width and depth per cell: analyze's, else computed from the genotype."""
    if (a or {}).get("cells"):
        return a["cells"]
    if run.genotype is None:
        return None
    from .diagnostics import cell_stats

    return cell_stats(run.genotype)


def _summary_rows(run: Run, a: dict | None) -> list[tuple[str, object]]:
    cfg = run.config
    sk = run_skeleton(run)
    m = sk.metric
    last = run.metrics[-1] if run.metrics else {}

    def metric(key: str) -> str:
        v = last.get(key)
        return sk.format_metric(v) if isinstance(v, (int, float)) else DASH

    rows: list[tuple[str, object]] = [
        ("space", cfg.get("space")), ("dataset", cfg.get("data", {}).get("dataset")),
        ("methods", _methods(cfg)), ("update rule", cfg.get("search", {}).get("update")),
        ("seed", cfg.get("seed")), ("network", sk.describe_network(cfg)),
        ("L2 factor (optim.weight_decay)", cfg.get("optim", {}).get("weight_decay")),
        *sk.report_rows(cfg),
        ("epochs", f"{len(run.metrics)} / {cfg.get('optim', {}).get('epochs')}"), ("status", run.status),
        (f"final train loss / {sk.metric_label}", f"{_fmt(last.get('train_loss'))} / {metric(f'train_{m}')}"),
        (f"final val loss / {sk.metric_label}", f"{_fmt(last.get('val_loss'))} / {metric(f'val_{m}')}"),
    ]
    lam = [r["lambda_max"] for r in run.metrics if isinstance(r.get("lambda_max"), (int, float))]
    if lam:
        rows.append(("lambda_max (last epoch measured)", lam[-1]))
    if a:
        d = a.get("discretization") or {}
        c = a.get("curvature") or {}
        rows += [("lambda_max at the end (analysis)", c.get("lambda_max")),
                 ("accuracy drop after discretisation", d.get("acc_drop"))]
    return rows


def _genotype_text(run: Run) -> str:
    """One line per node (``op <- input``), then the JSON that ``stablenas train`` accepts."""
    g = run.genotype
    if g is None:
        return "none yet"
    return g.skeleton.genotype_text(g)


def _cells_section(run: Run, figs: dict, a: dict | None) -> str:
    cells_html = _cells_html([(k.split("_", 1)[1], figs[k]) for k in figs if k.startswith("cell_")])
    stats = cell_statistics(run, a)
    stats_html = ""
    if stats:
        rows = [(f"{ct}: parameter-free share / width / depth",
                 f"{_fmt(v.get('param_free_share'), 3)} / {_fmt(v.get('width_c'), 3)}c / {v.get('depth')}")
                for ct, v in stats.items() if ct != "all"]
        if len(stats) > 2:
            rows.append(("all cells: parameter-free share", stats.get("all", {}).get("param_free_share")))
        stats_html = _table(rows) + ("<p class='note'>Width and depth as defined in SDARTS App. 7.4 "
                                     "(Shu et al. 2020); parameter-free: skip, pooling, none, noise.</p>")
    return (f'<section id="cells"><h2>Cells (returned genotype)</h2><div class="cells">'
            f'{cells_html or "<p>no genotype yet</p>"}</div>{stats_html}</section>')


def _lambda_section(run: Run, figs: dict, a: dict | None) -> str:
    """The curvature panel; the DARTS-ES rule's marks and caption only on runs that apply it."""
    lam = (a or {}).get("lambda") or lambda_info(run.metrics)
    es = applies_early_stop(run.config)
    stop, sim = lam.get("early_stop"), lam.get("simulated_stop")
    rows = []
    if stop:
        rows.append(("DARTS-ES stopped: decided at epoch / returned epoch",
                     f"{stop['decided_at']} / {stop['stop_epoch']} (ratio {_fmt(stop.get('ratio'), 3)})"))
    if es and sim:
        rows.append(("ES rule (simulated on this series): decided at / returns epoch",
                     f"{sim['decided_at']} / {sim['stop_epoch']} (ratio {_fmt(sim.get('ratio'), 3)})"))
    elif es and lam.get("lambda_max"):
        rows.append(("ES rule (simulated on this series)", "never fires"))
    for ev in lam.get("ada_events") or []:
        rows.append((f"DARTS-ADA rollback (criterion at epoch {ev['decided_at']})",
                     f"back to epoch {ev['stop_epoch']}, R {_fmt(ev['R_before'])} -> {_fmt(ev['R_after'])}"))
    w, k, thr = lam.get("window", 5), lam.get("k", 5), lam.get("threshold", 0.75)
    note = f"Local average over {w} epochs around each epoch."
    if es:
        note += (f" DARTS-ES stops when lambda_bar(i-{k}) / lambda_bar(i) &lt; {thr} and returns the "
                 "architecture of epoch i-k (robust-darts Sec. 4.3).")
    return (f'<section id="lambda"><h2>Curvature: dominant eigenvalue of the validation Hessian w.r.t. alpha</h2>'
            f'{_img(figs["lambda"], "lambda_max", cls="plot")}{_table(rows) if rows else ""}'
            f"<p class='note'>{note}</p></section>")


def _method_section(run: Run, figs: dict) -> str:
    series = method_metrics(run.metrics, run_skeleton(run))
    rows = [(f"{k} (last epoch recorded)", pts[-1][1]) for k, pts in series.items()]
    return (f'<section id="method-metrics"><h2>Method metrics</h2>'
            f'{_img(figs["method_metrics"], "method metrics", cls="plot")}{_table(rows)}'
            "<p class='note'>Numbers the run's methods (plug-ins included) add to each epoch record in "
            "metrics.jsonl.</p></section>")


def _diagnostics(figs: dict, a: dict) -> str:
    d = a.get("discretization") or {}
    out = ["<h3>Discretisation (robust-darts Sec. 4.2)</h3>" + _table([
        ("supernet accuracy at alpha*", d.get("acc_supernet")),
        ("accuracy at the discretised alpha (same weights)", d.get("acc_discrete")),
        ("accuracy drop", d.get("acc_drop")), ("loss increase", d.get("loss_increase"))])]
    c = a.get("curvature") or {}
    crow = [("lambda_max (Lanczos)", c.get("lambda_max")), ("HVPs", c.get("hvps")),
            ("seconds", c.get("seconds")), ("batches / BN mode", f"{c.get('batches')} / {c.get('bn')}")]
    if "lambda_max_exact" in c:
        crow += [("lambda_max (exact Hessian)", c.get("lambda_max_exact")),
                 ("share of negative eigenvalues", c.get("negative_share"))]
    out.append("<h3>Curvature at the end of the search</h3>" + _table(crow))
    if "spectrum" in figs:
        out.append(_img(figs["spectrum"], "spectrum", cls="plot"))
    gc = a.get("gradient_correlation")
    if gc:
        rows = [(f"cell {ci}: bi-level / single-level / bi-level cosine",
                 f"{_fmt(v['bi'], 3)} / {_fmt(v['single'], 3)} / {_fmt(v['bi_cosine'], 3)}")
                for ci, v in gc["summary"].items()]
        out.append("<h3>Gradient correlation (Single-DARTS eq. 8, mean over edges)</h3>" + _table(rows))
        if "grad_corr" in figs:
            out.append(_img(figs["grad_corr"], "gradient correlation", cls="plot"))
    return '<section id="diagnostics"><h2>Diagnostics</h2>' + "".join(out) + "</section>"


def _optional_sections(run: Run, figs: dict, a: dict | None) -> dict[str, str]:
    parts = {}
    if "curves" in figs:
        parts["curves"] = (f'<section id="curves"><h2>Training curves</h2>{_img(figs["curves"], "curves", cls="plot")}'
                           "<p class='note'>Train: the weight half of the split (running average over the epoch's "
                           "steps); validation: the alpha half (supernet in eval mode).</p></section>")
    if "lambda" in figs:
        parts["lambda"] = _lambda_section(run, figs, a)
    if "method_metrics" in figs:
        parts["method-metrics"] = _method_section(run, figs)
    ow = "".join(_img(figs[k], k, cls="plot") for k in figs if k.startswith("op_weights_"))
    if ow:
        parts["op-weights"] = f'<section id="op-weights"><h2>Op weights per edge over the search</h2>{ow}</section>'
    if "landscape" in figs:
        land = a["landscape"]
        parts["landscape"] = (
            f'<section id="landscape"><h2>Validation accuracy landscape around alpha</h2>'
            f'<div class="row"><figure>{_img(figs["landscape"], "landscape")}<figcaption>x: unit '
            f"gradient direction of L_val, y: random orthogonal unit direction; radius {_fmt(land['radius'])}, grid "
            f"{land['grid']}x{land['grid']}, {land['batches']} batches; ||alpha|| = "
            f"{_fmt(land['alpha_norm'], 3)} (SDARTS Fig. 1)</figcaption></figure></div></section>")
    if "alpha_distance" in figs:
        basis = ((a or {}).get("alpha_distance") or {}).get("basis") or "see axis"
        parts["alpha-distance"] = (
            f'<section id="alpha-distance"><h2>Training loss vs distance to the final alpha</h2>'
            f'{_img(figs["alpha_distance"], "alpha distance", cls="plot")}<p class="note">MS-DARTS Fig. 4; '
            f"distance computed on: {html.escape(str(basis))} (raw alpha when the records carry it, "
            "i.e. with method <code>hessian</code>/<code>darts-es</code>/<code>darts-ada</code>).</p></section>")
    if a:
        parts["diagnostics"] = _diagnostics(figs, a)
    return parts


def run_report_html(run: Run, analysis: dict | None = None) -> str:
    """The report of one run as an HTML string: a section per panel that has something to show."""
    a = analysis
    figs = figures(run, a)
    cfg = run.config
    parts = {"summary": f'<section id="summary"><h2>Summary</h2>{_table(_summary_rows(run, a))}'
             + ("" if a else "<p class='note'>No analysis.json: run <code>stablenas analyze "
                f"{html.escape(str(run.path))}</code> for curvature at the end of the search, discretisation "
                "drop, landscape and gradient correlation.</p>") + "</section>",
             "cells": _cells_section(run, figs, a), **_optional_sections(run, figs, a),
             "genotype": f'<section id="genotype"><h2>Genotype</h2><pre>{html.escape(_genotype_text(run))}</pre>'
                         "</section>"}
    nav = [(i, t) for i, t in SECTIONS if i in parts]
    title = f"stablenas report: {run.path.name}"
    sub = html.escape(f"{run.path}  |  space {cfg.get('space')}  |  methods {_methods(cfg)}  |  {run.status}")
    return _page(title, sub, nav, "".join(parts[i] for i, _ in nav))


TRAIN_SECTIONS = [("summary", "Summary"), ("cells", "Cells"), ("curves", "Training curves"),
                  ("genotype", "Genotype")]


def train_report_html(run: Run) -> str:
    """The report of a training run (``stablenas train``): its result, the cells it trained, the
    curves per epoch and the genotype."""
    from . import cells, plots

    cfg, res = run.config, run.result or {}
    rows: list[tuple[str, object]] = [
        ("dataset", cfg.get("dataset")), ("network", f"{res.get('network') or cfg.get('network')}, "
                                                     f"{cfg.get('layers')} cells x {cfg.get('channels')} channels"),
        ("batch / lr / weight decay", f"{cfg.get('batch_size')} / {cfg.get('lr')} / {cfg.get('weight_decay')}"),
        ("auxiliary / drop path / cutout", f"{cfg.get('auxiliary')} / {cfg.get('drop_path')} / {cfg.get('cutout')}"),
        ("seed", cfg.get("seed")), ("epochs", f"{len(run.metrics)} / {cfg.get('epochs')}"), ("status", run.status),
        ("test accuracy", res.get("test_acc")), ("validation accuracy (holdout)", res.get("valid_acc")),
        ("parameters (auxiliary head excluded)", res.get("params")), ("multiply-adds", res.get("macs")),
        ("seconds", res.get("seconds")),
    ]
    parts = [f'<section id="summary"><h2>Summary</h2>{_table(rows)}'
             + ("" if res else "<p class='note'>no result.json yet: the training has not finished</p>")
             + "</section>"]
    g = run.genotype
    pngs = [(ct, cells.draw_cell(g, ct)[0]) for ct in cells.cell_types(g)] if g is not None else []
    parts.append(f'<section id="cells"><h2>Cells (trained genotype)</h2><div class="cells">'
                 f'{_cells_html(pngs) or "<p>no genotype</p>"}</div></section>')
    curves = (_img(plots.train_curves(run.metrics, run.path.name), "curves") if run.metrics
              else "<p>no epoch finished yet</p>")
    parts.append(f'<section id="curves"><h2>Training curves</h2>{curves}</section>')
    parts.append(f'<section id="genotype"><h2>Genotype</h2><pre>{html.escape(_genotype_text(run))}</pre>'
                 "</section>")
    sub = html.escape(f"{run.path}  |  training run  |  dataset {cfg.get('dataset')}  |  {run.status}")
    return _page(f"stablenas report: {run.path.name}", sub, TRAIN_SECTIONS, "".join(parts))


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """``RUN_DIR/report.html`` (or ``out``), for a search or a training run."""
    run = load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    out.write_text(train_report_html(run) if run.kind == "train" else run_report_html(run, load_analysis(run_dir)))
    return out


def _comparison_table(names: list[str], runs: list, analyses: list) -> str:
    """One row per run: the numbers that tell whether a search collapsed."""
    head = ["run", "space", "methods", "L2", "epochs", "final val metric", "lambda_max (last tracked / analyze)",
            "ES stop (actual / simulated)", "acc drop", "param-free share", "first cell width / depth"]
    rows = []
    for name, run, a in zip(names, runs, analyses):
        cfg, sk = run.config, run_skeleton(run)
        v = (run.metrics[-1] if run.metrics else {}).get(f"val_{sk.metric}")
        lam = lambda_info(run.metrics)
        lams = lam["lambda_max"]
        es = lam.get("early_stop")
        sim = lam.get("simulated_stop") if applies_early_stop(cfg) else None
        cs = cell_statistics(run, a) or {}
        first = next((st for ct, st in cs.items() if ct != "all"), {})
        vals = [name, cfg.get("space"), _methods(cfg), cfg.get("optim", {}).get("weight_decay"), len(run.metrics),
                f"{sk.metric} {sk.format_metric(v)}" if isinstance(v, (int, float)) else None,
                f"{_fmt(lams[-1]) if lams else DASH} / {_fmt((end_curvature(a) or {}).get('lambda_max'))}",
                f"{es['stop_epoch'] if es else DASH} / {sim['stop_epoch'] if sim else DASH}",
                ((a or {}).get("discretization") or {}).get("acc_drop"),
                (cs.get("all") or {}).get("param_free_share"),
                f"{_fmt(first.get('width_c'), 3)}c / {first.get('depth', DASH)}" if first else None]
        rows.append("<tr>" + "".join(f"<td class='num'>{_fmt(v)}</td>" for v in vals) + "</tr>")
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows)
             + "</table>")
    return table


def _comparison_curves(names: list[str], runs: list, analyses: list) -> list[str]:
    """Validation metric, training loss and lambda_max of every run on shared axes."""
    from . import plots

    ov = []
    sk0 = run_skeleton(runs[0])
    for key, label in ((f"val_{sk0.metric}", f"validation {sk0.metric_label}"), ("train_loss", "training loss")):
        series = [(n, [(r["epoch"], r[key]) for r in run.metrics if key in r]) for n, run in zip(names, runs)]
        ov.append(_img(plots.overlay(series, label), label, cls="plot"))
    lam_series = [(n, [(r["epoch"], r["lambda_max"]) for r in run.metrics
                       if isinstance(r.get("lambda_max"), (int, float))]) for n, run in zip(names, runs)]
    ends = [(n, end_curvature(a)) for n, a in zip(names, analyses)]
    ends = [(n, (e["epoch"], e["lambda_max"])) for n, e in ends if e]
    if any(p for _, p in lam_series) or ends:
        ov.append(_img(plots.overlay(lam_series, "lambda_max", "dominant eigenvalue per epoch", points=ends),
                       "lambda_max", cls="plot"))
    else:
        ov.append("<p class='note'>no lambda_max: no run tracked it (method <code>hessian</code>) or ran "
                  "<code>stablenas analyze</code></p>")
    return ov


def comparison_html(run_dirs: Sequence[str | Path]) -> str:
    from . import cells

    runs = [load_run(d) for d in run_dirs]
    trained = [str(r.path) for r in runs if r.kind != "search"]
    if trained:
        from ..errors import RunDirError

        raise RunDirError(f"a comparison page compares search runs; {trained[0]} is a training run "
                          "(its own report: stablenas report DIR)")
    analyses = [load_analysis(d) for d in run_dirs]
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [str(r.path) for r in runs]
    table = _comparison_table(names, runs, analyses)
    ov = _comparison_curves(names, runs, analyses)
    cell_parts = []
    for n, run in zip(names, runs):
        if run.genotype is None:
            continue
        imgs = _cells_html([(ct, cells.draw_cell(run.genotype, ct)[0]) for ct in cells.cell_types(run.genotype)])
        cell_parts.append(f"<h3>{html.escape(n)}</h3><div class='cells'>{imgs}</div>")
    body = (f'<section id="comparison"><h2>Runs</h2>{table}<p class="note">ES stop: the epoch whose '
            "architecture DARTS-ES returned, and where its rule stops on the recorded lambda_max series (runs that "
            "apply DARTS-ES). Param-free share, width and depth: from each run's genotype.</p></section>"
            f'<section id="overlays"><h2>Curves</h2>{"".join(ov)}</section>'
            f'<section id="cells"><h2>Cells</h2>{"".join(cell_parts) or "<p>no genotypes</p>"}</section>'
            f'<section id="configs"><h2>Config keys that differ</h2>{_config_diff(names, runs)}</section>')
    nav = [("comparison", "Runs"), ("overlays", "Curves"), ("cells", "Cells"), ("configs", "Config diff")]
    page = _page(f"stablenas comparison: {len(runs)} runs", html.escape(", ".join(str(r.path) for r in runs)),
                 nav, body)
    return page.replace("<head>", f"<head>{_runs_meta(run_dirs)}", 1)


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}`` (lists kept whole, as --set writes them)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _config_diff(names: Sequence[str], runs: Sequence[Run]) -> str:
    """Only the config keys whose values differ between the runs (dotted, as ``--set`` spells them)."""
    flats = [_flat(r.config) for r in runs]
    keys = sorted({k for f in flats for k in f})
    missing = object()
    diff = [k for k in keys if len({json.dumps(f.get(k, missing) if k in f else "(absent)", sort_keys=True,
                                               default=str) for f in flats}) > 1]
    if not diff:
        return f"<p>The {len(runs)} configs are identical ({len(keys)} keys).</p>"

    def cell(f: dict, k: str) -> str:
        if k not in f:
            return "<td class='note'>(absent)</td>"
        return f"<td><code>{html.escape(json.dumps(f[k], default=str))}</code></td>"

    head = "<tr><th>key</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    body = "".join(f"<tr><th><code>{html.escape(k)}</code></th>" + "".join(cell(f, k) for f in flats) + "</tr>"
                   for k in diff)
    return (f"<table>{head}{body}</table><p class='note'>{len(diff)} of {len(keys)} keys differ; the others "
            "are equal in every run (each run's full config is its config.yaml).</p>")


RUNS_META = "stablenas-comparison-of"


def _runs_meta(run_dirs: Sequence[str | Path]) -> str:
    return f'<meta name="{RUNS_META}" content="{html.escape(_runs_key(run_dirs))}">'


def _runs_key(run_dirs: Sequence[str | Path]) -> str:
    return "|".join(str(Path(d).resolve()) for d in run_dirs)


def comparison_path(run_dirs: Sequence[str | Path]) -> Path:
    """Default place of the comparison page: inside the first run, named after the runs
    (``runs/es/comparison-es-vs-l2.html``), so comparing other runs never lands on the same file."""
    import hashlib
    import re

    names = [re.sub(r"[^A-Za-z0-9._-]+", "_", Path(d).resolve().name) for d in run_dirs]
    stem = "-vs-".join(names)
    if len(stem) > 80:
        stem = f"{names[0]}-vs-{len(names) - 1}-runs-{hashlib.sha1(_runs_key(run_dirs).encode()).hexdigest()[:8]}"
    return Path(run_dirs[0]) / f"comparison-{stem}.html"


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the comparison page to ``out`` (default: :func:`comparison_path`). An existing file is
    replaced only when it is this same comparison (same runs, same order) being brought up to
    date; any other file there is refused (RunDirError) and left byte-identical."""
    from ..utils import atomic_write_text

    out = check_comparison_target(run_dirs, out)
    page = comparison_html(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out


def check_comparison_target(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """The comparison page's path, or RunDirError when a file there holds something else."""
    from ..errors import RunDirError

    out = Path(out) if out is not None else comparison_path(run_dirs)
    if out.is_dir():
        raise RunDirError(f"{out} is a directory; --out names the comparison page (an .html file)")
    if out.exists():
        try:
            old = out.read_text(errors="replace")[:4000]
        except OSError as e:
            raise RunDirError(f"{out}: cannot read the existing file ({e.strerror})") from None
        if _runs_meta(run_dirs) not in old:
            what = "a comparison of other runs" if RUNS_META in old else "a file that is not this comparison"
            raise RunDirError(f"{out} exists and holds {what}; pass another --out or remove it")
    return out
