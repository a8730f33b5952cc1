"""The operations a method may perform on the search (``methods.context.SearchContext``).

Each is a change to the loop's own state that a method needs and the loop must know about: a
discretiser with the method's options, DARTS-ADA's regularisation strength and its rollback to an
earlier epoch, DARTS-PT's fresh weight schedule for its selection phase. Written once here, so a
method never assigns to the loop's attributes (``tests/test_method_context.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..genotype import Genotype
    from ..methods.base import Method


def cpu_copy(obj: Any) -> Any:
    """Deep copy with every tensor cloned to CPU (optimizer state dicts share tensors otherwise)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(cpu_copy(v) for v in obj)
    return obj


class MethodOperations:
    """Mixed into ``Search`` (which provides ``state_dict``, ``load_state_dict`` and ``write_metrics``):
    the named operations of ``SearchContext``."""

    discretizer: Callable[[Any], Genotype]
    w_optimizer: torch.optim.Optimizer
    scheduler: Any
    net: torch.nn.Module
    methods: list[Method]
    stop_reason: str | None
    epoch: int

    def set_discretizer(self, discretizer: Callable[[Any], Genotype]) -> None:
        self.discretizer = discretizer

    def set_weight_decay(self, value: float) -> None:
        for group in self.w_optimizer.param_groups:
            group["weight_decay"] = value

    def set_drop_path(self, prob: float) -> None:
        self.net.drop_path_prob = prob

    def restart_weight_schedule(self, lr: float, epochs: int, eta_min: float) -> None:
        """The authors' ``reset_optimizer`` in DARTS-PT: fresh SGD state at ``lr``, a new cosine."""
        opt = self.w_optimizer
        opt.state.clear()
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = lr
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=eta_min)

    def snapshot(self, exclude: Method) -> dict:
        return cpu_copy(self.state_dict(exclude=exclude, snapshot=True))

    def rollback(self, snapshot: dict, exclude: Method) -> None:
        self.load_state_dict(snapshot, exclude=exclude)
        self.stop_reason = None
        self.write_metrics()

    def replay_epoch_start(self, exclude: Method) -> None:
        for m in self.methods:
            if m is not exclude:
                m.on_epoch_start(self, self.epoch)
