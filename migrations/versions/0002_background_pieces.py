"""Background pieces: binnings, exclusion settings and per-run pieces.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade():
    op.create_table('binnings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('params', JSONType, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_binnings')),
    sa.UniqueConstraint('hash', name=op.f('uq_binnings_hash'))
    )
    op.create_table('exclusion_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('params', JSONType, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exclusion_settings')),
    sa.UniqueConstraint('hash', name=op.f('uq_exclusion_settings_hash'))
    )
    op.create_table('pieces',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('binning_id', sa.Integer(), nullable=False),
    sa.Column('exclusion_id', sa.Integer(), nullable=False),
    sa.Column('n_energy', sa.Integer(), nullable=False),
    sa.Column('n_offset', sa.Integer(), nullable=False),
    sa.Column('counts_dtype', sa.String(length=8), nullable=False),
    sa.Column('exposure_dtype', sa.String(length=8), nullable=False),
    sa.Column('counts', sa.LargeBinary(), nullable=False),
    sa.Column('excluded_counts', sa.LargeBinary(), nullable=False),
    sa.Column('exposure_s', sa.LargeBinary(), nullable=False),
    sa.Column('ontime_s', sa.Float(), nullable=False),
    sa.Column('livetime_s', sa.Float(), nullable=True),
    sa.Column('n_kept', sa.BigInteger(), nullable=False),
    sa.Column('n_excluded', sa.BigInteger(), nullable=False),
    sa.Column('regions', JSONType, nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['binning_id'], ['binnings.id'], name=op.f('fk_pieces_binning_id_binnings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['exclusion_id'], ['exclusion_settings.id'], name=op.f('fk_pieces_exclusion_id_exclusion_settings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_pieces_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pieces')),
    sa.UniqueConstraint('run_id', 'binning_id', 'exclusion_id', name=op.f('uq_pieces_run_id_binning_id_exclusion_id'))
    )
    with op.batch_alter_table('pieces') as batch_op:
        batch_op.create_index(batch_op.f('ix_pieces_binning_id'), ['binning_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pieces_exclusion_id'), ['exclusion_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pieces_run_id'), ['run_id'], unique=False)



def downgrade():
    with op.batch_alter_table('pieces') as batch_op:
        batch_op.drop_index(batch_op.f('ix_pieces_run_id'))
        batch_op.drop_index(batch_op.f('ix_pieces_exclusion_id'))
        batch_op.drop_index(batch_op.f('ix_pieces_binning_id'))

    op.drop_table('pieces')
    op.drop_table('exclusion_settings')
    op.drop_table('binnings')
