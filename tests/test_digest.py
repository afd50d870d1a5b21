"""Scheduled digests: the period's report written to the outbox once, and mailed whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError
from sqlmodel import col

from socialcrm.alerts import AlertDispatcher, AlertsConfig
from socialcrm.config import ConfigError, load_config
from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.db import Store
from socialcrm.models import Alert
from socialcrm.pipeline import Pipeline
from socialcrm.reports.digest import DigestConfig, period_end, send_digest
from socialcrm.sandbox.slack import SlackWorkspace, make_slack_app
from tests.test_alerts import WEBHOOK_SECRET, Receiver, Smtp, smtp  # noqa: F401  (the fixture)

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


def test_a_run_missed_within_catch_up_is_made_up() -> None:
    ktm = "Asia/Kathmandu"  # +05:45
    daily = DigestConfig(name="daily", cron="15 7 * * *", period=DAY)  # catch_up: 6h
    at = datetime(2026, 3, 2, 7, 15, tzinfo=ZoneInfo(ktm))
    assert daily.missed(ktm, at - timedelta(minutes=1)) is None  # yesterday's is 24h ago
    assert daily.missed(ktm, at) == at
    assert daily.missed(ktm, at + timedelta(hours=6)) == at
    assert daily.missed(ktm, at + timedelta(hours=6, seconds=1)) is None
    weekly = DigestConfig.model_validate({"name": "weekly", "cron": "30 6 * * 1", "catch_up": "7d"})
    thursday = datetime(2026, 3, 5, 12, tzinfo=ZoneInfo(ktm))
    assert weekly.missed(ktm, thursday) == datetime(2026, 3, 2, 6, 30, tzinfo=ZoneInfo(ktm))
    every = DigestConfig.model_validate(
        {"name": "often", "cron": "*/20 * * * *", "period": "1h", "catch_up": "1h"}
    )
    assert every.missed("UTC", datetime(2026, 3, 2, 9, 59, tzinfo=UTC)) == datetime(
        2026, 3, 2, 9, 40, tzinfo=UTC
    )
    never = DigestConfig.model_validate({"name": "n", "cron": "15 7 * * *", "catch_up": None})
    assert never.missed(ktm, at) is None


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"cron": "every monday"}, "expected a crontab"),
        ({"cron": "0 8 * * mon", "period": "10m"}, "at least 1h"),
        ({"cron": "0 8 * * mon", "catch_up": "0s"}, "longer than 0s"),
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


# -- the crontab --------------------------------------------------------------------------------


def fire_days(cron: str, tz: str = "Europe/Berlin") -> list[str]:
    """The weekdays a digest runs on in one week from Sunday 1 March 2026, all at 08:00."""
    trigger = DigestConfig(name="d", cron=cron).trigger(tz)
    zone = ZoneInfo(tz)
    start = datetime(2026, 3, 1, tzinfo=zone)
    days = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire < start + 7 * DAY:
        assert (fire.tzinfo, fire.hour, fire.minute) == (zone, 8, 0)
        days.append(fire.strftime("%a"))
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return days


@pytest.mark.parametrize(
    ("weekdays", "expected"),
    [
        ("1", "Mon"),
        ("0", "Sun"),
        ("7", "Sun"),
        ("1-5", "Mon Tue Wed Thu Fri"),
        ("5-7", "Sun Fri Sat"),
        ("*/2", "Sun Tue Thu Sat"),
        ("1-5/2", "Mon Wed Fri"),
        ("mon", "Mon"),
        ("sat,SUN", "Sun Sat"),
        ("fri-sun", "Sun Fri Sat"),
        ("*", "Sun Mon Tue Wed Thu Fri Sat"),
    ],
)
def test_crontab_weekdays_count_from_sunday(weekdays: str, expected: str) -> None:
    """As in crontab(5), 0 and 7 are Sunday (APScheduler 3 alone would read 1 as Tuesday)."""
    assert " ".join(fire_days(f"0 8 * * {weekdays}")) == expected


@pytest.mark.parametrize("weekdays", ["8", "tue-mon", "funday", "1-5/0"])
def test_impossible_weekdays_are_refused(weekdays: str) -> None:
    with pytest.raises(ValidationError, match="expected a crontab"):
        DigestConfig.model_validate({"name": "weekly", "cron": f"0 8 * * {weekdays}"})


# -- Slack, e-mail and the JSON webhook -----------------------------------------------------------

SLACK_TOKEN = "xoxb-digest-bot"
SLACK_CHANNEL = "C0REPORTS"


@asynccontextmanager
async def slack_workspace() -> AsyncIterator[tuple[SlackWorkspace, str]]:
    """The Slack stand-in with a reports channel, and its Web API base URL."""
    workspace = SlackWorkspace(bot_token=SLACK_TOKEN, channels={SLACK_CHANNEL: "reports"})
    async with TestServer(make_slack_app(workspace), host="127.0.0.1") as server:
        workspace.base_url = str(server.make_url("")).rstrip("/")
        yield workspace, f"{workspace.base_url}/api/"


def digest_sinks(smtp_port: int, slack_api: str, webhook_url: str | None = None) -> dict[str, Any]:
    """An ``alerts`` section: digests to Slack, e-mail and (when given) a webhook."""
    sinks: list[dict[str, Any]] = [
        {
            "type": "slack",
            "name": "reports",
            "token": SLACK_TOKEN,
            "channel": SLACK_CHANNEL,
            "api_base": slack_api,
            "mention": "<!here>",
        },
        {
            "type": "email",
            "name": "leads",
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "from_addr": "crm@acme.example",
            "to": ["leads@acme.example"],
        },
    ]
    if webhook_url is not None:
        sinks.append(
            {"type": "webhook", "name": "archive", "url": webhook_url, "secret": WEBHOOK_SECRET}
        )
    return {
        "sinks": sinks,
        "routes": [{"kinds": ["digest"], "sinks": [s["name"] for s in sinks]}],
        "default_sinks": [],
    }


@dataclass
class Webhook:
    receiver: Receiver
    url: str


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    receiver = Receiver(WEBHOOK_SECRET)
    app = web.Application(client_max_size=1024**2)  # aiohttp's default, like many receivers
    app.router.add_post("/digests", receiver.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield Webhook(receiver, str(server.make_url("/digests")))


async def test_slack_email_and_webhook_each_get_the_digest_once_per_period(
    pipeline: Pipeline,
    store: Store,
    smtp: Smtp,  # noqa: F811
    webhook: Webhook,
) -> None:
    await seed(pipeline)
    daily = DigestConfig(name="daily", cron="0 8 * * *", period="1d")  # type: ignore[arg-type]
    at_eight = MONDAY + timedelta(hours=8)
    brand = "Acme_Co & *Partners*"  # Markdown's specials stay as written in a code block
    alert = await send_digest(store, daily, brand=brand, tz="UTC", now=at_eight)
    assert alert is not None
    title = f"{brand} report (daily): 2026-03-01 00:00 to 2026-03-02 00:00"
    summary = alert.detail["summary"]
    assert alert.title == title and "Messages: 9 " in summary

    async with slack_workspace() as (workspace, api), aiohttp.ClientSession() as http:
        config = AlertsConfig.model_validate(digest_sinks(smtp.port, api, webhook.url))
        assert await AlertDispatcher(store, config, http, lambda: at_eight).deliver_due() == 3
        # Later the same morning, or from a second daemon on the same store: nothing more.
        later = at_eight + timedelta(hours=1)
        assert await send_digest(store, daily, brand=brand, tz="UTC", now=later) is None
        for _ in range(2):
            assert await AlertDispatcher(store, config, http, lambda: later).deliver_due() == 0

    # Slack: one post in the channel, the title and the summary's figures in a code block,
    # every character Slack would parse escaped; an info digest mentions nobody.
    [post] = workspace.messages
    assert post.channel == SLACK_CHANNEL and post.blocks == []
    text = post.text
    assert text.startswith(
        ":bar_chart: *Acme_Co &amp; *Partners* report (daily): "
        "2026-03-01 00:00 to 2026-03-02 00:00*\n```\n"
    )
    assert text.endswith("\n```")
    body = text.split("```")[1]
    assert body.startswith("\nAcme_Co &amp; *Partners*, ") and "\\" not in body
    for figure in ("Messages: 9 ", "net sentiment", "Tickets: ", "First response: median"):
        assert figure in body
    # Figures and words only: no customer's text, nothing Slack would parse.
    assert "<" not in text and ">" not in text and "worst service" not in text

    # E-mail: the summary as text, the whole report as HTML, customer text escaped.
    [mail] = smtp.box.messages
    assert mail["Subject"].strip() == f"[Acme info] {title}"  # the dispatcher's brand
    plain, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert plain is not None and html is not None
    assert "Messages: 9 " in plain.get_content()
    assert "Acme_Co & *Partners*, " in plain.get_content()  # plain text, no escapes
    page = html.get_content().replace("\r\n", "\n")
    assert "<svg" in page and "&lt;script&gt;" in page and "<script>" not in page

    # The webhook: the alert as data. Its detail keeps the report HTML the e-mail carried,
    # escaped, so a receiver can archive or show the report; text is the plain summary.
    [doc] = webhook.receiver.received
    assert webhook.receiver.bad_signatures == 0
    assert (doc["kind"], doc["severity"], doc["title"]) == ("digest", "info", title)
    assert doc["text"] == f"{title}\n\n{summary}"
    assert set(doc["detail"]) == {"digest", "start", "end", "summary", "report_html"}
    assert doc["detail"]["end"] == MONDAY.isoformat()
    assert doc["detail"]["report_html"].strip() == page.strip()
    assert "<script>" not in doc["detail"]["report_html"]
    [alert] = await digests(store)
    assert alert.status == "delivered"
