"""What a method may read and do: the search as its hooks see it.

Every hook of :class:`~stablenas.methods.base.Method` receives a ``SearchContext``. It is a
``typing.Protocol``: the search loop (``stablenas.search.loop.Search``) satisfies it, and nothing
else of the loop is a method's business. ``tests/methods/test_context.py`` reads every method module
and fails when a hook touches a name of its context that is not declared here, or assigns to one:
changes to the loop's state go through the operations below, so the loop knows about each of them
(a rollback rewrites ``metrics.jsonl``; a new weight schedule is checkpointed with the run).

The extension points the stabilisers need, for every method rather than one:

- a term on the alpha objective: the ``arch_penalty`` hook (beta-DARTS, FairDARTS, DrNAS, budget);
- per-cell op weights and an auxiliary path: what ``transform`` returns (``Mix``, ``Mix.skip``);
- weight gradients after the all-reduce: ``on_weight_grads`` with ``weight_batch``/``weight_mix``;
- a post-search selection phase that fine-tunes the supernet: ``freezes_alpha``, ``Method.schedule_epochs``
  and :meth:`SearchContext.restart_weight_schedule` (DARTS-PT);
- a supernet that changes shape between stages (pruned ops, wider partial channels):
  :meth:`SearchContext.reshape_supernet` (progressive DrNAS);
- the architecture a search returns: :meth:`SearchContext.set_outcome` and :meth:`SearchContext.set_discretizer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from ..data.loader import TensorLoader
    from ..genotype import Genotype
    from ..skeletons.base import Skeleton
    from ..spaces.catalog import SearchSpace
    from ..supernet.arch import ArchParams
    from ..supernet.mix import Mix
    from .base import Method

Batch = tuple[torch.Tensor, torch.Tensor]


class SearchContext(Protocol):
    """The search a method's hooks see (read the attributes, act through the methods)."""

    # -- what the search is ----------------------------------------------------------------------
    cfg: Any  # the resolved SearchConfig (read only)
    space: SearchSpace
    skeleton: Skeleton
    device: torch.device
    net: nn.Module  # the supernet; its weights are the method's to perturb and restore within a hook
    arch: ArchParams  # alpha (and edge betas): the method may read and edit them in place
    methods: Sequence[Method]  # every method of the run, in config order
    criterion: nn.Module

    # -- data ------------------------------------------------------------------------------------
    data: Any  # the skeleton's SearchData
    dataset: str
    train_loader: TensorLoader
    val_eval_loader: TensorLoader

    # -- where the run is --------------------------------------------------------------------------
    epoch: int  # 0-based epoch in progress
    step_in_epoch: int
    global_step: int
    schedule_epochs: int  # the epochs the schedules span (the search phase: see Method.schedule_epochs)
    metrics: Sequence[dict]  # the epoch records so far (read only)
    stop_reason: str | None
    weight_batch: Batch | None  # the weight step's batch and op weights (in on_weight_grads)
    weight_mix: Mix | None

    @property
    def epochs_done(self) -> float: ...  # fractional epochs trained so far

    def log(self, line: str) -> None: ...

    # -- forward, loss and gradients -------------------------------------------------------------------
    def mix(self, phase: str, batch: Batch | None = None) -> Mix: ...
    def forward(self, x: torch.Tensor, mix: Mix, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor: ...
    def loss(self, x: torch.Tensor, y: torch.Tensor, mix: Mix,
             params: dict[str, torch.Tensor] | None = None) -> torch.Tensor: ...
    def first_order_grad(self, val_batch: Batch,
                         weights: Sequence[torch.Tensor] = ()) -> list[torch.Tensor | None]: ...
    def apply_arch_grads(self, grads: Sequence[torch.Tensor | None]) -> None: ...
    def fixed_val_batches(self, n: int = 1, batch_size: int | None = None, seed_offset: int = 7) -> list[Batch]: ...
    def evaluate(self, loader: TensorLoader | None = None, max_batches: int | None = None,
                 mix: Mix | None = None, bn: str = "eval", desc: str | None = None) -> tuple[float, float]: ...

    # -- operations on the loop's state ------------------------------------------------------------
    def set_outcome(self, *, genotype: Genotype | None = None, stop: str | None = None) -> None:
        """End the search and/or fix the architecture it returns (DARTS-ES, RS-ws, DARTS-PT)."""

    def set_discretizer(self, discretizer: Callable[[Any], Genotype]) -> None:
        """How the genotype is read off alpha from now on (iDARTS, FairDARTS install their own)."""

    def set_weight_decay(self, value: float) -> None:
        """The weight optimiser's L2 strength (DARTS-ADA's R)."""

    def set_drop_path(self, prob: float) -> None:
        """The supernet's drop-path probability (DARTS-ADA's R)."""

    def restart_weight_schedule(self, lr: float, epochs: int, eta_min: float) -> None:
        """Fresh weight-optimiser state and a cosine from ``lr`` over ``epochs`` (DARTS-PT's fine-tuning)."""

    def reshape_supernet(self, *, keep: Mapping[str, torch.Tensor] | None = None, partial_channels: int | None = None,
                         generator: torch.Generator | None = None) -> None:
        """Prune candidate ops (``keep``: per cell type a bool [edges, ops]; the rest get op weight 0
        and stop running) and/or send more channels through the ops (a smaller PC-DARTS K, weights
        and momentum carried over); checkpointed with the run (progressive DrNAS's stages)."""

    def snapshot(self, exclude: Method) -> dict:
        """The run's resume state without ``exclude``'s, copied to the CPU (DARTS-ADA's rollback points)."""

    def rollback(self, snapshot: dict, exclude: Method) -> None:
        """Restore a :meth:`snapshot` as a resume would, clear the stop and rewrite ``metrics.jsonl``."""

    def replay_epoch_start(self, exclude: Method) -> None:
        """Every other method's ``on_epoch_start`` again for the current epoch (their schedules after a rollback)."""
