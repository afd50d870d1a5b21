"""Replay protection: the signed requests already let in, remembered in the store.

A signed request (a Slack command or click) is good for its replay window. Remembering the
ones seen in memory forgot them at a restart and was not shared between daemons; here each
is a row keyed by a digest of its platform, timestamp and signature, inserted with "on
conflict do nothing", so of two daemons receiving the same request exactly one lets it in.
Rows are deleted once their window has passed.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from socialcrm.db import Store
from socialcrm.models import SeenRequest


def request_key(platform: str, timestamp: str, signature: str) -> str:
    """The stored key of one signed request."""
    return hashlib.sha256(f"{platform}\n{timestamp}\n{signature}".encode()).hexdigest()


async def first_sighting(store: Store, key: str, *, expires_at: datetime, now: datetime) -> bool:
    """True the first time ``key`` is seen before ``expires_at``; False for a replay."""
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
