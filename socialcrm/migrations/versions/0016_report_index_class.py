"""the report index covers the learned class

``ix_message_report`` gains ``triage_class``: the report's per-customer counts count each
message by the class its headline counts (the team's model's, where it read the message,
else the score's), and still read the index alone.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 23:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ["created_at", "direction", "ignored", "sentiment", "customer_id"]
REPORT_INDEX = [*BEFORE, "triage_class"]


def upgrade() -> None:
    op.drop_index("ix_message_report", table_name="message")
    op.create_index("ix_message_report", "message", REPORT_INDEX, unique=False)


def downgrade() -> None:
    op.drop_index("ix_message_report", table_name="message")
    op.create_index("ix_message_report", "message", BEFORE, unique=False)
