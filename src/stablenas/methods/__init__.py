"""Search methods as composable hooks into one search loop (see ``methods.base``)."""

# each method module registers its methods on import (idarts also the `decorrelation` discretiser)
from . import gdas, idarts, ms_darts, pc_darts, rs_ws, sdarts_adv, sdarts_rs, single_darts  # noqa: F401

from . import curvature, darts_ada, darts_es  # noqa: F401  # isort: skip  (hessian, darts-es, darts-ada)
from .base import METHODS, Method, MethodOptions, Mix, register_method

__all__ = ["METHODS", "Method", "MethodOptions", "Mix", "register_method"]
