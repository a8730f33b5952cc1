"""``spaces``, ``presets``, ``methods`` and ``info``: what the package holds, and what a genotype
costs."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app, user_errors
from .options import TrustOpt, trust


@app.command()
def spaces() -> None:
    """List the search spaces with their op sets and sizes."""
    from ..listing import table
    from ..spaces.catalog import list_spaces

    rows = []
    for s in list_spaces():
        ops = ", ".join(s.all_ops()) if s.is_uniform() else f"per-edge sets over {', '.join(s.all_ops())}"
        rows += [(s.name, s.skeleton, str(s.n_nodes), str(s.n_edges), f"{s.num_architectures():.3g}", s.description),
                 ("", "", "", "", "", f"ops: {ops}")]
    typer.echo(table(("space", "skeleton", "nodes", "edges", "archs", "description"), rows))


@app.command()
def presets() -> None:
    """List the YAML presets shipped with the package."""
    from ..config import PRESET_DIR, list_presets, read_yaml
    from ..listing import table

    rows = [(name, (read_yaml(PRESET_DIR / f"{name}.yaml") or {}).get("description", "")) for name in list_presets()]
    typer.echo(table(("preset", "description"), rows))


@app.command()
def methods(name: Annotated[str | None, typer.Argument(
        help="a method: print its paper, every option (type, default, meaning) and its preset")] = None) -> None:
    """List the search methods with a one-line description and their preset; with NAME, the method's page."""
    from ..listing import method_page, table
    from ..methods import METHODS

    if name is not None:
        typer.echo(method_page(METHODS[name]))
        return
    rows = [(n, cls.preset or "(no preset)", cls.description + ("" if cls.preset else
                                                                f"; add it to a config: methods: [{{name: {n}}}]"))
            for n, cls in METHODS.items()]
    typer.echo(table(("method", "preset", "description"), rows))
    typer.echo("\n`stablenas methods NAME`: a method's paper, options and defaults")


def _count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


@app.command()
@user_errors(ValueError, KeyError)
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
    from ..evaluate.train import resolve_genotype
    from ..networks.published import PUBLISHED
    from .models import InfoOptions

    trust(trust_plugins)
    size = InfoOptions.parse(genotype=genotype, listing=list_, input_size=input_size).input_size
    if list_:
        for name, g in PUBLISHED.items():
            typer.echo(f"{name:22s} {g.space:6s} {g.extra.get('reported', '')}")
        return
    g = resolve_genotype(genotype)
    lines = g.skeleton.info_lines(g, genotype, dict(network=network, channels=channels, layers=layers,
                                                    classes=classes, input_size=size))
    for line in lines if lines is not None else _profile_lines(g, genotype, network, channels, layers, classes, size):
        typer.echo(line)


def _profile_lines(g, genotype: str, network: str | None, channels: int | None, layers: int | None,
                   classes: int | None, size: int | tuple[int, ...] | None) -> list[str]:
    """Parameters and multiply-adds of a cell skeleton's evaluation network (a run directory: for
    the run's images and classes)."""
    from ..evaluate.train import DATASET_SHAPES, run_data
    from ..networks.profile import info as profile_info

    data = run_data(genotype)
    if data.get("dataset") in DATASET_SHAPES:
        shape_, n_classes = DATASET_SHAPES[data["dataset"]]
        size = size if size is not None else shape_
        classes = classes if classes is not None else n_classes
    net = g.skeleton.resolve_eval_network(network)
    r = profile_info(g, net, C=channels, layers=layers, num_classes=classes, input_size=size)
    shape = "x".join(str(s) for s in r["input_size"])
    return [f"{genotype}: {r['network']} network, C={r['C']}, {r['layers']} {r['layers_unit']}, "
            f"{r['num_classes']} classes, input {shape}",
            f"parameters:    {_count(r['params'])} ({r['params']:,}; auxiliary head excluded)",
            f"multiply-adds: {_count(r['macs'])} ({r['macs']:,})"]
