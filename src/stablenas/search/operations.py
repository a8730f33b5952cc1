"""The operations a method may perform on the search (``methods.context.SearchContext``).

Each is a change to the loop's own state that a method needs and the loop must know about: a
discretiser with the method's options, DARTS-ADA's regularisation strength and its rollback to an
earlier epoch, DARTS-PT's fresh weight schedule for its selection phase, progressive DrNAS's pruned
and widened supernet. Written once here, so a
method never assigns to the loop's attributes (``tests/methods/test_context.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..supernet.reshape import Recipe, expand, set_candidates, widen
from ..supernet.reshape import partial_channels as net_partial_channels

if TYPE_CHECKING:
    from ..genotype import Genotype
    from ..methods.base import Method
    from ..supernet.arch import ArchParams


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
    arch: ArchParams
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

    def reshape_supernet(self, *, keep: Mapping[str, torch.Tensor] | None = None, partial_channels: int | None = None,
                         generator: torch.Generator | None = None) -> None:
        """Prune candidate ops and/or widen the partial channels (progressive DrNAS's stage change,
        ``supernet.reshape``). ``keep``: per cell type a bool [edges, ops]; ops outside it leave
        alpha's mask for good (their alpha is set to 0, as the authors' ``prune`` in ``utils.py``
        does) and the engine stops running them. ``partial_channels``: the new K (<= the current),
        weights carried over by ``supernet.reshape.widen`` with index draws from ``generator``, the
        weight optimiser's momentum carried alike (``configure_optimizer`` in their ``net2wider.py``);
        its learning rate schedule and the alpha optimiser go on untouched."""
        if keep is not None:
            with torch.no_grad():
                for ct, k in keep.items():
                    mask = self.arch.mask(ct)
                    new = mask & k.to(mask.device)
                    if not bool(new.any(-1).all()):
                        raise ValueError(f"reshape_supernet: keep leaves an edge of cell type {ct} without ops")
                    mask.copy_(new)
                    self.arch.alphas[ct].masked_fill_(~new, 0.0)
            set_candidates(self.net, {ct: self.arch.mask(ct) for ct in self.arch.cell_types})
        if partial_channels is not None and partial_channels != net_partial_channels(self.net):
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            self._swap_weights(widen(self.net, partial_channels, gen))

    def _swap_weights(self, moved: Mapping[torch.nn.Parameter, tuple[torch.nn.Parameter, Recipe]]) -> None:
        """Point the weight optimiser at the widened parameters, each momentum buffer widened as its
        parameter was (the parameter order, which the checkpoint relies on, stays the net's)."""
        opt = self.w_optimizer
        for group in opt.param_groups:
            group["params"] = [moved[p][0] if p in moved else p for p in group["params"]]
        for old, (new, recipe) in moved.items():
            st = opt.state.pop(old, None)
            if st is not None:
                opt.state[new] = {n: expand(v, recipe) if torch.is_tensor(v) and v.shape == old.shape else v
                                  for n, v in st.items()}

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
