"""`analyze` + `report` on a tiny 2-epoch digits run: analysis.json, plots, self-contained HTML,
the comparison page, the matplotlib fallback for cell drawings and the CLI error path."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

import stablenas as sn
from stablenas.analysis import cells
from stablenas.analysis.analyze import analyze_run
from stablenas.analysis.report import SECTIONS, write_comparison, write_report
from stablenas.cli import app
from stablenas.search.loop import Search


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    over = ["data.dataset=digits", "data.subset=null", "data.batch_size=32", "network.channels=8",
            "network.layers=3", "network.stem_multiplier=2", "optim.epochs=2", "search.steps_per_epoch=2",
            "search.val_batches=1", "network.channels_last=false", "space=s5", "data.eval_batch_size=64",
            "methods=[{name: hessian, iters: 6}]"]
    Search(sn.load_config("darts", over), out, progress=False, log=lambda m: None).run()
    analyze_run(out, batches=1, grid=3, spectrum="yes", top_k=30)
    return out


def test_analysis_json_and_plots(run_dir):
    a = json.loads((run_dir / "analysis.json").read_text())
    for key in ("discretization", "curvature", "landscape", "alpha_distance", "cells", "gradient_correlation",
                "lambda"):
        assert key in a, key
    assert a["n_alpha"] == 12  # s5: 2 edges x 3 ops x 2 cell types
    c = a["curvature"]
    assert len(c["spectrum_top"]) == 12  # top-30 of a 12-dim spectrum = all of it
    assert c["lambda_max_exact"] == pytest.approx(max(c["spectrum_top"]))
    assert c["lambda_max"] == pytest.approx(c["lambda_max_exact"], rel=1e-3)  # 6 Lanczos steps, n = 12
    assert a["alpha_distance"]["basis"] == "alpha" and a["alpha_distance"]["distance"][-1] == 0.0
    assert a["lambda"]["lambda_max"] == [r["lambda_max"] for r in sn.load_run(run_dir).metrics]
    d = a["discretization"]
    assert d["acc_drop"] == pytest.approx(d["acc_supernet"] - d["acc_discrete"])
    pngs = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert {"curves.png", "lambda.png", "landscape.png", "cell_normal.png", "cell_reduce.png",
            "op_weights_normal.png", "spectrum.png", "alpha_distance.png"} <= pngs
    assert all((run_dir / "plots" / p).read_bytes().startswith(b"\x89PNG") for p in pngs)


def _external_refs(text: str) -> list[str]:
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text, flags=re.I)
    return [r for r in refs if not (r.startswith("data:image/png;base64,") or r.startswith("#"))]


def test_report_is_self_contained_with_all_sections(run_dir):
    path = write_report(run_dir)
    text = path.read_text()
    assert path == run_dir / "report.html"
    assert _external_refs(text) == []
    assert "<link" not in text and "<script" not in text and "url(" not in text
    for sid, _ in SECTIONS:
        assert f'id="{sid}"' in text, sid
    assert text.count("data:image/png;base64,") >= 8
    assert "accuracy drop" in text and "lambda_max" in text


def test_cell_drawing_falls_back_without_graphviz(run_dir, monkeypatch):
    g = sn.load_run(run_dir).genotype
    monkeypatch.setattr(shutil, "which", lambda name: None)
    png, how = cells.draw_cell(g, "normal")
    assert how == "matplotlib" and png.startswith(b"\x89PNG")
    text = write_report(run_dir, run_dir / "report-nodot.html").read_text()
    assert _external_refs(text) == [] and 'id="cells"' in text


def test_dot_source_lists_every_kept_connection(run_dir):
    g = sn.load_run(run_dir).genotype
    dot = cells.to_dot(g, "normal")
    for op, _src in g.normal:
        assert f'label="{op}"' in dot
    assert dot.count("->") == len(g.normal) + len(g.normal_concat)


def test_comparison_page_and_cli(run_dir, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(run_dir, other)
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(run_dir), str(other), "--out", str(tmp_path / "cmp.html")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "cmp.html").read_text()
    assert _external_refs(text) == []
    assert "copy" in text and "tiny" in text
    assert 'id="comparison"' in text and text.count("<tr>") >= 3
    assert write_comparison([run_dir, other], tmp_path / "cmp2.html").exists()
    bad = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "not a run directory" in bad.output
    bad = runner.invoke(app, ["analyze", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "not a run directory" in bad.output


def test_report_numbers_nodes_alike_and_plots_the_analysis_lambda(run_dir, tmp_path, monkeypatch):
    from stablenas.analysis import analyze, plots

    g = sn.load_run(run_dir).genotype
    text = g.skeleton.genotype_text(g)
    dot = cells.to_dot(g, "normal")
    # s5: one intermediate node, numbered 2 in the text, the JSON (concat) and the drawing
    assert "normal  node 2:" in text and list(g.normal_concat) == [2]
    assert '"2" [fillcolor' in dot and '"0" [fillcolor' not in dot and "(0)" in dot and "(1)" in dot
    # a run that tracked no lambda_max but was analysed: the curvature figure gets analyze's value
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    rows = [json.loads(x) for x in (bare / "metrics.jsonl").read_text().splitlines()]
    (bare / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "lambda_max"})
                                                + "\n" for r in rows))
    seen = {}
    orig = plots.lambda_plot

    def spy(series, *args, analysis=None, **kw):
        seen.update(series=list(series), analysis=analysis)
        return orig(series, *args, analysis=analysis, **kw)

    monkeypatch.setattr(plots, "lambda_plot", spy)
    a = json.loads((bare / "analysis.json").read_text())
    a.pop("lambda")  # recomputed from the bare metrics
    analyze.figures(sn.load_run(bare), a)
    assert seen["series"] == []
    assert seen["analysis"] == {"epoch": 2, "lambda_max": a["curvature"]["lambda_max"],
                                "exact": a["curvature"]["lambda_max_exact"]}
    assert orig([], analysis=seen["analysis"]).startswith(b"\x89PNG")


def test_comparison_default_place_keeps_other_files_and_shows_only_differing_keys(run_dir, tmp_path):
    import yaml

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(run_dir, a)
    shutil.copytree(run_dir, b)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["seed"], cfg["optim"]["weight_decay"] = 123, 0.0081
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(a), str(b)])
    assert res.exit_code == 0, res.output
    page = a / "comparison-a-vs-b.html"
    assert f"comparison: {page}" in res.output
    text = page.read_text()
    diff = text[text.index('id="configs"'):]
    assert diff.count("<tr><th><code>") == 2 and "optim.weight_decay" in diff and "<code>123</code>" in diff
    assert "optim.lr" not in diff
    assert runner.invoke(app, ["report", str(a), str(b)]).exit_code == 0  # the same comparison: updated
    # another comparison, or any other file, at --out is refused and left byte-identical
    for target in (page, tmp_path / "notes.html"):
        if not target.exists():
            target.write_text("my notes")
        before = target.read_bytes()
        res = runner.invoke(app, ["report", str(b), str(a), "--out", str(target)])
        assert res.exit_code == 2 and "pass another --out" in res.output, res.output
        assert target.read_bytes() == before


def test_analyze_progress_bars_change_no_result(run_dir, tmp_path, capsys, monkeypatch):
    """Bars on (forced; the suite's stderr is no terminal) give the same analysis.json as the
    module fixture's run with them off, apart from wall-clock seconds."""
    from stablenas.progress import progress_enabled

    monkeypatch.setenv("CI", "true")
    assert progress_enabled(None) is False and progress_enabled(True) is True
    monkeypatch.delenv("CI")
    copy = tmp_path / "bars"
    shutil.copytree(run_dir, copy)
    capsys.readouterr()
    analyze_run(copy, batches=1, grid=3, spectrum="yes", top_k=30, progress=True, plots=False)
    err = capsys.readouterr().err
    assert "lambda_max (Lanczos HVPs)" in err and "landscape" in err and "exact Hessian" in err

    def strip(a):
        if isinstance(a, dict):
            return {k: strip(v) for k, v in a.items() if "seconds" not in k and k != "run"}
        return [strip(v) for v in a] if isinstance(a, list) else a

    on = json.loads((copy / "analysis.json").read_text())
    off = json.loads((run_dir / "analysis.json").read_text())
    assert strip(on) == strip(off)
    assert on["seed"] == 0 and on["curvature"]["hvps"] == off["curvature"]["hvps"]


def _strip_times(a):
    if isinstance(a, dict):
        return {k: _strip_times(v) for k, v in a.items() if "seconds" not in k and k != "run"}
    return [_strip_times(v) for v in a] if isinstance(a, list) else a


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_analyze_dry_run_prints_plan_and_estimate_and_writes_nothing(run_dir, tmp_path):
    copy = tmp_path / "dry"
    shutil.copytree(run_dir, copy)
    before = _files(copy)
    res = CliRunner().invoke(app, ["analyze", str(copy), "--dry-run", "--batches", "1", "--grid", "3"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert f"analyze plan: {copy} (s5, 3 cells x 8 ch, 12 alpha entries, 2 epochs done)" in out
    assert "exact Hessian spectrum: 12 x 12 (12 products)" in out  # 12 <= 32: auto computes it
    assert "landscape: 3 x 3 grid, 1 validation batches a point" in out
    assert "Hessian-vector product" in out and "estimated wall time:" in out
    assert _files(copy) == before


def test_the_plan_before_an_analysis_changes_no_result(run_dir, tmp_path):
    """`analyze` times one unit of each kind before it starts; the analysis equals the module
    fixture's, which ran without the plan."""
    from stablenas.analysis.plan import format_plan

    copy = tmp_path / "planned"
    shutil.copytree(run_dir, copy)
    plans = []
    analyze_run(copy, batches=1, grid=3, spectrum="yes", top_k=30, plots=False, on_plan=plans.append)
    (plan,) = plans
    assert plan["n_alpha"] == 12 and plan["exact"] and plan["grid"] == 3
    parts = plan["estimate"]
    t = plan["timing"]
    assert parts["exact spectrum"] == pytest.approx(t["gradient"] + 12 * t["hvp"])
    assert parts["landscape"] == pytest.approx(t["gradient"] + 9 * t["evaluation"])
    assert "estimated wall time" in format_plan(plan)
    on = json.loads((copy / "analysis.json").read_text())
    off = json.loads((run_dir / "analysis.json").read_text())
    assert _strip_times(on) == _strip_times(off)


def _cell(page: str, row: int, col: int) -> str:
    table = page[page.index('id="comparison"'):]
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    return re.findall(r"<td class='num'>(.*?)</td>", rows[row])[col]


def test_comparison_cells_escape_once_and_count_cells_without_analyze(run_dir, tmp_path):
    from stablenas.analysis.diagnostics import cell_stats
    from stablenas.analysis.report import _fmt

    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    (bare / "analysis.json").unlink()
    page = write_comparison([run_dir, bare], tmp_path / "cmp.html").read_text()
    assert "&ndash;" not in page and "&amp;" not in page
    run = sn.load_run(run_dir)
    a = json.loads((run_dir / "analysis.json").read_text())
    last = run.metrics[-1]["lambda_max"]
    assert _cell(page, 1, 6) == f"{_fmt(last)} / {_fmt(a['curvature']['lambda_max'])}"
    assert _cell(page, 2, 6) == f"{_fmt(last)} / \u2013"  # not analysed: a dash, escaped once
    stats = cell_stats(run.genotype)  # from the genotype, with or without analysis.json
    for row in (1, 2):
        assert _cell(page, row, 9) == _fmt(stats["all"]["param_free_share"])
        assert _cell(page, row, 10) == f"{_fmt(stats['normal']['width_c'], 3)}c / {stats['normal']['depth']}"


def test_darts_es_caption_only_on_runs_that_apply_it(run_dir, tmp_path):
    import yaml

    plain = write_report(run_dir, tmp_path / "plain.html").read_text()
    assert "DARTS-ES stops when" not in plain and "ES rule" not in plain
    es = tmp_path / "es"
    shutil.copytree(run_dir, es)
    cfg = yaml.safe_load((es / "config.yaml").read_text())
    cfg["methods"] = [{"name": "darts-es", "iters": 6}]
    (es / "config.yaml").write_text(yaml.safe_dump(cfg))
    text = write_report(es).read_text()
    assert "DARTS-ES stops when lambda_bar(i-5) / lambda_bar(i) &lt; 0.75" in text
    assert "ES rule (simulated on this series)" in text


def test_a_plugin_metric_is_shown(run_dir, tmp_path):
    copy = tmp_path / "toy"
    shutil.copytree(run_dir, copy)
    rows = [json.loads(x) for x in (copy / "metrics.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r["toy_entropy"] = 1.25 + 0.5 * i
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(copy).read_text()
    assert '<a href="#method-metrics">' in text
    assert "<tr><th>toy_entropy (last epoch recorded)</th><td class='num'>1.7500</td></tr>" in text
    assert "toy_entropy" not in write_report(run_dir, tmp_path / "plain.html").read_text()


def test_lambda_axis_ends_at_the_last_epoch_and_plots_fill_the_page(run_dir, monkeypatch):
    from stablenas.analysis import analyze, plots
    from stablenas.analysis.report import CSS, _png_width

    run = sn.load_run(run_dir)
    a = json.loads((run_dir / "analysis.json").read_text())
    assert _png_width(analyze.figures(run, a)["curves"]) >= 1000 and "img.plot{width:100%}" in CSS
    figs = []
    monkeypatch.setattr(plots, "_png", lambda fig: figs.append(fig) or b"")
    plots.lambda_plot([], analysis=analyze.end_curvature(a), last_epoch=2)  # analyze's value only
    plots.lambda_plot([(1, 3.0), (2, 4.0)], last_epoch=2)
    for fig in figs:
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        assert hi == 2.5 and max(t for t in ax.get_xticks() if lo <= t <= hi) == 2


def test_default_analysis_keeps_the_exact_spectrum_to_small_alpha(tmp_path, monkeypatch):
    """S3 has 84 alpha entries: by default Lanczos alone (no exact Hessian of 84 products); the plan
    says so and what --spectrum yes would add."""
    from conftest import TINY_SEARCH

    from stablenas import curvature
    from stablenas.analysis.plan import EXACT_MAX_ALPHA, format_plan, wants_exact

    assert wants_exact("auto", EXACT_MAX_ALPHA) and not wants_exact("auto", EXACT_MAX_ALPHA + 1)
    out = tmp_path / "s3"
    Search(sn.load_config("quickstart", [*TINY_SEARCH, "threads=1"]), out, progress=False, log=lambda m: None).run()
    monkeypatch.setattr(curvature, "exact_spectrum", lambda *a, **k: pytest.fail("exact spectrum computed"))
    plans = []
    a = analyze_run(out, batches=1, iters=3, landscape=False, grad_corr=False, plots=False, on_plan=plans.append)
    assert a["n_alpha"] == 84 and "lambda_max_exact" not in a["curvature"] and len(a["curvature"]["ritz_top"]) == 3
    text = format_plan(plans[0])
    assert "exact Hessian spectrum: not computed (84 alpha entries > 32; --spectrum yes adds 84 products" in text
    assert "exact spectrum" not in plans[0]["estimate"]
