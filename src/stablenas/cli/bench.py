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
from .options import ThreadsOpt

if TYPE_CHECKING:
    from ..bench import BenchOptions


SpaceOpt = Annotated[str, typer.Option("--space", help="search space (see `stablenas spaces`)")]
SizeOpt = Annotated[str | None, typer.Option(
    "--size", help="comma-separated named sizes: paper (8 cells x 16 channels, 3x32x32, batch 64), "
                   "cpu-study (5 x 8, 1x28x28, batch 64); default both, or only a custom size when "
                   "--cells/--channels/--batch/--input are given (they override a named size's values)")]
CellsOpt = Annotated[int | None, typer.Option("--cells", help="cells (nb201: cells per stage)")]
ChannelsOpt = Annotated[int | None, typer.Option("--channels", help="initial channels C")]
BatchOpt = Annotated[int | None, typer.Option("--batch", help="batch size")]
InputOpt = Annotated[str | None, typer.Option("--input", help="synthetic image shape CxHxW")]
RepeatsOpt = Annotated[int, typer.Option("--repeats", help="timed repeats (median reported)")]
WarmupOpt = Annotated[int, typer.Option("--warmup", help="untimed iterations first")]
MethodsOpt = Annotated[str | None, typer.Option(
    "--methods", help="comma-separated presets to time; 'all' (default) = every preset with a method, 'none' = skip")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="write the full result as JSON")]
PlainOpt = Annotated[bool, typer.Option("--plain/--no-plain", help="also time plain DARTS")]
PlainClOpt = Annotated[bool, typer.Option("--plain-cl/--no-plain-cl", help="also time plain DARTS in channels_last")]
SecondOrderOpt = Annotated[bool, typer.Option("--second-order/--no-second-order")]
CurvatureOpt = Annotated[bool, typer.Option("--curvature/--no-curvature", help="lambda_max, Lanczos")]
CurvatureItersOpt = Annotated[int, typer.Option("--curvature-iters", metavar="<int>",
                                                help="most Lanczos steps (HVPs) per lambda_max")]
ExactOpt = Annotated[bool, typer.Option("--exact/--no-exact", help="exact Hessian (HVP per alpha)")]
PlainExactOpt = Annotated[bool, typer.Option("--plain-exact/--no-plain-exact",
                                             help="exact Hessian of the plain model too (slow)")]
MemoryOpt = Annotated[bool, typer.Option("--memory/--no-memory", help="peak memory (subprocesses)")]
ScalingOpt = Annotated[bool, typer.Option("--scaling/--no-scaling", help="step time at 2x batch, channels and cells")]
BenchDeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
NprocOpt = Annotated[int | None, typer.Option(
    "--nproc", help="instead: a first-order step on N data-parallel ranks x --threads (default 1) against one "
                    "process x N*threads at the same global batch (on CUDA: N devices against one)")]
TuneOpt = Annotated[bool, typer.Option(
    "--tune", help="instead: time the engine options that matter on this device (first-order step; default "
                   "size cpu-study on CPU, paper on CUDA) and store the fastest in the user's cache, "
                   "where searches on this device read it")]
TuneBudgetOpt = Annotated[float, typer.Option("--tune-budget", metavar="<seconds>",
                                              help="with --tune: stop trying options after this long")]


@app.command()
@user_errors(ValueError)
def bench(space: SpaceOpt = "darts", size: SizeOpt = None, cells: CellsOpt = None, channels: ChannelsOpt = None,
          batch: BatchOpt = None, input_: InputOpt = None, repeats: RepeatsOpt = 3, warmup: WarmupOpt = 1,
          methods_: MethodsOpt = "all", json_out: JsonOpt = None, plain: PlainOpt = True, plain_cl: PlainClOpt = True,
          second_order: SecondOrderOpt = True, curvature: CurvatureOpt = True,
          curvature_iters: CurvatureItersOpt = 20, exact: ExactOpt = True, plain_exact: PlainExactOpt = False,
          memory: MemoryOpt = True, scaling: ScalingOpt = False, threads: ThreadsOpt = None,
          device: BenchDeviceOpt = "auto", seed: Annotated[int, typer.Option("--seed")] = 0, nproc: NprocOpt = None,
          tune: TuneOpt = False, tune_budget: TuneBudgetOpt = 120.0) -> None:
    """Time a search step (1st/2nd order, every method preset, lambda_max, exact Hessian) and its peak
    memory, against a plain reimplementation of DARTS in the same run; prints a table, --json for all."""
    from ..bench import BenchOptions

    opts = BenchOptions.parse(space=space, size=size, cells=cells, channels=channels, batch=batch, input=input_,
                              repeats=repeats, warmup=warmup, methods=methods_, plain=plain, plain_cl=plain_cl,
                              second_order=second_order, curvature=curvature, curvature_iters=curvature_iters,
                              exact=exact, plain_exact=plain_exact, memory=memory, scaling=scaling, threads=threads,
                              device=device, seed=seed, nproc=nproc, tune=tune, tune_budget=tune_budget)
    if tune:
        _tune(opts, json_out)
    elif nproc is not None:
        _data_parallel(opts, nproc, threads or 1, json_out)
    else:
        _timing(opts, json_out)


def _timing(opts: BenchOptions, json_out: Path | None) -> None:
    """The step-time and memory table of every engine and method."""
    from ..bench import format_table, run_bench

    res = run_bench(opts)
    typer.echo(format_table(res))
    if _write_json(res, json_out):
        typer.echo(f"json: {json_out}")


def _tune(opts: BenchOptions, json_out: Path | None) -> None:
    """``bench --tune``: the engine options timed on this device, the fastest stored."""
    from ..bench import format_tune, run_tune

    res = run_tune(opts)
    typer.echo(format_tune(res))
    _write_json(res, json_out)


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
