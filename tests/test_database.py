from pathlib import Path

import pytest
import sqlalchemy as sa

from bkgdb.database import create_engine, display_url, resolve_url
from bkgdb.errors import DatabaseError


def test_default_url_is_sqlite_file_in_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("BKGDB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_url() == f"sqlite:///{tmp_path / 'bkgdb.sqlite'}"


def test_environment_variable_then_explicit_url(tmp_path, monkeypatch):
    monkeypatch.setenv("BKGDB_URL", "sqlite:///from-env.sqlite")
    assert resolve_url() == "sqlite:///from-env.sqlite"
    assert resolve_url(str(tmp_path / "given.sqlite")) == f"sqlite:///{tmp_path / 'given.sqlite'}"


def test_postgresql_urls_use_psycopg3():
    assert resolve_url("postgresql://me@host/db").startswith("postgresql+psycopg://me@host/db")


def test_display_url_hides_password():
    shown = display_url("postgresql+psycopg://user:s3cret@host:5432/db")
    assert "s3cret" not in shown and "***" in shown
    with pytest.raises(DatabaseError) as error:
        resolve_url("postgresql://user:s3cret@host:port/db")
    assert "s3cret" not in str(error.value) and "***" in str(error.value)


@pytest.mark.parametrize("url, message", [
    ("postgresql://postgres@127.0.0.1:1/nothing", "cannot connect"),
    ("postgresql+nodriver://x@y/z", "malformed"),
    ("not a url://", "malformed"),
    ("oracle://x@y/z", "unsupported database"),
    ("sqlite:////no/such/folder/bkgdb.sqlite", "does not exist"),
])
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
