"""What the bench times: a ``Search`` on seeded synthetic images through the real data path (plain
DARTS settings, or a method preset's at the bench's size), its step on fixed batches, the plain
DARTS model with the same weights and alpha (``supernet.reference``) in either memory layout, and
each engine's lambda_max objective."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .options import BenchConfig

SYNTHETIC_PREFIX = "bench-synthetic"
Batch = tuple[torch.Tensor, torch.Tensor]


def _synthetic_name(shape: tuple[int, int, int], classes: int) -> str:
    c, h, w = shape
    return f"{SYNTHETIC_PREFIX}-{c}x{h}x{w}-{classes}"


def synthetic_dataset(shape: tuple[int, int, int], classes: int, n: int, seed: int):
    """Seeded random uint8 images as an in-memory dataset; ``make_search`` hands it to ``Search``
    (nothing is registered globally)."""
    from ..data.datasets import ImageDataset, _channel_stats

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, classes, size=(n,), dtype=np.int64)
    mean, std = _channel_stats(x)
    return ImageDataset(_synthetic_name(shape, classes), torch.from_numpy(x), torch.from_numpy(y), classes,
                        mean, std)


def base_config(bc: BenchConfig, update: str = "first") -> dict:
    """The raw search config of plain DARTS at the bench's size (``update``: first or second order)."""
    return {
        "name": "bench", "seed": bc.seed, "device": bc.device, "threads": bc.threads, "space": bc.space,
        # data.dataset is not loaded: make_search hands the search its synthetic images
        "data": {"dataset": "fashion-mnist", "batch_size": bc.batch, "subset": None, "train_portion": 0.5},
        "network": {"channels": bc.channels, "layers": bc.cells, "channels_last": bc.channels_last},
        "search": {"update": update},
        "evaluation": {"lookup": False},
    }


def preset_config(raw: dict, bc: BenchConfig) -> dict:
    """A preset's method settings at the bench's size, data and device."""
    raw = dict(raw)
    base = base_config(bc)
    raw["space"] = bc.space
    raw["seed"] = bc.seed
    raw["device"] = bc.device
    raw["threads"] = bc.threads
    raw["data"] = base["data"]
    net = dict(raw.get("network") or {})
    net.update(channels=bc.channels, layers=bc.cells, channels_last=bc.channels_last)
    raw["network"] = net
    optim = dict(raw.get("optim") or {})
    optim["warmup_epochs"] = 0  # time the steady state: alpha steps on
    raw["optim"] = optim
    raw["evaluation"] = {"lookup": False}
    return raw


def method_presets(names: list[str] | None) -> list[tuple[str, dict | None, str | None]]:
    """(preset, raw config or None, reason when skipped); ``None``: every preset with a method."""
    from ..config import PRESET_DIR, list_presets, read_yaml

    out = []
    available = list_presets()
    wanted = names if names is not None else available
    for name in wanted:
        if name not in available:
            out.append((name, None, f"no preset {name!r} in configs/"))
            continue
        raw = read_yaml(PRESET_DIR / f"{name}.yaml") or {}
        if names is None and not raw.get("methods"):
            continue  # plain DARTS presets are the first/second-order rows
        out.append((name, raw, None))
    return out


def make_search(raw: dict, bc: BenchConfig, mid_run: bool = False):
    """A ``Search`` on the bench's seeded synthetic images (given to it as its data), in epoch 0 or,
    ``mid_run``, in the middle of its run (``optim.epochs // 2``), where ramped terms (beta-DARTS's
    lambda, Lambda-DARTS's strength, SDARTS's epsilon) are on: at epoch 0 some weigh nothing and
    are skipped."""
    from ..config import config_from_dict
    from ..registry import SKELETONS, SPACES
    from ..search.loop import Search
    from ..utils import resolve_device

    cfg = config_from_dict(raw)
    data = SKELETONS[SPACES[cfg.space].skeleton].search_data(
        cfg, resolve_device(cfg.device), dataset=synthetic_dataset(bc.input, bc.classes, 4 * bc.batch, bc.seed))
    s = Search(cfg, None, progress=False, log=lambda _m: None, data=data)
    s.start_epoch(cfg.optim.epochs // 2 if mid_run else 0)
    s.net.train()
    return s


def batches(search) -> tuple[Batch, Batch]:
    """The search's first training batch and its next validation batch."""
    train = next(iter(search.train_loader))
    val = next(search.val_stream)
    return train, val


def search_iteration(search, train: Batch, val: Batch) -> Callable[[], None]:
    """One step of ``Search.train_epoch``'s loop on fixed batches (``Search.step``)."""
    def run() -> None:
        search.step(train, val)
    return run


def plain_model(search, bc: BenchConfig, channels_last: bool = False):
    """Plain DARTS model with the search's weights and alpha, on the search's device; with
    ``channels_last`` after ``model.to(memory_format=torch.channels_last)``."""
    from ..supernet.reference import PlainDARTS, PlainSearchStep

    n = search.cfg.network
    o = search.cfg.optim
    model = PlainDARTS(search.space, C=n.channels, layers=n.layers, num_classes=search.num_classes,
                       in_channels=bc.input[0], stem_multiplier=n.stem_multiplier)
    model.net.load_state_dict(search.net.state_dict())
    if channels_last:
        model.to(search.device, memory_format=torch.channels_last)
    else:
        model.to(search.device)
    for a, b in zip(model.arch_parameters(), search.arch.alphas.values()):
        a.data.copy_(b.data)
    step = PlainSearchStep(model, lr=search.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           grad_clip=o.grad_clip, arch_lr=o.arch_lr, arch_betas=tuple(o.arch_betas),
                           arch_weight_decay=o.arch_weight_decay)
    return model, step


def as_channels_first(batch: Batch) -> Batch:
    x, y = batch
    return x.contiguous(), y


def as_channels_last(batch: Batch) -> Batch:
    x, y = batch
    return x.contiguous(memory_format=torch.channels_last), y


def plain_batch(engine: str) -> Callable[[Batch], Batch]:
    """The layout a plain engine's batches take ("plain_cl": channels_last)."""
    return as_channels_last if engine == "plain_cl" else as_channels_first


def _objective(cur, search, net=None, to_batch=as_channels_first):
    found = cur.validation_batches(search, 1, search.cfg.data.batch_size)
    if net is not None:
        found = [to_batch(b) for b in found]
    return cur.AlphaObjective(search.net if net is None else net, search.arch, found, bn="train",
                              edge_weights=search.arch.edge_weights())


def engine_objective(cur, search, bc: BenchConfig, engine: str):
    """The lambda_max objective of ``engine`` ("fast", "plain", "plain_cl") on the search's weights
    and alpha (a plain model is built for it; the objective keeps it alive)."""
    if engine in ("plain", "plain_cl"):
        model, _ = plain_model(search, bc, channels_last=(engine == "plain_cl"))
        return _objective(cur, search, model.net, plain_batch(engine))
    return _objective(cur, search)
