"""the lossy target (PSNR, 0 = lossless) a web-cache entry was made for

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webcache_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lossy_psnr', sa.Float(), nullable=False, server_default='0'))
    # entries made lossy before the target was recorded: unknown target, so the
    # sweeper re-curates them whatever PACS_CURATOR_LOSSY_PSNR is now
    op.execute("UPDATE webcache_entries SET lossy_psnr = -1 WHERE lossy")


def downgrade() -> None:
    with op.batch_alter_table('webcache_entries', schema=None) as batch_op:
        batch_op.drop_column('lossy_psnr')
