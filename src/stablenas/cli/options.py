"""Options several commands share (one definition, so they read the same everywhere), and the
config overrides they stand for."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

TrustOpt = Annotated[bool, typer.Option("--trust-plugins", help="import the plug-ins the run's config names "
                                                                "(code: only for runs you trust)")]
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


def trust(trust_plugins: bool) -> None:
    """A reading command's own --trust-plugins (the global one is read in the app's callback)."""
    if trust_plugins:
        from ..plugins import trust_run_plugins

        trust_run_plugins(True)


def make_backend(name: str, jobs: int, address: str | None, cpus: float | None, gpus: float):
    from ..runs.backends import get_backend

    return get_backend(name, jobs=jobs, address=address, num_cpus=cpus, num_gpus=gpus)


def root_set(data_root: str | None) -> list[str]:
    """--data-root as the config override it stands for (the same key as --set data.root=DIR)."""
    return [] if data_root is None else [f"data.root={Path(data_root).expanduser().absolute()}"]


def runtime_sets(seed: int | None, device: str | None, threads: int | None) -> list[str]:
    """--seed/--device/--threads as the config overrides they stand for."""
    return [f"{key}={v}" for key, v in (("seed", seed), ("device", device), ("threads", threads)) if v is not None]
