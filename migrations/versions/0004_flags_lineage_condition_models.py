"""Quality flags on runs, the pieces each background used, cached condition models.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade():
    op.create_table('run_flags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('obs_id', sa.BigInteger(), nullable=False),
    sa.Column('flag', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('author', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_flags'))
    )
    with op.batch_alter_table('run_flags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_flags_obs_id'), ['obs_id'], unique=False)

    op.create_table('condition_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('binning_id', sa.Integer(), nullable=False),
    sa.Column('exclusion_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('archive_digest', sa.String(length=64), nullable=False),
    sa.Column('n_runs', sa.Integer(), nullable=False),
    sa.Column('params', JSONType, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['binning_id'], ['binnings.id'], name=op.f('fk_condition_models_binning_id_binnings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['exclusion_id'], ['exclusion_settings.id'], name=op.f('fk_condition_models_exclusion_id_exclusion_settings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_condition_models')),
    sa.UniqueConstraint('binning_id', 'exclusion_id', 'kind', 'archive_digest', name=op.f('uq_condition_models_binning_id_exclusion_id_kind_archive_digest'))
    )
    with op.batch_alter_table('condition_models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_condition_models_binning_id'), ['binning_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_condition_models_exclusion_id'), ['exclusion_id'], unique=False)

    op.create_table('background_inputs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('background_id', sa.Integer(), nullable=False),
    sa.Column('piece_id', sa.Integer(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('obs_id', sa.BigInteger(), nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=True),
    sa.Column('piece_created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('weight', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['background_id'], ['backgrounds.id'], name=op.f('fk_background_inputs_background_id_backgrounds'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['piece_id'], ['pieces.id'], name=op.f('fk_background_inputs_piece_id_pieces'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_background_inputs_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_background_inputs'))
    )
    with op.batch_alter_table('background_inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_background_inputs_background_id'), ['background_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_background_inputs_obs_id'), ['obs_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_background_inputs_piece_id'), ['piece_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_background_inputs_run_id'), ['run_id'], unique=False)



def downgrade():
    with op.batch_alter_table('background_inputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_background_inputs_run_id'))
        batch_op.drop_index(batch_op.f('ix_background_inputs_piece_id'))
        batch_op.drop_index(batch_op.f('ix_background_inputs_obs_id'))
        batch_op.drop_index(batch_op.f('ix_background_inputs_background_id'))

    op.drop_table('background_inputs')
    with op.batch_alter_table('condition_models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_condition_models_exclusion_id'))
        batch_op.drop_index(batch_op.f('ix_condition_models_binning_id'))

    op.drop_table('condition_models')
    with op.batch_alter_table('run_flags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_flags_obs_id'))

    op.drop_table('run_flags')
