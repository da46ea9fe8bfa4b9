"""bkgdb: a database of background-model pieces for IACT analyses with gammapy.

>>> from bkgdb import Catalogue
>>> catalogue = Catalogue.open("sqlite:///bkgdb.sqlite", config="configs/hess-dr1.yaml")  # doctest: +SKIP

`Catalogue` is imported on first use, so ``import bkgdb`` (and ``bkgdb --help``) stays quick.
"""

from typing import TYPE_CHECKING, Any

from bkgdb.errors import BkgdbError

if TYPE_CHECKING:
    from bkgdb.catalogue import Catalogue

__all__ = ["BkgdbError", "Catalogue", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Catalogue":
        from bkgdb.catalogue import Catalogue

        return Catalogue
    raise AttributeError(f"module 'bkgdb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "Catalogue"})
