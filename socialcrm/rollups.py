"""The report's rollups: counts of inbound messages per 15-minute UTC slot.

``message_rollup`` counts by slot, channel, source, ignored and sentiment class (1 positive,
-1 negative, 0 neutral and every ignored message, 2 unscored); ``topic_rollup`` counts the
intents and tags (each tag once a message) of the messages that are not ignored. Reports read
them instead of the messages; a slot is 15 minutes because every time zone in use is a whole
number of quarter hours from UTC, so local days and hours are unions of slots.

The pipeline adds each batch's messages in the batch's own transaction, with one upsert per
table (``add``): a crash stores both or neither. Whatever writes inbound messages another way
(an import in SQL, a correction by hand, a deletion) must call ``rebuild`` afterwards, which
counts every stored message again: ``socialcrm db rebuild-rollups``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm.db import executemany
from socialcrm.models import ROLLUP_SLOT_S, ROLLUP_TAG_CHARS, MessageRollup, TopicRollup

#: Sentiment at or above which a message is positive, at or below which it is negative.
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05

#: The learned triage model's classes as rollup classes.
TRIAGE_CLASS = {"positive": 1, "neutral": 0, "negative": -1}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SLOT = timedelta(seconds=ROLLUP_SLOT_S)
_R: sa.Table = MessageRollup.__table__  # type: ignore[attr-defined]
_T: sa.Table = TopicRollup.__table__  # type: ignore[attr-defined]


def slot_of(at: datetime) -> int:
    """The 15-minute UTC slot of an aware timestamp."""
    return (at - EPOCH) // _SLOT


def slot_start(slot: int) -> datetime:
    """When a slot begins."""
    return EPOCH + _SLOT * slot


def class_sql(
    sentiment: sa.ColumnElement[Any],
    ignored: sa.ColumnElement[Any] | None = None,
    triage: sa.ColumnElement[Any] | None = None,
) -> sa.ColumnElement[int]:
    """``sentiment_class`` in SQL (with ``ignored`` None, the class of the score alone)."""
    whens: list[tuple[sa.ColumnElement[bool], int]] = [] if ignored is None else [(ignored, 0)]
    if triage is not None:
        whens += [(triage == name, value) for name, value in TRIAGE_CLASS.items()]
    whens += [
        (sentiment.is_(None), 2),
        (sentiment >= POSITIVE_AT, 1),
        (sentiment <= NEGATIVE_AT, -1),
    ]
    return sa.case(*whens, else_=0)


def sentiment_class(sentiment: float | None, ignored: bool, triage: str | None = None) -> int:
    """1 positive, -1 negative, 0 neutral (and ignored), 2 unscored; the learned triage
    model's class, where it gave one, wins over the score's."""
    if ignored:
        return 0
    if triage in TRIAGE_CLASS:
        return TRIAGE_CLASS[triage]
    if sentiment is None:
        return 2
    if sentiment >= POSITIVE_AT:
        return 1
    if sentiment <= NEGATIVE_AT:
        return -1
    return 0


def _upsert(session: AsyncSession, table: sa.Table) -> Any:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    keys = [c.name for c in table.primary_key.columns]
    return insert.on_conflict_do_update(
        index_elements=keys, set_={"n": table.c.n + insert.excluded.n}
    )


async def add(session: AsyncSession, rows: Iterable[Mapping[str, Any]]) -> None:
    """Count message rows (as inserted: ``channel``, ``source``, ``direction``, ``ignored``,
    ``sentiment``, ``intent``, ``tags``, ``created_at``) into the rollups; outbound ones are
    not counted. Upserts in key order, so two writers cannot deadlock."""
    messages: Counter[tuple[int, str, str, bool, int]] = Counter()
    topics: Counter[tuple[int, str, str]] = Counter()
    for r in rows:
        if r.get("direction", "inbound") != "inbound":
            continue
        slot = slot_of(r["created_at"])
        ignored = bool(r.get("ignored", False))
        cls = sentiment_class(r.get("sentiment"), ignored, r.get("triage_class"))
        messages[(slot, r["channel"], r["source"], ignored, cls)] += 1
        if ignored:
            continue
        if r.get("intent"):
            topics[(slot, "intent", r["intent"])] += 1
        for tag in {str(t)[:ROLLUP_TAG_CHARS] for t in r.get("tags") or ()}:
            topics[(slot, "tag", tag)] += 1
    if messages:
        await executemany(
            session,
            _upsert(session, _R),
            [
                {"slot": s, "channel": c, "source": src, "ignored": i, "sentiment": k, "n": n}
                for (s, c, src, i, k), n in sorted(messages.items())
            ],
        )
    if topics:
        await executemany(
            session,
            _upsert(session, _T),
            [
                {"slot": s, "kind": kind, "key": key, "n": n}
                for (s, kind, key), n in sorted(topics.items())
            ],
        )


async def move(
    session: AsyncSession,
    *,
    created_at: datetime,
    channel: str,
    source: str,
    ignored: bool,
    old: int,
    new: int,
) -> None:
    """Count one stored inbound message under class ``new`` instead of ``old`` (a person
    relabelled it): one off the old class's count and one on the new one's, in key order."""
    if old == new:
        return
    key = {"slot": slot_of(created_at), "channel": channel, "source": source, "ignored": ignored}
    for cls, n in sorted(((old, -1), (new, 1))):
        await session.execute(_upsert(session, _R).values(**key, sentiment=cls, n=n))


def _rebuild_sql(dialect: sa.Dialect) -> list[str]:
    cls = class_sql(
        sa.literal_column("m.sentiment"),
        sa.literal_column("m.ignored"),
        sa.literal_column("m.triage_class"),
    ).compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    if dialect.name == "postgresql":
        slot = f"floor(extract(epoch FROM m.created_at) / {ROLLUP_SLOT_S})::bigint"
        tag = f"left(t, {ROLLUP_TAG_CHARS})"
        tags = (
            "CROSS JOIN LATERAL jsonb_array_elements_text(CASE WHEN jsonb_typeof(m.tags) = "
            "'array' THEN m.tags ELSE '[]'::jsonb END) AS t"
        )
    else:
        slot = f"CAST(strftime('%s', m.created_at) AS INTEGER) / {ROLLUP_SLOT_S}"
        tag = f"substr(CAST(t.value AS TEXT), 1, {ROLLUP_TAG_CHARS})"
        tags = ", json_each(CASE WHEN json_type(m.tags) = 'array' THEN m.tags ELSE '[]' END) AS t"
    inbound = "m.direction = 'inbound'"
    return [
        "DELETE FROM message_rollup",
        "DELETE FROM topic_rollup",
        f"""INSERT INTO message_rollup (slot, channel, source, ignored, sentiment, n)
        SELECT {slot}, m.channel, m.source, m.ignored, {cls}, count(*)
        FROM message AS m WHERE {inbound} GROUP BY 1, 2, 3, 4, 5""",
        f"""INSERT INTO topic_rollup (slot, kind, key, n)
        SELECT {slot}, 'intent', m.intent, count(*) FROM message AS m
        WHERE {inbound} AND NOT m.ignored AND coalesce(m.intent, '') != '' GROUP BY 1, 3""",
        f"""INSERT INTO topic_rollup (slot, kind, key, n)
        SELECT {slot}, 'tag', {tag}, count(DISTINCT m.id) FROM message AS m {tags}
        WHERE {inbound} AND NOT m.ignored GROUP BY 1, 3""",
    ]


async def rebuild(session: AsyncSession) -> None:
    """Count every stored message into the rollups anew, in one transaction."""
    for stmt in _rebuild_sql(session.get_bind().dialect):
        await session.execute(sa.text(stmt))
