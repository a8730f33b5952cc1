"""``stablenas analyze RUN_DIR``: rebuild a finished (or interrupted) search from its directory and
compute the diagnostics of ``stablenas.curvature`` and ``analysis.diagnostics``.

Writes ``RUN_DIR/analysis.json`` and the figures under ``RUN_DIR/plots/``. The search is rebuilt
from ``config.yaml`` with no output directory (so nothing in the run is touched) and restored from
``checkpoint.pt``: the weights, alpha and BN statistics the search ended with.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .run import Run, load_run, load_run_plugins

if TYPE_CHECKING:
    from ..search.loop import Search

ANALYSIS = "analysis.json"
PLOTS = "plots"


def load_search(run_dir: str | Path, overrides: list[str] | None = None) -> Search:
    """The run's ``Search`` (config.yaml + checkpoint.pt), detached from the run directory."""
    from ..config import config_from_dict, read_yaml
    from ..errors import RunDirError
    from ..search.loop import CHECKPOINT, Search

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    ck = run_dir / CHECKPOINT
    if not ck.exists():
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT}: nothing to analyse (was the search "
                                "started?)")
    load_run_plugins(run_dir)  # what the run names, as trusted (config_from_dict leaves out the rest)
    cfg = config_from_dict(read_yaml(cfg_file, "run's config", RunDirError) or {}, overrides)
    search = Search(cfg, None, progress=False, log=lambda _m: None)
    search.load_checkpoint(ck)
    return search


def lambda_info(metrics: list[dict], window: int = 5, k: int = 5, threshold: float = 0.75) -> dict:
    """lambda_max series of the metrics, its local average, the actual DARTS-ES stop (if the run
    stopped early) and where the rule *would* stop (simulated, as RobustDARTS's early_stop=2)."""
    from ..methods.curvature import lambda_series
    from ..methods.darts_es import first_stop, local_average

    pts = lambda_series(metrics)
    epochs = [e + 1 for e, _ in pts]
    values = [v for _, v in pts]
    la = local_average(values, window)
    sim = first_stop(values, window, k, threshold)
    simulated = None
    if sim is not None:
        simulated = {"stop_epoch": epochs[sim["stop"]], "decided_at": epochs[sim["decided"]],
                     "smoothed_epoch": epochs[sim["i"]], "ratio": sim["ratio"]}
    actual = next((r["early_stop"] for r in metrics if r.get("early_stop")), None)
    events = next((r["ada_events"] for r in reversed(metrics) if r.get("ada_events")), [])
    return {"epochs": epochs, "lambda_max": values,
            "local_average": [[e, v] for e, v in zip(epochs, la) if v is not None],
            "window": window, "k": k, "threshold": threshold, "early_stop": actual,
            "simulated_stop": simulated, "ada_events": events}


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, int keys -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def plan_run(run_dir: str | Path, *, batches: int = 2, curvature_batches: int = 1, iters: int = 20,
             spectrum: str = "auto", landscape: bool = True, grid: int = 5, grad_corr: bool = True,
             overrides: list[str] | None = None, seed: int = 0) -> dict:
    """``analyze --dry-run``: the plan and estimate of :func:`analyze_run` with these options
    (:mod:`.plan`); writes nothing."""
    from .plan import plan_search

    run = load_run(run_dir)
    t0 = time.perf_counter()
    search = load_search(run_dir, overrides)
    return plan_search(search, str(run_dir), len(run.metrics), time.perf_counter() - t0, seed=seed,
                       batches=batches, curvature_batches=curvature_batches, iters=iters, spectrum=spectrum,
                       landscape=landscape, grid=grid, grad_corr=grad_corr)


def analyze_run(run_dir: str | Path, *, batches: int = 2, curvature_batches: int = 1, iters: int = 20,
                spectrum: str = "auto", top_k: int = 30, landscape: bool = True, grid: int = 5,
                radius: float = 1.0, grad_corr: bool = True, plots: bool = True, tensorboard: bool = False,
                overrides: list[str] | None = None, log: Callable[[str], None] | None = None,
                progress: bool | None = None, seed: int = 0,
                on_plan: Callable[[dict], None] | None = None) -> dict:
    """Compute every diagnostic of a run and save ``analysis.json`` (+ plots) into it.

    ``batches``: validation batches for accuracies and the landscape (eval batch size);
    ``curvature_batches``: batches of the search batch size for the Hessian (BN in train mode, as
    RobustDARTS); ``spectrum``: ``"auto"`` computes the exact spectrum when alpha has at most
    ``plan.EXACT_MAX_ALPHA`` entries (else Lanczos' top Ritz values stand for it), ``"yes"``/``"no"``
    force it. ``progress``: bars for the Lanczos HVPs, the exact Hessian's rows and the landscape
    points (default: when stderr is a terminal, not under CI); ``seed``: the Lanczos start vector
    and the landscape's random direction; ``on_plan``: given the plan and estimate
    (:func:`plan_run`'s) before anything is computed.
    """
    from ..progress import progress_enabled
    from .plan import plan_search

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    t0 = time.perf_counter()
    search = load_search(run_dir, overrides)
    if on_plan is not None:
        on_plan(plan_search(search, str(run_dir), len(run.metrics), time.perf_counter() - t0, seed=seed,
                            batches=batches, curvature_batches=curvature_batches, iters=iters, spectrum=spectrum,
                            landscape=landscape, grid=grid, grad_corr=grad_corr))
    out = _measure(run, search, log or (lambda _m: None), progress_enabled(progress), batches=batches,
                   curvature_batches=curvature_batches, iters=iters, spectrum=spectrum, top_k=top_k,
                   landscape=landscape, grid=grid, radius=radius, grad_corr=grad_corr, seed=seed)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out = _clean(out)
    _save(run, out, plots, tensorboard)
    return out


def _measure(run: Run, search: Search, log: Callable[[str], None], show: bool, *, batches: int,
             curvature_batches: int, iters: int, spectrum: str, top_k: int, landscape: bool, grid: int,
             radius: float, grad_corr: bool, seed: int) -> dict[str, Any]:
    """The analysis of :func:`analyze_run` (its keys in the order ``analysis.json`` lists them),
    computed on the rebuilt search; ``log`` names each slow step before it starts."""
    from ..progress import bar
    from . import diagnostics as dg

    out: dict[str, Any] = {"run": str(run.path), "status": run.status, "epochs_done": len(run.metrics),
                           "space": search.space.name, "n_alpha": search.arch.num_alpha(), "seed": seed}
    returned = run.genotype
    current = search.genotype()
    out["genotype"] = returned.to_dict() if returned else None
    out["genotype_current_alpha"] = current.to_dict()

    log("discretisation drop ...")
    out["discretization"] = dg.discretization_drop(search, current, max_batches=batches)

    log("curvature ...")
    out["curvature"] = _curvature(search, curvature_batches, iters, spectrum, top_k, seed, show)

    if landscape:
        log("landscape ...")
        with bar(grid * grid, "landscape", show, unit="point") as b:
            out["landscape"] = dg.landscape(search, grid=grid, radius=radius, batches=batches, seed=seed,
                                            on_point=b.update)
    out["alpha_distance"] = dg.alpha_distance(run.metrics)
    if returned is not None:
        out["cells"] = dg.cell_stats(returned)
    if grad_corr:
        log("gradient correlation ...")
        gc = dg.gradient_correlation(search, batches=1)
        out["gradient_correlation_skipped" if "skipped" in gc else "gradient_correlation"] = gc.get("skipped", gc)
    out["lambda"] = lambda_info(run.metrics)
    return out


def _save(run: Run, out: dict[str, Any], plots: bool, tensorboard: bool) -> None:
    """``analysis.json`` and, when asked, the figures and TensorBoard scalars into the run directory;
    ``out["tensorboard"]`` says whether the scalars were written (not a part of the file)."""
    from ..utils import atomic_write_text

    atomic_write_text(run.path / ANALYSIS, json.dumps(out, indent=1) + "\n")
    if plots:
        write_plots(run, out, run.path / PLOTS)
    if tensorboard:
        out["tensorboard"] = write_tensorboard(run, out)


def _curvature(search: Any, batches: int, iters: int, spectrum: str, top_k: int, seed: int,
               show: bool) -> dict[str, Any]:
    """lambda_max by Lanczos on ``batches`` search-size batches (BN in train mode, as RobustDARTS) and,
    when asked or small enough, the exact spectrum."""
    from .. import curvature as cv
    from ..progress import bar
    from .plan import wants_exact

    obj = cv.AlphaObjective.from_search(search, batches=batches, bn="train")
    with bar(iters, "lambda_max (Lanczos HVPs)", show, unit="hvp") as b:
        cur = cv.dominant_eigenvalue(obj, iters=iters, seed=seed, on_hvp=b.update)
    curv: dict[str, Any] = {"lambda_max": cur.lambda_max, "iters": iters, "hvps": cur.hvps,
                            "seconds": round(cur.seconds, 3), "batches": batches, "bn": "train",
                            "ritz_top": cur.ritz[:10]}
    if wants_exact(spectrum, search.arch.num_alpha()):
        with bar(search.arch.num_alpha(), "exact Hessian (rows)", show, unit="row") as b:
            _, ex = cv.exact_spectrum(obj, on_hvp=b.update)
        curv.update({"lambda_max_exact": ex.lambda_max, "spectrum_top": ex.top_k(top_k),
                     "spectrum_seconds": round(ex.seconds, 3), "negative_share": sum(
                         1 for v in ex.eigenvalues if v < 0) / len(ex.eigenvalues)})
    return curv


def end_curvature(analysis: dict | None) -> dict | None:
    """lambda_max that ``analyze`` computed at the end of the search (epoch = epochs done), or None."""
    c = (analysis or {}).get("curvature") or {}
    if not isinstance(c.get("lambda_max"), (int, float)):
        return None
    return {"epoch": int(analysis.get("epochs_done") or 0), "lambda_max": c["lambda_max"],
            "exact": c.get("lambda_max_exact")}


def run_skeleton(run: Run):
    """The skeleton of the run's space (of its genotype where the space is not registered here)."""
    from ..registry import DEFAULT_SKELETON, SKELETONS, SPACES
    from ..skeletons import skeleton_of

    space = run.config.get("space", "darts")
    if space in SPACES:
        return skeleton_of(space)
    return run.genotype.skeleton if run.genotype is not None else SKELETONS[DEFAULT_SKELETON]


# the numbers every search record carries (curves, lambda panel); any other number is a method's own
CORE_KEYS = frozenset({"epoch", "train_loss", "val_loss", "lr", "seconds", "lambda_max"})


def method_metrics(metrics: list[dict], skeleton) -> dict[str, list[tuple[int, float]]]:
    """Per extra numeric key of the records (a method's or plug-in's own, a lookup's test accuracy):
    its (epoch, value) series."""
    m = skeleton.metric
    core = CORE_KEYS | {f"train_{m}", f"val_{m}", "train_acc", "val_acc"}
    out: dict[str, list[tuple[int, float]]] = {}
    for r in metrics:
        for k, v in r.items():
            if k not in core and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, []).append((int(r["epoch"]), float(v)))
    return out


def figures(run: Run, analysis: dict | None) -> dict[str, bytes]:
    """Every figure of a run as PNG bytes, keyed by name (shared by ``analyze`` and the report);
    a figure with nothing to show is left out."""
    from ..registry import SPACES
    from . import cells, plots

    figs: dict[str, bytes] = {}
    m = run.metrics
    title = run.path.name
    sk = run_skeleton(run)
    if m:
        figs["curves"] = plots.curves(m, title, metric=sk.metric, label=sk.metric_label)
        space = SPACES.get(run.config.get("space", "darts"))
        for ct in space.cell_types if space is not None else ():
            if all("op_weights" in r and ct in r["op_weights"] for r in m):
                figs[f"op_weights_{ct}"] = plots.op_weights(m, space.edge_ops, ct, edges=space.edges)
        extra = method_metrics(m, sk)
        if extra:
            figs["method_metrics"] = plots.series_grid(extra, len(m))
    lam = (analysis or {}).get("lambda") or lambda_info(m)
    end = end_curvature(analysis)
    if lam["lambda_max"] or end:
        es = applies_early_stop(run.config)
        figs["lambda"] = plots.lambda_plot(list(zip(lam["epochs"], lam["lambda_max"])),
                                           [tuple(p) for p in lam["local_average"]], lam.get("early_stop"),
                                           lam.get("simulated_stop") if es else None, lam.get("ada_events", []),
                                           title, analysis=end, last_epoch=len(m))
    if run.genotype is not None:
        for ct in cells.cell_types(run.genotype):
            figs[f"cell_{ct}"] = cells.draw_cell(run.genotype, ct)[0]
    a = analysis or {}
    if a.get("landscape"):
        figs["landscape"] = plots.landscape_plot(a["landscape"])
    ad = a.get("alpha_distance")
    if ad is None and m:
        from .diagnostics import alpha_distance

        ad = alpha_distance(m)
    if ad and ad.get("distance"):
        figs["alpha_distance"] = plots.alpha_distance_plot(ad)
    spec = (a.get("curvature") or {}).get("spectrum_top")
    if spec:
        figs["spectrum"] = plots.spectrum_plot(spec)
    if a.get("gradient_correlation"):
        figs["grad_corr"] = plots.grad_corr_plot(a["gradient_correlation"])
    return figs


def applies_early_stop(cfg: dict) -> bool:
    """Whether one of the run's methods applies the DARTS-ES rule (DARTS-ES itself, DARTS-ADA)."""
    from ..methods.darts_es import DartsES
    from ..registry import METHODS

    names = [m.get("name") for m in cfg.get("methods") or [] if isinstance(m, dict)]
    return any(n in METHODS and issubclass(METHODS[n], DartsES) for n in names)


def write_plots(run: Run, analysis: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in figures(run, analysis).items():
        p = folder / f"{name}.png"
        p.write_bytes(png)
        paths.append(p)
    return paths


def write_tensorboard(run: Run, analysis: dict) -> bool:
    """Scalars per epoch into RUN_DIR/tensorboard when ``tensorboard`` is importable (optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    w = SummaryWriter(str(run.path / "tensorboard"))
    try:
        for r in run.metrics:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "lambda_max"):
                if isinstance(r.get(key), (int, float)):
                    w.add_scalar(f"search/{key}", r[key], r["epoch"])
        disc = analysis.get("discretization") or {}
        for key in ("acc_drop", "loss_increase"):
            if key in disc and disc[key] is not None:
                w.add_scalar(f"analysis/{key}", disc[key], len(run.metrics))
    finally:
        w.close()
    return True


def load_analysis(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / ANALYSIS
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
