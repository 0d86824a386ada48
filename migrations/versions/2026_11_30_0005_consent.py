"""consent: the state learnt and told per email, the consent log, the status-read slots, the claim index of sends

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


SENDS = "state = 'pending' AND upstream = 'mailmodo' AND operation <> 'contact.status'"


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_due_sends', ['next_attempt_at'], unique=False, sqlite_where=sa.text(SENDS), postgresql_where=sa.text(SENDS))

    op.create_table('consent_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('told', sa.Text(), nullable=False),
    sa.Column('echo', sa.Boolean(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_log'))
    )
    with op.batch_alter_table('consent_log', schema=None) as batch_op:
        batch_op.create_index('ix_consent_log_email_at', ['email', 'at'], unique=False)

    op.create_table('consent_states',
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('mailmodo_state', sa.String(length=16), nullable=True),
    sa.Column('mailmodo_reason', sa.Text(), nullable=True),
    sa.Column('mailmodo_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('told_mailmodo', sa.String(length=16), nullable=True),
    sa.Column('told_mailmodo_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('told_clevertap', sa.String(length=16), nullable=True),
    sa.Column('told_clevertap_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('email', name=op.f('pk_consent_states'))
    )
    op.create_table('status_read_slots',
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('slot_seconds', sa.Integer(), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('email', 'slot_seconds', name=op.f('pk_status_read_slots'))
    )


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_due_sends', sqlite_where=sa.text(SENDS), postgresql_where=sa.text(SENDS))
    op.drop_table('status_read_slots')
    op.drop_table('consent_states')
    with op.batch_alter_table('consent_log', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_log_email_at')

    op.drop_table('consent_log')
