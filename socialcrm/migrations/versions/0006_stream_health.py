"""per-stream health of a source

``sourcestate.streams`` keeps, by stream name (mentions, a search, one subreddit, one
hashtag), the health of each stream that failed while the rest of its source worked: its
state (failing | stopped), failures, last error, since when, when it is tried again, and for a
stopped stream the fingerprint of the settings it failed with. NULL means every stream is well.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sourcestate") as batch:
        batch.add_column(
            sa.Column(
                "streams", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("sourcestate") as batch:
        batch.drop_column("streams")
