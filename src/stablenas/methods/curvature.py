"""``hessian``: track the dominant eigenvalue of the validation Hessian w.r.t. alpha during search.

Adds ``lambda_max`` (and, when asked, the top eigenvalues of the exact spectrum) to the epoch
record every ``every`` epochs and at the last epoch (the RobustDARTS schedule: ``epoch % freq ==
0 or last``). It never changes the search: fixed validation batches (not the search's stream),
cloned BN buffers, DropPath off and a private RNG for the start vector (see
:mod:`stablenas.curvature`). It also records raw alpha (``alpha``: the flat valid entries) so that
distances in alpha space can be computed afterwards (MS-DARTS Fig. 4).

The measurement is an observer, :class:`LambdaMaxObserver`, that any method composes: ``hessian``
attaches it to a search from the config alone, DARTS-ES and DARTS-ADA decide on its series.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..config import Seed
from .base import Method, MethodOptions, register_method

if TYPE_CHECKING:
    from ..curvature import Curvature
    from .context import SearchContext


class HessianOptions(MethodOptions):
    every: int = Field(1, ge=1,
                       description="epochs between lambda_max measurements (the last epoch is always measured)")
    batches: int = Field(1, ge=1, description="validation batches the measured loss is averaged over")
    # None = data.batch_size (BN batch statistics depend on it)
    batch_size: int | None = Field(None, gt=0, description="size of those batches (null: data.batch_size)")
    iters: int = Field(20, ge=2,
                       description="Lanczos steps or power iterations (Hessian-vector products) per measurement")
    algorithm: Literal["lanczos", "power", "exact"] = Field(
        "lanczos",
        description="eigenvalue method: Lanczos, power iteration or the exact Hessian (small alpha only)")
    bn: Literal["train", "eval"] = Field(
        "train",
        description="BatchNorm while measuring: batch statistics (train, as RobustDARTS) or running ones")
    top_k: int = Field(0, ge=0,
                       description="also record the k largest-magnitude eigenvalues of the exact Hessian (0: none)")
    # add optim.arch_weight_decay * I (the RobustDARTS code does)
    arch_weight_decay: bool = Field(False, description="add optim.arch_weight_decay * I to the Hessian")
    record_alpha: bool = Field(True, description="store alpha in the epoch record of every measurement")
    seed: Seed = Field(0, description="seed of the Lanczos / power-iteration start vector")


def lambda_series(records: list[dict]) -> list[tuple[int, float]]:
    """(0-based epoch, lambda_max) of every record that has a measurement, in order."""
    out = []
    for r in records:
        v = r.get("lambda_max")
        if v is not None and math.isfinite(v):
            out.append((int(r["epoch"]) - 1, float(v)))
    return out


class LambdaMaxObserver:
    """lambda_max (and raw alpha) into the epoch record, on the RobustDARTS schedule; changes nothing."""

    def __init__(self, opts: HessianOptions):
        self.opts = opts

    def due(self, search: SearchContext, epoch: int) -> bool:
        return epoch % self.opts.every == 0 or epoch == search.cfg.optim.epochs - 1

    def measure(self, search: SearchContext) -> Curvature:
        from ..curvature import measure

        o = self.opts
        l2 = search.cfg.optim.arch_weight_decay if o.arch_weight_decay else 0.0
        return measure(search, batches=o.batches, batch_size=o.batch_size, bn=o.bn, iters=o.iters,
                       algorithm=o.algorithm, exact=o.top_k > 0 or o.algorithm == "exact", alpha_l2=l2,
                       seed=o.seed)

    def write(self, search: SearchContext, epoch: int, record: dict) -> None:
        """Measure (if due and not already in the record) and add the keys."""
        if self.opts.record_alpha and "alpha" not in record:
            record["alpha"] = [round(float(v), 7) for v in search.arch.flat().detach().cpu()]
        if "lambda_max" in record or not self.due(search, epoch):
            return
        cur = self.measure(search)
        record["lambda_max"] = cur.lambda_max
        record["lambda_seconds"] = round(cur.seconds, 3)
        if self.opts.top_k and cur.eigenvalues is not None:
            record["eigenvalues_top"] = [round(v, 8) for v in cur.top_k(self.opts.top_k)]


@register_method
class Hessian(Method):
    name = "hessian"
    paper = "Zela et al., ICLR 2020: 'Understanding and Robustifying Differentiable Architecture Search'"
    description = "track lambda_max of the val. Hessian w.r.t. alpha (Lanczos on HVPs); search unchanged"
    preset = None
    Options = HessianOptions

    def __init__(self, options: MethodOptions | dict | None = None):
        super().__init__(options)
        self.observer = LambdaMaxObserver(self.opts)

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        self.observer.write(search, epoch, record)
