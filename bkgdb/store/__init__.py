"""The catalogue in SQL: the only part of bkgdb that imports SQLAlchemy.

Database engines and migrations, the ORM models, runs, pieces, selection, flags, lineage.
"""
