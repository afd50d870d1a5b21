"""a reply's platform constraints, known before approval

``reply.issues`` holds what the channel's connector said about the reply when it was drafted,
edited or approved (``[{"reason": ..., "blocking": ...}]``): shown on the approval card and by
``show``; a blocking one stops the approval. Null for replies drafted before this.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reply") as batch:
        batch.add_column(
            sa.Column(
                "issues", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("reply") as batch:
        batch.drop_column("issues")
