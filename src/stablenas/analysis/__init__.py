"""Reading runs back and explaining them: nothing here trains or changes a run.

``run`` loads a run directory (search or training); ``summary`` is what ``stablenas show`` prints;
``analyze`` rebuilds a search and computes the papers' diagnostics (lambda_max and the spectrum via
``stablenas.curvature``, the discretisation drop, the loss landscape, gradient correlation, from
``diagnostics``), priced first by ``plan``; ``plots`` and ``cells`` draw curves and cells; ``report``
writes the self-contained HTML pages.
"""
