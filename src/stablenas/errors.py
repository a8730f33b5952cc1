"""The project's one error family.

Every error a *user* can cause (a bad config, a run directory in the wrong state, a corrupt
checkpoint or dataset, a malformed genotype) is a :class:`StablenasError`.  Its message is the whole
explanation on one line: what was wrong, the key or path, and what is allowed.  The CLI prints it as
``error: <message>`` on stderr and exits with :attr:`StablenasError.exit_code` (2 unless a subclass
documents another), so no traceback ever reaches the user for these.  Anything else escaping is a
bug.

The subclasses also derive from the builtin exception they refine (``ConfigError`` is a
``ValueError``, ``DatasetNotFoundError`` a ``FileNotFoundError``, ...), so library callers can catch
them by the builtin as well.

This module imports nothing from the package, so anything may import it.

Exit codes (the docs' exit-code page is generated from this module):

====  =====================================================================
2     user error (every class below unless noted), :class:`PluginError` included
3     :class:`DivergedError`: a non-finite loss, gradient or alpha stopped the run
74    :class:`DiskFullError`: a write found the file system full (or over quota); the last
      checkpoint is intact (74 is ``EX_IOERR`` of BSD's sysexits.h)
75    :class:`RankDiedError`: a rank of a data-parallel job died; the last checkpoint is intact
      (75 is ``EX_TEMPFAIL``: the same command with ``--resume`` continues)
130   :class:`InterruptedRun` after SIGINT (Ctrl-C); a checkpoint was saved
143   :class:`InterruptedRun` after SIGTERM; a checkpoint was saved
====  =====================================================================
"""

from __future__ import annotations

import signal

EXIT_USER = 2
EXIT_DIVERGED = 3
EXIT_NO_SPACE = 74
EXIT_RANK_DIED = 75


class StablenasError(Exception):
    """A user error: one line of explanation, exit code 2 in the CLI."""

    exit_code: int = EXIT_USER


class ConfigError(StablenasError, ValueError):
    """A config that cannot run; the message is the whole explanation."""


class PluginError(ConfigError):
    """A plug-in that cannot be loaded: missing, not Python, or its import raised (any exception,
    ``SystemExit`` and ``KeyboardInterrupt`` included, so a plug-in's ``sys.exit(3)`` never reads as
    another exit code of the map)."""


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


class DownloadError(DataError):
    """A dataset download that failed: server unreachable, HTTP error, connection broken, a
    truncated file or a wrong checksum; nothing that would pass a check is left behind."""


class GenotypeError(StablenasError, ValueError):
    """A genotype file or string that does not describe an architecture of its space."""


class ExportError(StablenasError):
    """An export that cannot be made (the output exists, a format's package is missing, an op has no
    standalone form, a recurrent genotype) or whose file does not reproduce the network."""


class DivergedError(StablenasError):
    """A non-finite loss, gradient or alpha: the run stopped; the last good checkpoint is kept.

    Exit code 3, distinct from a user error, since the input was valid but the optimisation failed.
    """

    exit_code = EXIT_DIVERGED


class DiskFullError(StablenasError):
    """A write found no space left (``ENOSPC``) or the quota used up (``EDQUOT``). Writes are atomic
    (temp file + rename), so every file the run had is intact; the message names the file system and
    the file, and the run adds how to resume. Exit code 74, distinct from a user error: the input was
    valid, the disk was not."""

    exit_code = EXIT_NO_SPACE


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


class RankDiedError(InterruptedRun):
    """Another rank of a data-parallel job died (killed, crashed) and this rank's collective broke:
    it stops without saving (its state may be mid-step), the last checkpoint is intact, and the
    message names the dead rank and the resume command. Exit code 75."""

    exit_code = EXIT_RANK_DIED  # type: ignore[assignment]


__all__ = [
    "EXIT_DIVERGED",
    "EXIT_NO_SPACE",
    "EXIT_RANK_DIED",
    "EXIT_USER",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DatasetNotFoundError",
    "DiskFullError",
    "DownloadError",
    "DivergedError",
    "ExportError",
    "GenotypeError",
    "InterruptedRun",
    "PluginError",
    "RankDiedError",
    "RunDirError",
    "RunExistsError",
    "RunLockedError",
    "StablenasError",
]
