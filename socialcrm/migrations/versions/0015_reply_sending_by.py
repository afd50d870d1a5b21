"""which process is sending a reply

``reply.sending_by`` names the process that claimed a reply for sending (``daemon/pid``).
A reply left ``sending`` by a process that is no longer up is flagged for a person at once,
instead of after the two-minute grace that covers a send still in hand.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 03:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reply") as batch:
        batch.add_column(sa.Column("sending_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reply") as batch:
        batch.drop_column("sending_by")
