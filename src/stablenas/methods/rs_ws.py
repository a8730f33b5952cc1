"""Random search with weight sharing (RS-ws; Li & Talwalkar 2019, the robust-darts / SDARTS baseline).

Training: alpha is never used (``search.update: none``); every weight step trains one uniformly
sampled discrete architecture of the space (per node ``inputs_per_node`` distinct incoming edges
with a non-`none` op each on the DARTS skeleton, one op per edge on NB201), by handing the
supernet a one-hot mix with hard choices, so only the sampled ops run.

Selection, at the end of the last epoch (or when another method stops the search): ``samples``
fresh uniform architectures are ranked by shared-weight validation accuracy on the first
``eval_batches`` batches of the validation split (BN in eval mode); the ``top_k`` best are
re-ranked on the whole validation split, and the winner is pinned as the search result
(``search.final_genotype``) and written into that epoch's record. Defaults follow the released
code (``random_weight_share.py`` / ``darts_wrapper_discrete.py``): 1,000 samples on 10 batches, top
10 on the full split. The candidates come from a generator seeded by the config seed, so the
selection is reproducible and independent of the training stream.

Validation forwards during the search (the epoch records' ``val_acc``) use one fixed random
architecture drawn at setup, which makes that number the shared-weight accuracy of one
architecture instead of a meaningless softmax mixture of single-path-trained ops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from .. import distributed as dist
from ..genotype import Genotype
from ..supernet.mix import Mix
from ._common import discrete_mix, genotype_of, sample_architecture
from .base import Batch, Method, MethodOptions, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class RSWSOptions(MethodOptions):
    # architectures ranked at the end (code: 1000)
    samples: int = Field(1000, ge=1, description="random architectures ranked at the end")
    # validation batches per candidate (code: 10)
    eval_batches: int = Field(10, ge=1, description="validation batches per candidate")
    # re-ranked on the full validation split (code: 10); 0 = skip
    top_k: int = Field(10, ge=0, description="best candidates re-ranked on the full validation split (0: none)")


@register_method
class RSWS(Method):
    name = "rs-ws"
    paper = "Li & Talwalkar, UAI 2019: 'Random Search and Reproducibility for Neural Architecture Search'"
    description = "Random search with weight sharing: train a uniform random arch per step, rank N at the end"
    preset = "rs-ws"
    Options = RSWSOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.ranking: list[tuple[Genotype, float]] = []  # the last selection, best first (for inspection)

    requires = {"search.update": "none"}  # RS-ws trains no alpha

    def setup(self, search: SearchContext) -> None:
        gen = torch.Generator().manual_seed(search.cfg.seed * 7919 + 17)
        self._eval_arch = sample_architecture(search.space, gen)

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        if phase == "weights":
            hard = sample_architecture(search.space)  # global CPU RNG: checkpointed by the loop
        elif phase == "eval":
            hard = self._eval_arch
        else:
            return mix
        return discrete_mix(search.arch, hard, search.device).replace(skip=mix.skip)

    # -- selection -----------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, search: SearchContext, archs: list[dict[str, list[int]]],
              max_batches: int | None) -> torch.Tensor:
        """Shared-weight validation accuracy of each architecture, shape (len(archs),), one host sync."""
        loader = search.val_eval_loader
        was = search.net.training
        search.net.eval()
        out = []
        try:
            for hard in archs:
                mix = discrete_mix(search.arch, hard, search.device)
                acc = torch.zeros(2, device=search.device)
                loader.set_epoch(0)
                for i, (x, y) in enumerate(loader):
                    if max_batches is not None and i >= max_batches:
                        break
                    logits = search.forward(x, mix)
                    acc += torch.stack([(logits.argmax(1) == y).sum().float(),
                                        torch.tensor(float(y.shape[0]), device=search.device)])
                out.append(acc)
        finally:
            search.net.train(was)
        (acc,) = dist.all_reduce_sum([torch.stack(out)])  # each rank scored its slice of the batches
        return (acc[:, 0] / acc[:, 1].clamp_min(1.0)).cpu()

    def select(self, search: SearchContext) -> tuple[Genotype, float]:
        o = self.opts
        gen = torch.Generator().manual_seed(search.cfg.seed * 104729 + 3)
        archs = [sample_architecture(search.space, gen) for _ in range(o.samples)]
        acc = self.score(search, archs, o.eval_batches)
        order = sorted(range(len(archs)), key=lambda i: -float(acc[i]))
        ranked = [(archs[i], float(acc[i])) for i in order]
        if o.top_k:
            top = [a for a, _ in ranked[: o.top_k]]
            full = self.score(search, top, None)
            reorder = sorted(range(len(top)), key=lambda i: -float(full[i]))
            ranked = [(top[i], float(full[i])) for i in reorder]
        self.ranking = [(genotype_of(search.space, a), s) for a, s in ranked]
        return self.ranking[0]

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        last = epoch + 1 >= search.cfg.optim.epochs
        if not (last or search.stop_reason is not None):
            return
        best, acc = self.select(search)
        search.set_outcome(genotype=best)
        record["genotype"] = best.to_dict()
        record["rs_ws"] = {"samples": self.opts.samples, "top_k": self.opts.top_k, "best_val_acc": acc}
