"""a claim on a reply's approval card, written before the card is posted

``reply.chat_claim`` is a unique marker stored (and committed) before ``chat.postMessage`` and
sent in the card's message metadata; ``reply.chat_claimed_at`` bounds the channel history a
later leader searches for that card when the poster died before storing the card's ts.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 14:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reply") as batch:
        batch.add_column(sa.Column("chat_claim", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("chat_claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reply") as batch:
        batch.drop_column("chat_claimed_at")
        batch.drop_column("chat_claim")
