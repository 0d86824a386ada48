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


#: The read delivery that revision 0005 would have booked at once, built from the slot in SQL.
_READ_PAYLOAD = {
    "sqlite": (
        "json_object('email', email, 'slot_hours', slot_seconds / 3600.0, 'send', "
        "json_object('delivery_id', send_delivery_id, 'operation', send_operation, "
        "'target', target, 'sent_at', sent_at))"
    ),
    "postgresql": (
        "json_build_object('email', email, 'slot_hours', slot_seconds / 3600.0, 'send', "
        "json_build_object('delivery_id', send_delivery_id, 'operation', send_operation, "
        "'target', target, 'sent_at', sent_at))::text"
    ),
}


def downgrade() -> None:
    # Reads still only scheduled become the pending read deliveries revision 0005 books at
    # once (due when their slot is), so going back loses none of them.
    dialect = op.get_bind().dialect.name
    payload = _READ_PAYLOAD["postgresql" if dialect == "postgresql" else "sqlite"]
    op.execute(sa.text(
        "INSERT INTO deliveries (direction, upstream, operation, target, email, clevertap_id, "
        "payload, state, attempts, deferrals, next_attempt_at, created_at, updated_at) "
        f"SELECT 'clevertap_to_mailmodo', 'mailmodo', 'contact.status', target, email, "
        f"clevertap_id, {payload}, 'pending', 0, 0, due_at, COALESCE(sent_at, due_at), "
        f"COALESCE(sent_at, due_at) FROM status_read_slots WHERE {SCHEDULED}"
    ))
    op.execute(sa.text(
        "UPDATE status_read_slots SET delivery_id = (SELECT max(d.id) FROM deliveries d "
        "WHERE d.operation = 'contact.status' AND d.state = 'pending' "
        "AND d.email = status_read_slots.email AND d.next_attempt_at = status_read_slots.due_at) "
        f"WHERE {SCHEDULED}"
    ))
    with op.batch_alter_table('status_read_slots', schema=None) as batch_op:
        batch_op.drop_index('ix_status_read_slots_scheduled', sqlite_where=sa.text(SCHEDULED), postgresql_where=sa.text(SCHEDULED))
        batch_op.drop_column('sent_at')
        batch_op.drop_column('clevertap_id')
        batch_op.drop_column('target')
        batch_op.drop_column('send_operation')
        batch_op.drop_column('send_delivery_id')
