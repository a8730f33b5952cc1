"""Single-DARTS (Hou et al., single-darts.txt Sec. 4.3, eq. 16): single-level optimisation.

Weights and alpha are updated from the *same* batch by one loss (the loop's ``search.update:
single``: one backward, then the SGD step on w and the Adam step on alpha), with sigmoid instead of
softmax on alpha, initialised at -ln 7 so that every op starts at weight 1/8 (Sec. 5.1.2). All of
that is configuration (see the ``single-darts`` preset); this method only checks that the config
really is single-level, so a typo cannot silently run bilevel DARTS under this name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, register_method

if TYPE_CHECKING:
    pass


@register_method
class SingleDARTS(Method):
    name = "single-darts"
    paper = "Hou et al.: 'Single-DARTS: Towards Stable Architecture Search'"
    description = "Single-DARTS: w and alpha from one loss on one batch (update: single), sigmoid alpha"
    preset = "single-darts"

    requires = {"search.update": "single"}
