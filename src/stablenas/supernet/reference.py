"""A plain reimplementation of the original DARTS search model, kept as a yardstick.

This is what DARTS (Liu et al. 2019) does, written from its description and structure, with no
performance work at all: every mixed op is the Python loop ``sum(w * op(x) for w, op in zip(...))``
over *all* ops (``none`` included, computing its zeros), every conv op applies its own ReLU,
tensors stay channels-first, and the architect takes its first- and second-order alpha steps the
original way (the unrolled model is a fresh copy of the network built every step; the mixed second
derivative is a central finite difference in weight space).

It exists for two reasons:

* correctness: tests load the *same* weights into this model and into the fast supernet
  (each skeleton's ``supernet`` module) and require the same logits and gradients, so every
  fast-path trick is checked against the obvious computation;
* speed: ``stablenas bench`` times both in the same process and reports same-run ratios.

What is shared by the skeletons lives here (the plain mixed op, :func:`build_plain`, the DARTS
model and architect); each skeleton's plain cells and network live next to its fast supernet
(``skeletons.darts.reference`` beside ``skeletons.darts.supernet``, ``skeletons.nb201.reference``
beside ``skeletons.nb201.supernet``). Module and parameter names mirror the fast supernet's
(``stem``, ``cells.i.preprocess0``, ``cells.i.edges.e.ops.k``, ``classifier``), so
``plain.load_state_dict(fast.state_dict())`` works. Only the op *blocks* are shared with the
library (``spaces.ops``: ReLUConvBN, SepConv, DilConv, ...), which are themselves the unfused
textbook definitions, and NAS-Bench-201's macro scaffolding around the cells
(``skeletons.nb201.supernet.NB201Macro``: stem, stages, head).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import SKELETONS
from ..spaces.catalog import SearchSpace
from ..spaces.ops import FactorizedReduce, build_op

__all__ = ["PlainMixedOp", "PlainArchitect", "PlainDARTS", "PlainSearchStep", "build_plain", "check_no_hard",
           "copy_weights", "plain_softmax"]


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    # PC-DARTS channel shuffle: (B, g, C/g, H, W) -> swap the two channel axes -> flatten
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


def check_no_hard(hard) -> None:
    """The plain networks take the fast supernet's arguments (so analysis code can run either), but
    have no hard (one op per edge) mode."""
    if hard is not None:
        raise ValueError("the plain DARTS reference has no hard (one op per edge) mode; pass hard=None")


class PlainMixedOp(nn.Module):
    """All candidate ops of an edge, summed with their weights (PC-DARTS partial channels optional).
    ``aux``: DARTS-'s auxiliary skip on a stride-2 edge, a FactorizedReduce of its own (DARTS-
    ``model_search.py``); on a stride-1 edge the auxiliary path is the input itself."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str], partial_k: int = 1,
                 pool_bn: bool = True, aux_skip: bool = False):
        super().__init__()
        self.partial_k = partial_k
        self.ops = nn.ModuleList()
        for p in primitives:
            op = build_op(p, C // partial_k, stride, False)
            if pool_bn and "pool" in p:
                op = nn.Sequential(op, nn.BatchNorm2d(C // partial_k, affine=False))
            self.ops.append(op)
        self.mp = nn.MaxPool2d(2, 2, ceil_mode=True)  # = PC-DARTS's MaxPool2d(2, 2) on even maps; odd maps too
        self.aux = FactorizedReduce(C, C, affine=False) if (aux_skip and stride == 2) else None

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.partial_k == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        dim = x.shape[1] // self.partial_k
        xa, xb = x[:, :dim], x[:, dim:]
        ya = sum(w * op(xa) for w, op in zip(weights, self.ops))
        if ya.shape[2] == x.shape[2]:
            out = torch.cat([ya, xb], dim=1)
        else:
            out = torch.cat([ya, self.mp(xb)], dim=1)
        return _shuffle(out, self.partial_k)


def build_plain(space: SearchSpace, *, C: int = 16, layers: int = 8, num_classes: int = 10,
                in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1,
                node_norm: bool = False, aux_skip: bool = False) -> nn.Module:
    """The plain twin of ``supernet.network.build_supernet`` (same arguments, same state-dict keys):
    the space's skeleton's reference network."""
    return SKELETONS[space.skeleton].build_reference(
        space, C=C, layers=layers, num_classes=num_classes, in_channels=in_channels,
        stem_multiplier=stem_multiplier, partial_k=partial_k, node_norm=node_norm, aux_skip=aux_skip)


def plain_softmax(alpha: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Row softmax; padded slots of per-edge spaces (mask False) get weight exactly 0."""
    if mask is None or bool(mask.all()):
        return F.softmax(alpha, dim=-1)
    return F.softmax(alpha.masked_fill(~mask, float("-inf")), dim=-1)


# --------------------------------------------------------------------------------------------
# the original search procedure: a model that owns alpha, and the architect


class PlainDARTS(nn.Module):
    """The DARTS "model": network + alphas (plain tensors, not parameters) + its loss.

    ``parameters()`` are the network weights only (the original keeps alphas out of them);
    ``arch_parameters()`` are the alphas, one ``(edges, ops)`` tensor per cell type.
    """

    def __init__(self, space: SearchSpace, *, C: int = 16, layers: int = 8, num_classes: int = 10,
                 in_channels: int = 3, stem_multiplier: int = 3, partial_k: int = 1, node_norm: bool = False):
        super().__init__()
        self._args = dict(C=C, layers=layers, num_classes=num_classes, in_channels=in_channels,
                          stem_multiplier=stem_multiplier, partial_k=partial_k, node_norm=node_norm)
        self.space = space
        self.memory_format = torch.contiguous_format
        self.net = build_plain(space, **self._args)
        self.criterion = nn.CrossEntropyLoss()
        K = space.max_ops()
        self.cell_types = space.cell_types
        self.masks: dict[str, torch.Tensor] = {}
        self._alphas: dict[str, torch.Tensor] = {}
        for ct in self.cell_types:
            m = torch.zeros(space.n_edges, K, dtype=torch.bool)
            for e, ops in enumerate(space.edge_ops[ct]):
                m[e, :len(ops)] = True
            self.masks[ct] = m
            self._alphas[ct] = (1e-3 * torch.randn(space.n_edges, K)).requires_grad_(True)

    def arch_parameters(self) -> list[torch.Tensor]:
        return [self._alphas[ct] for ct in self.cell_types]

    def parameters(self, recurse: bool = True):  # noqa: D102 - weights only, as in DARTS
        return self.net.parameters(recurse)

    def to(self, *args, **kwargs) -> PlainDARTS:  # alphas are plain tensors: move them by hand
        """As ``nn.Module.to``; a ``memory_format`` (the one-line ``channels_last`` a user tries
        first) is remembered so the unrolled copies of :meth:`new` get it too."""
        self.net.to(*args, **kwargs)
        if "memory_format" in kwargs:
            self.memory_format = kwargs["memory_format"]
        dev = next(self.net.parameters()).device
        self.masks = {k: v.to(dev) for k, v in self.masks.items()}
        self._alphas = {k: v.detach().to(dev).requires_grad_(True) for k, v in self._alphas.items()}
        return self

    def weights(self) -> dict[str, torch.Tensor]:
        return {ct: plain_softmax(self._alphas[ct], self.masks[ct]) for ct in self.cell_types}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.weights())

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(self(x), y)

    def new(self) -> PlainDARTS:
        """A fresh model with the same alphas (DARTS rebuilds the network for the unrolled step)."""
        m = PlainDARTS(self.space, **self._args).to(next(self.net.parameters()).device,
                                                    memory_format=self.memory_format)
        for a, b in zip(m.arch_parameters(), self.arch_parameters()):
            a.data.copy_(b.data)
        return m


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    # a cell type the network does not use (e.g. no reduction cell with < 3 layers) gets zeros
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]


class PlainArchitect:
    """DARTS's architect: Adam on alpha, first order or unrolled (second order) gradients.

    The unrolled step follows the original: w' = w - eta * (momentum * buf + dL_train/dw + wd * w)
    on a freshly built copy of the model, then the validation gradient at w' minus
    eta * [grad_a L_train(w+) - grad_a L_train(w-)] / (2R), w+- = w +- R v, R = 0.01 / ||v||.
    """

    def __init__(self, model: PlainDARTS, *, momentum: float = 0.9, weight_decay: float = 3e-4,
                 arch_lr: float = 3e-4, arch_betas: tuple[float, float] = (0.5, 0.999),
                 arch_weight_decay: float = 1e-3):
        self.model = model
        self.network_momentum = momentum
        self.network_weight_decay = weight_decay
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_lr, betas=arch_betas,
                                          weight_decay=arch_weight_decay)

    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
             eta: float, network_optimizer: torch.optim.Optimizer, unrolled: bool) -> None:
        self.optimizer.zero_grad()
        if unrolled:
            self._backward_step_unrolled(x_train, y_train, x_val, y_val, eta, network_optimizer)
        else:
            self._backward_step(x_val, y_val)
        self.optimizer.step()

    def _backward_step(self, x_val: torch.Tensor, y_val: torch.Tensor) -> None:
        loss = self.model.loss(x_val, y_val)
        loss.backward()

    def _compute_unrolled_model(self, x: torch.Tensor, y: torch.Tensor, eta: float,
                                network_optimizer: torch.optim.Optimizer) -> PlainDARTS:
        loss = self.model.loss(x, y)
        params = list(self.model.parameters())
        theta = _flat(params).detach()
        try:
            buffers = [network_optimizer.state[p]["momentum_buffer"] for p in params]
            moment = _flat(buffers) * self.network_momentum
        except KeyError:
            moment = torch.zeros_like(theta)
        dtheta = _flat(torch.autograd.grad(loss, params)).detach() + self.network_weight_decay * theta
        return self._construct_model_from_theta(theta - eta * (moment + dtheta))

    def _construct_model_from_theta(self, theta: torch.Tensor) -> PlainDARTS:
        model_new = self.model.new()
        state = self.model.net.state_dict()
        offset = 0
        params = {}
        for name, p in self.model.net.named_parameters():
            n = p.numel()
            params[name] = theta[offset:offset + n].view_as(p)
            offset += n
        state.update(params)
        model_new.net.load_state_dict(state)
        return model_new

    def _backward_step_unrolled(self, x_train, y_train, x_val, y_val, eta, network_optimizer) -> None:
        unrolled_model = self._compute_unrolled_model(x_train, y_train, eta, network_optimizer)
        unrolled_loss = unrolled_model.loss(x_val, y_val)
        unrolled_loss.backward()
        dalpha = [torch.zeros_like(v) if v.grad is None else v.grad for v in unrolled_model.arch_parameters()]
        vector = [torch.zeros_like(v) if v.grad is None else v.grad.detach()
                  for v in unrolled_model.parameters()]
        implicit_grads = self._hessian_vector_product(vector, x_train, y_train)
        for g, ig in zip(dalpha, implicit_grads):
            g.sub_(eta * ig)
        for v, g in zip(self.model.arch_parameters(), dalpha):
            v.grad = g.detach().clone()

    def _hessian_vector_product(self, vector, x, y, r: float = 1e-2) -> list[torch.Tensor]:
        R = r / _flat(vector).norm()
        params = list(self.model.parameters())
        with torch.no_grad():
            for p, v in zip(params, vector):
                p.add_(R * v)
        alphas = self.model.arch_parameters()
        loss = self.model.loss(x, y)
        grads_p = _grads(loss, alphas)
        with torch.no_grad():
            for p, v in zip(params, vector):
                p.sub_(2 * R * v)
        loss = self.model.loss(x, y)
        grads_n = _grads(loss, alphas)
        with torch.no_grad():
            for p, v in zip(params, vector):
                p.add_(R * v)
        return [(gp - gn) / (2 * R) for gp, gn in zip(grads_p, grads_n)]


class PlainSearchStep:
    """One iteration of DARTS's ``train_search.py`` loop: architect step, then the weight step."""

    def __init__(self, model: PlainDARTS, *, lr: float = 0.025, momentum: float = 0.9,
                 weight_decay: float = 3e-4, grad_clip: float | None = 5.0, arch_lr: float = 3e-4,
                 arch_betas: tuple[float, float] = (0.5, 0.999), arch_weight_decay: float = 1e-3):
        self.model = model
        self.lr = lr
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.SGD(model.parameters(), lr, momentum=momentum, weight_decay=weight_decay)
        self.architect = PlainArchitect(model, momentum=momentum, weight_decay=weight_decay, arch_lr=arch_lr,
                                        arch_betas=arch_betas, arch_weight_decay=arch_weight_decay)

    def __call__(self, train_batch, val_batch, unrolled: bool = False) -> torch.Tensor:
        x, y = train_batch
        xv, yv = val_batch
        self.architect.step(x, y, xv, yv, self.lr, self.optimizer, unrolled)
        self.optimizer.zero_grad()
        loss = self.model.loss(x, y)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach()


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Load ``src``'s weights and buffers into ``dst`` (plain <-> fast: same names)."""
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
