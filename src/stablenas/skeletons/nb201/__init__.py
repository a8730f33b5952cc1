"""The NAS-Bench-201 skeleton (Dong & Yang 2020): three stages of one-input cells joined by ResNet
blocks, every edge keeping one op (`none` included).

Everything of it lives here:

- ``skeleton``: :class:`NB201Skeleton`, the plug-in (registered on import): space checks, sizes,
  genotype reading, writing and views, and the dispatch to the parts below;
- ``supernet``: the macro skeleton (:class:`~.supernet.NB201Macro`, shared with ``reference``) and
  the search cell and network on the shared mixed op (``supernet.network.MixedOp``);
- ``reference``: the same supernet written plainly, which the equivalence tests compare with
  ``supernet`` (tests/supernet/test_engine.py, tests/skeletons/test_nb201.py);
- ``networks``: the evaluation network a derived cell is trained in (``nb201``, registered in
  ``EVAL_NETWORKS`` on import);
- ``genotype``: the benchmark's arch string (read, validated, written) and the discretisation rule;
- ``benchmark``: the NAS-Bench-201 benchmark file reader (test accuracies of a cell).
"""

from .networks import NB201Network
from .skeleton import NB201Skeleton

__all__ = ["NB201Network", "NB201Skeleton"]
