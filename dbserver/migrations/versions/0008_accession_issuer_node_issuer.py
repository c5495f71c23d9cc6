"""issuer of accession number of studies; default issuer of patient ID per node

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('issuer_of_accession_number', sa.String(length=64), nullable=False,
                                      server_default=''))
    with op.batch_alter_table('dicom_nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False,
                                      server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('dicom_nodes', schema=None) as batch_op:
        batch_op.drop_column('issuer_of_patient_id')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('issuer_of_accession_number')
