"""The weight-sharing supernet every image skeleton searches with, and alpha beside it.

Read this first to change how a search forward is computed. ``arch`` holds alpha (``ArchParams``:
per cell type, padded and masked, the activation that turns it into op weights); ``mix`` is what one
forward mixes with (``Mix``: op weights, edge weights, hard choices, an auxiliary path), so methods
edit the mixture without touching a module; ``network`` is the shared mixed op and the dispatch to a
skeleton's supernet (the cells live with their skeleton, ``skeletons.darts``, ``skeletons.nb201``);
``fused`` and ``kernels`` are the fast engine (every op's arithmetic on shared inputs, exact to float
rounding), switched per device by ``engine`` (defaults, a ``bench --tune`` file); ``reference`` is the
plain textbook DARTS the engine is tested against (float64, 1e-12).
"""
