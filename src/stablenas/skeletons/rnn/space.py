"""The DARTS recurrent search space (Liu et al. 2019, Sec. 3 and App. A.1.2) as data.

A recurrent cell has one input node (s0, the highway mix of x_t and h_{t-1}) and 8 intermediate
nodes; node i may read any of nodes 0..i, so the space has 1 + 2 + ... + 8 = 36 edges, each a
mixture over the candidate activations. In the op registry these activations are ordinary
parameter-free ops (they act elementwise on the node's linear map; the cell owns the weights),
which is what lets alpha, op weights, every method and the discretisation rule stay generic.

Spaces: ``ptb`` (DARTS: none, tanh, relu, sigmoid, identity) and ``ptb-relu-id`` (robust-darts
App. F: relu, identity). ``inputs_per_node=1``: DARTS keeps one (op, predecessor) per node.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...spaces.catalog import SearchSpace, register_space
from ...spaces.ops import register_op

RNN_SKELETON = "rnn"
CELL = "recurrent"  # the one cell type of a recurrent space
STEPS = 8  # intermediate nodes of the DARTS recurrent cell
RNN_OPS = ("none", "tanh", "relu", "sigmoid", "identity")

# elementwise activations the search cell mixes (none is the zero op: it contributes nothing)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "identity": lambda t: t,
}


class _Elementwise(nn.Module):
    """Registry entry of an activation op. The recurrent cell applies the activation itself; as a
    module it keeps the op-registry contract (channels kept, stride 2 halves the map by subsampling,
    like the zero op), so it is a valid op wherever ops are built."""

    def __init__(self, name: str, stride: int = 1):
        super().__init__()
        self.name, self.stride = name, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ACTIVATIONS[self.name](x)
        return y if self.stride == 1 else y[..., :: self.stride, :: self.stride]

    def extra_repr(self) -> str:
        return f"{self.name}, stride={self.stride}"


for _name in ("tanh", "relu", "sigmoid", "identity"):
    register_op(_name, lambda C, stride, affine, _n=_name: _Elementwise(_n, stride), parametric=False)


def recurrent_space(name: str, ops: tuple[str, ...], description: str, source: str,
                    n_nodes: int = STEPS) -> SearchSpace:
    n_edges = n_nodes * (n_nodes + 1) // 2
    return SearchSpace(name, RNN_SKELETON, 1, n_nodes, {CELL: tuple(tuple(ops) for _ in range(n_edges))},
                       description, inputs_per_node=1, source=source)


def is_recurrent(space: SearchSpace) -> bool:
    return space.skeleton == RNN_SKELETON


# built-ins of the op and space registries (stablenas.registry names this module)
register_space(recurrent_space(
    "ptb", RNN_OPS, "DARTS recurrent cell: 8 nodes, one (op, predecessor) each; none, tanh, relu, sigmoid, "
    "identity", "Liu et al. 2019, Sec. 3 / App. A.1.2"))
register_space(recurrent_space(
    "ptb-relu-id", ("relu", "identity"), "recurrent cell, reduced space of relu and identity",
    "Zela et al. 2020, App. F"))
