"""Architecture parameters as a first-class object.

``ArchParams`` owns alpha for every cell type of a space (padded to the widest edge, with a mask
for per-edge op sets), optional edge-normalisation betas (PC-DARTS), and the *activation* that maps
alpha to op weights (softmax, sigmoid, or one registered later). It lives outside the supernet:
the network's forward takes op weights explicitly, so a method can perturb, resample or
reparameterise them between alpha and the forward without touching any module, and alpha stays
out of DDP's parameter set (DARTS-on-DDP bugs come from alpha inside the module).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ACTIVATIONS
from ..spaces.catalog import SearchSpace

OpWeights = dict[str, torch.Tensor]

# activation(alpha, mask) -> op weights; masked (padding) slots must come out exactly 0
Activation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RegisteredActivation:
    """An activation and the one property methods need to know about its range: ``simplex`` when
    every edge's op weights are non-negative and sum to 1 (softmax, the Dirichlet mean), so a
    perturbation of them (SDARTS, MS-DARTS) projects back onto the simplex; otherwise onto the box
    [0, 1] (sigmoid's independent weights)."""

    fn: Activation
    simplex: bool

    def __call__(self, alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fn(alpha, mask)


def register_activation(name: str, fn: Activation, *, simplex: bool = False) -> None:
    """Make ``arch.activation: name`` available; ``simplex``: its op weights sum to 1 per edge."""
    entry = RegisteredActivation(fn, simplex)
    if name in ACTIVATIONS and ACTIVATIONS[name] == entry:
        return  # the same function again (a module imported twice)
    ACTIVATIONS.register(name, entry)


def _masked_softmax(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # masked even when nothing is (the same bits): asking the mask first is a host sync per step
    return torch.softmax(alpha.masked_fill(~mask, float("-inf")), dim=-1)


def _masked_sigmoid(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(alpha) * mask


def dirichlet_concentration(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DrNAS's concentration elu(alpha) + 1 > 0 (Chen et al. 2021, Sec. 2.2; ``process_step_vector``
    in the authors' ``utils.py``), with 1 in the padding slots: a constant there, so padding alpha
    gets no gradient, and the value that drops out of the Dirichlet prior's KL term."""
    return torch.where(mask, F.elu(alpha) + 1.0, torch.ones_like(alpha))


def _dirichlet_mean(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of Dir(elu(alpha) + 1) over each edge's valid ops: the concentration normalised.
    DrNAS samples op weights during the search (``methods.drnas``); validation passes, the epoch
    records and discretisation read this mean."""
    c = dirichlet_concentration(alpha, mask) * mask
    return c / c.sum(-1, keepdim=True)


register_activation("softmax", _masked_softmax, simplex=True)
register_activation("sigmoid", _masked_sigmoid)
register_activation("dirichlet", _dirichlet_mean, simplex=True)


class ArchParams(nn.Module):
    """alpha per cell type, shape (edges, max_ops), plus optional per-edge betas.

    ``init`` is 'normal' (DARTS: 1e-3 * N(0,1)), or a float constant (Single-DARTS sigmoid uses
    -ln 7 so every op starts at weight 1/8).
    """

    def __init__(self, space: SearchSpace, activation: str = "softmax", init: str | float = "normal",
                 init_scale: float = 1e-3, edge_betas: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        ACTIVATIONS.canonical(activation)  # unknown names: one error listing the registered ones
        self.space = space
        self.activation = activation
        K = space.max_ops()
        self.alphas = nn.ParameterDict()
        self.betas = nn.ParameterDict()
        for ct in space.cell_types:
            mask = torch.zeros(space.n_edges, K, dtype=torch.bool)
            for e, ops in enumerate(space.edge_ops[ct]):
                mask[e, : len(ops)] = True
            self.register_buffer(f"mask_{ct}", mask)
            if init == "normal":
                a = init_scale * torch.randn(space.n_edges, K, generator=generator)
            else:
                a = torch.full((space.n_edges, K), float(init))
            self.alphas[ct] = nn.Parameter(a)
            if edge_betas:
                b = init_scale * torch.randn(space.n_edges, generator=generator)
                self.betas[ct] = nn.Parameter(b)

    # -- views -------------------------------------------------------------------------------
    def mask(self, cell_type: str) -> torch.Tensor:
        return getattr(self, f"mask_{cell_type}")

    @property
    def cell_types(self) -> tuple[str, ...]:
        return tuple(self.alphas.keys())

    @property
    def simplex(self) -> bool:
        """Whether the activation's op weights lie on the simplex of each edge (``register_activation``)."""
        return ACTIVATIONS[self.activation].simplex

    def op_weights(self, alphas: OpWeights | None = None, *, detach: bool = False) -> OpWeights:
        """Activation applied to (possibly substituted) alphas: what the supernet mixes with, on
        alpha's autograd graph (the alpha gradient flows through it); ``detach=True``: the values
        alone, for hooks that record or print them (no graph kept, no warning on ``float()``)."""
        alphas = self.alphas if alphas is None else alphas
        act = ACTIVATIONS[self.activation]
        out = {ct: act(alphas[ct], self.mask(ct)) for ct in self.cell_types}
        return {ct: w.detach() for ct, w in out.items()} if detach else out

    def edge_weights(self) -> OpWeights | None:
        """PC-DARTS edge normalisation: softmax of betas over the edges entering each node."""
        if not len(self.betas):
            return None
        out = {}
        for ct, b in self.betas.items():
            parts = [torch.softmax(b[list(self.space.node_edges(i))], dim=0) for i in range(self.space.n_nodes)]
            out[ct] = torch.cat(parts)
        return out

    def project(self, weights: OpWeights) -> OpWeights:
        """Clip to [0, 1] and renormalise per edge over valid ops (the simplex, SDARTS-RS)."""
        out = {}
        for ct, w in weights.items():
            m = self.mask(ct)
            w = w.clamp(0.0, 1.0) * m
            out[ct] = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        return out

    # -- flat views for curvature and perturbation ---------------------------------------------
    def flat(self) -> torch.Tensor:
        """Valid alpha entries of all cell types as one vector (padding excluded)."""
        return torch.cat([a[self.mask(ct)] for ct, a in self.alphas.items()])

    def unflatten(self, vec: torch.Tensor) -> OpWeights:
        out, i = {}, 0
        for ct, a in self.alphas.items():
            m = self.mask(ct)
            n = int(m.sum())
            full = torch.zeros_like(a)
            full = full.masked_scatter(m, vec[i:i + n]) if n else full
            out[ct] = full
            i += n
        return out

    def num_alpha(self) -> int:
        return sum(int(self.mask(ct).sum()) for ct in self.cell_types)

    def extra_repr(self) -> str:
        return (f"space={self.space.name}, activation={self.activation}, "
                f"alpha={self.num_alpha()}, betas={bool(len(self.betas))}")


def sigmoid_init_for(n_ops: int) -> float:
    """alpha0 such that sigmoid(alpha0) = 1/n_ops (Single-DARTS: -ln 7 for 8 ops)."""
    return -math.log(n_ops - 1)
