"""Alembic migrations of the bkgdb schema (installed as ``bkgdb.migrations``)."""
