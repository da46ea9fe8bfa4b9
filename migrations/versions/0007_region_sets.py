"""Exclusion regions stored once per distinct list (``region_sets``); indexes for large catalogues.

``pieces.regions`` (a JSON list per piece) moves to ``region_sets`` (one row per distinct list,
keyed by the SHA-256 of its canonical JSON) and ``pieces.region_set_id`` refers to it; a piece
without regions refers to none. The runs of a field share their regions, which were most of a 2D
piece's bytes. ``ix_runs_selection`` gains ``datastore_id``, so the selection reads what it
returns of a run from the index alone, and ``ix_pieces_empty`` (partial) holds the empty pieces,
which every selection excludes.

On SQLite the pieces table is rebuilt (batch mode); ``background_inputs`` is kept aside around the
rebuilds, as in revision 0006, so that dropping the old table does not clear its piece ids.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import hashlib
import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
KEPT = "_bkgdb_0007_inputs"
#: Pieces read per round trip while their regions are moved.
CHUNK = 2000
EMPTY_PIECE = "NOT (ontime_s > 0 AND n_kept + n_excluded > 0)"
SELECTION_COLUMNS = ["zenith_deg", "az_deg", "glat_deg", "n_tels", "tstart_mjd", "status", "obs_id", "ontime_s"]


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _keep_inputs() -> None:
    if _sqlite():
        op.execute(f"CREATE TEMP TABLE {KEPT} AS SELECT * FROM background_inputs")


def _restore_inputs() -> None:
    if _sqlite():
        op.execute("DELETE FROM background_inputs")
        op.execute(f"INSERT INTO background_inputs SELECT * FROM {KEPT}")
        op.execute(f"DROP TABLE {KEPT}")


def _move_regions_to_sets() -> None:
    """One region set per distinct non-empty list; each piece refers to its list's set."""
    connection = op.get_bind()
    pieces = sa.table("pieces", sa.column("id"), sa.column("regions", JSONType), sa.column("region_set_id"))
    sets = sa.table("region_sets", sa.column("id"), sa.column("sha256"), sa.column("regions", JSONType))
    set_ids: dict[str, int] = {}
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(pieces.c.id, pieces.c.regions).where(pieces.c.id > last_id).order_by(pieces.c.id).limit(CHUNK)
        ).all()
        if not rows:
            break
        last_id = rows[-1].id
        updates = []
        for piece_id, regions in rows:
            if not regions:
                continue
            # As bkgdb.store.regions.regions_digest (not imported: a migration keeps its own code).
            digest = hashlib.sha256(json.dumps(regions, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            if digest not in set_ids:
                set_ids[digest] = connection.execute(
                    sa.insert(sets).values(sha256=digest, regions=regions).returning(sets.c.id)
                ).scalar_one()
            updates.append({"piece_id": piece_id, "set_id": set_ids[digest]})
        if updates:
            connection.execute(
                sa.update(pieces).where(pieces.c.id == sa.bindparam("piece_id")).values(
                    region_set_id=sa.bindparam("set_id")),
                updates,
            )


def upgrade():
    op.create_table(
        "region_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("regions", JSONType, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_region_sets")),
        sa.UniqueConstraint("sha256", name=op.f("uq_region_sets_sha256")),
    )
    _keep_inputs()
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("region_set_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_pieces_region_set_id"), ["region_set_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_pieces_region_set_id_region_sets"), "region_sets",
                                    ["region_set_id"], ["id"])
    _move_regions_to_sets()
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.drop_column("regions")
    _restore_inputs()
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_selection")
        batch_op.create_index("ix_runs_selection", [*SELECTION_COLUMNS, "datastore_id"], unique=False)
    op.create_index("ix_pieces_empty", "pieces", ["binning_id", "exclusion_id", "run_id"], unique=False,
                    sqlite_where=sa.text(EMPTY_PIECE), postgresql_where=sa.text(EMPTY_PIECE))


def downgrade():
    op.drop_index("ix_pieces_empty", table_name="pieces")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_selection")
        batch_op.create_index("ix_runs_selection", SELECTION_COLUMNS, unique=False)
    _keep_inputs()
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("regions", JSONType, nullable=True))
    empty = "'[]'" if _sqlite() else "'[]'::jsonb"
    op.execute("UPDATE pieces SET regions = COALESCE((SELECT regions FROM region_sets "
               f"WHERE region_sets.id = pieces.region_set_id), {empty})")
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.alter_column("regions", existing_type=JSONType, nullable=False)
        batch_op.drop_constraint(batch_op.f("fk_pieces_region_set_id_region_sets"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_pieces_region_set_id"))
        batch_op.drop_column("region_set_id")
    _restore_inputs()
    op.drop_table("region_sets")
