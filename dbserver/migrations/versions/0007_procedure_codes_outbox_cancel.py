"""procedure codes of orders; outbox messages can be cancelled

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 09:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('procedure_code_value', sa.String(length=16), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('procedure_coding_scheme', sa.String(length=16), nullable=False,
                                      server_default=''))
    with op.batch_alter_table('hl7_outbox', schema=None) as batch_op:
        batch_op.alter_column('state', existing_type=sa.String(length=8), type_=sa.String(length=16),
                              existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('hl7_outbox', schema=None) as batch_op:
        batch_op.alter_column('state', existing_type=sa.String(length=16), type_=sa.String(length=8),
                              existing_nullable=False)
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('procedure_coding_scheme')
        batch_op.drop_column('procedure_code_value')
