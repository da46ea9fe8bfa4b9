"""The ``bkgdb`` command line: the typer app, its ``--db`` option and its commands.

Every command parses its options, calls one method of `bkgdb.catalogue.Catalogue` and prints:
catalogue commands in `bkgdb.cli.catalogue`, background commands in `bkgdb.cli.background`,
``demo`` in `bkgdb.cli.demo`, figures in `bkgdb.cli.plot`.
"""

import sys

import typer

from bkgdb.cli import background, catalogue, demo
from bkgdb.cli.common import Smoothing, State
from bkgdb.cli.plot import plot_app

__all__ = ["app", "Smoothing"]

app = typer.Typer(
    help="bkgdb: a database of background-model pieces for IACT analyses with gammapy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    db: str = typer.Option(
        None,
        "--db",
        metavar="URL",
        help="Database URL (sqlite:///FILE, postgresql://USER@HOST/DB) or SQLite file. "
        "Default: $BKGDB_URL, then ./bkgdb.sqlite.",
    ),
) -> None:
    State.db = db


catalogue.register(app)
background.register(app)
demo.register(app)
app.add_typer(plot_app, name="plot")


if __name__ == "__main__":  # pragma: no cover
    from bkgdb.cli import run

    sys.exit(run())
