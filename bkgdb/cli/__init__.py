"""The ``bkgdb`` command line: each command calls one method of `bkgdb.catalogue.Catalogue`.

``app`` is imported on first use, so ``python -m bkgdb.cli.main`` runs the module once, not twice.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from bkgdb.cli.main import app

        return app
    raise AttributeError(f"module 'bkgdb.cli' has no attribute {name!r}")
