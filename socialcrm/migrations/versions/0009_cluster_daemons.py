"""the daemons sharing one database: who is up, since when, and what each holds

One row per daemon name, written by the daemon itself on start and on every heartbeat.
Whether a daemon is up is not read from this row but from PostgreSQL's own lock table (its
membership advisory lock dies with its session); the row is what an operator reads.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 13:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json = sa.JSON().with_variant(JSONB(), "postgresql")
    op.create_table(
        "daemon",
        sa.Column("name", sa.String(length=128), primary_key=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("backend_pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sources", json, nullable=False),
        sa.Column("jobs", json, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("daemon")
