"""The DARTS skeleton (Liu et al. 2019): stacked normal and reduction cells with two inputs each.

Everything of it lives here:

- ``skeleton``: :class:`DartsSkeleton`, the plug-in (registered on import): space checks, sizes,
  genotype reading, writing and views, and the dispatch to the parts below;
- ``supernet``: the search cell and network on the shared mixed op (``supernet.network.MixedOp``,
  fused engine ``supernet.fused``);
- ``reference``: the same supernet written plainly, which the equivalence tests compare with
  ``supernet`` (tests/supernet/test_engine.py, tests/supernet/test_perf.py);
- ``networks``: the evaluation networks a derived cell is trained in (``cifar``, ``imagenet``,
  registered in ``EVAL_NETWORKS`` on import), with their auxiliary heads;
- ``genotype``: the DARTS discretisation rule and the DARTS repositories' Python genotype form.
"""

from .networks import NetworkCIFAR, NetworkImageNet
from .skeleton import DartsSkeleton

__all__ = ["DartsSkeleton", "NetworkCIFAR", "NetworkImageNet"]
