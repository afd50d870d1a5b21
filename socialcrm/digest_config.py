"""Configuration of scheduled digests (``Config.reports``): crontab schedules and periods.

Kept apart from :mod:`socialcrm.reports.digest` (building and sending a digest) so that
reading the config file needs no database layer.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from socialcrm.timespec import Duration, PositiveDuration

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DigestConfig(_Section):
    """One scheduled report."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    #: Five-field crontab in the brand's time zone, e.g. ``"0 8 * * mon"`` (Mondays 08:00);
    #: weekdays are names or numbers as in crontab(5), 0 or 7 for Sunday.
    cron: str
    #: The period the report covers, ending at the last local midnight (or the last full
    #: hour, for periods under a day) before the digest runs.
    period: Duration = timedelta(days=7)
    #: A run missed because no daemon was running (a deploy, a crash, a reboot) is made up
    #: when one starts, if it was due no longer ago than this; None: never made up.
    catch_up: PositiveDuration | None = timedelta(hours=6)

    @field_validator("cron")
    @classmethod
    def _crontab(cls, v: str) -> str:
        try:
            _cron_trigger(v)
        except ValueError as err:
            raise ValueError(
                f'expected a crontab like "0 8 * * mon" (minute hour day month weekday): {err}'
            ) from err
        return v

    @field_validator("period")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v < timedelta(hours=1):
            raise ValueError("a digest covers at least 1h")
        return v

    def trigger(self, tz: str) -> CronTrigger:
        """When the digest runs, in the brand's time zone."""
        return _cron_trigger(self.cron, ZoneInfo(tz))

    def missed(self, tz: str, now: datetime) -> datetime | None:
        """The latest run due within ``catch_up`` before ``now``, to make up at start-up
        (``send_digest`` sends each period once, so one that went out is not sent again)."""
        if self.catch_up is None:
            return None
        trigger = self.trigger(tz)
        last = None
        at = trigger.get_next_fire_time(None, now - self.catch_up)
        while at is not None and at <= now:
            last = at
            at = trigger.get_next_fire_time(at, at + timedelta(seconds=1))
        return last


#: Crontab's weekday numbers: 0 (and 7) is Sunday.
_CRON_DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_day(text: str) -> int:
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text in _CRON_DAYS:
        return _CRON_DAYS.index(text)
    raise ValueError(f"{text!r} is not a day of the week (0-7 or sun-sat)")


def _weekdays(field: str) -> str:
    """A crontab weekday field as day names, which APScheduler 3 reads as crontab does.

    APScheduler 3 counts weekday numbers from Monday (``1`` would be Tuesday), so numbers,
    ranges and steps are expanded here: ``1-5`` is ``mon,tue,wed,thu,fri``, ``*/2`` is
    ``sun,tue,thu,sat``.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        span, slash, step_text = part.partition("/")
        step = int(step_text) if slash else 1
        if span == "*":
            first, last = 0, 6
        else:
            start, dash, end = span.partition("-")
            first = _cron_day(start)
            last = _cron_day(end) if dash else (6 if slash else first)
            if last == 0 and first > 0:
                last = 7  # fri-sun
        if step < 1 or first > last:
            raise ValueError(f"{part!r} is not a range of weekdays")
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(_CRON_DAYS[day] for day in sorted(days))


def _cron_trigger(expr: str, tz: ZoneInfo | None = None) -> CronTrigger:
    """A crontab expression as a trigger, weekdays read as crontab reads them."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) == 5:
        fields[4] = _weekdays(fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone=tz)


class ReportsConfig(_Section):
    """Reports: scheduled digests, and a folder of template overrides."""

    digests: list[DigestConfig] = Field(default_factory=list)
    #: Folder searched for ``reports/*.j2`` before the shipped templates.
    templates_dir: Path | None = None
