"""The life of a run, written once for the search, the image training and the recurrent training.

A loop (:class:`~stablenas.search.loop.Search`, the image trainer, the recurrent trainer) inherits
:class:`RunLifecycle` and supplies its steps and epochs (``_run``), its state (``state_dict`` /
``load_state_dict``), where it stands (``_position``) and how to resume it (``_resume_command``).
The lifecycle owns what every run does alike:

- *Taking the run directory*: a checkpoint is restored before anything is written (a bad one fails
  with the directory untouched), then :meth:`RunDir.begin` takes the lock and writes the config,
  and metrics.jsonl is rewritten from the checkpoint's records (a kill may leave an epoch past it).
- *A full disk*: one :class:`DiskFullError` line naming the checkpoint that survives and the
  resume command; the status file says "interrupted".
- *Signals*: SIGINT/SIGTERM set a flag (:func:`stop_signals`) that the loop reads after every
  step; the run then checkpoints where it stands (or keeps the last checkpoint, when its state is
  only whole at epoch ends) and raises :class:`InterruptedRun` (exit 130/143). A second signal
  abandons the run at once. Under data parallelism the flag travels in the step's all_reduce, so
  every rank stops at the same step.
- *The estimate line* after the first steps, *epoch records* (metrics.jsonl, the live loggers,
  one log line) and ``run()``, which records in ``status.json`` how the run ended.

The loop mechanics follow the split of PyTorch Lightning's fit loop and its checkpoint / signal
connectors (``lightning/pytorch/loops/fit_loop.py``, ``trainer/connectors/signal_connector.py``):
the loop body knows nothing of files or signals.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import torch

from .. import distributed as dist
from ..errors import CheckpointError, DiskFullError, InterruptedRun, RankDiedError, StablenasError
from .directory import RunDir, stop_signals

__all__ = ["ESTIMATE_STEPS", "GUARD_EVERY", "LOG_EVERY", "RunLifecycle", "format_seconds", "sync"]

GUARD_EVERY = 50  # steps between reads of an on-device flag (divergence, a peer's signal) on CUDA
LOG_EVERY = 20  # steps per block of per-step losses sent to the loggers
ESTIMATE_STEPS = 3  # steps timed (after the first) for the estimate line at the start of a run
# what a checkpoint that does not fit raises from load_state_dict
_MISFIT = (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously), so a timer reads true."""
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


class RunLifecycle:
    """The run-directory, signal, timing and record logic shared by every loop (module docstring).

    A subclass sets ``run_dir``, ``device``, ``dist``, ``log``, ``epoch``, ``metrics`` and
    ``loggers``, calls :meth:`_init_lifecycle` once its device is known, and implements the hooks
    below the line."""

    STEP_UNIT: ClassVar[str] = "step"  # what a position within an epoch counts
    RUN_NOUN: ClassVar[str] = "run"  # "does not fit this <noun>"
    ESTIMATE_EXTRA: ClassVar[str] = "evaluation"  # the work the estimate line leaves out
    CHECKPOINT_ON_STOP: ClassVar[bool] = True  # False: state is whole only at epoch ends

    run_dir: RunDir | None
    device: torch.device
    dist: dist.Dist
    log: Callable[[str], None]
    epoch: int
    metrics: list[dict]
    loggers: Any

    def _init_lifecycle(self) -> None:
        self._signal: int | None = None  # set by the SIGINT/SIGTERM handler
        # a stop another rank was signalled for: kept apart from this process's own signal, which
        # may still come (a signal to every rank lands at slightly different steps) and must not
        # count as the second signal that abandons the checkpoint
        self._peer_signal: int | None = None
        self._dist_signal = torch.zeros(1, device=self.device)  # "some rank was signalled", all_reduced
        self._last_good: tuple[int, int] | None = None  # _position() of the newest checkpoint on disk
        self._timing: dict = {}
        self._step_losses: list[torch.Tensor] = []
        self._last_loss_step = 0
        self.complete = False  # resumed a finished run: nothing to do, nothing written

    # -- hooks a loop implements ----------------------------------------------------------------
    def _run(self) -> Any:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, st: dict) -> None:
        raise NotImplementedError

    def _position(self) -> tuple[int, int]:
        """(epoch, steps done in it) of the current state."""
        return self.epoch, 0

    def _resume_command(self) -> str:
        return "the same command and --resume"

    def _epoch_plan(self) -> tuple[int, int]:
        """(epochs of the run, steps per epoch), for the estimate line."""
        raise NotImplementedError

    def _epoch_scalars(self, record: dict) -> dict[str, float]:
        """The loggers' scalars of an epoch record."""
        raise NotImplementedError

    def _resumed_complete(self) -> bool:
        """Whether the restored checkpoint ends a finished run (then nothing is taken or written)."""
        return False

    def _completed_result(self) -> Any:
        raise NotImplementedError

    def _after_resume(self) -> None:
        """More to say or do once a checkpoint is restored under the lock."""

    # -- naming positions -----------------------------------------------------------------------
    def _checkpoint_at(self, epoch: int, step: int) -> str:
        return f"epoch {epoch + 1}, {self.STEP_UNIT} {step}" if step else f"end of epoch {epoch}"

    def _resume_point(self) -> str:
        epoch, step = self._position()
        return f"at epoch {epoch + 1}, {self.STEP_UNIT} {step}"

    # -- the run directory ----------------------------------------------------------------------
    def _agree(self, what: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the process that owns the run directory; every rank raises its error."""
        error = None
        if self.run_dir is not None:
            try:
                fn()
            except StablenasError as e:
                error = e
        dist.agree(error, what)

    def _take_run_dir(self, resume: bool, config: dict, config_text: str, extra: dict | None = None) -> None:
        """Restore a checkpoint (a bad one fails before any write), take the directory, start the record."""
        rd = self.run_dir
        applied = None
        if resume and rd.checkpoint.exists():
            applied = rd.load_checkpoint()
            self._apply_checkpoint(applied, rd.checkpoint)
            if self._resumed_complete():
                self.complete = True
                return
        with self._full_disk():
            rd.begin(resume, config, config_text, extra=extra)  # everything is built: take the directory
        if rd.lock.took_over:
            self.log(f"{rd.path}: took over the lock of process {rd.lock.took_over}, which is gone")
        try:
            if resume and rd.checkpoint.exists():
                ck = rd.load_checkpoint()
                if ck is not applied:  # another process advanced the run before we took the lock
                    self._apply_checkpoint(ck, rd.checkpoint)
                rd.write_metrics(self.metrics)  # metrics.jsonl may hold epochs past the checkpoint
                self.log(f"resumed from {rd.checkpoint} {self._resume_point()}")
                self._after_resume()
            elif resume:  # killed before the first checkpoint: start over, drop a partial record
                rd.write_metrics([])
                self.log(f"{rd.path}: no checkpoint yet; starting from the beginning")
        except DiskFullError as e:
            full = self._disk_full(e)
            rd.end("interrupted", str(full))
            raise full from None
        except BaseException:
            rd.end("failed", "could not resume")
            raise

    def _apply_checkpoint(self, st: dict, path: Path) -> None:
        try:
            self.load_state_dict(st)
        except _MISFIT as e:
            msg = " ".join(str(e).split())[:160] if str(e) else type(e).__name__
            raise CheckpointError(f"{path}: does not fit this {self.RUN_NOUN} ({type(e).__name__}: {msg}); delete "
                                  "it to restart") from None
        self._last_good = self._position()

    def save_checkpoint(self) -> None:
        """Atomic (temp file + rename); the process without the run directory saves nothing."""
        if self.run_dir is None:
            return
        self.run_dir.save_checkpoint(self.state_dict())
        self._last_good = self._position()

    def _kept(self) -> str | None:
        return None if self._last_good is None else self._checkpoint_at(*self._last_good)

    def _disk_full(self, e: DiskFullError) -> DiskFullError:
        """The full-disk line with the checkpoint that survives and the resume command."""
        return self.run_dir.disk_full(e, self._kept(), self._resume_command())

    @contextlib.contextmanager
    def _full_disk(self) -> Iterator[None]:
        try:
            yield
        except DiskFullError as e:
            raise self._disk_full(e) from None

    def close(self) -> None:
        """Release the run directory without running (a run built only to inspect)."""
        if self.run_dir is not None and self.run_dir.lock.held:
            self.run_dir.end("interrupted", "built but not run; resume with --resume")

    # -- run ------------------------------------------------------------------------------------
    def run(self) -> Any:
        """Run to the end. With a run directory: SIGINT/SIGTERM checkpoint and raise
        :class:`InterruptedRun`; ``status.json`` records how the run ended."""
        if self.run_dir is None:
            if not self.dist.active:
                return self._run()
            with stop_signals(self), self._rank_deaths():  # other ranks: the same stop decision as rank 0
                return self._run()
        if self.complete:
            return self._completed_result()
        with stop_signals(self), self.run_dir.recording(), self._full_disk(), self._rank_deaths():
            return self._run()

    @contextlib.contextmanager
    def _rank_deaths(self) -> Iterator[None]:
        """A collective broken by a dead rank ends the run as :class:`RankDiedError` (this rank's
        state may be mid-step: nothing is saved; the last checkpoint stays)."""
        try:
            yield
        except RuntimeError as e:
            died = dist.lost_ranks(e)
            if died is None:
                raise
            kept = self._kept()
            kept = f"the last checkpoint ({kept}) is intact" if kept else "no checkpoint was written yet"
            raise RankDiedError(f"{died}; {kept}; resume with {self._resume_command()}") from None

    # -- signals --------------------------------------------------------------------------------
    def _mark_signal(self) -> None:
        """Under data parallelism: put this process's signal into the step's all_reduce."""
        if self._signal is not None:
            self._dist_signal.fill_(1.0)

    def _signalled(self, step: int | None = None) -> bool:
        """Whether to stop for SIGINT/SIGTERM now (``step``: the global step just done; None: an
        epoch boundary). Under data parallelism all ranks decide alike from the flag reduced in the
        step: read at every step on CPU (free), on CUDA every GUARD_EVERY steps and at epoch
        boundaries (a read is a host sync)."""
        if not self.dist.active:
            return self._signal is not None
        if not (step is None or self.device.type == "cpu" or step % GUARD_EVERY == 0):
            return False
        if float(self._dist_signal) > 0:
            self._peer_signal = signal.SIGTERM
            return True
        return False

    def _interrupt(self, signum: int | None = None, why: str | None = None) -> NoReturn:
        """Checkpoint where the run stands (or keep the last one) and raise :class:`InterruptedRun`."""
        signum = signum or self._signal or self._peer_signal or signal.SIGINT
        why = why or f"interrupted by {signal.Signals(signum).name}"
        epoch, step = self._position()
        if self.CHECKPOINT_ON_STOP:
            self.save_checkpoint()
            where = self._checkpoint_at(epoch, step)
            msg = f"{why} at {where if step else 'the ' + where}: checkpoint saved"
        else:
            kept = self._kept()
            msg = f"{why} in epoch {epoch + 1}: " + (f"the checkpoint {kept} is kept" if kept else
                                                     "no checkpoint was written yet")
        raise InterruptedRun(f"{msg}; resume with {self._resume_command()}", signum)

    # -- timing and records ---------------------------------------------------------------------
    def _time_first_steps(self, done_in_epoch: int) -> None:
        """One line after the first steps of every (resumed) run: the measured time per step and the
        estimated time of the rest (``ESTIMATE_EXTRA`` comes on top; the epoch lines then carry an
        ETA from the measured epochs)."""
        t = self._timing
        if t.get("done"):
            return
        n = t["steps"] = t.get("steps", 0) + 1
        if n == 1:  # the first step allocates: time from the end of it
            sync(self.device)
            t["t1"] = time.perf_counter()
        elif n == 1 + ESTIMATE_STEPS:
            sync(self.device)
            per_step = (time.perf_counter() - t["t1"]) / ESTIMATE_STEPS
            epochs, steps = self._epoch_plan()
            left = (epochs - self.epoch) * steps - done_in_epoch
            t["done"] = True
            self.log(f"estimate: {per_step:.2f} s/step x {left} steps left = {format_seconds(per_step * left)} "
                     f"(+ {self.ESTIMATE_EXTRA})")

    def _note_loss(self, loss: torch.Tensor, global_step: int) -> None:
        """Keep a step's loss on the device for the loggers; written in blocks of LOG_EVERY steps, so
        the hot loop never waits for a host sync."""
        if not self.loggers:
            return
        self._step_losses.append(loss.detach())
        self._last_loss_step = global_step
        if len(self._step_losses) >= LOG_EVERY:
            self._flush_step_losses()

    def _flush_step_losses(self) -> None:
        if not self._step_losses:
            return
        values = torch.stack(self._step_losses).tolist()  # one host sync per block
        first = self._last_loss_step - len(values) + 1
        for i, v in enumerate(values):
            self.loggers.log_scalars({"step/train_loss": v}, first + i)
        self._step_losses = []

    def _commit_epoch(self, record: dict, line: Callable[[], str]) -> None:
        """An epoch's record into metrics.jsonl, the checkpoint, the live loggers, then its log line
        (built by ``line`` once everything is written)."""
        if self.run_dir is not None:
            self.run_dir.append_metrics(record)
        self.save_checkpoint()
        if self.loggers:
            self._flush_step_losses()
            self.loggers.log_scalars(self._epoch_scalars(record), record["epoch"])
            self.loggers.flush()
        self.log(line())
