"""An index commits every run without waiting for the disk each time, on SQLite and PostgreSQL."""

import sqlalchemy as sa

from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import session_scope
from bkgdb.store.indexing import _commit_without_waiting_for_disk


def setting(session: sa.orm.Session) -> str:
    if session.get_bind().dialect.name == "postgresql":
        return str(session.execute(sa.text("SHOW synchronous_commit")).scalar())
    return str(session.execute(sa.text("PRAGMA synchronous")).scalar())


def test_index_sessions_commit_without_waiting_for_the_disk(catalogue: RunCatalogue) -> None:
    postgresql = catalogue.engine.dialect.name == "postgresql"
    with session_scope(catalogue.engine) as session:
        _commit_without_waiting_for_disk(session)
        for _ in range(2):  # every transaction of the session
            assert setting(session) == ("off" if postgresql else "1")
            session.commit()
    with session_scope(catalogue.engine) as other:
        # PostgreSQL: only the index's sessions; SQLite: every WAL connection (NORMAL is 1).
        assert setting(other) == ("on" if postgresql else "1")


def test_sqlite_catalogues_are_wal_files(tmp_path: object) -> None:
    catalogue = RunCatalogue.open(f"sqlite:///{tmp_path}/catalogue.sqlite")
    with catalogue.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    catalogue.engine.dispose()
