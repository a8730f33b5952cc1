"""Training a discrete architecture from scratch (the papers' "final evaluation").

One loop for every skeleton: SGD with momentum and cosine learning rate, weight decay, gradient
clipping, the auxiliary tower (weight 0.4), ScheduledDropPath rising linearly from 0 to its maximum
over training, and cutout -- the DARTS CIFAR recipe (Liu et al. 2019, Sec. 3.2; robust-darts
App. C), every knob configurable so that short protocols (S5 ground truth, the validation
retraining that selects among searches) use the same code.

A run directory holds ``train.json`` (the config), ``metrics.jsonl`` (one record per epoch),
``checkpoint.pt`` (written atomically after every epoch) and, when done, ``result.json``.
Everything that draws random numbers is either stateless per epoch (the data order and
augmentation of :class:`~stablenas.data.TensorLoader`) or saved in the checkpoint (the global
RNG that drop-path uses), so a run interrupted at any epoch boundary and resumed ends with
bit-identical weights and accuracy on CPU.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, ValidationError, model_validator
from torch import nn

from .. import distributed as dist
from ..config import ConfigModel, Seed, apply_overrides, format_validation_error, read_yaml
from ..errors import (
    CheckpointError,
    ConfigError,
    DiskFullError,
    DivergedError,
    InterruptedRun,
    RunDirError,
    RunExistsError,
    StablenasError,
)
from ..genotype import Genotype, GenotypeError
from ..networks.evaluation import build_eval_network
from ..networks.profile import count_macs, count_params
from ..progress import bar as progress_bar
from ..progress import progress_enabled
from ..progress import write as write_line
from ..registry import DATASETS, EVAL_NETWORKS
from ..rundir import RunDir, stop_signals
from ..utils import (
    atomic_write_text,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    use_deterministic_algorithms,
)

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


def _format_error(err: ValidationError) -> str:
    return format_validation_error(err, TrainConfig, "invalid training config")


def raw_explicit(preset, overrides, fields: dict) -> set[str]:
    """Keys the preset, the overrides or the keyword fields set explicitly."""
    keys = {k for k, v in fields.items() if v is not None}
    if isinstance(preset, dict):
        keys |= set(preset)
    elif preset in TRAIN_PRESETS:
        keys |= set(TRAIN_PRESETS[preset])
    if isinstance(overrides, dict):
        keys |= set(overrides)
    else:
        keys |= {item.split("=", 1)[0].strip() for item in overrides or [] if "=" in item}
    return keys


def train_config(
    preset: str | dict | None = "darts", overrides: list[str] | dict | None = None, *,
    inherit: dict | None = None, **fields: Any
) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from a preset name (or dict), ``key=value`` strings
    (values parsed as YAML, like ``stablenas search --set``) and keyword fields, in that order;
    ``inherit`` (e.g. a search run's dataset, :func:`inherited_fields`) fills only keys none of
    them set."""

    from ..errors import ConfigError

    if preset is None:
        raw: dict[str, Any] = {}
    elif isinstance(preset, dict):
        raw = dict(preset)
    elif preset in TRAIN_PRESETS:
        raw = dict(TRAIN_PRESETS[preset])
    else:
        from ..rnn.train import RNN_TRAIN_PRESETS

        rnn = (f" ({preset} trains recurrent genotypes: give a recurrent genotype such as DARTS_V2_RNN)"
               if preset in RNN_TRAIN_PRESETS else "")
        raise ConfigError(f"unknown training preset {preset!r} for an image genotype; available: "
                          f"{', '.join(TRAIN_PRESETS)}{rnn}")
    if isinstance(overrides, dict):
        raw.update(overrides)
    else:
        raw = apply_overrides(raw, overrides, example="epochs=10")
    raw.update({k: v for k, v in fields.items() if v is not None})
    for k, v in (inherit or {}).items():  # lowest priority: only where the preset and overrides say nothing
        if v is not None and k not in raw_explicit(preset, overrides, fields):
            raw[k] = v
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


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
    from ..genotype import looks_like_darts_python

    if text.lstrip().startswith("{") or looks_like_darts_python(text):  # JSON or DARTS's Python form, inline
        return Genotype.from_text(text)
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


# --------------------------------------------------------------------------------------------
# the run


def _split_indices(n: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training and holdout indices: a fixed permutation by ``data_seed``, holdout first."""
    if cfg.holdout == 0 and cfg.subset is None:
        return torch.arange(n), None
    if cfg.holdout >= n:
        raise ValueError(f"holdout {cfg.holdout} leaves no training images (the split has {n})")
    g = torch.Generator().manual_seed(cfg.data_seed)
    perm = torch.randperm(n, generator=g)
    hold = perm[: cfg.holdout].sort().values if cfg.holdout else None
    pool = perm[cfg.holdout :]
    if cfg.subset is not None:
        if cfg.subset > pool.numel():
            raise ValueError(f"subset {cfg.subset} exceeds the {pool.numel()} training images available")
        pool = pool[: cfg.subset]
    return pool.sort().values, hold


@torch.no_grad()
def _evaluate(model: nn.Module, loader, desc: str = "", progress: bool = False) -> dict[str, float]:
    """Loss and accuracy over ``loader`` (a bar labelled ``desc`` when ``progress``)."""
    was_training = model.training
    model.eval()
    acc = None
    loader.set_epoch(0)
    with progress_bar(len(loader), desc, progress, unit="batch") as b:
        for x, y in loader:
            logits, _ = model(x)
            part = torch.stack(
                [
                    F.cross_entropy(logits, y, reduction="sum"),
                    (logits.argmax(1) == y).sum().float(),
                    torch.tensor(float(y.shape[0]), device=logits.device),
                ]
            )
            acc = part if acc is None else acc + part
            b.update(1)
    model.train(was_training)
    device = next(model.parameters()).device
    acc = acc if acc is not None else torch.zeros(3, device=device)
    (acc,) = dist.all_reduce_sum([acc])  # data parallel: each rank evaluated its slice of every batch
    loss_sum, correct, count = acc.tolist()
    return {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1)}


class _Trainer:
    def __init__(
        self,
        genotype: Genotype,
        cfg: TrainConfig,
        out_dir: Path | None,
        *,
        resume: bool,
        progress: bool | None,
        log: Callable[[str], None],
        loggers: str | list[str] | None = None,
    ):
        from ..data import Augment, TensorLoader, load_dataset
        from ..loggers import LoggerSet, make_loggers

        self.genotype, self.cfg, self.out_dir, self.log = genotype, cfg, out_dir, log
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # under torchrun: every rank its slice of each batch (batch_size is global), rank 0 writes
        self.dist, self.device = dist.setup(cfg.device) if dist.launched() else (dist.current(),
                                                                                 resolve_device(cfg.device))
        if not self.dist.is_main:
            self.log = log = (lambda s: None)
            progress = False
        self.run_dir = _run_dir(out_dir) if out_dir is not None and self.dist.is_main else None
        self._signal: int | None = None
        self.loggers = LoggerSet([], warn=log)  # opened once everything is built (a failed start writes nothing)
        self._step_losses: list[torch.Tensor] = []
        self._timing: dict = {}
        self.progress = progress_enabled(progress)  # a terminal, not CI (stablenas.progress)
        self.amp = _amp_dtype(cfg.amp, self.device, log)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        if cfg.deterministic:
            use_deterministic_algorithms()
        seed_everything(cfg.seed)

        train_set = load_dataset(cfg.dataset, "train", cfg.data_root)
        self.input_shape = train_set.shape
        train_idx, hold_idx = _split_indices(len(train_set), cfg)
        self._train_set, self._train_idx = train_set, train_idx
        aug = cfg.augmentation(self.input_shape[-1])
        self.aug = aug
        augment = Augment(crop_padding=aug["crop_padding"], flip=aug["flip"], cutout=aug["cutout"])
        cl = cfg.channels_last
        self.train_loader = TensorLoader(
            train_set,
            train_idx,
            cfg.batch_size,
            shuffle=True,
            drop_last=True,
            augment=augment,
            device=self.device,
            seed=cfg.seed * 1000 + 11,
            channels_last=cl,
        )
        if len(self.train_loader) == 0:
            raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(train_idx)} training images")
        self.steps = len(self.train_loader)
        if cfg.steps_per_epoch:
            self.steps = min(self.steps, cfg.steps_per_epoch)
        self.valid_loader = None
        if hold_idx is not None:
            self.valid_loader = TensorLoader(
                train_set, hold_idx, cfg.eval_batch_size, shuffle=False, device=self.device, channels_last=cl
            )
        self.test_loader = None
        if cfg.evaluate_test:
            test_set = load_dataset(cfg.dataset, "test", cfg.data_root)
            test_idx = None
            if cfg.test_subset is not None and cfg.test_subset < len(test_set):
                g = torch.Generator().manual_seed(cfg.data_seed + 7919)
                test_idx = torch.randperm(len(test_set), generator=g)[: cfg.test_subset].sort().values
            self.test_loader = TensorLoader(
                test_set, test_idx, cfg.eval_batch_size, shuffle=False, device=self.device, channels_last=cl
            )
        self.num_classes = train_set.num_classes
        if self.dist.active:
            for ld in (self.train_loader, self.valid_loader, self.test_loader):
                if ld is not None:
                    try:
                        ld.set_shard(self.dist.rank, self.dist.world)
                    except ValueError as e:
                        raise ConfigError(f"batch_size: {e}; choose a multiple of {self.dist.world}") from None

        # the genotype's skeleton picks the network ("auto": its default; nb201: always nb201)
        network = genotype.skeleton.resolve_eval_network(cfg.network)
        self.network = network
        sizes: dict[str, Any] = {
            "C": cfg.channels,
            "layers": cfg.layers,
            "num_classes": self.num_classes,
            "in_channels": self.input_shape[0],
            "stem_multiplier": cfg.stem_multiplier,  # builders take the sizes that apply to them
            "auxiliary": cfg.auxiliary and cfg.auxiliary_weight > 0,
        }
        self.model = build_eval_network(genotype, network, **sizes).to(self.device)
        if cl:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = count_params(self.model)
        self.macs = count_macs(self.model, self.input_shape)
        backends = loggers if self.dist.is_main else "none"  # rank 0 logs for the job
        self.loggers = LoggerSet(make_loggers(backends, out_dir, f"train-{cfg.dataset}"), warn=log)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, cfg.epochs, eta_min=cfg.lr_min
        )
        self.criterion = nn.CrossEntropyLoss()
        self.epoch = 0
        self.metrics: list[dict] = []
        self.seconds = 0.0
        self._kept: int | None = None  # epoch of the checkpoint on disk
        error = None
        if self.run_dir is not None:
            try:
                self._take_run_dir(resume)
            except StablenasError as e:
                error = self._disk_full(e) if isinstance(e, DiskFullError) else e
        dist.agree(error, "resume")
        if self.dist.active:
            if not self.dist.is_main and resume and out_dir is not None and (out_dir / "checkpoint.pt").exists():
                from ..rundir import load_checkpoint

                self._apply(load_checkpoint(out_dir / "checkpoint.pt", kind="train"))
            dist.broadcast_(list(self.model.state_dict().values()))  # one start for every rank
        self._dist_signal = torch.zeros(1, device=self.device)

    def _take_run_dir(self, resume: bool) -> None:
        """Rank 0 (or the only process): restore a checkpoint, take the directory, start the record."""
        cfg, genotype = self.cfg, self.genotype
        rd = self.run_dir
        stored = _stored(cfg, genotype)
        applied = None
        if resume and rd.checkpoint.exists():  # restore first: a bad checkpoint fails before any write
            applied = rd.load_checkpoint()
            self._apply(applied)
        rd.begin(resume, stored["config"], json.dumps(stored, indent=2) + "\n",
                 extra={"genotype": stored["genotype"]})  # everything is built: take the directory
        try:
            if resume and rd.checkpoint.exists():
                ck = rd.load_checkpoint()
                if ck is not applied:
                    self._apply(ck)
                rd.write_metrics(self.metrics)  # metrics.jsonl may hold an epoch past the checkpoint
                self.log(f"resumed from {rd.checkpoint} after epoch {self.epoch}")
            elif resume:
                rd.write_metrics([])
        except BaseException:
            rd.end("failed", "could not resume")
            raise

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "metrics": self.metrics,
            "seconds": self.seconds,
            "config": self.cfg.model_dump(mode="json"),
            "genotype": self.genotype.to_dict(),
        }

    def _apply(self, st: dict) -> None:
        path = self.out_dir / "checkpoint.pt" if self.out_dir is not None else "checkpoint"
        try:
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
            self.scheduler.load_state_dict(st["scheduler"])
            set_rng_state(st["rng"])
            self.epoch, self.metrics, self.seconds = st["epoch"], list(st["metrics"]), float(st["seconds"])
            self._kept = self.epoch
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
            msg = " ".join(str(e).split())[:160] if str(e) else type(e).__name__
            raise CheckpointError(f"{path}: does not fit this training run ({type(e).__name__}: {msg}); delete "
                                  "it to restart") from None

    # -- loop -----------------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        cfg, model = self.cfg, self.model
        model.train()
        model.drop_path_prob = cfg.drop_path * self.epoch / cfg.epochs
        self.train_loader.set_epoch(self.epoch)
        accum = torch.zeros(3, device=self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.steps,
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            )
        for step, (x, y) in enumerate(self.train_loader):
            if step >= self.steps:
                break
            loss, logits = self.backward(x, y)
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.loggers:
                self._step_losses.append(loss.detach())
            self._time_first_steps(step)
            with torch.no_grad():
                accum += torch.stack(
                    [
                        loss.detach() * y.shape[0],
                        (logits.argmax(1) == y).sum().to(loss.dtype),
                        torch.tensor(float(y.shape[0]), device=loss.device),
                    ]
                )
            if bar is not None:
                bar.update(1)
            if self._signalled():
                break  # the epoch is abandoned: the checkpoint of the last finished one is kept
        if bar is not None:
            bar.close()
        if self._signal is not None:
            name = __import__("signal").Signals(self._signal).name
            raise InterruptedRun(f"interrupted by {name} in epoch {self.epoch + 1}: the checkpoint after epoch "
                                 f"{self.epoch} is kept; resume by running the same `stablenas train` command "
                                 "with --resume", self._signal)
        (accum,) = dist.all_reduce_sum([accum])
        loss_sum, correct, count = accum.tolist()
        weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
        if not (_finite(loss_sum) and weights_ok):  # one sync per epoch; the checkpoint stays good
            kept = (f"the checkpoint after epoch {self.epoch} is kept" if self.epoch else "no checkpoint written")
            clip = "" if cfg.grad_clip else " or set grad_clip (gradient clipping is off)"
            raise DivergedError(f"training diverged: non-finite loss or weights in epoch {self.epoch + 1}; {kept}; "
                                f"lower lr{clip}")
        self.scheduler.step()
        record = {
            "epoch": self.epoch + 1,
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            "lr": lr,
            "drop_path": model.drop_path_prob,
        }
        self.epoch += 1
        last = self.epoch == cfg.epochs
        if cfg.eval_every and (self.epoch % cfg.eval_every == 0) and not last:
            record.update(self._eval_all())
        record["seconds"] = round(time.perf_counter() - start, 3)
        self.seconds += record["seconds"]
        return record

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward (under autocast with ``amp``) and backward of one batch (this rank's slice);
        under data parallelism the gradients and BN statistics are averaged over ranks in one
        collective. Returns (loss, logits)."""
        aux_w = self.cfg.auxiliary_weight
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits, logits_aux = self.model(x)
            loss = self.criterion(logits, y)
            if logits_aux is not None and aux_w > 0:
                loss = loss + aux_w * self.criterion(logits_aux, y)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.dist.active:
            if self._signal is not None:
                self._dist_signal.fill_(1.0)
            (self._dist_signal,) = dist.reduce_grads_(list(self.model.parameters()), [self._dist_signal],
                                                      buffers=list(self.model.buffers()))
        return loss, logits.float()

    def _signalled(self) -> bool:
        if not self.dist.active:
            return self._signal is not None
        if float(self._dist_signal) > 0:  # one rank's signal stops every rank at the same step
            self._signal = self._signal or __import__("signal").SIGTERM
            return True
        return False

    @torch.no_grad()
    def _precise_bn(self) -> None:
        """Population BatchNorm statistics: a cumulative average over one pass of the training
        images (no augmentation, no drop-path: the inputs the network sees at test time)."""
        from ..data import TensorLoader

        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        loader = TensorLoader(
            self._train_set,
            self._train_idx,
            self.cfg.eval_batch_size,
            shuffle=False,
            device=self.device,
            channels_last=self.cfg.channels_last,
        )
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        was_training, drop = self.model.training, self.model.drop_path_prob
        self.model.train()
        self.model.drop_path_prob = 0.0
        for x, _ in loader:
            self.model(x)
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        self.model.train(was_training)
        self.model.drop_path_prob = drop

    def _time_first_steps(self, step: int) -> None:
        """One estimate line after the first steps of a (resumed) run, as the search loop does."""
        from ..search.loop import ESTIMATE_STEPS, _sync, format_seconds

        t = self._timing
        if t.get("done"):
            return
        n = t["steps"] = t.get("steps", 0) + 1
        if n == 1:
            _sync(self.device)
            t["t1"] = time.perf_counter()
        elif n == 1 + ESTIMATE_STEPS:
            _sync(self.device)
            per_step = (time.perf_counter() - t["t1"]) / ESTIMATE_STEPS
            left = (self.cfg.epochs - self.epoch) * self.steps - step - 1
            t["done"] = True
            self.log(f"estimate: {per_step:.2f} s/step x {left} steps left = {format_seconds(per_step * left)} "
                     "(+ evaluation)")

    def _log_epoch(self, record: dict) -> None:
        """Per-step training losses of the epoch (one host sync) and the epoch's scalars."""
        from ..loggers import epoch_scalars

        if self._step_losses:
            values = torch.stack(self._step_losses).tolist()
            first = (self.epoch - 1) * self.steps + 1
            for i, v in enumerate(values):
                self.loggers.log_scalars({"step/train_loss": v}, first + i)
            self._step_losses = []
        self.loggers.log_scalars(epoch_scalars(record, prefix="train"), record["epoch"])
        self.loggers.flush()

    def _eval_all(self) -> dict[str, float]:
        out = {}
        if self.valid_loader is not None:
            r = _evaluate(self.model, self.valid_loader, f"epoch {self.epoch} validation", self.progress)
            out["valid_loss"], out["valid_acc"] = r["loss"], r["acc"]
        if self.test_loader is not None:
            r = _evaluate(self.model, self.test_loader, f"epoch {self.epoch} test", self.progress)
            out["test_loss"], out["test_acc"] = r["loss"], r["acc"]
        return out

    def run(self, stop_after: int | None = None) -> dict | None:
        if self.run_dir is None:
            return self._run(stop_after)
        with stop_signals(self), self.run_dir.recording() as outcome:
            try:
                result = self._run(stop_after)
            except DiskFullError as e:
                raise self._disk_full(e) from None
            if result is None:
                outcome.set("interrupted", f"stopped after epoch {self.epoch}; resume with --resume")
        return result

    def _disk_full(self, e: DiskFullError) -> DiskFullError:
        kept = None if self._kept is None else f"after epoch {self._kept}"
        return self.run_dir.disk_full(e, kept, "the same `stablenas train` command and --resume")

    def _run(self, stop_after: int | None = None) -> dict | None:
        from ..search.loop import format_seconds

        cfg = self.cfg
        done_now, started = 0, time.perf_counter()
        while self.epoch < cfg.epochs:
            if stop_after is not None and done_now >= stop_after:
                return None
            record = self.train_epoch()
            done_now += 1
            self.metrics.append(record)
            if self.run_dir is not None:
                self.run_dir.append_metrics(record)
                self.run_dir.save_checkpoint(self.state_dict())
                self._kept = self.epoch
            msg = (
                f"epoch {record['epoch']}/{cfg.epochs}  train loss {record['train_loss']:.4f} "
                f"acc {record['train_acc']:.4f}  lr {record['lr']:.5f}  {record['seconds']:.1f}s"
            )
            if "test_acc" in record or "valid_acc" in record:
                msg += "  " + "  ".join(
                    f"{k} {record[k]:.4f}" for k in ("valid_acc", "test_acc") if k in record
                )
            if self.epoch < cfg.epochs:  # from this process's epochs, checkpoints included
                msg += f"  eta {format_seconds((time.perf_counter() - started) / done_now * (cfg.epochs - self.epoch))}"
            self.log(msg)
            if self.loggers:
                self._log_epoch(record)
        start = time.perf_counter()
        if cfg.precise_bn:
            self._precise_bn()
        final = self._eval_all()
        eval_seconds = time.perf_counter() - start
        result = {
            "genotype": self.genotype.to_dict(),
            "dataset": cfg.dataset,
            "network": self.network,
            **final,
            "params": self.params,
            "params_M": round(self.params / 1e6, 4),
            "macs": self.macs,
            "macs_M": round(self.macs / 1e6, 4),
            "input_shape": list(self.input_shape),
            "epochs": cfg.epochs,
            "final_train_acc": self.metrics[-1]["train_acc"] if self.metrics else None,
            "final_train_loss": self.metrics[-1]["train_loss"] if self.metrics else None,
            "augmentation": self.aug,
            "train_seconds": round(self.seconds, 3),
            "seconds": round(self.seconds + eval_seconds, 3),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "host": platform.node(),
            "config": cfg.model_dump(mode="json"),
        }
        if self.loggers:
            from ..loggers import epoch_scalars

            self.loggers.log_scalars(epoch_scalars({k: result[k] for k in ("test_acc", "valid_acc", "test_loss",
                                                                           "valid_loss") if k in result},
                                                   prefix="final"), self.epoch)
            self.loggers.close()
        if self.out_dir is not None and self.dist.is_main:
            atomic_write_text(self.out_dir / RESULT, json.dumps(result, indent=2) + "\n")
        return result


def _amp_dtype(amp: str, device: torch.device, log: Callable[[str], None]) -> torch.dtype | None:
    """The autocast dtype of ``amp``; fp16 needs CUDA (loss scaling against underflow), bf16 runs on
    CPU too (slower there than fp32: said once)."""
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "fp16":
            raise ConfigError("amp: fp16 needs a CUDA device (this run is on the CPU); use amp=bf16 or amp=off")
        log("amp: bf16 autocast on the CPU is slower than fp32 here; it is for checking a CUDA setting")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def config_diff(saved: dict, now: dict) -> list[str]:
    """Keys whose value changed, ignoring runtime-only keys; a key missing from ``saved`` (a field
    added to TrainConfig since) counts as its default, so old runs stay resumable."""
    defaults = TrainConfig.model_construct().model_dump(mode="json")
    return sorted(
        k
        for k in set(saved) | set(now)
        if k not in _RUNTIME_KEYS and saved.get(k, defaults.get(k)) != now.get(k, defaults.get(k))
    )


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _stored(cfg: TrainConfig, genotype: Genotype) -> dict:
    return {"config": cfg.model_dump(mode="json"), "genotype": genotype.to_dict()}


def _train_differ(saved: dict, now: dict) -> list[str]:
    diff = config_diff(saved.get("config") or {}, now["config"])
    if saved.get("genotype") != now.get("genotype"):
        diff.insert(0, "genotype")
    return diff


def _run_dir(out_dir: Path) -> RunDir:
    return RunDir(out_dir, kind="train", config_name=CONFIG_FILE, differ=_train_differ)


def _check_out_dir(out_dir: Path, cfg: TrainConfig, genotype: Genotype, resume: bool) -> dict | None:
    """Validate the run directory without writing; returns the finished result when resuming a done run."""
    rd = _run_dir(out_dir)
    stored = _stored(cfg, genotype)
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
) -> dict | None:
    """Train ``genotype`` from scratch and return the result dict (test accuracy, params, MACs...).

    ``genotype`` may be a :class:`Genotype` or anything :func:`resolve_genotype` accepts. With
    ``out_dir`` the run is checkpointed after every epoch and ``result.json`` written at the end;
    ``resume=True`` continues a run there (or just returns its result if it finished).
    ``stop_after`` ends this call after that many epochs and returns ``None`` (time-sliced
    runs; also how the tests simulate a kill). ``loggers``: live logging backends
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
    trainer = _Trainer(genotype, cfg, out, resume=resume, progress=progress, log=log, loggers=loggers)
    return trainer.run(stop_after=stop_after)
