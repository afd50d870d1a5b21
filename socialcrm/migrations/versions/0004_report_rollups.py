"""report rollups, and a narrower report index

Counts of inbound messages per 15-minute UTC slot, for the reports (``socialcrm.rollups``
keeps them from here on, batch by batch):

- ``message_rollup``: per slot, channel, source, ignored and sentiment class (1 positive,
  -1 negative, 0 neutral, 2 unscored; ignored messages are all class 0).
- ``topic_rollup``: per slot, the intents (kind ``intent``) and tags (kind ``tag``, each tag
  once per message) of the messages that are not ignored.

They are filled here from the messages already stored. With the rollups answering for
channels, sources, intents and tags, the report index on ``message`` keeps only the columns
the per-customer counts and the quoted messages read, which makes every stored message
cheaper to write.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOT_S = 900
#: Longest tag kept in the rollup (a key of its primary key).
TAG_CHARS = 200
#: The report index before (0003) and after: the rollups answer for channel, source, intent
#: and tags, so the index keeps only what the per-customer counts and the quotes read.
WIDE_REPORT_INDEX = [
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
REPORT_INDEX = ["created_at", "direction", "ignored", "sentiment", "customer_id"]


def _class(row: str) -> str:
    return (
        f"CASE WHEN {row}.ignored THEN 0 WHEN {row}.sentiment IS NULL THEN 2 "
        f"WHEN {row}.sentiment >= 0.05 THEN 1 WHEN {row}.sentiment <= -0.05 THEN -1 ELSE 0 END"
    )


def _backfill(dialect: str) -> list[str]:
    """The rollups of the messages already stored."""
    if dialect == "postgresql":
        slot = f"floor(extract(epoch FROM m.created_at) / {SLOT_S})::bigint"
        tag, tags = (
            f"left(t, {TAG_CHARS})",
            (
                "CROSS JOIN LATERAL jsonb_array_elements_text(CASE WHEN jsonb_typeof(m.tags) = "
                "'array' THEN m.tags ELSE '[]'::jsonb END) AS t"
            ),
        )
    else:
        slot = f"CAST(strftime('%s', m.created_at) AS INTEGER) / {SLOT_S}"
        tag, tags = (
            f"substr(CAST(t.value AS TEXT), 1, {TAG_CHARS})",
            (", json_each(CASE WHEN json_type(m.tags) = 'array' THEN m.tags ELSE '[]' END) AS t"),
        )
    inbound = "m.direction = 'inbound'"
    return [
        f"""INSERT INTO message_rollup (slot, channel, source, ignored, sentiment, n)
        SELECT {slot}, m.channel, m.source, m.ignored, {_class("m")}, count(*)
        FROM message AS m WHERE {inbound} GROUP BY 1, 2, 3, 4, 5""",
        f"""INSERT INTO topic_rollup (slot, kind, key, n)
        SELECT {slot}, 'intent', m.intent, count(*) FROM message AS m
        WHERE {inbound} AND NOT m.ignored AND coalesce(m.intent, '') != '' GROUP BY 1, 3""",
        f"""INSERT INTO topic_rollup (slot, kind, key, n)
        SELECT {slot}, 'tag', {tag}, count(DISTINCT m.id) FROM message AS m {tags}
        WHERE {inbound} AND NOT m.ignored GROUP BY 1, 3""",
    ]


def upgrade() -> None:
    op.create_table(
        "message_rollup",
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("ignored", sa.Boolean(), nullable=False),
        sa.Column("sentiment", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("slot", "channel", "source", "ignored", "sentiment"),
    )
    op.create_table(
        "topic_rollup",
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("key", sa.String(length=TAG_CHARS), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("slot", "kind", "key"),
    )
    for stmt in _backfill(op.get_bind().dialect.name):
        op.execute(stmt)
    op.drop_index("ix_message_report", table_name="message")
    op.create_index("ix_message_report", "message", REPORT_INDEX, unique=False)


def downgrade() -> None:
    op.drop_index("ix_message_report", table_name="message")
    op.create_index("ix_message_report", "message", WIDE_REPORT_INDEX, unique=False)
    op.drop_table("topic_rollup")
    op.drop_table("message_rollup")
