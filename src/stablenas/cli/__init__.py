"""The ``stablenas`` command line (typer): every command is a thin shell over a Python API function.

Layout: :mod:`.app` holds the typer application, the global options (``--plugin``,
``--trust-plugins``, ``--version``) and :func:`main`, the console script; :mod:`.options` the
options several commands share; :mod:`.models` the pydantic models of the options that obey rules
beyond their type (ranges, choices, lists, rules between options). One module per group of
commands registers them on the app: :mod:`.training` (search, train), :mod:`.reading` (show,
analyze, report), :mod:`.experiments` (sweep, study, s5-table), :mod:`.files` (data download,
export), :mod:`.listing` (spaces, presets, methods, info) and :mod:`.bench`. A command imports
what it runs inside its body, so ``stablenas --help`` and the listings load no torch.

Errors become exit codes in one place, :class:`.app.Commands`: every command runs inside its
``invoke``, where a :class:`~stablenas.errors.StablenasError` (or a missing file named on the command
line) becomes one ``error: <message>`` line on stderr and the exit code of stablenas.errors' map, and
a Ctrl-C the interrupted line and 130. Commands raise; none prints an error itself. A command whose
library calls also signal bad input with ValueError or KeyError says so with
:func:`.app.user_errors`. Usage errors click finds (an unknown option, a missing argument) are said in
the same one-line form by :func:`.app.main`.
"""

from . import bench, experiments, files, listing, reading, training  # noqa: F401  (they register the commands)
from .app import INTERRUPTED, app, main

__all__ = ["INTERRUPTED", "app", "main"]
