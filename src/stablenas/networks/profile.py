"""Model size and cost, counted the way the DARTS-family papers report them.

* Parameters: every parameter except the auxiliary tower's (the DARTS ``count_parameters_in_MB``
  convention: names containing ``auxiliary`` are skipped, since the tower is dropped at test time).
  Batch-norm affine parameters count; running statistics are buffers and do not.
* Multiply-adds: convolutions and linear layers only, for one image in eval mode (so the auxiliary
  tower does not run), counted analytically from the shapes seen by forward hooks:
  ``out_h * out_w * out_c * (in_c / groups) * k_h * k_w`` per conv and ``in * out`` per linear
  layer. Biases, batch norm, activations, pooling and the element-wise sums of a cell are not
  counted -- the same convention as the "multiply-add operations" of the papers' mobile setting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..genotype import Genotype
from .evaluation import build_eval_network

__all__ = ["DEFAULTS", "count_macs", "count_params", "info"]

DEFAULTS: dict[str, dict] = {
    "cifar": {"C": 36, "layers": 20, "num_classes": 10, "input_size": (3, 32, 32)},
    "imagenet": {"C": 48, "layers": 14, "num_classes": 1000, "input_size": (3, 224, 224)},
    "nb201": {"C": 16, "layers": 5, "num_classes": 10, "input_size": (3, 32, 32), "layers_unit": "cells per stage"},
}


def count_params(model: nn.Module, exclude_aux: bool = True) -> int:
    """Number of parameters, by default without the auxiliary head (the papers' convention)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (exclude_aux and "auxiliary" in name))


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of conv and linear layers for one forward of one image of ``input_shape``.

    ``input_shape`` is ``(C, H, W)`` (a leading batch dimension of 1 is accepted). The model is
    run once in eval mode under ``no_grad`` on zeros and restored to its previous mode; modules
    inside the auxiliary head are skipped even if something runs them.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        if shape[0] != 1:
            raise ValueError(f"count_macs counts one image; got a batch of {shape[0]}")
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")

    total = 0

    def conv_hook(mod: nn.Conv2d, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        k_h, k_w = mod.kernel_size
        per_output = (mod.in_channels // mod.groups) * k_h * k_w
        total += out.numel() * per_output

    def linear_hook(mod: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    handles = []
    for name, mod in model.named_modules():
        if "auxiliary" in name:
            continue
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))

    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def info(genotype: Genotype | str, network: str = "cifar", C: int | None = None, layers: int | None = None,
         num_classes: int | None = None, input_size: Sequence[int] | int | None = None) -> dict:
    """Parameters and multiply-adds of ``genotype``'s evaluation network.

    ``genotype`` may be a :class:`Genotype`, the name of a published one, or an NB201 arch
    string. Unset sizes take the papers' defaults for ``network`` (cifar: 36 channels, 20 cells,
    10 classes, 3x32x32; imagenet: 48, 14, 1000, 3x224x224; nb201: 16 channels, N=5, 10 classes,
    3x32x32). ``input_size`` may be ``(C, H, W)`` or a single side length (3 channels assumed).
    """
    if isinstance(genotype, str):
        if genotype.startswith("|"):
            genotype = Genotype.from_dict({"space": "nb201", "arch": genotype})
        else:
            from .published import get_published

            genotype = get_published(genotype)
    network = genotype.skeleton.resolve_eval_network(network)  # an NB201 cell: always nb201
    if network not in DEFAULTS:
        raise ValueError(f"unknown network {network!r}; choose one of {', '.join(DEFAULTS)}")
    d = DEFAULTS[network]
    C = d["C"] if C is None else C
    layers = d["layers"] if layers is None else layers
    num_classes = d["num_classes"] if num_classes is None else num_classes
    if input_size is None:
        size = tuple(d["input_size"])
    elif isinstance(input_size, int):
        size = (3, input_size, input_size)
    else:
        size = tuple(int(s) for s in input_size)

    # auxiliary: not counted either way, skip building it (builders ignore sizes they lack)
    kwargs = {"C": C, "num_classes": num_classes, "in_channels": size[0], "layers": layers, "auxiliary": False}
    model = build_eval_network(genotype, network, **kwargs)
    params = count_params(model)
    macs = count_macs(model, size)
    return {
        "network": network,
        "C": C,
        "layers": layers,
        "layers_unit": d.get("layers_unit", "cells"),
        "num_classes": num_classes,
        "input_size": size,
        "params": params,
        "params_M": params / 1e6,
        "macs": macs,
        "macs_M": macs / 1e6,
    }
