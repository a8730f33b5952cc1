"""Published genotypes, as reported by their authors, for retraining and for reference numbers.

Every entry names the repository file (and the variable in it) it was transcribed from, and what
the paper reports for it, in ``genotype.extra``: ``source``, ``paper`` and, where printed,
``reported`` (e.g. CIFAR-10 test error and parameter count of the 36-channel, 20-cell network).
The cells are written here as ``op:input`` tokens, two per intermediate node, in the order of the
source (the order matters: it fixes which state each op reads; op names are this library's
registry names, which are the DARTS names).

Naming: ``<METHOD>`` is the architecture searched in the standard DARTS space on CIFAR-10;
``<METHOD>-S<k>-C10`` the one searched in RobustDARTS space S<k> on CIFAR-10 (those genotypes
carry ``space="s<k>"``, the rest ``space="darts"``).

Not included, for lack of a public list of (op, input) pairs: iDARTS (Wang et al.; the
``Mirofil/iDARTS`` / ``miaozhang0525/iDARTS`` repositories are a different method of the same
name), Single-DARTS (the repository named in the paper is not available), and R-DARTS: its
repository ships architectures per weight-decay / drop-path value, but not which of them are the
ones behind the paper's tables, so labelling one "R-DARTS" would be a guess.
"""

from __future__ import annotations

from ..genotype import Genotype

__all__ = ["PUBLISHED", "get_published", "list_published"]

_DARTS_REPO = "github.com/quark0/darts cnn/genotypes.py"
_PCDARTS_REPO = "github.com/yuhuixu1993/PC-DARTS genotypes.py"
_SDARTS_REPO = "github.com/xiangning-chen/SmoothDARTS sota/cnn/genotypes.py"
_MSDARTS_REPO = "github.com/aaron851113/MS-DARTS sota/cnn/genotypes.py"
_GDAS_REPO = "github.com/D-X-Y/AutoDL-Projects lib/nas_infer_model/DXYs/genotypes.py"

_SDARTS_PAPER = "Chen & Hsieh, Stabilizing DARTS via Perturbation-based Regularization, ICML 2020"
_MSDARTS_PAPER = "Hsieh et al., MS-DARTS: Mean-Shift Based Differentiable Architecture Search, 2021"


def _pairs(spec: str) -> tuple[tuple[str, int], ...]:
    out = []
    for tok in spec.split():
        op, inp = tok.rsplit(":", 1)
        out.append((op, int(inp)))
    return tuple(out)


def _make(normal: str, reduce: str, *, space: str = "darts", source: str, paper: str,
          reported: str = "", note: str = "", concat: tuple[int, ...] = (2, 3, 4, 5)) -> Genotype:
    extra = {"source": source, "paper": paper, "reported": reported}
    if note:
        extra["note"] = note
    g = Genotype(space=space, normal=_pairs(normal), normal_concat=concat, reduce=_pairs(reduce),
                 reduce_concat=concat, extra=extra)
    g.validate()
    return g


PUBLISHED: dict[str, Genotype] = {}

# ---- DARTS (Liu, Simonyan & Yang, ICLR 2019) ---------------------------------------------------
# cnn/genotypes.py DARTS_V1 (first-order) and DARTS_V2 (second-order; the repo's default `DARTS`).
PUBLISHED["DARTS_V1"] = _make(
    "sep_conv_3x3:1 sep_conv_3x3:0 skip_connect:0 sep_conv_3x3:1 "
    "skip_connect:0 sep_conv_3x3:1 sep_conv_3x3:0 skip_connect:2",
    "max_pool_3x3:0 max_pool_3x3:1 skip_connect:2 max_pool_3x3:0 "
    "max_pool_3x3:0 skip_connect:2 skip_connect:2 avg_pool_3x3:0",
    source=f"{_DARTS_REPO} DARTS_V1", paper="Liu et al., DARTS, ICLR 2019 (first order)",
    reported="CIFAR-10 3.00 +- 0.14 % error, 3.3M params",
    note="the reference network gives 3,169,414 params (3.2M): this cell is DARTS_V2 minus one "
         "dil_conv_3x3 per normal cell, so it cannot round to the paper's 3.3M as V2 (3.35M) does")
PUBLISHED["DARTS_V2"] = _make(
    "sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:1 "
    "sep_conv_3x3:1 skip_connect:0 skip_connect:0 dil_conv_3x3:2",
    "max_pool_3x3:0 max_pool_3x3:1 skip_connect:2 max_pool_3x3:1 "
    "max_pool_3x3:0 skip_connect:2 skip_connect:2 max_pool_3x3:1",
    source=f"{_DARTS_REPO} DARTS_V2", paper="Liu et al., DARTS, ICLR 2019 (second order)",
    reported="CIFAR-10 2.76 +- 0.09 % error, 3.3M params; ImageNet 26.7 % top-1 error, 4.7M params, "
             "574M multiply-adds")

# ---- PC-DARTS (Xu et al., ICLR 2020) -----------------------------------------------------------
PUBLISHED["PC-DARTS"] = _make(
    "sep_conv_3x3:1 skip_connect:0 sep_conv_3x3:0 dil_conv_3x3:1 "
    "sep_conv_5x5:0 sep_conv_3x3:1 avg_pool_3x3:0 dil_conv_3x3:1",
    "sep_conv_5x5:1 max_pool_3x3:0 sep_conv_5x5:1 sep_conv_5x5:2 "
    "sep_conv_3x3:0 sep_conv_3x3:3 sep_conv_3x3:1 sep_conv_3x3:2",
    source=f"{_PCDARTS_REPO} PC_DARTS_cifar (= PCDARTS)", paper="Xu et al., PC-DARTS, ICLR 2020",
    reported="CIFAR-10 2.57 +- 0.07 % error, 3.6M params")
PUBLISHED["PC-DARTS-ImageNet"] = _make(
    "skip_connect:1 sep_conv_3x3:0 sep_conv_3x3:0 skip_connect:1 "
    "sep_conv_3x3:1 sep_conv_3x3:3 sep_conv_3x3:1 dil_conv_5x5:4",
    "sep_conv_3x3:0 skip_connect:1 dil_conv_5x5:2 max_pool_3x3:1 "
    "sep_conv_3x3:2 sep_conv_3x3:1 sep_conv_5x5:0 sep_conv_3x3:3",
    source=f"{_PCDARTS_REPO} PC_DARTS_image", paper="Xu et al., PC-DARTS, ICLR 2020 (searched on ImageNet)",
    reported="searched directly on ImageNet (PC-DARTS paper, ImageNet table)")

# ---- GDAS (Dong & Yang, CVPR 2019) -------------------------------------------------------------
# The source lists per node a pair of (op, input); flattened here in the same order.
PUBLISHED["GDAS"] = _make(
    "skip_connect:0 skip_connect:1 skip_connect:0 sep_conv_5x5:2 "
    "sep_conv_3x3:3 skip_connect:0 sep_conv_5x5:4 sep_conv_3x3:3",
    "sep_conv_5x5:0 sep_conv_3x3:1 sep_conv_5x5:2 sep_conv_5x5:1 "
    "dil_conv_5x5:2 sep_conv_3x3:1 sep_conv_5x5:0 sep_conv_5x5:1",
    source=f"{_GDAS_REPO} GDAS_V1",
    paper="Dong & Yang, Searching for a Robust Neural Architecture in Four GPU Hours, CVPR 2019",
    reported="CIFAR-10 2.93 % error, 3.4M params (as cited by SDARTS / MS-DARTS)")

# ---- SDARTS (SmoothDARTS) ------------------------------------------------------------------------
# The repository names its spaces s1-s4 (RobustDARTS) and s5 for the standard DARTS space (7 ops,
# no `none`, as the paper's Sec. 5.2 says; MS-DARTS, built on this code, also calls its DARTS-space
# search "s5"). So c10_s5_* are the CIFAR-10 cells of Table 1: `random` = SDARTS-RS, `pgd` = -ADV.
PUBLISHED["SDARTS-RS"] = _make(
    "sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_5x5:1 skip_connect:0 "
    "sep_conv_3x3:3 skip_connect:1 sep_conv_3x3:1 dil_conv_3x3:2",
    "max_pool_3x3:0 sep_conv_3x3:1 skip_connect:2 max_pool_3x3:0 "
    "dil_conv_5x5:3 max_pool_3x3:0 sep_conv_3x3:2 sep_conv_5x5:3",
    source=f"{_SDARTS_REPO} c10_s5_random", paper=_SDARTS_PAPER,
    reported="CIFAR-10 2.67 +- 0.03 % error, 3.4M params; ImageNet 25.6 % top-1 error",
    note="the reference network gives 3,606,166 params (3.6M), not the paper's 3.4M: the "
         "repository's genotype may not be the exact cell of the paper's table")
PUBLISHED["SDARTS-ADV"] = _make(
    "sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:1 skip_connect:0 "
    "sep_conv_5x5:0 dil_conv_3x3:3 dil_conv_3x3:4 skip_connect:0",
    "max_pool_3x3:0 sep_conv_5x5:1 skip_connect:2 max_pool_3x3:0 "
    "skip_connect:3 skip_connect:2 skip_connect:2 sep_conv_5x5:4",
    source=f"{_SDARTS_REPO} c10_s5_pgd", paper=_SDARTS_PAPER,
    reported="CIFAR-10 2.61 +- 0.02 % error, 3.3M params; ImageNet 25.2 % top-1 error")

_SDARTS_S = {
    # (space, variant): (normal, reduce), from c10_s<k>_random (RS) and c10_s<k>_pgd (ADV)
    ("s1", "RS"): ("dil_conv_5x5:1 dil_conv_3x3:0 sep_conv_3x3:1 skip_connect:2 "
                   "dil_conv_3x3:3 sep_conv_3x3:2 sep_conv_3x3:0 dil_conv_3x3:2",
                   "max_pool_3x3:0 dil_conv_3x3:1 dil_conv_5x5:2 max_pool_3x3:1 "
                   "dil_conv_5x5:3 sep_conv_3x3:1 dil_conv_5x5:2 dil_conv_5x5:3"),
    ("s1", "ADV"): ("dil_conv_5x5:1 dil_conv_3x3:0 sep_conv_3x3:1 skip_connect:2 "
                    "sep_conv_3x3:2 dil_conv_3x3:3 sep_conv_3x3:0 dil_conv_3x3:2",
                    "max_pool_3x3:0 dil_conv_3x3:1 dil_conv_5x5:2 max_pool_3x3:0 "
                    "dil_conv_5x5:3 dil_conv_3x3:2 dil_conv_5x5:4 dil_conv_5x5:2"),
    ("s2", "RS"): ("sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:2 skip_connect:1 "
                   "sep_conv_3x3:3 skip_connect:0 sep_conv_3x3:1 skip_connect:2",
                   "sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:1 sep_conv_3x3:0 "
                   "sep_conv_3x3:2 sep_conv_3x3:1 sep_conv_3x3:2 sep_conv_3x3:3"),
    ("s2", "ADV"): ("sep_conv_3x3:1 skip_connect:0 sep_conv_3x3:2 sep_conv_3x3:0 "
                    "sep_conv_3x3:3 sep_conv_3x3:2 sep_conv_3x3:4 sep_conv_3x3:1",
                    "skip_connect:0 skip_connect:1 sep_conv_3x3:0 sep_conv_3x3:2 "
                    "sep_conv_3x3:3 sep_conv_3x3:0 sep_conv_3x3:4 sep_conv_3x3:3"),
    ("s3", "RS"): ("sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:0 "
                   "sep_conv_3x3:1 sep_conv_3x3:2 sep_conv_3x3:4 skip_connect:0",
                   "skip_connect:0 sep_conv_3x3:1 sep_conv_3x3:2 sep_conv_3x3:0 "
                   "sep_conv_3x3:2 sep_conv_3x3:3 sep_conv_3x3:0 sep_conv_3x3:4"),
    ("s3", "ADV"): ("sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:0 sep_conv_3x3:2 "
                    "sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:1 skip_connect:0",
                    "sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:2 sep_conv_3x3:0 "
                    "sep_conv_3x3:2 sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:3"),
    ("s4", "RS"): ("sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:2 sep_conv_3x3:1 "
                   "sep_conv_3x3:3 sep_conv_3x3:2 sep_conv_3x3:4 sep_conv_3x3:2",
                   "sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:2 "
                   "sep_conv_3x3:0 sep_conv_3x3:3 sep_conv_3x3:0 sep_conv_3x3:4"),
    ("s4", "ADV"): ("sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:2 sep_conv_3x3:1 "
                    "sep_conv_3x3:3 sep_conv_3x3:2 sep_conv_3x3:3 sep_conv_3x3:4",
                    "sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:2 sep_conv_3x3:1 "
                    "sep_conv_3x3:2 sep_conv_3x3:3 sep_conv_3x3:3 sep_conv_3x3:4"),
}
_SDARTS_ERR = {"RS": {"s1": 2.78, "s2": 2.75, "s3": 2.53, "s4": 2.93},
               "ADV": {"s1": 2.73, "s2": 2.65, "s3": 2.49, "s4": 2.87}}
for (_space, _variant), (_normal, _reduce) in _SDARTS_S.items():
    _var = "random" if _variant == "RS" else "pgd"
    PUBLISHED[f"SDARTS-{_variant}-{_space.upper()}-C10"] = _make(
        _normal, _reduce, space=_space, source=f"{_SDARTS_REPO} c10_{_space}_{_var}", paper=_SDARTS_PAPER,
        reported=f"CIFAR-10, RobustDARTS space {_space.upper()}: "
                 f"{_SDARTS_ERR[_variant][_space]} % error (SDARTS paper Table 4)")

# ---- MS-DARTS ------------------------------------------------------------------------------------
PUBLISHED["MS-DARTS"] = _make(
    "sep_conv_3x3:1 sep_conv_3x3:0 skip_connect:0 sep_conv_3x3:2 "
    "sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:0 dil_conv_3x3:3",
    "sep_conv_3x3:0 avg_pool_3x3:1 sep_conv_3x3:0 sep_conv_3x3:2 "
    "max_pool_3x3:0 dil_conv_3x3:3 sep_conv_3x3:3 skip_connect:2",
    source=f"{_MSDARTS_REPO} c10_s5_ms", paper=_MSDARTS_PAPER,
    reported="CIFAR-10 2.51 +- 0.02 % error, 3.8M params",
    note="the reference network gives 3,963,862 params (4.0M), not the paper's 3.8M; the "
         "repository's train.py defaults to an arch name absent from its genotypes.py, so this "
         "may not be the exact cell of the paper's table")

_MSDARTS_S = {
    "s1": ("skip_connect:0 dil_conv_5x5:1 sep_conv_3x3:1 dil_conv_3x3:2 "
           "dil_conv_3x3:3 sep_conv_3x3:2 sep_conv_3x3:0 skip_connect:2",
           "dil_conv_3x3:1 max_pool_3x3:0 dil_conv_5x5:2 max_pool_3x3:1 "
           "dil_conv_5x5:3 dil_conv_3x3:2 dil_conv_5x5:4 max_pool_3x3:1"),
    "s2": ("sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:2 sep_conv_3x3:1 "
           "sep_conv_3x3:0 sep_conv_3x3:2 sep_conv_3x3:4 skip_connect:1",
           "sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:0 "
           "sep_conv_3x3:1 sep_conv_3x3:2 sep_conv_3x3:1 sep_conv_3x3:0"),
    "s3": ("skip_connect:1 skip_connect:0 sep_conv_3x3:0 sep_conv_3x3:2 "
           "sep_conv_3x3:3 skip_connect:1 sep_conv_3x3:4 sep_conv_3x3:3",
           "sep_conv_3x3:1 skip_connect:0 sep_conv_3x3:2 sep_conv_3x3:0 "
           "sep_conv_3x3:1 sep_conv_3x3:3 sep_conv_3x3:0 sep_conv_3x3:4"),
    "s4": ("sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:2 "
           "sep_conv_3x3:0 sep_conv_3x3:2 sep_conv_3x3:0 sep_conv_3x3:1",
           "sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:2 "
           "sep_conv_3x3:0 sep_conv_3x3:2 sep_conv_3x3:2 sep_conv_3x3:1"),
}
_MSDARTS_ERR = {"s1": 2.70, "s2": 2.47, "s3": 2.46, "s4": 2.85}
for _space, (_normal, _reduce) in _MSDARTS_S.items():
    PUBLISHED[f"MS-DARTS-{_space.upper()}-C10"] = _make(
        _normal, _reduce, space=_space, source=f"{_MSDARTS_REPO} c10_{_space}_ms", paper=_MSDARTS_PAPER,
        reported=f"CIFAR-10, RobustDARTS space {_space.upper()}: "
                 f"{_MSDARTS_ERR[_space]} % error (MS-DARTS paper Table 2)")

del _space, _variant, _var, _normal, _reduce


# ---- recurrent cells (Penn Treebank) -------------------------------------------------------------
from ..skeletons.rnn.genotype import PUBLISHED_RNN  # noqa: E402  (after the CNN entries: listing order)

PUBLISHED.update(PUBLISHED_RNN)


def list_published() -> list[str]:
    return list(PUBLISHED)


def get_published(name: str) -> Genotype:
    """Look a published genotype up by name (exact, then case-insensitive)."""
    if name in PUBLISHED:
        return PUBLISHED[name]
    folded = {k.lower(): k for k in PUBLISHED}
    key = folded.get(name.lower())
    if key is None:
        raise KeyError(f"unknown published genotype {name!r}; available: {', '.join(PUBLISHED)}")
    return PUBLISHED[key]
