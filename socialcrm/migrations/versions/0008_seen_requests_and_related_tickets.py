"""seen chat requests, and tickets that point at a related ticket

- ``seen_request``: every signed chat request let in, by a digest of its timestamp and
  signature, kept until its replay window has passed. Every daemon on the database asks it,
  so a request replayed after a restart or to another daemon is refused.
- ``ticket.related_ticket_id``: a ticket opened for a message that named another ticket
  (``[#123]``) its sender may not write into points at that ticket.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 13:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "seen_request",
        sa.Column("key", sa.String(length=128), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_seen_request_expires_at", "seen_request", ["expires_at"])
    with op.batch_alter_table("ticket") as batch:
        batch.add_column(sa.Column("related_ticket_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_ticket_related_ticket_id", "ticket", ["related_ticket_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("ticket") as batch:
        batch.drop_constraint("fk_ticket_related_ticket_id", type_="foreignkey")
        batch.drop_column("related_ticket_id")
    op.drop_index("ix_seen_request_expires_at", table_name="seen_request")
    op.drop_table("seen_request")
