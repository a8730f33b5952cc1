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

from .analyze import figures, lambda_info, load_analysis
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
.row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.row figure{margin:0;flex:1 1 380px}
figcaption{font-size:12px;color:#555}
.note{font-size:12px;color:#666}
pre{background:#f6f8fa;padding:8px;font-size:12px;white-space:pre-wrap;word-break:break-all}
.num{text-align:right;font-variant-numeric:tabular-nums}
"""

SECTIONS = [("summary", "Summary"), ("cells", "Cells"), ("curves", "Training curves"),
            ("lambda", "Curvature (lambda_max)"), ("op-weights", "Op weights"), ("landscape", "Landscape"),
            ("alpha-distance", "Alpha distance"), ("diagnostics", "Diagnostics"), ("genotype", "Genotype")]


def _img(png: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">')


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "&ndash;"
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


def _summary_rows(run: Run, a: dict | None) -> list[tuple[str, object]]:
    cfg = run.config
    last = run.metrics[-1] if run.metrics else {}
    rows: list[tuple[str, object]] = [
        ("space", cfg.get("space")), ("dataset", cfg.get("data", {}).get("dataset")),
        ("methods", _methods(cfg)), ("update rule", cfg.get("search", {}).get("update")),
        ("seed", cfg.get("seed")), ("network", f"{cfg.get('network', {}).get('layers')} cells x "
                                               f"{cfg.get('network', {}).get('channels')} channels"),
        ("L2 factor (optim.weight_decay)", cfg.get("optim", {}).get("weight_decay")),
        ("DropPath max", cfg.get("regularization", {}).get("drop_path_max")),
        ("cutout", cfg.get("data", {}).get("cutout")),
        ("epochs", f"{len(run.metrics)} / {cfg.get('optim', {}).get('epochs')}"), ("status", run.status),
        ("final train loss / acc", f"{_fmt(last.get('train_loss'))} / {_fmt(last.get('train_acc'))}"),
        ("final val loss / acc", f"{_fmt(last.get('val_loss'))} / {_fmt(last.get('val_acc'))}"),
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


def run_report_html(run: Run, analysis: dict | None = None) -> str:
    """The report of one run as an HTML string."""
    a = analysis
    figs = figures(run, a)
    parts = []
    cfg = run.config
    parts.append(f'<section id="summary"><h2>Summary</h2>{_table(_summary_rows(run, a))}'
                 + ("" if a else "<p class='note'>No analysis.json: run <code>stablenas analyze "
                    f"{html.escape(str(run.path))}</code> for curvature, discretisation drop, landscape and "
                    "gradient correlation.</p>") + "</section>")
    cells_html = "".join(f"<figure>{_img(figs[k], k)}<figcaption>{html.escape(k.split('_', 1)[1])} cell"
                         f"</figcaption></figure>" for k in figs if k.startswith("cell_"))
    stats = (a or {}).get("cells")
    stats_html = ""
    if stats:
        rows = [(f"{ct}: parameter-free share / width / depth",
                 f"{_fmt(v.get('param_free_share'), 3)} / {_fmt(v.get('width_c'), 3)}c / {v.get('depth')}")
                for ct, v in stats.items() if ct != "all"]
        rows.append(("both cells: parameter-free share", stats.get("all", {}).get("param_free_share")))
        stats_html = _table(rows) + ("<p class='note'>Width and depth as defined in SDARTS App. 7.4 "
                                     "(Shu et al. 2020); parameter-free: skip, pooling, none, noise.</p>")
    parts.append(f'<section id="cells"><h2>Cells (returned genotype)</h2><div class="row">'
                 f'{cells_html or "<p>no genotype yet</p>"}</div>{stats_html}</section>')
    if "curves" in figs:
        parts.append(f'<section id="curves"><h2>Training curves</h2>{_img(figs["curves"], "curves")}'
                     "<p class='note'>Train: the weight half of the split (running average over the epoch's "
                     "steps); validation: the alpha half (supernet in eval mode).</p></section>")
    lam = (a or {}).get("lambda") or lambda_info(run.metrics)
    stop = lam.get("early_stop")
    sim = lam.get("simulated_stop")
    lam_rows = []
    if stop:
        lam_rows.append(("DARTS-ES stopped: decided at epoch / returned epoch",
                         f"{stop['decided_at']} / {stop['stop_epoch']} (ratio {_fmt(stop.get('ratio'), 3)})"))
    if sim:
        lam_rows.append(("ES rule (simulated on this series): decided at / returns epoch",
                         f"{sim['decided_at']} / {sim['stop_epoch']} (ratio {_fmt(sim.get('ratio'), 3)})"))
    elif lam.get("lambda_max"):
        lam_rows.append(("ES rule (simulated on this series)", "never fires"))
    for ev in lam.get("ada_events") or []:
        lam_rows.append((f"DARTS-ADA rollback (criterion at epoch {ev['decided_at']})",
                         f"back to epoch {ev['stop_epoch']}, R {_fmt(ev['R_before'])} -> "
                         f"{_fmt(ev['R_after'])}"))
    w, k, thr = lam.get("window", 5), lam.get("k", 5), lam.get("threshold", 0.75)
    parts.append(f'<section id="lambda"><h2>Curvature: dominant eigenvalue of the validation Hessian '
                 f'w.r.t. alpha</h2>{_img(figs["lambda"], "lambda_max")}'
                 f'{_table(lam_rows) if lam_rows else ""}'
                 f"<p class='note'>Local average over {w} epochs around each epoch; DARTS-ES stops when "
                 f"lambda_bar(i-{k}) / lambda_bar(i) &lt; {thr} and returns the architecture of epoch i-k "
                 "(robust-darts Sec. 4.3).</p></section>")
    ow = "".join(_img(figs[k], k) for k in figs if k.startswith("op_weights_"))
    parts.append(f'<section id="op-weights"><h2>Op weights per edge over the search</h2>{ow or "<p>none</p>"}'
                 "</section>")
    if "landscape" in figs:
        land = a["landscape"]
        parts.append(f'<section id="landscape"><h2>Validation accuracy landscape around alpha</h2>'
                     f'<div class="row"><figure>{_img(figs["landscape"], "landscape")}<figcaption>x: unit '
                     f"gradient direction of L_val, y: random orthogonal unit direction; radius "
                     f"{_fmt(land['radius'])}, grid "
                     f"{land['grid']}x{land['grid']}, {land['batches']} batches; ||alpha|| = "
                     f"{_fmt(land['alpha_norm'], 3)} (SDARTS Fig. 1)</figcaption></figure></div></section>")
    else:
        parts.append('<section id="landscape"><h2>Validation accuracy landscape around alpha</h2>'
                     "<p class='note'>not computed (run <code>stablenas analyze</code>)</p></section>")
    if "alpha_distance" in figs:
        basis = ((a or {}).get("alpha_distance") or {}).get("basis") or "see axis"
        parts.append(f'<section id="alpha-distance"><h2>Training loss vs distance to the final alpha</h2>'
                     f'{_img(figs["alpha_distance"], "alpha distance")}<p class="note">MS-DARTS Fig. 4; '
                     f"distance computed on: {html.escape(str(basis))} (raw alpha when the records carry it, "
                     "i.e. with method <code>hessian</code>/<code>darts-es</code>/<code>darts-ada</code>)."
                     "</p></section>")
    diag = []
    if a:
        d = a.get("discretization") or {}
        diag.append("<h3>Discretisation (robust-darts Sec. 4.2)</h3>" + _table([
            ("supernet accuracy at alpha*", d.get("acc_supernet")),
            ("accuracy at the discretised alpha (same weights)", d.get("acc_discrete")),
            ("accuracy drop", d.get("acc_drop")), ("loss increase", d.get("loss_increase"))]))
        c = a.get("curvature") or {}
        crow = [("lambda_max (Lanczos)", c.get("lambda_max")), ("HVPs", c.get("hvps")),
                ("seconds", c.get("seconds")), ("batches / BN mode", f"{c.get('batches')} / {c.get('bn')}")]
        if "lambda_max_exact" in c:
            crow += [("lambda_max (exact Hessian)", c.get("lambda_max_exact")),
                     ("share of negative eigenvalues", c.get("negative_share"))]
        diag.append("<h3>Curvature at the end of the search</h3>" + _table(crow))
        if "spectrum" in figs:
            diag.append(_img(figs["spectrum"], "spectrum"))
        gc = a.get("gradient_correlation")
        if gc:
            rows = [(f"cell {ci}: bi-level / single-level / bi-level cosine",
                     f"{_fmt(v['bi'], 3)} / {_fmt(v['single'], 3)} / {_fmt(v['bi_cosine'], 3)}")
                    for ci, v in gc["summary"].items()]
            diag.append("<h3>Gradient correlation (Single-DARTS eq. 8, mean over edges)</h3>" + _table(rows))
            if "grad_corr" in figs:
                diag.append(_img(figs["grad_corr"], "gradient correlation"))
    parts.append('<section id="diagnostics"><h2>Diagnostics</h2>'
                 + ("".join(diag) or "<p class='note'>run <code>stablenas analyze</code></p>") + "</section>")
    parts.append(f'<section id="genotype"><h2>Genotype</h2><pre>{html.escape(_genotype_text(run))}</pre>'
                 "</section>")
    title = f"stablenas report: {run.path.name}"
    sub = html.escape(f"{run.path}  |  space {cfg.get('space')}  |  methods {_methods(cfg)}  |  {run.status}")
    return _page(title, sub, SECTIONS, "".join(parts))


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """``RUN_DIR/report.html`` (or ``out``)."""
    run = load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    out.write_text(run_report_html(run, load_analysis(run_dir)))
    return out


def comparison_html(run_dirs: Sequence[str | Path]) -> str:
    from . import cells, plots

    runs = [load_run(d) for d in run_dirs]
    analyses = [load_analysis(d) for d in run_dirs]
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [str(r.path) for r in runs]
    head = ["run", "space", "methods", "L2", "DropPath", "epochs", "final val acc", "last lambda_max",
            "ES stop (actual / simulated)", "acc drop", "param-free share", "normal width / depth"]
    rows = []
    for name, run, a in zip(names, runs, analyses):
        cfg = run.config
        last = run.metrics[-1] if run.metrics else {}
        lam = lambda_info(run.metrics)
        lams = lam["lambda_max"]
        es = lam.get("early_stop")
        sim = lam.get("simulated_stop")
        cs = (a or {}).get("cells") or {}
        normal = cs.get("normal") or cs.get("cell") or {}
        vals = [name, cfg.get("space"), _methods(cfg), cfg.get("optim", {}).get("weight_decay"),
                cfg.get("regularization", {}).get("drop_path_max"), len(run.metrics), last.get("val_acc"),
                lams[-1] if lams else None,
                f"{es['stop_epoch'] if es else '-'} / {sim['stop_epoch'] if sim else '-'}",
                ((a or {}).get("discretization") or {}).get("acc_drop"),
                (cs.get("all") or {}).get("param_free_share"),
                f"{_fmt(normal.get('width_c'), 3)}c / {normal.get('depth', '-')}" if normal else None]
        rows.append("<tr>" + "".join(f"<td class='num'>{_fmt(v)}</td>" for v in vals) + "</tr>")
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows)
             + "</table>")
    ov = []
    for key, label in (("val_acc", "validation accuracy"), ("train_loss", "training loss")):
        series = [(n, [(r["epoch"], r[key]) for r in run.metrics if key in r]) for n, run in zip(names, runs)]
        ov.append(_img(plots.overlay(series, label), label))
    lam_series = [(n, [(r["epoch"], r["lambda_max"]) for r in run.metrics
                       if isinstance(r.get("lambda_max"), (int, float))]) for n, run in zip(names, runs)]
    ov.append(_img(plots.overlay(lam_series, "lambda_max", "dominant eigenvalue per epoch"), "lambda_max"))
    cell_parts = []
    for n, run in zip(names, runs):
        if run.genotype is None:
            continue
        imgs = "".join(f"<figure>{_img(cells.draw_cell(run.genotype, ct)[0], ct)}<figcaption>{ct}"
                       f"</figcaption></figure>" for ct in cells.cell_types(run.genotype))
        cell_parts.append(f"<h3>{html.escape(n)}</h3><div class='row'>{imgs}</div>")
    body = (f'<section id="comparison"><h2>Runs</h2>{table}<p class="note">ES stop: the epoch whose '
            "architecture DARTS-ES returned, and where the rule would stop on the recorded lambda_max series."
            "</p></section>"
            f'<section id="overlays"><h2>Curves</h2>{"".join(ov)}</section>'
            f'<section id="cells"><h2>Cells</h2>{"".join(cell_parts) or "<p>no genotypes</p>"}</section>'
            f'<section id="configs"><h2>Configs</h2>'
            + "".join(f"<h3>{html.escape(n)}</h3><pre>{html.escape(json.dumps(r.config, indent=1))}</pre>"
                      for n, r in zip(names, runs)) + "</section>")
    nav = [("comparison", "Runs"), ("overlays", "Curves"), ("cells", "Cells"), ("configs", "Configs")]
    return _page(f"stablenas comparison: {len(runs)} runs", html.escape(", ".join(str(r.path) for r in runs)),
                 nav, body)


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    out = Path(out)
    out.write_text(comparison_html(run_dirs))
    return out
