"""Training a discrete architecture from scratch (the papers' "final evaluation").

One loop for every skeleton: SGD with momentum and cosine learning rate, weight decay, gradient
clipping, the auxiliary tower (weight 0.4), ScheduledDropPath rising linearly from 0 to its maximum
over training, and cutout -- the DARTS CIFAR recipe (Liu et al. 2019, Sec. 3.2; robust-darts
App. C), every knob configurable so that short protocols (S5 ground truth, the validation
retraining that selects among searches) use the same code. This module holds the config, its
presets and what a genotype argument may name; the loop is :class:`~stablenas.evaluate.trainer.ImageTrainer`.

A run directory holds ``train.json`` (the config), ``metrics.jsonl`` (one record per epoch),
``checkpoint.pt`` (written atomically after every epoch) and, when done, ``result.json``.
Everything that draws random numbers is either stateless per epoch (the data order and
augmentation of :class:`~stablenas.data.TensorLoader`) or saved in the checkpoint (the global
RNG that drop-path uses), so a run interrupted at any epoch boundary and resumed ends with
bit-identical weights and accuracy on CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from ..config import ConfigModel, Seed, preset_config, read_yaml
from ..errors import RunDirError, RunExistsError
from ..genotype import Genotype, GenotypeError
from ..progress import write as write_line
from ..registry import DATASETS, EVAL_NETWORKS
from ..runs.directory import RunDir

__all__ = [
    "TRAIN_PRESETS",
    "TrainConfig",
    "TrainExistsError",
    "resolve_genotype",
    "train_config",
    "train_genotype",
]

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
CONFIG_FILE = "train.json"

# datasets whose images are not mirror-symmetric in meaning (digits): no horizontal flip
_NO_FLIP = {"mnist", "digits", "svhn"}
# keys that may change between a run and its resume without changing the result
_RUNTIME_KEYS = {"device", "threads", "eval_batch_size"}
# batch_size is the global batch under torchrun (split across ranks), so a resume on another
# number of ranks gives another run: the world size is not a runtime key


# the output directory already holds a training run (pass resume to continue it)
TrainExistsError = RunExistsError


class TrainConfig(ConfigModel):
    """Everything that defines a from-scratch training run; defaults = DARTS CIFAR-10 evaluation.

    ``cutout``, ``crop_padding`` and ``flip`` default to ``None`` = derived from the input size
    (see :meth:`augmentation`): the CIFAR recipe (cutout 16, crop padding 4 on 32x32) is scaled
    by side/32 so a 28x28 Fashion-MNIST image gets cutout 14 and an 8x8 digit cutout 4, i.e. the
    same fraction of the image is erased.
    """

    model_config = ConfigDict(validate_assignment=True)

    dataset: str = "cifar10"
    data_root: str | None = None
    network: str = "auto"  # an evaluation network (cifar, imagenet, nb201, plug-ins'); auto: the skeleton's default
    channels: int = Field(36, gt=0)
    layers: int = Field(20, gt=0)  # cells (darts skeleton) or cells per stage N (nb201)
    stem_multiplier: int = Field(3, gt=0)
    epochs: int = Field(600, ge=1)
    batch_size: int = Field(96, gt=0)  # the global batch: under torchrun each rank takes 1/N of it
    eval_batch_size: int = Field(256, gt=0)
    lr: float = Field(0.025, gt=0.0)
    lr_min: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(3e-4, ge=0.0)
    grad_clip: float | None = Field(5.0, gt=0.0)
    auxiliary: bool = True
    auxiliary_weight: float = Field(0.4, ge=0.0)
    drop_path: float = Field(0.2, ge=0.0, lt=1.0)  # ScheduledDropPath: 0 -> drop_path linearly
    cutout: int | None = Field(None, ge=0)  # None: 16 * side / 32
    crop_padding: int | None = Field(None, ge=0)  # None: round(4 * side / 32)
    flip: bool | None = None  # None: on, except for digit datasets (mnist, digits, svhn)
    subset: int | None = Field(None, gt=0)  # train on this many training images (drawn with data_seed)
    holdout: int = Field(0, ge=0)  # training images held out as a validation split (valid_acc)
    test_subset: int | None = Field(None, gt=0)  # evaluate on this many test images (drawn with data_seed)
    evaluate_test: bool = True  # False: never touch the test split (model selection runs)
    eval_every: int = Field(0, ge=0)  # also evaluate every N epochs (0: only after the last epoch)
    steps_per_epoch: int | None = Field(None, gt=0)  # cap (smoke runs); None = one pass
    seed: Seed = 0  # weights init, data order, augmentation, drop-path
    data_seed: Seed = 0  # which images form subset / holdout / test_subset: fixed across seeds
    device: str = "auto"
    threads: int | None = Field(None, gt=0)
    deterministic: bool = True
    channels_last: bool = True
    # recompute BatchNorm statistics over the (un-augmented) training images before the final
    # evaluation: short runs end with running averages dominated by the last noisy steps
    precise_bn: bool = False
    # mixed precision of the forward/backward: bf16 | fp16 (CUDA; fp16 with loss scaling); off = fp32
    amp: Literal["off", "bf16", "fp16"] = "off"

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.dataset not in DATASETS:  # the same names and aliases as the search config
            raise ValueError(f"dataset: {DATASETS.unknown_message(self.dataset)}")
        if self.network != "auto" and self.network not in EVAL_NETWORKS:
            raise ValueError(f"network: {EVAL_NETWORKS.unknown_message(self.network)} (or auto)")
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) exceeds lr ({self.lr}): the cosine schedule anneals from lr "
                             "down to lr_min")
        return self

    def augmentation(self, side: int) -> dict[str, Any]:
        """Resolved crop padding, flip and cutout for images of ``side`` pixels."""
        scale = side / 32.0
        name = self.dataset.strip().lower()
        return {
            "crop_padding": self.crop_padding if self.crop_padding is not None else max(1, round(4 * scale)),
            "flip": self.flip if self.flip is not None else name not in _NO_FLIP,
            "cutout": self.cutout if self.cutout is not None else max(1, round(16 * scale)),
        }


# Named starting points; any field can then be overridden (``--set key=value``).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # Liu et al. 2019 / robust-darts App. C: 600 epochs, batch 96, 36 channels, 20 cells
    "darts": {},
    # robust-darts App. C, CIFAR-100/SVHN and L2-scaled CIFAR-10 runs: 16 channels, 8 cells
    "darts-small": {"channels": 16, "layers": 8},
    # NAS-Bench-201 (Dong & Yang 2020): 200 epochs, lr 0.1, Nesterov, wd 5e-4, batch 256, crop+flip only
    "nb201": {
        "network": "nb201",
        "channels": 16,
        "layers": 5,
        "epochs": 200,
        "batch_size": 256,
        "lr": 0.1,
        "nesterov": True,
        "weight_decay": 5e-4,
        "grad_clip": None,
        "auxiliary": False,
        "drop_path": 0.0,
        "cutout": 0,
    },
}


def train_config(
    preset: str | dict | None = "darts", overrides: list[str] | dict | None = None, *,
    inherit: dict | None = None, **fields: Any
) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from a preset name (or dict), ``key=value`` strings
    (values parsed as YAML, like ``stablenas search --set``) and keyword fields, in that order;
    ``inherit`` (e.g. a search run's dataset, :func:`inherited_fields`) fills only keys none of
    them set."""
    return preset_config(TrainConfig, TRAIN_PRESETS, preset, overrides, fields, inherit=inherit,
                         unknown=_unknown_preset, prefix="invalid training config")


def _unknown_preset(preset: str) -> str:
    from ..skeletons.rnn.train import RNN_TRAIN_PRESETS

    rnn = (f" ({preset} trains recurrent genotypes: give a recurrent genotype such as DARTS_V2_RNN)"
           if preset in RNN_TRAIN_PRESETS else "")
    return f"unknown training preset {preset!r} for an image genotype; available: {', '.join(TRAIN_PRESETS)}{rnn}"


# image shape and classes per dataset, so ``info RUN_DIR`` counts for the run's input without loading it
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "fashion-mnist": ((1, 28, 28), 10), "mnist": ((1, 28, 28), 10), "digits": ((1, 8, 8), 10),
    "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "svhn": ((3, 32, 32), 10),
}


def run_data(spec: str | Path | Genotype | dict) -> dict[str, Any]:
    """What a search or training run directory says about its data: ``dataset`` and ``data_root``
    (empty for anything that is not a run directory), so ``train RUN`` and ``info RUN`` follow
    the run instead of defaulting to CIFAR-10."""
    if isinstance(spec, (Genotype, dict)):
        return {}
    path = Path(str(spec))
    try:
        if not path.is_dir():
            return {}
    except OSError:  # a name too long for the file system is not a directory
        return {}
    if (path / "config.yaml").exists():
        data = (read_yaml(path / "config.yaml", "run's config", RunDirError) or {}).get("data") or {}
        if not isinstance(data, dict):
            raise RunDirError(f"{path / 'config.yaml'}: data must be a mapping of keys, not a {type(data).__name__}")
        return {k2: data[k] for k, k2 in (("dataset", "dataset"), ("root", "data_root")) if data.get(k)}
    if (path / CONFIG_FILE).exists():
        cfg = json.loads((path / CONFIG_FILE).read_text()).get("config") or {}
        return {k: cfg[k] for k in ("dataset", "data_root") if cfg.get(k)}
    return {}


def inherited_fields(spec: str | Path | Genotype | dict) -> dict[str, Any]:
    """Training-config fields a run directory hands on (its dataset, hence its input shape)."""
    return run_data(spec)


def resolve_genotype(spec: str | Path | Genotype | dict) -> Genotype:
    """A Genotype from a genotype.json, a run directory, an NB201 arch string or a published name."""
    if isinstance(spec, Genotype):
        return spec
    if isinstance(spec, dict):
        return Genotype.from_dict(spec)
    text = str(spec)
    if text.startswith("|"):
        return Genotype.from_dict({"space": "nb201", "arch": text})  # an NB201 arch string (validated)
    if text.lstrip().startswith("{"):  # inline JSON
        return Genotype.from_text(text)
    inline = Genotype.from_skeleton_text(text)  # a skeleton's own text form, e.g. DARTS's Python one
    if inline is not None:
        return inline
    path = Path(text)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError:  # e.g. a name too long for the file system: not a file
        is_dir = exists = False
    if is_dir:
        if (path / "config.yaml").exists():  # a search run: its plug-ins (user spaces/ops) first
            from ..analysis.run import load_run_plugins

            load_run_plugins(path)
        if (path / "genotype.json").exists():
            return Genotype.load(path / "genotype.json")
        if (path / RESULT).exists():  # a training run directory
            return Genotype.from_dict(json.loads((path / RESULT).read_text())["genotype"])
        if (path / "metrics.jsonl").exists():
            from ..analysis.run import load_run

            run = load_run(path)
            if run.genotype is not None:
                return run.genotype
        raise GenotypeError(f"{path} holds no genotype.json (nor a finished epoch to take one from)")
    if path.suffix in (".json", ".py", ".txt") or exists:
        return Genotype.load(path)
    from ..networks.published import PUBLISHED, get_published

    try:
        return get_published(text)
    except KeyError:
        raise GenotypeError(
            f"{text!r} is neither a genotype file, a run directory, an NB201 arch string "
            f"nor a published genotype ({', '.join(PUBLISHED)})"
        ) from None


def config_diff(saved: dict, now: dict) -> list[str]:
    """Keys whose value changed, ignoring runtime-only keys; a key missing from ``saved`` (a field
    added to TrainConfig since) counts as its default, so old runs stay resumable."""
    defaults = TrainConfig.model_construct().model_dump(mode="json")
    return sorted(
        k
        for k in set(saved) | set(now)
        if k not in _RUNTIME_KEYS and saved.get(k, defaults.get(k)) != now.get(k, defaults.get(k))
    )


def stored_record(cfg: TrainConfig, genotype: Genotype) -> dict:
    """What a training run stores as its identity (train.json, the checkpoint): config and genotype."""
    return {"config": cfg.model_dump(mode="json"), "genotype": genotype.to_dict()}


def _train_differ(saved: dict, now: dict) -> list[str]:
    diff = config_diff(saved.get("config") or {}, now["config"])
    if saved.get("genotype") != now.get("genotype"):
        diff.insert(0, "genotype")
    return diff


def train_run_dir(out_dir: Path) -> RunDir:
    """The run directory of a training run (a resume compares config and genotype)."""
    return RunDir(out_dir, kind="train", config_name=CONFIG_FILE, differ=_train_differ)


def _check_out_dir(out_dir: Path, cfg: TrainConfig, genotype: Genotype, resume: bool) -> dict | None:
    """Validate the run directory without writing; returns the finished result when resuming a done run."""
    rd = train_run_dir(out_dir)
    stored = stored_record(cfg, genotype)
    rd.check(resume, stored["config"], extra={"genotype": stored["genotype"]})
    if resume and (out_dir / RESULT).exists():
        return json.loads((out_dir / RESULT).read_text())
    return None


def train_genotype(
    genotype: Genotype | str | Path,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
    loggers: str | list[str] | None = None,
) -> dict:
    """Train ``genotype`` from scratch and return the result dict (test accuracy, params, MACs...).

    ``genotype`` may be a :class:`Genotype` or anything :func:`resolve_genotype` accepts. With
    ``out_dir`` the run is checkpointed after every epoch and ``result.json`` written at the end;
    ``resume=True`` continues a run there (or just returns its result if it finished).
    ``stop_after`` ends this call after that many epochs with :class:`InterruptedRun`, as a
    signal would (time-sliced runs; also how the tests simulate a kill). ``loggers``: live logging backends
    (``"auto"``: TensorBoard into OUT/tensorboard when installed; see :mod:`stablenas.loggers`).
    """
    genotype = resolve_genotype(genotype)
    cfg = config or TrainConfig()
    log = log or write_line  # through the progress bar (stablenas.progress.write)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        done = _check_out_dir(out, cfg, genotype, resume)
        if done is not None:
            log(f"{out}: already finished")
            return done
    from .trainer import ImageTrainer

    trainer = ImageTrainer(genotype, cfg, out, resume=resume, progress=progress, log=log, loggers=loggers)
    return trainer.run(stop_after=stop_after)
