"""orders for the modality worklist

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 06:59:58.131408
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('orders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('issuer_of_accession_number', sa.String(length=64), nullable=False),
    sa.Column('patient_fk', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('placer_order_number', sa.String(length=64), nullable=False),
    sa.Column('filler_order_number', sa.String(length=64), nullable=False),
    sa.Column('requested_procedure_id', sa.String(length=16), nullable=False),
    sa.Column('requested_procedure_description', sa.String(length=64), nullable=False),
    sa.Column('scheduled_procedure_step_id', sa.String(length=16), nullable=False),
    sa.Column('scheduled_procedure_step_description', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('scheduled_station_ae_title', sa.String(length=16), nullable=False),
    sa.Column('scheduled_station_name', sa.String(length=16), nullable=False),
    sa.Column('scheduled_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('scheduled_performing_physician_name', sa.String(length=324), nullable=False),
    sa.Column('referring_physician_name', sa.String(length=324), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_fk'], ['patients.id'], name=op.f('fk_orders_patient_fk_patients')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('accession_number', 'issuer_of_accession_number', name=op.f('uq_orders_accession_number_issuer_of_accession_number'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_patient_fk'), ['patient_fk'], unique=False)
        batch_op.create_index('ix_orders_scheduled', ['status', 'scheduled_start'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_scheduled')
        batch_op.drop_index(batch_op.f('ix_orders_patient_fk'))

    op.drop_table('orders')
