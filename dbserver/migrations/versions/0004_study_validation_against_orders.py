"""study validation against orders

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 07:13:27.016113
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('validation_status', sa.String(length=16), nullable=False,
                                      server_default='unverified'))
        batch_op.add_column(sa.Column('validation_detail', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('order_fk', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_studies_validation_status'), ['validation_status'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_studies_order_fk_orders'), 'orders', ['order_fk'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_studies_order_fk_orders'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_studies_validation_status'))
        batch_op.drop_column('order_fk')
        batch_op.drop_column('validation_detail')
        batch_op.drop_column('validation_status')

