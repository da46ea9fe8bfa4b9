"""What every ``bkgdb`` command shares: the ``--db`` option's state, consoles, errors, warnings, progress.

Heavy modules (astropy, gammapy, SQLAlchemy) are imported inside functions so ``bkgdb --help`` is quick.
"""

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from bkgdb.errors import BkgdbError
from bkgdb.parallel.processes import sigterm_raises_interrupt

if TYPE_CHECKING:
    from bkgdb.catalogue import Catalogue, ReadOnly
    from bkgdb.store.catalogue import IndexReport

__all__ = [
    "State",
    "out",
    "err",
    "reports_errors",
    "open_catalogue",
    "progress_bar",
    "printed_warnings",
    "print_index_report",
    "progress_steps",
    "warnings_once",
    "Smoothing",
]

# Piped output (files, CI logs) gets wide tables instead of 80-column folding.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, soft_wrap=True)


class Smoothing(StrEnum):
    """``--smooth`` choices: the names of bkgdb.makers.smoothing.SMOOTHING_METHODS (tests/test_cli.py checks),
    written out so that ``--help`` needs no numpy."""

    gauss = "gauss"
    gauss_seed = "gauss-seed"
    poly = "poly"
    spline = "spline"
    none = "none"


F = TypeVar("F", bound=Callable[..., Any])


class State:
    """Options of the ``bkgdb`` group, for its commands."""

    db: str | None = None


def open_catalogue(readonly: "ReadOnly" = False, config: Path | None = None) -> "Catalogue":
    """The `~bkgdb.catalogue.Catalogue` of ``--db`` with a config file (opened when first used).

    Raises
    ------
    DatabaseError
        The database is an in-memory SQLite one: what a command wrote would be gone when it exits.
    """
    from bkgdb.catalogue import Catalogue
    from bkgdb.errors import DatabaseError
    from bkgdb.store.database import URL_ENV_VAR, display_url, is_in_memory_sqlite

    if is_in_memory_sqlite(State.db):  # the library opens them, for scripts and tests
        given = State.db or os.environ.get(URL_ENV_VAR, "")
        raise DatabaseError(
            f"{display_url(given)} is an in-memory SQLite database, gone when the command exits: "
            "give an SQLite file (--db FILE.sqlite) or a PostgreSQL URL"
        )
    return Catalogue.open(State.db, readonly=readonly, config=config)


def _database_urls() -> list[str]:
    """The database URL as given (option, then environment): the source of any password to hide."""
    from bkgdb.store.database import URL_ENV_VAR

    return [url for url in (State.db, os.environ.get(URL_ENV_VAR)) if url]


def _shown_database() -> str:
    from bkgdb.store.database import display_url, resolve_url

    try:
        return str(display_url(resolve_url(State.db)))
    except BkgdbError:
        return "the database"


def _print_error(message: str) -> None:
    from bkgdb.store.database import hide_secrets

    one_line = " ".join(hide_secrets(message, *_database_urls()).split())
    err.print(f"[red]Error:[/red] {escape(one_line)}", highlight=False, soft_wrap=True)


def _database_error_message(exc: Exception) -> str:
    """One line for an unexpected SQLAlchemy database error: which database, what the driver said."""
    from bkgdb.store.database import GRANT_SELECT_ADVICE, is_read_denied, is_readonly_error

    orig = getattr(exc, "orig", None)
    reason = str(orig).strip().splitlines()[0] if orig is not None else type(exc).__name__
    if is_read_denied(exc):
        denied = f"this role may not read a table bkgdb needs ({reason})"
        return f"database {_shown_database()}: {denied}: {GRANT_SELECT_ADVICE}"
    if is_readonly_error(exc):
        return f"database {_shown_database()} is read-only for this command, which needs to write: {reason}"
    return f"database {_shown_database()}: {reason}"


def reports_errors(command: F) -> F:
    """Run a command; a library or database error becomes one line on stderr and exit code 2.

    Ctrl-C and SIGTERM stop the command cleanly (what was committed stays) with one line and exit
    code 130 or 143 (128 + the signal's number), never a traceback.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from bkgdb.store.database import DRIVER_ERROR

        try:
            with sigterm_raises_interrupt(), warnings.catch_warnings(), _quiet_aftermath_of_interrupts():
                warnings.showwarning = _show_warning
                return command(*args, **kwargs)
        except BkgdbError as exc:
            _print_error(str(exc))
            raise typer.Exit(2) from None
        except DRIVER_ERROR as exc:  # OperationalError, ProgrammingError, ...: never an SQL dump
            _print_error(_database_error_message(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", int(signal.SIGINT))
            _repeated_interrupts_ignored()
            left = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
            err.print(
                f"Interrupted by {signal.Signals(signum).name}: stopped; work committed so far is kept{left}.",
                highlight=False,
                markup=False,
            )
            raise typer.Exit(128 + signum) from None

    return wrapper  # type: ignore[return-value]


#: Seconds after a command stopped on a Ctrl-C or SIGTERM during which another one is the same request.
REPEATED_INTERRUPT_S = 5.0
#: Whether this process ends with the command (the ``bkgdb`` program, `bkgdb.cli.run`), not a
#: program that runs commands in-process (tests): only then are repeated interrupts ignored.
PROCESS_ENDS_WITH_COMMAND = False


def _repeated_interrupts_ignored() -> None:
    """For `REPEATED_INTERRUPT_S`, a Ctrl-C or SIGTERM changes nothing: the command is already stopping.

    A second signal (a second Ctrl-C, or `timeout`, which signals the command and then its whole
    process group) would otherwise raise in Python's shutdown (threading's, multiprocessing's exit
    hooks), which prints "Exception ignored in ..." with a traceback and skips their clean-up.
    Later signals are handled as before. Only in the ``bkgdb`` program (`PROCESS_ENDS_WITH_COMMAND`):
    a program that runs commands in-process keeps its handlers.
    """
    if not PROCESS_ENDS_WITH_COMMAND or threading.current_thread() is not threading.main_thread():
        return
    previous = {int(signum): signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    until = time.monotonic() + REPEATED_INTERRUPT_S

    def repeated(signum: int, frame: Any) -> None:
        if time.monotonic() < until:
            return
        handler = previous[signum]
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if callable(handler):
            handler(signum, frame)
        else:
            os.kill(os.getpid(), signum)

    for signum in previous:
        signal.signal(signum, repeated)


def _follows_interrupt(record: logging.LogRecord) -> bool:
    """Whether the record's exception was raised while a Ctrl-C or SIGTERM unwound."""
    error = record.exc_info[1] if record.exc_info else None
    seen = 0
    while error is not None and seen < 16:
        if isinstance(error, KeyboardInterrupt):
            return True
        error, seen = error.__context__, seen + 1
    return False


@contextlib.contextmanager
def _quiet_aftermath_of_interrupts() -> Iterator[None]:
    """Within the block, logged errors caused by an interruption are not printed.

    An interruption inside a SQLite fetch makes SQLAlchemy close the connection, then log "Error
    closing cursor" with a traceback as it unwinds; the one line `reports_errors` prints says it all.
    Only Python's last-resort handler (no logging configured) is filtered: a configured log keeps it.
    """
    handler = logging.lastResort
    if handler is None:
        yield
        return

    def keep(record: logging.LogRecord) -> bool:
        return not _follows_interrupt(record)

    handler.addFilter(keep)
    try:
        yield
    finally:
        handler.removeFilter(keep)


def _is_own_warning(category: type[Warning]) -> bool:
    """bkgdb's warnings (`~bkgdb.errors.BkgdbWarning`, the config's unknown keys): printed as one line."""
    return category.__module__.split(".")[0] == "bkgdb"


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """bkgdb's own warnings as one line ``Warning: ...`` on stderr; others as Python shows them."""
    if _is_own_warning(category):
        from bkgdb.store.database import hide_secrets

        err.print(f"Warning: {hide_secrets(message, *_database_urls())}", highlight=False, markup=False)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


@contextlib.contextmanager
def printed_warnings(logger_name: str) -> Iterator[None]:
    """Print a library logger's warnings as 'Warning: ...' lines on stderr, each once."""
    seen = set()

    class Printer(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message not in seen:
                seen.add(message)
                err.print(f"Warning: {message}", highlight=False, markup=False)

    logger = logging.getLogger(logger_name)
    handler = Printer(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def warnings_once() -> Iterator[None]:
    """Collect the warnings of a step and print each distinct one once, after it (a run's warnings repeat)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    from bkgdb.store.database import hide_secrets

    for message in sorted({str(warning.message) for warning in caught}):
        err.print(f"Warning: {hide_secrets(message, *_database_urls())}", highlight=False, markup=False)


@contextlib.contextmanager
def progress_steps() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """``step(label)`` gives a progress callback ``(done, total)``; a bar on stderr when it is a terminal.

    One display for the steps of a command (rich shows one at a time); a step's bar appears at its
    first call and hides the bars of the steps before it.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:

        def step(label: str) -> Callable[[int, int], None]:
            task = None

            def update(done: int, total: int) -> None:
                nonlocal task
                if task is None:
                    for earlier in bar.task_ids:
                        bar.update(earlier, visible=False)
                    task = bar.add_task(label, total=total)
                bar.update(task, completed=done, total=total)

            return update

        yield step


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback ``(done, total)`` drawing a bar on stderr when it is a terminal, else nothing."""
    with progress_steps() as step:
        yield step(label)


def print_index_report(report: "IndexReport") -> None:
    """Failed runs on stderr, the counts on stdout."""
    for obs_id, reason in report.failures:
        err.print(f"failed: run {obs_id}: {reason}", highlight=False, markup=False)
    out.print(f"{report.datastore}: {report.summary()}", highlight=False)
