"""Database URL resolution, engine creation and schema migrations.

One function, `resolve_url`, decides which database is used: the explicit URL, then the
``BKGDB_URL`` environment variable, then an SQLite file ``bkgdb.sqlite`` in the current folder.
The CLI, the library and ``migrations/env.py`` all call it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import quote, unquote, unquote_plus

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from bkgdb.errors import DatabaseError, DatabaseNotReadyError, ForeignDatabaseError, LinkedDatabaseError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

#: Any error the database driver raised (connection lost, permission denied, ...), for callers that
#: report them without importing SQLAlchemy.
DRIVER_ERROR = DBAPIError

__all__ = [
    "id_in",
    "driver_rows",
    "DRIVER_ERROR",
    "DEFAULT_SQLITE_FILE",
    "SCHEMA_HEAD",
    "resolve_url",
    "display_url",
    "url_secrets",
    "hide_secrets",
    "create_engine",
    "is_in_memory_sqlite",
    "is_readonly_error",
    "is_read_denied",
    "GRANT_SELECT_ADVICE",
    "migrate_to_head",
    "upgrade_schema",
    "downgrade_schema",
    "current_revision",
    "catalogue_revision",
    "foreign_tables",
    "head_revision",
    "alembic_config",
    "session_scope",
]

log = logging.getLogger(__name__)

DEFAULT_SQLITE_FILE = "bkgdb.sqlite"
#: The newest migration; a database already there skips alembic's (slower) upgrade machinery.
#: tests/test_migrations.py checks it against migrations/.
SCHEMA_HEAD = "0008"
URL_ENV_VAR = "BKGDB_URL"


def resolve_url(url: str | None = None) -> str:
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

    Raises
    ------
    DatabaseError
        The URL cannot be parsed, or its password holds an ``@`` that is not percent-encoded
        (which would be read as the end of the password).
    """
    url = url or os.environ.get(URL_ENV_VAR) or DEFAULT_SQLITE_FILE
    if "://" not in url:
        try:
            path = str(Path(url).expanduser().resolve())
            # A % or ? in a file name is the name's: escaped, or the URL's parser would decode
            # "%20" or end the name at "?" and another file would be opened.
            return "sqlite:///" + path.replace("%", "%25").replace("?", "%3F")
        except (ValueError, OSError) as exc:  # a NUL byte, a name too long
            raise DatabaseError(f"bad SQLite file name {display_url(url)!r}: {hide_secrets(exc, url)}") from None
    userinfo = _userinfo(url)
    if userinfo is not None and ":" in userinfo and "@" in userinfo:
        raise DatabaseError(
            f"malformed database URL {display_url(url)}: an '@' in the password must be percent-encoded as %40"
        )
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        # The parser's message may quote the URL, password and all.
        raise DatabaseError(f"malformed database URL {display_url(url)}: {hide_secrets(str(exc), url)}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _userinfo(url: str) -> str | None:
    """What stands between ``://`` and the last ``@`` of a URL (``user:password``), or None."""
    rest = url.split("://", 1)[1] if "://" in url else url
    return rest[: rest.rfind("@")] if "@" in rest else None


#: Query parameters that carry a password (libpq's ``password``, and common spellings).
_PASSWORD_PARAMETER = re.compile(r"([?&;](?:password|passwd|pwd|pass)=)([^&;#]*)", re.IGNORECASE)


def url_secrets(url: str) -> set[str]:
    """Every spelling of the password(s) in ``url``: as written, percent-decoded, re-encoded.

    Works on URLs that do not parse. The password is taken as everything between the first ``:``
    after the user name and the *last* ``@``, so an unescaped ``@`` cannot cut it in two.
    """
    if not url:
        return set()
    found = set()
    userinfo = _userinfo(url)
    if userinfo is not None and ":" in userinfo:
        found.add(userinfo.split(":", 1)[1])
    found.update(match.group(2) for match in _PASSWORD_PARAMETER.finditer(url))
    if not found:  # the parser's view; where the raw text has a password it is a piece of that
        try:
            parsed_password = make_url(url).password
        except Exception:  # noqa: BLE001 - does not parse: nothing more to find
            parsed_password = None
        if parsed_password:
            found.add(str(parsed_password))
    spellings = set()
    for secret in found:
        spellings.update(
            {secret, unquote(secret), unquote_plus(secret), quote(secret, safe=""), quote(unquote(secret), safe="")}
        )
    return {secret for secret in spellings if secret}


def hide_secrets(text: object, *urls: str) -> str:
    """``text`` (a string or an exception) with every spelling of the passwords of ``urls`` replaced by ``***``."""
    text = str(text)
    secrets = set().union(*(url_secrets(url) for url in urls if url))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def display_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print, whether it parses or not."""
    url = str(url)
    shown = _PASSWORD_PARAMETER.sub(lambda match: match.group(1) + "***", url)
    userinfo = _userinfo(shown)
    if userinfo is not None and ":" in userinfo:
        scheme, rest = shown.split("://", 1) if "://" in shown else ("", shown)
        user = userinfo.split(":", 1)[0]
        shown = (f"{scheme}://" if scheme or "://" in url else "") + f"{user}:***" + rest[len(userinfo) :]
    return hide_secrets(shown, url)


def is_in_memory_sqlite(url: str | None) -> bool:
    """Whether the resolved ``url`` is an SQLite database that lives only as long as its connections.

    In memory (``sqlite://``, ``sqlite:///:memory:``, ``file:NAME?mode=memory``, ``file::memory:``)
    or SQLite's temporary file of an empty URI name (``file:?uri=true``). The library opens them
    (tests, a scratch catalogue in a script); a command would lose all it wrote when it exits.
    """
    if (url or os.environ.get(URL_ENV_VAR) or "").strip() == ":memory:":  # SQLite's name, not a file here
        return True
    parsed = make_url(resolve_url(url))
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    if parsed.query.get("uri") == "true":  # a file: URI; without it "file:..." is a file's name
        return database in ("file:", "") or database.startswith("file::memory:") or parsed.query.get("mode") == "memory"
    return database in ("", ":memory:")


#: What a PostgreSQL role that may not read bkgdb's tables is told to do.
GRANT_SELECT_ADVICE = (
    "grant the role SELECT on bkgdb's tables (GRANT SELECT ON ALL TABLES IN SCHEMA public; README, Operations)"
)


def is_read_denied(exc: BaseException, statement: str = "") -> bool:
    """Whether a database error says that this role may not read (PostgreSQL SQLSTATE 42501 on a
    query: ``statement``, or the error's own)."""
    orig = getattr(exc, "orig", exc)
    statement = statement or str(getattr(exc, "statement", "") or "")
    return getattr(orig, "sqlstate", None) == "42501" and statement.lstrip().upper().startswith(("SELECT", "WITH"))


def is_readonly_error(exc: BaseException) -> bool:
    """Whether a database error says that this connection may not write.

    SQLite: the file (or its folder) is read-only; PostgreSQL: the role lacks the privilege
    (SQLSTATE 42501) or the transaction is read-only (25006).
    """
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) in ("42501", "25006"):
        return True
    message = str(orig).lower()
    return "readonly database" in message or "read-only" in message or "permission denied" in message


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, connection_record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (`bkgdb runs`) work while an `index` writes. Switching needs write access;
    # a file that is already WAL (the usual case) or cannot be written is left as it is, and so is
    # another program's file: the switch is a change to it, made before bkgdb refuses it.
    if (
        cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal"
        and _foreign_content("sqlite", lambda sql: cursor.execute(sql).fetchall()) is None
    ):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except Exception as exc:  # noqa: BLE001 - sqlite3.OperationalError: a read-only file
            log.debug("cannot switch SQLite to WAL mode: %s", exc)
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        # WAL without an fsync per commit (an index commits often): a killed process loses
        # nothing committed, a power cut at most the last commits, and the file stays consistent.
        cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Writers wait for each other (two `index` runs at once) instead of failing at once.
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_readonly_on_connect(dbapi_connection: DBAPIConnection, connection_record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


#: Execution option of a statement whose rows psycopg should receive in PostgreSQL's binary format
#: (`driver_rows`).
BINARY_RESULTS = "bkgdb_binary_results"


def _psycopg_binary_results(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
    """Run a statement with `BINARY_RESULTS` so that its rows come in binary: bytes as they are, not
    as hex text, numbers and times without parsing. For the thousand pieces of a build psycopg then
    reads their rows in half the time (8.2 -> 4.7 ms)."""
    if context.execution_options.get(BINARY_RESULTS):
        cursor.execute(statement, parameters, binary=True)
        return True  # executed here
    return None


def _sqlite_readonly_url(database: str, immutable: bool = False) -> str:
    """A ``file:`` URI that SQLite opens read-only (``immutable``: not even a lock or -shm file)."""
    # The path is quoted twice: once for SQLite's URI, once for the URL that carries it.
    query = {"mode": "ro", **({"immutable": "1"} if immutable else {}), "uri": "true"}
    uri = URL.create("sqlite", database="file:" + quote(str(Path(database).resolve()), safe="/"), query=query)
    return uri.render_as_string()


def create_engine(url: str | None = None, readonly: bool = False) -> Engine:
    """Create an engine for the resolved URL and check that the server answers.

    Parameters
    ----------
    url : str, optional
        See `resolve_url`.
    readonly : bool, optional
        Open the database for reading only: SQLite through a ``mode=ro`` URI (or, when a WAL file
        cannot be opened beside it in a read-only folder, ``immutable=1``), PostgreSQL with
        read-only transactions. Nothing is created or changed. Default is False.

    Raises
    ------
    DatabaseError
        The URL is malformed, its driver is not installed, or the database cannot be reached
        (read-only: or does not exist).
    """
    url = resolve_url(url)
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            in_memory = is_in_memory_sqlite(url)
            if not in_memory and not database.startswith("file:") and not Path(database).parent.is_dir():
                raise DatabaseError(
                    f"folder of SQLite database does not exist: {hide_secrets(Path(database).parent, url)}"
                )
            if readonly and not in_memory and not database.startswith("file:"):
                if not Path(database).is_file():
                    raise DatabaseNotReadyError(
                        f"no database at {hide_secrets(database, url)}: create it with `bkgdb init` or `bkgdb index`"
                    )
                engine = _connected(_sqlite_readonly_engine(_sqlite_readonly_url(database)), url, fail=False)
                if engine is None:  # WAL needs a -shm file that a read-only folder cannot hold
                    engine = _sqlite_readonly_engine(_sqlite_readonly_url(database, immutable=True))
                    log.info("%s opened as immutable: its folder is read-only", database)
                return _connected(engine, url)
            if not in_memory and not database.startswith("file:"):
                _refuse_hard_links(Path(database), url)
            engine = sa.create_engine(url)
            sa.event.listen(engine, "connect", _sqlite_on_connect)
        elif parsed.get_backend_name() == "postgresql":
            connect_args: dict[str, Any] = {"connect_timeout": 10}
            if readonly:
                connect_args["options"] = "-c default_transaction_read_only=on"
            engine = sa.create_engine(url, connect_args=connect_args)
            if engine.dialect.driver == "psycopg":
                sa.event.listen(engine, "do_execute", _psycopg_binary_results)
        else:
            raise DatabaseError(
                f"unsupported database {parsed.get_backend_name()!r} in {display_url(url)}: "
                "use sqlite:///FILE or postgresql://USER@HOST/DB"
            )
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise DatabaseError(f"malformed database URL {display_url(url)}: {hide_secrets(exc, url)}") from None
    return _connected(engine, url)


def _refuse_hard_links(database: Path, url: str) -> None:
    """Refuse to write an SQLite file that has other names (hard links).

    SQLite keeps its journal (``-wal``, ``-shm``) beside the name it opened: two writers through
    two names of one file do not see each other's, and committed transactions are lost (seen:
    two indexes both reported success, one's 105 runs were gone). A write through one name also
    changes every linked copy, such as a backup made with ``cp -al``.
    """
    try:
        links = database.stat().st_nlink
    except OSError:  # not made yet, or not reachable: SQLite says so
        return
    if links > 1:
        raise LinkedDatabaseError(
            f"{hide_secrets(database, url)} has {links} hard links: SQLite writing through one name loses "
            "what is written through another, and changes every linked copy; make a real copy (cp) or use "
            "one name (a symlink is safe); commands that only read it still work"
        )


def session_scope(engine: sa.engine.Engine) -> Session:
    """A new ORM session on ``engine``, the one way bkgdb opens them; use it as a context manager.

    Objects stay readable after a commit (``expire_on_commit=False``): rows are handed to callers
    that outlive the session. Nothing is committed unless the caller commits.
    """
    return Session(engine, expire_on_commit=False)


def _sqlite_readonly_engine(uri: str) -> Engine:
    engine = sa.create_engine(uri)
    sa.event.listen(engine, "connect", _sqlite_readonly_on_connect)
    return engine


@overload
def _connected(engine: Engine, url: str, fail: Literal[True] = ...) -> Engine: ...


@overload
def _connected(engine: Engine, url: str, fail: bool) -> Engine | None: ...


def _connected(engine: Engine, url: str, fail: bool = True) -> Engine | None:
    """``engine`` once a first query succeeded; else a `DatabaseError` (or None if not ``fail``)."""
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":  # opening is lazy: read the schema to be sure
                connection.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
    except (OperationalError, ProgrammingError) as exc:
        engine.dispose()
        if not fail:
            return None
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        database = make_url(url).database
        if engine.dialect.name == "sqlite" and database and Path(database).is_file() and "unable to open" in reason:
            reason += (
                " (the file or its folder is read-only? Writing needs both: SQLite keeps -wal and -shm "
                "files beside the database)"
            )
        raise DatabaseError(f"cannot connect to {display_url(url)}: {hide_secrets(reason, url)}") from None
    return engine


def _migrations_dir() -> Path:
    try:
        path = resources.files("bkgdb.migrations")
    except ModuleNotFoundError:
        path = None
    if path is None or not Path(str(path), "env.py").is_file():
        # Running from a source checkout without installing: migrations/ beside bkgdb/.
        path = Path(__file__).resolve().parents[2] / "migrations"
    return Path(str(path))


def alembic_config(engine: Engine) -> Config:
    """An alembic `Config` built in code that migrates the database of ``engine``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_migrations_dir()))
    # ConfigParser interpolates "%": a percent-encoded password must not be read as a reference.
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    config.attributes["engine"] = engine
    return config


#: Key of the PostgreSQL advisory lock that serialises schema migrations ("bkgdb" in ASCII).
MIGRATION_LOCK_KEY = 0x626B676462
#: Key of the PostgreSQL advisory lock between writing pieces and deleting what pieces refer to
#: (`lock_piece_references`; "bkgdb" and 1).
PIECE_REFERENCES_LOCK_KEY = 0x626B67646201


def lock_piece_references(session: Session, exclusive: bool = False) -> None:
    """Lock, until the session's transaction ends, the settings and region sets that pieces refer to.

    An index writes pieces that refer to a binning, an exclusion setting and a region set, rows it
    found or made; `bkgdb cache --drop` deletes such rows once no piece refers to them, and their
    deletion cascades to the pieces. Without this lock a drop could delete a row an index is about
    to refer to, and on PostgreSQL, after waiting for the index's transaction, also the pieces that
    transaction just committed. A writer of pieces takes it shared, so that indexes run side by side;
    a deleter takes it ``exclusive``: it waits for the writes under way, then sees all their pieces.

    On PostgreSQL this is a transaction-level advisory lock. On SQLite it is the write lock, taken
    now (``BEGIN IMMEDIATE``) unless the transaction already holds it: the driver would begin the
    transaction only at its first write, and what was read before that could be deleted by then.
    Write transactions run one at a time, so the lock is exclusive whatever ``exclusive`` says.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        connection.execute(sa.select(getattr(sa.func, function)(PIECE_REFERENCES_LOCK_KEY)))
    elif connection.dialect.name == "sqlite":
        # The driver begins a transaction only before a write, so one under way holds the lock.
        if not getattr(connection.connection.dbapi_connection, "in_transaction", True):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def migrate_to_head(engine: Engine) -> bool:
    """Bring the schema to `SCHEMA_HEAD`, safely when several processes open the database at once.

    The migration runs on one connection inside one transaction that first takes a lock:
    ``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` (the write lock) on SQLite. A
    second process waits for it, then finds the schema current and does nothing.

    Returns
    -------
    migrated : bool
        Whether this call changed the schema.

    Raises
    ------
    ForeignDatabaseError
        The database is not empty and not a bkgdb catalogue (it holds other tables, or is an SQLite
        file another program marked as its own); nothing was changed.
    """
    from alembic import command

    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        if _revision(connection) == SCHEMA_HEAD:
            connection.rollback()
            return False
        _refuse_foreign(connection)  # under the lock: what another process did first counts
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()
    return True


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Apply pending migrations up to ``revision``. Default is the newest."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def downgrade_schema(engine: Engine, revision: str = "base") -> None:
    """Undo migrations down to ``revision``. Default is an empty database."""
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return _revision(connection)


#: bkgdb's revisions (``0001``, ...; a newer bkgdb's too): an ``alembic_version`` holding another
#: is another program's.
_CATALOGUE_REVISION = re.compile(r"\d{4}")
#: Tables and views (True) and sequences (False) in the schema bkgdb uses: SQLite's only one,
#: PostgreSQL's current one (normally ``public``).
_SCHEMA_CONTENT = {
    "sqlite": (
        "SELECT name, 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"
    ),
    # Not those of extensions (pg_stat_statements, PostGIS's spatial_ref_sys): a database made
    # from a template that has some is still empty for bkgdb.
    "postgresql": (
        "SELECT c.relname, c.relkind <> 'S' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND NOT EXISTS "
        "(SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')"
    ),
}
#: Tables every bkgdb catalogue has had since its first revision: with bkgdb's ``alembic_version``,
#: what tells a catalogue from another program's alembic database with revisions of the same form.
_CATALOGUE_TABLES = {"datastores", "runs"}


def _foreign_tables(dialect: str, query: Callable[[str], Sequence[Sequence[Any]]]) -> list[str]:
    """`foreign_tables` through ``query(sql) -> rows``, which may be a DB-API cursor's (no engine yet)."""
    content = query(_SCHEMA_CONTENT[dialect])
    names = sorted(name for name, is_table in content if is_table) or sorted(name for name, _ in content)
    if "alembic_version" not in names:
        return names
    revisions_query = "SELECT version_num FROM alembic_version"
    try:
        revisions = [row[0] for row in query(revisions_query)]
    except Exception as exc:  # noqa: BLE001 - a table of that name without bkgdb's column
        if is_read_denied(exc, revisions_query):
            raise DatabaseError(
                f"permission denied reading the catalogue's tables (alembic_version): {GRANT_SELECT_ADVICE}"
            ) from None
        return names
    if len(revisions) == 1 and _CATALOGUE_REVISION.fullmatch(str(revisions[0])) and _CATALOGUE_TABLES <= set(names):
        return []
    if not revisions:  # a catalogue downgraded to nothing keeps its empty alembic_version
        names.remove("alembic_version")
    return names


#: Header fields of an SQLite file that a program sets to mark the file as its own
#: (https://sqlite.org/pragma.html#pragma_application_id). bkgdb sets neither: an SQLite file
#: without bkgdb's schema where either is non-zero is another program's, even with no tables yet.
_SQLITE_OWNER_MARKS = ("application_id", "user_version")


def _foreign_content(dialect: str, query: Callable[[str], Sequence[Sequence[Any]]]) -> str | None:
    """What makes a database another program's, as the refusal says it; None for an empty database
    or a bkgdb catalogue. ``query`` as for `_foreign_tables`."""
    tables = _foreign_tables(dialect, query)
    if tables:
        named = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
        return f"it holds other tables ({named})"
    if dialect != "sqlite" or _CATALOGUE_TABLES <= {row[0] for row in query(_SCHEMA_CONTENT[dialect])}:
        return None
    marks = [f"{name} {value}" for name in _SQLITE_OWNER_MARKS for (value,) in query(f"PRAGMA {name}") if value]
    return f"it is another program's SQLite file ({', '.join(marks)})" if marks else None


def foreign_tables(connection: Connection) -> list[str]:
    """The tables of a database that is neither empty nor a bkgdb catalogue, sorted; else none.

    Only a database holding bkgdb's ``alembic_version`` and tables is a catalogue. On PostgreSQL only
    the schema bkgdb uses counts (the current one, normally ``public``), without extensions' tables.
    """
    return _foreign_tables(connection.dialect.name, lambda sql: connection.exec_driver_sql(sql).all())


def catalogue_revision(engine: Engine, shown: str | None = None) -> str | None:
    """The schema revision of a bkgdb catalogue, or None for an empty database.

    Parameters
    ----------
    engine : `~sqlalchemy.engine.Engine`
    shown : str, optional
        The database as the error names it. Default is the engine's URL, password hidden.

    Raises
    ------
    ForeignDatabaseError
        The database is not empty and not a bkgdb catalogue (it holds other tables, or is an SQLite
        file another program marked as its own); nothing was changed.
    """
    with engine.connect() as connection:
        _refuse_foreign(connection, shown)
        return _revision(connection)


def _refuse_foreign(connection: Connection, shown: str | None = None) -> None:
    found = _foreign_content(connection.dialect.name, lambda sql: connection.exec_driver_sql(sql).all())
    if found is None:
        return
    shown = shown or display_url(connection.engine.url.render_as_string(hide_password=False))
    raise ForeignDatabaseError(
        f"{shown} is not a bkgdb catalogue: {found}; give an empty database or an existing bkgdb catalogue"
    )


def _revision(connection: Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def head_revision(engine: Engine) -> str | None:
    """The newest schema revision this version of bkgdb knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def id_in(session: Session, column: Any, ids: Sequence[int]) -> Any:
    """``column IN (ids)``; on PostgreSQL ``column = ANY(:ids)``, one bound integer array.

    An IN list binds (and SQLAlchemy renders, with a cast each) one parameter per id: for the
    thousands of runs a build reads, that cost more than the index lookups themselves.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == sa.any_(sa.bindparam(None, list(ids), type_=ARRAY(sa.Integer)))
    return column.in_(ids)


def driver_rows(session: Session, statement: Any, parameters: dict | None = None) -> list[tuple]:
    """The rows of ``statement`` (run on the session's connection) as the database driver gives them: tuples.

    For the thousands of rows of a build whose columns need none of SQLAlchemy's processing of
    results (numbers, text, bytes): a SQLAlchemy row each cost a tenth of reading them. On
    PostgreSQL (psycopg) the rows come in the binary format (`BINARY_RESULTS`).
    """
    result = session.connection().execute(statement, parameters, execution_options={BINARY_RESULTS: True})
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()
