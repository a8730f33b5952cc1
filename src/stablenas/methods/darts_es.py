"""DARTS-ES (robust-darts Sec. 4.3): stop when the smoothed dominant eigenvalue grows too fast.

The paper's rule, read literally: let lambda_bar(i) be lambda_max averaged over ``window`` = 5
epochs *around* i (i-2 .. i+2); stop as soon as lambda_bar(i-k) / lambda_bar(i) < 0.75 with
k = 5, and return the architecture of epoch i-k. lambda_bar(i) needs lambda(i+2), so the decision
for i is taken at the end of epoch i+2 and the returned genotype is the one recorded in the
metrics for epoch i-k (7 epochs earlier). Only full windows are averaged.

The RobustDARTS code differs slightly (window 5, a lag of 4 local averages, ratio 1.3 ~ 1/0.77,
and no decision before epoch 10 via ``es_start_epoch``); ``k``, ``threshold`` and ``min_epoch``
reproduce it if wanted. When lambda is measured every ``every`` > 1 epochs, window and k count
measurements, as in that code (``ev_freq``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from ..genotype import Genotype
from .base import Method, MethodOptions, register_method
from .curvature import HessianOptions, LambdaMaxObserver, lambda_series

if TYPE_CHECKING:
    from .context import SearchContext


class EarlyStopOptions(HessianOptions):
    window: int = Field(5, ge=1, description="epochs (measurements) in the centred local average of lambda_max; odd")
    k: int = Field(
        5, ge=1,
        description="lag in epochs between the compared averages; the run returns the architecture of epoch i-k")
    threshold: float = Field(0.75, gt=0.0, lt=1.0,
                             description="stop when avg lambda_max(i-k) / avg lambda_max(i) falls below this")
    min_epoch: int = Field(1, ge=1, description="earliest epoch (1-based) whose architecture may be returned")

    @model_validator(mode="after")
    def _odd_window(self):
        if self.window % 2 == 0:
            raise ValueError(f"window must be odd (a centred average), got {self.window}")
        return self


def local_average(values: Sequence[float], window: int = 5) -> list[float | None]:
    """Centred moving average; None where the window is not full (the first/last window//2)."""
    h = window // 2
    out: list[float | None] = []
    for i in range(len(values)):
        if i - h < 0 or i + h >= len(values):
            out.append(None)
        else:
            out.append(sum(values[i - h:i + h + 1]) / window)
    return out


def check_at(values: Sequence[float], i: int, window: int = 5, k: int = 5,
             threshold: float = 0.75) -> tuple[bool, float | None]:
    """Is the criterion met at measurement i (needs values up to i + window//2)? -> (met, ratio)."""
    h = window // 2
    if i - k - h < 0 or i + h >= len(values):
        return False, None
    cur = sum(values[i - h:i + h + 1]) / window
    prev = sum(values[i - k - h:i - k + h + 1]) / window
    if cur <= 0:
        return False, None
    ratio = prev / cur
    return ratio < threshold, ratio


def newest_decision(values: Sequence[float], window: int = 5, k: int = 5,
                    threshold: float = 0.75) -> tuple[int, float | None, bool]:
    """The check that becomes possible with the newest value: (i, ratio, met)."""
    i = len(values) - 1 - window // 2
    met, ratio = check_at(values, i, window, k, threshold)
    return i, ratio, met


def first_stop(values: Sequence[float], window: int = 5, k: int = 5, threshold: float = 0.75,
               min_stop: int = 0) -> dict | None:
    """Simulate the rule over a whole series: the first trigger as
    ``{"i", "stop", "decided", "ratio"}`` (indices into ``values``), or None."""
    h = window // 2
    for i in range(len(values)):
        if i - k < min_stop:
            continue
        met, ratio = check_at(values[: i + h + 1], i, window, k, threshold)
        if met:
            return {"i": i, "stop": i - k, "decided": i + h, "ratio": ratio}
    return None


def genotype_of_epoch(records: Sequence[dict], epoch0: int) -> Genotype | None:
    for r in records:
        if int(r["epoch"]) - 1 == epoch0 and r.get("genotype"):
            return Genotype.from_dict(r["genotype"])
    return None


@register_method
class DartsES(Method):
    name = "darts-es"
    paper = "Zela et al., ICLR 2020: 'Understanding and Robustifying Differentiable Architecture Search'"
    description = "DARTS-ES: stop when local-avg. lambda_max grows 1/0.75-fold in k epochs; return epoch i-k"
    preset = "darts-es"
    Options = EarlyStopOptions

    def __init__(self, options: MethodOptions | dict | None = None):
        super().__init__(options)
        self.observer = LambdaMaxObserver(self.opts)  # the lambda_max series the rule decides on

    def series(self, search: SearchContext, record: dict) -> tuple[list[int], list[float]]:
        pts = lambda_series(list(search.metrics) + [record])
        return [e for e, _ in pts], [v for _, v in pts]

    def decide(self, search: SearchContext, epoch: int, record: dict, min_stop_epoch: int = 0) -> dict | None:
        """Measure if due, then apply the rule to the newest window; the trigger or None."""
        self.observer.write(search, epoch, record)
        if "lambda_max" not in record:
            return None
        o = self.opts
        epochs, values = self.series(search, record)
        i, ratio, met = newest_decision(values, o.window, o.k, o.threshold)
        if ratio is not None:
            record["lambda_ratio"] = ratio
        h = o.window // 2
        if i - h >= 0:
            record["lambda_local_avg"] = {"epoch": epochs[i] + 1,
                                          "value": sum(values[i - h:i + h + 1]) / o.window}
        if not met:
            return None
        stop_epoch = epochs[i - o.k]
        if stop_epoch < max(o.min_epoch - 1, min_stop_epoch):
            return None
        return {"stop_epoch": stop_epoch + 1, "decided_at": epoch + 1, "smoothed_epoch": epochs[i] + 1,
                "ratio": ratio}

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        trig = self.decide(search, epoch, record)
        if trig is None:
            return
        record["early_stop"] = trig
        g = genotype_of_epoch(list(search.metrics) + [record], trig["stop_epoch"] - 1)
        search.set_outcome(genotype=g, stop=f"DARTS-ES: lambda_bar(epoch {trig['stop_epoch']}) / lambda_bar("
                           f"epoch {trig['smoothed_epoch']}) = {trig['ratio']:.3f} < {self.opts.threshold}; "
                           f"returning the architecture of epoch {trig['stop_epoch']}")
