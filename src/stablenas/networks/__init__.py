"""Building the evaluation network a derived cell is trained in, what it costs, and the published cells.

``evaluation``: :func:`~.evaluation.build_eval_network`, the dispatch to the networks a skeleton registers
in ``EVAL_NETWORKS`` (each skeleton keeps its own: ``skeletons.darts.networks``, ``skeletons.nb201.networks``;
its ``eval_networks`` names them); ``profile``: parameters and multiply-adds of a network or a genotype, as
the papers count them; ``published``: the genotypes of the papers, by name. Nothing here trains or
searches, so the methods (a resource budget) and the orchestration (``evaluate``, ``export``) may both
build on it.
"""
