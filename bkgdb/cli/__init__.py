"""The ``bkgdb`` command line: each command calls one method of `bkgdb.catalogue.Catalogue`."""

from bkgdb.cli.main import app

__all__ = ["app"]
