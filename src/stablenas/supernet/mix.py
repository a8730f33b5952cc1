"""``Mix``: what one supernet forward mixes with.

Alpha lives outside the network (``supernet.arch``); between alpha and the forward, methods edit
the op weights (perturb, resample, shift). ``Mix`` is the value they pass along and the supernet's
forward consumes, so it sits beside the supernet, below both the methods and the skeletons.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass
class Mix:
    """What the supernet mixes with: op weights per cell type (``[edges, ops]``, or per cell
    ``[cells of the type, edges, ops]``: ``supernet.network.cell_op_weights``), optional edge weights (PC-DARTS
    betas), optional hard per-edge op choices (only the chosen op runs) and ``skip``, the weight
    of an auxiliary identity path added to every mixed op's output (DARTS-'s beta; a plain number,
    never differentiated; None: no such path)."""

    op: dict[str, torch.Tensor]
    edge: dict[str, torch.Tensor] | None = None
    hard: dict[str, list[int]] | None = None
    skip: float | None = None

    def replace(self, **kw: Any) -> Mix:
        return replace(self, **kw)

    def detached(self) -> Mix:
        return Mix({k: v.detach() for k, v in self.op.items()},
                   None if self.edge is None else {k: v.detach() for k, v in self.edge.items()}, self.hard,
                   self.skip)

    def net_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the supernet's forward beyond (op, edge, hard): ``skip`` when set
        (skeletons without the auxiliary path never see the keyword)."""
        return {} if self.skip is None else {"skip": self.skip}
