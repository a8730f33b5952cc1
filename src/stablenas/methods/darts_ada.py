"""DARTS-ADA (robust-darts Sec. 5.3, App. D.1, Alg. 1): raise the regularisation and roll back.

With the DARTS-ES criterion, when it fires at the end of epoch e for stop epoch s (= i - k), the
search is restored to its state at the end of epoch s and continues with the regularisation R
multiplied by eta. This repeats while the raised value stays within R_max; once it cannot rise
any more the search simply runs to the end and returns the final architecture (as Alg. 1 and the
reference code, whose last iteration ignores the criterion). Defaults are the paper's: R = 3e-4
(DARTS's L2 factor, i.e. ``optim.weight_decay``), eta = 10, R_max = 3e-2, so at most two rises
(3e-4 -> 3e-3 -> 3e-2). ``regularizer: drop_path`` scales the ScheduledDropPath maximum instead
(linear 0 -> R over the search, like ``regularization.drop_path_max``).

Rolling back needs earlier states: at the start of every epoch (= the end of the previous one)
the method keeps a CPU copy of the loop's own resume state (``search.snapshot``: weights, alpha,
both optimisers, the scheduler, both data streams, RNG, the other methods' states; the metrics
only by count) and restores it with ``search.rollback``, exactly as a resume does,
pruned to the ``(window//2 + k) * every + 1`` most recent: the furthest a trigger can reach
back. The rollback itself happens at the start of the epoch after the trigger (the loop finishes
its epoch-end bookkeeping first), truncates ``search.metrics`` and rewrites ``metrics.jsonl``.

For resume, the method checkpoints R, the rollback history, a pending rollback and the snapshots
(they are part of the search state: without them a run resumed between a snapshot and its
trigger could not roll back). That multiplies the checkpoint size by up to ~9 for large
supernets; ``checkpoint_snapshots: false`` trades that for rollbacks limited to epochs after the
resume point. Put ``darts-ada`` after any method with an epoch schedule: on a rollback the loop
has already called earlier methods' ``on_epoch_start`` for the wrong epoch, so it restores their
state and replays their epoch start for the restored epoch (``search.replay_epoch_start``; later
methods would be left wrong).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ..errors import ConfigError
from .base import Method, register_method
from .darts_es import DartsES, EarlyStopOptions

if TYPE_CHECKING:
    from .context import SearchContext


class AdaOptions(EarlyStopOptions):
    regularizer: Literal["l2", "drop_path"] = Field(
        "l2",
        description="what a trigger raises: L2 weight decay or the ScheduledDropPath probability")
    initial: float | None = Field(
        None, ge=0.0,
        description="starting value R (null: optim.weight_decay or regularization.drop_path_max)")
    eta: float = Field(10.0, gt=1.0, description="factor R is multiplied by at each rollback")
    max_value: float = Field(3e-2, gt=0.0,
                             description="R_max: R never rises past it; once it cannot rise, the run stops")
    checkpoint_snapshots: bool = Field(
        True,
        description="keep the rollback snapshots in checkpoints (a resumed run can roll back past its start)")

    @model_validator(mode="after")
    def _dp_below_one(self):
        if self.regularizer == "drop_path" and self.max_value >= 1.0:
            raise ValueError(f"max_value must be < 1 for drop_path (a probability), got {self.max_value}")
        return self


@register_method
class DartsADA(DartsES):
    name = "darts-ada"
    paper = "Zela et al., ICLR 2020: 'Understanding and Robustifying Differentiable Architecture Search'"
    description = "DARTS-ADA: on the DARTS-ES criterion roll back and raise L2 (or DropPath) by eta, to R_max"
    preset = "darts-ada"
    Options = AdaOptions
    needs_fixed_shape = True  # a rollback restores a snapshot of the supernet's tensors

    def __init__(self, options=None):
        super().__init__(options)
        self.R: float | None = None
        self.events: list[dict] = []
        self.pending: dict | None = None
        self.snapshots: dict[int, dict] = {}  # epoch about to start -> state
        self.floor_epoch = 0  # 0-based: no stop epoch before the last rollback point

    # -- set-up and regularisation -------------------------------------------------------------
    def setup(self, search: SearchContext) -> None:
        me = search.methods.index(self)
        for later in search.methods[me + 1:]:
            if type(later).on_epoch_start is not Method.on_epoch_start:
                raise ValueError(f"method darts-ada must come after {later.name!r} in `methods` (it has an "
                                 "epoch schedule that a rollback has to restore)")
        self.R, _ = self.start(search.cfg, self.opts)

    @staticmethod
    def start(cfg: Any, o: AdaOptions) -> tuple[float, str]:
        """The starting R and the key it comes from: ``initial``, else the config's own value."""
        if o.initial is not None:
            return float(o.initial), "initial"
        if o.regularizer == "l2":
            return float(cfg.optim.weight_decay), "optim.weight_decay"
        return float(cfg.regularization.drop_path_max), "regularization.drop_path_max"

    @classmethod
    def validate(cls, cfg: Any, options: AdaOptions) -> None:
        super().validate(cfg, options)
        r0, key = cls.start(cfg, options)
        if r0 <= 0:
            raise ConfigError(f"method darts-ada multiplies the regularisation, so it must start above 0: set "
                              f"`initial` or {key}")
        if r0 > options.max_value:  # R only grows, up to R_max (robust-darts App. D.1, Algorithm 1)
            raise ConfigError(f"method darts-ada: the starting R ({key} = {r0:g}) exceeds max_value (R_max = "
                              f"{options.max_value:g}); R only rises towards R_max")

    def apply(self, search: SearchContext) -> None:
        if self.opts.regularizer == "l2":
            search.set_weight_decay(self.R)
        else:
            search.set_drop_path(self.R * min(search.epoch / search.schedule_epochs, 1.0))

    def can_raise(self) -> bool:
        return self.R * self.opts.eta <= self.opts.max_value * (1 + 1e-9)

    # -- snapshots -----------------------------------------------------------------------------
    def horizon(self) -> int:
        """How many epochs back a trigger can reach (snapshots older than this are dropped)."""
        o = self.opts
        return (o.window // 2 + o.k) * o.every + 1

    # -- hooks ---------------------------------------------------------------------------------
    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        if search.step_in_epoch > 0:  # mid-epoch resume: state is restored, only re-apply R
            self.apply(search)
            return
        if self.pending is not None:
            target = self.pending["stop_epoch"]  # 1-based stop epoch = 0-based epoch to restart at
            snap = self.snapshots.get(target)
            if snap is None:
                search.log(f"darts-ada: no snapshot of epoch {target} (resumed without snapshots?); "
                           "not rolling back")
                self.pending = None
            else:
                old = self.R
                search.rollback(snap, exclude=self)
                self.R = old * self.opts.eta
                event = dict(self.pending, R_before=old, R_after=self.R)
                self.events.append(event)
                self.pending = None
                self.floor_epoch = target - 1
                self.snapshots = {e: s for e, s in self.snapshots.items() if e <= target}
                search.log(f"darts-ada: rolled back to the end of epoch {target} (criterion met at epoch "
                           f"{event['decided_at']}); {self.opts.regularizer} {old:g} -> {self.R:g}")
                self.apply(search)
                search.replay_epoch_start(exclude=self)
                return
        self.snapshots[epoch] = search.snapshot(exclude=self)
        for e in [e for e in self.snapshots if e < epoch - self.horizon()]:
            del self.snapshots[e]
        self.apply(search)

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        record["ada_R"] = self.R
        if self.events:
            record["ada_events"] = list(self.events)
        trig = self.decide(search, epoch, record, min_stop_epoch=self.floor_epoch)
        if trig is None:
            return
        if self.can_raise():
            self.pending = trig
            record["ada_rollback"] = dict(trig, R_next=self.R * self.opts.eta)
        else:
            record["ada_criterion_met"] = dict(trig, note=f"R={self.R:g} cannot rise within R_max")

    def state_dict(self) -> dict:
        return {"R": self.R, "events": self.events, "pending": self.pending, "floor_epoch": self.floor_epoch,
                "snapshots": self.snapshots if self.opts.checkpoint_snapshots else {}}

    def load_state_dict(self, state: dict) -> None:
        self.R = state["R"]
        self.events = list(state["events"])
        self.pending = state["pending"]
        self.floor_epoch = state.get("floor_epoch", 0)
        self.snapshots = {int(k): v for k, v in state.get("snapshots", {}).items()}
