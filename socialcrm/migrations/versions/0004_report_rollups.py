"""report rollups, and a narrower report index

Counts of inbound messages per 15-minute UTC slot, kept by triggers on ``message`` so that
every writer (the pipeline, imports, a hand-written fix in SQL) keeps them true. Reports read
them instead of scanning the messages: a slot is 15 minutes because every time zone in use
today is a whole number of quarter hours from UTC, so local days and hours are unions of slots.

- ``message_rollup``: per slot, channel, source, ignored and sentiment class (1 positive,
  -1 negative, 0 neutral, 2 unscored; ignored messages are all class 0).
- ``topic_rollup``: per slot, the intents (kind ``intent``) and tags (kind ``tag``, each tag
  once per message) of the messages that are not ignored.

With the rollups answering for channels, sources, intents and tags, the report index on
``message`` keeps only the columns the per-customer counts and the quoted messages read,
which makes every stored message cheaper to write.

The sentiment thresholds (+-0.05) are the report's; changing them needs a migration that
rebuilds the rollups. A migration that rebuilds the ``message`` table on SQLite
(``batch_alter_table``) drops its triggers and must create them again.

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
WATCHED = "channel, source, direction, ignored, sentiment, intent, tags, created_at"


def _class(row: str) -> str:
    return (
        f"CASE WHEN {row}.ignored THEN 0 WHEN {row}.sentiment IS NULL THEN 2 "
        f"WHEN {row}.sentiment >= 0.05 THEN 1 WHEN {row}.sentiment <= -0.05 THEN -1 ELSE 0 END"
    )


# -- SQLite: row triggers; one per operation and side (a trigger body has no IF). -----------


def _sqlite_body(row: str, d: int) -> str:
    slot = f"CAST(strftime('%s', {row}.created_at) AS INTEGER) / {SLOT_S}"
    add = f"n = n + ({d})"
    return f"""
    INSERT INTO message_rollup (slot, channel, source, ignored, sentiment, n)
    VALUES ({slot}, {row}.channel, {row}.source, {row}.ignored, {_class(row)}, {d})
    ON CONFLICT (slot, channel, source, ignored, sentiment) DO UPDATE SET {add};
    INSERT INTO topic_rollup (slot, kind, key, n)
    SELECT {slot}, 'intent', {row}.intent, {d}
    WHERE NOT {row}.ignored AND coalesce({row}.intent, '') != ''
    ON CONFLICT (slot, kind, key) DO UPDATE SET {add};
    INSERT INTO topic_rollup (slot, kind, key, n)
    SELECT DISTINCT {slot}, 'tag', substr(CAST(value AS TEXT), 1, {TAG_CHARS}), {d}
    FROM json_each(CASE WHEN json_type({row}.tags) = 'array' THEN {row}.tags ELSE '[]' END)
    WHERE NOT {row}.ignored
    ON CONFLICT (slot, kind, key) DO UPDATE SET {add};
    """


SQLITE_TRIGGERS = {
    "message_rollup_insert": f"AFTER INSERT ON message WHEN NEW.direction = 'inbound' "
    f"BEGIN {_sqlite_body('NEW', 1)} END",
    "message_rollup_delete": f"AFTER DELETE ON message WHEN OLD.direction = 'inbound' "
    f"BEGIN {_sqlite_body('OLD', -1)} END",
    "message_rollup_update_old": f"AFTER UPDATE OF {WATCHED} ON message "
    f"WHEN OLD.direction = 'inbound' BEGIN {_sqlite_body('OLD', -1)} END",
    "message_rollup_update_new": f"AFTER UPDATE OF {WATCHED} ON message "
    f"WHEN NEW.direction = 'inbound' BEGIN {_sqlite_body('NEW', 1)} END",
}

# -- PostgreSQL: one row trigger function. ----------------------------------------------------

PG_ADD = f"""
CREATE FUNCTION message_rollup_add(m message, d integer) RETURNS void LANGUAGE sql AS $$
    INSERT INTO message_rollup AS r (slot, channel, source, ignored, sentiment, n)
    VALUES (floor(extract(epoch FROM m.created_at) / {SLOT_S})::bigint, m.channel, m.source,
            m.ignored, {_class("m")}, d)
    ON CONFLICT (slot, channel, source, ignored, sentiment) DO UPDATE SET n = r.n + d;
    INSERT INTO topic_rollup AS r (slot, kind, key, n)
    SELECT floor(extract(epoch FROM m.created_at) / {SLOT_S})::bigint, 'intent', m.intent, d
    WHERE NOT m.ignored AND coalesce(m.intent, '') != ''
    ON CONFLICT (slot, kind, key) DO UPDATE SET n = r.n + d;
    INSERT INTO topic_rollup AS r (slot, kind, key, n)
    SELECT DISTINCT floor(extract(epoch FROM m.created_at) / {SLOT_S})::bigint, 'tag',
           left(t, {TAG_CHARS}), d
    FROM jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(m.tags) = 'array' THEN m.tags ELSE '[]'::jsonb END) AS t
    WHERE NOT m.ignored
    ON CONFLICT (slot, kind, key) DO UPDATE SET n = r.n + d;
$$
"""
PG_TRIGGER_FUNCTION = """
CREATE FUNCTION message_rollup_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        IF OLD.direction = 'inbound' THEN
            PERFORM message_rollup_add(OLD, -1);
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF NEW.direction = 'inbound' THEN
            PERFORM message_rollup_add(NEW, 1);
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""
PG_TRIGGER = (
    f"CREATE TRIGGER message_rollup AFTER INSERT OR DELETE OR UPDATE OF {WATCHED} "
    "ON message FOR EACH ROW EXECUTE FUNCTION message_rollup_trigger()"
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
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(PG_ADD)
        op.execute(PG_TRIGGER_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        for name, body in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    for stmt in _backfill(dialect):
        op.execute(stmt)
    op.drop_index("ix_message_report", table_name="message")
    op.create_index("ix_message_report", "message", REPORT_INDEX, unique=False)


def downgrade() -> None:
    op.drop_index("ix_message_report", table_name="message")
    op.create_index("ix_message_report", "message", WIDE_REPORT_INDEX, unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER message_rollup ON message")
        op.execute("DROP FUNCTION message_rollup_trigger()")
        op.execute("DROP FUNCTION message_rollup_add(message, integer)")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("topic_rollup")
    op.drop_table("message_rollup")
