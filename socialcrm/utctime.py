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


#: The text of UTC moments bound lately: a batch binds a message's time in several tables
#: (the message, its ticket, its customer), and its "now" in most rows.
_TEXTS: dict[datetime, str] = {}
_MAX_TEXTS = 20_000


def to_sqlite_column(value: datetime | None) -> str | None:
    """A value bound to a UTC column on SQLite: None stays NULL, a naive datetime is refused."""
    if value is None:
        return None
    if type(value) is datetime and value.tzinfo is UTC:
        # Two UTC datetimes are equal only at the same instant, which has one text.
        text = _TEXTS.get(value)
        if text is None:
            if len(_TEXTS) >= _MAX_TEXTS:
                _TEXTS.clear()
            text = _TEXTS[value] = to_sqlite(value)
        return text
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
