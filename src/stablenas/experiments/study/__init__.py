"""A collapse study: spaces x methods x seeds, every found cell retrained, the papers' analyses over all runs.

The claim the stabilisers answer (robust-darts Sec. 3-4, Fig. 3/4/13; SDARTS, iDARTS, Single-DARTS on
epochs) is a *long-search* effect: as the inner objective overfits, DARTS's cells fill with
parameter-free ops, the dominant eigenvalue of the validation Hessian w.r.t. alpha grows, the
accuracy lost at discretisation grows and the retrained cell gets worse. One short search per
method shows none of that; a study does:

- a **protocol** (YAML, :class:`StudyProtocol`; shipped ones in ``stablenas/protocols/``) names a base
  search config, the spaces, the methods (each its ``--set`` overrides of the base), the seeds, the
  search budget (in the base/``set``), the lambda_max tracker and the retraining budget;
- every (seed, space, method) is one **unit**: a resumable search run directory, the accuracy drop at
  discretisation (robust-darts Sec. 4.2, same weights), a resumable retraining of the returned cell
  from scratch (or, in a space with a ground-truth table such as S5, its table test accuracy), and a
  small ``result.json``. Units are queued **seed-major** (every method of seed 0 first), so a study
  stopped half-way still compares every method on the same seeds;
- the whole study resumes after any kill (re-run the same command); a **records** directory
  (``--records``, small files that can live in git: ``config.yaml``, ``metrics.jsonl``,
  ``genotype.json``, ``result.json`` per unit, no checkpoints) receives every finished unit and
  supplies finished units to a fresh output directory, checked against the protocol;
- :func:`summarise` writes ``results.json``, ``table.md`` and ``plots/``: parameter-free share per
  epoch per method (mean +- std over seeds), lambda_max per epoch and its Pearson correlation with the
  retrained test error over all units (robust-darts Fig. 4: 0.867), the discretisation drop per
  method, S5 test regret per epoch, search cost relative to DARTS.

Where the units run is a backend (:mod:`stablenas.runs.backends`: local processes or Ray).

The modules: :mod:`.protocol` (the YAML model and loading), :mod:`.units` (planning and running one
unit), :mod:`.measures` (share, curves, table lookups of a cell), :mod:`.records` (finished units on
disk), :mod:`.run` (the study and ``--summary``), :mod:`.summary` (means, correlation, ``table.md``),
:mod:`.plots`, :mod:`.cost` (``--plan``). The names below are the study's public API.
"""

from .cost import estimate_cost
from .measures import curves, param_free_share
from .protocol import PROTOCOL_DIR, EstimateSpec, RetrainSpec, StudyProtocol, list_protocols, load_protocol
from .run import run_study, summary_only
from .summary import format_table, pearson, summarise
from .units import Unit, study_units

__all__ = [
    "PROTOCOL_DIR",
    "EstimateSpec",
    "RetrainSpec",
    "StudyProtocol",
    "Unit",
    "curves",
    "estimate_cost",
    "format_table",
    "list_protocols",
    "load_protocol",
    "param_free_share",
    "pearson",
    "run_study",
    "study_units",
    "summarise",
    "summary_only",
]
