"""web cache

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 21:33:04
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('webcache_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('codec_version', sa.Integer(), nullable=False),
    sa.Column('wavelet_key', sa.String(length=255), nullable=False),
    sa.Column('wavelet_size', sa.BigInteger(), nullable=False),
    sa.Column('thumbnail_key', sa.String(length=255), nullable=False),
    sa.Column('thumbnail_size', sa.BigInteger(), nullable=False),
    sa.Column('levels', sa.Integer(), nullable=False),
    sa.Column('level_index', sa.Text(), nullable=False),
    sa.Column('lossy', sa.Boolean(), nullable=False),
    sa.Column('metadata_json', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('curated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_access_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webcache_entries')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_webcache_entries_sop_instance_uid'))
    )
    with op.batch_alter_table('webcache_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webcache_entries_last_access_at'), ['last_access_at'], unique=False)
        batch_op.create_index('ix_webcache_entries_state', ['state', 'queued_at'], unique=False)

    op.create_table('webcache_series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('built_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_access_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webcache_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_webcache_series_series_instance_uid'))
    )
    with op.batch_alter_table('webcache_series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webcache_series_last_access_at'), ['last_access_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('webcache_series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webcache_series_last_access_at'))

    op.drop_table('webcache_series')
    with op.batch_alter_table('webcache_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_webcache_entries_state')
        batch_op.drop_index(batch_op.f('ix_webcache_entries_last_access_at'))

    op.drop_table('webcache_entries')
