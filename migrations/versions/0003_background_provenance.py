"""Background provenance: what each assembled background was built from.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade():
    op.create_table('backgrounds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('target_run_id', sa.Integer(), nullable=True),
    sa.Column('target_obs_id', sa.BigInteger(), nullable=False),
    sa.Column('binning_id', sa.Integer(), nullable=True),
    sa.Column('exclusion_id', sa.Integer(), nullable=True),
    sa.Column('selection', JSONType, nullable=False),
    sa.Column('obs_ids', JSONType, nullable=False),
    sa.Column('n_runs', sa.Integer(), nullable=False),
    sa.Column('ontime_s', sa.Float(), nullable=False),
    sa.Column('smoothing', sa.String(length=16), nullable=False),
    sa.Column('output_path', sa.String(length=2048), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['binning_id'], ['binnings.id'], name=op.f('fk_backgrounds_binning_id_binnings'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['exclusion_id'], ['exclusion_settings.id'], name=op.f('fk_backgrounds_exclusion_id_exclusion_settings'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['target_run_id'], ['runs.id'], name=op.f('fk_backgrounds_target_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_backgrounds'))
    )
    with op.batch_alter_table('backgrounds') as batch_op:
        batch_op.create_index(batch_op.f('ix_backgrounds_target_obs_id'), ['target_obs_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_backgrounds_target_run_id'), ['target_run_id'], unique=False)



def downgrade():
    with op.batch_alter_table('backgrounds') as batch_op:
        batch_op.drop_index(batch_op.f('ix_backgrounds_target_run_id'))
        batch_op.drop_index(batch_op.f('ix_backgrounds_target_obs_id'))

    op.drop_table('backgrounds')
