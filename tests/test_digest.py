"""Scheduled digests: the period's report written to the outbox once, and mailed whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import col

from socialcrm.alerts import AlertDispatcher, AlertsConfig
from socialcrm.config import ConfigError, load_config
from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.db import Store
from socialcrm.models import Alert
from socialcrm.pipeline import Pipeline
from socialcrm.reports.digest import DigestConfig, period_end, send_digest
from tests.test_alerts import Smtp, smtp  # noqa: F401  (the fixture)

DAY = timedelta(days=1)
MONDAY = datetime(2026, 3, 2, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script> worst service ever, I hate this"


def mention(n: int, text: str, at: datetime) -> InboundMessage:
    return InboundMessage(
        channel="x",
        external_id=str(n),
        text=text,
        author=Author(user_id=str(100 + n % 3), handle=f"user{n % 3}"),
        created_at=at,
    )


async def seed(pipeline: Pipeline) -> None:
    """Sunday and Monday traffic: the Monday digest covers Sunday only."""
    texts = [HOSTILE, "@acme love the new app, great work", "@acme my parcel is late again"]
    msgs = [mention(n, texts[n % 3], MONDAY - DAY + n * timedelta(hours=2)) for n in range(9)]
    msgs.append(mention(99, "@acme monday morning: still broken", MONDAY + timedelta(hours=7)))
    await pipeline.ingest(Batch(messages=msgs), "x")


async def digests(store: Store) -> list[Alert]:
    async with store.reader() as s:
        q = sa.select(Alert).where(col(Alert.kind) == "digest").order_by(col(Alert.id))
        return list((await s.execute(q)).scalars())


async def test_once_per_period_with_the_summary_and_the_whole_report(
    pipeline: Pipeline,
    store: Store,
    smtp: Smtp,  # noqa: F811
) -> None:
    await seed(pipeline)
    daily = DigestConfig(name="daily", cron="0 8 * * *", period="1d")  # type: ignore[arg-type]
    at_eight = MONDAY + timedelta(hours=8)
    first = await send_digest(store, daily, brand="Acme", tz="UTC", now=at_eight)
    assert first is not None
    # A second daemon on the same store, or a run a minute later, sends nothing more.
    assert await send_digest(store, daily, brand="Acme", tz="UTC", now=at_eight) is None
    later = at_eight + timedelta(minutes=1)
    assert await send_digest(store, daily, brand="Acme", tz="UTC", now=later) is None
    [alert] = await digests(store)
    assert alert.severity == "info"
    assert alert.detail["start"] == (MONDAY - DAY).isoformat()
    assert alert.detail["end"] == MONDAY.isoformat()
    summary = alert.detail["summary"]
    # Sunday's nine messages; Monday's is the next digest's.
    assert "Messages: 9 " in summary
    assert "<script>" not in alert.detail["report_html"]
    assert "&lt;script&gt;" in alert.detail["report_html"]

    mail = AlertsConfig.model_validate(
        {
            "sinks": [
                {
                    "type": "email",
                    "name": "leads",
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "security": "none",
                    "from_addr": "crm@acme.example",
                    "to": ["leads@acme.example"],
                }
            ],
            "routes": [{"kinds": ["digest"], "sinks": ["leads"]}],
        }
    )
    async with aiohttp.ClientSession() as http:
        sent = await AlertDispatcher(store, mail, http, lambda: later).deliver_due()
    assert sent == 1
    [msg] = smtp.box.messages
    assert "Acme report (daily)" in msg["Subject"]
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert "Messages: 9 " in text.get_content()
    page = html.get_content()
    assert "<svg" in page and "&lt;script&gt;" in page and "<script>" not in page

    # The next day's digest is a new one.
    tuesday = at_eight + DAY
    assert await send_digest(store, daily, brand="Acme", tz="UTC", now=tuesday) is not None
    assert [a.detail["end"] for a in await digests(store)] == [
        MONDAY.isoformat(),
        (MONDAY + DAY).isoformat(),
    ]
    assert "Messages: 1 " in (await digests(store))[1].detail["summary"]


def test_period_ends_at_local_midnight_or_the_hour() -> None:
    berlin = "Europe/Berlin"
    now = datetime(2026, 3, 29, 7, 30, tzinfo=UTC)  # 09:30 in Berlin, the day clocks go forward
    assert period_end(now, 7 * DAY, berlin) == datetime(2026, 3, 29, tzinfo=ZoneInfo(berlin))
    assert period_end(now, timedelta(hours=6), berlin) == datetime(
        2026, 3, 29, 9, tzinfo=ZoneInfo(berlin)
    )


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"cron": "every monday"}, "expected a crontab"),
        ({"cron": "0 8 * * mon", "period": "10m"}, "at least 1h"),
        ({"cron": "0 8 * * mon", "name": "Weekly Digest"}, "should match pattern"),
    ],
)
def test_bad_digest_settings_are_refused(settings: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        DigestConfig.model_validate({"name": "weekly", **settings})


def test_a_bad_digest_in_the_config_file_names_its_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "reports:\n  digests:\n    - name: weekly\n      cron: 'mondays at 8'\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "config.yaml:4: reports.digests[0].cron: " in str(err.value)
    assert "expected a crontab" in str(err.value)
