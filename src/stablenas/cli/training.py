"""``search`` and ``train``: the commands that run (and, under torchrun or ``--nproc``, run as
several ranks)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .app import USER_ERRORS, app, command_line, exit_code, user_errors
from .options import (
    DataRootOpt,
    DeviceOpt,
    DryRunOpt,
    LogOpt,
    PrintConfigOpt,
    SeedOpt,
    ThreadsOpt,
    TrustOpt,
    root_set,
    runtime_sets,
    trust,
)

ProgressOpt = Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="progress bar (default: when a terminal)")]
GenotypeArg = Annotated[str, typer.Argument(help="genotype.json, a run directory, an NB201 arch string or a "
                                                 "published name (see `stablenas info --list`)")]


def _other_rank() -> bool:
    """Under torchrun, a rank other than 0 (rank 0 reports for the job)."""
    from .. import distributed

    return distributed.launched() and distributed.env_rank() != 0


@contextmanager
def _rank0_reports() -> Iterator[None]:
    """Rank 0 says the job's error; every other rank exits with the code alone, unless its error
    names a dead rank."""
    from ..errors import RankDiedError

    try:
        yield
    except USER_ERRORS as e:
        if _other_rank() and not isinstance(e, RankDiedError):
            raise typer.Exit(exit_code(e)) from None
        raise


@app.command()
def search(
    ctx: typer.Context,
    config: Annotated[str, typer.Argument(help="YAML config file or preset name (see `stablenas presets`)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set optim.epochs=10")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    progress: ProgressOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    log: LogOpt = "auto",
    dry_run: DryRunOpt = False,
    print_config: PrintConfigOpt = False,
    nproc: Annotated[int | None, typer.Option("--nproc", help="data-parallel ranks on this machine (as torchrun "
                                                               "--standalone --nproc_per_node N)")] = None,
    data_root: DataRootOpt = None,
) -> None:
    """Run an architecture search and write config.yaml, metrics.jsonl, genotype.json, checkpoint.pt
    (and live TensorBoard scalars in tensorboard/ when tensorboard is installed). Under torchrun
    (or with --nproc) every rank takes its slice of each batch; data.batch_size is the global batch."""
    from .. import distributed
    from ..config import load_config
    from ..search.loop import Search
    from .models import RunOptions

    RunOptions.parse(out=out, dry_run=dry_run, print_config=print_config, nproc=nproc)
    with _rank0_reports():
        if resume and out is not None and not _other_rank():
            from ..runs.directory import RunDir  # a resumable run, before its config loads the plug-ins it names

            RunDir(out, kind="search", config_name="config.yaml").check(True, None)
        cfg = load_config(config, [*(set_ or []), *runtime_sets(seed, device, threads), *root_set(data_root)])
        if print_config:
            typer.echo(cfg.to_yaml(effective=True), nl=False)
            return
        if dry_run:
            from ..estimate import estimate_search, format_estimate

            typer.echo(format_estimate(estimate_search(cfg)))
            return
        if nproc is not None and not distributed.launched():
            _launch(nproc, cfg, out, resume, command_line(ctx))
        try:
            result = Search(cfg, out, resume=resume, progress=progress, loggers=log).run()
        finally:
            distributed.shutdown()
    if _other_rank():
        return
    typer.echo(f"genotype: {result.genotype}")
    typer.echo(f"run directory: {out}")


def _launch(nproc: int, cfg, out: Path, resume: bool, argv: list[str] | None) -> None:
    """``--nproc N``: check what can be checked here (config, run directory), then run this very
    command line ``argv`` (without --nproc) as N ranks (stablenas.launch) and exit with the job's
    code; N = 1 runs here."""
    from ..launch import run_ranks
    from ..runs.directory import RunDir
    from ..search.loop import RUNTIME_KEYS, check_data_parallel

    if not argv:
        raise ConfigError("--nproc re-runs the stablenas command line as N ranks; run it from a shell "
                          "(or call torchrun)")
    check_data_parallel(cfg, nproc)
    RunDir(out, kind="search", config_name="config.yaml", runtime_keys=RUNTIME_KEYS).check(resume, cfg.to_dict())
    if nproc == 1:
        return
    ranks_argv, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            ranks_argv.append(a)
    again = f"`stablenas search {out / 'config.yaml'} --out {out} --resume --nproc {nproc}`"
    raise typer.Exit(run_ranks(ranks_argv, nproc, out, again))


@app.command()
@user_errors(ValueError, KeyError)
def train(
    genotype: GenotypeArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="training run directory")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="default: the search run's dataset for a run "
                                                                  "directory, else the preset's (cifar10)")] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="darts | darts-small | nb201; recurrent genotypes: ptb | ptb-cpu")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs")] = None,
    channels: Annotated[int | None, typer.Option("--channels", help="initial channels C")] = None,
    layers: Annotated[int | None, typer.Option("--layers", help="cells (nb201: cells per stage)")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="batch size")] = None,
    lr: Annotated[float | None, typer.Option("--lr")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    data_root: DataRootOpt = None,
    network: Annotated[str | None, typer.Option("--network", help="auto | cifar | imagenet | nb201")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="any field of stablenas.evaluate.train.TrainConfig, e.g. --set cutout=0")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    progress: ProgressOpt = None,
    log: LogOpt = "auto",
    dry_run: DryRunOpt = False,
    print_config: PrintConfigOpt = False,
    amp: Annotated[str | None, typer.Option("--amp", help="mixed precision: bf16 | fp16 (CUDA) | off")] = None,
    trust_plugins: TrustOpt = False,
) -> None:
    """Train a genotype from scratch (DARTS recipe) and write result.json with test accuracy,
    parameters and multiply-adds; checkpointed every epoch (--resume continues). Under torchrun every
    rank trains on its slice of each batch (the batch size is global)."""
    trust(trust_plugins)
    from ..evaluate.train import inherited_fields, resolve_genotype, train_config
    from .models import TrainOptions

    TrainOptions.parse(out=out, dry_run=dry_run, print_config=print_config)
    sets = [*(set_ or []), *([] if amp is None else [f"amp={amp}"])]
    fields = dict(dataset=dataset, epochs=epochs, channels=channels, layers=layers, batch_size=batch, lr=lr,
                  seed=seed, data_root=data_root, network=network)
    g = resolve_genotype(genotype)
    if not (dry_run or print_config):
        own = g.skeleton.train_command(g, out, preset=preset, overrides=sets, resume=resume, progress=progress,
                                       fields=fields)
        if own is not None:  # a skeleton with its own trainer (recurrent cells)
            typer.echo(own[1])
            typer.echo(f"result: {out / 'result.json'}")
            return
    cfg = train_config(preset or "darts", sets, inherit=inherited_fields(genotype), device=device, threads=threads,
                       **fields)
    if print_config:
        import yaml

        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)
    elif dry_run:
        from ..estimate import estimate_train, format_estimate

        typer.echo(format_estimate(estimate_train(genotype, cfg)))
    else:
        _train(g, cfg, out, resume=resume, progress=progress, log=log)


def _train(g, cfg, out: Path, resume: bool, progress: bool | None, log: str) -> None:
    """Train ``g`` under ``cfg``; rank 0 prints the result line."""
    from .. import distributed
    from ..evaluate.train import train_genotype

    try:
        result = train_genotype(g, cfg, out, resume=resume, progress=progress, loggers=log)
    finally:
        distributed.shutdown()
    if _other_rank():
        return
    msg = [f"{k} {result[k] * 100:.2f}%" for k in ("test_acc", "valid_acc") if k in result]
    typer.echo(f"{'  '.join(msg)}  params {result['params'] / 1e6:.3f}M  "
               f"multiply-adds {result['macs'] / 1e6:.2f}M")
    typer.echo(f"result: {out / 'result.json'}")
