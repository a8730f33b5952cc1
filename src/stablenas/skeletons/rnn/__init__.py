"""The recurrent skeleton: the DARTS recurrent cell searched and trained on Penn Treebank.

``space`` defines the cell's search space (eight nodes, each an activation of one earlier node's
highway) and registers its ops; ``model`` holds the search cell and the discrete cell inside the AWD-LSTM
language model; ``genotype`` reads, derives and publishes recurrent genotypes; ``train`` trains a derived
cell to a test perplexity; ``skeleton`` is the ``Skeleton`` the search loop and the CLI talk to
(registered by ``skeletons.builtin``: the registries import ``space`` early, on their own).
"""
