"""a fingerprint of a source's settings, to retry a paused source when its credentials change

``sourcestate.settings_fingerprint`` is a SHA-256 of the source's settings (secrets included,
never the secrets themselves) taken when credentials were refused. At start, a paused source
whose settings no longer match is polled once more.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sourcestate") as batch:
        batch.add_column(sa.Column("settings_fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sourcestate") as batch:
        batch.drop_column("settings_fingerprint")
