"""The ``bkgdb`` command line: each command calls one library function.
"""

from bkgdb.cli.main import app

__all__ = ["app"]
