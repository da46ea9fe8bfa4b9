"""A database that is not a bkgdb catalogue (it holds other tables, or is an SQLite file another
program marked as its own) is refused and left as it is.

bkgdb's first rule: it never changes what it did not create. So no command, reading or writing,
adds its tables to such a database, stamps it with an ``alembic_version`` or switches an SQLite
file to WAL; and a command that only reads never creates or migrates a database at all.
"""

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import one_error_line
from typer.testing import CliRunner

import bkgdb
from bkgdb.cli.main import app
from bkgdb.errors import DatabaseNotReadyError, ForeignDatabaseError
from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import SCHEMA_HEAD, create_engine, current_revision, resolve_url, upgrade_schema

runner = CliRunner()

REFUSED = "give an empty database or an existing bkgdb catalogue"


def bkgdb_cli(url, *args):
    return runner.invoke(app, ["--db", url, *[str(arg) for arg in args]])


CONFIG = """\
binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: 1.0, az_diff: null, gal_lat_min: 0}
"""


@pytest.fixture
def elsewhere(tmp_path_factory):
    """A folder away from the database's: a config file, room for outputs."""
    folder = tmp_path_factory.mktemp("elsewhere")
    (folder / "config.yaml").write_text(CONFIG)
    return folder


def commands(datastore, elsewhere):
    """Reading commands, one whose writes are optional (`background`) and writing ones."""
    config = elsewhere / "config.yaml"
    return [
        ["runs"],
        ["info"],
        ["cache"],
        ["history"],
        ["flag", 1000],
        ["background", 1000, "--config", config, "-o", elsewhere / "bkg.fits"],
        ["init"],
        ["index", datastore],
        ["flag", 1000, "--bad", "broken"],
    ]


def sqlite_path(url):
    parsed = sa.engine.make_url(resolve_url(url))
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" else None


def make_foreign(url, tables):
    """Give the database of ``url`` a user's own ``tables`` with a row each (SQLite: journal mode delete)."""
    path = sqlite_path(url)
    if path is not None:
        connection = sqlite3.connect(path)
        for table in tables:
            connection.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, text TEXT)")
            connection.execute(f"INSERT INTO {table} (text) VALUES ('mine')")
        connection.commit()
        connection.close()
        return
    engine = sa.create_engine(resolve_url(url))
    with engine.begin() as connection:
        for table in tables:
            connection.execute(sa.text(f"CREATE TABLE {table} (id SERIAL PRIMARY KEY, text TEXT)"))
            connection.execute(sa.text(f"INSERT INTO {table} (text) VALUES ('mine')"))
    engine.dispose()


def snapshot(url):
    """Everything a refused command could have changed: an SQLite file's bytes, journal mode and
    neighbours; a PostgreSQL database's tables, sequences and views in every schema, and the rows of
    its public tables."""
    path = sqlite_path(url)
    if path is not None:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        connection.close()
        return path.read_bytes(), mode, sorted(item.name for item in path.parent.iterdir())
    engine = sa.create_engine(resolve_url(url))
    with engine.connect() as connection:
        relations = connection.execute(
            sa.text(
                "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2"
            )
        ).all()
        rows = {
            name: connection.execute(sa.text(f'SELECT * FROM "{name}" ORDER BY 1')).all()
            for schema, name, kind in relations
            if schema == "public" and kind == "r"
        }
    engine.dispose()
    return relations, rows


@pytest.mark.parametrize("tables", [["notes"], ["runs"], ["notes", "people", "places", "runs", "things"]])
def test_every_command_refuses_a_database_holding_other_tables(db_url, tables, simulated_datastore, elsewhere):
    make_foreign(db_url, tables)
    before = snapshot(db_url)
    named = ", ".join(tables[:3]) + (" and 2 more" if len(tables) > 3 else "")  # a few of them, not all
    for command in commands(simulated_datastore, elsewhere):
        line = one_error_line(bkgdb_cli(db_url, *command))
        assert f"is not a bkgdb catalogue: it holds other tables ({named}); {REFUSED}" in line, (command, line)
        assert snapshot(db_url) == before, command
    assert not (elsewhere / "bkg.fits").exists()


def test_sqlite_file_of_another_program_keeps_its_journal_mode_and_bytes(tmp_path):
    """A user's SQLite file (journal mode delete) with a table ``notes``, or one named as bkgdb's ``runs``."""
    for table in ("notes", "runs"):
        url = str(tmp_path / f"{table}.sqlite")
        make_foreign(url, [table])
        before = Path(url).read_bytes()
        assert one_error_line(bkgdb_cli(url, "runs")).endswith(REFUSED)
        assert one_error_line(bkgdb_cli(url, "info")).endswith(REFUSED)
        assert Path(url).read_bytes() == before
        # The engine of a writing command does not switch it to WAL either.
        engine = create_engine(url)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
        engine.dispose()
        assert Path(url).read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.sqlite", "runs.sqlite"]


@pytest.mark.parametrize("mark", ["application_id = 1234", "user_version = 7"])
def test_every_command_refuses_an_empty_sqlite_file_another_program_marked(
    tmp_path, mark, simulated_datastore, elsewhere
):
    """A program that marks its SQLite files (``PRAGMA application_id``, ``user_version``) before it
    creates a table: the file is its, not an empty database for bkgdb to fill."""
    url = str(tmp_path / "theirs.sqlite")
    connection = sqlite3.connect(url)
    connection.execute(f"PRAGMA {mark}")
    connection.commit()
    connection.close()
    before = snapshot(url)
    name, value = mark.split(" = ")
    for command in commands(simulated_datastore, elsewhere):
        line = one_error_line(bkgdb_cli(url, *command))
        assert f"is not a bkgdb catalogue: it is another program's SQLite file ({name} {value}); {REFUSED}" in line
        assert snapshot(url) == before, command
    with pytest.raises(ForeignDatabaseError, match=name):
        RunCatalogue.open(url)
    assert snapshot(url) == before


def test_bkgdb_marks_none_of_its_sqlite_files(tmp_path):
    # So its own catalogues are never taken for another program's; one a user marked later still opens.
    url = str(tmp_path / "bkgdb.sqlite")
    assert bkgdb_cli(url, "init").exit_code == 0
    connection = sqlite3.connect(url)
    assert connection.execute("PRAGMA application_id").fetchone() == (0,)
    assert connection.execute("PRAGMA user_version").fetchone() == (0,)
    connection.execute("PRAGMA user_version = 3")
    connection.commit()
    connection.close()
    assert bkgdb_cli(url, "runs").exit_code == 0
    assert bkgdb_cli(url, "init").exit_code == 0


def test_library_refuses_a_database_holding_other_tables(db_url):
    make_foreign(db_url, ["notes"])
    before = snapshot(db_url)
    for readonly in (False, True, "auto"):
        with pytest.raises(ForeignDatabaseError, match=r"holds other tables \(notes\)"):
            RunCatalogue.open(db_url, readonly=readonly)
        with pytest.raises(ForeignDatabaseError, match=REFUSED):
            bkgdb.Catalogue.open(db_url, readonly=readonly).info()
    assert snapshot(db_url) == before


def test_an_alembic_version_of_another_program_is_not_a_catalogue(db_url):
    make_foreign(db_url, ["notes"])
    engine = sa.create_engine(resolve_url(db_url))
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(sa.text("INSERT INTO alembic_version VALUES ('ae1027a6acf')"))
    before = snapshot(db_url)
    line = one_error_line(bkgdb_cli(db_url, "init"))
    assert "alembic_version" in line and "notes" in line and REFUSED in line
    assert snapshot(db_url) == before
    # An empty alembic_version alone is what a catalogue downgraded to nothing keeps: still empty.
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE notes"))
        connection.execute(sa.text("DELETE FROM alembic_version"))
    engine.dispose()
    assert bkgdb_cli(db_url, "init").exit_code == 0
    engine = create_engine(db_url)
    assert current_revision(engine) == SCHEMA_HEAD
    engine.dispose()


@pytest.mark.parametrize("revision", ["ae1027a6acf", "0003"])
def test_an_alembic_database_of_another_program_is_not_a_catalogue(db_url, revision):
    # Its revisions may look like bkgdb's (0001, 0002, ...): without bkgdb's tables it is not one.
    make_foreign(db_url, ["notes"])
    engine = sa.create_engine(resolve_url(db_url))
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(sa.text(f"INSERT INTO alembic_version VALUES ('{revision}')"))
    engine.dispose()
    before = snapshot(db_url)
    for command in (["runs"], ["init"]):
        line = one_error_line(bkgdb_cli(db_url, *command))
        assert "notes" in line and REFUSED in line
    assert snapshot(db_url) == before


def test_the_database_systems_own_tables_are_not_foreign(db_url):
    # A PostgreSQL database made from a template with an extension in its schema, an SQLite file
    # with statistics tables: empty for bkgdb.
    engine = sa.create_engine(resolve_url(db_url))
    with engine.begin() as connection:
        if sqlite_path(db_url) is None:
            connection.execute(sa.text("CREATE EXTENSION pg_buffercache"))
        else:
            connection.execute(sa.text("CREATE TABLE scratch (id INTEGER PRIMARY KEY AUTOINCREMENT)"))
            connection.execute(sa.text("INSERT INTO scratch DEFAULT VALUES"))
            connection.execute(sa.text("ANALYZE"))
            connection.execute(sa.text("DROP TABLE scratch"))  # sqlite_sequence and sqlite_stat1 stay
    engine.dispose()
    assert bkgdb_cli(db_url, "init").exit_code == 0
    assert bkgdb_cli(db_url, "runs").exit_code == 0


def test_reading_commands_never_create_a_database(db_url, tmp_path):
    before = snapshot(db_url) if sqlite_path(db_url) is None else None
    for command in (["runs"], ["info"], ["history"]):
        line = one_error_line(bkgdb_cli(db_url, *command))
        assert "bkgdb init" in line, line
    if before is None:
        assert not sqlite_path(db_url).exists()
        assert list(tmp_path.iterdir()) == []
    else:
        assert snapshot(db_url) == before
    with pytest.raises(DatabaseNotReadyError):
        bkgdb.Catalogue.open(db_url, readonly=True).info()
    with pytest.raises(DatabaseNotReadyError):
        bkgdb.Catalogue.open(db_url, readonly="auto").info()
    path = sqlite_path(db_url)
    if before is None:
        assert not path.exists()
        path.touch()  # an empty file is an empty database, not another program's
        assert "bkgdb init" in one_error_line(bkgdb_cli(db_url, "runs"))
        assert path.read_bytes() == b""
    else:
        assert snapshot(db_url) == before
    # A writing command creates it, as before.
    assert bkgdb_cli(db_url, "init").exit_code == 0
    engine = create_engine(db_url)
    assert current_revision(engine) == SCHEMA_HEAD
    if path is not None:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
    assert bkgdb_cli(db_url, "runs").exit_code == 0


def test_reading_commands_never_migrate_a_catalogue(db_url):
    engine = create_engine(db_url)
    upgrade_schema(engine, "0003")
    line = one_error_line(bkgdb_cli(db_url, "runs"))
    assert "schema revision 0003" in line and "bkgdb init" in line
    with pytest.raises(DatabaseNotReadyError, match="schema revision 0003"):
        bkgdb.Catalogue.open(db_url, readonly="auto").info()
    assert current_revision(engine) == "0003"
    assert bkgdb_cli(db_url, "init").exit_code == 0  # a writing command upgrades it
    assert current_revision(engine) == SCHEMA_HEAD
    assert bkgdb_cli(db_url, "runs").exit_code == 0
    engine.dispose()


def test_a_catalogue_of_a_newer_bkgdb_asks_for_an_upgrade_of_bkgdb(db_url):
    engine = create_engine(db_url)
    upgrade_schema(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    line = one_error_line(bkgdb_cli(db_url, "runs"))
    assert "schema revision 9999" in line and "written by a newer bkgdb: upgrade bkgdb" in line
    assert "bkgdb init" not in line
    engine.dispose()
