"""Experiments made of many runs: each a plan of units, resumable unit by unit, with a table.

- :mod:`~stablenas.experiments.sweep` — one config over seeds (and its cells retrained).
- :mod:`~stablenas.experiments.study` — a shipped protocol (``protocols/*.yaml``): methods x spaces x
  seeds, per-epoch records, retraining, the papers' analyses and the summary table.
- :mod:`~stablenas.experiments.s5` — the robust-darts S5 regret table (every cell of the 2-op
  space retrained).

Units execute through :mod:`stablenas.runs.backends`; every unit is an ordinary search or training
run directory.
"""
