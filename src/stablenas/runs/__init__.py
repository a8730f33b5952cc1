"""Everything a run leaves on disk and how runs are executed.

Read this package first when a question is "where does a run keep X" or "what happens when it is
killed":

- :mod:`~stablenas.runs.lifecycle` — what every run does the same way (a search, an image training,
  a recurrent training): take the directory, resume, stop on a signal with a checkpoint, time the first
  steps, write the epoch record, end with a status; a loop supplies only its steps, epoch end and state.
- :mod:`~stablenas.runs.directory` — the run directory (config, ``metrics.jsonl``,
  ``status.json``, ``checkpoint.pt``): nothing written before everything is validated, resume
  checked against the saved config, one status record of how the run ended.
- :mod:`~stablenas.runs.lock` — one writer per directory (``run.lock``, ``fcntl.flock``).
- :mod:`~stablenas.runs.checkpoint` — checkpoints are data, never code (``weights_only`` loads).
- :mod:`~stablenas.runs.records` — JSON that stays JSON, config diffs and the plan files of
  multi-run commands.
- :mod:`~stablenas.runs.pool` and :mod:`~stablenas.runs.backends` — where the units of a sweep,
  study or S5 table execute (in-process, a local process pool, Ray) and how a signal stops them.
"""
