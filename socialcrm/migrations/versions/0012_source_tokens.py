"""tokens a source's connector obtained at run time

``sourcetoken`` keeps, per source, the OAuth tokens a connector got from a refresh grant (X
rotates its refresh token on every refresh, so the newest one must outlive a restart).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 13:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sourcetoken",
        sa.Column("source", sa.String(length=128), primary_key=True),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sourcetoken")
