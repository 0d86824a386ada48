"""scheduled status reads: a read slot keeps its send, and becomes a delivery when due

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


SCHEDULED = "delivery_id IS NULL"


def upgrade() -> None:
    # Every slot booked before this revision already has its read delivery (delivery_id set),
    # so none of them is in the new index and none is read twice.
    with op.batch_alter_table('status_read_slots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('send_delivery_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('send_operation', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('target', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('clevertap_id', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_status_read_slots_scheduled', ['due_at'], unique=False, sqlite_where=sa.text(SCHEDULED), postgresql_where=sa.text(SCHEDULED))


def downgrade() -> None:
    # Slots still only scheduled lose their read (the old schema has no place for the send).
    op.execute(sa.text(f"DELETE FROM status_read_slots WHERE {SCHEDULED}"))
    with op.batch_alter_table('status_read_slots', schema=None) as batch_op:
        batch_op.drop_index('ix_status_read_slots_scheduled', sqlite_where=sa.text(SCHEDULED), postgresql_where=sa.text(SCHEDULED))
        batch_op.drop_column('sent_at')
        batch_op.drop_column('clevertap_id')
        batch_op.drop_column('target')
        batch_op.drop_column('send_operation')
        batch_op.drop_column('send_delivery_id')
