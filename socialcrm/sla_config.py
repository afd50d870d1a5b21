"""Configuration of SLA targets (``Config.sla``): per priority, optionally in business hours.

Kept apart from :mod:`socialcrm.sla` (due times, checks and alerts) so that reading the
config file needs no database layer.
"""

from __future__ import annotations

import itertools
import re
from datetime import date, timedelta
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from socialcrm.timespec import Duration, TimeZoneName

Priority = Literal["low", "normal", "high", "urgent"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

WEEKDAYS: Final[tuple[Weekday, ...]] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE_RE: Final = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlaTarget(_Section):
    """How long a ticket of one priority may wait for its first response and resolution."""

    first_response: Duration
    resolution: Duration
    #: Counted in business hours when a calendar is configured; false: around the clock.
    business_hours: bool = True

    @field_validator("first_response", "resolution")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("an SLA target must be longer than zero")
        return v


DEFAULT_TARGETS: Final[dict[Priority, SlaTarget]] = {
    "urgent": SlaTarget(first_response=timedelta(hours=1), resolution=timedelta(hours=8)),
    "high": SlaTarget(first_response=timedelta(hours=4), resolution=timedelta(hours=24)),
    "normal": SlaTarget(first_response=timedelta(hours=8), resolution=timedelta(hours=72)),
    "low": SlaTarget(first_response=timedelta(hours=24), resolution=timedelta(hours=168)),
}


class BusinessHoursConfig(_Section):
    """When the team works: opening hours per weekday in a time zone, and holidays."""

    timezone: TimeZoneName = "UTC"
    #: ``"HH:MM-HH:MM"`` ranges per weekday (``24:00`` ends at midnight); a missing day is closed.
    week: dict[Weekday, list[str]] = Field(
        default_factory=lambda: {d: ["09:00-17:00"] for d in WEEKDAYS[:5]}
    )
    #: Whole days the team does not work (local dates).
    holidays: list[date] = Field(default_factory=list)

    @field_validator("week")
    @classmethod
    def _ranges(cls, v: dict[Weekday, list[str]]) -> dict[Weekday, list[str]]:
        for day, ranges in v.items():
            parsed = sorted(_parse_range(r) for r in ranges)
            for (_, end), (start, _) in itertools.pairwise(parsed):
                if start < end:
                    raise ValueError(f"opening hours of {day} overlap: {', '.join(ranges)}")
        if not any(v.values()):
            raise ValueError("business hours need at least one open range in the week")
        return v

    def minutes(self) -> dict[int, tuple[tuple[int, int], ...]]:
        """Open ranges per weekday (Monday 0) as minutes after midnight, in order."""
        return {
            WEEKDAYS.index(day): tuple(sorted(_parse_range(r) for r in ranges))
            for day, ranges in self.week.items()
        }


def _parse_range(text: str) -> tuple[int, int]:
    m = _RANGE_RE.match(text)
    if m is None:
        raise ValueError(f'expected opening hours like "09:00-17:00", got "{text}"')
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60 or start >= end:
        raise ValueError(f'"{text}" is not a range within one day (use 00:00-24:00 at most)')
    return start, end


class SlaConfig(_Section):
    """SLA targets per priority, the calendar they are counted in, and when to warn."""

    enabled: bool = True
    #: Per priority; a priority left out keeps its default.
    targets: dict[Priority, SlaTarget] = Field(default_factory=lambda: dict(DEFAULT_TARGETS))
    #: None: targets run around the clock.
    business_hours: BusinessHoursConfig | None = None
    #: Warn when this fraction of a target has elapsed (None: no fraction-based warning).
    warn_at: float | None = 0.8
    #: Warn this long before a target is due (None: no lead-based warning). When both are
    #: set, the earlier of the two moments wins.
    warn_before: Duration | None = None
    #: How often the daemon should run :func:`check_sla`.
    interval: Duration = timedelta(seconds=60)
    #: When one check finds more tickets than this reaching the same warning or breach at
    #: once (a backfill of old messages, a source that was down, the morning a business
    #: calendar opens), they come as one alert that lists them; None: always one each.
    group_over: int | None = Field(default=5, ge=1)

    @field_validator("targets")
    @classmethod
    def _all_priorities(cls, v: dict[Priority, SlaTarget]) -> dict[Priority, SlaTarget]:
        return {**DEFAULT_TARGETS, **v}

    @field_validator("warn_at")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v < 1.0:
            raise ValueError("warn_at is a fraction of the target between 0 and 1, like 0.8")
        return v
