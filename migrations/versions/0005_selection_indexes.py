"""Indexes that let run selection scan index ranges: selection criteria on runs, a setting's pieces.

``ix_runs_selection`` (zenith, azimuth, latitude, telescopes, start, status, OBS_ID,
ontime) replaces the single
zenith index: a zenith range is scanned in it and the other criteria are tested on its entries.
``ix_pieces_setting_events`` counts a binning and exclusion setting's pieces and finds the empty
ones without reading the pieces' arrays.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_selection", ["zenith_deg", "az_deg", "glat_deg", "n_tels", "tstart_mjd",
                                                    "status", "obs_id", "ontime_s"], unique=False)
        batch_op.drop_index("ix_runs_zenith_deg")
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.create_index("ix_pieces_setting_events", ["binning_id", "exclusion_id", "ontime_s", "n_kept",
                                                           "n_excluded", "run_id"], unique=False)


def downgrade():
    with op.batch_alter_table("pieces", schema=None) as batch_op:
        batch_op.drop_index("ix_pieces_setting_events")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_zenith_deg", ["zenith_deg"], unique=False)
        batch_op.drop_index("ix_runs_selection")
