"""Command-line interface (typer). Every command is a thin shell over a Python API function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

INTERRUPTED = "interrupted; the last checkpoint is kept (resume with --resume)"


class _Commands(TyperGroup):
    """Typer turns a ``KeyboardInterrupt`` escaping a command into a silent exit 130; say the line
    first (a second Ctrl-C during a run, a Ctrl-C outside any run's own handler)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            typer.echo(INTERRUPTED, err=True)
            raise typer.Exit(130) from None


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="stablenas: stable differentiable architecture search (DARTS and friends).")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"stablenas {__version__}")
        raise typer.Exit()


def _fail(msg: str, code: int = 2) -> None:
    """The one way a command ends on a user error: ``error: <one line>`` on stderr, exit ``code``
    (naming the run's plug-ins left out, when the error may need them)."""
    from .plugins import declined_plugins

    declined = declined_plugins()
    if declined:
        msg = f"{msg} (plug-in(s) not loaded: {', '.join(declined)}; pass --trust-plugins if the run needs them)"
    typer.echo(f"error: {_one_line(msg)}", err=True)
    raise typer.Exit(code)


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split("\n")).strip()


def _user_errors():
    """Exceptions that are the user's doing: the project's error family (stablenas.errors) plus a
    missing file named on the command line."""
    from .errors import StablenasError

    return (StablenasError, FileNotFoundError)


def _code(e: BaseException) -> int:
    return int(getattr(e, "exit_code", 2))


# commands that read a run directory: they import the plug-ins it names only with --trust-plugins
_READING = ("show", "report", "info", "analyze", "train", "export")
TrustOpt = Annotated[bool, typer.Option("--trust-plugins", help="import the plug-ins the run's config names "
                                                                "(code: only for runs you trust)")]


def _trust(trust: bool) -> None:
    """A reading command's own --trust-plugins (the global one is read in the callback)."""
    if trust:
        from .plugins import trust_run_plugins

        trust_run_plugins(True)


@app.callback()
def _global(
    ctx: typer.Context,
    plugin: Annotated[list[str] | None, typer.Option(
        "--plugin", help="a Python file or module that registers methods, ops, spaces, skeletons or datasets "
                         "(repeatable); runs record it, so search --resume finds it again")] = None,
    trust_plugins: Annotated[bool, typer.Option(
        "--trust-plugins", help="show, report, info, analyze and train import the plug-ins a run's config "
                                "names (code: only for runs you trust)")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """stablenas: stable differentiable architecture search (DARTS and friends)."""
    from .plugins import add_session_plugins, load_entry_points, trust_run_plugins

    trust_run_plugins(trust_plugins or ctx.invoked_subcommand not in _READING)
    ctx.call_on_close(lambda: trust_run_plugins(True))  # the library's default again after the command
    try:
        load_entry_points()
        add_session_plugins(plugin or [])
    except _user_errors() as e:
        _fail(str(e), _code(e))


# options every command that runs shares (one definition, so they read the same everywhere)
SeedOpt = Annotated[int | None, typer.Option("--seed", help="the one seed (default: the config's)")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch intra-op threads")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="resolve the config, time a few steps, print the "
                                                           "estimated wall time and peak memory; write nothing")]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="print the resolved config (YAML) and exit")]
BackendOpt = Annotated[str, typer.Option("--backend", help="where the runs execute: local (processes on this "
                                                           "machine) | ray (a Ray cluster; pip install "
                                                           "'stablenas[ray]')")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster: auto (the running one) or "
                                                                  "ray://HOST:10001; default: a local Ray instance")]
CpusOpt = Annotated[float | None, typer.Option("--cpus-per-task", help="Ray: CPUs each run declares (default 1)")]
GpusOpt = Annotated[float, typer.Option("--gpus-per-task", help="Ray: GPUs each run declares (fractions: 0.25)")]
DataRootOpt = Annotated[str | None, typer.Option("--data-root", help="dataset directory (default: "
                                                                  "$STABLENAS_DATA_ROOT, else ./data, then the "
                                                                  "download cache)")]
LogOpt = Annotated[str, typer.Option("--log", help="live logging: auto (TensorBoard when installed) | none | "
                                                   "comma-separated tensorboard, wandb, mlflow")]


def _backend(name: str, jobs: int, address: str | None, cpus: float | None, gpus: float):
    from .evaluate.backends import get_backend

    return get_backend(name, jobs=jobs, address=address, num_cpus=cpus, num_gpus=gpus)


def _root_set(data_root: str | None) -> list[str]:
    """--data-root as the config override it stands for (the same key as --set data.root=DIR)."""
    return [] if data_root is None else [f"data.root={Path(data_root).expanduser().absolute()}"]


def _runtime_sets(seed: int | None, device: str | None, threads: int | None) -> list[str]:
    """--seed/--device/--threads as the config overrides they stand for."""
    out = []
    for key, v in (("seed", seed), ("device", device), ("threads", threads)):
        if v is not None:
            out.append(f"{key}={v}")
    return out


@app.command()
def search(
    config: Annotated[str, typer.Argument(help="YAML config file or preset name (see `stablenas presets`)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set optim.epochs=10")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="progress bar (default: when a terminal)")] = None,
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
    from . import distributed
    from .config import load_config
    from .search.loop import Search

    if out is None and not (dry_run or print_config):
        _fail("--out DIR is required (the run directory); --dry-run and --print-config need none")
    try:
        if resume and out is not None and not (distributed.launched() and distributed.env_rank() != 0):
            from .rundir import RunDir  # a resumable run, before its config loads the plug-ins it names

            RunDir(out, kind="search", config_name="config.yaml").check(True, None)
        cfg = load_config(config, [*(set_ or []), *_runtime_sets(seed, device, threads), *_root_set(data_root)])
        if print_config:
            typer.echo(cfg.to_yaml(effective=True), nl=False)
            return
        if dry_run:
            from .estimate import estimate_search, format_estimate

            typer.echo(format_estimate(estimate_search(cfg)))
            return
        if nproc is not None and not distributed.launched():
            _launch(nproc, cfg, out, resume)
        try:
            result = Search(cfg, out, resume=resume, progress=progress, loggers=log).run()
        finally:
            distributed.shutdown()
    except _user_errors() as e:
        from .errors import RankDiedError

        if distributed.launched() and distributed.env_rank() != 0 and not isinstance(e, RankDiedError):
            raise typer.Exit(_code(e)) from None  # rank 0 says the job's error; every survivor names a dead rank
        _fail(str(e), _code(e))
    if distributed.launched() and distributed.env_rank() != 0:
        return  # rank 0 reports for the job
    typer.echo(f"genotype: {result.genotype}")
    typer.echo(f"run directory: {out}")


def _launch(nproc: int, cfg, out: Path, resume: bool) -> None:
    """``--nproc N``: check what can be checked here (config, run directory), then run this very
    command (without --nproc) as N ranks (stablenas.launch) and exit with the job's code; N = 1 runs
    here."""
    from .launch import run_ranks
    from .rundir import RunDir
    from .search.loop import RUNTIME_KEYS, check_data_parallel

    if nproc < 1:
        _fail(f"--nproc {nproc}: give the number of ranks, 1 or more")
    if not _ARGV:
        _fail("--nproc re-runs the stablenas command line as N ranks; run it from a shell (or call torchrun)")
    check_data_parallel(cfg, nproc)
    RunDir(out, kind="search", config_name="config.yaml", runtime_keys=RUNTIME_KEYS).check(resume, cfg.to_dict())
    if nproc == 1:
        return
    argv, skip = [], False
    for a in _ARGV:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    again = f"`stablenas search {out / 'config.yaml'} --out {out} --resume --nproc {nproc}`"
    raise typer.Exit(run_ranks(argv, nproc, out, again))


@app.command()
def spaces() -> None:
    """List the search spaces with their op sets and sizes."""
    from .listing import table
    from .spaces.catalog import list_spaces

    rows = []
    for s in list_spaces():
        ops = ", ".join(s.all_ops()) if s.is_uniform() else f"per-edge sets over {', '.join(s.all_ops())}"
        rows += [(s.name, s.skeleton, str(s.n_nodes), str(s.n_edges), f"{s.num_architectures():.3g}", s.description),
                 ("", "", "", "", "", f"ops: {ops}")]
    typer.echo(table(("space", "skeleton", "nodes", "edges", "archs", "description"), rows))


@app.command()
def presets() -> None:
    """List the YAML presets shipped with the package."""
    from .config import PRESET_DIR, list_presets, read_yaml
    from .listing import table

    rows = [(name, (read_yaml(PRESET_DIR / f"{name}.yaml") or {}).get("description", "")) for name in list_presets()]
    typer.echo(table(("preset", "description"), rows))


@app.command()
def methods(name: Annotated[str | None, typer.Argument(
        help="a method: print its paper, every option (type, default, meaning) and its preset")] = None) -> None:
    """List the search methods with a one-line description and their preset; with NAME, the method's page."""
    from .listing import method_page, table
    from .methods import METHODS

    if name is not None:
        try:
            typer.echo(method_page(METHODS[name]))
        except _user_errors() as e:
            _fail(str(e), _code(e))
        return
    rows = [(n, cls.preset or "(no preset)", cls.description + ("" if cls.preset else
                                                                f"; add it to a config: methods: [{{name: {n}}}]"))
            for n, cls in METHODS.items()]
    typer.echo(table(("method", "preset", "description"), rows))
    typer.echo("\n`stablenas methods NAME`: a method's paper, options and defaults")


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="a search or training run directory")],
         trust_plugins: TrustOpt = False) -> None:
    """Summarise a run: config, progress, last metrics, parameter-free share, lambda_max, benchmark
    test accuracy / regret or perplexity where recorded, and the genotype."""
    from .analysis.run import load_run
    from .analysis.summary import show_lines

    _trust(trust_plugins)
    try:
        run = load_run(run_dir)
    except _user_errors() as e:
        _fail(str(e), _code(e))
    for line in show_lines(run, run_dir):
        typer.echo(line)


def _err(e: BaseException) -> str:
    """The message of an exception (KeyError's str() adds quotes around it)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def _count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


@app.command()
def train(
    genotype: Annotated[str, typer.Argument(help="genotype.json, a run directory, an NB201 arch string or a "
                                                 "published name (see `stablenas info --list`)")],
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
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="progress bar (default: when a terminal)")] = None,
    log: LogOpt = "auto",
    dry_run: DryRunOpt = False,
    print_config: PrintConfigOpt = False,
    amp: Annotated[str | None, typer.Option("--amp", help="mixed precision: bf16 | fp16 (CUDA) | off")] = None,
    trust_plugins: TrustOpt = False,
) -> None:
    """Train a genotype from scratch (DARTS recipe) and write result.json with test accuracy,
    parameters and multiply-adds; checkpointed every epoch (--resume continues). Under torchrun every
    rank trains on its slice of each batch (the batch size is global)."""
    from . import distributed

    _trust(trust_plugins)
    if amp is not None:
        set_ = [*(set_ or []), f"amp={amp}"]
    from .evaluate.train import (
        TrainExistsError,
        inherited_fields,
        resolve_genotype,
        train_config,
        train_genotype,
    )

    if out is None and not (dry_run or print_config):
        _fail("--out DIR is required (the training run directory); --dry-run and --print-config need none")
    try:
        g = resolve_genotype(genotype)
        own = None if (dry_run or print_config) else g.skeleton.train_command(
            g, out, preset=preset, overrides=set_, resume=resume, progress=progress,
            fields=dict(dataset=dataset, epochs=epochs, channels=channels, layers=layers, batch_size=batch, lr=lr,
                        seed=seed, data_root=data_root, network=network))
        if own is not None:
            typer.echo(own[1])
            typer.echo(f"result: {out / 'result.json'}")
            return
        inherited = inherited_fields(genotype)
        cfg = train_config(preset or "darts", set_, inherit=inherited, dataset=dataset, epochs=epochs,
                           channels=channels, layers=layers, batch_size=batch, lr=lr, seed=seed, data_root=data_root,
                           network=network, device=device, threads=threads)
        if print_config:
            import yaml

            typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)
            return
        if dry_run:
            from .estimate import estimate_train, format_estimate

            typer.echo(format_estimate(estimate_train(genotype, cfg)))
            return
        try:
            result = train_genotype(g, cfg, out, resume=resume, progress=progress, loggers=log)
        finally:
            distributed.shutdown()
    except (*_user_errors(), TrainExistsError, ValueError, KeyError) as e:
        _fail(_err(e), _code(e))
    if distributed.launched() and distributed.env_rank() != 0:
        return  # rank 0 reports for the job
    msg = [f"{k} {result[k] * 100:.2f}%" for k in ("test_acc", "valid_acc") if k in result]
    typer.echo(f"{'  '.join(msg)}  params {result['params'] / 1e6:.3f}M  "
               f"multiply-adds {result['macs'] / 1e6:.2f}M")
    typer.echo(f"result: {out / 'result.json'}")


@app.command()
def info(
    genotype: Annotated[str | None, typer.Argument(
        help="genotype.json, a run directory, an NB201 arch string or a published name")] = None,
    network: Annotated[str | None, typer.Option("--network", help="cifar | imagenet | nb201 (default: cifar, "
                                                                  "nb201 for nb201 genotypes)")] = None,
    channels: Annotated[int | None, typer.Option("--channels", help="default: 36 / 48 / 16")] = None,
    layers: Annotated[int | None, typer.Option("--layers", help="default: 20 / 14 / 5")] = None,
    classes: Annotated[int | None, typer.Option("--classes")] = None,
    input_size: Annotated[str | None, typer.Option("--input-size", help="side, or C,H,W: 1,28,28")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the published genotypes")] = False,
    trust_plugins: TrustOpt = False,
) -> None:
    """Parameters (auxiliary head excluded, as the papers count) and multiply-adds of a genotype."""
    from .evaluate.train import DATASET_SHAPES, resolve_genotype, run_data
    from .networks.profile import info as profile_info
    from .networks.published import PUBLISHED

    _trust(trust_plugins)
    if list_ or genotype is None:
        if not list_:
            _fail("give a GENOTYPE (or --list for the published ones)")
        for name, g in PUBLISHED.items():
            typer.echo(f"{name:22s} {g.space:6s} {g.extra.get('reported', '')}")
        return
    size = None
    if input_size is not None:
        try:
            dims = [int(s) for s in input_size.replace("x", ",").split(",")]
        except ValueError:
            _fail(f"--input-size {input_size!r}: expected a side (32) or C,H,W (1,28,28)")
        if len(dims) not in (1, 3):
            _fail(f"--input-size {input_size!r}: expected a side (32) or C,H,W (1,28,28)")
        size = dims[0] if len(dims) == 1 else tuple(dims)
    try:
        g = resolve_genotype(genotype)
        lines = g.skeleton.info_lines(g, genotype, dict(network=network, channels=channels, layers=layers,
                                                        classes=classes, input_size=size))
        if lines is not None:
            for line in lines:
                typer.echo(line)
            return
        data = run_data(genotype)  # a run directory: count for the run's images and classes
        if data.get("dataset") in DATASET_SHAPES:
            shape_, n_classes = DATASET_SHAPES[data["dataset"]]
            size = size if size is not None else shape_
            classes = classes if classes is not None else n_classes
        net = g.skeleton.resolve_eval_network(network)
        r = profile_info(g, net, C=channels, layers=layers, num_classes=classes, input_size=size)
    except (*_user_errors(), ValueError, KeyError) as e:
        _fail(_err(e), _code(e))
    shape = "x".join(str(s) for s in r["input_size"])
    typer.echo(f"{genotype}: {r['network']} network, C={r['C']}, {r['layers']} "
               f"{r['layers_unit']}, {r['num_classes']} classes, "
               f"input {shape}")
    typer.echo(f"parameters:    {_count(r['params'])} ({r['params']:,}; auxiliary head excluded)")
    typer.echo(f"multiply-adds: {_count(r['macs'])} ({r['macs']:,})")


@app.command("s5-table")
def s5_table(
    work: Annotated[Path, typer.Option(
        "--work", help="one training run directory per architecture (resumable)")] = Path("runs/s5-table"),
    out: Annotated[Path | None, typer.Option("--out", help="table file (default: the packaged "
                                                           "resources/s5_<dataset>.json)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="trainings run at once (processes)")] = 1,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="change stablenas.evaluate.s5.S5_PROTOCOL, e.g. --set epochs=8")] = None,
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

    from .evaluate import s5

    if show:
        table = s5.load_table(path=out) if out else s5.load_table()
        if table is None:
            _fail(f"no table at {out or s5.table_path()}; generate it with `stablenas s5-table`")
        typer.echo(json.dumps({**table.summary(), "command": table.meta.get("command"),
                               "repeats": table.meta.get("repeats")}, indent=1))
        return
    from .config import apply_overrides

    try:
        overrides = apply_overrides({}, [*(set_ or []), *_runtime_sets(seed, device, threads)], example="epochs=8")
    except _user_errors() as e:
        _fail(str(e), _code(e))
    try:
        archs = [int(i) for i in repeat_archs.split(",") if i.strip()]
        extra = [int(i) for i in repeat_seeds.split(",") if i.strip()]
        main_seeds = [int(i) for i in seeds.split(",") if i.strip()]
    except ValueError:
        _fail("--repeat-archs / --repeat-seeds / --seeds: comma-separated integers, e.g. 0,17,40,80")
    command = "stablenas " + shlex.join(sys.argv[1:]) if sys.argv and "s5-table" in sys.argv else None
    try:
        if dry_run:
            from .estimate import estimate_s5_table, format_estimate

            typer.echo(format_estimate(estimate_s5_table(overrides, jobs=jobs, repeat_archs=archs,
                                                         repeat_seeds=extra, seeds=main_seeds or None)))
            return
        s5.generate_table(work, out, jobs=jobs, overrides=overrides, repeat_archs=archs, repeat_seeds=extra,
                          command=command, seeds=main_seeds or None, progress=progress,
                          backend=_backend(backend, jobs, address, cpus_per_task, gpus_per_task))
    except (*_user_errors(), ValueError) as e:
        _fail(str(e), _code(e))


# sweep options that take several values (`--seeds 0 1 2`); main() spells them out as repeated
# options (`--seeds 0 --seeds 1 --seeds 2`), which is what typer's list options read
_MULTI = {"sweep": ("--seeds", "--l2", "--drop-path", "--final-seeds")}


def _expand_multi(argv: list[str]) -> list[str]:
    multi = {o for cmd, opts in _MULTI.items() if cmd in argv for o in opts}
    out: list[str] = []
    opt, count = None, 0
    for a in argv:
        if opt is not None and (not a.startswith("-") or _is_number(a)):
            out += [opt, a]
            count += 1
            continue
        if opt is not None and count == 0:
            out.append(opt)  # no value: typer reports it
        opt, count = (a, 0) if a in multi else (None, 0)
        if opt is None:
            out.append(a)
    if opt is not None and count == 0:
        out.append(opt)
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


@app.command()
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
    from .evaluate.sweep import SweepPlan, run_sweep

    if l2 and drop_path:
        _fail("--l2 and --drop-path: give one regularisation to sweep, not both")
    if final not in ("selected", "all", "none"):
        _fail(f"--final {final!r}: use selected, all or none")
    kind, values = (None, [])
    if l2:
        kind, values = "l2", list(l2)
    elif drop_path:
        kind, values = "drop-path", list(drop_path)
    try:
        dev = [f"device={device}"] if device is not None else []
        plan = SweepPlan(config=config, seeds=list(seeds), overrides=[*(set_ or []), *dev, *_root_set(data_root)],
                         reg=kind,
                         reg_values=values, train_preset=train_preset, train_overrides=[*(train_set or []), *dev],
                         retrain_epochs=retrain_epochs, holdout=holdout, final_epochs=final_epochs,
                         final_seeds=list(final_seeds or [0]), final=final)
        if dry_run:
            from .estimate import estimate_sweep, format_estimate

            typer.echo(format_estimate(estimate_sweep(plan, jobs=jobs, threads=threads)))
            return
        table = run_sweep(plan, out, jobs=jobs, threads=threads, progress=progress,
                          backend=_backend(backend, jobs, address, cpus_per_task, gpus_per_task))
    except (*_user_errors(), ValueError, KeyError) as e:
        _fail(_err(e), _code(e))
    typer.echo((Path(out) / "table.md").read_text())
    typer.echo(f"selected: {table['selected']}")


@app.command()
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
    from .evaluate import study as st

    if out is None and not plan:
        _fail("--out DIR is required (the study directory); --plan needs none")
    try:
        proto = st.load_protocol(protocol, set_)
        if plan:
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
            return
        if summary_only:  # runs nothing (with --records: the table of committed records)
            st.summary_only(proto, out, records, warn=lambda m: typer.echo(m, err=True))
        else:
            st.run_study(proto, out, backend=_backend(backend, jobs, address, cpus_per_task, gpus_per_task),
                         records=records, threads=threads, max_units=max_units)
    except (*_user_errors(), ValueError, KeyError) as e:
        _fail(_err(e), _code(e))
    typer.echo((Path(out) / "table.md").read_text())


@app.command()
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
    from .analysis.analyze import analyze_run, plan_run
    from .analysis.plan import format_plan

    _trust(trust_plugins)
    if spectrum not in ("auto", "yes", "no"):
        _fail(f"--spectrum {spectrum!r}: use auto, yes or no")
    if grid < 2:
        _fail(f"--grid {grid}: need at least 2 points per axis")
    for name, v in (("--batches", batches), ("--curvature-batches", curvature_batches), ("--iters", iters)):
        if v < 1:
            _fail(f"{name} {v}: must be at least 1")
    opts = {"batches": batches, "curvature_batches": curvature_batches, "iters": iters, "spectrum": spectrum,
            "landscape": landscape, "grid": grid, "grad_corr": grad_corr, "seed": seed,
            "overrides": [*(set_ or []), *_runtime_sets(None, device, threads), *_root_set(data_root)]}
    try:
        if dry_run:
            typer.echo(format_plan(plan_run(run_dir, **opts)))
            return
        a = analyze_run(run_dir, radius=radius, tensorboard=tensorboard, log=lambda m: typer.echo(m, err=True),
                        progress=progress, on_plan=lambda p: typer.echo(format_plan(p), err=True), **opts)
    except (*_user_errors(), ValueError) as e:
        _fail(str(e), _code(e))
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
    from .analysis.report import check_comparison_target, write_comparison, write_report

    _trust(trust_plugins)
    if out is not None and len(run_dirs) < 2:
        _fail("--out names the comparison page: give two or more run directories")
    try:
        if len(run_dirs) > 1:  # refuse a taken --out before writing anything
            target = check_comparison_target(run_dirs, out)
        for d in run_dirs:
            typer.echo(f"report: {write_report(d)}")
        if len(run_dirs) > 1:
            typer.echo(f"comparison: {write_comparison(run_dirs, target)}")
    except (*_user_errors(), ValueError) as e:
        _fail(str(e), _code(e))

@app.command()
def bench(
    space: Annotated[str, typer.Option("--space", help="search space (see `stablenas spaces`)")] = "darts",
    size: Annotated[str | None, typer.Option(
        "--size", help="comma-separated named sizes: paper (8 cells x 16 channels, 3x32x32, batch 64), "
                       "cpu-study (5 x 8, 1x28x28, batch 64); default both, or only a custom size when "
                       "--cells/--channels/--batch/--input are given (they override a named size's "
                       "values)")] = None,
    cells: Annotated[int | None, typer.Option("--cells", help="cells (nb201: cells per stage)")] = None,
    channels: Annotated[int | None, typer.Option("--channels", help="initial channels C")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="batch size")] = None,
    input_: Annotated[str | None, typer.Option("--input", help="synthetic image shape CxHxW")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="timed repeats (median reported)")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="untimed iterations first")] = 1,
    methods_: Annotated[str | None, typer.Option(
        "--methods", help="comma-separated presets to time; 'all' (default) = every preset with a method, "
                          "'none' = skip")] = "all",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full result as JSON")] = None,
    plain: Annotated[bool, typer.Option("--plain/--no-plain", help="also time plain DARTS")] = True,
    plain_cl: Annotated[bool, typer.Option("--plain-cl/--no-plain-cl",
                                           help="also time plain DARTS in channels_last")] = True,
    second_order: Annotated[bool, typer.Option("--second-order/--no-second-order")] = True,
    curvature: Annotated[bool, typer.Option("--curvature/--no-curvature", help="lambda_max, Lanczos")] = True,
    curvature_iters: Annotated[int, typer.Option("--curvature-iters", metavar="<int>",
                                                 help="most Lanczos steps (HVPs) per lambda_max")] = 20,
    exact: Annotated[bool, typer.Option("--exact/--no-exact", help="exact Hessian (HVP per alpha)")] = True,
    plain_exact: Annotated[bool, typer.Option("--plain-exact/--no-plain-exact",
                                              help="exact Hessian of the plain model too (slow)")] = False,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="peak memory (subprocesses)")] = True,
    scaling: Annotated[bool, typer.Option("--scaling/--no-scaling",
                                          help="step time at 2x batch, channels and cells")] = False,
    threads: Annotated[int | None, typer.Option("--threads", help="torch intra-op threads")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    nproc: Annotated[int | None, typer.Option(
        "--nproc", help="instead: a first-order step on N data-parallel ranks x --threads (default 1) against one "
                        "process x N*threads at the same global batch (on CUDA: N devices against one)")] = None,
    tune: Annotated[bool, typer.Option(
        "--tune", help="instead: time the engine options that matter on this device (first-order step; default "
                       "size cpu-study on CPU, paper on CUDA) and store the fastest in the user's cache, "
                       "where searches on this device read it")] = False,
    tune_budget: Annotated[float, typer.Option("--tune-budget", metavar="<seconds>",
                                               help="with --tune: stop trying options after this long")] = 120.0,
) -> None:
    """Time a search step (1st/2nd order, every method preset, lambda_max, exact Hessian) and its peak
    memory, against a plain reimplementation of DARTS in the same run; prints a table, --json for all."""
    from .bench import SIZES, format_table, parse_input, run_bench, sized
    from .spaces.catalog import SPACES

    if space not in SPACES:
        _fail(f"--space {space!r}: unknown; available: {', '.join(SPACES)}")
    for name, v, low in (("--cells", cells, 1), ("--channels", channels, 1), ("--batch", batch, 1),
                         ("--repeats", repeats, 1), ("--warmup", warmup, 0),
                         ("--curvature-iters", curvature_iters, 1)):
        if v is not None and v < low:
            _fail(f"{name} must be >= {low}, got {v}")
    shape = None
    if input_ is not None:
        try:
            shape = parse_input(input_)
        except ValueError as e:
            _fail(str(e), _code(e))
    custom = any(v is not None for v in (cells, channels, batch, shape))
    if size is None:
        sizes = ["custom"] if custom else list(SIZES)
    else:
        sizes = [n.strip() for n in size.split(",") if n.strip()]
        bad = [n for n in sizes if n not in SIZES]
        if bad or not sizes:
            _fail(f"--size {size!r}: unknown size {bad[0] if bad else ''!r}; available: {', '.join(SIZES)}")
    names: list[str] | None
    if methods_ is None or methods_.strip().lower() == "all":
        names = None
    elif methods_.strip().lower() in ("none", ""):
        names = []
    else:
        names = [m.strip() for m in methods_.split(",") if m.strip()]
    common = dict(space=space, cells=cells, channels=channels, batch=batch, input=shape, repeats=repeats,
                  warmup=warmup, methods=names, plain=plain, plain_cl=plain_cl, second_order=second_order,
                  curvature=curvature, curvature_iters=curvature_iters, exact=exact, plain_exact=plain_exact,
                  memory=memory,
                  scaling=scaling, threads=threads, device=device, seed=seed)
    cfgs = []
    for n in sizes:
        cfg = sized("paper" if n == "custom" else n, **common)
        cfg.size = n
        cfgs.append(cfg)
    if tune:
        _tune(cfgs, size, device, tune_budget, json_out)
        return
    if nproc is not None:
        from .bench import format_dp, run_dp_bench

        try:
            res = {"data_parallel": [run_dp_bench(c, nproc, threads or 1) for c in cfgs]}
        except (*_user_errors(), ValueError, RuntimeError) as e:
            _fail(str(e), _code(e))
        for r in res["data_parallel"]:
            typer.echo(format_dp(r))
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(res, indent=1))
        return
    try:
        res = run_bench(cfgs)
    except (*_user_errors(), ValueError) as e:
        _fail(str(e), _code(e))
    typer.echo(format_table(res))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=1))
        typer.echo(f"json: {json_out}")


def _tune(cfgs: list, size: str | None, device: str, budget: float, json_out: Path | None) -> None:
    """``bench --tune``: one size (the first named; unnamed: cpu-study on CPU, paper on CUDA)."""
    from .bench import sized
    from .tune import format_tune, run_tune
    from .utils import resolve_device

    if budget <= 0:
        _fail(f"--tune-budget must be > 0, got {budget}")
    bc = cfgs[0]
    try:
        if size is None and bc.size != "custom":
            name = "paper" if resolve_device(device).type == "cuda" else "cpu-study"
            bc = sized(name, **{k: getattr(bc, k) for k in ("space", "repeats", "warmup", "threads", "device",
                                                           "seed")})
        res = run_tune(bc, budget)
    except (*_user_errors(), ValueError) as e:
        _fail(str(e), _code(e))
    typer.echo(format_tune(res))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=1))


data_app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                       help="public datasets: fetch them into the cache (data download NAME)")
app.add_typer(data_app, name="data")


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="cifar10 | cifar100 | svhn | fashion-mnist | mnist; imagenet and "
                                             "nb201 say what to fetch by hand")],
    data_root: Annotated[str | None, typer.Option("--data-root", help="target directory (default: "
                                                                      "$STABLENAS_DATA_ROOT, else "
                                                                      "~/.cache/stablenas/data)")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="progress bar (default: when a terminal)")] = None,
) -> None:
    """Download a dataset's published files, check their MD5, and unpack them where the loaders look
    (search, train and the rest find the cache by themselves; STABLENAS_DOWNLOAD=1 fetches on first use)."""
    from .data.download import download

    try:
        root = download(name, data_root, progress=progress)
    except _user_errors() as e:
        _fail(str(e), _code(e))
    typer.echo(f"{name}: ready in {root}")


@app.command()
def export(
    genotype: Annotated[str, typer.Argument(help="genotype.json, a run directory, an NB201 arch string or a "
                                                 "published name (see `stablenas info --list`)")],
    format_: Annotated[str, typer.Option("--format", "-f", help="pytorch (NAME.py + NAME.pt) | torchscript | "
                                                                "onnx (pip install 'stablenas[export]')")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the file to write (never overwritten)")],
    network: Annotated[str, typer.Option("--network", help="auto | cifar | imagenet | nb201 | ptb")] = "auto",
    channels: Annotated[int | None, typer.Option("--channels", help="initial channels C (recurrent: the hidden "
                                                                    "size)")] = None,
    layers: Annotated[int | None, typer.Option("--layers", help="cells (nb201: cells per stage)")] = None,
    classes: Annotated[int | None, typer.Option("--classes", help="output classes (recurrent: the vocabulary)")] = None,
    in_channels: Annotated[int | None, typer.Option("--in-channels", help="input image channels")] = None,
    input_size: Annotated[int | None, typer.Option("--input-size", help="image side (recurrent: sequence length) of "
                                                                         "the check batch and of the ONNX graph "
                                                                         "(default: the run's, else 32, imagenet 224, "
                                                                         "recurrent 35)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the weights and the check batch")] = 0,
    trust_plugins: TrustOpt = False,
) -> None:
    """Write a genotype's evaluation network (no auxiliary tower) as a file that runs without stablenas,
    checked against the stablenas network on a random batch before it is written."""
    _trust(trust_plugins)
    from .export import export_network

    sizes = {"C": channels, "layers": layers, "num_classes": classes, "in_channels": in_channels}
    try:
        res = export_network(genotype, format_, out, network=network, sizes=sizes, input_size=input_size, seed=seed)
    except (*_user_errors(), ValueError, KeyError) as e:
        _fail(_err(e), _code(e))
    weights = "trained weights" if res.trained else f"fresh weights (seed {seed})"
    typer.echo(f"{format_}: {', '.join(map(str, res.files))}  ({res.network} network, {weights}; max |exported - "
               f"stablenas| = {res.max_abs_diff:.1e} on a random {'x'.join(map(str, res.input_shape))} batch)")


_ARGV: list[str] = []  # this command line (``--nproc`` re-runs it under torchrun)


def main(argv: list[str] | None = None) -> None:
    from .launch import die_with_parent

    die_with_parent()  # a rank never outlives its launcher
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m stablenas -- search ... (see _launch)
        argv = argv[1:]
    argv = _expand_multi(argv)
    _ARGV[:] = argv
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(argv, prog_name="stablenas", standalone_mode=False)
    except click_error as e:  # usage errors (typer >= 0.20 vendors click) in the project's one-line form
        if type(e).__name__ == "NoArgsIsHelpError":  # `stablenas` alone: the help, as click prints it
            e.show()
            sys.exit(e.exit_code)
        where = f"; see `{e.ctx.command_path} --help`" if getattr(e, "ctx", None) is not None else ""
        typer.echo(f"error: {_one_line(e.format_message()).rstrip('.')}{where}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

__all__ = ["app", "main", "json"]
