"""``bench``: time a search step and its peak memory against a plain DARTS in the same run
(stablenas.bench), or tune the engine options on this device (stablenas.bench.tune). The options are
checked by ``stablenas.bench.BenchOptions``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import StablenasError
from .app import app, user_errors

if TYPE_CHECKING:
    from ..bench import BenchOptions


@app.command()
@user_errors(ValueError)
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
    from ..bench import BenchOptions, format_table, run_bench

    opts = BenchOptions.parse(space=space, size=size, cells=cells, channels=channels, batch=batch, input=input_,
                              repeats=repeats, warmup=warmup, methods=methods_, plain=plain, plain_cl=plain_cl,
                              second_order=second_order, curvature=curvature, curvature_iters=curvature_iters,
                              exact=exact, plain_exact=plain_exact, memory=memory, scaling=scaling, threads=threads,
                              device=device, seed=seed, nproc=nproc, tune=tune, tune_budget=tune_budget)
    if tune:
        from ..bench import format_tune, run_tune

        res = run_tune(opts)
        typer.echo(format_tune(res))
        _write_json(res, json_out)
    elif nproc is not None:
        _data_parallel(opts, nproc, threads or 1, json_out)
    else:
        res = run_bench(opts)
        typer.echo(format_table(res))
        if _write_json(res, json_out):
            typer.echo(f"json: {json_out}")


def _data_parallel(opts: BenchOptions, nproc: int, threads: int, json_out: Path | None) -> None:
    """``bench --nproc N``: a rank that fails to start (a RuntimeError of torch.distributed) is the
    user's setting too (too many ranks for the devices, a port)."""
    from ..bench import format_dp, run_dp_bench

    try:
        res = {"data_parallel": [run_dp_bench(c, nproc, threads) for c in opts.configs()]}
    except RuntimeError as e:
        raise StablenasError(str(e)) from e
    for r in res["data_parallel"]:
        typer.echo(format_dp(r))
    _write_json(res, json_out)


def _write_json(res: dict, json_out: Path | None) -> bool:
    if json_out is None:
        return False
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(res, indent=1))
    return True
