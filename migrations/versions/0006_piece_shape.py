"""Pieces of any geometry: one ``shape`` column; a background's runs only in ``background_inputs``.

``pieces.shape`` (a JSON list, energy first: ``[n_energy, n_offset]`` or ``[n_energy, n_lon,
n_lat]``) replaces ``n_energy`` and ``n_offset``; existing pieces get ``[n_energy, n_offset]``.
``backgrounds.obs_ids`` duplicated the ``background_inputs`` rows and is dropped; backgrounds
recorded before inputs were kept (revision 0003) first get one input per OBS_ID of their list,
with the run and piece they most likely used (the copy in the target's datastore, else the one
indexed first) as they are at migration time.

On SQLite the tables are rebuilt (batch mode). Dropping the old table would run its foreign-key
actions (``ON DELETE SET NULL`` / ``CASCADE`` on ``background_inputs``) inside the migration's
transaction, where they cannot be switched off, so ``background_inputs`` is kept aside and put
back around each rebuild.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
KEPT = "_bkgdb_0006_inputs"


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


def _json_array(*columns: str) -> str:
    function = "json_array" if _sqlite() else "jsonb_build_array"
    return f"{function}({', '.join(columns)})"


def _json_item(column: str, index: int) -> str:
    if _sqlite():
        return f"json_extract({column}, '$[{index}]')"
    return f"({column} ->> {index})::integer"


def _fill_missing_inputs() -> None:
    """One input per OBS_ID of each background that has none (recorded before revision 0004)."""
    connection = op.get_bind()
    backgrounds = sa.table("backgrounds", sa.column("id"), sa.column("target_run_id"), sa.column("binning_id"),
                           sa.column("exclusion_id"), sa.column("obs_ids", JSONType))
    inputs = sa.table("background_inputs", sa.column("background_id"), sa.column("piece_id"), sa.column("run_id"),
                      sa.column("obs_id"), sa.column("file_sha256"), sa.column("piece_created_at"),
                      sa.column("weight"))
    runs = sa.table("runs", sa.column("id"), sa.column("obs_id"), sa.column("datastore_id"))
    pieces = sa.table("pieces", sa.column("id"), sa.column("run_id"), sa.column("binning_id"),
                      sa.column("exclusion_id"), sa.column("file_sha256"), sa.column("created_at"))
    without_inputs = sa.select(backgrounds).where(
        ~sa.exists().where(inputs.c.background_id == backgrounds.c.id))
    for background in connection.execute(without_inputs).all():
        target_datastore = connection.scalar(
            sa.select(runs.c.datastore_id).where(runs.c.id == background.target_run_id))
        rows = []
        for obs_id in background.obs_ids or []:
            copies = connection.execute(sa.select(runs.c.id, runs.c.datastore_id).where(runs.c.obs_id == obs_id)
                                        .order_by(runs.c.datastore_id)).all()
            preferred = [run for run in copies if run.datastore_id == target_datastore] or copies
            run_id = preferred[0].id if preferred else None
            piece = None if run_id is None else connection.execute(sa.select(pieces).where(
                pieces.c.run_id == run_id, pieces.c.binning_id == background.binning_id,
                pieces.c.exclusion_id == background.exclusion_id)).first()
            rows.append({"background_id": background.id, "obs_id": int(obs_id), "run_id": run_id,
                         "piece_id": None if piece is None else piece.id,
                         "file_sha256": None if piece is None else piece.file_sha256,
                         "piece_created_at": None if piece is None else piece.created_at, "weight": 1.0})
        if rows:
            connection.execute(sa.insert(inputs), rows)


def upgrade():
    _fill_missing_inputs()
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shape", JSONType, nullable=True))
    op.execute(f"UPDATE pieces SET shape = {_json_array('n_energy', 'n_offset')}")
    _keep_inputs()
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.alter_column("shape", existing_type=JSONType, nullable=False)
        batch_op.drop_column("n_offset")
        batch_op.drop_column("n_energy")
    with op.batch_alter_table("backgrounds", schema=None) as batch_op:
        batch_op.drop_column("obs_ids")
    _restore_inputs()


def downgrade():
    connection = op.get_bind()
    n_3d = connection.scalar(sa.text(f"SELECT count(*) FROM pieces WHERE {_json_item('shape', 2)} IS NOT NULL"))
    if n_3d:
        raise RuntimeError(f"cannot go below revision 0006: {n_3d} pieces are 3D (FoV pixels), which older "
                           "schemas cannot hold; drop them first (`bkgdb cache --drop-binning HASH`)")
    with op.batch_alter_table("backgrounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("obs_ids", JSONType, nullable=True))
    if _sqlite():
        # Read through the background_id index: in input order (SQLite 3.40 has no ORDER BY in aggregates).
        listed = "(SELECT json_group_array(obs_id) FROM background_inputs WHERE background_id = backgrounds.id)"
    else:
        listed = ("COALESCE((SELECT jsonb_agg(obs_id ORDER BY id) FROM background_inputs "
                  "WHERE background_id = backgrounds.id), '[]'::jsonb)")
    op.execute(f"UPDATE backgrounds SET obs_ids = {listed}")
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_energy", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("n_offset", sa.Integer(), nullable=True))
    op.execute(f"UPDATE pieces SET n_energy = {_json_item('shape', 0)}, n_offset = {_json_item('shape', 1)}")
    _keep_inputs()
    with op.batch_alter_table("backgrounds", schema=None) as batch_op:
        batch_op.alter_column("obs_ids", existing_type=JSONType, nullable=False)
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.alter_column("n_energy", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("n_offset", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column("shape")
    _restore_inputs()
