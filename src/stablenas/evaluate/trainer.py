"""The training loop of a discrete image architecture (:func:`stablenas.evaluate.train.train_genotype`).

SGD with momentum and cosine learning rate, gradient clipping, the auxiliary tower, ScheduledDropPath
rising linearly over training and cutout (Liu et al. 2019, Sec. 3.2; robust-darts App. C). The run
directory, signals, the estimate line and the epoch records are the lifecycle every run shares
(:mod:`stablenas.runs.lifecycle`); a stop keeps the checkpoint of the last finished epoch, whose
state (the global RNG that drop-path uses; the loader's order is a function of the epoch) makes a
resume bit-identical on CPU.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist
from ..errors import ConfigError, DivergedError, InterruptedRun
from ..genotype import Genotype
from ..networks.evaluation import build_eval_network
from ..networks.profile import count_macs, count_params
from ..progress import bar as progress_bar
from ..progress import progress_enabled
from ..runs.lifecycle import RunLifecycle, format_seconds
from ..utils import (
    atomic_write_text,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    use_deterministic_algorithms,
)
from .train import CHECKPOINT, RESULT, TrainConfig, stored_record, train_run_dir

__all__ = ["ImageTrainer"]


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


class ImageTrainer(RunLifecycle):
    """One training run of a discrete architecture (module docstring); ``run()`` to the end."""

    RUN_NOUN = "training run"
    CHECKPOINT_ON_STOP = False  # the loader's place within an epoch is not saved: epoch ends only

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
        self.run_dir = train_run_dir(out_dir) if out_dir is not None and self.dist.is_main else None
        self._init_lifecycle()
        self.loggers = LoggerSet([], warn=log)  # opened once everything is built (a failed start writes nothing)
        self.progress = progress_enabled(progress)  # a terminal, not CI (stablenas.progress)
        self.amp = _amp_dtype(cfg.amp, self.device, log)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        if cfg.deterministic:
            use_deterministic_algorithms()
        seed_everything(cfg.seed)
        self._build_data()
        self._build_model()
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
        self._stop_after: int | None = None
        stored = stored_record(cfg, genotype)
        self._agree("resume", lambda: self._take_run_dir(resume, stored["config"], json.dumps(stored, indent=2) + "\n",
                                                         extra={"genotype": stored["genotype"]}))
        if self.dist.active:
            path = out_dir / CHECKPOINT if out_dir is not None else None
            if not self.dist.is_main and resume and path is not None and path.exists():
                from ..runs.checkpoint import load_checkpoint

                self._apply_checkpoint(load_checkpoint(path, kind="train"), path)  # what rank 0 resumed
            dist.broadcast_(list(self.model.state_dict().values()))  # one start for every rank

    def _build_data(self) -> None:
        """The training loader (crop, flip, cutout), the holdout and test loaders; each rank its slice."""
        from ..data import Augment, TensorLoader, load_dataset

        cfg, cl = self.cfg, self.cfg.channels_last
        train_set = load_dataset(cfg.dataset, "train", cfg.data_root)
        self.input_shape = train_set.shape
        train_idx, hold_idx = _split_indices(len(train_set), cfg)
        self._train_set, self._train_idx = train_set, train_idx
        aug = self.aug = cfg.augmentation(self.input_shape[-1])
        augment = Augment(crop_padding=aug["crop_padding"], flip=aug["flip"], cutout=aug["cutout"])
        self.train_loader = TensorLoader(train_set, train_idx, cfg.batch_size, shuffle=True, drop_last=True,
                                         augment=augment, device=self.device, seed=cfg.seed * 1000 + 11,
                                         channels_last=cl)
        if len(self.train_loader) == 0:
            raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(train_idx)} training images")
        self.steps = len(self.train_loader)
        if cfg.steps_per_epoch:
            self.steps = min(self.steps, cfg.steps_per_epoch)
        self.valid_loader = None
        if hold_idx is not None:
            self.valid_loader = TensorLoader(train_set, hold_idx, cfg.eval_batch_size, shuffle=False,
                                             device=self.device, channels_last=cl)
        self.test_loader = None
        if cfg.evaluate_test:
            test_set = load_dataset(cfg.dataset, "test", cfg.data_root)
            test_idx = None
            if cfg.test_subset is not None and cfg.test_subset < len(test_set):
                g = torch.Generator().manual_seed(cfg.data_seed + 7919)
                test_idx = torch.randperm(len(test_set), generator=g)[: cfg.test_subset].sort().values
            self.test_loader = TensorLoader(test_set, test_idx, cfg.eval_batch_size, shuffle=False,
                                            device=self.device, channels_last=cl)
        self.num_classes = train_set.num_classes
        if self.dist.active:
            for ld in (self.train_loader, self.valid_loader, self.test_loader):
                if ld is not None:
                    try:
                        ld.set_shard(self.dist.rank, self.dist.world)
                    except ValueError as e:
                        raise ConfigError(f"batch_size: {e}; choose a multiple of {self.dist.world}") from None

    def _build_model(self) -> None:
        """The genotype's evaluation network (its skeleton picks it: "auto" = the default), its size."""
        cfg = self.cfg
        self.network = network = self.genotype.skeleton.resolve_eval_network(cfg.network)
        sizes: dict[str, Any] = {
            "C": cfg.channels,
            "layers": cfg.layers,
            "num_classes": self.num_classes,
            "in_channels": self.input_shape[0],
            "stem_multiplier": cfg.stem_multiplier,  # builders take the sizes that apply to them
            "auxiliary": cfg.auxiliary and cfg.auxiliary_weight > 0,
        }
        self.model = build_eval_network(self.genotype, network, **sizes).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = count_params(self.model)
        self.macs = count_macs(self.model, self.input_shape)

    # -- the lifecycle's hooks (stablenas.runs.lifecycle) ---------------------------------------
    def _checkpoint_at(self, epoch: int, step: int) -> str:
        return f"after epoch {epoch}"

    def _resume_point(self) -> str:
        return f"after epoch {self.epoch}"

    def _resume_command(self) -> str:
        return "the same `stablenas train` command and --resume"

    def _epoch_plan(self) -> tuple[int, int]:
        return self.cfg.epochs, self.steps

    def _epoch_scalars(self, record: dict) -> dict[str, float]:
        from ..loggers import epoch_scalars

        return epoch_scalars(record, prefix="train")

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

    def load_state_dict(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        set_rng_state(st["rng"])
        self.epoch, self.metrics, self.seconds = st["epoch"], list(st["metrics"]), float(st["seconds"])

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
            loss = self._train_step(x, y, accum)
            global_step = self.epoch * self.steps + step + 1
            self._note_loss(loss, global_step)
            self._time_first_steps(step + 1)
            if bar is not None:
                bar.update(1)
            if self._signalled(global_step):
                break  # the epoch is abandoned: the checkpoint of the last finished one is kept
        if bar is not None:
            bar.close()
        if self._signalled():
            self._interrupt()
        return self._close_epoch(accum, lr, start)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, accum: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch; its loss, correct and count added to ``accum`` (no host sync)."""
        loss, logits = self.backward(x, y)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            accum += torch.stack(
                [
                    loss.detach() * y.shape[0],
                    (logits.argmax(1) == y).sum().to(loss.dtype),
                    torch.tensor(float(y.shape[0]), device=loss.device),
                ]
            )
        return loss

    def _close_epoch(self, accum: torch.Tensor, lr: float, start: float) -> dict:
        """The divergence guard (one host sync per epoch), the schedule step and the epoch's record."""
        cfg, model = self.cfg, self.model
        (accum,) = dist.all_reduce_sum([accum])
        loss_sum, correct, count = accum.tolist()
        weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
        if not (_finite(loss_sum) and weights_ok):  # the checkpoint stays good
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
            self._mark_signal()
            (self._dist_signal,) = dist.reduce_grads_(list(self.model.parameters()), [self._dist_signal],
                                                      buffers=list(self.model.buffers()))
        return loss, logits.float()

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

    def _eval_all(self) -> dict[str, float]:
        out = {}
        if self.valid_loader is not None:
            r = _evaluate(self.model, self.valid_loader, f"epoch {self.epoch} validation", self.progress)
            out["valid_loss"], out["valid_acc"] = r["loss"], r["acc"]
        if self.test_loader is not None:
            r = _evaluate(self.model, self.test_loader, f"epoch {self.epoch} test", self.progress)
            out["test_loss"], out["test_acc"] = r["loss"], r["acc"]
        return out

    def run(self, stop_after: int | None = None) -> dict:
        """Train to the end; ``stop_after``: stop after that many epochs of this call as a signal
        would (:class:`InterruptedRun`, the checkpoint kept)."""
        self._stop_after = stop_after
        return super().run()

    def _run(self) -> dict:
        cfg = self.cfg
        done_now, started = 0, time.perf_counter()
        while self.epoch < cfg.epochs:
            if self._stop_after is not None and done_now >= self._stop_after:
                raise InterruptedRun(f"stopped after epoch {self.epoch} (stop_after {self._stop_after}): the "
                                     f"checkpoint after epoch {self.epoch} is kept; resume with "
                                     f"{self._resume_command()}")
            record = self.train_epoch()
            done_now += 1
            self.metrics.append(record)
            self._commit_epoch(record, partial(self._epoch_line, record, started, done_now))
        return self._finish()

    def _epoch_line(self, record: dict, started: float, done_now: int) -> str:
        cfg = self.cfg
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
        return msg

    def _finish(self) -> dict:
        """The final evaluation (after precise BN statistics if asked) and ``result.json``."""
        cfg = self.cfg
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


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))
