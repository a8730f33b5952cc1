"""Changing a built supernet's shape between search stages: which candidate ops run on each edge, and
how many channels go through them (PC-DARTS's K). Progressive DrNAS needs both (Chen et al., ICLR
2021, Sec. 2.4; the authors' ``DARTS-space/train_search.py``, ``model.pruning`` then ``model.wider``).

Pruned ops stay in the modules (their weights stay in the state dict, which keeps resume and the
plain reference simple); the engine skips them (``MixedOp.set_candidates``) and alpha's mask gives
them weight exactly 0.

Widening from C/K_old to C/K_new channels follows the authors' ``net2wider.py``: every widened
tensor keeps its old entries and appends copies of randomly chosen ones, one index per layer, the
same index for a layer's output channels and the next layer's input channels along a
depthwise-pointwise chain and for the BN after a conv. The copies are *not* rescaled (their
``InChannelWider`` does not divide by the replication count), and the new input channels carry
other features than the old ones, so the supernet's function changes at the widening. A transfer
is an index per dimension (:data:`Recipe`), applied alike to a weight and its momentum buffer.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..spaces.ops import DilConv, FactorizedReduce, ReLUConvBN, SepConv
from .network import MixedOp

# new = old.index_select(dim, index) for each (dim, index), in order
Recipe = list[tuple[int, torch.Tensor]]

_BN = ("weight", "bias", "running_mean", "running_var")


def expand(t: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """``t`` widened by ``recipe`` (a weight, a BN statistic or a momentum buffer)."""
    for dim, index in recipe:
        t = t.index_select(dim, index.to(t.device))
    return t


def _grow(n_old: int, n_new: int, gen: torch.Generator) -> torch.Tensor:
    """The old channels in order, then ``n_new - n_old`` copies drawn uniformly (``net2wider.py``)."""
    return torch.cat([torch.arange(n_old), torch.randint(0, n_old, (n_new - n_old,), generator=gen)])


def _bn(prefix: str, index: torch.Tensor) -> dict[str, Recipe]:
    return {prefix + n: [(0, index)] for n in _BN}


def _dil(prefix: str, c_old: int, c_new: int, gen: torch.Generator) -> dict[str, Recipe]:
    """ReLU - depthwise - pointwise - BN (``DilConv.wider``): the depthwise output index feeds the
    pointwise input, the pointwise output index the BN."""
    a, b = _grow(c_old, c_new, gen), _grow(c_old, c_new, gen)
    return {prefix + "1.weight": [(0, a)], prefix + "2.weight": [(1, a), (0, b)], **_bn(prefix + "3.", b)}


def op_recipes(op: nn.Module, c_old: int, c_new: int, gen: torch.Generator) -> dict[str, Recipe]:
    """The transfer of every parameter and BN statistic of one candidate op (``wider`` of each op
    class in the authors' ``operations.py``); a SepConv is two DilConvs, widened one after the other."""
    if isinstance(op, SepConv):
        return {**_dil("0.", c_old, c_new, gen), **_dil("1.", c_old, c_new, gen)}
    if isinstance(op, DilConv):
        return _dil("", c_old, c_new, gen)
    if isinstance(op, ReLUConvBN):
        i, o = _grow(c_old, c_new, gen), _grow(c_old, c_new, gen)
        return {"1.weight": [(1, i), (0, o)], **_bn("2.", o)}
    if isinstance(op, FactorizedReduce):
        h_old, h_new = c_old // 2, c_new // 2
        out = {}
        for n in ("conv_1", "conv_2"):
            out[n + ".weight"] = [(1, _grow(c_old, c_new, gen)), (0, _grow(h_old, h_new, gen))]
        # the BN's channels follow the two convs' (the authors index the second half from 0)
        bn = torch.cat([out["conv_1.weight"][1][1], h_old + out["conv_2.weight"][1][1]])
        return {**out, **_bn("bn.", bn)}
    if isinstance(op, nn.Sequential) and isinstance(op[-1], nn.BatchNorm2d):  # pool + static BN
        return _bn(f"{len(op) - 1}.", _grow(c_old, c_new, gen))
    if any(True for _ in op.parameters()):
        raise TypeError(f"no channel transfer is defined for the op {type(op).__name__}")
    return {}


def _widen_edge(mixed: MixedOp, k: int, gen: torch.Generator,
                fmt: torch.memory_format) -> dict[nn.Parameter, tuple[nn.Parameter, Recipe]]:
    c_old, c_new = mixed.op_channels(), mixed.channels // k
    moved: dict[nn.Parameter, tuple[nn.Parameter, Recipe]] = {}
    for i, (name, old) in enumerate(zip(mixed.op_names, mixed.ops)):
        recipes = op_recipes(old, c_old, c_new, gen)
        new = mixed.build_candidate(name, c_new)
        ref = next(iter(old.state_dict().values()), None)
        if ref is not None:
            new = new.to(device=ref.device, memory_format=fmt)
        new.train(old.training)
        olds, old_state = dict(old.named_parameters()), old.state_dict()
        with torch.no_grad():
            for n, t in new.state_dict().items():  # BN's num_batches_tracked as it was
                t.copy_(expand(old_state[n], recipes.get(n, [])))
        for n, p in new.named_parameters():
            moved[olds[n]] = (p, recipes.get(n, []))
        mixed.ops[i] = new
    mixed.set_partial(k)
    return moved


def mixed_ops(net: nn.Module) -> list[MixedOp]:
    return [m for m in net.modules() if isinstance(m, MixedOp)]


def partial_channels(net: nn.Module) -> int:
    """The supernet's K (1 when it has no mixed op)."""
    ks = {m.partial_k for m in mixed_ops(net)}
    if len(ks) > 1:
        raise ValueError(f"the supernet's mixed ops disagree on partial channels: {sorted(ks)}")
    return ks.pop() if ks else 1


def widen(net: nn.Module, k: int, gen: torch.Generator) -> dict[nn.Parameter, tuple[nn.Parameter, Recipe]]:
    """Every mixed op of ``net`` from its K to ``k`` <= K (more channels through the ops), weights
    carried over by :func:`op_recipes`. Returns old parameter -> (new parameter, its recipe), for
    the optimiser's state."""
    if k > partial_channels(net):
        raise ValueError(f"partial channels can only shrink (wider ops): {partial_channels(net)} -> {k}")
    fmt = torch.channels_last if getattr(net, "channels_last", False) else torch.contiguous_format
    moved: dict[nn.Parameter, tuple[nn.Parameter, Recipe]] = {}
    for m in mixed_ops(net):
        if m.partial_k != k:
            if m.channels % k:
                raise ValueError(f"partial channels: C={m.channels} is not divisible by K={k}")
            moved.update(_widen_edge(m, k, gen, fmt))
    return moved


def set_candidates(net: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Run, on every edge of every cell, only the ops ``masks[cell_type][edge]`` keeps."""
    rows = {ct: m.tolist() for ct, m in masks.items()}  # one host copy per cell type
    for cell in net.modules():
        ct = getattr(cell, "cell_type", None)
        if ct in rows and isinstance(getattr(cell, "edges", None), nn.ModuleList):
            for e, mixed in enumerate(cell.edges):
                if isinstance(mixed, MixedOp):
                    mixed.set_candidates(rows[ct][e][: len(mixed.ops)])


__all__ = ["Recipe", "expand", "mixed_ops", "op_recipes", "partial_channels", "set_candidates", "widen"]
