"""Tensor-only minibatch loaders whose entire state is (epoch, position).

Why not ``torch.utils.data.DataLoader``: our datasets fit in (accelerator) memory as uint8, so per-sample
workers, PIL decoding and collation only add overhead; and a DataLoader's shuffling and augmentation
randomness live in worker processes and the global RNG, which makes an interrupted search impossible to
resume bit-exactly.  Here every random number of loader-epoch ``e`` derives from a generator seeded from
``(seed, e)``, so saving ``(epoch, position)`` is enough to continue the same stream.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .datasets import ImageDataset
from .transforms import Augment, normalize

__all__ = ["InfiniteLoader", "TensorLoader", "search_split"]

Batch = tuple[torch.Tensor, torch.Tensor]


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed so that neighbouring (seed, epoch) pairs are unrelated."""
    text = "stablenas.loader:" + ":".join(str(int(p)) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def _as_index_tensor(indices: Any, n: int) -> torch.Tensor:
    idx = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))
    idx = idx.to(device="cpu", dtype=torch.int64).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"indices must lie in [0, {n})")
    return idx


class TensorLoader:
    """Minibatches ``(x float32 (B, C, H, W), y int64 (B,))`` from an in-memory :class:`ImageDataset`.

    The selected uint8 images are copied to ``device`` once, at construction; each batch is then an index
    gather, the augmentation's spatial stage on uint8, normalisation with the dataset's statistics, and the
    augmentation's erasing stage, all on ``device``.

    Loader-epoch ``e`` is planned by a CPU generator seeded from ``(seed, e)``: it draws the permutation
    (when ``shuffle``) and then one seed per batch for that batch's augmentation generator.  So a batch
    depends only on ``(seed, e, batch number)``; resuming from ``(epoch, position)`` needs no replay, and
    the same seed gives the same batches on CPU and GPU.

    The loader is a single stream: iterating continues from the current ``(epoch, position)``, and an
    exhausted epoch advances to the next, so ``for epoch in ...: for x, y in loader`` walks epochs 0, 1, ...
    Use distinct seeds for loaders that should be independent (e.g. the two search halves).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        indices: torch.Tensor | None = None,
        batch_size: int = 64,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: Augment | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.indices = None if indices is None else _as_index_tensor(indices, len(dataset))
        if self.indices is None:
            x, y = dataset.x, dataset.y
        else:
            x, y = dataset.x[self.indices], dataset.y[self.indices]
        self.x = x.to(self.device).contiguous()
        self.y = y.to(self.device)
        self.mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device)
        self.num_classes = dataset.num_classes
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = int(seed)
        self.channels_last = channels_last
        self.epoch = 0
        self.position = 0  # batches of `epoch` already handed out
        self._plan: tuple[int, torch.Tensor, list[int]] | None = None
        self.shard: tuple[int, int] | None = None  # (rank, world): this rank's slice of every batch

    def set_shard(self, rank: int, world: int) -> None:
        """Hand this process only its slice of every batch (data parallelism, :mod:`stablenas.distributed`).

        ``batch_size`` stays the *global* batch: the plan (permutation, batch seeds) is the same on
        every rank, rank ``r`` of ``world`` takes the ``r``-th of ``world`` contiguous slices, so the
        ranks' slices are disjoint and together are the one-process batch. A ``drop_last`` loader (the
        search streams: every shard loss a mean over equally many samples, so the mean over ranks is
        the global-batch mean) needs ``batch_size`` divisible by ``world``; others split as evenly as
        possible (their users sum over samples). Augmentation draws from a per-rank generator derived
        from the batch seed, so ranks never apply the same crops to their different images."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"shard: rank {rank} of {world}")
        if world > 1 and self.drop_last and self.batch_size % world:
            raise ValueError(f"batch size {self.batch_size} is not divisible by the {world} ranks (the batch "
                             "size is the global batch, split across ranks)")
        self.shard = (int(rank), int(world)) if world > 1 else None

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    # ----------------------------------------------------------------------------------------- state

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of loader-epoch ``epoch``."""
        self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        """``epoch`` and ``position`` are the state; the rest lets :meth:`load_state_dict` spot mismatches."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_samples": self.num_samples, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "num_samples", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"loader state was saved with {key}={state[key]}, this loader has "
                                 f"{getattr(self, key)}: resuming would not reproduce the stream")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(f"position {position} outside [0, {len(self)}]")
        self.epoch, self.position = int(state["epoch"]), position

    # ----------------------------------------------------------------------------------------- batches

    def _plan_for(self, epoch: int) -> tuple[torch.Tensor, list[int]]:
        if self._plan is None or self._plan[0] != epoch:
            g = torch.Generator(device="cpu")
            g.manual_seed(_derive_seed(self.seed, epoch))
            n = self.num_samples
            perm = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            batch_seeds = torch.randint(0, 2**62, (len(self),), generator=g).tolist()
            self._plan = (epoch, perm.to(self.device), batch_seeds)
        return self._plan[1], self._plan[2]

    def order(self, epoch: int) -> torch.Tensor:
        """Dataset-level indices in the order loader-epoch ``epoch`` visits them (CPU tensor)."""
        perm = self._plan_for(epoch)[0].cpu()
        return perm if self.indices is None else self.indices[perm]

    def batch(self, epoch: int, number: int) -> Batch:
        """Batch ``number`` of loader-epoch ``epoch``, computed statelessly."""
        if not 0 <= number < len(self):
            raise IndexError(f"batch {number} outside [0, {len(self)})")
        perm, batch_seeds = self._plan_for(epoch)
        idx = perm[number * self.batch_size:(number + 1) * self.batch_size]
        seed = batch_seeds[number]
        if self.shard is not None:
            rank, world = self.shard
            idx = idx.tensor_split(world)[rank]
            seed = _derive_seed(seed, rank, world)
        x, y = self.x[idx], self.y[idx]
        g = None
        if self.augment is not None:
            g = torch.Generator(device="cpu")
            g.manual_seed(seed)
            x = self.augment.spatial(x, g)
        x = normalize(x, self.mean, self.std)
        if g is not None:
            x = self.augment.erase(x, g)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def __iter__(self) -> Iterator[Batch]:
        """Yield the rest of the current epoch (a fresh one if it is used up), then advance the epoch."""
        if self.position >= len(self):
            self.set_epoch(self.epoch + 1)
        while self.position < len(self):
            out = self.batch(self.epoch, self.position)
            self.position += 1  # before yielding: a state_dict taken now resumes after this batch
            if out[1].numel() == 0:  # a rank's empty slice of a short last batch
                continue
            yield out
        self.set_epoch(self.epoch + 1)


class InfiniteLoader:
    """A never-ending batch stream over a :class:`TensorLoader`, rolling into the next epoch as needed.

    DARTS draws one validation batch per training step; ``next(iter(loader))`` each step would restart (and
    with a fresh iterator, re-shuffle) every time.  This keeps one iterator alive instead; its state is the
    wrapped loader's ``(epoch, position)``, so a resumed run continues the identical stream.
    """

    def __init__(self, loader: TensorLoader) -> None:
        if len(loader) == 0:
            raise ValueError("loader yields no batches (drop_last with fewer samples than batch_size?)")
        self.loader = loader
        self._it: Iterator[Batch] | None = None

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def next(self) -> Batch:
        return self.__next__()

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.loader.load_state_dict(state)
        self._it = None


def search_split(n: int, train_portion: float = 0.5, subset: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split training-set indices ``range(n)`` into the search's weight half and architecture half.

    As in DARTS, the first ``floor(train_portion * n)`` indices train the weights and the rest are the
    validation set that trains the architecture.  With ``subset``, a random ``subset`` of the ``n`` samples
    (seeded by ``seed``; the only use of ``seed``) is drawn first and split the same way, for fast searches on
    a fraction of the data.  Both halves are returned sorted.
    """
    if n < 2:
        raise ValueError(f"need at least 2 samples to split, got {n}")
    if subset is not None:
        if not 2 <= subset <= n:
            raise ValueError(f"subset must be in [2, {n}], got {subset}")
        g = torch.Generator(device="cpu")
        g.manual_seed(int(seed))
        pool = torch.randperm(n, generator=g)[:subset]
    else:
        pool = torch.arange(n)
    k = int(math.floor(train_portion * pool.numel()))
    if not 0 < k < pool.numel():
        raise ValueError(f"train_portion={train_portion} leaves one half of the {pool.numel()} samples empty")
    return pool[:k].sort().values, pool[k:].sort().values
