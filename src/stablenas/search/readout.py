"""What the search reads off its supernet without training it: the validation loss and accuracy, the
fixed validation batches the curvature analysis compares like with like, and the op weights of
every edge as an epoch record stores them. A part of :class:`stablenas.search.loop.Search`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import distributed as dist
from ..data import TensorLoader
from ..progress import bar as progress_bar
from ..supernet.mix import Mix

if TYPE_CHECKING:
    from .loop import Batch


class Readouts:
    """Evaluation and records of the supernet (mixed into ``Search``, whose state they read)."""

    @torch.no_grad()
    def evaluate(self, loader: TensorLoader | None = None, max_batches: int | None = None,
                 mix: Mix | None = None, bn: str = "eval", desc: str | None = None) -> tuple[float, float]:
        """Loss and accuracy of the supernet on the validation split. ``bn="eval"``: BN's running statistics;
        ``bn="train"``: each batch's own statistics, as the search trains (the running statistics, gathered
        under the op mixture, do not fit a discretised cell), the network's buffers left as they were.
        ``desc``: a progress bar with that label (when bars are on)."""
        if bn not in ("eval", "train"):
            raise ValueError(f"bn must be 'eval' or 'train', got {bn!r}")
        loader = loader or self.val_eval_loader
        max_batches = max_batches or self.cfg.search.val_batches
        was_training, stream = self.net.training, self.stream
        saved = [b.clone() for b in self.net.buffers()] if bn == "train" else None
        self.net.train(bn == "train")
        self.stream = "eval"
        mix = mix or self.mix("eval").detached()
        acc = torch.zeros(3, device=self.device)
        loader.set_epoch(0)
        total = len(loader) if max_batches is None else min(len(loader), max_batches)
        with progress_bar(total, desc or "", self.progress and desc is not None, unit="batch") as b:
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                acc += self.skeleton.eval_sums(self, x, y, mix)
                b.update(1)
        if saved is not None:
            with torch.no_grad():
                for b, v in zip(self.net.buffers(), saved, strict=True):
                    b.copy_(v)
        self.net.train(was_training)
        self.stream = stream
        (acc,) = dist.all_reduce_sum([acc])  # each rank evaluated its slice of every batch
        loss_sum, correct, count = acc.tolist()
        return loss_sum / max(count, 1), correct / max(count, 1)

    def fixed_val_batches(self, n: int = 1, batch_size: int | None = None, seed_offset: int = 7) -> list[Batch]:
        """``n`` fixed batches of the validation half, no augmentation: the same batches every call
        (fixed seed, loader-epoch 0), and the search's own validation stream is never consumed
        (curvature series compare like with like)."""
        bs = int(batch_size or self.cfg.data.batch_size)
        loader = self._fixed_loaders.get((bs, seed_offset))
        if loader is None:
            loader = self.skeleton.fixed_val_loader(self, bs, self.cfg.seed * 1000 + seed_offset)
            if self.dist.active:  # the measured objective is the job's: each rank its slice of the batches
                try:
                    loader.set_shard(self.dist.rank, self.dist.world)
                except ValueError as e:
                    raise ValueError(f"curvature: {e}") from None
            if len(loader) == 0:
                raise ValueError(f"curvature batch size {bs} exceeds the {loader.num_samples} validation images")
            self._fixed_loaders[(bs, seed_offset)] = loader
        n = int(n)
        if n > len(loader):
            raise ValueError(f"curvature asks for {n} batches of {bs}; the validation half has only "
                             f"{len(loader)}")
        return [loader.batch(0, i) for i in range(n)]

    def op_weights_record(self) -> dict[str, list[list[float]]]:
        w = {ct: t.detach().cpu() for ct, t in self.arch.op_weights().items()}
        out = {}
        for ct, t in w.items():
            out[ct] = [[round(float(v), 6) for v in t[e, : len(ops)]]
                       for e, ops in enumerate(self.space.edge_ops[ct])]
        return out
