"""hl7 message log

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 07:02:33.944749
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hl7_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('direction', sa.String(length=3), nullable=False),
    sa.Column('remote', sa.String(length=255), nullable=False),
    sa.Column('message_type', sa.String(length=32), nullable=False),
    sa.Column('message_control_id', sa.String(length=64), nullable=False),
    sa.Column('sending_application', sa.String(length=255), nullable=False),
    sa.Column('sending_facility', sa.String(length=255), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hl7_messages'))
    )
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hl7_messages_at'), ['at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hl7_messages_at'))

    op.drop_table('hl7_messages')
