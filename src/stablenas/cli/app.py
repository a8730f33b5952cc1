"""The typer application, its global options, :func:`main`, and the one place where an error
becomes an ``error: ...`` line and an exit code (:class:`Commands`)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from typer.core import TyperGroup

from ..errors import EXIT_USER, StablenasError

INTERRUPTED = "interrupted; the last checkpoint is kept (resume with --resume)"

# what a user causes: the project's error family plus a missing file named on the command line
USER_ERRORS = (StablenasError, FileNotFoundError)

F = TypeVar("F", bound=Callable)

HELP_ORDER = ("search", "spaces", "presets", "methods", "show", "train", "info", "s5-table", "sweep", "study",
              "analyze", "report", "bench", "export", "data")


def message(e: BaseException) -> str:
    """The one line said for an error, naming the run's plug-ins left out when the error may need
    them."""
    from ..plugins import declined_plugins

    msg = text(e)
    declined = declined_plugins()
    if declined:
        msg = f"{msg} (plug-in(s) not loaded: {', '.join(declined)}; pass --trust-plugins if the run needs them)"
    return one_line(msg)


def text(e: BaseException) -> str:
    """The message of an exception (KeyError's str() adds quotes around it)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def one_line(msg: str) -> str:
    return " ".join(str(msg).split("\n")).strip()


def exit_code(e: BaseException) -> int:
    """The documented exit code of an error (stablenas.errors' map; 2 for anything else a user causes)."""
    return int(getattr(e, "exit_code", EXIT_USER))


class Commands(TyperGroup):
    """Every command runs inside :meth:`invoke`: a user error escaping it becomes one ``error: ...``
    line and its exit code; a ``KeyboardInterrupt`` says the interrupted line first (typer would exit
    130 silently: a second Ctrl-C during a run, a Ctrl-C outside any run's own handler)."""

    def list_commands(self, ctx) -> list[str]:
        """The order of ``stablenas --help``: the run's own commands first, then the tools."""
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: HELP_ORDER.index(n) if n in HELP_ORDER else len(HELP_ORDER))

    def invoke(self, ctx):
        from ..plugins import trust_run_plugins

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            typer.echo(INTERRUPTED, err=True)
            raise typer.Exit(130) from None
        except USER_ERRORS as e:
            typer.echo(f"error: {message(e)}", err=True)
            raise typer.Exit(exit_code(e)) from None
        finally:
            trust_run_plugins(True)  # the library's default again after the command


def user_errors(*kinds: type[Exception]) -> Callable[[F], F]:
    """A command whose library calls also signal bad input by ``kinds`` (ValueError, KeyError from
    parsing a genotype or an option): read those as user errors too, in the same one line."""

    def wrap(command: F) -> F:
        @functools.wraps(command)
        def run(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except StablenasError:
                raise
            except kinds as e:
                raise StablenasError(text(e)) from e

        return run  # type: ignore[return-value]

    return wrap


app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="stablenas: stable differentiable architecture search (DARTS and friends).")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"stablenas {__version__}")
        raise typer.Exit()


# commands that read a run directory: they import the plug-ins it names only with --trust-plugins
READING = ("show", "report", "info", "analyze", "train", "export")


@app.callback()
def _global(
    ctx: typer.Context,
    plugin: Annotated[list[str] | None, typer.Option(
        "--plugin", help="a Python file or module that registers methods, ops, spaces, skeletons or datasets "
                         "(repeatable); runs record it, so search --resume finds it again")] = None,
    trust_plugins: Annotated[bool, typer.Option(
        "--trust-plugins", help="show, report, info, analyze and train import the plug-ins a run's config "
                                "names (code: only for runs you trust)")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """stablenas: stable differentiable architecture search (DARTS and friends)."""
    from ..plugins import add_session_plugins, load_entry_points, trust_run_plugins

    trust_run_plugins(trust_plugins or ctx.invoked_subcommand not in READING)
    load_entry_points()
    add_session_plugins(plugin or [])


def command_line(ctx: typer.Context) -> list[str] | None:
    """This process's stablenas command line as :func:`main` read it (``search --nproc`` runs it
    again as N ranks); None when the app was called another way (typer's test runner)."""
    return ctx.find_root().obj


def main(argv: list[str] | None = None) -> None:
    """The console script: run one command line, exit with its code. Usage errors click finds are
    said in the same one-line form as the commands' errors."""
    from ..launch import die_with_parent

    die_with_parent()  # a rank never outlives its launcher
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m stablenas -- search ... (see stablenas.launch)
        argv = argv[1:]
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(argv, prog_name="stablenas", standalone_mode=False, obj=argv)
    except click_error as e:  # usage errors (typer >= 0.20 vendors click) in the project's one-line form
        if type(e).__name__ == "NoArgsIsHelpError":  # `stablenas` alone: the help, as click prints it
            e.show()
            sys.exit(e.exit_code)
        where = f"; see `{e.ctx.command_path} --help`" if getattr(e, "ctx", None) is not None else ""
        typer.echo(f"error: {one_line(e.format_message()).rstrip('.')}{where}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
