"""The ``bkgdb`` command line: each command calls one method of `bkgdb.catalogue.Catalogue`.

``app`` is imported on first use, so ``python -m bkgdb.cli.main`` runs the module once, not twice.
"""

from typing import Any

__all__ = ["app", "run"]


def run() -> Any:
    """The ``bkgdb`` program: one command in this process, which ends with it.

    Only then may a command that stops on a Ctrl-C or SIGTERM ignore the next ones while it stops
    (`~bkgdb.cli.common.reports_errors`); a program that runs commands in-process keeps its own.
    """
    from bkgdb.cli import common
    from bkgdb.cli.main import app

    common.PROCESS_ENDS_WITH_COMMAND = True
    return app()


def __getattr__(name: str) -> Any:
    if name == "app":
        from bkgdb.cli.main import app

        return app
    raise AttributeError(f"module 'bkgdb.cli' has no attribute {name!r}")
