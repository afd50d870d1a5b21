"""SLA targets: when a ticket's first response and resolution are due, and warnings when not.

Targets are per priority (``urgent`` 1h/8h, ``high`` 4h/24h, ``normal`` 8h/72h, ``low``
24h/168h unless configured), counted around the clock or, with ``business_hours``, only
while the team works: a weekly calendar in a time zone, minus holidays. Business time is
real elapsed time inside opening hours, so a 09:00-17:00 day is eight hours even on the
day the clocks change, and a range that spans the change (``00:00-24:00``) is 23 or 25.

Wiring:

- The pipeline stores ``SlaPolicy.due(ticket.opened_at, ticket.priority)`` in
  ``first_response_due_at`` / ``resolution_due_at`` when it opens a ticket, and again
  when a ticket's priority changes (still from ``opened_at``: the target moves, the clock
  does not restart).
- The daemon calls :func:`check_sla` every ``SlaConfig.interval`` (60s). It writes one
  ``sla_warning`` and one ``sla_breach`` alert per ticket and target, ever. When more than
  ``group_over`` tickets reach the same one in a check (old messages from a backfill or a
  source that was down arrive already overdue), one alert lists them and each ticket's own
  is written ``grouped``: kept, never sent.

Met or missed, for reports (the ticket keeps every time it needs)::

    first response met:     first_response_at <= first_response_due_at
    first response missed:  first_response_at > first_response_due_at
                            OR (first_response_at IS NULL AND first_response_due_at < now)
    still running:          first_response_at IS NULL AND first_response_due_at >= now
    resolution:             the same with resolved_at and resolution_due_at

:func:`outcome` is the same rule in Python.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, Literal, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import col

from socialcrm.alerts import lock_key, raise_alert
from socialcrm.db import Store
from socialcrm.models import Alert, Ticket
from socialcrm.sla_config import BusinessHoursConfig, SlaConfig, SlaTarget

log = logging.getLogger(__name__)

Target = Literal["first_response", "resolution"]
Outcome = Literal["met", "missed", "running"]

TARGETS: Final[tuple[Target, ...]] = ("first_response", "resolution")
#: A calendar is searched this far ahead for enough open time before it is called broken.
_MAX_DAYS: Final = 3700
#: PostgreSQL advisory lock class of one SLA check at a time (two daemons, one database).
_SLA_LOCK: Final = "sla-check"


class BusinessCalendar:
    """Arithmetic in business time: open ranges per weekday in a zone, minus holidays."""

    def __init__(
        self,
        tz: ZoneInfo,
        week: dict[int, tuple[tuple[int, int], ...]],
        holidays: Sequence[date] = (),
    ) -> None:
        if not any(week.values()):
            raise ValueError("a business calendar needs at least one open range")
        self.tz = tz
        self.week = week
        self.holidays = frozenset(holidays)
        self._days: dict[date, tuple[tuple[datetime, datetime], ...]] = {}

    @classmethod
    def from_config(cls, config: BusinessHoursConfig) -> BusinessCalendar:
        """The calendar a ``business_hours`` section describes."""
        return cls(ZoneInfo(config.timezone), config.minutes(), config.holidays)

    def open_ranges(self, day: date) -> tuple[tuple[datetime, datetime], ...]:
        """The open ranges of one local date, as UTC instants, in order."""
        cached = self._days.get(day)
        if cached is not None:
            return cached
        out: list[tuple[datetime, datetime]] = []
        if day not in self.holidays:
            for start, end in self.week.get(day.weekday(), ()):
                out.append((self._instant(day, start), self._instant(day, end)))
        ranges = tuple((a, b) for a, b in out if a < b)
        if len(self._days) > 4096:
            self._days.clear()
        self._days[day] = ranges
        return ranges

    def _instant(self, day: date, minute: int) -> datetime:
        if minute >= 24 * 60:
            day, minute = day + timedelta(days=1), minute - 24 * 60
        local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=self.tz)
        # A wall time the clocks skip (02:30 on spring-forward day) maps to the instant
        # an hour on; one they repeat is taken the first time round (fold=0).
        return local.astimezone(UTC)

    def add(self, start: datetime, amount: timedelta) -> datetime:
        """The earliest instant by which ``amount`` of business time has passed since ``start``."""
        start = start.astimezone(UTC)
        if amount <= timedelta(0):
            return start
        remaining = amount
        day = start.astimezone(self.tz).date()
        for _ in range(_MAX_DAYS):
            for a, b in self.open_ranges(day):
                if b <= start:
                    continue
                s = max(a, start)
                span = b - s
                if remaining <= span:
                    return s + remaining
                remaining -= span
            day += timedelta(days=1)
        raise ValueError(f"the business calendar has no {amount} of open time within 10 years")

    def between(self, start: datetime, end: datetime) -> timedelta:
        """Business time between two instants (zero when ``end`` is not after ``start``)."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        total = timedelta(0)
        if end <= start:
            return total
        day = start.astimezone(self.tz).date()
        last = end.astimezone(self.tz).date()
        while day <= last:
            for a, b in self.open_ranges(day):
                lo, hi = max(a, start), min(b, end)
                if lo < hi:
                    total += hi - lo
            day += timedelta(days=1)
        return total

    def is_open(self, moment: datetime) -> bool:
        """True when ``moment`` falls inside opening hours."""
        moment = moment.astimezone(UTC)
        day = moment.astimezone(self.tz).date()
        return any(a <= moment < b for a, b in self.open_ranges(day))


class SlaPolicy:
    """Due times and warning moments for tickets, from an :class:`SlaConfig`."""

    def __init__(self, config: SlaConfig) -> None:
        self.config = config
        self.calendar = (
            BusinessCalendar.from_config(config.business_hours)
            if config.business_hours is not None
            else None
        )

    def target(self, priority: str) -> SlaTarget:
        """The target of a priority; an unknown priority is treated as ``normal``."""
        targets = cast(dict[str, SlaTarget], self.config.targets)
        return targets.get(priority, targets["normal"])

    def _calendar(self, priority: str) -> BusinessCalendar | None:
        return self.calendar if self.target(priority).business_hours else None

    def add(self, start: datetime, amount: timedelta, priority: str) -> datetime:
        """``start`` plus ``amount`` in the time that counts for this priority."""
        cal = self._calendar(priority)
        return cal.add(start, amount) if cal is not None else start.astimezone(UTC) + amount

    def elapsed(self, start: datetime, end: datetime, priority: str) -> timedelta:
        """Time that counts for this priority between two instants."""
        cal = self._calendar(priority)
        if cal is not None:
            return cal.between(start, end)
        return max(end - start, timedelta(0))

    def due(self, opened_at: datetime, priority: str) -> tuple[datetime, datetime]:
        """``(first_response_due_at, resolution_due_at)`` of a ticket opened then, in UTC."""
        target = self.target(priority)
        return (
            self.add(opened_at, target.first_response, priority),
            self.add(opened_at, target.resolution, priority),
        )

    def warning_at(self, opened_at: datetime, due_at: datetime, priority: str) -> datetime | None:
        """When to warn that a target due at ``due_at`` is close (None: no warnings)."""
        span = self.elapsed(opened_at, due_at, priority)
        offsets = []
        if self.config.warn_at is not None:
            offsets.append(span * self.config.warn_at)
        if self.config.warn_before is not None:
            offsets.append(max(span - self.config.warn_before, timedelta(0)))
        if not offsets:
            return None
        return self.add(opened_at, min(offsets), priority)

    def _lead(self, target: Target) -> timedelta:
        """The longest time between a warning and its due time for any priority."""
        lead = timedelta(0)
        for t in self.config.targets.values():
            span: timedelta = getattr(t, target)
            if self.config.warn_at is not None:
                lead = max(lead, span * (1 - self.config.warn_at))
            if self.config.warn_before is not None:
                lead = max(lead, min(span, self.config.warn_before))
        return lead

    def horizon(self, now: datetime, target: Target) -> datetime:
        """Every ticket whose warning for ``target`` is due by ``now`` is due by this instant."""
        lead = self._lead(target)
        if self.calendar is not None:
            return self.calendar.add(now, lead)
        return now + lead


def outcome(due_at: datetime | None, done_at: datetime | None, now: datetime) -> Outcome | None:
    """Met, missed or still running (None: the ticket has no such target)."""
    if due_at is None:
        return None
    if done_at is not None:
        return "met" if done_at <= due_at else "missed"
    return "missed" if now > due_at else "running"


def dedupe_key(kind: Literal["sla_warning", "sla_breach"], target: Target, ticket_id: int) -> str:
    """The dedupe key of a ticket's SLA alert: ``sla_breach:first_response:42``."""
    return f"{kind}:{target}:{ticket_id}"


@dataclass(frozen=True, slots=True)
class _Candidate:
    id: int
    priority: str
    status: str
    subject: str
    channel: str
    source: str
    team: str | None
    assignee: str | None
    customer_id: int
    opened_at: datetime
    due_at: datetime
    warned: bool


_Kind = Literal["sla_warning", "sla_breach"]
#: Tickets a grouped alert names one by one (the most urgent, then the most overdue, first).
GROUP_LISTED: Final = 10
_RANK: Final[dict[str, int]] = {"low": 0, "normal": 1, "high": 2, "urgent": 3}
_GROUP_TITLES: Final[dict[_Kind, str]] = {
    "sla_warning": "{n} tickets are close to their {target} target",
    "sla_breach": "{n} tickets missed their {target} target",
}
_TITLES: Final = {
    ("sla_warning", "first_response"): "Ticket #{id} needs a first response by {due}",
    ("sla_warning", "resolution"): "Ticket #{id} must be resolved by {due}",
    ("sla_breach", "first_response"): "Ticket #{id} missed its first-response target ({due})",
    ("sla_breach", "resolution"): "Ticket #{id} missed its resolution target ({due})",
}


async def check_sla(store: Store, policy: SlaPolicy, now: datetime) -> int:
    """Write due SLA warnings and breaches, each once per ticket and target.

    Returns how many alerts were raised for the sinks: a group of tickets (more than
    ``group_over`` reaching the same warning or breach in one check) counts once.
    """
    if not policy.config.enabled:
        return 0
    written = 0
    async with store.session() as session:
        await lock_key(session, _SLA_LOCK)
        for target in TARGETS:
            due: dict[_Kind, list[_Candidate]] = {"sla_warning": [], "sla_breach": []}
            for c in await _candidates(session, policy, target, now):
                if now >= c.due_at:
                    due["sla_breach"].append(c)
                    continue
                warn = policy.warning_at(c.opened_at, c.due_at, c.priority)
                if not c.warned and warn is not None and now >= warn:
                    due["sla_warning"].append(c)
            for kind, found in due.items():
                written += await _raise(session, policy, kind, target, found, now)
    if written:
        log.info("SLA: %d alert(s) written", written)
    return written


async def _raise(
    session: Any,
    policy: SlaPolicy,
    kind: _Kind,
    target: Target,
    found: list[_Candidate],
    now: datetime,
) -> int:
    """One alert per ticket, or, past ``group_over``, one alert listing them all with each
    ticket's own alert written ``grouped`` (it keeps the ticket's key: never again)."""
    severity: Literal["warning", "critical"] = "critical" if kind == "sla_breach" else "warning"
    limit = policy.config.group_over
    group = None
    if limit is not None and len(found) > limit:
        listed = sorted(found, key=lambda c: (-_RANK[c.priority], c.due_at, c.id))
        words = target.replace("_", "-")
        group = await raise_alert(
            session,
            kind,
            f"{kind}:{target}:group:{now.isoformat()}",
            _GROUP_TITLES[kind].format(n=len(found), target=words),
            {
                "target": target,
                "count": len(found),
                "tickets": [_listed(c, now) for c in listed[:GROUP_LISTED]],
                "business_hours": any(policy._calendar(c.priority) for c in found),
            },
            severity,
            cooldown=None,
            now=now,
        )
    written = int(group is not None)
    for c in found:
        detail = _detail(c, target, policy, now)
        if group is not None:
            detail["grouped_in"] = group.id
        alert = await raise_alert(
            session,
            kind,
            dedupe_key(kind, target, c.id),
            _TITLES[(kind, target)].format(id=c.id, due=c.due_at.strftime("%Y-%m-%d %H:%M UTC")),
            detail,
            severity,
            ticket_id=c.id,
            customer_id=c.customer_id,
            cooldown=None,
            now=now,
            status="pending" if group is None else "grouped",
        )
        written += group is None and alert is not None
    return written


def _listed(c: _Candidate, now: datetime) -> dict[str, Any]:
    """A ticket as a grouped alert lists it."""
    return {
        "id": c.id,
        "priority": c.priority,
        "subject": c.subject[:200],
        "channel": c.channel,
        "team": c.team,
        "assignee": c.assignee,
        "due_at": c.due_at.isoformat(),
        "due_in_s": int((c.due_at - now).total_seconds()),
    }


async def _candidates(
    session: Any, policy: SlaPolicy, target: Target, now: datetime
) -> list[_Candidate]:
    """Open tickets with ``target`` not done, due by the warning horizon, not yet breached."""
    if target == "first_response":
        due, done = col(Ticket.first_response_due_at), col(Ticket.first_response_at)
    else:
        due, done = col(Ticket.resolution_due_at), col(Ticket.resolved_at)
    prefix = f"sla_warning:{target}:"
    key = sa.literal(f"sla_breach:{target}:") + sa.cast(col(Ticket.id), sa.String)
    breached = sa.exists().where(col(Alert.dedupe_key) == key)
    warned = sa.exists().where(
        col(Alert.dedupe_key) == sa.literal(prefix) + sa.cast(col(Ticket.id), sa.String)
    )
    q = (
        sa.select(
            col(Ticket.id),
            col(Ticket.priority),
            col(Ticket.status),
            col(Ticket.subject),
            col(Ticket.channel),
            col(Ticket.source),
            col(Ticket.team),
            col(Ticket.assignee),
            col(Ticket.customer_id),
            col(Ticket.opened_at),
            due,
            warned.label("warned"),
        )
        .where(
            col(Ticket.status).in_(("open", "pending")),
            done.is_(None),
            due.is_not(None),
            due <= policy.horizon(now, target),
            ~breached,
        )
        .order_by(due)
    )
    rows = (await session.execute(q)).all()
    return [
        _Candidate(
            id=r[0],
            priority=r[1],
            status=r[2],
            subject=r[3],
            channel=r[4],
            source=r[5],
            team=r[6],
            assignee=r[7],
            customer_id=r[8],
            opened_at=r[9],
            due_at=r[10],
            warned=bool(r[11]),
        )
        for r in rows
    ]


def _detail(c: _Candidate, target: Target, policy: SlaPolicy, now: datetime) -> dict[str, Any]:
    left = c.due_at - now
    return {
        "target": target,
        "priority": c.priority,
        "status": c.status,
        "subject": c.subject[:300],
        "channel": c.channel,
        "source": c.source,
        "team": c.team,
        "assignee": c.assignee,
        "opened_at": c.opened_at.isoformat(),
        "due_at": c.due_at.isoformat(),
        #: Wall-clock seconds until due (negative: overdue) when the alert was written.
        "due_in_s": int(left.total_seconds()),
        "business_hours": policy._calendar(c.priority) is not None,
    }
