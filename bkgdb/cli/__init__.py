"""The ``bkgdb`` command line: each command calls one library function.
"""

__all__ = ["app"]


def __getattr__(name: str) -> object:
    # `app` on first use, not at import: `python -m bkgdb.cli.main` then runs the module once
    # (runpy warns, and signal handling breaks, when the package has imported it already).
    if name == "app":
        from bkgdb.cli.main import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
