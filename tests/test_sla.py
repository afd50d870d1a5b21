"""SLA targets: business-hours arithmetic, due times, and warnings and breaches exactly once."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import col

from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.db import Store
from socialcrm.models import Alert, Customer, Ticket
from socialcrm.pipeline import Pipeline
from socialcrm.sla import (
    BusinessCalendar,
    BusinessHoursConfig,
    SlaConfig,
    SlaPolicy,
    check_sla,
    outcome,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def local(
    tz: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0
) -> datetime:
    """A wall-clock time in ``tz`` as an aware datetime."""
    return datetime(year, month, day, hour, minute, tzinfo=tz)


def calendar(tz: str = "Europe/Berlin", **kwargs: Any) -> BusinessCalendar:
    return BusinessCalendar.from_config(BusinessHoursConfig(timezone=tz, **kwargs))


H = timedelta(hours=1)

# -- business-hours arithmetic (Mon-Fri 09:00-17:00 unless said) -----------------------------------


@pytest.mark.parametrize(
    ("start", "amount", "expected"),
    [
        # Within one day.
        (local(BERLIN, 2026, 3, 2, 10), 2 * H, local(BERLIN, 2026, 3, 2, 12)),
        # Across a night: one hour on Monday, one on Tuesday morning.
        (local(BERLIN, 2026, 3, 2, 16), 2 * H, local(BERLIN, 2026, 3, 3, 10)),
        # Exactly to closing time stays on that day (the earliest moment it is used up).
        (local(BERLIN, 2026, 3, 2, 9), 8 * H, local(BERLIN, 2026, 3, 2, 17)),
        # Opened at night: the clock starts at 09:00.
        (local(BERLIN, 2026, 3, 3, 2), H, local(BERLIN, 2026, 3, 3, 10)),
        # Across a weekend.
        (local(BERLIN, 2026, 3, 6, 16), 4 * H, local(BERLIN, 2026, 3, 9, 12)),
        # Opened on Saturday: counted from Monday.
        (local(BERLIN, 2026, 3, 7, 11), 3 * H, local(BERLIN, 2026, 3, 9, 12)),
        # A week of work is 40 hours: five days later at the same time.
        (local(BERLIN, 2026, 3, 4, 13), 40 * H, local(BERLIN, 2026, 3, 11, 13)),
        # Clocks go forward on Sunday 29 March: Monday noon is CEST (10:00 UTC, not 11:00).
        (local(BERLIN, 2026, 3, 27, 16), 4 * H, datetime(2026, 3, 30, 10, tzinfo=UTC)),
        # Clocks go back on Sunday 25 October: Monday noon is CET (11:00 UTC, not 10:00).
        (local(BERLIN, 2026, 10, 23, 16), 4 * H, datetime(2026, 10, 26, 11, tzinfo=UTC)),
        # New York changes three weeks earlier (8 March): Monday noon EDT is 16:00 UTC.
        (local(NEW_YORK, 2026, 3, 6, 16), 4 * H, datetime(2026, 3, 9, 16, tzinfo=UTC)),
    ],
)
def test_add_business_time(start: datetime, amount: timedelta, expected: datetime) -> None:
    tz = "America/New_York" if start.tzinfo is NEW_YORK else "Europe/Berlin"
    cal = calendar(tz)
    assert cal.add(start, amount) == expected
    assert cal.between(start, expected) == amount


def test_holidays_are_closed() -> None:
    # Easter Monday 2026 is 6 April: Thursday 16:00 + 4h, with Good Friday off too.
    cal = calendar(holidays=[date(2026, 4, 3), date(2026, 4, 6)])
    start = local(BERLIN, 2026, 4, 2, 16)
    assert cal.add(start, 4 * H) == local(BERLIN, 2026, 4, 7, 12)
    assert cal.between(local(BERLIN, 2026, 4, 3, 0), local(BERLIN, 2026, 4, 7, 0)) == timedelta(0)
    assert not cal.is_open(local(BERLIN, 2026, 4, 6, 11))
    assert cal.is_open(local(BERLIN, 2026, 4, 7, 11))


def test_split_days_and_weekend_shifts() -> None:
    cal = calendar(
        week={
            "mon": ["08:00-12:00", "13:00-17:00"],
            "sat": ["10:00-14:00"],
        }
    )
    # The lunch break does not count.
    assert cal.add(local(BERLIN, 2026, 3, 2, 11), 2 * H) == local(BERLIN, 2026, 3, 2, 14)
    # Monday 16:00 + 3h: 1h Monday, 2h on Saturday (the only other open day).
    assert cal.add(local(BERLIN, 2026, 3, 2, 16), 3 * H) == local(BERLIN, 2026, 3, 7, 12)


def test_round_the_clock_days_follow_real_time_across_dst() -> None:
    every_day = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    cal = calendar(week=every_day)
    # The spring-forward weekend has 47 real hours, the autumn one 49.
    spring = cal.between(local(BERLIN, 2026, 3, 28, 0), local(BERLIN, 2026, 3, 30, 0))
    autumn = cal.between(local(BERLIN, 2026, 10, 24, 0), local(BERLIN, 2026, 10, 26, 0))
    assert (spring, autumn) == (47 * H, 49 * H)
    start = local(BERLIN, 2026, 3, 28, 12)
    assert cal.add(start, 24 * H) == start.astimezone(UTC) + 24 * H


def test_between_inverts_add_at_random() -> None:
    cal = calendar(holidays=[date(2026, 3, 27), date(2026, 10, 26)])
    rng = random.Random(7)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(300):
        start = base + timedelta(minutes=rng.randrange(0, 365 * 24 * 60))
        amount = timedelta(minutes=rng.randrange(1, 200 * 60))
        due = cal.add(start, amount)
        assert cal.between(start, due) == amount
        # The earliest such moment: a minute earlier is not enough.
        assert cal.between(start, due - timedelta(minutes=1)) < amount


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"week": {"mon": ["17:00-09:00"]}}, "within one day"),
        ({"week": {"mon": ["09:00-13:00", "12:00-17:00"]}}, "overlap"),
        ({"week": {"mon": ["9-5"]}}, "like"),
        ({"week": {"mon": []}}, "at least one open range"),
        ({"timezone": "Mars/Olympus"}, "time zone"),
    ],
)
def test_bad_business_hours_are_refused(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        BusinessHoursConfig.model_validate(settings)


def test_sla_config_fills_in_and_checks() -> None:
    cfg = SlaConfig.model_validate(
        {"targets": {"urgent": {"first_response": "30m", "resolution": "4h"}}}
    )
    assert cfg.targets["urgent"].first_response == timedelta(minutes=30)
    assert cfg.targets["low"].resolution == timedelta(hours=168)
    with pytest.raises(ValidationError, match="between 0 and 1"):
        SlaConfig.model_validate({"warn_at": 1.5})
    with pytest.raises(ValidationError, match="longer than zero"):
        SlaConfig.model_validate({"targets": {"low": {"first_response": 0, "resolution": "1h"}}})


# -- due times -------------------------------------------------------------------------------------


def test_due_times_round_the_clock() -> None:
    policy = SlaPolicy(SlaConfig())
    opened = datetime(2026, 3, 7, 23, 30, tzinfo=UTC)  # a Saturday night
    assert policy.due(opened, "urgent") == (opened + H, opened + 8 * H)
    assert policy.due(opened, "low") == (opened + 24 * H, opened + 168 * H)
    # An unknown priority gets the normal target.
    assert policy.due(opened, "whatever") == policy.due(opened, "normal")


def test_due_times_in_business_hours_with_a_round_the_clock_priority() -> None:
    policy = SlaPolicy(
        SlaConfig.model_validate(
            {
                "business_hours": {"timezone": "Europe/Berlin"},
                "targets": {
                    "urgent": {"first_response": "1h", "resolution": "8h", "business_hours": False}
                },
            }
        )
    )
    opened = local(BERLIN, 2026, 3, 6, 16, 30)  # Friday afternoon
    first, resolution = policy.due(opened, "high")
    assert first == local(BERLIN, 2026, 3, 9, 12, 30)
    assert resolution == local(BERLIN, 2026, 3, 11, 16, 30)  # 24h = three working days
    assert policy.due(opened, "urgent") == (opened + H, opened + 8 * H)


def test_due_is_fast_enough_for_every_ticket() -> None:
    policy = SlaPolicy(SlaConfig.model_validate({"business_hours": {"timezone": "Europe/Berlin"}}))
    start = datetime(2026, 3, 1, tzinfo=UTC)
    import time

    t0 = time.perf_counter()
    for i in range(2000):
        policy.due(start + timedelta(minutes=7 * i), ("low", "normal", "high", "urgent")[i % 4])
    assert time.perf_counter() - t0 < 2.0


def test_outcome() -> None:
    due = datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert outcome(due, due, due + H) == "met"
    assert outcome(due, due + timedelta(seconds=1), due) == "missed"
    assert outcome(due, None, due + H) == "missed"
    assert outcome(due, None, due) == "running"
    assert outcome(None, None, due) is None


# -- check_sla against the store -------------------------------------------------------------------


async def open_ticket(
    store: Store,
    policy: SlaPolicy,
    opened: datetime,
    priority: str = "high",
    subject: str = "Where is my <order>?",
    **extra: Any,
) -> int:
    """A ticket with its due times as the pipeline would set them."""
    first, resolution = policy.due(opened, priority)
    async with store.session() as s:
        cust = Customer(name="Dana")
        s.add(cust)
        await s.flush()
        assert cust.id is not None
        ticket = Ticket(
            customer_id=cust.id,
            channel="x",
            source="x-mentions",
            subject=subject,
            priority=priority,
            opened_at=opened,
            first_response_due_at=first,
            resolution_due_at=resolution,
            **extra,
        )
        s.add(ticket)
        await s.flush()
        assert ticket.id is not None
        return ticket.id


async def sla_alerts(store: Store) -> list[tuple[str, str]]:
    async with store.reader() as s:
        rows = (
            await s.execute(
                sa.select(col(Alert.kind), col(Alert.dedupe_key)).order_by(col(Alert.id))
            )
        ).all()
    return [(r[0], r[1]) for r in rows]


async def test_warning_then_breach_once_each_across_a_weekend(store: Store) -> None:
    policy = SlaPolicy(SlaConfig.model_validate({"business_hours": {"timezone": "Europe/Berlin"}}))
    # Friday 16:00 CET, high: 4 business hours -> due Monday 12:00; 80% (3h12m) -> 11:12.
    tid = await open_ticket(store, policy, local(BERLIN, 2026, 3, 6, 16))
    quiet = [
        local(BERLIN, 2026, 3, 6, 16, 59),
        local(BERLIN, 2026, 3, 7, 12),  # Saturday: the clock is stopped
        local(BERLIN, 2026, 3, 8, 23),
        local(BERLIN, 2026, 3, 9, 11, 11),
    ]
    for now in quiet:
        assert await check_sla(store, policy, now) == 0
    assert await check_sla(store, policy, local(BERLIN, 2026, 3, 9, 11, 12)) == 1
    assert await sla_alerts(store) == [("sla_warning", f"sla_warning:first_response:{tid}")]
    for minute in (13, 30, 59):
        assert await check_sla(store, policy, local(BERLIN, 2026, 3, 9, 11, minute)) == 0
    assert await check_sla(store, policy, local(BERLIN, 2026, 3, 9, 12)) == 1
    for day, hour in ((9, 12), (9, 23), (10, 12), (11, 11)):
        assert await check_sla(store, policy, local(BERLIN, 2026, 3, day, hour, 5)) == 0
    # Resolution: 24 business hours -> Wednesday 16:00; 80% -> Wednesday 11:12.
    assert await check_sla(store, policy, local(BERLIN, 2026, 3, 11, 11, 12)) == 1
    assert await check_sla(store, policy, local(BERLIN, 2026, 3, 11, 15, 59)) == 0
    assert await check_sla(store, policy, local(BERLIN, 2026, 3, 11, 16)) == 1
    assert await check_sla(store, policy, local(BERLIN, 2026, 3, 14, 12)) == 0
    assert await sla_alerts(store) == [
        ("sla_warning", f"sla_warning:first_response:{tid}"),
        ("sla_breach", f"sla_breach:first_response:{tid}"),
        ("sla_warning", f"sla_warning:resolution:{tid}"),
        ("sla_breach", f"sla_breach:resolution:{tid}"),
    ]
    async with store.reader() as s:
        breach = (
            await s.execute(
                sa.select(Alert).where(col(Alert.dedupe_key) == f"sla_breach:first_response:{tid}")
            )
        ).scalar_one()
    assert breach.ticket_id == tid
    assert breach.severity == "critical"
    assert breach.status == "pending"
    assert breach.detail["target"] == "first_response"
    assert breach.detail["business_hours"] is True
    assert datetime.fromisoformat(breach.detail["due_at"]) == local(BERLIN, 2026, 3, 9, 12)


async def test_many_tickets_reaching_a_target_at_once_come_as_one_alert(store: Store) -> None:
    policy = SlaPolicy(SlaConfig.model_validate({"group_over": 2, "warn_at": None}))
    now = datetime(2026, 3, 5, 12, tzinfo=UTC)
    # Two overdue at once: at the limit, one alert each.
    pair = [await open_ticket(store, policy, now - 9 * H, "normal") for _ in range(2)]
    assert await check_sla(store, policy, now) == 2
    assert [k for _, k in await sla_alerts(store)] == [
        f"sla_breach:first_response:{t}" for t in pair
    ]
    # Three more, a backfill from two days ago: one alert lists them (urgent first).
    old = now - 48 * H
    batch = [
        await open_ticket(store, policy, old, "normal"),
        await open_ticket(store, policy, old + H, "urgent"),
        await open_ticket(store, policy, old, "low"),
    ]
    assert await check_sla(store, policy, now) == 2  # first response, and urgent's resolution
    async with store.reader() as s:
        rows = (await s.execute(sa.select(Alert).order_by(col(Alert.id)))).scalars().all()
    new = rows[2:]
    [group] = [a for a in new if a.ticket_id is None]
    assert group.status == "pending" and group.severity == "critical"
    assert group.title == "3 tickets missed their first-response target"
    assert group.dedupe_key == f"sla_breach:first_response:group:{now.isoformat()}"
    assert group.detail["count"] == 3
    assert [t["id"] for t in group.detail["tickets"]] == [batch[1], batch[0], batch[2]]
    assert group.detail["tickets"][0]["due_in_s"] == -46 * 3600
    grouped = [a for a in new if a.status == "grouped"]
    assert sorted(a.dedupe_key for a in grouped) == sorted(
        f"sla_breach:first_response:{t}" for t in batch
    )
    assert all(a.detail["grouped_in"] == group.id for a in grouped)
    # The urgent ticket's resolution (8h) is alone in its check: its own alert.
    [alone] = [a for a in new if a.dedupe_key == f"sla_breach:resolution:{batch[1]}"]
    assert alone.status == "pending"
    # None of them again, grouped or not.
    assert await check_sla(store, policy, now + H) == 0
    # At +80h the pair's resolution (72h from 9h before now) and the backfilled normal one's
    # (72h from 48h before now) are overdue: three at once, one alert; the low one's (168h)
    # is not due yet.
    assert await check_sla(store, policy, now + 80 * H) == 1
    async with store.reader() as s:
        pending = (
            (
                await s.execute(
                    sa.select(col(Alert.dedupe_key)).where(
                        col(Alert.status) == "pending", col(Alert.id) > rows[-1].id
                    )
                )
            )
            .scalars()
            .all()
        )
    assert pending == [f"sla_breach:resolution:group:{(now + 80 * H).isoformat()}"]


async def test_group_over_null_never_groups(store: Store) -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        SlaConfig.model_validate({"group_over": 0})
    policy = SlaPolicy(SlaConfig.model_validate({"group_over": None, "warn_at": None}))
    now = datetime(2026, 3, 5, 12, tzinfo=UTC)
    ids = [await open_ticket(store, policy, now - 9 * H, "normal") for _ in range(8)]
    assert await check_sla(store, policy, now) == 8
    assert [k for _, k in await sla_alerts(store)] == [
        f"sla_breach:first_response:{t}" for t in ids
    ]


async def test_resolution_target_and_done_tickets(store: Store) -> None:
    policy = SlaPolicy(SlaConfig())
    opened = datetime(2026, 3, 2, 9, tzinfo=UTC)
    # Urgent: first response 1h, resolution 8h (round the clock).
    answered = await open_ticket(
        store, policy, opened, "urgent", first_response_at=opened + 0.5 * H
    )
    resolved = await open_ticket(
        store, policy, opened, "urgent", status="resolved", resolved_at=opened + 0.5 * H
    )
    waiting = await open_ticket(store, policy, opened, "urgent")

    assert await check_sla(store, policy, opened + 0.8 * H) == 1  # waiting: first-response warning
    assert await check_sla(store, policy, opened + 1 * H) == 1  # ...and breach
    assert (
        await check_sla(store, policy, opened + 6.4 * H) == 2
    )  # both open ones: resolution warning
    assert await check_sla(store, policy, opened + 8 * H) == 2
    assert await check_sla(store, policy, opened + 9 * H) == 0
    keys = {k for _, k in await sla_alerts(store)}
    assert keys == {
        f"sla_warning:first_response:{waiting}",
        f"sla_breach:first_response:{waiting}",
        f"sla_warning:resolution:{waiting}",
        f"sla_breach:resolution:{waiting}",
        f"sla_warning:resolution:{answered}",
        f"sla_breach:resolution:{answered}",
    }
    assert not any(str(resolved) == k.rsplit(":", 1)[1] for k in keys)


async def test_late_check_writes_only_the_breach(store: Store) -> None:
    policy = SlaPolicy(SlaConfig())
    opened = datetime(2026, 3, 2, 9, tzinfo=UTC)
    tid = await open_ticket(store, policy, opened, "normal")
    # The daemon was down for the whole warning period: a warning now would be noise.
    assert await check_sla(store, policy, opened + 9 * H) == 1
    assert await check_sla(store, policy, opened + 10 * H) == 0
    assert await sla_alerts(store) == [("sla_breach", f"sla_breach:first_response:{tid}")]


async def test_fixed_lead_warning(store: Store) -> None:
    policy = SlaPolicy(SlaConfig.model_validate({"warn_at": None, "warn_before": "30m"}))
    opened = datetime(2026, 3, 2, 9, tzinfo=UTC)
    await open_ticket(store, policy, opened, "high")  # first response due 13:00
    assert await check_sla(store, policy, opened + 3 * H + timedelta(minutes=29)) == 0
    assert await check_sla(store, policy, opened + 3 * H + timedelta(minutes=30)) == 1
    assert [k for k, _ in await sla_alerts(store)] == ["sla_warning"]


async def test_priority_raised_later_moves_the_due_time(store: Store) -> None:
    policy = SlaPolicy(SlaConfig())
    opened = datetime(2026, 3, 2, 9, tzinfo=UTC)
    tid = await open_ticket(store, policy, opened, "low")
    assert await check_sla(store, policy, opened + 2 * H) == 0
    # What the pipeline does when the priority changes: due times again from opened_at.
    first, resolution = policy.due(opened, "urgent")
    async with store.session() as s:
        ticket = await s.get(Ticket, tid)
        assert ticket is not None
        ticket.priority = "urgent"
        ticket.first_response_due_at, ticket.resolution_due_at = first, resolution
    assert await check_sla(store, policy, opened + 2 * H) == 1  # overdue at once: a breach
    assert [k for k, _ in await sla_alerts(store)] == ["sla_breach"]


async def test_disabled_does_nothing(store: Store) -> None:
    policy = SlaPolicy(SlaConfig(enabled=False))
    opened = datetime(2026, 3, 2, 9, tzinfo=UTC)
    await open_ticket(store, SlaPolicy(SlaConfig()), opened, "urgent")
    assert await check_sla(store, policy, opened + 30 * H) == 0


async def test_pipeline_stamps_due_times_and_moves_them_with_the_priority(
    pipeline: Pipeline, store: Store
) -> None:
    policy = SlaPolicy(SlaConfig())
    opened = datetime(2026, 3, 2, 9, tzinfo=UTC)
    jane = Author(user_id="42", handle="jane", followers=10)

    def mention(ext: str, text: str, at: datetime) -> InboundMessage:
        return InboundMessage(
            channel="x",
            external_id=ext,
            text=text,
            author=jane,
            created_at=at,
            conversation_id="1",
            in_reply_to=None if ext == "1" else "1",
        )

    async def the_ticket() -> Ticket:
        async with store.reader() as s:
            tickets = list((await s.execute(sa.select(Ticket))).scalars())
        assert len(tickets) == 1
        return tickets[0]

    await pipeline.ingest(
        Batch(messages=[mention("1", "@acme where is my order? it has not arrived yet", opened)]),
        "x",
    )
    first = await the_ticket()
    assert (first.first_response_due_at, first.resolution_due_at) == policy.due(
        opened, first.priority
    )
    # An angrier follow-up half an hour later raises the priority: the targets move, counted
    # from when the ticket opened, not from the new message.
    await pipeline.ingest(
        Batch(
            messages=[
                mention(
                    "2", "@acme still nothing. A disgrace, my lawyer will sue you", opened + H / 2
                )
            ]
        ),
        "x",
    )
    raised = await the_ticket()
    assert raised.priority != first.priority
    assert (raised.first_response_due_at, raised.resolution_due_at) == policy.due(
        opened, raised.priority
    )
    assert raised.first_response_due_at is not None and first.first_response_due_at is not None
    assert raised.first_response_due_at < first.first_response_due_at


async def test_a_reopened_ticket_gets_a_new_resolution_target(
    pipeline: Pipeline, store: Store
) -> None:
    from socialcrm import tickets

    policy = SlaPolicy(SlaConfig())
    opened = datetime(2026, 3, 2, 9, tzinfo=UTC)
    jane = Author(user_id="42", handle="jane")
    first = InboundMessage(
        channel="x",
        external_id="1",
        text="@acme my order never came",
        author=jane,
        created_at=opened,
    )
    await pipeline.ingest(Batch(messages=[first]), "x")
    async with store.session() as s:
        (ticket,) = (await s.execute(sa.select(Ticket))).scalars()
        await tickets.set_status(s, ticket.id, "resolved", "dana", "cli")
    again_at = opened + timedelta(days=3)
    again = InboundMessage(
        channel="x",
        external_id="2",
        text="@acme it broke again, same order",
        author=jane,
        created_at=again_at,
    )
    result = await pipeline.ingest(Batch(messages=[again]), "x")
    assert result.tickets_reopened == 1
    async with store.reader() as s:
        (t,) = (await s.execute(sa.select(Ticket))).scalars()
    assert t.status == "open"
    assert t.resolution_due_at == policy.add(
        again_at, policy.target(t.priority).resolution, t.priority
    )
    # Nobody ever answered: that target was missed. The resolution target is not, yet.
    await check_sla(store, policy, again_at + timedelta(minutes=1))
    assert [k for k in await sla_alerts(store) if k[0].startswith("sla_")] == [
        ("sla_breach", f"sla_breach:first_response:{t.id}")
    ]
