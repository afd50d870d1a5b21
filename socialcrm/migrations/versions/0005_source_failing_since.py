"""when a source's running failure streak began

``sourcestate.failing_since`` is set by the first failed poll after a success and cleared by
the next poll that stores something, so the ``source_failing`` alert's threshold counts from
the streak's real start across restarts. Sources failing when this runs start their streak at
their last error.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sourcestate") as batch:
        batch.add_column(sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE sourcestate SET failing_since = last_error_at "
        "WHERE health = 'failing' AND consecutive_failures > 0"
    )


def downgrade() -> None:
    with op.batch_alter_table("sourcestate") as batch:
        batch.drop_column("failing_since")
