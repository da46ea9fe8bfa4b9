from pathlib import Path

import pytest
import sqlalchemy as sa

from bkgdb.errors import DatabaseError
from bkgdb.store.database import create_engine, display_url, resolve_url


def test_default_url_is_sqlite_file_in_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("BKGDB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_url() == f"sqlite:///{tmp_path / 'bkgdb.sqlite'}"


def test_environment_variable_then_explicit_url(tmp_path, monkeypatch):
    monkeypatch.setenv("BKGDB_URL", "sqlite:///from-env.sqlite")
    assert resolve_url() == "sqlite:///from-env.sqlite"
    assert resolve_url(str(tmp_path / "given.sqlite")) == f"sqlite:///{tmp_path / 'given.sqlite'}"


@pytest.mark.parametrize("name", ["runs%20old.sqlite", "runs?2024.sqlite", "runs#2.sqlite", "my runs.sqlite"])
def test_an_sqlite_file_name_is_taken_as_it_is_written(tmp_path, name):
    # A %, ? or # once made another file (runs old.sqlite, runs) or could not be read back read-only.
    from bkgdb.store.catalogue import RunCatalogue

    path = tmp_path / name
    RunCatalogue.open(str(path)).engine.dispose()
    assert [entry.name for entry in tmp_path.iterdir() if not entry.name.endswith(("-wal", "-shm"))] == [name]
    for readonly in (True, False, "auto"):
        catalogue = RunCatalogue.open(str(path), readonly=readonly)
        assert catalogue.protected_paths()[0] == path
        assert sa.engine.make_url(catalogue.url).database == str(path)
        catalogue.engine.dispose()


def test_postgresql_urls_use_psycopg3():
    assert resolve_url("postgresql://me@host/db").startswith("postgresql+psycopg://me@host/db")


def test_display_url_hides_password():
    shown = display_url("postgresql+psycopg://user:s3cret@host:5432/db")
    assert "s3cret" not in shown and "***" in shown
    with pytest.raises(DatabaseError) as error:
        resolve_url("postgresql://user:s3cret@host:port/db")
    assert "s3cret" not in str(error.value) and "***" in str(error.value)


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgresql://postgres@127.0.0.1:1/nothing", "cannot connect"),
        ("postgresql+nodriver://x@y/z", "malformed"),
        ("not a url://", "malformed"),
        ("oracle://x@y/z", "unsupported database"),
        ("sqlite:////no/such/folder/bkgdb.sqlite", "does not exist"),
    ],
)
def test_bad_urls_raise_database_error(url, message):
    with pytest.raises(DatabaseError, match=message):
        create_engine(url)


def test_sqlite_reader_works_while_a_writer_holds_a_transaction(tmp_path):
    engine = create_engine(str(tmp_path / "wal.sqlite"))
    with engine.begin() as connection:
        assert connection.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        connection.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        connection.execute(sa.text("INSERT INTO t VALUES (1)"))
    writer = engine.connect()
    writer.begin()
    writer.execute(sa.text("INSERT INTO t VALUES (2)"))  # uncommitted write, lock held
    reader = create_engine(str(tmp_path / "wal.sqlite"))
    with reader.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM t")).scalar() == 1
    writer.rollback()
    writer.close()
    assert Path(tmp_path / "wal.sqlite-wal").exists()


# -- passwords are never shown ------------------------------------------------------------------

import logging  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from urllib.parse import quote  # noqa: E402

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from bkgdb.cli.main import app  # noqa: E402
from bkgdb.store.catalogue import RunCatalogue  # noqa: E402
from bkgdb.store.database import SCHEMA_HEAD, current_revision, hide_secrets  # noqa: E402

#: URL shapes; {raw} is the password as typed, {quoted} percent-encoded. None of the servers
#: answers (port 1, a missing socket folder, an unsupported or malformed URL).
URL_SHAPES = [
    "postgresql://reader:{raw}@127.0.0.1:1/bkgdb",
    "postgresql://reader:{quoted}@127.0.0.1:1/bkgdb",
    "postgresql+psycopg://reader:{raw}@127.0.0.1:notaport/bkgdb",
    "postgresql://reader:{raw}@/bkgdb?host=/no/such/socket/folder",
    "postgresql://127.0.0.1:1/bkgdb?user=reader&password={quoted}",
    "oracle://reader:{raw}@host/db",
    "reader:{raw}@127.0.0.1/bkgdb",  # no scheme: taken as a file name
]
PLACEHOLDER = "PLACEHOLDER-PASSWORD"


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def everything_shown(url, via_environment):
    """Every text a user could see for ``url``: errors, display, CLI output, log messages."""
    texts = [display_url(url)]
    collect = _Collect()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    try:
        for call in (resolve_url, create_engine, RunCatalogue.open):  # resolve_url's result is not shown
            try:
                result = call(url)
                if hasattr(result, "dispose"):
                    texts.append(repr(result))
                    result.dispose()
            except DatabaseError as exc:
                texts.append(str(exc))
        saved = os.environ.get("BKGDB_URL")
        try:
            if via_environment:
                os.environ["BKGDB_URL"] = url
                result = CliRunner().invoke(app, ["info"])
            else:
                result = CliRunner().invoke(app, ["--db", url, "info"])
        finally:
            if saved is None:
                os.environ.pop("BKGDB_URL", None)
            else:
                os.environ["BKGDB_URL"] = saved
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        texts.append(result.output)
    finally:
        root.removeHandler(collect)
        root.setLevel(previous_level)
    return "\n".join(texts + collect.messages)


_baselines = {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=st.text(min_size=5, max_size=24), shape=st.sampled_from(URL_SHAPES), via_environment=st.booleans())
def test_no_part_of_a_password_is_ever_shown(password, shape, via_environment, tmp_path_factory):
    folder = tmp_path_factory.getbasetemp()
    if shape.startswith("reader:"):
        shape = str(folder / "no-such-folder" / shape)
    url = shape.format(raw=password, quoted=quote(password, safe=""))
    assume(not (via_environment and "\x00" in url))  # an environment variable cannot hold a NUL byte
    if (shape, via_environment) not in _baselines:  # what is shown anyway, whatever the password
        _baselines[shape, via_environment] = everything_shown(
            shape.format(raw=PLACEHOLDER, quoted=PLACEHOLDER), via_environment
        )
    baseline = _baselines[shape, via_environment]
    shown = everything_shown(url, via_environment)
    spellings = {password, quote(password, safe="")}
    for spelling in spellings:
        pieces = {spelling[start : start + 5] for start in range(len(spelling) - 4)}
        for piece in pieces:
            if piece not in baseline and piece not in url.replace(spelling, ""):
                assert piece not in shown, f"{piece!r} of the password shown for {shape}"


def test_unescaped_at_sign_in_a_password_is_an_error_that_hides_all_of_it():
    with pytest.raises(DatabaseError, match="percent-encoded as %40") as error:
        resolve_url("postgresql://user:p@ss@host/db")
    assert "p@ss" not in str(error.value) and "ss@" not in str(error.value)
    assert display_url("postgresql://user:p@ss@host/db") == "postgresql://user:***@host/db"
    assert hide_secrets("failed for p@ss and p%40ss", "postgresql://user:p%40ss@host/db") == "failed for *** and ***"
    assert (
        display_url("postgresql://host/db?user=u&password=s%3Dcret&x=1")
        == "postgresql://host/db?user=u&password=***&x=1"
    )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_percent_encoded_password_migrates_and_is_hidden(db_url):
    # The test server trusts local connections: any password is accepted. Alembic's config must
    # not read the "%" of "%40" as an interpolation.
    url = db_url.replace("://postgres@", "://postgres:s%40cr%25t@")
    catalogue = RunCatalogue.open(url)
    try:
        assert current_revision(catalogue.engine) == SCHEMA_HEAD
        assert "s@cr%t" not in catalogue.url and "%40" not in catalogue.url and "***" in catalogue.url
    finally:
        catalogue.engine.dispose()


# -- migrations by two processes at once -------------------------------------------------------

OPEN_AT = """
import sys, time
from bkgdb.store.catalogue import RunCatalogue
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
RunCatalogue.open(sys.argv[1]).engine.dispose()
"""


def test_two_first_opens_of_an_empty_database_at_once(db_url):
    start_at = str(time.time() + 4.0)  # after both interpreters have imported bkgdb
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT, db_url, start_at], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    engine = create_engine(db_url)
    try:
        assert current_revision(engine) == SCHEMA_HEAD
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


# -- unexpected database errors in a command ---------------------------------------------------


def test_unexpected_database_error_is_one_line_naming_the_database(db_url):
    catalogue = RunCatalogue.open(db_url)
    with catalogue.engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE background_inputs"))
        connection.execute(sa.text("DROP TABLE condition_models"))
        connection.execute(sa.text("DROP TABLE pieces"))
    catalogue.engine.dispose()
    result = CliRunner().invoke(app, ["--db", db_url, "cache"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: database {display_url(db_url)}"), result.output
    assert "pieces" in lines[0] and "SELECT" not in result.output and "Traceback" not in result.output


def test_readonly_sqlite_engine_uses_a_read_only_uri(tmp_path):
    RunCatalogue.open(str(tmp_path / "ro.sqlite")).engine.dispose()
    engine = create_engine(str(tmp_path / "ro.sqlite"), readonly=True)
    try:
        assert engine.url.database.startswith("file:") and engine.url.query["mode"] == "ro"
        with engine.connect() as connection:
            with pytest.raises(sa.exc.OperationalError, match="readonly database"):
                connection.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    finally:
        engine.dispose()
