"""``show``, ``analyze`` and ``report``: the commands that read a finished (or running) run
directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, user_errors
from .options import DataRootOpt, DeviceOpt, ThreadsOpt, TrustOpt, root_set, runtime_sets, trust


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="a search or training run directory")],
         trust_plugins: TrustOpt = False) -> None:
    """Summarise a run: config, progress, last metrics, parameter-free share, lambda_max, benchmark
    test accuracy / regret or perplexity where recorded, and the genotype."""
    from ..analysis.run import load_run
    from ..analysis.summary import show_lines

    trust(trust_plugins)
    run = load_run(run_dir)
    for line in show_lines(run, run_dir):
        typer.echo(line)


@app.command()
@user_errors(ValueError)
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (config.yaml + checkpoint.pt)")],
    batches: Annotated[int, typer.Option("--batches",
                                         help="validation batches for accuracies / landscape")] = 2,
    curvature_batches: Annotated[int, typer.Option("--curvature-batches",
                                                   help="batches (search batch size) for the Hessian")] = 1,
    iters: Annotated[int, typer.Option("--iters", help="Lanczos steps for lambda_max")] = 20,
    spectrum: Annotated[str, typer.Option("--spectrum", help="exact Hessian spectrum (one product per alpha "
                                                             "entry): auto (<= 32 alpha entries) | yes | "
                                                             "no")] = "auto",
    landscape: Annotated[bool, typer.Option("--landscape/--no-landscape",
                                            help="2-D accuracy landscape")] = True,
    grid: Annotated[int, typer.Option("--grid", help="landscape grid points per axis")] = 5,
    radius: Annotated[float, typer.Option("--radius", help="landscape half-width in alpha units")] = 1.0,
    grad_corr: Annotated[bool, typer.Option("--grad-corr/--no-grad-corr",
                                            help="bi- vs single-level gradient correlation")] = True,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="also write TensorBoard scalars "
                                                                     "(needs tensorboard)")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set",
                                                   help="config override, e.g. --set device=cpu")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Lanczos start vector and the landscape's random "
                                                     "direction")] = 0,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="progress bars (default: when a terminal, not CI)")] = None,
    trust_plugins: TrustOpt = False,
    data_root: DataRootOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (analyses, sizes) and the estimated "
                                                            "wall time from one timed unit of each kind; write "
                                                            "nothing")] = False,
) -> None:
    """Curvature, discretisation drop, landscape, alpha distance, cell statistics and gradient
    correlation of a run; writes RUN_DIR/analysis.json and RUN_DIR/plots/*.png. The plan and its
    estimated wall time come first (on stderr; --dry-run: only they, on stdout)."""
    from ..analysis.analyze import analyze_run, plan_run
    from ..analysis.plan import format_plan
    from .models import AnalyzeOptions

    trust(trust_plugins)
    opts = AnalyzeOptions.parse(
        batches=batches, curvature_batches=curvature_batches, iters=iters, spectrum=spectrum, landscape=landscape,
        grid=grid, grad_corr=grad_corr, seed=seed,
        overrides=[*(set_ or []), *runtime_sets(None, device, threads), *root_set(data_root)]).model_dump()
    if dry_run:
        typer.echo(format_plan(plan_run(run_dir, **opts)))
        return
    a = analyze_run(run_dir, radius=radius, tensorboard=tensorboard, log=lambda m: typer.echo(m, err=True),
                    progress=progress, on_plan=lambda p: typer.echo(format_plan(p), err=True), **opts)
    _say_analysis(a, run_dir, tensorboard)


def _say_analysis(a: dict, run_dir: Path, tensorboard: bool) -> None:
    d, c = a["discretization"], a["curvature"]
    typer.echo(f"lambda_max {c['lambda_max']:.5g}  supernet acc {d['acc_supernet']:.4f}  discretised acc "
               f"{d['acc_discrete']:.4f}  drop {d['acc_drop']:.4f}")
    if a.get("cells"):
        parts = [(f"{ct}: " + ("" if v["param_free_share"] is None else f"free {v['param_free_share']:.3f} ")
                  + f"width {v['width_c']:.2f}c depth {v['depth']}") for ct, v in a["cells"].items() if ct != "all"]
        typer.echo("  ".join(parts))
    if tensorboard and not a.get("tensorboard"):
        typer.echo("tensorboard is not installed: no TensorBoard scalars written", err=True)
    typer.echo(f"analysis: {run_dir / 'analysis.json'}  plots: {run_dir / 'plots'}")


@app.command()
@user_errors(ValueError)
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="one or more run directories")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="comparison page for several runs (default: "
                                                                 "FIRST_RUN/comparison-A-vs-B.html); a file "
                                                                 "holding anything else is never replaced")] = None,
    trust_plugins: TrustOpt = False,
) -> None:
    """Self-contained HTML report per run (RUN_DIR/report.html, images inlined) and, for several
    runs, a comparison page (the config keys that differ, curves, cells). Uses analysis.json when
    `stablenas analyze` has been run."""
    from ..analysis.report import check_comparison_target, write_comparison, write_report
    from .models import ReportOptions

    trust(trust_plugins)
    ReportOptions.parse(run_dirs=run_dirs, out=out)
    if len(run_dirs) > 1:  # refuse a taken --out before writing anything
        target = check_comparison_target(run_dirs, out)
    for d in run_dirs:
        typer.echo(f"report: {write_report(d)}")
    if len(run_dirs) > 1:
        typer.echo(f"comparison: {write_comparison(run_dirs, target)}")
