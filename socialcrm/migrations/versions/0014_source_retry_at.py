"""when a failing source is next polled

``sourcestate.retry_at`` is the wall-clock end of a failing source's backoff (or the
platform's reset time), stored with each failed poll and cleared by the next that works. A
daemon that takes the source over from one that died, or a restarted daemon, waits for it
instead of starting the backoff again from zero.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 16:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sourcestate") as batch:
        batch.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sourcestate") as batch:
        batch.drop_column("retry_at")
