"""Command-line interface (typer). Every command is a thin shell over a Python API function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="stablenas: stable differentiable architecture search (DARTS and friends).")


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _user_errors():
    from .config import ConfigError
    from .data import DatasetNotFoundError
    from .genotype import GenotypeError
    from .search.loop import RunExistsError

    return (ConfigError, DatasetNotFoundError, GenotypeError, RunExistsError, FileNotFoundError)


@app.command()
def search(
    config: Annotated[str, typer.Argument(help="YAML config file or preset name (see `stablenas presets`)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set optim.epochs=10")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="progress bar (default: when a terminal)")] = None,
) -> None:
    """Run an architecture search and write config.yaml, metrics.jsonl, genotype.json, checkpoint.pt."""
    from .config import load_config
    from .search.loop import Search

    try:
        if resume and config and not Path(config).exists() and (out / "config.yaml").exists():
            config = str(out / "config.yaml")
        cfg = load_config(config, set_)
        result = Search(cfg, out, resume=resume, progress=progress).run()
    except _user_errors() as e:
        _fail(str(e))
    typer.echo(f"genotype: {result.genotype.to_json()}")
    typer.echo(f"run directory: {out}")


@app.command()
def spaces() -> None:
    """List the search spaces with their op sets and sizes."""
    from .spaces.registry import list_spaces

    for s in list_spaces():
        ops = ", ".join(s.all_ops()) if s.is_uniform() else f"per-edge sets over {', '.join(s.all_ops())}"
        typer.echo(f"{s.name:10s} {s.skeleton:6s} nodes={s.n_nodes} edges={s.n_edges} "
                   f"archs={s.num_architectures():.3g}  {s.description}")
        typer.echo(f"{'':10s} ops: {ops}")


@app.command()
def presets() -> None:
    """List the YAML presets shipped with the package."""
    from .config import PRESET_DIR, list_presets

    import yaml

    for name in list_presets():
        raw = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {}
        typer.echo(f"{name:18s} {raw.get('description', '')}")


@app.command()
def methods() -> None:
    """List the search methods with a one-line description and their preset."""
    from .methods import METHODS

    typer.echo(f"{'method':16s} {'preset':16s} description")
    for name, cls in METHODS.items():
        typer.echo(f"{name:16s} {cls.preset or '-':16s} {cls.description}")


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Summarise a run: config, progress, last metrics and the genotype."""
    from .analysis.run import load_run

    try:
        run = load_run(run_dir)
    except _user_errors() as e:
        _fail(str(e))
    cfg = run.config
    typer.echo(f"run: {run_dir}")
    typer.echo(f"space: {cfg.get('space')}  dataset: {cfg.get('data', {}).get('dataset')}  "
               f"methods: {', '.join(m['name'] for m in cfg.get('methods', [])) or 'darts'}  "
               f"update: {cfg.get('search', {}).get('update')}  seed: {cfg.get('seed')}")
    total = cfg.get("optim", {}).get("epochs")
    typer.echo(f"epochs: {len(run.metrics)}/{total}  status: {run.status}")
    if run.metrics:
        m = run.metrics[-1]
        typer.echo(f"last epoch: train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}  "
                   f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}")
    if run.genotype is not None:
        typer.echo(f"genotype: {run.genotype.to_json()}")


def main(argv: list[str] | None = None) -> None:
    try:
        app(argv)
    except KeyboardInterrupt:
        typer.echo("interrupted; the last checkpoint is kept (resume with --resume)", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

__all__ = ["app", "main", "json"]
