"""The hook interface every search method implements.

One search loop (``search.loop.Search``) runs every method. A method is a small object whose hooks
the loop calls at fixed points; it never copies the loop. Each hook receives the search as a
``SearchContext`` (``methods.context``): the attributes a method may read and the operations it may
perform, nothing else of the loop. The hooks, in call order:

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
- ``on_weight_grads(search)``: in the weight step, after the gradients of the network weights are
  made (and averaged over ranks), before clipping and the optimiser step: edit or drop them.
  ``p.grad = None`` leaves ``p`` bit-identical (SGD skips it, momentum and weight decay included;
  the clipping norm leaves it out): OLES freezes ops this way. The step's batch and op weights are
  ``search.weight_batch`` / ``search.weight_mix`` (Lambda-DARTS adds gradients from more passes).
- ``freezes_alpha(search) -> bool``: True to skip the alpha steps of the current epoch (consulted
  by ``search.alpha_frozen()`` with the warm-up and ``update: none``; DARTS-PT's selection phase).
- ``on_epoch_end(search, epoch, record)``: add numbers to the epoch's metrics record; end the
  search and/or fix the architecture it returns with ``search.set_outcome(genotype=..., stop=...)``
  (the one way: DARTS-ES stops and returns an earlier epoch's cell, RS-ws pins its best sample).
- ``state_dict()`` / ``load_state_dict(state)``: whatever must survive a resume. A method's state
  lives on the method object (attributes set in ``__init__``/``setup``), never on the loop.

Config requirements are declared, not discovered mid-run: ``requires = {"search.update":
"single"}`` and/or a ``validate(cfg, options)`` classmethod, both checked when the config loads.
A method that runs on past the search (DARTS-PT's selection phase) declares where the search ends
with the ``schedule_epochs(cfg, options)`` classmethod: the weight lr's cosine and the ramps of
``_common.linear_ramp`` span that many epochs (``search.schedule_epochs``).
Modules a method needs in the supernet are declared too: ``supernet_options`` (build keywords the
skeleton's ``supernet_from_config`` adds, e.g. DARTS-'s ``{"aux_skip": True}``); what the supernet
computes with them rides on ``Mix`` (``supernet.mix``, ``Mix.skip``), never on state stored in the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import ValidationError

from ..config import ConfigModel, format_validation_error
from ..errors import ConfigError
from ..registry import METHODS
from ..supernet.mix import Mix

if TYPE_CHECKING:
    from .context import SearchContext

Batch = tuple[torch.Tensor, torch.Tensor]


class MethodOptions(ConfigModel):
    """A method's options (the ``methods:`` entry besides its name)."""


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # the publication the method follows: authors, venue, title
    preset: ClassVar[str | None] = None  # configs/<preset>.yaml
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    # config values the method needs, dotted key -> value (checked at config load by validate)
    requires: ClassVar[dict[str, Any]] = {}
    # supernet build options the method needs (``skeleton.supernet_from_config`` adds them), e.g.
    # ``{"aux_skip": True}``: DARTS-'s auxiliary skip modules; the skeleton must support them
    supernet_options: ClassVar[dict[str, Any]] = {}
    # True: the method holds references to the supernet's op modules or snapshots of its tensors,
    # so the shape must stay as built; a method that reshapes the supernet (``reshape_supernet``)
    # refuses to run beside it
    needs_fixed_shape: ClassVar[bool] = False

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

    @classmethod
    def schedule_epochs(cls, cfg: Any, options: MethodOptions) -> int | None:
        """The epochs the search's schedules span when this method runs on past them; None:
        ``optim.epochs``."""
        return None

    # -- hooks (all optional) ----------------------------------------------------------------
    def setup(self, search: SearchContext) -> None:
        pass

    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        pass

    def arch_step(self, search: SearchContext, train_batch: Batch, val_batch: Batch) -> bool:
        return False

    def arch_penalty(self, search: SearchContext) -> torch.Tensor | None:
        return None

    def freezes_alpha(self, search: SearchContext) -> bool:
        return False

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        return mix

    def on_weight_grads(self, search: SearchContext) -> None:
        pass

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def schedule_epochs(cfg: Any) -> int:
    """The epochs a search's schedules span: the shortest a method declares, else ``optim.epochs``."""
    spans = [cfg.optim.epochs]
    for entry in cfg.methods:
        cls = METHODS[entry.name]
        span = cls.schedule_epochs(cfg, cls.parse_options(entry.model_extra or {}))
        if span is not None:
            spans.append(span)
    return min(spans)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` (in configs, the CLI, analysis)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return METHODS.register(cls)
