"""The backlog: what waits for a person or a sink, and what went wrong, counted in the store.

``/metrics`` reads it on each scrape and ``socialcrm alerts list`` prints it, so every daemon on
one database and the CLI show the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from socialcrm.db import Store
from socialcrm.models import Alert, Reply


@dataclass(frozen=True, slots=True)
class Backlog:
    """Counts of drafts, replies and alerts by state."""

    drafts_waiting: int = 0
    replies_sent: int = 0
    replies_failed: int = 0
    #: Alerts not yet delivered to every sink they go to (including ones being retried).
    alerts_waiting: int = 0
    #: Alerts that some sink never took, after every retry.
    alerts_failed: int = 0


async def count(store: Store) -> Backlog:
    """The backlog as the store has it now."""
    async with store.reader() as s:
        replies = await _by_status(s, col(Reply.status))
        alerts = await _by_status(s, col(Alert.status))
    return Backlog(
        drafts_waiting=replies.get("draft", 0),
        replies_sent=replies.get("sent", 0),
        replies_failed=replies.get("failed", 0),
        alerts_waiting=alerts.get("pending", 0),
        alerts_failed=alerts.get("failed", 0),
    )


async def _by_status(s: Any, status: Any) -> dict[str, int]:
    rows = (await s.execute(sa.select(status, sa.func.count()).group_by(status))).all()
    return {str(k): int(n) for k, n in rows}
