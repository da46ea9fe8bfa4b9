"""bkgdb: a database of background-model pieces for IACT analyses with gammapy."""

from bkgdb.errors import BkgdbError

__all__ = ["BkgdbError", "__version__"]

__version__ = "0.1.0"
