"""Replay protection: the signed requests already let in, remembered in the store.

A signed request (a Slack command or click) is good for its replay window. Remembering the
ones seen in memory forgot them at a restart and was not shared between daemons; here each
is a row keyed by a digest of its platform, timestamp and signature, deleted once its window
has passed.

On PostgreSQL (where several daemons share the store) the row is inserted with "on conflict
do nothing" before the request is acted on, so of two daemons receiving the same request
exactly one lets it in; the insert does not wait for a batch being stored. SQLite has one
writer at a time, and a batch being stored would hold every chat answer up behind it: there
the request is checked against the rows (a read, which never waits) and this process's own
memory, and its row is written right after, without holding the answer up. A restart in
that moment could forget one request; one SQLite file serves one daemon.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from socialcrm.db import Store
from socialcrm.models import SeenRequest

log = logging.getLogger(__name__)


def request_key(platform: str, timestamp: str, signature: str) -> str:
    """The stored key of one signed request."""
    return hashlib.sha256(f"{platform}\n{timestamp}\n{signature}".encode()).hexdigest()


async def first_sighting(store: Store, key: str, *, expires_at: datetime, now: datetime) -> bool:
    """Insert ``key``: True the first time it is seen before ``expires_at``, False for a replay."""
    async with store.session() as s:
        await s.execute(sa.delete(SeenRequest).where(SeenRequest.expires_at < now))  # type: ignore[arg-type]
        dialect = s.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = (
            insert(SeenRequest)
            .values(key=key, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        result = await s.execute(stmt)
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def seen_before(store: Store, key: str, *, now: datetime) -> bool:
    """Whether ``key`` is stored and its window has not passed (a read only)."""
    async with store.reader() as s:
        table = SeenRequest.__table__  # type: ignore[attr-defined]
        found = await s.execute(
            sa.select(table.c.key).where(table.c.key == key, table.c.expires_at >= now)
        )
        return found.first() is not None


class ReplayGuard:
    """Lets each signed request in once, whichever daemon or restart it reaches."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sqlite = store.engine.dialect.name == "sqlite"
        #: Requests let in by this process, until their window has passed (SQLite).
        self._recent: dict[str, datetime] = {}
        self._writes: set[asyncio.Task[Any]] = set()

    async def admit(self, key: str, *, expires_at: datetime, now: datetime) -> bool:
        """True the first time a request is seen; False for a replay."""
        if not self._sqlite:
            return await first_sighting(self.store, key, expires_at=expires_at, now=now)
        self._recent = {k: until for k, until in self._recent.items() if until >= now}
        if key in self._recent or await seen_before(self.store, key, now=now):
            return False
        self._recent[key] = expires_at
        task = asyncio.create_task(self._remember(key, expires_at, now))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return True

    async def _remember(self, key: str, expires_at: datetime, now: datetime) -> None:
        try:
            await first_sighting(self.store, key, expires_at=expires_at, now=now)
        except Exception:  # the request was let in; only a restart's memory of it is lost
            log.exception("cannot remember a chat request in the store")

    async def flush(self) -> None:
        """Wait until every request let in is written to the store."""
        if self._writes:
            await asyncio.wait(set(self._writes))
