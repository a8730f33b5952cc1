"""OLES (Jiang et al., NeurIPS 2023, "Operation-level early stopping for robustifying differentiable
NAS"): stop training an op's weights once they fit the training data against the validation data.

Unit: one candidate op with weights on one edge of one cell (every ``MixedOp.ops[k]`` with
parameters, each cell its own; parameter-free ops never freeze). Per step, with both gradients at
the same weights: ``s = mean_params mean(cos_dim0(g_train, g_val))``, where ``cos_dim0`` is the
cosine similarity along a parameter's first dimension (``torch.cosine_similarity(.., dim=0)``, one
value per remaining index, averaged: the authors' ``check_grads_cosine`` in ``train_search.py``),
``g_train`` the weight step's gradient (averaged over ranks, before clipping: a scale does not change
a cosine) and ``g_val`` the gradient of the alpha step's validation loss w.r.t. the op's weights,
taken from the same backward as alpha's (``Search.first_order_grad(val_batch, weights)``).
Windows of ``window`` (20, ``--count``) steps follow each other without overlap; when an op's mean
over a window is below ``threshold`` (0.4, ``--patience``) its weights are frozen for the rest of the
search (the authors set ``requires_grad`` off for good): from then on its gradient is dropped
before the optimiser step (``Method.on_weight_grads``), so SGD leaves it bit-identical.

Where this differs from the authors' code, and why: their ``param.grad`` at the check still holds
the previous step's (clipped) training gradient plus the validation gradient (DARTS's architect
does not zero the weight gradients), and their counter averages 21 similarities divided by 20; we
compare the clean validation gradient with the training gradient at the same weights (what the
paper describes: the op's gradients on training and on validation data), over exactly ``window``
steps. An op that did not run in a step (a sampled, hard architecture) has no gradient there: its
window mean is over the steps it ran.
Cost: the validation gradient of the live op weights in the alpha step; one host read of the
decisions per window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ConfigError
from ..registry import METHODS, SKELETONS, SPACES
from ..supernet.network import MixedOp
from .base import Batch, Method, MethodOptions, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class OLESOptions(MethodOptions):
    # train_search.py --patience 0.4
    threshold: float = Field(
        0.4, ge=-1.0, le=1.0,
        description="freeze an op when its mean train/val gradient cosine over a window is below this")
    # train_search.py --count 20 (steps per decision)
    window: int = Field(20, ge=1, description="steps per decision window")


def op_units(net: torch.nn.Module) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """Every (cell, edge, op) with weights, as (module name, its parameters), in module order."""
    units = []
    for name, m in net.named_modules():
        if isinstance(m, MixedOp):
            for k, op in enumerate(m.ops):
                params = [p for p in op.parameters() if p.numel()]
                if params:
                    units.append((f"{name}.ops.{k}", params))
    return units


def column_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Stacked parameters ``[N, d0, ...]``: per parameter, the mean over the indices after ``d0`` of
    the cosine similarity along ``d0`` (the authors' ``cosine_similarity(g, g_pre, dim=0).mean()``)."""
    return F.cosine_similarity(a, b, dim=1).reshape(a.shape[0], -1).mean(1)


@register_method
class OLES(Method):
    name = "oles"
    paper = "Jiang et al., NeurIPS 2023: 'Operation-Level Early Stopping for Robustifying Differentiable NAS'"
    description = "OLES: freeze an op's weights when its train/val gradient cosine stays < 0.4 over 20 steps"
    preset = "oles"
    Options = OLESOptions
    requires = {"search.update": "first"}
    needs_fixed_shape = True  # its per-op units hold the ops' parameters

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        SKELETONS[SPACES[cfg.space].skeleton].require("op_modules", "method oles (it freezes single candidate ops)")
        others = [m.name for m in cfg.methods if m.name != cls.name and m.name in METHODS
                  and METHODS[m.name].arch_step is not Method.arch_step]
        if others:
            raise ConfigError(f"methods: oles takes the alpha step (it needs that backward's op-weight "
                              f"gradients) and so does {others[0]}; use one of them")

    def setup(self, search: SearchContext) -> None:
        self.units = op_units(search.net)
        n = len(self.units)
        dev = search.device
        self.frozen = torch.zeros(n, dtype=torch.bool)  # host copy, read once per window
        self.sum = torch.zeros(n, device=dev)  # window sums of the step similarities
        self.seen = torch.zeros(n, device=dev)  # steps of the window in which the op ran
        self.steps = 0  # steps of the current window
        self._val: list[torch.Tensor | None] | None = None  # this step's validation gradients
        self._regroup()

    def _regroup(self) -> None:
        """The live ops' parameters, grouped by shape (one batched cosine per group)."""
        frozen = self.frozen.tolist()
        live = [u for u, f in enumerate(frozen) if not f]
        self.live_params = [p for u in live for p in self.units[u][1]]
        owner = [u for u in live for _ in self.units[u][1]]
        self.params_per_unit = torch.bincount(torch.tensor(owner, dtype=torch.long),
                                              minlength=len(self.units)).to(self.sum)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(self.live_params):
            groups.setdefault((tuple(p.shape), p.dtype), []).append(i)
        dev = self.sum.device
        self.groups = [(idx, torch.tensor([owner[i] for i in idx], device=dev)) for idx in groups.values()]
        self.frozen_params = [p for u, f in enumerate(frozen) if f for p in self.units[u][1]]

    def arch_step(self, search: SearchContext, train_batch: Batch, val_batch: Batch) -> bool:
        n = len(list(search.arch.parameters()))
        grads = search.first_order_grad(val_batch, self.live_params)
        self._val = grads[n:]
        search.apply_arch_grads(grads[:n])
        return True

    def step_similarity(self, train: list[torch.Tensor | None], val: list[torch.Tensor | None]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per op: (this step's similarity s, 1.0 where the op ran, else 0), from the live
        parameters' train and validation gradients (None where the op did not run)."""
        total = torch.zeros_like(self.sum)
        count = torch.zeros_like(self.sum)
        for idx, owner in self.groups:
            pairs = [(train[i], val[i]) for i in idx]
            ran = [a is not None and b is not None for a, b in pairs]
            if not any(ran):
                continue
            if not all(ran):
                idx = [i for i, r in zip(idx, ran) if r]
                owner = owner[torch.tensor(ran, device=owner.device)]
                pairs = [(train[i], val[i]) for i in idx]
            cos = column_cosine(torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs]))
            total.index_add_(0, owner, cos.to(total.dtype))
            count.index_add_(0, owner, torch.ones(len(idx), dtype=total.dtype, device=total.device))
        ran_all = (count == self.params_per_unit) & (count > 0)
        return torch.where(ran_all, total / count.clamp_min(1), torch.zeros_like(total)), ran_all.to(total.dtype)

    def on_weight_grads(self, search: SearchContext) -> None:
        if self._val is not None:
            train = [p.grad for p in self.live_params]
            s, ran = self.step_similarity(train, self._val)
            self._val = None
            self.sum += s
            self.seen += ran
            self.steps += 1
            if self.steps == self.opts.window:
                self._decide()
        for p in self.frozen_params:
            p.grad = None

    def _decide(self) -> None:
        mean = self.sum / self.seen.clamp_min(1)
        newly = ((self.seen > 0) & (mean < self.opts.threshold)).cpu()  # one host read per window
        self.sum.zero_()
        self.seen.zero_()
        self.steps = 0
        if bool(newly.any()):
            self.frozen |= newly
            self._regroup()

    def frozen_ops(self) -> list[str]:
        """Module names of the frozen ops (``cells.3.edges.5.ops.4``)."""
        return [name for (name, _), f in zip(self.units, self.frozen.tolist()) if f]

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        record["oles_frozen"] = int(self.frozen.sum())
        record["oles_ops"] = len(self.units)

    def state_dict(self) -> dict:
        return {"frozen": self.frozen.clone(), "sum": self.sum.cpu(), "seen": self.seen.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.frozen = state["frozen"].clone()
        self.sum = state["sum"].to(self.sum.device).clone()
        self.seen = state["seen"].to(self.seen.device).clone()
        self.steps = int(state["steps"])
        self._val = None
        self._regroup()
