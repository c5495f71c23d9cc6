"""the exact bytes of each HL7 message received (the MLLP payload)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for the rows logged before (only their decoded text is known) and
    # for the messages we send (their text is what went out, in UTF-8)
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('raw_bytes', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.drop_column('raw_bytes')
