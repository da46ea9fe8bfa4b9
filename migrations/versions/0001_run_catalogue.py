"""Run catalogue: datastores and their runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

RUN_INDEXES = [
    "az_deg", "datastore_id", "date_obs", "glat_deg", "muon_eff", "n_tels", "nsb_level",
    "object_name", "obs_id", "status", "tstart_mjd", "zenith_deg",
]


def upgrade():
    op.create_table(
        "datastores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("obs_index_meta", JSONType, nullable=False),
        sa.Column("first_indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datastores")),
        sa.UniqueConstraint("path", name=op.f("uq_datastores_path")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("datastore_id", sa.Integer(), nullable=False),
        sa.Column("obs_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        *[sa.Column(name, sa.Float(), nullable=True)
          for name in ("ra_deg", "dec_deg", "glon_deg", "glat_deg", "alt_deg", "zenith_deg", "az_deg",
                       "tstart_mjd", "tstop_mjd")],
        sa.Column("date_obs", sa.Date(), nullable=True),
        *[sa.Column(name, sa.Float(), nullable=True)
          for name in ("ontime_s", "livetime_s", "deadtime_fraction")],
        sa.Column("n_tels", sa.Integer(), nullable=True),
        sa.Column("tellist", sa.String(length=255), nullable=True),
        sa.Column("object_name", sa.String(length=255), nullable=True),
        sa.Column("nsb_level", sa.Float(), nullable=True),
        sa.Column("muon_eff", sa.Float(), nullable=True),
        sa.Column("event_count", sa.BigInteger(), nullable=True),
        sa.Column("file_path", sa.String(length=2048), nullable=True),
        sa.Column("file_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("file_mtime", sa.Float(), nullable=True),
        sa.Column("file_sha256", sa.String(length=64), nullable=True),
        sa.Column("row_sha256", sa.String(length=64), nullable=True),
        sa.Column("extra", JSONType, nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["datastore_id"], ["datastores.id"],
                                name=op.f("fk_runs_datastore_id_datastores"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("datastore_id", "obs_id", name=op.f("uq_runs_datastore_id_obs_id")),
    )
    with op.batch_alter_table("runs") as batch_op:
        for column in RUN_INDEXES:
            batch_op.create_index(batch_op.f(f"ix_runs_{column}"), [column], unique=False)


def downgrade():
    with op.batch_alter_table("runs") as batch_op:
        for column in RUN_INDEXES:
            batch_op.drop_index(batch_op.f(f"ix_runs_{column}"))
    op.drop_table("runs")
    op.drop_table("datastores")
