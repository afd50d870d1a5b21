"""Moments as the store keeps them: aware UTC datetimes, as text on SQLite.

SQLite has no date type: there a moment is UTC text in SQLAlchemy's own layout
(``2026-03-02 09:00:00.000000``, which sorts and compares as time does), written and read
with the C ``isoformat``/``fromisoformat`` because a batch writes thousands of them.
:class:`socialcrm.models.UTCDateTime` converts with these functions, and so does a command
that reads rows through the plain driver.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def to_sqlite(value: datetime) -> str:
    """An aware datetime as SQLite stores it."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # The UTC text less its "+00:00" (the year always has four digits): one object fewer
    # than dropping the zone first.
    return value.isoformat(" ", "microseconds")[:26]


def to_sqlite_column(value: datetime | None) -> str | None:
    """A value bound to a UTC column on SQLite: None stays NULL, a naive datetime is refused."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return to_sqlite(value)


def from_stored(value: Any) -> datetime | None:
    """A stored moment (SQLite text, or a driver's datetime) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    moment: datetime = value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
