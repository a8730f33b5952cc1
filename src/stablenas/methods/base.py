"""The hook interface every search method implements.

One search loop (``search.loop.Search``) runs every method. A method is a small object whose hooks
the loop calls at fixed points; it never copies the loop. The hooks, in call order:

- ``setup(search)``: once, after the supernet, alpha and optimisers exist (and before a resume
  restores state).
- ``on_epoch_start(search, epoch)``: schedules (perturbation radius, temperature, ...).
- ``arch_step(search, train_batch, val_batch) -> bool``: replace the alpha update of this step;
  return False to leave it to the configured rule (first/second order, single-level).
- ``arch_penalty(search) -> Tensor | None``: a term added to the alpha objective, a function of
  alpha alone (beta-DARTS's smoothmax, FairDARTS's zero-one loss, DrNAS's prior, a resource budget).
  The loop adds its gradient to every alpha step (first order, second order, a method's own
  ``arch_step`` through ``search.apply_arch_grads``) and adds the term to the single-level loss.
- ``transform(search, mix, phase, batch) -> Mix``: edit the op weights that reach the supernet in
  a phase: ``"weights"`` (the weight step: SDARTS perturbations, MS-DARTS shift, GDAS/RS-ws
  sampling), ``"arch"`` (the alpha step), ``"eval"`` (validation passes). Methods compose in
  config order, each seeing the previous one's output.
- ``on_epoch_end(search, epoch, record)``: add numbers to the epoch's metrics record; end the
  search and/or fix the architecture it returns with ``search.set_outcome(genotype=..., stop=...)``
  (the one way: DARTS-ES stops and returns an earlier epoch's cell, RS-ws pins its best sample).
- ``state_dict()`` / ``load_state_dict(state)``: whatever must survive a resume. A method's state
  lives on the method object (attributes set in ``__init__``/``setup``), never on the loop.

Config requirements are declared, not discovered mid-run: ``requires = {"search.update":
"single"}`` and/or a ``validate(cfg, options)`` classmethod, both checked when the config loads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import format_validation_error
from ..errors import ConfigError
from ..registry import METHODS

if TYPE_CHECKING:
    from ..search.loop import Search

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Mix:
    """What the supernet mixes with: op weights per cell type, optional edge weights (PC-DARTS
    betas) and optional hard per-edge op choices (only the chosen op runs)."""

    op: dict[str, torch.Tensor]
    edge: dict[str, torch.Tensor] | None = None
    hard: dict[str, list[int]] | None = None

    def replace(self, **kw: Any) -> Mix:
        return replace(self, **kw)

    def detached(self) -> Mix:
        return Mix({k: v.detach() for k, v in self.op.items()},
                   None if self.edge is None else {k: v.detach() for k, v in self.edge.items()}, self.hard)


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    preset: ClassVar[str | None] = None  # configs/<preset>.yaml
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    # config values the method needs, dotted key -> value (checked at config load by validate)
    requires: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: MethodOptions | dict | None = None):
        if not isinstance(options, MethodOptions):
            options = self.parse_options(options or {})
        self.opts = options

    @classmethod
    def parse_options(cls, raw: dict) -> MethodOptions:
        try:
            return cls.Options.model_validate(raw)
        except ValidationError as e:
            raise ValueError(format_validation_error(e, cls.Options, f"method {cls.name}", noun="option")) from None

    @classmethod
    def validate(cls, cfg: Any, options: MethodOptions) -> None:
        """Config checks, run when the config is loaded (with the other config errors, before any
        data or network is built). The default checks ``requires``; override (calling super) for
        more, e.g. a skeleton capability: ``skeleton_of(cfg.space).require("partial_channels", ...)``.
        Raise ``ConfigError`` with one line naming the key and what is allowed."""
        for key, want in cls.requires.items():
            got: Any = cfg
            for part in key.split("."):
                got = getattr(got, part)
            if got != want:
                how = f"use the {cls.preset} preset or set it" if cls.preset else "set it"
                raise ConfigError(f"method {cls.name} needs {key}: {want} (got {got!r}); {how}")

    # -- hooks (all optional) ----------------------------------------------------------------
    def setup(self, search: Search) -> None:
        pass

    def on_epoch_start(self, search: Search, epoch: int) -> None:
        pass

    def arch_step(self, search: Search, train_batch: Batch, val_batch: Batch) -> bool:
        return False

    def arch_penalty(self, search: Search) -> torch.Tensor | None:
        return None

    def transform(self, search: Search, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        return mix

    def on_epoch_end(self, search: Search, epoch: int, record: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` (in configs, the CLI, analysis)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return METHODS.register(cls)
