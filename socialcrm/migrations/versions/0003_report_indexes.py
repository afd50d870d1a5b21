"""report indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 08:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE_REPORT = [
    "created_at",
    "direction",
    "ignored",
    "channel",
    "source",
    "sentiment",
    "intent",
    "customer_id",
    "tags",
]
TICKET = [
    ("ix_ticket_report_opened", ["opened_at", "team"]),
    ("ix_ticket_report_first_response", ["first_response_at", "opened_at", "team"]),
    ("ix_ticket_report_resolved", ["resolved_at", "opened_at", "team"]),
    (
        "ix_ticket_report_first_response_due",
        ["first_response_due_at", "first_response_at", "team"],
    ),
    ("ix_ticket_report_resolution_due", ["resolution_due_at", "resolved_at", "team"]),
]
CUSTOMER = [
    ("ix_customer_first_seen_at", ["first_seen_at"]),
    ("ix_customer_lifetime_value", ["lifetime_value", "id"]),
    ("ix_customer_reach", ["reach", "id"]),
]


def upgrade() -> None:
    op.create_index("ix_message_report", "message", MESSAGE_REPORT, unique=False)
    # The due-time indexes lead the wider report indexes that replace them.
    op.drop_index("ix_ticket_first_response_due_at", table_name="ticket")
    op.drop_index("ix_ticket_resolution_due_at", table_name="ticket")
    for name, columns in TICKET:
        op.create_index(name, "ticket", columns, unique=False)
    for name, columns in CUSTOMER:
        op.create_index(name, "customer", columns, unique=False)


def downgrade() -> None:
    for name, _ in reversed(CUSTOMER):
        op.drop_index(name, table_name="customer")
    for name, _ in reversed(TICKET):
        op.drop_index(name, table_name="ticket")
    op.create_index("ix_ticket_resolution_due_at", "ticket", ["resolution_due_at"], unique=False)
    op.create_index(
        "ix_ticket_first_response_due_at", "ticket", ["first_response_due_at"], unique=False
    )
    op.drop_index("ix_message_report", table_name="message")
