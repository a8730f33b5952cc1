"""Live logging of a search or a training run: one small interface, several backends.

The search loop and the trainer hand every backend the same things -- per-step scalars (flushed
in blocks, so the hot loop never waits for the device), the per-epoch record (losses, accuracies,
learning rate, lambda_max, epsilon, temperature, parameter-free share) and the op weights per edge
-- so a run can be watched while it is running instead of only after the fact (``analyze
--tensorboard``). TensorBoard is the default when it is installed (``pip install tensorboard``);
Weights & Biases (``wandb``) and MLflow (``mlflow``) are optional and imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

BACKENDS = ("tensorboard", "wandb", "mlflow")
# keys of an epoch record that are bookkeeping, not curves
_SKIP = {"epoch", "alpha_frozen", "genotype", "op_weights", "edge_weights", "alpha", "eigenvalues_top"}


class Logger:
    """A logging backend. ``scalars`` are ``{tag: value}``; tags use ``/`` to group
    (``search/val_acc``, ``op_weights/normal/0->2/sep_conv_3x3``)."""

    name = "logger"

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The resolved config once at the start (hyperparameters)."""

    def flush(self) -> None:
        """Make what was logged visible to a reader now (a live dashboard)."""

    def close(self) -> None:
        self.flush()


class TensorBoardLogger(Logger):
    """Event files under ``log_dir`` (``RUN_DIR/tensorboard``), read by ``tensorboard --logdir``."""

    name = "tensorboard"

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("logger tensorboard: the tensorboard package is not installed "
                              "(pip install tensorboard), or choose --log none") from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), flush_secs=10)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, v in scalars.items():
            self.writer.add_scalar(tag, v, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        import yaml

        text = yaml.safe_dump(dict(config), sort_keys=False)
        self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger(Logger):
    """Weights & Biases run (``wandb.init``); offline mode and project come from the usual
    ``WANDB_*`` environment variables."""

    name = "wandb"

    def __init__(self, run_dir: str | Path | None, name: str | None = None):
        try:
            import wandb
        except ImportError:
            raise ConfigError("logger wandb: the wandb package is not installed (pip install wandb)") from None
        self.wandb = wandb
        self.run = wandb.init(dir=str(run_dir) if run_dir else None, name=name, reinit=True)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def close(self) -> None:
        self.run.finish()


class MLflowLogger(Logger):
    """An MLflow run (tracking URI from ``MLFLOW_TRACKING_URI``, default ``./mlruns``)."""

    name = "mlflow"

    def __init__(self, run_dir: str | Path | None, name: str | None = None):
        try:
            import mlflow
        except ImportError:
            raise ConfigError("logger mlflow: the mlflow package is not installed (pip install mlflow)") from None
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        # MLflow metric names allow letters, digits, _ - . / and space
        clean = {_mlflow_key(k): float(v) for k, v in scalars.items()}
        self.mlflow.log_metrics(clean, step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.mlflow.log_params({k: str(v)[:500] for k, v in flatten(config).items()})

    def close(self) -> None:
        self.mlflow.end_run()


def _mlflow_key(tag: str) -> str:
    return tag.replace("->", "-").replace("<-", "-")


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def parse_backends(spec: str | Sequence[str] | None) -> list[str]:
    """``auto`` (TensorBoard when installed), ``none``, or a comma-separated choice of
    tensorboard, wandb, mlflow."""
    if spec is None:
        spec = "auto"
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items or items == ["none"]:
        return []
    if items == ["auto"]:
        return ["tensorboard"] if tensorboard_available() else []
    for s in items:
        if s not in BACKENDS:
            raise ConfigError(f"--log {s!r}: unknown logger; choose auto, none or a comma-separated list "
                              f"of {', '.join(BACKENDS)}")
    return list(dict.fromkeys(items))


def check_backends(spec: str | Sequence[str] | None) -> list[str]:
    """:func:`parse_backends`, refusing a backend whose package is not installed: a run calls it
    before it writes anything, so a failed start leaves no run directory behind."""
    names = parse_backends(spec)
    for b in names:
        if not _installed(b):
            raise ConfigError(f"logger {b}: the {b} package is not installed (pip install {b}); choose another "
                              "logger or --log none")
    return names


def _installed(name: str) -> bool:
    """Importable, found without importing it (wandb and mlflow take seconds to import)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def make_loggers(spec: str | Sequence[str] | None, run_dir: str | Path | None,
                 name: str | None = None) -> list[Logger]:
    """Backends for ``spec`` (see :func:`check_backends`); TensorBoard writes into
    ``RUN_DIR/tensorboard`` and is skipped without a run directory."""
    out: list[Logger] = []
    for b in check_backends(spec):
        if b == "tensorboard":
            if run_dir is not None:
                out.append(TensorBoardLogger(Path(run_dir) / "tensorboard"))
        elif b == "wandb":
            out.append(WandbLogger(run_dir, name))
        elif b == "mlflow":
            out.append(MLflowLogger(run_dir, name))
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def epoch_scalars(record: Mapping[str, Any], prefix: str = "search") -> dict[str, float]:
    """Every finite number of an epoch record as ``prefix/key`` (nested dicts of numbers as
    ``prefix/key/sub``), bookkeeping keys left out."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if k in _SKIP:
            continue
        if _is_number(v):
            out[f"{prefix}/{k}"] = float(v)
        elif isinstance(v, Mapping):
            for sk, sv in v.items():
                if _is_number(sv):
                    out[f"{prefix}/{k}/{sk}"] = float(sv)
    return out


def op_weight_scalars(op_weights: Mapping[str, Sequence[Sequence[float]]],
                      edge_ops: Mapping[str, Sequence[Sequence[str]]],
                      edges: Sequence[tuple[int, int]]) -> dict[str, float]:
    """``op_weights/<cell>/<i>-><j>/<op>`` for every edge (source node i, target node j as in
    ``SearchSpace.edges``: 0, 1 are the cell inputs) and op."""
    out: dict[str, float] = {}
    for ct, rows in op_weights.items():
        for e, row in enumerate(rows):
            src, dst = edges[e]
            for op, w in zip(edge_ops[ct][e], row):
                out[f"op_weights/{ct}/{src}->{dst}/{op}"] = float(w)
    return out


def param_free_scalars(genotype: Any) -> dict[str, float]:
    """Share of parameter-free ops (skip, pooling, none) of the derived cells -- the collapse
    signal; the same count as ``analysis.diagnostics.cell_stats``; none where the skeleton has
    no share (the recurrent cell)."""
    from .spaces.ops import is_parameter_free

    try:
        if not genotype.skeleton.has_param_free_share:
            return {}
        cells = {ct: genotype.ops(ct) for ct in genotype.cell_types()}  # the skeleton knows its cells
    except (KeyError, AttributeError, TypeError, ValueError):  # a genotype of another shape
        return {}
    out = {f"param_free_share/{ct}": sum(map(is_parameter_free, ops)) / len(ops) for ct, ops in cells.items() if ops}
    every = [op for ops in cells.values() for op in ops]
    if every:
        out["param_free_share/all"] = sum(map(is_parameter_free, every)) / len(every)
    return out


class LoggerSet:
    """Fan-out to several backends; a backend that raises mid-run is reported once and dropped,
    so a dashboard outage never kills a search."""

    def __init__(self, loggers: Iterable[Logger], warn=None):
        self.loggers = list(loggers)
        self.warn = warn or (lambda m: None)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _each(self, fn: str, *args) -> None:
        for lg in list(self.loggers):
            try:
                getattr(lg, fn)(*args)
            except Exception as e:  # noqa: BLE001 - a logging backend must not end the run
                self.warn(f"logger {lg.name} failed ({type(e).__name__}: {e}); logging to it stops")
                self.loggers.remove(lg)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        if scalars:
            self._each("log_scalars", scalars, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._each("log_config", config)

    def flush(self) -> None:
        self._each("flush")

    def close(self) -> None:
        self._each("close")


def read_tensorboard_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from the event files in ``log_dir`` (for tests and notes)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
