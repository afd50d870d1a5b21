"""The approval queue: drafts awaiting approval, highest priority and oldest first.

The queue is one SQL text (:data:`QUEUE_SQL`), read two ways into the same rows and shown by
the same template (``templates/chat/queue.j2``):

- the chat-ops ``queue`` command (Slack, Mattermost, ``socialcrm`` commands) runs it through
  the store's session;
- ``socialcrm queue`` runs it through the plain driver (:func:`read_direct`: ``sqlite3`` or
  ``asyncpg``), so that the command a person types most answers without loading SQLAlchemy,
  SQLModel or the table classes. When the database is not at the code's schema or cannot be
  opened that way, it answers ``None`` and the command goes through the store, which upgrades
  the schema or says what is wrong.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from socialcrm.config import SQLITE_URL
from socialcrm.migrations import code_head
from socialcrm.priority import rank_sql
from socialcrm.utctime import from_stored

#: Drafts shown unless the command asks for another number, and the most it shows.
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 200
#: Drafts of one priority label: highest score first, then oldest first. (Approval cards are
#: posted in this order too.)
REPLY_ORDER: Final = "reply.priority_score DESC, reply.created_at ASC, reply.id ASC"
#: The queue; ``:limit`` is the one parameter. The label shown first is the ticket's, which
#: can be raised past the message's score.
QUEUE_SQL: Final = f"""\
SELECT reply.id, reply.created_at, reply.draft_text, reply.final_text, reply.last_error,
       message.priority, message.channel, message.author_handle, message.text,
       ticket.id, ticket.priority
FROM reply
JOIN message ON message.id = reply.message_id
LEFT OUTER JOIN ticket ON ticket.id = reply.ticket_id
WHERE reply.status = 'draft'
ORDER BY {rank_sql("coalesce(ticket.priority, message.priority)")} DESC, {REPLY_ORDER}
LIMIT :limit"""
COUNT_SQL: Final = "SELECT count(*) FROM reply WHERE reply.status = 'draft'"
_REVISION_SQL: Final = "SELECT version_num FROM alembic_version"
_PARAM_RE: Final = re.compile(r"(?<!:):([a-z_]+)")
_POSTGRES: Final = "postgresql+asyncpg://"


@dataclass(frozen=True, slots=True)
class QueuedReply:
    """What the queue shows of a draft."""

    id: int
    created_at: datetime
    draft_text: str
    final_text: str | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """What the queue shows of the message a draft answers."""

    priority: str | None
    channel: str
    author_handle: str | None
    text: str


@dataclass(frozen=True, slots=True)
class QueuedTicket:
    """What the queue shows of a draft's ticket."""

    id: int
    priority: str


Row = tuple[QueuedReply, QueuedMessage, QueuedTicket | None]


def clamp(limit: int) -> int:
    """The number of drafts shown for a ``queue LIMIT``."""
    return max(1, min(limit, MAX_LIMIT))


def rows_of(records: Iterable[Sequence[Any]]) -> list[Row]:
    """The rows of :data:`QUEUE_SQL`, from any driver, as the template reads them."""
    rows: list[Row] = []
    for r in records:
        created = from_stored(r[1])
        assert created is not None  # NOT NULL
        reply = QueuedReply(
            id=r[0], created_at=created, draft_text=r[2], final_text=r[3], last_error=r[4]
        )
        msg = QueuedMessage(priority=r[5], channel=r[6], author_handle=r[7], text=r[8])
        ticket = QueuedTicket(id=r[9], priority=r[10]) if r[9] is not None else None
        rows.append((reply, msg, ticket))
    return rows


def read_direct(url: str, limit: int) -> tuple[list[Row], int] | None:
    """The first ``limit`` drafts and how many there are, through the plain driver; None when
    the store must answer instead (a database that is not at the code's schema, that does not
    exist yet, or that the driver cannot open or read)."""
    if url.startswith(SQLITE_URL):
        return _read_sqlite(url[len(SQLITE_URL) :], clamp(limit))
    if url.startswith(_POSTGRES) and "?" not in url:  # options: the store's own way to read them
        return _read_postgres("postgresql://" + url[len(_POSTGRES) :], clamp(limit))
    return None


def _read_sqlite(path: str, limit: int) -> tuple[list[Row], int] | None:
    import sqlite3

    # A URL with options, a memory database or one not created yet is the store's to open.
    if not path or "?" in path or path == ":memory:" or not os.path.isfile(path):
        return None
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("BEGIN")  # one snapshot for the rows and the count
            found = conn.execute(_REVISION_SQL).fetchall()
            if [tuple(r) for r in found] != [(code_head(),)]:
                return None
            records = conn.execute(QUEUE_SQL, {"limit": limit}).fetchall()
            total = conn.execute(COUNT_SQL).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return rows_of(records), int(total[0])


def _read_postgres(dsn: str, limit: int) -> tuple[list[Row], int] | None:
    import asyncio

    import asyncpg

    async def read() -> tuple[list[Row], int] | None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                found = await conn.fetch(_REVISION_SQL)
                if [tuple(r) for r in found] != [(code_head(),)]:
                    return None
                records = await conn.fetch(numbered(QUEUE_SQL), limit)
                total = await conn.fetchval(COUNT_SQL)
        finally:
            await conn.close()
        return rows_of(records), int(total)

    try:
        return asyncio.run(read())
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None


def numbered(sql: str) -> str:
    """SQL text with ``:name`` parameters (sqlite3, SQLAlchemy) as asyncpg's ``$1, $2``, in
    the order the names first appear."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return _PARAM_RE.sub(number, sql)
