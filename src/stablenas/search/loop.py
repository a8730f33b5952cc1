"""The one search loop.

Each step: (1) unless alpha is frozen, update alpha on a validation batch by the configured rule
(first order, second order = DARTS unrolled, or nothing) or let a method do it; (2) update the
weights on a training batch with the op weights the methods hand over (perturbed, shifted,
sampled). ``single`` updates both from one loss on one batch. Everything a resume needs is in
the checkpoint, written atomically at every epoch end (and optionally every N steps), so a run
killed at any point continues to the same final alpha as one that was never interrupted.

The run directory (lock, config check, safe checkpoints, metrics, status) is
:class:`stablenas.rundir.RunDir`.  Two guards sit on the loop:

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

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from .. import distributed as dist
from ..config import SearchConfig
from ..data import TensorLoader
from ..errors import (
    ConfigError,
    DiskFullError,
    DivergedError,
    InterruptedRun,
    RankDiedError,
    RunExistsError,
    StablenasError,
)
from ..genotype import Genotype
from ..methods import Method
from ..methods.base import schedule_epochs
from ..progress import bar as progress_bar
from ..progress import progress_enabled
from ..progress import write as write_line
from ..registry import LOOKUPS, METHODS, SKELETONS
from ..rundir import CHECKPOINT, RunDir, load_checkpoint, stop_signals
from ..skeletons.base import SearchData
from ..spaces.catalog import get_space
from ..supernet import engine
from ..supernet.arch import ArchParams
from ..supernet.kernels import EngineOptions
from ..supernet.mix import Mix
from ..supernet.network import double_backward_mode, set_engine, weights_frozen
from ..utils import resolve_device, rng_state, seed_everything, set_rng_state, use_deterministic_algorithms
from .discretize import DISCRETIZERS

# config keys that may change between a run and its resume without changing the result
RUNTIME_KEYS = ("device", "threads", "description")
GUARD_EVERY = 50  # steps between reads of the on-device finiteness flag
LOG_EVERY = 20  # steps per block of per-step scalars sent to the loggers
ESTIMATE_STEPS = 3  # steps timed (after the first) for the estimate line at the start of a run
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


class Search:
    """A configured search: data, supernet, alpha, optimisers and methods, ready to ``run()``."""

    def __init__(self, config: SearchConfig, out_dir: str | Path | None = None, *, resume: bool = False,
                 progress: bool | None = None, log: Callable[[str], None] | None = None,
                 data: SearchData | None = None,
                 loggers: str | Sequence[str] | None = None):
        self.cfg = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log = log or write_line  # through the progress bar (stablenas.progress.write)
        self.progress = progress_enabled(progress)  # a terminal, not CI (stablenas.progress)
        cfg = config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # under torchrun: join the process group; this rank's device (cuda:LOCAL_RANK or cpu)
        self.dist, self.device = dist.setup(cfg.device) if dist.launched() else (dist.current(),
                                                                                 resolve_device(cfg.device))
        if not self.dist.is_main:  # rank 0 speaks and writes for the job
            self.log, self.progress = (lambda s: None), False
        self.run_dir = (RunDir(self.out_dir, kind="search", config_name="config.yaml", runtime_keys=RUNTIME_KEYS)
                        if self.out_dir is not None and self.dist.is_main else None)
        error = None
        if self.run_dir is not None:  # read-only: refuse before anything is built or written
            try:
                from ..loggers import check_backends

                check_backends(loggers)
                self.run_dir.check(resume, config.to_dict())
            except StablenasError as e:
                error = e
        dist.agree(error, "run directory check")
        seed_everything(cfg.seed)
        if cfg.deterministic:
            use_deterministic_algorithms()
        self.space = get_space(cfg.space)

        # data and supernet come from the space's skeleton (image skeletons: the DARTS split of the
        # training set into a weight half and an alpha half); a caller may hand the data in
        self.skeleton = SKELETONS[self.space.skeleton]
        self.model_options = self.skeleton.parse_options(cfg.model)  # the config's model: section
        d = cfg.data
        self.data = data if data is not None else self.skeleton.search_data(cfg, self.device)
        self.dataset = self.data.dataset
        self.train_loader = self.data.train_loader
        self.val_stream = self.data.val_stream
        self.val_eval_loader = self.data.val_eval_loader
        if len(self.train_loader) == 0:
            raise ConfigError(f"data.batch_size {d.batch_size} exceeds the {self.data.n_train} training images "
                              "of the search split; lower it or raise data.subset")
        if self.dist.active:
            self._shard_data()

        # model and alpha (alpha lives outside the network; see supernet.arch)
        cl = cfg.network.channels_last
        self.num_classes = self.data.num_classes
        self.net = self.skeleton.supernet_from_config(self.space, cfg, self.data).to(self.device)
        if cl:
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
        o = cfg.optim
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

        # loop state
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
        self._last_good: tuple[int, int] | None = None  # (epoch, step) of the newest checkpoint
        self._signal: int | None = None
        # a stop another rank was signalled for: kept apart from this process's own signal, which
        # may still come (a signal to every rank lands at slightly different steps) and must not
        # count as the second signal that abandons the checkpoint
        self._peer_signal: int | None = None
        self.epoch_start_time = 0.0
        self.epoch_seconds = 0.0  # training time of the current epoch so far (survives a resume)
        self._fixed_loaders: dict[tuple[int, int], TensorLoader] = {}  # see fixed_val_batches
        # the current weight step's batch and op weights (after the methods' transforms)
        self.weight_batch: Batch | None = None
        self.weight_mix: Mix | None = None
        # how a genotype is read off alpha; a method may install its own (iDARTS: decorrelation
        # with its options) in setup()
        self.discretizer: Callable[[Search], Genotype] = DISCRETIZERS[cfg.search.discretizer]

        for m in self.methods:
            m.setup(self)
        # alpha steps happen when a rule or a method needs validation batches
        self.uses_val_stream = cfg.search.update in ("first", "second") or any(
            type(m).arch_step is not Method.arch_step for m in self.methods)
        error = None
        self.complete = False  # resumed a finished run: nothing to do, nothing written
        if self.run_dir is not None:
            try:
                self._take_run_dir(resume, config)
            except StablenasError as e:
                error = e
        dist.agree(error, "resume")
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
        self._step_losses: list[torch.Tensor] = []
        self._timing: dict = {}
        # data parallelism: the step's reduced "some rank got SIGINT/SIGTERM" flag
        self._dist_signal = torch.zeros(1, device=self.device)

    def _shard_data(self) -> None:
        """Each rank takes its slice of every batch of every stream (the config's batch is global)."""
        check_data_parallel(self.cfg, self.dist.world)
        for loader in (self.train_loader, getattr(self.val_stream, "loader", self.val_stream), self.val_eval_loader):
            loader.set_shard(self.dist.rank, self.dist.world)

    def _take_run_dir(self, resume: bool, config: SearchConfig) -> None:
        """Rank 0 (or the only process): restore a checkpoint, take the directory, start the record."""
        rd = self.run_dir
        applied = None
        if resume and rd.checkpoint.exists():  # restore first: a bad checkpoint fails before any write
            applied = rd.load_checkpoint()
            self._apply_checkpoint(applied, rd.checkpoint)
            done = self.epoch >= self.cfg.optim.epochs or self.stop_reason is not None
            if done and (rd.path / "genotype.json").exists():
                self.complete = True
                self.log(f"{self.out_dir} is complete ({self.epoch}/{self.cfg.optim.epochs} epochs"
                         f"{', stopped early' if self.stop_reason else ''}); nothing to resume, nothing written")
                return
        with self._full_disk():
            rd.begin(resume, config.to_dict(), config.to_yaml())  # everything is built: take the directory
        if rd.lock.took_over:
            self.log(f"{self.out_dir}: took over the lock of process {rd.lock.took_over}, which is gone")
        try:
            if resume and rd.checkpoint.exists():
                ck = rd.load_checkpoint()
                if ck is not applied:  # another process advanced the run before we took the lock
                    self._apply_checkpoint(ck, rd.checkpoint)
                self.write_metrics()  # metrics.jsonl may hold epochs past the checkpoint
                self.log(f"resumed from {rd.checkpoint} at epoch {self.epoch + 1}, step {self.step_in_epoch}")
                if self._saved_world != self.dist.world:
                    self.log(f"note: the run was on {self._saved_world} rank(s), this resume on {self.dist.world}: "
                             "each rank's slice of the batch changes, so it continues differently from an "
                             "uninterrupted run")
            elif resume:  # killed before the first checkpoint: start over, drop a partial record
                rd.write_metrics([])
                self.log(f"{self.out_dir}: no checkpoint yet; starting from the beginning")
        except BaseException as e:
            if isinstance(e, DiskFullError):
                full = self._disk_full(e)
                rd.end("interrupted", str(full))
                raise full from None
            rd.end("failed", "could not resume")
            raise

    # ---------------------------------------------------------------------------------------
    # run directory

    def _disk_full(self, e: DiskFullError) -> DiskFullError:
        """The full-disk line with the checkpoint that survives and the resume command."""
        kept = None
        if self._last_good is not None:
            ep, st = self._last_good
            kept = f"epoch {ep + 1}, step {st}" if st else f"end of epoch {ep}"
        return self.run_dir.disk_full(e, kept, f"`stablenas search {self.run_dir.config_file} --out {self.out_dir} "
                                               "--resume`")

    @contextlib.contextmanager
    def _full_disk(self):
        try:
            yield
        except DiskFullError as e:
            raise self._disk_full(e) from None

    def close(self) -> None:
        """Release the run directory without running (a ``Search`` built only to inspect)."""
        if self.run_dir is not None and self.run_dir.lock.held:
            self.run_dir.end("interrupted", "built but not run; resume with --resume")

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
    # alpha updates

    def arch_step(self, train_batch: Batch, val_batch: Batch) -> None:
        for m in self.methods:
            if m.arch_step(self, train_batch, val_batch):
                return
        rule = self.cfg.search.update
        if rule == "first":
            grads = self.first_order_grad(val_batch)
        elif rule == "second":
            grads = self.second_order_grad(train_batch, val_batch)
        else:
            return
        self.apply_arch_grads(grads)

    def arch_penalty(self) -> torch.Tensor | None:
        """The sum of the methods' terms on the alpha objective (``Method.arch_penalty``), None when
        no method adds one. They depend on alpha alone, which every rank holds alike, so their
        gradient is never all-reduced."""
        terms = [t for m in self.methods if (t := m.arch_penalty(self)) is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def apply_arch_grads(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One optimiser step of alpha on ``grads`` (the data term) plus the methods' penalties."""
        params = list(self.arch.parameters())
        penalty = self.arch_penalty()
        if penalty is not None:
            extra = torch.autograd.grad(penalty, params, allow_unused=True)
            grads = [e if g is None else (g if e is None else g + e) for g, e in zip(grads, extra)]
        for p, g in zip(params, grads):
            p.grad = g
        self.a_optimizer.step()
        self.a_optimizer.zero_grad(set_to_none=True)

    def first_order_grad(self, val_batch: Batch, weights: Sequence[torch.Tensor] = ()) -> list[torch.Tensor | None]:
        """grad_alpha L_val(w, alpha), then (from the same backward) grad_w L_val of the network
        parameters ``weights`` (OLES compares them with the weight step's gradients)."""
        xv, yv = val_batch
        # alpha (and ``weights``) only: no other weight gradients computed (custom kernels too)
        with weights_frozen(self.net, keep=weights):
            loss = self.loss(xv, yv, self.mix("arch", val_batch))
            return list(dist.grad(loss, [*self.arch.parameters(), *weights], allow_unused=True))

    def second_order_grad(self, train_batch: Batch, val_batch: Batch) -> list[torch.Tensor]:
        """DARTS unrolled gradient (robust-darts App. A, eq. 12-14).

        w' = w - xi * grad_w L_train(w, a); returns
        grad_a L_val(w', a) - xi * [grad_a L_train(w+, a) - grad_a L_train(w-, a)] / (2 eps)
        with w+- = w +- eps * grad_w' L_val(w', a) and eps = 0.01 / ||grad_w' L_val||.
        """
        xt, yt = train_batch
        xv, yv = val_batch
        xi = self.cfg.search.xi if self.cfg.search.xi is not None else self.lr
        names, weights = zip(*[(n, p) for n, p in self.net.named_parameters()])
        arch_params = list(self.arch.parameters())

        # virtual step
        loss_t = self.loss(xt, yt, self.mix("arch", train_batch).detached(), dict(zip(names, weights)))
        g = dist.grad(loss_t, weights)  # every gradient is averaged over ranks where it is made
        del loss_t
        w_virtual = [(w - xi * gw).detach().requires_grad_(True) for w, gw in zip(weights, g)]

        # validation loss at w'
        loss_v = self.loss(xv, yv, self.mix("arch", val_batch), dict(zip(names, w_virtual)))
        grads = dist.grad(loss_v, arch_params + w_virtual, allow_unused=True)
        del loss_v
        d_alpha, d_w = grads[: len(arch_params)], grads[len(arch_params):]
        d_w = [torch.zeros_like(w) if gw is None else gw for w, gw in zip(w_virtual, d_w)]

        if self.cfg.search.unrolled_hvp == "autograd":
            # exact mixed second derivative by double backward: d/d alpha <grad_w L_train(w, a), v>
            with double_backward_mode(self.net):
                lt = self.loss(xt, yt, self.mix("arch", train_batch), dict(zip(names, weights)))
            gw = torch.autograd.grad(lt, weights, create_graph=True)  # local: reduced below
            dot = sum((a * b).sum() for a, b in zip(gw, d_w))
            mixed = dist.grad(dot, arch_params, allow_unused=True)
            return [(torch.zeros_like(p) if da is None else da) - xi * (torch.zeros_like(p) if m is None else m)
                    for da, m, p in zip(d_alpha, mixed, arch_params)]

        # finite-difference Hessian-vector product in weight space (no host sync: eps is a tensor)
        eps = 0.01 / torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in d_w]))
        hvp = []
        for sign in (1.0, -1.0):
            shifted = {n: (w + sign * eps * v).detach() for n, w, v in zip(names, weights, d_w)}
            lt = self.loss(xt, yt, self.mix("arch", train_batch), shifted)
            hvp.append(dist.grad(lt, arch_params, allow_unused=True))
            del lt
        out = []
        for da, gp, gm, p in zip(d_alpha, hvp[0], hvp[1], arch_params):
            da = torch.zeros_like(p) if da is None else da
            gp = torch.zeros_like(p) if gp is None else gp
            gm = torch.zeros_like(p) if gm is None else gm
            out.append(da - xi * (gp - gm) / (2 * eps))
        return out

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
            if self._signal is not None:
                self._dist_signal.fill_(1.0)
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
            if self.loggers:
                self._step_losses.append(loss.detach())
                if len(self._step_losses) >= LOG_EVERY:
                    self._flush_step_losses()
            self._time_first_steps()
            if bar is not None:
                bar.update(1)
            if self._signalled():
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

    def _signalled(self, boundary: bool = False) -> bool:
        """Whether to stop for SIGINT/SIGTERM now. Under data parallelism all ranks decide alike from
        the flag reduced in the weight step: read at every step on CPU (free), on CUDA every
        GUARD_EVERY steps and at epoch boundaries (a read is a host sync)."""
        if not self.dist.active:
            return self._signal is not None
        if not (boundary or self.device.type == "cpu" or self.global_step % GUARD_EVERY == 0):
            return False
        if float(self._dist_signal) > 0:
            self._peer_signal = signal.SIGTERM
            return True
        return False

    def _flush_step_losses(self) -> None:
        if not self._step_losses:
            return
        values = torch.stack(self._step_losses).tolist()  # one host sync per block
        first = self.global_step - len(values) + 1
        for i, v in enumerate(values):
            self.loggers.log_scalars({"step/train_loss": v}, first + i)
        self._step_losses = []

    def _time_first_steps(self) -> None:
        """One line after the first steps of every (resumed) run: the measured time per step and
        the estimated time of the rest (epoch-end evaluation and method work come on top; the
        epoch lines then carry an ETA from the measured epochs)."""
        t = self._timing
        if t.get("done"):
            return
        n = t.setdefault("steps", 0) + 1
        t["steps"] = n
        if n == 1:  # the first step allocates: time from the end of it
            _sync(self.device)
            t["t1"] = time.perf_counter()
        elif n == 1 + ESTIMATE_STEPS:
            _sync(self.device)
            per_step = (time.perf_counter() - t["t1"]) / ESTIMATE_STEPS
            left = (self.cfg.optim.epochs - self.epoch) * self.steps_per_epoch - self.step_in_epoch
            t["done"] = True
            self.log(f"estimate: {per_step:.2f} s/step x {left} steps left = {format_seconds(per_step * left)} "
                     "(+ epoch-end evaluation)")

    @torch.no_grad()
    def evaluate(self, loader: TensorLoader | None = None, max_batches: int | None = None,
                 mix: Mix | None = None, bn: str = "eval", desc: str | None = None) -> tuple[float, float]:
        """Loss and accuracy of the supernet on the validation split. ``bn="eval"``: BN's running statistics;
        ``bn="train"``: each batch's own statistics, as the search trains (the running statistics, gathered
        under the op mixture, do not fit a discretised cell), the network's buffers left as they were.
        ``desc``: a progress bar with that label (when bars are on)."""
        if bn not in ("eval", "train"):
            raise ValueError(f"bn must be 'eval' or 'train', got {bn!r}")
        loader = loader or self.val_eval_loader
        max_batches = max_batches or self.cfg.search.val_batches
        was_training, stream = self.net.training, self.stream
        saved = [b.clone() for b in self.net.buffers()] if bn == "train" else None
        self.net.train(bn == "train")
        self.stream = "eval"
        mix = mix or self.mix("eval").detached()
        acc = torch.zeros(3, device=self.device)
        loader.set_epoch(0)
        total = len(loader) if max_batches is None else min(len(loader), max_batches)
        with progress_bar(total, desc or "", self.progress and desc is not None, unit="batch") as b:
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                acc += self.skeleton.eval_sums(self, x, y, mix)
                b.update(1)
        if saved is not None:
            with torch.no_grad():
                for b, v in zip(self.net.buffers(), saved, strict=True):
                    b.copy_(v)
        self.net.train(was_training)
        self.stream = stream
        (acc,) = dist.all_reduce_sum([acc])  # each rank evaluated its slice of every batch
        loss_sum, correct, count = acc.tolist()
        return loss_sum / max(count, 1), correct / max(count, 1)

    def genotype(self) -> Genotype:
        """The architecture alpha gives now (the configured or a method's discretiser)."""
        return self.discretizer(self)

    def fixed_val_batches(self, n: int = 1, batch_size: int | None = None, seed_offset: int = 7) -> list[Batch]:
        """``n`` fixed batches of the validation half, no augmentation: the same batches every call
        (fixed seed, loader-epoch 0), and the search's own validation stream is never consumed
        (curvature series compare like with like)."""
        bs = int(batch_size or self.cfg.data.batch_size)
        loader = self._fixed_loaders.get((bs, seed_offset))
        if loader is None:
            loader = self.skeleton.fixed_val_loader(self, bs, self.cfg.seed * 1000 + seed_offset)
            if self.dist.active:  # the measured objective is the job's: each rank its slice of the batches
                try:
                    loader.set_shard(self.dist.rank, self.dist.world)
                except ValueError as e:
                    raise ValueError(f"curvature: {e}") from None
            if len(loader) == 0:
                raise ValueError(f"curvature batch size {bs} exceeds the {loader.num_samples} validation images")
            self._fixed_loaders[(bs, seed_offset)] = loader
        n = int(n)
        if n > len(loader):
            raise ValueError(f"curvature asks for {n} batches of {bs}; the validation half has only "
                             f"{len(loader)}")
        return [loader.batch(0, i) for i in range(n)]

    def op_weights_record(self) -> dict[str, list[list[float]]]:
        w = {ct: t.detach().cpu() for ct, t in self.arch.op_weights().items()}
        out = {}
        for ct, t in w.items():
            out[ct] = [[round(float(v), 6) for v in t[e, : len(ops)]]
                       for e, ops in enumerate(self.space.edge_ops[ct])]
        return out

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
        if self.run_dir is not None:
            self.run_dir.append_metrics(record)
        self.save_checkpoint()
        if self.loggers:
            self._log_epoch(record)
        self._timing["epoch_seconds"] = self._timing.get("epoch_seconds", 0.0) + time.perf_counter() - t_end
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
        self.log(line)
        return record

    def set_outcome(self, *, genotype: Genotype | None = None, stop: str | None = None) -> None:
        """The one way a method ends the search or fixes its result: ``stop`` (a reason) ends it
        after this epoch, ``genotype`` is returned (and saved) instead of the discretised alpha.
        DARTS-ES does both; RS-ws pins its best sampled architecture."""
        if stop is not None:
            self.stop_reason = stop
        if genotype is not None:
            self.final_genotype = genotype

    def _log_epoch(self, record: dict) -> None:
        """Epoch scalars, op weights per edge (i->j) and the derived cells' parameter-free share."""
        from ..loggers import epoch_scalars, op_weight_scalars, param_free_scalars

        self._flush_step_losses()
        step = record["epoch"]
        scalars = epoch_scalars(record)
        scalars.update(op_weight_scalars(record["op_weights"], self.space.edge_ops, self.space.edges))
        scalars.update(param_free_scalars(Genotype.from_dict(record["genotype"])))
        self.loggers.log_scalars(scalars, step)
        self.loggers.flush()

    def run(self) -> SearchResult:
        """Run to the end (or a method's stop). With a run directory: SIGINT/SIGTERM save a checkpoint
        and raise :class:`InterruptedRun`; the status file records how the run ended."""
        if self.run_dir is None:
            if not self.dist.active:
                return self._run()
            with stop_signals(self), self._rank_deaths():  # other ranks: the same stop decision as rank 0
                return self._run()
        if self.complete:
            genotype = Genotype.load(self.run_dir.path / "genotype.json")
            return SearchResult(genotype, self.metrics, self.out_dir, self.cfg, self)
        with stop_signals(self), self.run_dir.recording(), self._full_disk(), self._rank_deaths():
            return self._run()

    @contextlib.contextmanager
    def _rank_deaths(self):
        """A collective broken by a dead rank ends the run as :class:`RankDiedError` (this rank's
        state may be mid-step: nothing is saved; the last checkpoint stays)."""
        try:
            yield
        except RuntimeError as e:
            died = dist.lost_ranks(e)
            if died is None:
                raise
            kept = "no checkpoint was written yet"
            if self._last_good is not None:
                ep, st = self._last_good
                kept = f"the last checkpoint (epoch {ep + 1}, step {st}) is intact" if st else \
                    f"the last checkpoint (end of epoch {ep}) is intact"
            raise RankDiedError(f"{died}; {kept}; resume with {self._resume_command()}") from None

    def _run(self) -> SearchResult:
        epochs = self.cfg.optim.epochs
        while self.epoch < epochs and self.stop_reason is None:
            if self._signalled(boundary=True):
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

    # ---------------------------------------------------------------------------------------
    # signals

    def _interrupt(self) -> None:
        signum = self._signal or self._peer_signal or signal.SIGINT
        self.check_finite()  # never checkpoint a bad state
        self.save_checkpoint()
        name = signal.Signals(signum).name
        where = (f"epoch {self.epoch + 1}, step {self.step_in_epoch}" if self.step_in_epoch
                 else f"the end of epoch {self.epoch}")
        raise InterruptedRun(f"interrupted by {name} at {where}: checkpoint saved; resume with "
                             f"{self._resume_command()}", signum)

    def _resume_command(self) -> str:
        """How to continue this run (data parallel on one machine: with ``--nproc``, as it started)."""
        cfg_file = self.out_dir / "config.yaml" if self.out_dir is not None else "CONFIG"
        cmd = f"`stablenas search {cfg_file} --out {self.out_dir} --resume"
        if not self.dist.active:
            return cmd + "`"
        if os.environ.get("LOCAL_WORLD_SIZE") == str(self.dist.world):
            return cmd + f" --nproc {self.dist.world}`"
        return cmd + "` under the same torchrun command"

    # ---------------------------------------------------------------------------------------
    # checkpoints

    def state_dict(self, *, exclude: Method | None = None, snapshot: bool = False) -> dict:
        """Everything a resume needs: tensors, numbers, strings, lists and dicts only (the
        checkpoint loads with ``weights_only=True``). ``exclude``: a method whose own state is left
        out; ``snapshot``: an in-memory copy for a rollback (no metrics records, no config)."""
        st = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "net": self.net.state_dict(),
            "arch": self.arch.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "methods": [None if m is exclude else m.state_dict() for m in self.methods],
            "train_loader": self.train_loader.state_dict(),
            "val_stream": self.val_stream.state_dict(),
            "rng": rng_state(),
            "accum": self._accum.cpu(),
            "stop_reason": self.stop_reason,
            "final_genotype": None if self.final_genotype is None else self.final_genotype.to_dict(),
            "epoch_seconds": self.epoch_seconds,  # training time of the current epoch so far
            "world": self.dist.world,  # ranks the run was on (a resume on another number is another run)
            # the engine options the run started with: a resume runs them, whatever the tuned file says now
            "engine": None if self.engine.options is None else asdict(self.engine.options),
        }
        if snapshot:
            st["n_metrics"] = len(self.metrics)
        else:
            st["metrics"] = self.metrics
            st["config"] = self.cfg.to_dict()
        return st

    def load_state_dict(self, st: dict, *, exclude: Method | None = None) -> None:
        """Restore :meth:`state_dict` (a checkpoint, or a rollback snapshot)."""
        self.net.load_state_dict(st["net"])
        self.arch.load_state_dict(st["arch"])
        self.w_optimizer.load_state_dict(st["w_optimizer"])
        self.a_optimizer.load_state_dict(st["a_optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        for m, s in zip(self.methods, st["methods"]):
            if m is not exclude:
                m.load_state_dict(s)
        self.train_loader.load_state_dict(st["train_loader"])
        self.val_stream.load_state_dict(st["val_stream"])
        set_rng_state(st["rng"])
        self._accum = st["accum"].to(self.device).clone()
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.epoch, self.step_in_epoch, self.global_step = st["epoch"], st["step_in_epoch"], st["global_step"]
        if "n_metrics" in st:
            self.metrics = self.metrics[: st["n_metrics"]]
        else:
            self.metrics = list(st["metrics"])
        self.stop_reason = st["stop_reason"]
        self.final_genotype = Genotype.from_dict(st["final_genotype"]) if st["final_genotype"] else None
        self.epoch_seconds = float(st["epoch_seconds"])
        self._saved_world = int(st.get("world", 1))
        self._keep_engine(st.get("engine"))
        self.net.drop_path_prob = self.drop_path_at(self.epoch)
        if self.step_in_epoch > 0:
            # mid-epoch state: per-epoch method schedules must be in force again
            for m in self.methods:
                if m is not exclude:
                    m.on_epoch_start(self, self.epoch)

    def _keep_engine(self, saved: dict | None) -> None:
        """Run the engine options a checkpoint was written with (a `bench --tune` file written since
        may choose others, and they round differently in float32)."""
        if saved is None or self.engine.options is None or saved == asdict(self.engine.options):
            return
        self.log(f"engine: running the checkpoint's options, not those of the {self.engine.source}")
        self.engine = engine.EngineChoice(EngineOptions(**saved), "the checkpoint's (the run started with them)")
        set_engine(self.net, self.engine.options)
        if self.run_dir is not None:
            self.run_dir.status_info["engine"] = self.engine.record()

    def write_metrics(self) -> None:
        """Rewrite metrics.jsonl from ``self.metrics`` (after a resume or a rollback)."""
        if self.run_dir is not None:
            self.run_dir.write_metrics(self.metrics)

    def save_checkpoint(self, path: Path | None = None) -> None:
        """Atomic; refuses (DivergedError) to overwrite the last good checkpoint with a bad state."""
        if self.run_dir is None and path is None:
            if self.out_dir is not None:  # another rank: rank 0 saved this very state
                self._last_good = (self.epoch, self.step_in_epoch)
            return
        self.check_finite()
        if path is not None:
            from ..utils import atomic_torch_save

            atomic_torch_save({"format": 2, "kind": "search", **self.state_dict()}, path)
            return
        self.run_dir.save_checkpoint(self.state_dict())
        self._last_good = (self.epoch, self.step_in_epoch)

    def _apply_checkpoint(self, st: dict, path: Path) -> None:
        try:
            self.load_state_dict(st)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
            from ..errors import CheckpointError

            msg = " ".join(str(e).split())[:160] if str(e) else type(e).__name__
            raise CheckpointError(f"{path}: does not fit this search ({type(e).__name__}: {msg}); delete it "
                                  "to restart") from None
        self._last_good = (self.epoch, self.step_in_epoch)

    def load_checkpoint(self, path: Path | None = None) -> None:
        """Load a search checkpoint (read with weights_only=True) into this search, e.g. for
        analysis; resuming a run directory goes through ``Search(..., resume=True)``."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("load_checkpoint: no path and no run directory")
            path = self.run_dir.checkpoint
        self._apply_checkpoint(load_checkpoint(path, kind="search"), Path(path))


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_seconds(s: float) -> str:
    """12s, 3.4 min, 2.1 h, 3.2 days."""
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def run_search(config: SearchConfig, out_dir: str | Path | None = None, *, resume: bool = False,
               progress: bool | None = None, log: Callable[[str], None] | None = None,
               loggers: str | Sequence[str] | None = None) -> SearchResult:
    """Python entry point: build and run a search from a validated config. ``loggers``: live
    logging backends (``"auto"``: TensorBoard when installed; see :mod:`stablenas.loggers`)."""
    return Search(config, out_dir, resume=resume, progress=progress, log=log, loggers=loggers).run()


__all__ = ["CHECKPOINT", "GUARD_EVERY", "RUNTIME_KEYS", "RunExistsError", "Search", "SearchResult",
           "check_data_parallel", "run_search"]
