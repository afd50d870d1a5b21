"""reply sending and chat cards

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reply", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("chat_channel", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("chat_ts", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("chat_shown", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reply", schema=None) as batch_op:
        batch_op.drop_column("chat_shown")
        batch_op.drop_column("chat_ts")
        batch_op.drop_column("chat_channel")
        batch_op.drop_column("next_attempt_at")
