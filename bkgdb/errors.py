"""Exceptions raised by bkgdb.

The library raises these; only the CLI turns them into a one-line message and an exit code.
"""

__all__ = [
    "BkgdbError",
    "BkgdbWarning",
    "DatabaseError",
    "DatastoreError",
    "ConditionError",
    "ConfigError",
    "DatabaseNotReadyError",
    "ForeignDatabaseError",
    "NoRunsSelected",
    "TooLittleStatistics",
    "ReadOnlyWarning",
]


class BkgdbError(Exception):
    """Base class of every error bkgdb reports to its user."""


class DatabaseError(BkgdbError):
    """The database URL is malformed, the server cannot be reached, or the schema is unusable."""


class DatabaseNotReadyError(DatabaseError):
    """Opened read-only, the database does not exist yet or its schema is not this bkgdb's."""


class ForeignDatabaseError(DatabaseError):
    """The database is not a bkgdb catalogue and not empty (it holds tables, or is an SQLite file whose
    ``application_id`` or ``user_version`` another program set): bkgdb neither reads nor changes it."""


class LinkedDatabaseError(DatabaseError):
    """An SQLite file with other names (hard links), which bkgdb does not write: SQLite's journal
    beside one name is not seen through another, and committed writes are lost."""


class DatastoreError(BkgdbError):
    """A DL3 datastore folder is missing or has no readable index files."""


class ConditionError(BkgdbError):
    """A ``--where`` condition cannot be parsed or names an unknown column."""


class ConfigError(BkgdbError):
    """A configuration file is missing or holds an invalid value."""


class NoRunsSelected(BkgdbError):
    """No run passed the selection; the message says what each criterion removed."""


class TooLittleStatistics(NoRunsSelected):
    """The selected runs fall short of ``min_runs`` or ``min_ontime`` (with ``min_statistics: error``)."""


class BkgdbWarning(UserWarning):
    """Base class of bkgdb's warnings; the CLI prints them as one line ``Warning: ...``."""


class ReadOnlyWarning(BkgdbWarning):
    """Something optional was not written because the database is read-only."""
