"""patient merges, RIS domains, reports, the HL7 outbox, purges

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:02:48
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ris_domains',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('sending_facility', sa.String(length=255), nullable=False),
    sa.Column('report_host', sa.String(length=255), nullable=False),
    sa.Column('report_port', sa.Integer(), nullable=True),
    sa.Column('receiving_application', sa.String(length=64), nullable=False),
    sa.Column('description', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ris_domains')),
    sa.UniqueConstraint('issuer', name=op.f('uq_ris_domains_issuer'))
    )
    with op.batch_alter_table('ris_domains', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ris_domains_sending_facility'), ['sending_facility'], unique=False)

    op.create_table('patient_prior_ids',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_fk', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=8), nullable=False),
    sa.Column('message_control_id', sa.String(length=64), nullable=False),
    sa.Column('replaced_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_fk'], ['patients.id'], name=op.f('fk_patient_prior_ids_patient_fk_patients')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_prior_ids'))
    )
    with op.batch_alter_table('patient_prior_ids', schema=None) as batch_op:
        batch_op.create_index('ix_patient_prior_ids_key', ['patient_id', 'issuer_of_patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_prior_ids_patient_fk'), ['patient_fk'], unique=False)

    op.create_table('reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_fk', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('author', sa.String(length=324), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_fk'], ['studies.id'], name=op.f('fk_reports_study_fk_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports'))
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reports_study_fk'), ['study_fk'], unique=False)

    op.create_table('hl7_outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_control_id', sa.String(length=64), nullable=False),
    sa.Column('message_type', sa.String(length=32), nullable=False),
    sa.Column('report_fk', sa.Integer(), nullable=True),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('destination', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['report_fk'], ['reports.id'], name=op.f('fk_hl7_outbox_report_fk_reports')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hl7_outbox')),
    sa.UniqueConstraint('message_control_id', name=op.f('uq_hl7_outbox_message_control_id'))
    )
    with op.batch_alter_table('hl7_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_hl7_outbox_due', ['state', 'next_attempt_at'], unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=8), nullable=False, server_default='hl7'))

    with op.batch_alter_table('object_copies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purge_requested_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_object_copies_purge_requested_at'), ['purge_requested_at'],
                              unique=False)

    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ris_updated_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reading_status', sa.String(length=16), nullable=False,
                                      server_default='unread'))



def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('reading_status')

    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_column('ris_updated_at')

    with op.batch_alter_table('object_copies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_object_copies_purge_requested_at'))
        batch_op.drop_column('purge_requested_at')

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('source')

    with op.batch_alter_table('hl7_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_hl7_outbox_due')

    op.drop_table('hl7_outbox')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reports_study_fk'))

    op.drop_table('reports')
    with op.batch_alter_table('patient_prior_ids', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_prior_ids_patient_fk'))
        batch_op.drop_index('ix_patient_prior_ids_key')

    op.drop_table('patient_prior_ids')
    with op.batch_alter_table('ris_domains', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ris_domains_sending_facility'))

    op.drop_table('ris_domains')
