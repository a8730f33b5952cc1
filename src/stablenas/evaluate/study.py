"""A collapse study: spaces x methods x seeds, every found cell retrained, the papers' analyses over all runs.

The claim the stabilisers answer (robust-darts Sec. 3-4, Fig. 3/4/13; SDARTS, iDARTS, Single-DARTS on
epochs) is a *long-search* effect: as the inner objective overfits, DARTS's cells fill with
parameter-free ops, the dominant eigenvalue of the validation Hessian w.r.t. alpha grows, the
accuracy lost at discretisation grows and the retrained cell gets worse. One short search per
method shows none of that; a study does:

- a **protocol** (YAML, :class:`StudyProtocol`; shipped ones in ``stablenas/protocols/``) names a base
  search config, the spaces, the methods (each its ``--set`` overrides of the base), the seeds, the
  search budget (in the base/``set``), the lambda_max tracker and the retraining budget;
- every (seed, space, method) is one **unit**: a resumable search run directory, the accuracy drop at
  discretisation (robust-darts Sec. 4.2, same weights), a resumable retraining of the returned cell
  from scratch (or, in a space with a ground-truth table such as S5, its table test accuracy), and a
  small ``result.json``. Units are queued **seed-major** (every method of seed 0 first), so a study
  stopped half-way still compares every method on the same seeds;
- the whole study resumes after any kill (re-run the same command); a **records** directory
  (``--records``, small files that can live in git: ``config.yaml``, ``metrics.jsonl``,
  ``genotype.json``, ``result.json`` per unit, no checkpoints) receives every finished unit and
  supplies finished units to a fresh output directory, checked against the protocol;
- :func:`summarise` writes ``results.json``, ``table.md`` and ``plots/``: parameter-free share per
  epoch per method (mean +- std over seeds), lambda_max per epoch and its Pearson correlation with the
  retrained test error over all units (robust-darts Fig. 4: 0.867), the discretisation drop per
  method, S5 test regret per epoch, search cost relative to DARTS.

Where the units run is a backend (:mod:`stablenas.evaluate.backends`: local processes or Ray).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import ConfigModel, Seed, config_from_dict, format_validation_error, load_config, read_yaml
from ..errors import ConfigError, RunDirError
from ..genotype import Genotype
from .backends import Backend, LocalBackend

__all__ = [
    "PROTOCOL_DIR",
    "RetrainSpec",
    "StudyProtocol",
    "Unit",
    "estimate_cost",
    "format_table",
    "list_protocols",
    "load_protocol",
    "pearson",
    "run_study",
    "study_units",
    "summarise",
    "summary_only",
]

PROTOCOL_DIR = Path(__file__).resolve().parent.parent / "protocols"
RECORD_FILES = ("config.yaml", "metrics.jsonl", "genotype.json")  # + result.json, written last
SEARCH_RUNTIME_KEYS = ("device", "threads", "description")
TRAIN_RUNTIME_KEYS = ("device", "threads")


# --------------------------------------------------------------------------------------------
# the protocol


class RetrainSpec(ConfigModel):
    """Retraining of every found cell from scratch (a :class:`~stablenas.evaluate.train.TrainConfig`)."""

    preset: str | None = None  # a training preset (darts, darts-small, nb201) or none: the fields below only
    set: dict[str, Any] = {}  # TrainConfig fields (the S5-table protocol is an example of a CPU budget)
    spaces: list[str] | None = None  # None: every space without a ground-truth lookup table
    # also retrain the cell derived at these search epochs (iDARTS Fig. 7: accuracy of the cell taken at
    # epoch e), for the methods in ``at_epochs_methods`` (None: every method)
    at_epochs: list[int] = []
    at_epochs_methods: list[str] | None = None

    @field_validator("at_epochs")
    @classmethod
    def _positive_epochs(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v) or len(set(v)) != len(v):
            raise ValueError(f"at_epochs {v}: distinct search epochs, each >= 1")
        return sorted(v)


class EstimateSpec(ConfigModel):
    """Measured figures for the cost estimate (``--plan``) until units of the study have finished."""

    epoch_seconds: dict[str, float] = {}  # DARTS 1st order, seconds per search epoch, per space
    retrain_seconds: dict[str, float] = {}  # one retraining, per space
    relative: dict[str, float] = {}  # per method: cost of a search epoch relative to DARTS
    track_seconds: dict[str, float] = {}  # one lambda_max measurement of the tracker, per space
    measured: str = ""  # where the figures come from (command, date, load)


class StudyProtocol(ConfigModel):
    name: str
    description: str = ""
    base: str = "quickstart"  # search preset or YAML path every unit starts from
    set: list[str] = []  # --set overrides of the base, for every unit (the search budget)
    space_set: dict[str, list[str]] = {}  # per space: --set overrides after ``set`` (e.g. its dataset)
    spaces: list[str] = Field(min_length=1)
    seeds: list[Seed] = Field(min_length=1)
    methods: dict[str, list[str]] = Field(min_length=1)  # name -> its --set overrides, in queue order
    track: dict[str, Any] | None = {"name": "hessian", "iters": 10, "record_alpha": False}
    retrain: RetrainSpec | None = None
    discretization_batches: int | None = Field(None, gt=0)  # None: the whole validation half
    reference: str = "darts"  # search cost is reported relative to this method
    estimate: EstimateSpec = EstimateSpec()

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"repeated seeds {v}")
        return v

    @field_validator("spaces")
    @classmethod
    def _unique_spaces(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"repeated spaces {v}")
        return v

    @model_validator(mode="after")
    def _space_set_names_spaces(self) -> StudyProtocol:
        extra = sorted(set(self.space_set) - set(self.spaces))
        if extra:
            raise ValueError(f"space_set names {', '.join(extra)}, not in spaces {self.spaces}")
        return self

    def to_dict(self) -> dict:
        d = self.model_dump(mode="json")
        if not d["space_set"]:  # protocols (and records) written before space_set existed compare equal
            del d["space_set"]
        return d


def list_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def load_protocol(name_or_path: str | Path, overrides: list[str] | None = None) -> StudyProtocol:
    """A protocol YAML file or a shipped protocol's name (``cpu-collapse``, ``gpu-paper``), plus
    ``--set`` overrides of its keys (``seeds=[0]``, ``retrain.set.epochs=1``)."""
    from ..config import apply_overrides

    p = Path(name_or_path)
    if not p.is_file():
        cand = PROTOCOL_DIR / f"{name_or_path}.yaml"
        if not cand.is_file():
            raise ConfigError(f"no protocol file {str(name_or_path)!r} and no shipped protocol of that name; "
                              f"shipped: {', '.join(list_protocols())}")
        p = cand
    raw = read_yaml(p, "protocol")
    if raw is None:
        raise ConfigError(f"{p}: the protocol is empty; a protocol is a mapping (name, spaces, seeds, methods, ...)")
    raw = apply_overrides(raw, overrides, example="seeds=[0,1]")
    try:
        return StudyProtocol.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{p}: {format_validation_error(e, StudyProtocol, prefix='invalid protocol')}") from None


# --------------------------------------------------------------------------------------------
# units


@dataclass
class Unit:
    """One (seed, space, method): its search config and (optional) retraining config, as dicts."""

    name: str
    seed: int
    space: str
    method: str
    search: dict
    train: dict | None  # None: the space's ground-truth lookup gives the test accuracy
    at_epochs: tuple[int, ...] = ()  # search epochs whose derived cells are retrained too

    def key(self) -> str:
        return self.name


def _has_lookup(space: str) -> bool:
    from ..registry import LOOKUPS

    return LOOKUPS.get(space) is not None


def study_units(protocol: StudyProtocol) -> list[Unit]:
    """Every unit, validated, in queue order: seed-major, then space, then method (protocol order)."""
    from .train import train_config

    units = []
    for seed in protocol.seeds:
        for space in protocol.spaces:
            for method, sets in protocol.methods.items():
                where = f"protocol {protocol.name}, method {method}, space {space}"
                try:
                    cfg = load_config(protocol.base, [*protocol.set, f"space={space}",
                                                      *protocol.space_set.get(space, []), f"seed={seed}", *sets])
                    d = cfg.to_dict()
                    if protocol.track:
                        d["methods"] = [*d["methods"], dict(protocol.track)]
                        d = config_from_dict(d).to_dict()
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
                train = None
                rt = protocol.retrain
                if rt is not None and (space in rt.spaces if rt.spaces is not None else not _has_lookup(space)):
                    try:
                        tc = train_config(rt.preset, dict(rt.set), dataset=d["data"]["dataset"],
                                          data_root=d["data"].get("root"))
                    except ConfigError as e:
                        raise ConfigError(f"{where}: retrain: {e}") from None
                    train = tc.model_dump(mode="json")
                at = ()
                if train is not None and (rt.at_epochs_methods is None or method in rt.at_epochs_methods):
                    at = tuple(e for e in rt.at_epochs if e < d["optim"]["epochs"])  # the last: the unit's own
                units.append(Unit(f"{space}-{method}-seed{seed}", seed, space, method, d, train, at))
    return units


# --------------------------------------------------------------------------------------------
# one unit (a top-level function: it runs in spawned processes and Ray workers)


def param_free_share(genotype: Genotype, cell_type: str | None = "normal") -> float | None:
    """Share of parameter-free ops (skip, pooling, none, noise) in one cell (``None``: all cells);
    ``None`` where the skeleton does not define the share (the recurrent cell)."""
    from ..spaces.ops import is_parameter_free

    if not genotype.skeleton.has_param_free_share:
        return None
    types = genotype.cell_types()
    ct = cell_type if cell_type in types else None
    ops = genotype.ops(ct)
    return sum(map(is_parameter_free, ops)) / len(ops) if ops else None


def _lookup_test_acc(cfg_dict: dict, genotype: Genotype) -> float | None:
    """The space's ground-truth test accuracy of ``genotype`` (S5 table, NAS-Bench-201), if it has one."""
    return _lookup(cfg_dict, genotype).get("test_acc")


def _lookup(cfg_dict: dict, genotype: Genotype) -> dict:
    """What the space's lookup adds to a record of ``genotype`` (``test_acc``, ``test_regret``, ...)."""
    from types import SimpleNamespace

    from ..registry import LOOKUPS
    from ..spaces.catalog import get_space

    lookup = LOOKUPS.get(cfg_dict["space"])
    if lookup is None:
        return {}
    cfg = config_from_dict(cfg_dict)
    record: dict = {"genotype": genotype.to_dict()}
    lookup(SimpleNamespace(cfg=cfg, space=get_space(cfg.space), log=lambda _m: None, notes=set()), record)
    return record


def curves(metrics: Sequence[dict]) -> dict[str, list]:
    """Per-epoch series of a search: normal-cell and all-cells parameter-free share of the cell derived
    at that epoch, lambda_max (where measured), test regret (spaces with a lookup), train/val accuracy."""
    out: dict[str, list] = {"epoch": [], "share_normal": [], "share_all": [], "lambda_max": [],
                            "test_regret": [], "train_acc": [], "val_acc": []}
    for r in metrics:
        g = Genotype.from_dict(r["genotype"]) if r.get("genotype") else None
        out["epoch"].append(int(r["epoch"]))
        out["share_normal"].append(param_free_share(g) if g else None)
        out["share_all"].append(param_free_share(g, None) if g else None)
        lam = r.get("lambda_max")
        out["lambda_max"].append(lam if isinstance(lam, (int, float)) and math.isfinite(lam) else None)
        out["test_regret"].append(r.get("test_regret"))
        out["train_acc"].append(r.get("train_acc"))
        out["val_acc"].append(r.get("val_acc"))
    return out


def run_unit(args: tuple[str, dict, dict | None, str, int | None, int | None, tuple[int, ...]]) -> dict:
    """Search (resumed if interrupted), discretisation drop, retraining (resumed) -> ``result.json``.

    A search that diverges is a result, not a crash of the study: the unit returns ``{"failed": why}``
    (also written to ``failed.json``), the study goes on, and the next run of the study tries it again."""
    from ..errors import DivergedError

    try:
        return _run_unit(args)
    except DivergedError as e:
        from ..utils import atomic_write_text

        msg = " ".join(str(e).split())
        atomic_write_text(Path(args[3]) / "failed.json", json.dumps({"name": args[0], "failed": msg}) + "\n")
        return {"name": args[0], "failed": msg}


def _run_unit(args: tuple[str, dict, dict | None, str, int | None, int | None, tuple[int, ...]]) -> dict:
    name, search_cfg, train_cfg, unit_dir, threads, disc_batches, at_epochs = args
    import torch

    from ..analysis.analyze import load_search
    from ..analysis.diagnostics import discretization_drop
    from ..analysis.run import load_run
    from ..rundir import RunDir
    from ..search.loop import Search
    from ..utils import atomic_write_text
    from .train import TrainConfig, train_genotype

    if threads:
        torch.set_num_threads(threads)
    unit = Path(unit_dir)
    done = unit / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    quiet = lambda _m: None  # noqa: E731
    sdir = unit / "search"
    t0 = time.perf_counter()
    if not (sdir / "genotype.json").exists():
        cfg = config_from_dict(search_cfg)
        resume = RunDir(sdir, kind="search", config_name="config.yaml").is_run()
        Search(cfg, sdir, resume=resume, progress=False, log=quiet, loggers="none").run()
    run = load_run(sdir)
    disc_file = unit / "discretization.json"
    if disc_file.exists():
        disc = json.loads(disc_file.read_text())
    else:
        search = load_search(sdir)
        current = search.genotype()  # once: iDARTS's decorrelation rule is a pass over held-out images
        disc = discretization_drop(search, current, max_batches=disc_batches)
        disc.pop("genotype", None)
        # the same with batch statistics: the running ones were gathered under the op mixture, and a
        # discretised cell's activations have other statistics (eval-mode drops of 63-74 points on S5)
        batch_bn = discretization_drop(search, current, max_batches=disc_batches, bn="train")
        disc["batch_bn"] = {k: v for k, v in batch_bn.items() if k != "genotype"}
        atomic_write_text(disc_file, json.dumps(disc) + "\n")
    genotype = run.genotype
    result: dict[str, Any] = {
        "name": name,
        "search_config": search_cfg,
        "train_config": train_cfg,
        "genotype": genotype.to_dict(),
        "epochs": len(run.metrics),
        "search_seconds": round(sum(m.get("seconds", 0.0) for m in run.metrics), 3),
        "track_seconds": round(sum(m.get("lambda_seconds") or 0.0 for m in run.metrics), 3),
        "share_normal": param_free_share(genotype),
        "share_all": param_free_share(genotype, None),
        "supernet_val_acc": run.metrics[-1].get("val_acc") if run.metrics else None,
        "discretization": disc,
        "curves": curves(run.metrics),
    }
    lam = [v for v in result["curves"]["lambda_max"] if v is not None]
    result["lambda_max_final"] = lam[-1] if lam else None
    if train_cfg is not None:
        tdir = unit / "train"
        resume = RunDir(tdir, kind="train", config_name="train.json").is_run()
        tr = train_genotype(genotype, TrainConfig.model_validate(train_cfg), tdir, resume=resume, progress=False,
                            log=quiet, loggers="none")
        result.update(test_acc=tr["test_acc"], test_source="retrained", params=tr.get("params"),
                      train_seconds=tr.get("seconds"))
        if at_epochs:
            result["test_acc_at_epoch"] = _retrain_at_epochs(run.metrics, at_epochs, train_cfg, unit)
    else:
        result.update(test_acc=_lookup_test_acc(search_cfg, genotype), test_source="lookup", params=None,
                      train_seconds=0.0)
    # of the returned cell (DARTS-ES returns an earlier epoch's, RS-ws its best sample), not the last epoch's
    result["test_regret_final"] = _lookup(search_cfg, genotype).get("test_regret")
    result["wall_seconds_this_call"] = round(time.perf_counter() - t0, 3)
    atomic_write_text(done, json.dumps(result, indent=1) + "\n")
    return result


def _retrain_at_epochs(metrics: Sequence[dict], epochs: Sequence[int], train_cfg: dict, unit: Path) -> dict:
    """Test accuracy of the cell derived at each search epoch, retrained with the unit's budget (each its own
    resumable ``train-epochE`` directory); ``None`` where that epoch recorded no cell."""
    from ..rundir import RunDir
    from .train import TrainConfig, train_genotype

    cells = {int(r["epoch"]): r.get("genotype") for r in metrics}
    out: dict[str, float | None] = {}
    for e in epochs:
        if not cells.get(e):
            out[str(e)] = None
            continue
        tdir = unit / f"train-epoch{e}"
        resume = RunDir(tdir, kind="train", config_name="train.json").is_run()
        tr = train_genotype(Genotype.from_dict(cells[e]), TrainConfig.model_validate(train_cfg), tdir, resume=resume,
                            progress=False, log=lambda _m: None, loggers="none")
        out[str(e)] = tr["test_acc"]
    return out


# --------------------------------------------------------------------------------------------
# records


def _record_differs(result: dict, unit: Unit) -> list[str]:
    from ..rundir import diff_keys

    keys = [f"search.{k}" for k in diff_keys(result.get("search_config") or {}, unit.search)
            if k.split(".")[0] not in SEARCH_RUNTIME_KEYS]
    if (result.get("train_config") is None) != (unit.train is None):
        keys.append("train")
    elif unit.train is not None:
        keys += [f"train.{k}" for k in diff_keys(result["train_config"], unit.train)
                 if k.split(".")[0] not in TRAIN_RUNTIME_KEYS]
    if sorted(result.get("test_acc_at_epoch") or {}, key=int) != [str(e) for e in unit.at_epochs]:
        keys.append("retrain.at_epochs")
    return keys


def import_record(records: Path, unit: Unit, unit_dir: Path, log: Callable[[str], None]) -> bool:
    """Copy a finished unit's record into ``unit_dir`` when it matches the unit's configs; a record
    it leaves out (unreadable, made with other settings) gets one ``log`` line naming it."""
    src = records / unit.name
    rf = src / "result.json"
    if not rf.exists():
        return False
    try:
        result = json.loads(rf.read_text())
    except (OSError, ValueError):
        log(f"study: record {rf} is unreadable; ignored")
        return False
    bad = _record_differs(result, unit)
    if bad:
        log(f"study: record {src} was made with other settings ({', '.join(bad[:4])}); ignored")
        return False
    from ..utils import atomic_write_text

    (unit_dir / "search").mkdir(parents=True, exist_ok=True)
    for f in RECORD_FILES:
        if (src / f).exists():
            shutil.copyfile(src / f, unit_dir / "search" / f)
    atomic_write_text(unit_dir / "result.json", rf.read_text())
    return True


def export_record(records: Path, unit_dir: Path, name: str) -> None:
    """The unit's small files into ``records/<name>/`` (result.json last: a record is whole once it exists)."""
    from ..utils import atomic_write_text

    dst = records / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in RECORD_FILES:
        p = unit_dir / "search" / f
        if p.exists():
            atomic_write_text(dst / f, p.read_text())
    atomic_write_text(dst / "result.json", (unit_dir / "result.json").read_text())


# --------------------------------------------------------------------------------------------
# the study


def _protocol_diff(old: dict, new: dict) -> list[str]:
    """Keys that change results; seeds and methods may grow (a finished unit stays valid)."""
    from ..rundir import diff_keys

    keys = [k for k in diff_keys(old, new) if k.split(".")[0] not in ("seeds", "methods", "estimate", "description",
                                                                       "spaces")]
    for m, sets in (old.get("methods") or {}).items():
        if m in (new.get("methods") or {}) and new["methods"][m] != sets:
            keys.append(f"methods.{m}")
    return sorted(set(keys))


def run_study(protocol: StudyProtocol, out_dir: str | Path, *, backend: Backend | None = None,
              records: str | Path | None = None, threads: int | None = None, max_units: int | None = None,
              log: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) every unit of ``protocol`` under ``out_dir`` and write the summary; returns it.

    ``records``: a directory of finished units' small records, read first (matching ones are not
    run again) and written after every unit; ``warn`` (default ``log``) names each record left out.
    ``max_units`` stops after that many units run in this call (time-sliced sittings); the summary
    then covers the finished ones, marked partial."""
    from ..rundir import check_plan, write_plan

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    warn = warn or log
    out = Path(out_dir)
    if records is not None and Path(records).exists() and not Path(records).is_dir():
        raise RunDirError(f"--records {records} is a file; it names a directory of unit records (one folder per "
                          "unit, e.g. studies/cpu-collapse)")
    backend = backend or LocalBackend()
    if threads is None:
        threads = backend.threads_per_task()
    units = study_units(protocol)  # validates every config before anything is written
    plan_file = out / "study.json"
    check_plan(plan_file, protocol.to_dict(), _protocol_diff, what="study", noun="a different protocol")
    out.mkdir(parents=True, exist_ok=True)
    write_plan(plan_file, protocol.to_dict())
    rec = Path(records) if records is not None else None
    todo, imported = [], 0
    for u in units:
        udir = out / "runs" / u.name
        if (udir / "result.json").exists():
            if rec is not None and not (rec / u.name / "result.json").exists():
                export_record(rec, udir, u.name)  # finished here but its record not written (a stopped study)
            continue
        if rec is not None and import_record(rec, u, udir, warn):
            imported += 1
            continue
        todo.append(u)
    here = len(units) - len(todo) - imported
    if max_units is not None:
        todo = todo[:max_units]
    log(f"study {protocol.name}: {len(units)} units, {here} done here, {imported} from records, {len(todo)} to run "
        f"now ({backend.name} backend)")
    start = time.perf_counter()
    count = 0

    def done(r: dict) -> None:
        nonlocal count
        count += 1
        if r.get("failed"):
            log(f"[{count}/{len(todo)}] {r['name']}: FAILED ({r['failed']}); the study goes on")
            return
        if rec is not None:
            export_record(rec, out / "runs" / r["name"], r["name"])
        log(f"[{count}/{len(todo)}] {r['name']}: share {_f(r['share_normal'])}, test acc "
            f"{_f(r.get('test_acc'), 4)} ({(time.perf_counter() - start) / 60:.1f} min)")

    tasks = [(u.name, u.search, u.train, str(out / "runs" / u.name), threads, protocol.discretization_batches,
              u.at_epochs) for u in todo]
    backend.run(run_unit, tasks, done, key=lambda t: t[0], log=log)
    summary = summarise(protocol, out)
    log(f"study: wrote {out / 'table.md'}, {out / 'results.json'}")
    return summary


# --------------------------------------------------------------------------------------------
# analyses


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r (None below 3 points or for a constant series)."""
    if len(xs) < 3 or len(xs) != len(ys):
        return None
    try:
        return statistics.correlation(list(map(float, xs)), list(map(float, ys)))
    except statistics.StatisticsError:
        return None


def _ms(xs: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    v = [float(x) for x in xs if x is not None]
    if not v:
        return None, None, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def _per_epoch(series: list[list[float | None]]) -> dict[str, list]:
    """Mean, std and count per epoch over runs (runs may have different lengths: DARTS-ES stops)."""
    n = max((len(s) for s in series), default=0)
    mean, std, count = [], [], []
    for i in range(n):
        m, s, c = _ms([s[i] for s in series if i < len(s)])
        mean.append(m)
        std.append(s)
        count.append(c)
    return {"mean": mean, "std": std, "n": count}


def load_results(protocol: StudyProtocol, out_dir: str | Path) -> list[dict]:
    """The finished units' result records under ``out_dir``, in queue order."""
    out = Path(out_dir)
    res = []
    for u in study_units(protocol):
        f = out / "runs" / u.name / "result.json"
        if f.exists():
            r = json.loads(f.read_text())
            r.update(seed=u.seed, space=u.space, method=u.method)
            res.append(r)
    return res


def summary_only(protocol: StudyProtocol, out_dir: str | Path, records: str | Path | None = None, *,
                 warn: Callable[[str], None] | None = None) -> dict:
    """``study --summary``: rewrite the summary of the finished units, running nothing. With
    ``records``: of the records too (imported into ``out_dir`` first, as :func:`run_study` does);
    without: only of a directory that holds this study (the protocol check of a resume: a table
    never mixes units of another protocol, and no other directory gets a table written into it)."""
    from ..rundir import check_plan

    if records is not None:
        if not Path(records).exists():
            raise RunDirError(f"--records {records}: no such directory of unit records (one folder per unit, "
                              "e.g. studies/cpu-collapse)")
        return run_study(protocol, out_dir, records=records, max_units=0, log=lambda _m: None, warn=warn)
    plan = Path(out_dir) / "study.json"
    if not plan.is_file():
        raise RunDirError(f"--summary: {out_dir} holds no study (no study.json); run the study there first, or "
                          "pass --records DIR to summarise recorded units into a new directory")
    check_plan(plan, protocol.to_dict(), _protocol_diff, what="study", noun="a different protocol")
    return summarise(protocol, out_dir)


def summarise(protocol: StudyProtocol, out_dir: str | Path, *, plots: bool = True) -> dict:
    """Aggregate the finished units: ``results.json``, ``table.md`` and ``plots/`` under ``out_dir``."""
    from ..utils import atomic_write_text

    out = Path(out_dir)
    units = study_units(protocol)
    runs = load_results(protocol, out)
    rows = []
    by: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        by.setdefault((r["space"], r["method"]), []).append(r)
    for space in protocol.spaces:
        ref = by.get((space, protocol.reference), [])
        ref_ep = _ms([r["search_seconds"] / max(r["epochs"], 1) for r in ref])[0]
        for method in protocol.methods:
            rs = by.get((space, method), [])
            if not rs:
                rows.append({"space": space, "method": method, "n": 0})
                continue
            share = _ms([r["share_normal"] for r in rs])
            acc = _ms([r.get("test_acc") for r in rs])
            regret = _ms([r.get("test_regret_final") for r in rs])
            drop = _ms([(r.get("discretization") or {}).get("acc_drop") for r in rs])
            drop_b = _ms([((r.get("discretization") or {}).get("batch_bn") or {}).get("acc_drop") for r in rs])
            lam = _ms([r.get("lambda_max_final") for r in rs])
            ep = _ms([r["search_seconds"] / max(r["epochs"], 1) for r in rs])[0]
            rows.append({
                "space": space, "method": method, "n": len(rs), "seeds": [r["seed"] for r in rs],
                "share_normal_mean": share[0], "share_normal_std": share[1],
                "share_normal_per_seed": [r["share_normal"] for r in rs],
                "test_acc_mean": acc[0], "test_acc_std": acc[1], "test_source": rs[0].get("test_source"),
                "test_regret_mean": regret[0], "test_regret_std": regret[1],
                "acc_drop_mean": drop[0], "acc_drop_std": drop[1],
                "acc_drop_batch_bn_mean": drop_b[0], "acc_drop_batch_bn_std": drop_b[1],
                "lambda_max_final_mean": lam[0], "lambda_max_final_std": lam[1],
                "epochs_mean": statistics.fmean(r["epochs"] for r in rs),
                "search_seconds_mean": statistics.fmean(r["search_seconds"] for r in rs),
                "seconds_per_epoch_rel": (ep / ref_ep) if ep and ref_ep else None,
                "curves": {k: _per_epoch([r["curves"][k] for r in rs])
                           for k in ("share_normal", "lambda_max", "test_regret")},
                "test_acc_at_epoch": _at_epochs(rs),
            })
    pairs = [(r["lambda_max_final"], 1.0 - r["test_acc"]) for r in runs
             if r.get("lambda_max_final") is not None and r.get("test_acc") is not None]
    corr = {"all": {"r": pearson(*zip(*pairs)) if pairs else None, "n": len(pairs)}}
    for space in protocol.spaces:
        p = [(r["lambda_max_final"], 1.0 - r["test_acc"]) for r in runs if r["space"] == space
             and r.get("lambda_max_final") is not None and r.get("test_acc") is not None]
        corr[space] = {"r": pearson(*zip(*p)) if p else None, "n": len(p)}
    summary = {
        "protocol": protocol.to_dict(),
        "units_total": len(units),
        "units_done": len(runs),
        "partial": len(runs) < len(units),
        "rows": rows,
        "lambda_error_correlation": corr,
        "runs": runs,
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "table.md", format_table(summary))
    if plots:
        summary["plots"] = [str(p) for p in write_plots(summary, out / "plots")]
    return summary


def _at_epochs(rs: list[dict]) -> dict[str, dict]:
    """Retrained test accuracy of the cell derived at each retrained epoch (the last: the unit's own cell),
    mean, std and n over seeds; empty when the protocol retrains no earlier cells of this method."""
    epochs = sorted({e for r in rs for e in r.get("test_acc_at_epoch") or {}}, key=int)
    if not epochs:
        return {}
    out = {e: _ms([(r.get("test_acc_at_epoch") or {}).get(e) for r in rs]) for e in epochs}
    out[str(max(r["epochs"] for r in rs))] = _ms([r.get("test_acc") for r in rs])
    return {e: {"mean": m, "std": s, "n": n} for e, (m, s, n) in out.items()}


def _f(x: float | None, nd: int = 3, scale: float = 1.0) -> str:
    return "-" if x is None else f"{scale * x:.{nd}f}"


def _pm(m: float | None, s: float | None, nd: int = 3, scale: float = 1.0) -> str:
    if m is None:
        return "-"
    return f"{scale * m:.{nd}f} ± {scale * (s or 0.0):.{nd}f}"


def format_table(summary: dict) -> str:
    """table.md: per space, one row per method; then the correlation and the protocol."""
    p = summary["protocol"]
    state = (f"PARTIAL: {summary['units_done']} of {summary['units_total']} units finished"
             if summary["partial"] else f"complete: all {summary['units_total']} units")
    lines = [f"# Study {p['name']} ({state})", "", p.get("description") or "", ""]
    for space in p["spaces"]:
        lines += [f"## space {space}", "",
                  "| method | n | param-free share, normal (mean ± std) | test acc % (mean ± std) | S5 regret % | "
                  "disc. drop %, running BN | disc. drop %, batch BN | lambda_max (end) | epochs | "
                  "s/epoch rel. to " + p["reference"] + " |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in summary["rows"]:
            if r["space"] != space:
                continue
            if not r["n"]:
                lines.append(f"| {r['method']} | 0 | - | - | - | - | - | - | - | - |")
                continue
            acc = _pm(r["test_acc_mean"], r["test_acc_std"], 2, 100)
            if r.get("test_source") == "lookup" and acc != "-":
                acc += " (table)"
            lines.append(
                f"| {r['method']} | {r['n']} | {_pm(r['share_normal_mean'], r['share_normal_std'])} | {acc} | "
                f"{_pm(r['test_regret_mean'], r['test_regret_std'], 2, 100)} | "
                f"{_pm(r['acc_drop_mean'], r['acc_drop_std'], 2, 100)} | "
                f"{_pm(r.get('acc_drop_batch_bn_mean'), r.get('acc_drop_batch_bn_std'), 2, 100)} | "
                f"{_pm(r['lambda_max_final_mean'], r['lambda_max_final_std'], 4)} | {r['epochs_mean']:.1f} | "
                f"{_f(r['seconds_per_epoch_rel'], 2)} |")
        lines.append("")
    at = [r for r in summary["rows"] if r.get("test_acc_at_epoch")]
    if at:
        lines += ["## test acc % of the cell derived at epoch e, retrained (iDARTS Fig. 7)", "",
                  "| space | method | " + " | ".join(f"epoch {e} (n)" for e in at[0]["test_acc_at_epoch"]) + " |",
                  "|---|---|" + "---|" * len(at[0]["test_acc_at_epoch"])]
        for r in at:
            cells = [f"{_pm(v['mean'], v['std'], 2, 100)} ({v['n']})" for v in r["test_acc_at_epoch"].values()]
            lines.append(f"| {r['space']} | {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    c = summary["lambda_error_correlation"]
    lines += ["## lambda_max at the end of search vs test error (robust-darts Fig. 4: r = 0.867)", "",
              "| runs | Pearson r | n |", "|---|---|---|"]
    for k, v in c.items():
        lines.append(f"| {k} | {_f(v['r'], 3)} | {v['n']} |")
    lines += ["", "Test acc: the returned cell retrained from scratch with the protocol's retraining budget "
              "(`(table)`: the space's ground-truth table, no training). Disc. drop: supernet validation accuracy "
              "at alpha minus at the discretised alpha, same weights (robust-darts Sec. 4.2), with BN's running "
              "statistics (gathered under the op mixture) or each batch's own. s/epoch: wall-clock "
              "from the runs' records, not interleaved (machine load differs between runs).", "",
              "Protocol:", "", "```yaml", yaml.safe_dump({k: v for k, v in p.items() if k != "estimate"},
                                                          sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def _curve(r: dict, key: str) -> tuple[list[int], list[float], list[float]]:
    c = r["curves"][key]
    xs = [i + 1 for i, v in enumerate(c["mean"]) if v is not None]
    return xs, [v for v in c["mean"] if v is not None], [c["std"][i] or 0.0 for i in (x - 1 for x in xs)]


def _small_multiples(plt, summary: dict, rows: list[dict], key: str, label: str, space: str, folder: Path) -> Path:
    """One panel per method (mean ± std over seeds), the reference method in grey in every panel: twelve
    bands on one axis cannot be told apart."""
    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.2 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    ref = next((r for r in rows if r["method"] == summary["protocol"].get("reference")), None)
    for ax, r in zip(axes.flat, rows):
        if ref is not None and r is not ref:
            xs, m, _ = _curve(ref, key)
            ax.plot(xs, m, color="0.6", lw=1, label=ref["method"])
        xs, m, sd = _curve(r, key)
        ax.plot(xs, m, color="C0", lw=1.5)
        ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color="C0", alpha=0.2)
        ax.set_title(f"{r['method']} (n={r['n']})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    fig.supxlabel("search epoch", fontsize=9)
    fig.supylabel(label, fontsize=9)
    ref_note = f"; grey: {ref['method']}" if ref is not None else ""
    fig.suptitle(f"{summary['protocol']['name']}, space {space}: {label} (mean ± std over seeds{ref_note})",
                 fontsize=10)
    fig.tight_layout()
    path = folder / f"{key}_{space}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(summary: dict, folder: Path) -> list[Path]:
    """share / lambda_max / regret per epoch per method (mean ± std over seeds), lambda vs error."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    spaces = summary["protocol"]["spaces"]
    for key, label in (("share_normal", "param-free share (normal cell)"), ("lambda_max", "lambda_max"),
                       ("test_regret", "test regret")):
        for space in spaces:
            rows = [r for r in summary["rows"] if r["space"] == space and r["n"]
                    and any(v is not None for v in r["curves"][key]["mean"])]
            if rows:
                written.append(_small_multiples(plt, summary, rows, key, label, space, folder))
    pts = [(r["lambda_max_final"], 100 * (1 - r["test_acc"]), r["space"]) for r in summary["runs"]
           if r.get("lambda_max_final") is not None and r.get("test_acc") is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(5, 4))
        for space in spaces:
            p = [(x, y) for x, y, s in pts if s == space]
            if p:
                ax.scatter(*zip(*p), label=space, s=14)
        c = summary["lambda_error_correlation"]["all"]
        ax.set_xlabel("lambda_max at the end of search")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"r = {_f(c['r'], 3)} (n = {c['n']})")
        ax.legend()
        fig.tight_layout()
        path = folder / "lambda_vs_error.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# cost


def recorded_results(protocol: StudyProtocol, records: str | Path) -> list[dict]:
    """The units' records under ``records`` that a study would import (:func:`import_record`'s
    test: readable, made with the unit's settings), in queue order."""
    res = []
    for u in study_units(protocol):
        f = Path(records) / u.name / "result.json"
        try:
            r = json.loads(f.read_text()) if f.is_file() else None
        except (OSError, ValueError):
            r = None
        if r is not None and not _record_differs(r, u):
            r.update(seed=u.seed, space=u.space, method=u.method)
            res.append(r)
    return res


def estimate_cost(protocol: StudyProtocol, out_dir: str | Path | None = None,
                  records: str | Path | None = None) -> dict:
    """Seconds the units still to run will take: measured seconds per epoch of finished units of the
    same (space, method) when there are any, else the protocol's ``estimate`` figures. Finished:
    in ``out_dir`` or recorded in ``records`` (the units a run or ``--summary`` imports).
    ``unknown``: units without a search figure (not in ``seconds``); ``retrain_unpriced``: units
    whose retraining has no figure yet (their search is in ``seconds``, the retraining is not)."""
    units = study_units(protocol)
    runs = load_results(protocol, out_dir) if out_dir is not None and Path(out_dir).exists() else []
    if records is not None and Path(records).is_dir():
        here = {(r["space"], r["method"], r["seed"]) for r in runs}
        runs += [r for r in recorded_results(protocol, records) if (r["space"], r["method"], r["seed"]) not in here]
    done = {(r["space"], r["method"], r["seed"]) for r in runs}
    per_epoch: dict[tuple[str, str], list[float]] = {}
    retrain: dict[str, list[float]] = {}
    for r in runs:
        secs = r["search_seconds"] + (r.get("track_seconds") or 0.0)
        per_epoch.setdefault((r["space"], r["method"]), []).append(secs / max(r["epochs"], 1))
        if r.get("train_seconds"):
            retrain.setdefault(r["space"], []).append(r["train_seconds"])
    est = protocol.estimate
    total, unknown, unpriced, rows = 0.0, [], [], {}
    for u in units:
        if (u.space, u.method, u.seed) in done:
            continue
        epochs = u.search["optim"]["epochs"]
        if (u.space, u.method) in per_epoch:
            cost = statistics.fmean(per_epoch[(u.space, u.method)]) * epochs
        elif u.space in est.epoch_seconds and u.method in est.relative:
            cost = est.epoch_seconds[u.space] * est.relative[u.method] * epochs
            if protocol.track and u.space in est.track_seconds:
                every = int(protocol.track.get("every", 1))
                cost += est.track_seconds[u.space] * sum(e % every == 0 or e == epochs - 1 for e in range(epochs))
        else:
            unknown.append(u.name)
            continue
        tr = 0.0
        if u.train is not None:
            if u.space in retrain:
                tr = statistics.fmean(retrain[u.space])
            elif u.space in est.retrain_seconds:
                tr = est.retrain_seconds[u.space]
            else:
                unpriced.append(u.name)
        s = cost + tr
        total += s
        rows[u.name] = s
    todo = [u.name for u in units if (u.space, u.method, u.seed) not in done]
    return {"units": len(units), "done": len(done), "to_run": len(todo), "todo": todo, "seconds": total,
            "unknown": unknown, "retrain_unpriced": unpriced, "per_unit": rows}
