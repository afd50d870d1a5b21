"""a person's relabel is the message's class

From this version a ``relabel`` writes the person's class on the message
(``message.triage_class``, ``triage_version`` 0, no confidence) and moves its count in
``message_rollup``, so the reports count it as the team said. Messages relabelled before take
their newest relabel here, and their counts move the same way.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 01:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOT_S = 900

#: Each relabelled message's newest relabel.
NEWEST = """SELECT l.message_id, l.value FROM triage_label AS l
    WHERE l.kind = 'sentiment' AND l.reason = 'relabel' AND l.message_id IS NOT NULL
    AND l.id = (SELECT max(k.id) FROM triage_label AS k WHERE k.kind = 'sentiment'
                AND k.reason = 'relabel' AND k.message_id = l.message_id)"""


def _class(learned: str) -> str:
    """The rollup class of message ``m`` (as ``socialcrm.rollups.class_sql`` counts it) with
    ``learned`` as its learned class."""
    return (
        f"CASE WHEN m.ignored THEN 0 WHEN {learned} = 'positive' THEN 1 "
        f"WHEN {learned} = 'negative' THEN -1 WHEN {learned} = 'neutral' THEN 0 "
        "WHEN m.sentiment IS NULL THEN 2 WHEN m.sentiment >= 0.05 THEN 1 "
        "WHEN m.sentiment <= -0.05 THEN -1 ELSE 0 END"
    )


def _move(dialect: str, cls: str, sign: int) -> str:
    slot = (
        f"floor(extract(epoch FROM m.created_at) / {SLOT_S})::bigint"
        if dialect == "postgresql"
        else f"CAST(strftime('%s', m.created_at) AS INTEGER) / {SLOT_S}"
    )
    return f"""INSERT INTO message_rollup (slot, channel, source, ignored, sentiment, n)
        SELECT {slot}, m.channel, m.source, m.ignored, {cls}, {sign} * count(*)
        FROM message AS m JOIN ({NEWEST}) AS r ON r.message_id = m.id
        WHERE m.direction = 'inbound' AND coalesce(m.triage_class, '') != r.value
        GROUP BY 1, 2, 3, 4, 5
        ON CONFLICT (slot, channel, source, ignored, sentiment)
        DO UPDATE SET n = message_rollup.n + excluded.n"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # The counts move first, while the messages still hold the class they were counted by.
    op.execute(sa.text(_move(dialect, _class("m.triage_class"), -1)))
    op.execute(sa.text(_move(dialect, _class("r.value"), 1)))
    op.execute(
        sa.text(
            f"""UPDATE message SET
                triage_class = (
                    SELECT r.value FROM ({NEWEST}) AS r WHERE r.message_id = message.id
                ),
                triage_confidence = NULL, triage_version = 0
            WHERE direction = 'inbound' AND id IN (SELECT r.message_id FROM ({NEWEST}) AS r)"""
        )
    )


def downgrade() -> None:
    # The classes stay as the team gave them: the older code reads them as a model's.
    pass
