"""Inserts that tolerate concurrent writers: ``INSERT ... ON CONFLICT`` on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

__all__ = ["upsert_insert", "insert_if_missing"]


def upsert_insert(session: Session, table: sa.Table) -> Any:
    """An INSERT on ``table`` with the ON CONFLICT clauses of the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(table)


def insert_if_missing(session: Session, model: Any, key_columns: list[str], values: dict) -> None:
    """Insert a row unless one with the same key exists; another indexer may add it at any moment."""
    statement = upsert_insert(session, model.__table__).values(**values)
    session.execute(statement.on_conflict_do_nothing(index_elements=key_columns))
