"""Read-only use: an SQLite file or folder nobody may write (``chattr +i``; root ignores file
modes), a PostgreSQL role with SELECT only, and ``RunCatalogue.open(readonly=True)``. Also the
one-line errors of writers on such databases, of ``background -o`` and the quiet stderr of piped
commands."""

import contextlib
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa
from astropy.io import fits
from conftest import one_error_line
from typer.testing import CliRunner

from bkgdb.cli.main import app
from bkgdb.config import load_config
from bkgdb.errors import DatabaseNotReadyError
from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import SCHEMA_HEAD, downgrade_schema, resolve_url

CONFIG = """\
binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
exclusion: {gammacat: none, hawc: none, star_cat: none, exclude_regions: [[152.0, 29.0, 0.3]]}
background_selection: {el_diff: 1.0, az_diff: null, gal_lat_min: 0}
"""
TARGET = 1002
READ_COMMANDS = [
    ["runs", "-f", "csv"],
    ["info"],
    ["exclusions", str(TARGET)],
    ["cache"],
    ["history"],
]

runner = CliRunner()


def bkgdb(url, *args):
    return runner.invoke(app, ["--db", url, *[str(arg) for arg in args]])


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def indexed(db_url, simulated_datastore, config_file):
    """The database of ``db_url`` with the simulated runs and their pieces."""
    catalogue = RunCatalogue.open(db_url)
    catalogue.index(simulated_datastore, config=load_config(config_file))
    catalogue.engine.dispose()
    return db_url


@contextlib.contextmanager
def immutable(path):
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def readonly_access(url, select=True):
    """A URL through which the database of ``url`` can be read but not written (PostgreSQL: a role
    with ``SELECT`` on its tables, or without it if not ``select``)."""
    parsed = sa.engine.make_url(resolve_url(url))
    if parsed.get_backend_name() == "sqlite":
        with immutable(parsed.database):
            yield url
        return
    role = f"bkgdb_reader_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(parsed, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        connection.execute(sa.text(f'GRANT CONNECT ON DATABASE "{parsed.database}" TO "{role}"'))
        connection.execute(sa.text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        if select:
            connection.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
    try:
        yield parsed.set(username=role, password=None).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
            connection.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()


def test_every_read_command_and_background_work_read_only(indexed, config_file, tmp_path):
    output = tmp_path / "bkg.fits"
    with readonly_access(indexed) as url:
        for command in READ_COMMANDS:
            result = bkgdb(url, *command)
            assert result.exit_code == 0, (command, result.output)
        assert "1000,SIM FIELD" in bkgdb(url, "runs", "-f", "csv").output
        assert "152.0" in bkgdb(url, "exclusions", TARGET, "-f", "csv").output

        result = bkgdb(url, "background", TARGET, "--config", config_file, "-o", output)
        assert result.exit_code == 0, result.output
        assert result.output.count("Warning: history not recorded: the database is read-only") == 1
        assert "Traceback" not in result.output
        with fits.open(output) as hdus:
            assert hdus["BACKGROUND"].header["BKG_TGT"] == TARGET

        assert "0 backgrounds" in bkgdb(url, "history").output
        message = one_error_line(bkgdb(url, "index", tmp_path / "nothing-here"))  # a user error comes first
        assert "datastore folder does not exist" in message
    # Written again, the same command records its history.
    result = bkgdb(indexed, "background", TARGET, "--config", config_file, "-o", output, "--overwrite")
    assert result.exit_code == 0 and "Warning" not in result.output
    assert "1 backgrounds" in bkgdb(indexed, "history").output


def test_a_condition_aware_background_is_built_read_only(indexed, tmp_path):
    # The condition model it fits is not cached in the database then, and nothing fails.
    config = tmp_path / "condition.yaml"
    config.write_text(CONFIG.replace("gal_lat_min: 0}", "gal_lat_min: 0, assembly: condition}"))
    with readonly_access(indexed) as url:
        result = bkgdb(url, "background", TARGET, "--config", config, "-o", tmp_path / "bkg.fits")
        assert result.exit_code == 0, result.output
        assert "Warning: history not recorded: the database is read-only" in result.output
    with fits.open(tmp_path / "bkg.fits") as hdus:
        assert hdus["BACKGROUND"].header["BKG_TGT"] == TARGET


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_role_that_may_read_only_some_tables_is_told_to_grant_select(indexed):
    """SELECT granted on alembic_version alone: a read command was told the database "is read-only
    for this command, which needs to write"."""
    with readonly_access(indexed, select=False) as url:
        admin = sa.create_engine(resolve_url(indexed), isolation_level="AUTOCOMMIT")
        role = sa.engine.make_url(url).username
        with admin.connect() as connection:
            connection.execute(sa.text(f'GRANT SELECT ON alembic_version TO "{role}"'))
        admin.dispose()
        result = bkgdb(url, "info")
        assert result.exit_code == 2, result.output
        message = " ".join(result.stderr.split())
        assert "this role may not read a table bkgdb needs (permission denied for table" in message
        assert message.endswith(
            "grant the role SELECT on bkgdb's tables (GRANT SELECT ON ALL TABLES IN SCHEMA public; README, Operations)"
        )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_role_without_select_is_told_so_not_that_the_catalogue_is_foreign(indexed):
    """The README's analyst role with its GRANT SELECT forgotten: bkgdb's own tables were listed as
    "other tables" of a database that "is not a bkgdb catalogue"."""
    with readonly_access(indexed, select=False) as url:
        for command in (["runs"], ["info"], ["init"]):
            result = bkgdb(url, *command)
            assert result.exit_code == 2, result.output
            assert result.stderr.strip() == (
                "Error: permission denied reading the catalogue's tables (alembic_version): grant the role SELECT "
                "on bkgdb's tables (GRANT SELECT ON ALL TABLES IN SCHEMA public; README, Operations)"
            )


def test_writers_on_a_read_only_database_fail_in_one_line(indexed, simulated_datastore, config_file):
    with readonly_access(indexed) as url:
        message = one_error_line(bkgdb(url, "index", simulated_datastore, "--config", config_file))
        assert "read-only" in message and "database" in message
        binning_hash = load_config(config_file).binnings[0].hash
        message = one_error_line(bkgdb(url, "cache", "--drop-binning", binning_hash[:8]))
        assert "read-only" in message


def test_a_hard_linked_sqlite_file_is_read_never_written(tmp_path, simulated_datastore, config_file):
    """Two names of one SQLite file keep two journals: writers through them lost committed runs
    (both indexes reported success). Writers refuse such a file, readers read it, unchanged."""
    import hashlib
    import os

    original = tmp_path / "catalogue.sqlite"
    catalogue = RunCatalogue.open(str(original))
    catalogue.index(simulated_datastore, config=load_config(config_file))
    catalogue.engine.dispose()
    second = tmp_path / "second-name.sqlite"
    os.link(original, second)
    before = hashlib.sha256(original.read_bytes()).hexdigest()
    for name in (original, second):
        message = one_error_line(bkgdb(str(name), "index", simulated_datastore, "--config", config_file))
        assert f"{name} has 2 hard links: SQLite writing through one name loses what is written through another" in (
            message
        )
        assert one_error_line(bkgdb(str(name), "flag", TARGET, "--bad", "x")).startswith(
            f"Error: {name} has 2 hard links"
        )
        result = bkgdb(str(name), "runs", "-f", "csv")
        assert result.exit_code == 0 and "1000,SIM FIELD" in result.output
        output = tmp_path / f"bkg-{name.stem}.fits"
        result = bkgdb(str(name), "background", TARGET, "--config", config_file, "-o", output)
        assert result.exit_code == 0, result.output
        assert f"Warning: {name} has 2 hard links" in result.output and "opened read-only" in result.output
        assert output.exists()
    assert hashlib.sha256(original.read_bytes()).hexdigest() == before
    second.unlink()  # one name again: written as before
    result = bkgdb(str(original), "flag", TARGET, "--bad", "x")
    assert result.exit_code == 0, result.output


def test_read_only_folder(tmp_path, simulated_datastore, config_file):
    folder = tmp_path / "shared"
    folder.mkdir()
    database = folder / "bkgdb.sqlite"
    catalogue = RunCatalogue.open(str(database))
    catalogue.index(simulated_datastore, config=load_config(config_file))
    catalogue.engine.dispose()
    output = tmp_path / "bkg.fits"
    with immutable(folder):
        for command in READ_COMMANDS:
            assert bkgdb(str(database), *command).exit_code == 0, command
        result = bkgdb(str(database), "background", TARGET, "--config", config_file, "-o", output)
        assert result.exit_code == 0, result.output
        assert "history not recorded" in result.output and output.is_file()
        message = one_error_line(bkgdb(str(database), "index", simulated_datastore))
        assert "read-only" in message and str(database) in message
    assert sorted(path.name for path in folder.iterdir()) == ["bkgdb.sqlite"]


def test_open_readonly_never_writes(indexed):
    catalogue = RunCatalogue.open(indexed, readonly=True)
    try:
        assert catalogue.info()["runs"] == 5
        with pytest.raises((sa.exc.OperationalError, sa.exc.InternalError), match="read.?only"):
            with catalogue.engine.begin() as connection:
                connection.execute(sa.text("DELETE FROM runs"))
    finally:
        catalogue.engine.dispose()
    assert RunCatalogue.open(indexed, readonly=True).info()["runs"] == 5


def test_readonly_open_of_an_old_schema_says_to_run_init(indexed):
    catalogue = RunCatalogue.open(indexed)
    downgrade_schema(catalogue.engine, "0003")
    catalogue.engine.dispose()
    with pytest.raises(
        DatabaseNotReadyError, match=rf"schema revision 0003, this bkgdb needs {SCHEMA_HEAD}: run `bkgdb init`"
    ):
        RunCatalogue.open(indexed, readonly=True)
    with readonly_access(indexed) as url:
        message = one_error_line(bkgdb(url, "runs"))
        assert "run `bkgdb init` once with write access" in message
    # With write access too a read command migrates nothing; `bkgdb init` does.
    assert "run `bkgdb init`" in one_error_line(bkgdb(indexed, "runs"))
    assert bkgdb(indexed, "init").exit_code == 0
    assert RunCatalogue.open(indexed, readonly=True).info()["schema_revision"] == SCHEMA_HEAD


def test_readonly_open_of_a_missing_sqlite_file(tmp_path):
    with pytest.raises(DatabaseNotReadyError, match="no database at"):
        RunCatalogue.open(str(tmp_path / "absent.sqlite"), readonly=True)
    assert not (tmp_path / "absent.sqlite").exists()


@pytest.mark.parametrize(
    "where, message",
    [
        ("missing-folder/bkg.fits", "does not exist"),
        ("existing-folder", "is a folder"),
    ],
)
def test_background_output_is_checked_before_any_work(indexed, config_file, tmp_path, where, message):
    (tmp_path / "existing-folder").mkdir()
    # OBS_ID 99 is not in the catalogue: the output check must come first to be reported.
    line = one_error_line(bkgdb(indexed, "background", 99, "--config", config_file, "-o", tmp_path / where))
    assert message in line
    assert not (tmp_path / "missing-folder").exists()
    assert list((tmp_path / "existing-folder").iterdir()) == []


def test_piped_commands_print_no_progress_bar_or_blank_line(tmp_path, simulated_datastore):
    database = tmp_path / "piped.sqlite"
    result = subprocess.run(
        [sys.executable, "-m", "bkgdb.cli.main", "--db", str(database), "index", str(simulated_datastore)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip().endswith("5 new, 0 updated, 0 unchanged, 0 failed")
