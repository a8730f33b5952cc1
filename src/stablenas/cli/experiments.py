"""``sweep``, ``study`` and ``s5-table``: the commands that run many searches or trainings (the
papers' protocols) and tabulate them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from ..errors import ConfigError
from .app import app, user_errors
from .options import (
    AddressOpt,
    BackendOpt,
    CpusOpt,
    DataRootOpt,
    DeviceOpt,
    DryRunOpt,
    GpusOpt,
    ThreadsOpt,
    make_backend,
    root_set,
    runtime_sets,
)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _spell_out(args: list[str], multi: tuple[str, ...]) -> list[str]:
    """``--seeds 0 1 2`` as ``--seeds 0 --seeds 1 --seeds 2``; a value is any word not starting with
    ``-`` or a number (``--l2 -1`` is a value); an option left without one stays for click to report."""
    out: list[str] = []
    opt, count = None, 0
    for a in args:
        if opt is not None and (not a.startswith("-") or _is_number(a)):
            out += [opt, a]
            count += 1
            continue
        if opt is not None and count == 0:
            out.append(opt)
        opt, count = (a, 0) if a in multi else (None, 0)
        if opt is None:
            out.append(a)
    if opt is not None and count == 0:
        out.append(opt)
    return out


class MultiValueCommand(TyperCommand):
    """``sweep``'s list options take several values after one flag (``--seeds 0 1 2``, the
    papers' way to write a protocol); click reads a list option only as the repeated flag, so each
    is spelled out that way before click parses."""

    multi = ("--seeds", "--l2", "--drop-path", "--final-seeds")

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _spell_out(args, self.multi))


@app.command(cls=MultiValueCommand)
@user_errors(ValueError, KeyError)
def sweep(
    config: Annotated[str, typer.Argument(help="search preset name or YAML file")],
    seeds: Annotated[list[int], typer.Option("--seeds", help="search seeds, e.g. --seeds 0 1 2")],
    out: Annotated[Path, typer.Option("--out", "-o", help="sweep directory")],
    l2: Annotated[list[float] | None, typer.Option(
        "--l2", help="R-DARTS(L2): weight decay values of the search, e.g. --l2 3e-4 9e-4 27e-4 81e-4")] = None,
    drop_path: Annotated[list[float] | None, typer.Option(
        "--drop-path", help="R-DARTS(DP): max ScheduledDropPath probabilities, e.g. --drop-path 0 0.2 0.4 0.6")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="runs at once (processes)")] = 1,
    threads: Annotated[int | None, typer.Option("--threads", help="torch threads per process")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="search override KEY=VALUE")] = None,
    train_preset: Annotated[str, typer.Option(
        "--train-preset", help="retraining preset: darts | darts-small | nb201")] = "darts",
    train_set: Annotated[list[str] | None, typer.Option(
        "--train-set", help="retraining override KEY=VALUE (both retrainings), e.g. channels=16")] = None,
    retrain_epochs: Annotated[int | None, typer.Option(
        "--retrain-epochs", help="selection retraining epochs (default: final epochs // 6)")] = None,
    holdout: Annotated[int, typer.Option("--holdout", help="training images held out to score the selection")] = 5000,
    final_epochs: Annotated[int | None, typer.Option(
        "--final-epochs", help="final retraining epochs (default: preset)")] = None,
    final_seeds: Annotated[list[int] | None, typer.Option("--final-seeds", help="final retraining seeds")] = None,
    final: Annotated[str, typer.Option(
        "--final", help="retrain the selected architecture, every searched one, or none: selected | all | none")
    ] = "selected",
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    cpus_per_task: CpusOpt = None,
    gpus_per_task: GpusOpt = 0.0,
    device: DeviceOpt = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="a bar per stage (default: when a terminal, not CI)")] = None,
    dry_run: DryRunOpt = False,
    data_root: DataRootOpt = None,
) -> None:
    """Protocol of the papers' tables: searches over seeds (R-DARTS: and regularisation strengths),
    selection of the final architecture by a short retraining on a held-out validation split
    (robust-darts Sec. 5.3), its retraining, and OUT/table.md + OUT/table.json. Re-running the
    same command resumes."""
    from ..experiments.sweep import SweepPlan, run_sweep
    from .models import SweepOptions

    kind, values = SweepOptions.parse(l2=l2, drop_path=drop_path, final=final).regularisation()
    dev = [f"device={device}"] if device is not None else []
    plan = SweepPlan(config=config, seeds=list(seeds), overrides=[*(set_ or []), *dev, *root_set(data_root)],
                     reg=kind, reg_values=values, train_preset=train_preset,
                     train_overrides=[*(train_set or []), *dev], retrain_epochs=retrain_epochs, holdout=holdout,
                     final_epochs=final_epochs, final_seeds=list(final_seeds or [0]), final=final)
    if dry_run:
        from ..estimate import estimate_sweep, format_estimate

        typer.echo(format_estimate(estimate_sweep(plan, jobs=jobs, threads=threads)))
        return
    table = run_sweep(plan, out, jobs=jobs, threads=threads, progress=progress,
                      backend=make_backend(backend, jobs, address, cpus_per_task, gpus_per_task))
    typer.echo((Path(out) / "table.md").read_text())
    typer.echo(f"selected: {table['selected']}")


@app.command()
@user_errors(ValueError, KeyError)
def study(
    protocol: Annotated[str, typer.Argument(help="protocol YAML or a shipped protocol: cpu-collapse | gpu-paper")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="study directory (resumable)")] = None,
    records: Annotated[Path | None, typer.Option(
        "--records", help="finished units' small records (config.yaml, metrics.jsonl, genotype.json, result.json): "
                          "read first, written after every unit (e.g. studies/cpu-collapse, kept in git)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="protocol override, e.g. --set seeds=[0,1]")] = None,
    backend: BackendOpt = "local",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="units at once (local processes; Ray: in flight, "
                                                           "0 = as resources allow)")] = 1,
    threads: ThreadsOpt = None,
    address: AddressOpt = None,
    cpus_per_task: CpusOpt = None,
    gpus_per_task: GpusOpt = 0.0,
    max_units: Annotated[int | None, typer.Option("--max-units", help="run at most this many units now, "
                                                                      "then summarise (a sitting)")] = None,
    plan: Annotated[bool, typer.Option("--plan", help="print the unit queue, what is done and the cost "
                                                      "estimate; write nothing")] = False,
    summary_only: Annotated[bool, typer.Option("--summary", help="only rewrite table.md, results.json and "
                                                                 "plots from the finished units (with --records: "
                                                                 "those recorded there too); runs nothing")] = False,
) -> None:
    """A collapse study: every (seed, space, method) of the protocol searched (with lambda_max tracked),
    its cell retrained (or looked up: S5), the papers' analyses over all runs into OUT/table.md,
    OUT/results.json and OUT/plots/. Re-running the same command resumes."""
    from ..experiments import study as st
    from .models import StudyOptions

    StudyOptions.parse(out=out, plan=plan)
    proto = st.load_protocol(protocol, set_)
    if plan:
        _print_plan(proto, out, records)
        return
    if summary_only:  # runs nothing (with --records: the table of committed records)
        st.summary_only(proto, out, records, warn=lambda m: typer.echo(m, err=True))
    else:
        st.run_study(proto, out, backend=make_backend(backend, jobs, address, cpus_per_task, gpus_per_task),
                     records=records, threads=threads, max_units=max_units)
    typer.echo((Path(out) / "table.md").read_text())


def _print_plan(proto, out: Path | None, records: Path | None) -> None:
    """``study --plan``: the unit count, the first units to run and the cost estimate."""
    from ..experiments import study as st

    units = st.study_units(proto)
    est = st.estimate_cost(proto, out, records)
    typer.echo(f"study {proto.name}: {len(units)} units ({len(proto.seeds)} seeds x {len(proto.spaces)} "
               f"spaces x {len(proto.methods)} methods), {est['done']} done, {est['to_run']} to run")
    todo = [u for u in units if u.name in set(est["todo"])]
    for u in todo[:6]:
        typer.echo(f"  {u.name}: {u.search['optim']['epochs']} epochs, "
                   f"{'retrained ' + str(u.train['epochs']) + ' epochs' if u.train else 'table lookup'}")
    if len(todo) > 6:
        typer.echo(f"  ... ({len(todo) - 6} more, seed-major)")
    hours = est["seconds"] / 3600
    typer.echo(f"estimated cost of the units to run: {hours:.1f} h of one process"
               + (f" ({len(est['unknown'])} units without a figure)" if est["unknown"] else "")
               + (f" (+ {len(est['retrain_unpriced'])} retrainings not yet measured)"
                  if est["retrain_unpriced"] else ""))


@app.command("s5-table")
@user_errors(ValueError)
def s5_table(
    work: Annotated[Path, typer.Option(
        "--work", help="one training run directory per architecture (resumable)")] = Path("runs/s5-table"),
    out: Annotated[Path | None, typer.Option("--out", help="table file (default: the packaged "
                                                           "resources/s5_<dataset>.json)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="trainings run at once (processes)")] = 1,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="change stablenas.experiments.s5.S5_PROTOCOL, e.g. --set epochs=8")] = None,
    repeat_archs: Annotated[str, typer.Option(
        "--repeat-archs", help="architectures trained with extra seeds, comma separated")] = "0,17,40,80",
    repeat_seeds: Annotated[str, typer.Option("--repeat-seeds", help="extra seeds, comma separated")] = "1,2",
    seeds: Annotated[str, typer.Option(
        "--seeds", help="train each architecture with these seeds, tabulate the mean")] = "",
    show: Annotated[bool, typer.Option("--show", help="print the existing table's summary and exit")] = False,
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    cpus_per_task: CpusOpt = None,
    gpus_per_task: GpusOpt = 0.0,
    seed: Annotated[int | None, typer.Option("--seed", help="the protocol's seed (default: its own; --seeds "
                                                            "for several)")] = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="progress bar (default: when a terminal, not CI)")] = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Ground truth for space S5: train all 81 architectures with one fixed protocol and write the
    table (test accuracy, params, seconds) that search runs on s5 use for their test regret."""
    import shlex

    from ..config import apply_overrides
    from ..experiments import s5
    from .models import S5TableOptions

    opts = S5TableOptions.parse(repeat_archs=repeat_archs, repeat_seeds=repeat_seeds, seeds=seeds)
    if show:
        from ..skeletons.darts.s5_table import load_table, table_path

        table = load_table(path=out) if out else load_table()
        if table is None:
            raise ConfigError(f"no table at {out or table_path()}; generate it with `stablenas s5-table`")
        typer.echo(json.dumps({**table.summary(), "command": table.meta.get("command"),
                               "repeats": table.meta.get("repeats")}, indent=1))
        return
    overrides = apply_overrides({}, [*(set_ or []), *runtime_sets(seed, device, threads)], example="epochs=8")
    if dry_run:
        from ..estimate import estimate_s5_table, format_estimate

        typer.echo(format_estimate(estimate_s5_table(overrides, jobs=jobs, repeat_archs=opts.repeat_archs,
                                                     repeat_seeds=opts.repeat_seeds, seeds=opts.seeds or None)))
        return
    command = "stablenas " + shlex.join(sys.argv[1:]) if sys.argv and "s5-table" in sys.argv else None
    s5.generate_table(work, out, jobs=jobs, overrides=overrides, repeat_archs=opts.repeat_archs,
                      repeat_seeds=opts.repeat_seeds, command=command, seeds=opts.seeds or None, progress=progress,
                      backend=make_backend(backend, jobs, address, cpus_per_task, gpus_per_task))
