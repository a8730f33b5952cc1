"""The curvature tools moved to :mod:`stablenas.curvature` (below the methods that use them, so
the package has no import cycle); this name is the same module object for earlier imports."""

import sys

from .. import curvature as _curvature

sys.modules[__name__] = _curvature
