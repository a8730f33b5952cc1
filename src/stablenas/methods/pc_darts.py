"""PC-DARTS (Xu et al. 2020): partial channel connections and edge normalisation.

Both parts live in the supernet / ArchParams because every optimiser can use them:
``network.partial_channels: K`` sends 1/K of the channels of every edge through the ops, lets the
rest bypass (2x2 max-pooled on reduction edges), and channel-shuffles the result (groups K), as
PC-DARTS's ``MixedOp``; ``arch.edge_betas: true`` adds per-edge betas, softmax-normalised over the
edges entering each node, that scale edge outputs and multiply alpha's op weights when the
architecture is derived (PC-DARTS's ``genotype()``). The hyperparameters are in the ``pc-darts``
preset (PC-DARTS ``train_search.py``: batch 256, lr 0.1, arch lr 6e-4, alpha frozen for 15 epochs).
Combinations such as PC-DARTS-RS / -ADV (sdarts.txt Table 1) are this config plus an SDARTS method.
This method only checks that the config enables PC-DARTS, so the name cannot silently mean DARTS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..registry import SKELETONS, SPACES
from .base import Method, register_method

if TYPE_CHECKING:
    pass


@register_method
class PCDARTS(Method):
    name = "pc-darts"
    paper = "Xu et al., ICLR 2020: 'PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search'"
    description = "PC-DARTS: 1/K partial channels + shuffle (network.partial_channels) and edge betas"
    preset = "pc-darts"

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        SKELETONS[SPACES[cfg.space].skeleton].require("partial_channels", "method pc-darts")
        if cfg.network.partial_channels < 2 and not cfg.arch.edge_betas:
            raise ConfigError("method pc-darts needs network.partial_channels >= 2 and/or "
                              "arch.edge_betas: true (PC-DARTS uses partial_channels: 4 and edge_betas: "
                              "true; see the pc-darts preset)")
