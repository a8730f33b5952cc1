"""Search spaces: the candidate operations and which of them each edge may take.

``ops`` registers every operation by name (``OPS``: DARTS's convolutions and pools, the NB201 set, the
recurrent activations); ``catalog`` defines ``SearchSpace`` and the built-in spaces (darts, the
robust-darts S1-S5, the iDARTS spaces, nb201; the recurrent space registers from its skeleton). A
space names the skeleton (macro network) that builds it.
"""
