"""leases of gone workers: heartbeat pid namespace, index of leased rows

Revision ID: 0004
Revises: 0003_console
Create Date: 2026-11-30 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003_console'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pid_namespace', sa.String(length=96), nullable=True))
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index(
            'ix_deliveries_leased_by',
            ['leased_by'],
            unique=False,
            sqlite_where=sa.text('leased_by IS NOT NULL'),
            postgresql_where=sa.text('leased_by IS NOT NULL'),
        )


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(
            'ix_deliveries_leased_by',
            sqlite_where=sa.text('leased_by IS NOT NULL'),
            postgresql_where=sa.text('leased_by IS NOT NULL'),
        )
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.drop_column('pid_namespace')
