"""The project's one error family.

Every error a *user* can cause (a bad config, a run directory in the wrong state, a corrupt
checkpoint or dataset, a malformed genotype) is a :class:`StablenasError`.  Its message is the whole
explanation on one line: what was wrong, the key or path, and what is allowed.  The CLI prints it as
``error: <message>`` on stderr and exits with :attr:`StablenasError.exit_code` (2 unless a subclass
documents another), so no traceback ever reaches the user for these.  Anything else escaping is a
bug.

The subclasses keep the builtin bases the older, module-local classes had (``ConfigError`` is a
``ValueError``, ``DatasetNotFoundError`` a ``FileNotFoundError``, ...), so ``except ValueError``
written against earlier versions still catches them.

This module imports nothing from the package, so anything may import it.

Exit codes (documented in the README):

====  =====================================================================
2     user error (every class below unless noted)
3     :class:`DivergedError`: a non-finite loss, gradient or alpha stopped the run
130   :class:`InterruptedRun` after SIGINT (Ctrl-C); a checkpoint was saved
143   :class:`InterruptedRun` after SIGTERM; a checkpoint was saved
====  =====================================================================
"""

from __future__ import annotations

import signal

EXIT_USER = 2
EXIT_DIVERGED = 3


class StablenasError(Exception):
    """A user error: one line of explanation, exit code 2 in the CLI."""

    exit_code: int = EXIT_USER


class ConfigError(StablenasError, ValueError):
    """A config that cannot run; the message is the whole explanation."""


class RunDirError(StablenasError):
    """A run directory in a state the command cannot use (missing, foreign, not a run, ...)."""


class RunExistsError(RunDirError, FileExistsError):
    """The output directory already holds a run (pass --resume to continue it)."""


class RunLockedError(RunDirError):
    """Another live process is writing this run directory."""


class CheckpointError(StablenasError):
    """A checkpoint that is missing, corrupt, foreign or holds something other than tensors."""


class DataError(StablenasError):
    """A dataset that cannot be used: corrupt, truncated, too small for the config."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset's files are not where we looked; the message says exactly what to put where."""


class GenotypeError(StablenasError, ValueError):
    """A genotype file or string that does not describe an architecture of its space."""


class DivergedError(StablenasError):
    """A non-finite loss, gradient or alpha: the run stopped; the last good checkpoint is kept.

    Exit code 3, distinct from a user error, since the input was valid but the optimisation failed.
    """

    exit_code = EXIT_DIVERGED


class InterruptedRun(StablenasError):
    """SIGINT/SIGTERM arrived: a checkpoint was saved at the current step; the message says how to
    resume.  Exit code 128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell's
    convention."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)

    def __reduce__(self):  # the signal survives the trip from a pool worker
        return (type(self), (str(self), self.signum))

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum


__all__ = [
    "EXIT_DIVERGED",
    "EXIT_USER",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DatasetNotFoundError",
    "DivergedError",
    "GenotypeError",
    "InterruptedRun",
    "RunDirError",
    "RunExistsError",
    "RunLockedError",
    "StablenasError",
]
