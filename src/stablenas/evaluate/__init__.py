"""What a derived cell is worth: trained from scratch, or looked up in a benchmark table.

``train`` holds the training config (the papers' recipes as presets), how a genotype is named on the
command line (a file, a run, a published name) and :func:`train_genotype`; ``trainer`` is the image
training loop on the shared run lifecycle (``stablenas.runs.lifecycle``); the recurrent skeleton trains
its cells in ``skeletons.rnn.train``. ``lookup`` records, per search epoch, the benchmark test
accuracy of the derived cell where a table covers the space (the S5 table, NAS-Bench-201). The
networks a cell is trained in are the skeleton's (``stablenas.networks.build_eval_network``).
"""

from .train import TrainConfig, resolve_genotype, train_config, train_genotype

__all__ = ["TrainConfig", "resolve_genotype", "train_config", "train_genotype"]
