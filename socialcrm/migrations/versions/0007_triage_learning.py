"""the learned triage model: labels, model versions, and its reading of each message

- ``triage_label``: one row per person's (or import's) word on a message: its sentiment class
  or whether it needed a reply, with who, why (relabel, approve, edit, reject-no-reply,
  closed-without-reply, import) and the text it was about.
- ``triage_model``: each trained model, its fitted parameters as plain arrays (an .npz
  archive, never a pickle) with their SHA-256, its label counts, cross-validated scores and
  model card.
- ``message``: the model's class, reply need, their confidences and the model version.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 13:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "triage_label",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("external_id", sa.String(length=998), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("lang", sa.String(length=16), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("via", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("triage_label") as batch:
        batch.create_index("ix_triage_label_message_id", ["message_id"], unique=False)
        batch.create_index("ix_triage_label_key", ["channel", "external_id", "kind"], unique=False)
    op.create_table(
        "triage_model",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("label_counts", _JSON, nullable=False),
        sa.Column("scores", _JSON, nullable=False),
        sa.Column("card", _JSON, nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("triage_class", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("triage_confidence", sa.Float(), nullable=True))
        batch.add_column(sa.Column("needs_reply", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("needs_reply_confidence", sa.Float(), nullable=True))
        batch.add_column(sa.Column("triage_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message") as batch:
        for name in (
            "triage_version",
            "needs_reply_confidence",
            "needs_reply",
            "triage_confidence",
            "triage_class",
        ):
            batch.drop_column(name)
    op.drop_table("triage_model")
    with op.batch_alter_table("triage_label") as batch:
        batch.drop_index("ix_triage_label_key")
        batch.drop_index("ix_triage_label_message_id")
    op.drop_table("triage_label")
