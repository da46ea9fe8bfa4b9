"""An index commits often without waiting for the disk each time, on SQLite and PostgreSQL."""

from pathlib import Path

import pytest
import sqlalchemy as sa
from test_query_plans import recorded_statements

from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import session_scope


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_index_transactions_commit_without_waiting_for_the_disk(
    catalogue: RunCatalogue, simulated_datastore: Path
) -> None:
    statements = recorded_statements(catalogue.engine, lambda: catalogue.index(simulated_datastore))
    assert "SET LOCAL synchronous_commit TO OFF" in [sql for sql, _ in statements]
    with session_scope(catalogue.engine) as other:  # only the index's transactions
        assert other.execute(sa.text("SHOW synchronous_commit")).scalar() == "on"


def test_sqlite_catalogues_are_wal_files(tmp_path: object) -> None:
    # Every WAL connection commits without an fsync each time (synchronous NORMAL is 1).
    catalogue = RunCatalogue.open(f"sqlite:///{tmp_path}/catalogue.sqlite")
    with catalogue.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    catalogue.engine.dispose()
