"""The evaluation networks a derived cell is trained in, what they cost, and the published cells.

``evaluation``: the DARTS CIFAR and ImageNet networks and the NAS-Bench-201 network built from a genotype
(registered in ``EVAL_NETWORKS``, so a skeleton names the ones its genotypes use); ``profile``: parameters
and multiply-adds of a network or a genotype, as the papers count them; ``published``: the genotypes of
the papers, by name. Nothing here trains or searches, so the methods (a resource budget) and the
orchestration (``evaluate``, ``export``) may both build on it.
"""
