"""The alert outbox against real servers: aiosmtpd, a signed JSON webhook receiver, Slack.

Time is a fake clock handed to the dispatcher; nothing sleeps.
"""

from __future__ import annotations

import email
import hashlib
import hmac
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import ValidationError
from sqlmodel import col

from socialcrm.alerts import (
    DELIVERY_KEY,
    AlertDispatcher,
    AlertRenderer,
    AlertsConfig,
    delivery_state,
    raise_alert,
    view_of,
)
from socialcrm.db import Store
from socialcrm.models import Alert, Customer, Ticket
from socialcrm.sandbox.slack import SlackWorkspace, make_slack_app
from socialcrm.sla import SlaConfig, SlaPolicy, check_sla
from socialcrm.spikes import Example, RisingWord, Spike
from tests.email_server import free_port
from tests.test_sla import open_ticket

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WEBHOOK_SECRET = "whsec-0123456789abcdef"
SLACK_TOKEN = "xoxb-test-token"
HOSTILE_TITLE = "<!channel> refund now <script>alert(1)</script>"
HOSTILE_TEXT = (
    "<!here> hi <@U0BOSS> & <https://evil.example|click> <script>x()</script>\r\nBcc: a@b"
)


class FakeClock:
    """The dispatcher's clock: moves only when told."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


# -- the servers -----------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps every message it is given."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.content if isinstance(envelope.content, bytes) else b""
        msg = email.message_from_bytes(data, policy=default_policy)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"


@dataclass
class Smtp:
    """An SMTP listener on a fixed port that can be stopped (down) and started again."""

    port: int
    box: Mailbox = field(default_factory=Mailbox)
    controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.box, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    server = Smtp(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Receiver:
    """The JSON webhook receiver: checks signatures like our inbound webhooks, can be down."""

    secret: str
    down: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bad_signatures: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503, text="maintenance")
        body = await request.read()
        timestamp = request.headers.get("X-Socialcrm-Timestamp", "")
        mac = hmac.new(self.secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        if not hmac.compare_digest(
            f"sha256={mac.hexdigest()}", request.headers.get("X-Socialcrm-Signature", "")
        ):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.received.append(json.loads(body))
        self.headers.append(dict(request.headers))
        return web.Response(status=204)


@dataclass
class SlackStandIn:
    """Just enough of Slack's ``chat.postMessage``: Slack-shaped JSON, bearer token checked."""

    token: str
    down: bool = False
    rate_limited_s: int | None = None
    posted: list[dict[str, Any]] = field(default_factory=list)
    ts: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    async def post_message(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503, text="<html>upstream connect error</html>")
        if self.rate_limited_s is not None:
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(self.rate_limited_s)},
            )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if request.content_type == "application/json":
            args = await request.json()
        else:
            args = dict(await request.post())
        if not args.get("channel"):
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if not args.get("text"):
            return web.json_response({"ok": False, "error": "no_text"})
        self.posted.append(args)
        ts = f"1772442000.{next(self.ts):06d}"
        return web.json_response(
            {
                "ok": True,
                "channel": args["channel"],
                "ts": ts,
                "message": {"type": "message", "text": args["text"], "ts": ts},
            }
        )


@dataclass
class Sinks:
    smtp: Smtp
    receiver: Receiver
    slack: SlackStandIn
    webhook_url: str
    slack_url: str
    http: aiohttp.ClientSession

    def config(self, **overrides: Any) -> AlertsConfig:
        """Alerts config with all three sinks pointed at the local servers."""
        data: dict[str, Any] = {
            "sinks": [
                {
                    "type": "slack",
                    "name": "ops-slack",
                    "token": SLACK_TOKEN,
                    "channel": "C0ALERTS",
                    "api_base": self.slack_url,
                    "mention": "<!here>",
                },
                {
                    "type": "email",
                    "name": "oncall-mail",
                    "host": "127.0.0.1",
                    "port": self.smtp.port,
                    "security": "none",
                    "from_addr": "alerts@acme.example",
                    "to": ["oncall@acme.example", "lead@acme.example"],
                },
                {
                    "type": "webhook",
                    "name": "pager",
                    "url": self.webhook_url,
                    "secret": WEBHOOK_SECRET,
                },
            ],
            "backoff_jitter": 0,
            "ticket_url": "https://crm.acme.example/tickets/{id}",
        }
        data.update(overrides)
        return AlertsConfig.model_validate(data)

    def counts(self) -> tuple[int, int, int]:
        """Messages received so far by Slack, email and the webhook."""
        return len(self.slack.posted), len(self.smtp.box.messages), len(self.receiver.received)


@pytest.fixture
async def sinks(smtp: Smtp) -> AsyncIterator[Sinks]:
    receiver = Receiver(WEBHOOK_SECRET)
    slack = SlackStandIn(SLACK_TOKEN)
    hook_app = web.Application()
    hook_app.router.add_post("/alerts", receiver.handle)
    slack_app = web.Application()
    slack_app.router.add_post("/api/chat.postMessage", slack.post_message)
    async with (
        TestServer(hook_app, host="127.0.0.1") as hook_server,
        TestServer(slack_app, host="127.0.0.1") as slack_server,
        aiohttp.ClientSession() as http,
    ):
        yield Sinks(
            smtp=smtp,
            receiver=receiver,
            slack=slack,
            webhook_url=str(hook_server.make_url("/alerts")),
            slack_url=str(slack_server.make_url("/api/")),
            http=http,
        )


# -- helpers ---------------------------------------------------------------------------------------


async def add_alert(
    store: Store,
    kind: str = "escalation",
    key: str | None = None,
    *,
    at: datetime = T0,
    severity: str = "warning",
    title: str = "Legal threat on X",
    detail: dict[str, Any] | None = None,
    ticket_id: int | None = None,
) -> int:
    """A pending alert written the way the pipeline writes its escalations (a plain insert)."""
    async with store.session() as s:
        alert = Alert(
            kind=kind,
            dedupe_key=key or f"{kind}:{next(_keys)}",
            severity=severity,
            title=title,
            detail=detail
            if detail is not None
            else {"text": "I will sue you", "channel": "x", "priority": "high"},
            ticket_id=ticket_id,
            created_at=at,
        )
        s.add(alert)
        await s.flush()
        assert alert.id is not None
        return alert.id


_keys = itertools.count(1)


async def alerts_by_id(store: Store) -> dict[int, Alert]:
    async with store.reader() as s:
        rows = (await s.execute(sa.select(Alert).order_by(col(Alert.id)))).scalars().all()
    return {a.id: a for a in rows if a.id is not None}


async def a_ticket(store: Store) -> int:
    async with store.session() as s:
        cust = Customer(name="Dana")
        s.add(cust)
        await s.flush()
        assert cust.id is not None
        ticket = Ticket(customer_id=cust.id, channel="x", source="x-mentions", priority="urgent")
        s.add(ticket)
        await s.flush()
        assert ticket.id is not None
        return ticket.id


# -- delivery --------------------------------------------------------------------------------------


async def test_delivers_to_every_sink_once(store: Store, sinks: Sinks) -> None:
    clock = FakeClock()
    tid = await a_ticket(store)
    first = await add_alert(
        store,
        ticket_id=tid,
        severity="critical",
        detail={
            "text": "Your product hurt my kid, my lawyer will call",
            "channel": "x",
            "author": "dana",
            "url": "https://x.com/dana/status/1",
            "priority": "urgent",
            "rules": ["legal"],
        },
    )
    second = await add_alert(store, kind="source_auth", severity="critical", title="X refused")
    dispatcher = AlertDispatcher(store, sinks.config(), sinks.http, clock)
    assert await dispatcher.deliver_due() == 6
    assert sinks.counts() == (2, 2, 2)
    assert await dispatcher.deliver_due() == 0  # nothing due any more
    clock.advance(hours=3)
    assert await dispatcher.deliver_due() == 0
    assert sinks.counts() == (2, 2, 2)

    alerts = await alerts_by_id(store)
    for aid in (first, second):
        a = alerts[aid]
        assert (a.status, a.attempts, a.delivered_at, a.next_attempt_at) == (
            "delivered",
            3,
            T0,
            None,
        )
        sinks_state = delivery_state(a)["sinks"]
        assert {n: st["state"] for n, st in sinks_state.items()} == {
            "ops-slack": "sent",
            "oncall-mail": "sent",
            "pager": "sent",
        }

    # Slack: the channel, the mention for a critical alert, context and links.
    post = sinks.slack.posted[0]
    assert post["channel"] == "C0ALERTS"
    assert post["text"].startswith("<!here> ")
    assert "Legal threat on X" in post["text"]
    assert f"<https://crm.acme.example/tickets/{tid}|ticket #{tid}>" in post["text"]
    assert "<https://x.com/dana/status/1|open the message>" in post["text"]
    assert ">Your product hurt my kid" in post["text"]
    # Email: both addresses, a subject, text and HTML parts.
    mail = sinks.smtp.box.messages[0]
    assert sinks.smtp.box.envelopes[0] == (
        "alerts@acme.example",
        ["oncall@acme.example", "lead@acme.example"],
    )
    assert mail["Subject"] == "[Acme critical] Legal threat on X"
    assert mail["Auto-Submitted"] == "auto-generated"
    body = mail.get_body(("plain",))
    assert body is not None and "Your product hurt my kid" in body.get_content()
    # Webhook: signed (the receiver checked), the alert as data, its id for idempotency.
    doc = sinks.receiver.received[0]
    assert sinks.receiver.bad_signatures == 0
    assert doc["id"] == first
    assert doc["kind"] == "escalation"
    assert doc["detail"]["rules"] == ["legal"]
    assert DELIVERY_KEY not in doc["detail"]
    assert doc["links"]["ticket"] == f"https://crm.acme.example/tickets/{tid}"
    assert sinks.receiver.headers[0]["X-Socialcrm-Delivery"] == str(first)
    assert sinks.receiver.headers[0]["X-Socialcrm-Timestamp"] == str(int(T0.timestamp()))


async def test_one_warning_per_failure_streak_of_a_sink(
    store: Store, sinks: Sinks, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    config = sinks.config(backoff_base="30s", backoff_max="1m", max_attempts=50)
    dispatcher = AlertDispatcher(store, config, sinks.http, clock)
    sinks.receiver.down = True
    caplog.set_level("WARNING", logger="socialcrm.alerts")
    for _ in range(6):
        await add_alert(store, at=clock.now)
        await dispatcher.deliver_due()
        clock.advance(minutes=2)
    failing = [r for r in caplog.records if "pager" in r.getMessage()]
    assert len(failing) == 1 and "failing" in failing[0].getMessage()
    assert dispatcher.failed_attempts >= 6
    sinks.receiver.down = False
    await dispatcher.deliver_due()
    again = [r for r in caplog.records if "pager" in r.getMessage()]
    assert len(again) == 2 and "works again" in again[1].getMessage()


@pytest.mark.parametrize("failing", ["pager", "oncall-mail", "ops-slack"])
async def test_sink_that_recovers_gets_every_alert_exactly_once(
    store: Store, sinks: Sinks, failing: str
) -> None:
    clock = FakeClock()
    config = sinks.config(backoff_base="30s", backoff_max="10m", max_attempts=50)
    dispatcher = AlertDispatcher(store, config, sinks.http, clock)

    def down(on: bool) -> None:
        if failing == "pager":
            sinks.receiver.down = on
        elif failing == "ops-slack":
            sinks.slack.down = on
        elif on:
            sinks.smtp.stop()  # connection refused
        else:
            sinks.smtp.start()

    index = ["ops-slack", "oncall-mail", "pager"].index(failing)

    down(True)
    ids = [await add_alert(store, at=clock.now) for _ in range(3)]
    assert await dispatcher.deliver_due() == 6
    # Rounds while it stays down: more alerts come, the others are delivered at once.
    for minutes in (1, 2, 5, 10):
        clock.advance(minutes=minutes)
        ids.append(await add_alert(store, at=clock.now))
        await dispatcher.deliver_due()
    counts = sinks.counts()
    assert counts[index] == 0
    assert [c for i, c in enumerate(counts) if i != index] == [len(ids), len(ids)]
    alerts = await alerts_by_id(store)
    assert all(alerts[i].status == "pending" for i in ids)
    st = delivery_state(alerts[ids[0]])["sinks"][failing]
    assert st["state"] == "pending" and st["attempts"] >= 3 and st["error"]

    down(False)
    for _ in range(12):
        clock.advance(minutes=10)
        await dispatcher.deliver_due()
    assert sinks.counts() == (len(ids), len(ids), len(ids))
    alerts = await alerts_by_id(store)
    assert all(alerts[i].status == "delivered" for i in ids)
    if failing == "pager":
        assert sorted(d["id"] for d in sinks.receiver.received) == ids
    # Nothing more is due: a working sink was never sent a repeat.
    clock.advance(days=1)
    assert await dispatcher.deliver_due() == 0
    assert sinks.counts() == (len(ids), len(ids), len(ids))


async def test_backoff_is_exponential_per_alert_and_sink(store: Store, sinks: Sinks) -> None:
    clock = FakeClock()
    config = sinks.config(backoff_base="30s", backoff_max="5m")
    dispatcher = AlertDispatcher(store, config, sinks.http, clock)
    sinks.receiver.down = True
    aid = await add_alert(store)
    waits = []
    for _ in range(6):
        await dispatcher.deliver_due()
        alert = (await alerts_by_id(store))[aid]
        st = delivery_state(alert)["sinks"]["pager"]
        next_at = datetime.fromisoformat(st["next_at"])
        assert alert.next_attempt_at == next_at
        waits.append((next_at - clock.now).total_seconds())
        clock.now = next_at
    assert waits == [30, 60, 120, 240, 300, 300]
    assert sinks.counts() == (1, 1, 0)


async def test_retry_after_wins_over_backoff(store: Store, sinks: Sinks) -> None:
    clock = FakeClock()
    dispatcher = AlertDispatcher(store, sinks.config(), sinks.http, clock)
    sinks.slack.rate_limited_s = 120
    aid = await add_alert(store)
    await add_alert(store)
    await dispatcher.deliver_due()
    alerts = await alerts_by_id(store)
    st = delivery_state(alerts[aid])["sinks"]["ops-slack"]
    assert st["error"].startswith("slack 429")
    assert datetime.fromisoformat(st["next_at"]) == T0 + timedelta(seconds=120)
    sinks.slack.rate_limited_s = None
    clock.advance(seconds=119)
    assert await dispatcher.deliver_due() == 0
    clock.advance(seconds=1)
    assert await dispatcher.deliver_due() == 2
    assert sinks.counts() == (2, 2, 2)


async def test_gives_up_after_max_attempts(store: Store, sinks: Sinks) -> None:
    clock = FakeClock()
    config = sinks.config(max_attempts=3, backoff_base="1m")
    dispatcher = AlertDispatcher(store, config, sinks.http, clock)
    sinks.receiver.down = True
    aid = await add_alert(store)
    for _ in range(5):
        await dispatcher.deliver_due()
        clock.advance(hours=1)
    alert = (await alerts_by_id(store))[aid]
    assert alert.status == "failed"
    assert alert.next_attempt_at is None
    assert alert.delivered_at == T0  # Slack and email took it at once
    st = delivery_state(alert)["sinks"]
    assert (st["pager"]["state"], st["pager"]["attempts"]) == ("failed", 3)
    assert st["ops-slack"]["state"] == "sent"
    sinks.receiver.down = False
    await dispatcher.deliver_due()
    assert sinks.counts() == (1, 1, 0)


async def test_a_crashed_round_is_picked_up_after_the_lease(store: Store, sinks: Sinks) -> None:
    clock = FakeClock()
    dispatcher = AlertDispatcher(store, sinks.config(lease="5m"), sinks.http, clock)
    aid = await add_alert(store)
    claimed = await dispatcher._claim(clock.now)  # the round dies after claiming
    assert [c.view.id for c in claimed] == [aid]
    assert await dispatcher.deliver_due() == 0  # leased: left alone
    clock.advance(minutes=5)
    assert await dispatcher.deliver_due() == 3
    assert sinks.counts() == (1, 1, 1)


# -- dedupe, cooldown, routing ---------------------------------------------------------------------


async def test_dedupe_and_cooldown_at_delivery(store: Store, sinks: Sinks) -> None:
    clock = FakeClock()
    config = sinks.config(cooldown="1h", cooldowns={"source_failing": "6h"})
    dispatcher = AlertDispatcher(store, config, sinks.http, clock)
    key = "escalation:ticket:7:legal threat"
    a1 = await add_alert(store, key=key)
    a2 = await add_alert(store, key=key)  # the same escalation again, in the same round
    await dispatcher.deliver_due()
    clock.advance(minutes=59)
    a3 = await add_alert(store, key=key, at=clock.now)
    await dispatcher.deliver_due()
    assert sinks.counts() == (1, 1, 1)
    clock.advance(minutes=2)  # 61 minutes after the first was sent
    a4 = await add_alert(store, key=key, at=clock.now)
    await dispatcher.deliver_due()
    assert sinks.counts() == (2, 2, 2)

    # Another kind has its own cooldown.
    s1 = await add_alert(store, kind="source_failing", key="source_failing:x", at=clock.now)
    await dispatcher.deliver_due()
    clock.advance(hours=5)
    s2 = await add_alert(store, kind="source_failing", key="source_failing:x", at=clock.now)
    await dispatcher.deliver_due()
    assert sinks.counts() == (3, 3, 3)

    alerts = await alerts_by_id(store)
    for aid in (a2, a3, s2):
        a = alerts[aid]
        assert (a.status, a.attempts) == ("delivered", 0)
        assert delivery_state(a)["routed"] == []
    assert delivery_state(alerts[a2])["duplicate_of"] == a1
    assert delivery_state(alerts[a3])["duplicate_of"] == a1
    assert delivery_state(alerts[s2])["duplicate_of"] == s1
    assert alerts[a4].attempts == 3
    assert [d["id"] for d in sinks.receiver.received] == [a1, a4, s1]


async def test_a_repeat_waits_for_the_original_while_a_sink_is_down(
    store: Store, sinks: Sinks
) -> None:
    clock = FakeClock()
    dispatcher = AlertDispatcher(store, sinks.config(cooldown="1m"), sinks.http, clock)
    sinks.receiver.down = True
    a1 = await add_alert(store, key="k")
    await dispatcher.deliver_due()
    clock.advance(hours=2)  # past the cooldown, but the first is still on its way
    a2 = await add_alert(store, key="k", at=clock.now)
    await dispatcher.deliver_due()
    sinks.receiver.down = False
    clock.advance(hours=2)
    await dispatcher.deliver_due()
    assert [d["id"] for d in sinks.receiver.received] == [a1]
    assert delivery_state((await alerts_by_id(store))[a2])["duplicate_of"] == a1


async def test_raise_alert_respects_the_cooldown(store: Store) -> None:
    async with store.session() as s:
        first = await raise_alert(
            s, "source_failing", "source_failing:x", "X keeps failing", {"source": "x"}, now=T0
        )
        again = await raise_alert(
            s,
            "source_failing",
            "source_failing:x",
            "X keeps failing",
            now=T0 + timedelta(minutes=59),
        )
    assert first is not None and first.id is not None
    assert first.status == "pending" and first.detail == {"source": "x"}
    assert again is None
    async with store.session() as s:
        later = await raise_alert(
            s,
            "source_failing",
            "source_failing:x",
            "X keeps failing",
            now=T0 + timedelta(minutes=61),
        )
        other = await raise_alert(s, "source_failing", "source_failing:y", "Y too", now=T0)
        once = await raise_alert(s, "sla_breach", "sla_breach:x:1", "t", cooldown=None, now=T0)
        never = await raise_alert(
            s, "sla_breach", "sla_breach:x:1", "t", cooldown=None, now=T0 + timedelta(days=400)
        )
        sneaky = await raise_alert(
            s, "spike", "spike:z", "t", {DELIVERY_KEY: {"routed": []}, "n": 1}, now=T0
        )
    assert later is not None and other is not None and once is not None
    assert never is None
    assert sneaky is not None and sneaky.detail == {"n": 1}


def test_routing() -> None:
    config = AlertsConfig.model_validate(
        {
            "sinks": [
                {"type": "slack", "name": "support", "token": "t", "channel": "C1"},
                {"type": "slack", "name": "leads", "token": "t", "channel": "C2"},
                {
                    "type": "webhook",
                    "name": "pager",
                    "url": "https://pager.example/hook",
                    "secret": "s" * 16,
                },
            ],
            "routes": [
                {"kinds": ["sla_*", "escalation"], "sinks": ["support"]},
                {"kinds": ["sla_breach"], "priorities": ["urgent", "high"], "sinks": ["leads"]},
                {"min_severity": "critical", "sinks": ["pager"]},
            ],
            "default_sinks": ["support"],
        }
    )
    assert config.sinks_for("sla_warning", "warning", "urgent") == ["support"]
    assert config.sinks_for("sla_breach", "critical", "urgent") == ["support", "leads", "pager"]
    assert config.sinks_for("sla_breach", "warning", "low") == ["support"]
    assert config.sinks_for("escalation", "critical", None) == ["support", "pager"]
    assert config.sinks_for("spike", "warning", None) == ["support"]  # the default
    assert config.sinks_for("spike", "critical", None) == ["pager"]
    everywhere = config.model_copy(update={"default_sinks": None})
    assert everywhere.sinks_for("reply_failed", "info", None) == ["support", "leads", "pager"]
    nowhere = config.model_copy(update={"default_sinks": []})
    assert nowhere.sinks_for("reply_failed", "info", None) == []


async def test_routes_decide_the_sinks(store: Store, sinks: Sinks) -> None:
    clock = FakeClock()
    config = sinks.config(
        routes=[
            {"kinds": ["sla_*"], "sinks": ["ops-slack"]},
            {"min_severity": "critical", "priorities": ["urgent"], "sinks": ["pager"]},
        ],
        default_sinks=[],
    )
    dispatcher = AlertDispatcher(store, config, sinks.http, clock)
    await add_alert(store, kind="sla_warning", detail={"priority": "low"})
    urgent = await add_alert(store, severity="critical", detail={"priority": "urgent", "text": "!"})
    unrouted = await add_alert(store, kind="reply_failed", detail={})
    assert await dispatcher.deliver_due() == 2
    assert sinks.counts() == (1, 0, 1)
    alerts = await alerts_by_id(store)
    assert delivery_state(alerts[urgent])["routed"] == ["pager"]
    assert (alerts[unrouted].status, delivery_state(alerts[unrouted])["routed"]) == (
        "delivered",
        [],
    )


def test_config_is_checked_and_secrets_hidden() -> None:
    with pytest.raises(ValidationError, match="not configured"):
        AlertsConfig.model_validate({"routes": [{"sinks": ["nope"]}]})
    with pytest.raises(ValidationError, match="same name"):
        AlertsConfig.model_validate(
            {
                "sinks": [
                    {"type": "slack", "name": "a", "token": "t", "channel": "C1"},
                    {"type": "slack", "name": "a", "token": "t", "channel": "C2"},
                ]
            }
        )
    with pytest.raises(ValidationError, match="at least 16"):
        AlertsConfig.model_validate(
            {
                "sinks": [
                    {"type": "webhook", "name": "w", "url": "https://h.example/", "secret": "x"}
                ]
            }
        )
    with pytest.raises(ValidationError, match="mention"):
        AlertsConfig.model_validate(
            {
                "sinks": [
                    {"type": "slack", "name": "a", "token": "t", "channel": "C", "mention": "*hi*"}
                ]
            }
        )
    cfg = AlertsConfig.model_validate(
        {
            "sinks": [{"type": "slack", "name": "a", "token": "xoxb-secret", "channel": "C1"}],
            "cooldowns": {"escalation": "30m"},
        }
    )
    assert "xoxb-secret" not in repr(cfg) and "xoxb-secret" not in cfg.model_dump_json()
    assert cfg.cooldown_for("escalation") == timedelta(minutes=30)
    assert cfg.cooldown_for("spike") == timedelta(hours=1)


# -- escaping --------------------------------------------------------------------------------------


async def test_hostile_text_is_escaped_for_each_sink(store: Store, sinks: Sinks) -> None:
    clock = FakeClock()
    dispatcher = AlertDispatcher(store, sinks.config(), sinks.http, clock)
    detail = {
        "text": HOSTILE_TEXT,
        "author": "<!everyone>",
        "channel": "x",
        "url": "https://x.com/a|<!channel>",
        "priority": "urgent",
    }
    aid = await add_alert(store, title=HOSTILE_TITLE, severity="critical", detail=detail)
    assert await dispatcher.deliver_due() == 3

    text = sinks.slack.posted[0]["text"]
    assert text.startswith("<!here> ")  # the configured mention, and nothing else of the kind
    rest = text[len("<!here> ") :]
    for raw in ("<!channel>", "<!here>", "<!everyone>", "<@U0BOSS>", "<script>", "<https://evil"):
        assert raw not in rest
    assert "&lt;!channel&gt;" in rest and "&lt;script&gt;" in rest and "&amp;" in rest
    assert "x.com/a|" not in rest  # an unsafe link is not made a link

    mail = sinks.smtp.box.messages[0]
    html_part = mail.get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "\n" not in mail["Subject"] and mail["Bcc"] is None
    assert mail["Subject"] == "[Acme critical] <!channel> refund now <script>alert(1)</script>"

    doc = sinks.receiver.received[0]
    assert doc["id"] == aid
    assert doc["title"] == HOSTILE_TITLE and doc["detail"]["text"] == HOSTILE_TEXT  # data, intact
    assert "message" not in doc["links"]


def test_every_kind_renders_in_every_format() -> None:
    renderer = AlertRenderer()
    samples: list[tuple[str, dict[str, Any]]] = [
        ("escalation", {"text": "t", "channel": "x", "author": "a", "priority": "high"}),
        ("sla_warning", {"target": "first_response", "priority": "high", "due_at": T0.isoformat()}),
        ("sla_breach", {"target": "resolution", "priority": "low", "opened_at": T0.isoformat()}),
        ("spike", {"source": "x", "metrics": ["negative"], "examples": [{"text": "bad"}]}),
        ("source_auth", {"source": "x", "error": "401"}),
        ("reply_needs_check", {}),
        ("../../etc/passwd", {}),
    ]
    alert = Alert(id=1, kind="k", dedupe_key="k", title="T", ticket_id=3, created_at=T0)
    for kind, detail in samples:
        view = view_of(
            alert.model_copy(update={"kind": kind, "detail": detail}),
            "https://crm.example/t/{id}",
        )
        assert renderer.render("slack", view).strip()
        assert renderer.render("text", view).strip()
        assert renderer.render("subject", view).strip()
        assert renderer.render("html", view, text="x").startswith("<!doctype html>")


async def test_sla_and_spike_alerts_say_what_happened_in_every_sink(
    store: Store, sinks: Sinks
) -> None:
    """The key facts of SLA warnings and breaches and of spikes, in Slack, e-mail and JSON."""
    policy = SlaPolicy(SlaConfig())
    # Urgent (first response 1h): due at 07:55, so 1h05m late at T0.
    # High (first response 4h): due at 09:30; 80% of it is gone at T0.
    tickets = [
        await open_ticket(store, policy, opened, priority, subject, team="care", assignee="ann")
        for priority, opened, subject in [
            ("urgent", T0 - timedelta(hours=2, minutes=5), HOSTILE_TITLE),
            ("high", T0 - timedelta(hours=3, minutes=30), "Parcel lost & no answer"),
        ]
    ]
    late, close = tickets
    assert await check_sla(store, policy, T0) == 2
    spike = Spike(
        source="x-mentions",
        started_at=T0 - timedelta(minutes=30),
        window_start=T0 - timedelta(minutes=15),
        window_end=T0,
        metrics=("negative",),
        negative=34,
        total=41,
        expected_negative=2.0,
        expected_total=12.25,
        score=9.3,
        baseline="recent",
        examples=(
            Example(7, HOSTILE_TEXT, "x", "<!everyone>", "https://x.com/a/status/7", -0.95),
            Example(8, "Checkout broken for hours, awful", "x", "bob", None, -0.8),
        ),
        rising_words=(RisingWord("checkout", 30, 1), RisingWord("broken", 21, 0)),
    )
    async with store.session() as s:
        await raise_alert(
            s, "spike", spike.dedupe_key, spike.title(), spike.detail(), spike.severity, now=T0
        )
    dispatcher = AlertDispatcher(store, sinks.config(), sinks.http, FakeClock())
    assert await dispatcher.deliver_due() == 9
    by_id = {a.kind: aid for aid, a in (await alerts_by_id(store)).items()}
    assert set(by_id) == {"sla_breach", "sla_warning", "spike"}

    marker = {
        "sla_breach": f"Ticket #{late} missed",
        "sla_warning": f"Ticket #{close} is close",
        "spike": "spiked on x-mentions",
    }

    def slack_of(kind: str) -> str:
        [text] = [p["text"] for p in sinks.slack.posted if marker[kind] in p["text"]]
        return str(text)

    def mail_of(kind: str) -> tuple[str, str, str]:
        [msg] = [
            m for m in sinks.smtp.box.messages if m["X-Socialcrm-Alert"] == f"{kind} {by_id[kind]}"
        ]
        plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
        assert plain is not None and html is not None
        # Lines arrive ending in CRLF, as SMTP carries them.
        text, page = (part.get_content().replace("\r\n", "\n") for part in (plain, html))
        # A subject folded right after "Subject:" is read back with the fold's space.
        return str(msg["Subject"]).strip(), text, page

    def json_of(kind: str) -> dict[str, Any]:
        [doc] = [d for d in sinks.receiver.received if d["id"] == by_id[kind]]
        return doc

    # -- the breach: which ticket, its priority, when it was due and how late it is.
    text = slack_of("sla_breach")
    assert text.startswith(f"<!here> :red_circle: *Ticket #{late} missed its first response")
    assert "Priority *urgent*" in text and "team care" in text and "Assignee: ann" in text
    assert "due 2026-03-02 07:55 UTC" in text and "1h05m late" in text
    assert "opened 2026-03-02 06:55 UTC" in text
    assert f"<https://crm.acme.example/tickets/{late}|open ticket #{late}>" in text
    assert "&lt;!channel&gt; refund now" in text and "<!channel>" not in text
    subject, plain, html = mail_of("sla_breach")
    assert subject == (
        f"[Acme critical] Ticket #{late} missed its first-response target (2026-03-02 07:55 UTC)"
    )
    for fact in (
        f"Ticket #{late} missed its first response target.",
        "Priority: urgent · x (x-mentions)",
        "Due: 2026-03-02 07:55 UTC",
        "1h05m late",
        "Opened: 2026-03-02 06:55 UTC",
        f"https://crm.acme.example/tickets/{late}",
    ):
        assert fact in plain
        assert fact in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    doc = json_of("sla_breach")
    assert (doc["kind"], doc["severity"], doc["ticket_id"]) == ("sla_breach", "critical", late)
    assert doc["detail"]["target"] == "first_response"
    assert doc["detail"]["priority"] == "urgent"
    assert doc["detail"]["due_at"] == (T0 - timedelta(hours=1, minutes=5)).isoformat()
    assert doc["detail"]["due_in_s"] == -3900
    assert doc["detail"]["subject"] == HOSTILE_TITLE  # data, as written
    assert doc["text"] == plain.strip()

    # -- the warning: which ticket, its priority, when it is due and how long is left.
    text = slack_of("sla_warning")
    assert text.startswith(f":hourglass_flowing_sand: *Ticket #{close} is close to its first")
    assert "Priority *high*" in text and "due 2026-03-02 09:30 UTC" in text and "in 30m" in text
    assert ">Parcel lost &amp; no answer" in text
    subject, plain, html = mail_of("sla_warning")
    assert (
        subject == f"[Acme warning] Ticket #{close} needs a first response by 2026-03-02 09:30 UTC"
    )
    for fact in (
        f"Ticket #{close} is close to its first response target.",
        "Priority: high",
        "Due: 2026-03-02 09:30 UTC",
        "in 30m",
    ):
        assert fact in plain
        assert fact in html
    doc = json_of("sla_warning")
    assert (doc["ticket_id"], doc["detail"]["due_in_s"]) == (close, 1800)
    assert doc["text"] == plain.strip()

    # -- the spike: where and since when, the window, the count against the baseline,
    # the words on the rise and the worst examples (escaped for Slack and HTML).
    text = slack_of("spike")
    assert text.startswith("<!here> :chart_with_upwards_trend: *Negative mentions spiked on")
    assert "since 2026-03-02 08:30 UTC" in text
    assert "Last 15m: *34* negative (usually ~2.0), *41* in all (usually ~12.2)" in text
    assert "Words on the rise: `checkout`, `broken`" in text
    assert ">&lt;!here&gt; hi &lt;@U0BOSS&gt; &amp; &lt;https://evil.example|click&gt;" in text
    assert "— &lt;!everyone&gt; on x · <https://x.com/a/status/7|open>" in text
    assert ">Checkout broken for hours, awful\n— bob on x" in text
    rest = text[len("<!here> ") :]
    for raw in ("<!here>", "<!everyone>", "<@U0BOSS>", "<https://evil", "<script>"):
        assert raw not in rest
    subject, plain, html = mail_of("spike")
    assert subject == (
        "[Acme critical] Negative mentions spiked on x-mentions: 34 in a window (usually ~2)"
    )
    for fact in (
        "since 2026-03-02 08:30 UTC",
        "Last 15m: 34 negative (usually about 2.0), 41 in all (usually about 12.2)",
        "Words on the rise: checkout, broken",
        "https://x.com/a/status/7",
        'Checkout broken for hours, awful" — bob on x',
    ):
        assert fact in plain
    assert "&lt;script&gt;x()&lt;/script&gt;" in html and "<script>" not in html
    assert "Words on the rise: checkout, broken" in html and "41 in all" in html
    doc = json_of("spike")
    assert (doc["kind"], doc["severity"]) == ("spike", "critical")
    assert doc["detail"]["window_start"] == (T0 - timedelta(minutes=15)).isoformat()
    assert (doc["detail"]["negative"], doc["detail"]["expected_negative"]) == (34, 2.0)
    assert [w["word"] for w in doc["detail"]["rising_words"]] == ["checkout", "broken"]
    assert doc["detail"]["examples"][0]["text"] == HOSTILE_TEXT
    assert doc["links"] == {}
    assert doc["text"].replace("\r\n", "\n") == plain.strip()  # the example's CRLF, kept


async def test_a_backfill_of_overdue_tickets_reaches_every_sink_as_one_alert(
    store: Store, sinks: Sinks
) -> None:
    """Old messages open tickets already past their target: one breach alert lists them."""
    policy = SlaPolicy(SlaConfig(warn_at=None))  # group_over: 5; no warnings in the way
    # Seven messages from a day ago (first response: high 4h, normal 8h; resolution: high
    # 24h, normal 72h, not due yet).
    ids = [
        await open_ticket(
            store,
            policy,
            T0 - timedelta(days=1) + timedelta(minutes=i),
            priority,
            HOSTILE_TITLE if i == 0 else f"Order {i} late",
        )
        for i, priority in enumerate(["normal"] * 5 + ["high"] * 2)
    ]
    assert await check_sla(store, policy, T0) == 1
    dispatcher = AlertDispatcher(store, sinks.config(), sinks.http, FakeClock())
    assert await dispatcher.deliver_due() == 3  # one alert, three sinks
    assert await dispatcher.deliver_due() == 0
    # The high ones first, then by due time; each with its link.
    order = [ids[5], ids[6], *ids[:5]]
    [post] = sinks.slack.posted
    text = str(post["text"])
    assert text.startswith("<!here> :red_circle: *7 tickets missed their first response target*")
    positions = [text.index(f"#{i} ") for i in order]
    assert positions == sorted(positions)
    assert f"#{ids[5]} *high*" in text and f"#{ids[0]} *normal*" in text
    for i in ids:
        assert f"<https://crm.acme.example/tickets/{i}|open>" in text
    assert "&lt;!channel&gt; refund now" in text and "<!channel>" not in text
    # The first high one was due four hours after T0 - 1 day + 5 min; the first normal one,
    # eight hours after T0 - 1 day.
    assert "19h55m late" in text and "16h00m late" in text
    [msg] = sinks.smtp.box.messages
    assert msg["Subject"].strip() == "[Acme critical] 7 tickets missed their first-response target"
    plain = msg.get_body(("plain",))
    assert plain is not None
    body = plain.get_content()
    assert "7 tickets missed their first response target." in body
    assert all(f"#{i} " in body for i in ids)
    [doc] = sinks.receiver.received
    assert doc["ticket_id"] is None and doc["detail"]["count"] == 7
    assert [t["id"] for t in doc["detail"]["tickets"]] == order


# -- a Slack sink that refuses for good ------------------------------------------------------------


def _refuse(workspace: SlackWorkspace, error: str) -> None:
    if error == "not_in_channel":
        workspace.outside.add("C0ALERTS")
    elif error == "is_archived":
        workspace.archived.add("C0ALERTS")
    elif error == "channel_not_found":
        workspace.channels.clear()
    elif error == "token_revoked":
        workspace.revoked = True
    elif error == "account_inactive":
        workspace.inactive = True
    elif error == "missing_scope":
        workspace.scopes.discard("chat:write")


@pytest.mark.parametrize(
    "error",
    [
        "not_in_channel",
        "is_archived",
        "channel_not_found",
        "token_revoked",
        "account_inactive",
        "missing_scope",
    ],
)
async def test_a_slack_sink_refused_for_good_stops_and_says_so_through_the_others(
    store: Store, sinks: Sinks, error: str
) -> None:
    workspace = SlackWorkspace(bot_token=SLACK_TOKEN, channels={"C0ALERTS": "alerts"})
    _refuse(workspace, error)
    async with TestServer(make_slack_app(workspace), host="127.0.0.1") as server:
        config = AlertsConfig.model_validate(
            {
                "sinks": [
                    {
                        "type": "slack",
                        "name": "ops-slack",
                        "token": SLACK_TOKEN,
                        "channel": "C0ALERTS",
                        "api_base": str(server.make_url("/api/")),
                    },
                    {
                        "type": "webhook",
                        "name": "pager",
                        "url": sinks.webhook_url,
                        "secret": WEBHOOK_SECRET,
                    },
                ],
                "backoff_jitter": 0,
                # Only Slack is routed the escalations: the sink alert must still get out.
                "routes": [{"kinds": ["escalation"], "sinks": ["ops-slack"]}],
            }
        )
        clock = FakeClock()
        dispatcher = AlertDispatcher(store, config, sinks.http, clock)
        ids = [await add_alert(store, at=clock.now) for _ in range(3)]
        await dispatcher.deliver_due()
        assert len(workspace.calls) == 1, "a sink that refused is not tried again this round"
        health = dispatcher.health()
        assert health["ops-slack"]["state"] == "stopped" and error in health["ops-slack"]["error"]
        # One alert about the sink, delivered through the other sink in the next round.
        clock.advance(seconds=5)
        await dispatcher.deliver_due()
        told = [a for a in (await alerts_by_id(store)).values() if a.kind == "alert_sink_failing"]
        assert len(told) == 1 and told[0].status == "delivered"
        assert told[0].detail["sink"] == "ops-slack" and error in told[0].title
        assert [d["kind"] for d in sinks.receiver.received] == ["alert_sink_failing"]
        # Rounds every minute for most of an hour: Slack is not asked again.
        for _ in range(58):
            clock.advance(minutes=1)
            await dispatcher.deliver_due()
        assert len(workspace.calls) == 1
        assert (
            len([a for a in (await alerts_by_id(store)).values() if a.kind == "alert_sink_failing"])
            == 1
        )
        # Fixed: the next hourly try delivers every waiting alert, once.
        workspace.outside.clear()
        workspace.archived.clear()
        workspace.channels["C0ALERTS"] = "alerts"
        workspace.revoked = workspace.inactive = False
        workspace.scopes.add("chat:write")
        clock.advance(minutes=5)
        await dispatcher.deliver_due()
        assert len(workspace.messages) == 3
        alerts = await alerts_by_id(store)
        assert all(alerts[i].status == "delivered" for i in ids)
        assert dispatcher.health() == {}
