"""The one search loop.

Each step: (1) unless alpha is frozen, update alpha on a validation batch by the configured rule
(first order, second order = DARTS unrolled, or nothing) or let a method do it; (2) update the
weights on a training batch with the op weights the methods hand over (perturbed, shifted,
sampled). ``single`` updates both from one loss on one batch. Everything a resume needs is in
the checkpoint, written atomically at every epoch end (and optionally every N steps), so a run
killed at any point continues to the same final alpha as one that was never interrupted.

The run directory (lock, config check, safe checkpoints, metrics, status) is
:class:`stablenas.runs.directory.RunDir`, taken, resumed and released by the lifecycle every run
shares (:class:`stablenas.runs.lifecycle.RunLifecycle`).  Two guards sit on the loop:

- *Divergence*: each step folds "loss and gradient norm are finite" into a device tensor (no host
  sync); it is read every ``GUARD_EVERY`` steps and, together with a finiteness check of alpha and
  the weights, before every checkpoint and epoch record.  A non-finite value stops the run with
  :class:`~stablenas.errors.DivergedError` naming the step; the checkpoint on disk is the last one
  that passed the check, and no genotype is derived from the bad alpha.
- *Signals*: SIGINT/SIGTERM set a flag that the loop reads after every step; it then saves a
  checkpoint at that step and raises :class:`~stablenas.errors.InterruptedRun` (exit 130/143).

Under torchrun (:mod:`stablenas.distributed`) every rank runs this loop on its slice of each batch;
the gradients are averaged where they are made (``distributed.grad``, one flat all_reduce after the
weight step that also averages BN running statistics and carries the epoch sums and the signal
flag), so all ranks stay in lockstep; rank 0 alone owns the run directory, and every epoch end
checks (checksum all_gather) that the ranks still hold the same alpha and weights.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from .. import distributed as dist
from ..config import SearchConfig
from ..data import TensorLoader
from ..errors import ConfigError, DivergedError, RunExistsError
from ..genotype import Genotype
from ..methods import Method
from ..methods.base import schedule_epochs
from ..progress import progress_enabled
from ..progress import write as write_line
from ..registry import LOOKUPS, METHODS, SKELETONS
from ..runs.checkpoint import CHECKPOINT, load_checkpoint
from ..runs.directory import RunDir
from ..runs.lifecycle import GUARD_EVERY, RunLifecycle, format_seconds
from ..skeletons.base import SearchData
from ..spaces.catalog import get_space
from ..supernet import engine
from ..supernet.arch import ArchParams
from ..supernet.mix import Mix
from ..utils import resolve_device, seed_everything, use_deterministic_algorithms
from .alpha import AlphaSteps
from .discretize import DISCRETIZERS
from .operations import MethodOperations
from .readout import Readouts
from .state import SearchState

# config keys that may change between a run and its resume without changing the result
RUNTIME_KEYS = ("device", "threads", "description")
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class SearchResult:
    genotype: Genotype
    metrics: list[dict]
    out_dir: Path | None
    config: SearchConfig
    search: Search

    @property
    def arch(self) -> ArchParams:
        return self.search.arch


class Search(SearchState, AlphaSteps, Readouts, RunLifecycle, MethodOperations):
    """A configured search: data, supernet, alpha, optimisers and methods, ready to ``run()``."""

    RUN_NOUN = "search"
    ESTIMATE_EXTRA = "epoch-end evaluation"

    def __init__(self, config: SearchConfig, out_dir: str | Path | None = None, *, resume: bool = False,
                 progress: bool | None = None, log: Callable[[str], None] | None = None,
                 data: SearchData | None = None,
                 loggers: str | Sequence[str] | None = None):
        self.cfg = cfg = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log = log or write_line  # through the progress bar (stablenas.progress.write)
        self.progress = progress_enabled(progress)  # a terminal, not CI (stablenas.progress)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # under torchrun: join the process group; this rank's device (cuda:LOCAL_RANK or cpu)
        self.dist, self.device = dist.setup(cfg.device) if dist.launched() else (dist.current(),
                                                                                 resolve_device(cfg.device))
        if not self.dist.is_main:  # rank 0 speaks and writes for the job
            self.log, self.progress = (lambda s: None), False
        self.run_dir = (RunDir(self.out_dir, kind="search", config_name="config.yaml", runtime_keys=RUNTIME_KEYS)
                        if self.out_dir is not None and self.dist.is_main else None)
        self._init_lifecycle()

        def check() -> None:  # read-only: refuse before anything is built or written
            from ..loggers import check_backends

            check_backends(loggers)
            self.run_dir.check(resume, config.to_dict())

        self._agree("run directory check", check)
        seed_everything(cfg.seed)
        if cfg.deterministic:
            use_deterministic_algorithms()
        self.space = get_space(cfg.space)
        self._build_data(data)
        self._build_model()
        self._build_optimizers()
        self._init_loop_state()
        for m in self.methods:
            m.setup(self)
        # alpha steps happen when a rule or a method needs validation batches
        self.uses_val_stream = cfg.search.update in ("first", "second") or any(
            type(m).arch_step is not Method.arch_step for m in self.methods)
        self._agree("resume", lambda: self._take_run_dir(resume, config.to_dict(), config.to_yaml()))
        if self.dist.active:
            path = self.out_dir / CHECKPOINT if self.out_dir is not None else None
            if not self.dist.is_main and resume and path is not None and path.exists():
                self._apply_checkpoint(load_checkpoint(path, kind="search"), path)  # what rank 0 resumed
            # one start for every rank, whatever each built: rank 0's alpha and weights
            dist.broadcast_([*self.arch.parameters(), *self.net.state_dict().values()])
        # live logging (stablenas.loggers): per-step losses are kept on the device and written in
        # blocks of LOG_EVERY steps, so the hot loop never waits for a host sync
        from ..loggers import LoggerSet, make_loggers

        self.loggers = LoggerSet(make_loggers(loggers if self.dist.is_main and not self.complete else "none",
                                              self.out_dir, cfg.name), warn=self.log)
        if self.loggers:
            self.loggers.log_config(cfg.to_dict())

    def _build_data(self, data: SearchData | None) -> None:
        """Data from the space's skeleton (image skeletons: the DARTS split of the training set into a
        weight half and an alpha half); a caller may hand the data in."""
        cfg = self.cfg
        self.skeleton = SKELETONS[self.space.skeleton]
        self.model_options = self.skeleton.parse_options(cfg.model)  # the config's model: section
        self.data = data if data is not None else self.skeleton.search_data(cfg, self.device)
        self.dataset = self.data.dataset
        self.train_loader = self.data.train_loader
        self.val_stream = self.data.val_stream
        self.val_eval_loader = self.data.val_eval_loader
        if len(self.train_loader) == 0:
            raise ConfigError(f"data.batch_size {cfg.data.batch_size} exceeds the {self.data.n_train} training "
                              "images of the search split; lower it or raise data.subset")
        if self.dist.active:
            self._shard_data()

    def _build_model(self) -> None:
        """The supernet and alpha (alpha lives outside the network; see supernet.arch)."""
        cfg = self.cfg
        self.num_classes = self.data.num_classes
        self.net = self.skeleton.supernet_from_config(self.space, cfg, self.data).to(self.device)
        if cfg.network.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.net.channels_last = True
        # this device's engine options (its defaults or a `bench --tune` file), recorded in status.json
        self.engine = engine.apply(self.net, self.device, self.log)
        self._net_forward = engine.StepForward(self.log)
        if self.run_dir is not None:
            self.run_dir.status_info["engine"] = self.engine.record()
        a = cfg.arch
        gen = torch.Generator().manual_seed(cfg.seed)
        self.arch = ArchParams(self.space, a.activation, a.init, a.init_scale, a.edge_betas,
                               generator=gen).to(self.device)

    def _build_optimizers(self) -> None:
        """SGD with cosine annealing on the weights, Adam (or SGD) on alpha; the loss; the methods."""
        cfg, o = self.cfg, self.cfg.optim
        self.w_optimizer = torch.optim.SGD(self.net.parameters(), lr=o.lr, momentum=o.momentum,
                                           weight_decay=o.weight_decay)
        # the epochs the schedules span: optim.epochs unless a method runs on past them (Method.schedule_epochs)
        self.schedule_epochs = schedule_epochs(cfg)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, self.schedule_epochs,
                                                                    eta_min=o.lr_min)
        if o.arch_optimizer == "adam":
            self.a_optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.arch.parameters(), lr=o.arch_lr, betas=o.arch_betas, weight_decay=o.arch_weight_decay)
        else:
            self.a_optimizer = torch.optim.SGD(self.arch.parameters(), lr=o.arch_lr,
                                               weight_decay=o.arch_weight_decay)
        self.criterion = nn.CrossEntropyLoss()
        self.methods: list[Method] = [METHODS[m.name](m.model_extra or {}) for m in cfg.methods]

    def _init_loop_state(self) -> None:
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.metrics: list[dict] = []
        self.stop_reason: str | None = None
        self.notes: set[str] = set()  # keys of messages said once (e.g. a missing benchmark table)
        # the data stream of the current phase, "train" | "val" | "eval" (stateful skeletons key
        # their carried state by it; see skeletons.base)
        self.stream = "train"
        self.final_genotype: Genotype | None = None  # pinned by set_outcome (RS-ws, DARTS-ES)
        self._accum = torch.zeros(3, device=self.device)  # loss sum, correct, count (no host syncs)
        # global step of the first non-finite loss / gradient norm, -1 while all were finite
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.epoch_start_time = 0.0
        self.epoch_seconds = 0.0  # training time of the current epoch so far (survives a resume)
        self._fixed_loaders: dict[tuple[int, int], TensorLoader] = {}  # see fixed_val_batches
        # the current weight step's batch and op weights (after the methods' transforms)
        self.weight_batch: Batch | None = None
        self.weight_mix: Mix | None = None
        # how a genotype is read off alpha; a method may install its own (iDARTS: decorrelation
        # with its options) in setup()
        self.discretizer: Callable[[Search], Genotype] = DISCRETIZERS[self.cfg.search.discretizer]

    def _shard_data(self) -> None:
        """Each rank takes its slice of every batch of every stream (the config's batch is global)."""
        check_data_parallel(self.cfg, self.dist.world)
        for loader in (self.train_loader, getattr(self.val_stream, "loader", self.val_stream), self.val_eval_loader):
            loader.set_shard(self.dist.rank, self.dist.world)

    # ---------------------------------------------------------------------------------------
    # the lifecycle's hooks (stablenas.runs.lifecycle)

    def _position(self) -> tuple[int, int]:
        return self.epoch, self.step_in_epoch

    def _epoch_plan(self) -> tuple[int, int]:
        return self.cfg.optim.epochs, self.steps_per_epoch

    def _resumed_complete(self) -> bool:
        done = self.epoch >= self.cfg.optim.epochs or self.stop_reason is not None
        if done and (self.run_dir.path / "genotype.json").exists():
            self.log(f"{self.out_dir} is complete ({self.epoch}/{self.cfg.optim.epochs} epochs"
                     f"{', stopped early' if self.stop_reason else ''}); nothing to resume, nothing written")
            return True
        return False

    def _completed_result(self) -> SearchResult:
        genotype = Genotype.load(self.run_dir.path / "genotype.json")
        return SearchResult(genotype, self.metrics, self.out_dir, self.cfg, self)

    def _after_resume(self) -> None:
        if self._saved_world != self.dist.world:
            self.log(f"note: the run was on {self._saved_world} rank(s), this resume on {self.dist.world}: "
                     "each rank's slice of the batch changes, so it continues differently from an "
                     "uninterrupted run")

    def _resume_command(self) -> str:
        """How to continue this run (data parallel on one machine: with ``--nproc``, as it started)."""
        cfg_file = self.out_dir / "config.yaml" if self.out_dir is not None else "CONFIG"
        cmd = f"`stablenas search {cfg_file} --out {self.out_dir} --resume"
        if not self.dist.active:
            return cmd + "`"
        if os.environ.get("LOCAL_WORLD_SIZE") == str(self.dist.world):
            return cmd + f" --nproc {self.dist.world}`"
        return cmd + "` under the same torchrun command"

    def _epoch_scalars(self, record: dict) -> dict[str, float]:
        """Epoch scalars, op weights per edge (i->j) and the derived cells' parameter-free share."""
        from ..loggers import epoch_scalars, op_weight_scalars, param_free_scalars

        scalars = epoch_scalars(record)
        scalars.update(op_weight_scalars(record["op_weights"], self.space.edge_ops, self.space.edges))
        scalars.update(param_free_scalars(Genotype.from_dict(record["genotype"])))
        return scalars

    # ---------------------------------------------------------------------------------------
    # forward helpers

    def mix(self, phase: str, batch: Batch | None = None) -> Mix:
        """Op weights from alpha, then every method's transform for this phase."""
        m = Mix(self.arch.op_weights(), self.arch.edge_weights())
        for method in self.methods:
            m = method.transform(self, m, phase, batch)
        return m

    def forward(self, x: torch.Tensor, mix: Mix, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Supernet logits; with ``params`` the weights are substituted functionally and BN
        running statistics go to throw-away copies (virtual steps must not move them)."""
        if params is None:
            return self._net_forward(self.net, x, mix.op, mix.edge, mix.hard, **mix.net_kwargs())
        buffers = {n: b.clone() for n, b in self.net.named_buffers()}
        return functional_call(self.net, {**params, **buffers}, (x, mix.op, mix.edge, mix.hard), mix.net_kwargs())

    def loss(self, x: torch.Tensor, y: torch.Tensor, mix: Mix,
             params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The training criterion on a batch; the skeleton decides (a recurrent one carries its
        hidden state per ``self.stream``)."""
        return self.skeleton.loss(self, x, y, mix, params)

    @property
    def steps_per_epoch(self) -> int:
        """Weight steps of the current epoch: the loader's batches of this epoch (a BPTT stream's
        window count varies per epoch), capped by ``search.steps_per_epoch``."""
        n = len(self.train_loader)
        cap = self.cfg.search.steps_per_epoch
        return min(n, cap) if cap else n

    @property
    def lr(self) -> float:
        return self.w_optimizer.param_groups[0]["lr"]

    @property
    def epochs_done(self) -> float:
        """Epochs done at the current step, fractional within an epoch (per-step schedules divide it by
        ``schedule_epochs``)."""
        return self.epoch + self.step_in_epoch / max(self.steps_per_epoch, 1)

    def drop_path_at(self, epoch: int) -> float:
        """The drop-path probability of epoch ``epoch``: linear up to ``drop_path_max`` over the schedule
        span (the DARTS code's ``drop_path_prob * epoch / epochs``), held there past it."""
        return self.cfg.regularization.drop_path_max * min(epoch / self.schedule_epochs, 1.0)

    def alpha_frozen(self) -> bool:
        """No alpha step in this epoch: warm-up, ``update: none``, or a method freezes it
        (``Method.freezes_alpha``, e.g. DARTS-PT's selection phase with ``freeze_alpha``)."""
        return (self.epoch < self.cfg.optim.warmup_epochs or self.cfg.search.update == "none"
                or any(m.freezes_alpha(self) for m in self.methods))

    # ---------------------------------------------------------------------------------------
    # the weight step

    def weight_step(self, batch: Batch) -> torch.Tensor:
        x, y = batch
        single = self.cfg.search.update == "single" and not self.alpha_frozen()
        mix = self.mix("weights", batch)
        if not single:
            mix = mix.detached()
        self.weight_batch, self.weight_mix = batch, mix  # for the methods' on_weight_grads
        loss, sums = self.skeleton.weight_loss(self, x, y, mix)
        self.w_optimizer.zero_grad(set_to_none=True)
        if single:
            self.a_optimizer.zero_grad(set_to_none=True)
        penalty = self.arch_penalty() if single else None  # the same on every rank: the mean keeps it whole
        (loss if penalty is None else loss + penalty).backward()
        # drop the graph now: its node objects, small heap chunks between the freed activations,
        # would otherwise live into the next step and fragment the heap (measured: +0.6 GB peak RSS
        # in a second-order step at the cpu-study size)
        loss = loss.detach()
        finite = torch.isfinite(loss)
        if self.dist.active:
            # one flat all_reduce: weight (and single-level alpha) gradients and BN running statistics
            # averaged, the epoch sums and "some rank was signalled" carried along
            params = [*self.net.parameters(), *(self.arch.parameters() if single else ())]
            self._mark_signal()
            sums, self._dist_signal = dist.reduce_grads_(params, [sums, self._dist_signal],
                                                         buffers=list(self.net.buffers()))
            sums = sums * self.dist.world
            finite = torch.isfinite(sums[0])  # the job's loss: every rank takes the same decision
        for m in self.methods:  # the job's gradients, before clipping and the step (OLES drops some)
            m.on_weight_grads(self)
        if self.cfg.optim.grad_clip:
            norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.optim.grad_clip)
            finite = finite & torch.isfinite(norm)
        scale = self.skeleton.weight_lr_scale(self, batch)
        if scale != 1.0:  # e.g. DARTS RNN: lr * seq_len / bptt for a variable-length window
            lrs = [g["lr"] for g in self.w_optimizer.param_groups]
            for g in self.w_optimizer.param_groups:
                g["lr"] = g["lr"] * scale
            self.w_optimizer.step()
            for g, lr in zip(self.w_optimizer.param_groups, lrs):
                g["lr"] = lr
        else:
            self.w_optimizer.step()
        if single:
            self.a_optimizer.step()
        with torch.no_grad():
            self._accum += sums
            # remember the first bad step on the device; read at guard points only
            self._bad_step = torch.where(finite | (self._bad_step >= 0), self._bad_step,
                                         torch.full_like(self._bad_step, self.global_step))
        return loss

    # ---------------------------------------------------------------------------------------
    # the divergence guard

    def check_finite(self, full: bool = True) -> None:
        """Raise :class:`DivergedError` if a loss or gradient norm since the last good state was
        non-finite, or (``full``) alpha or a weight is. One host sync."""
        flags = [self._bad_step < 0]
        if full:
            flags += [torch.isfinite(p).all() for p in self.arch.parameters()]
            flags += [torch.isfinite(p).all() for p in self.net.parameters()]
        if bool(torch.stack(flags).all()):
            return
        bad = int(self._bad_step)
        if bad >= 0:
            epoch, step = divmod(bad, max(self.steps_per_epoch, 1))
            what = f"non-finite loss or gradient at epoch {epoch + 1}, step {step + 1} (global step {bad + 1})"
        else:
            names = [n for n, p in self.arch.named_parameters() if not torch.isfinite(p).all()]
            kind = f"alpha ({', '.join(names)})" if names else "weights"
            what = f"non-finite {kind} at epoch {self.epoch + 1}, step {self.step_in_epoch}"
        raise DivergedError(self._diverged_message(what))

    def _diverged_message(self, what: str) -> str:
        if self._last_good is not None and self.run_dir is not None:
            e, st = self._last_good
            kept = (f"kept the last good checkpoint ({self.run_dir.checkpoint}, epoch {e + 1} step {st})"
                    if st else f"kept the last good checkpoint ({self.run_dir.checkpoint}, end of epoch {e})")
        elif self.run_dir is not None:
            kept = "no checkpoint had been written"
        else:
            kept = "nothing saved (no run directory)"
        clip = "" if self.cfg.optim.grad_clip else " or set optim.grad_clip (gradient clipping is off)"
        return f"search diverged: {what}; {kept}; no genotype written. Lower optim.lr / optim.arch_lr{clip}"

    # ---------------------------------------------------------------------------------------
    # epochs

    def step(self, train_batch: Batch, val_batch: Batch | None = None) -> torch.Tensor:
        """One search step, the loop body: when the rule or a method takes alpha steps and alpha is
        not frozen (warm-up, ``update: none``), an alpha step on ``val_batch`` (the next batch of
        the alpha stream when None), then the weight step on ``train_batch``. Returns the weight
        loss (a tensor: no host sync). Call :meth:`start_epoch` first."""
        if self.uses_val_stream and not self.alpha_frozen():
            if val_batch is None:
                val_batch = next(self.val_stream)
            self.stream = "val"
            self.arch_step(train_batch, val_batch)
            if self.dist.active:  # its train-mode forwards moved BN statistics: the same on every rank
                self.sync_buffers()
        self.stream = "train"
        return self.weight_step(train_batch)

    def sync_buffers(self) -> None:
        """Average the float buffers (BN running statistics) over ranks, so that the eval-mode
        forwards that read them (SDARTS-ADV's attack, MS-DARTS's samples) see the same values on
        every rank: the mean of the ranks' updates, as one process would update on the global batch
        up to the between-shard variance."""
        bufs = [b for b in self.net.buffers() if b.is_floating_point()]
        with torch.no_grad():
            for b, v in zip(bufs, dist.all_reduce_mean(bufs)):
                b.copy_(v)

    def start_epoch(self, epoch: int) -> None:
        """Enter epoch ``epoch``: loader order, drop-path, the methods' per-epoch schedules."""
        self.epoch = epoch
        self.step_in_epoch = 0
        self._accum.zero_()
        self.train_loader.set_epoch(epoch)
        self.net.drop_path_prob = self.drop_path_at(epoch)
        for m in self.methods:
            m.on_epoch_start(self, epoch)

    def train_epoch(self) -> None:
        """Run (the rest of) the current epoch from ``self.step_in_epoch``."""
        self.net.train()
        start = time.perf_counter()
        it = iter(self.train_loader)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, leave=False, file=sys.stderr,
                       desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}", dynamic_ncols=True)
        every = self.cfg.search.checkpoint_every
        while self.step_in_epoch < self.steps_per_epoch:
            loss = self.step(next(it))
            self.step_in_epoch += 1
            self.global_step += 1
            self._note_loss(loss, self.global_step)
            self._time_first_steps(self.step_in_epoch)
            if bar is not None:
                bar.update(1)
            if self._signalled(self.global_step):
                if bar is not None:
                    bar.close()
                self._interrupt()
            if every and self.step_in_epoch % every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self.save_checkpoint()
            elif self.global_step % GUARD_EVERY == 0:
                self.check_finite(full=False)
        if bar is not None:
            bar.close()
        self.epoch_seconds += time.perf_counter() - start

    def genotype(self) -> Genotype:
        """The architecture alpha gives now (the configured or a method's discretiser)."""
        return self.discretizer(self)

    def end_epoch(self) -> dict:
        """Close the epoch: evaluate, discretise, let methods add to the record, log, checkpoint."""
        return self._end_epoch()

    def _end_epoch(self) -> dict:
        t_end = time.perf_counter()
        epoch = self.epoch
        self.check_finite()  # before anything is derived from alpha or written
        # ranks in lockstep: the same alpha and weights everywhere (else stop before any write)
        dist.check_same([*self.arch.parameters(), *self.net.parameters()], f"search epoch {epoch + 1}")
        self._timing["train_seconds"] = self._timing.get("train_seconds", 0.0) + self.epoch_seconds
        loss_sum, correct, count = self._accum.tolist()
        val_loss, val_acc = self.evaluate(desc=f"epoch {epoch + 1} evaluation")
        if not math.isfinite(val_loss):
            raise DivergedError(self._diverged_message(f"non-finite validation loss at the end of epoch "
                                                       f"{epoch + 1}"))
        record = {
            "epoch": epoch + 1,
            **self.skeleton.epoch_metrics("train", loss_sum / max(count, 1), correct / max(count, 1)),
            **self.skeleton.epoch_metrics("val", val_loss, val_acc),
            "lr": self.lr,
            "seconds": round(self.epoch_seconds, 3),
            "alpha_frozen": self.alpha_frozen(),
            "op_weights": self.op_weights_record(),
        }
        self.epoch_seconds = 0.0
        if self.arch.edge_weights() is not None:
            record["edge_weights"] = {ct: [round(float(v), 6) for v in t.detach().cpu()]
                                      for ct, t in self.arch.edge_weights().items()}
        record["genotype"] = self.genotype().to_dict()
        if self.cfg.evaluation.lookup and self.space.name in LOOKUPS:
            LOOKUPS[self.space.name](self, record)  # S5 table / NAS-Bench-201: test acc (regret) of the genotype
        for m in self.methods:
            m.on_epoch_end(self, epoch, record)
        self.metrics.append(record)
        self.scheduler.step()
        self.epoch = epoch + 1
        self.step_in_epoch = 0
        self._commit_epoch(record, lambda: self._epoch_line(record, val_loss, t_end))
        return record

    def _epoch_line(self, record: dict, val_loss: float, t_end: float) -> str:
        """The epoch's log line, with an ETA from the epochs this process measured."""
        self._timing["epoch_seconds"] = self._timing.get("epoch_seconds", 0.0) + time.perf_counter() - t_end
        epoch = record["epoch"] - 1
        sk, m = self.skeleton, self.skeleton.metric
        line = (f"epoch {epoch + 1}/{self.cfg.optim.epochs}  train loss {record['train_loss']:.4f} "
                f"{m} {sk.format_metric(record[f'train_{m}'])}  val loss {val_loss:.4f} "
                f"{m} {sk.format_metric(record[f'val_{m}'])}  lr {record['lr']:.5f}")
        if isinstance(record.get("lambda_max"), (int, float)):
            line += f"  lambda_max {record['lambda_max']:.4g}"
        line += f"  {record['seconds']:.1f}s"
        self._timing["epochs"] = self._timing.get("epochs", 0) + 1
        left = self.cfg.optim.epochs - self.epoch
        if left > 0 and self.stop_reason is None:
            per_epoch = (self._timing["epoch_seconds"] + self._timing.get("train_seconds", 0.0)) \
                / self._timing["epochs"]
            line += f"  eta {format_seconds(per_epoch * left)}"
        return line

    def set_outcome(self, *, genotype: Genotype | None = None, stop: str | None = None) -> None:
        """The one way a method ends the search or fixes its result: ``stop`` (a reason) ends it
        after this epoch, ``genotype`` is returned (and saved) instead of the discretised alpha.
        DARTS-ES does both; RS-ws pins its best sampled architecture."""
        if stop is not None:
            self.stop_reason = stop
        if genotype is not None:
            self.final_genotype = genotype

    def _run(self) -> SearchResult:
        epochs = self.cfg.optim.epochs
        while self.epoch < epochs and self.stop_reason is None:
            if self._signalled():
                self._interrupt()
            if self.step_in_epoch == 0:
                self.start_epoch(self.epoch)
            self.train_epoch()
            self._end_epoch()
        self.check_finite()
        genotype = self.final_genotype or self.genotype()
        if self.stop_reason:
            self.log(f"stopped early: {self.stop_reason}")
        if self.run_dir is not None:
            genotype.save(self.run_dir.path / "genotype.json")
            self.save_checkpoint()
        self.loggers.close()
        return SearchResult(genotype, self.metrics, self.out_dir, self.cfg, self)

def check_data_parallel(cfg: SearchConfig, world: int) -> None:
    """Refuse, at config time, a search on ``world`` ranks that cannot split its data: the skeleton's
    streams must shard (the ``data_parallel`` capability) and the global batch divide evenly."""
    if world <= 1:
        return
    skeleton = SKELETONS[get_space(cfg.space).skeleton]
    if not skeleton.supports("data_parallel"):
        raise ConfigError(f"space {cfg.space}: the {skeleton.name} skeleton's data streams cannot be split across "
                          f"{world} ranks; run it in one process (without --nproc or torchrun)")
    if cfg.data.batch_size % world:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by the {world} ranks (it is the "
                          f"global batch, split across them); choose a multiple of {world}")


def run_search(config: SearchConfig, out_dir: str | Path | None = None, *, resume: bool = False,
               progress: bool | None = None, log: Callable[[str], None] | None = None,
               loggers: str | Sequence[str] | None = None) -> SearchResult:
    """Python entry point: build and run a search from a validated config. ``loggers``: live
    logging backends (``"auto"``: TensorBoard when installed; see :mod:`stablenas.loggers`)."""
    return Search(config, out_dir, resume=resume, progress=progress, log=log, loggers=loggers).run()


__all__ = ["CHECKPOINT", "GUARD_EVERY", "RUNTIME_KEYS", "RunExistsError", "Search", "SearchResult",
           "check_data_parallel", "run_search"]
