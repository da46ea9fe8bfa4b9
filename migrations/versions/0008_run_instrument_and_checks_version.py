"""Runs record their instrument (``TELESCOP``) and the version of the run checks behind their status.

``runs.instrument`` (in ``ix_runs_selection``, so that the "same instrument" criterion is tested
on index entries like the others, and first in ``ix_runs_instrument``, which also counts the runs
left to read again) is read from the EVENTS header when a run is indexed.
``runs.checks_version`` is the version of bkgdb's run checks (`bkgdb.makers.run.RUN_CHECKS_VERSION`)
that gave the run its status. Runs catalogued before this revision get version 0 and no
instrument: the next ``bkgdb index`` of their datastore reads them again, with today's checks.

Only columns and indexes are added, so SQLite needs no table rebuild (which would run the
``ON DELETE`` actions of the tables referring to runs). The downgrade drops the columns with
SQLite's own ``ALTER TABLE ... DROP COLUMN`` (SQLite 3.35 or later) for the same reason.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SELECTION_COLUMNS = ["zenith_deg", "az_deg", "glat_deg", "n_tels", "tstart_mjd", "status", "obs_id", "ontime_s",
                     "datastore_id"]


def upgrade():
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instrument", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("checks_version", sa.Integer(), nullable=True))
        batch_op.create_index("ix_runs_instrument", ["instrument", "checks_version", "status"], unique=False)
        batch_op.drop_index("ix_runs_selection")
        batch_op.create_index("ix_runs_selection", [*SELECTION_COLUMNS, "instrument"], unique=False)
    # Checked by an older bkgdb: the next index reads these runs again.
    op.execute("UPDATE runs SET checks_version = 0")


def downgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    # Checked before anything changes: a refusal leaves the catalogue at 0008 with its indexes.
    if sqlite and sqlite3.sqlite_version_info < (3, 35):
        raise RuntimeError(f"downgrading below revision 0008 needs SQLite 3.35 or later, not {sqlite3.sqlite_version}")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_selection")
        batch_op.create_index("ix_runs_selection", SELECTION_COLUMNS, unique=False)
        batch_op.drop_index("ix_runs_instrument")
    if sqlite:
        # Not batch mode: rebuilding runs would delete every piece (ON DELETE CASCADE).
        op.execute("ALTER TABLE runs DROP COLUMN checks_version")
        op.execute("ALTER TABLE runs DROP COLUMN instrument")
        return
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("checks_version")
        batch_op.drop_column("instrument")
