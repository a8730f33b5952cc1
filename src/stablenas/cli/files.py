"""``data download`` and ``export``: the commands that fetch or write files outside any run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, user_errors
from .options import TrustOpt, trust

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
    from ..data.download import download

    root = download(name, data_root, progress=progress)
    typer.echo(f"{name}: ready in {root}")


@app.command()
@user_errors(ValueError, KeyError)
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
    trust(trust_plugins)
    from ..export import export_network

    sizes = {"C": channels, "layers": layers, "num_classes": classes, "in_channels": in_channels}
    res = export_network(genotype, format_, out, network=network, sizes=sizes, input_size=input_size, seed=seed)
    weights = "trained weights" if res.trained else f"fresh weights (seed {seed})"
    typer.echo(f"{format_}: {', '.join(map(str, res.files))}  ({res.network} network, {weights}; max |exported - "
               f"stablenas| = {res.max_abs_diff:.1e} on a random {'x'.join(map(str, res.input_shape))} batch)")
