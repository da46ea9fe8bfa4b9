"""Database URL resolution, engine creation and schema migrations.

One function, `resolve_url`, decides which database is used: the explicit URL, then the
``BKGDB_URL`` environment variable, then an SQLite file ``bkgdb.sqlite`` in the current folder.
The CLI, the library and ``migrations/env.py`` all call it.
"""

import logging
import os
import re
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError

from .errors import DatabaseError

__all__ = [
    "DEFAULT_SQLITE_FILE",
    "SCHEMA_HEAD",
    "resolve_url",
    "display_url",
    "create_engine",
    "upgrade_schema",
    "downgrade_schema",
    "current_revision",
    "head_revision",
    "alembic_config",
]

log = logging.getLogger(__name__)

DEFAULT_SQLITE_FILE = "bkgdb.sqlite"
#: The newest migration; a database already there skips alembic's (slower) upgrade machinery.
#: tests/test_migrations.py checks it against migrations/.
SCHEMA_HEAD = "0004"
URL_ENV_VAR = "BKGDB_URL"


def resolve_url(url=None):
    """Return the database URL to use.

    Parameters
    ----------
    url : str, optional
        An SQLAlchemy URL (``sqlite:///file.sqlite``, ``postgresql://user@host/db``) or the path of
        an SQLite file. Default is ``$BKGDB_URL``, then ``bkgdb.sqlite`` in the current folder.

    Returns
    -------
    url : str
        A full SQLAlchemy URL. ``postgresql://`` URLs get the psycopg (v3) driver.
    """
    url = url or os.environ.get(URL_ENV_VAR) or DEFAULT_SQLITE_FILE
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        hidden = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
        raise DatabaseError(f"malformed database URL {hidden!r}: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def display_url(url):
    """The URL with any password replaced by ``***``, safe to print."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_on_connect(dbapi_connection, connection_record):
    cursor = dbapi_connection.cursor()
    # WAL lets readers (`bkgdb runs`) work while an `index` writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_engine(url=None):
    """Create an engine for the resolved URL and check that the server answers.

    Raises
    ------
    DatabaseError
        The URL is malformed, its driver is not installed, or the database cannot be reached.
    """
    url = resolve_url(url)
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if database and database != ":memory:" and not Path(database).parent.is_dir():
                raise DatabaseError(f"folder of SQLite database does not exist: {Path(database).parent}")
            engine = sa.create_engine(url)
            sa.event.listen(engine, "connect", _sqlite_on_connect)
        elif parsed.get_backend_name() == "postgresql":
            engine = sa.create_engine(url, connect_args={"connect_timeout": 10})
        else:
            raise DatabaseError(
                f"unsupported database {parsed.get_backend_name()!r} in {display_url(url)}: "
                "use sqlite:///FILE or postgresql://USER@HOST/DB"
            )
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise DatabaseError(f"malformed database URL {display_url(url)}: {exc}") from None
    try:
        with engine.connect():
            pass
    except (OperationalError, ProgrammingError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        engine.dispose()
        raise DatabaseError(f"cannot connect to {display_url(url)}: {reason}") from None
    return engine


def _migrations_dir():
    try:
        path = resources.files("bkgdb.migrations")
    except ModuleNotFoundError:
        path = None
    if path is None or not Path(str(path), "env.py").is_file():
        # Running from a source checkout without installing: migrations/ beside bkgdb/.
        path = Path(__file__).resolve().parent.parent / "migrations"
    return Path(str(path))


def alembic_config(engine):
    """An alembic `Config` built in code that migrates the database of ``engine``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_migrations_dir()))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["engine"] = engine
    return config


def upgrade_schema(engine, revision="head"):
    """Apply pending migrations up to ``revision``. Default is the newest."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def downgrade_schema(engine, revision="base"):
    """Undo migrations down to ``revision``. Default is an empty database."""
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


def current_revision(engine):
    """The schema revision the database is at, or None for an empty database."""
    if not sa.inspect(engine).has_table("alembic_version"):
        return None
    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def head_revision(engine):
    """The newest schema revision this version of bkgdb knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
