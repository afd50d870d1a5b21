"""The daemon: polling with backoff and pauses, health, metrics and signed webhooks.

Sources here are real connectors talking HTTP to local servers: an RSS feed server whose
answers the tests control, and the daemon's own webhook endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.triggers.interval import IntervalTrigger

from connectors.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from socialcrm.chatops.commands import Actor, CommandError, Commands
from socialcrm.config import Config
from socialcrm.connector import Batch
from socialcrm.daemon import Daemon
from socialcrm.db import Store
from socialcrm.demo import free_port
from socialcrm.models import (
    Alert,
    Customer,
    Message,
    Quarantine,
    Reply,
    SourceState,
    Ticket,
    utcnow,
)
from socialcrm.pipeline import Pipeline
from socialcrm.rules import RuleSet
from socialcrm.sla import SlaConfig, SlaPolicy
from socialcrm.sources import SourceSetupError, backoff_s, make_source
from tests.test_alerts import WEBHOOK_SECRET, Receiver, Smtp, smtp  # noqa: F401  (the fixture)
from tests.test_digest import HOSTILE, digest_sinks, mention, slack_workspace
from tests.test_spikes import burst, message_row, store_rows

SECRET = "a-webhook-secret-of-some-length"


class FeedServer:
    """A local feed whose entries, status and headers the test sets."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, datetime]] = []
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body: bytes | None = None
        self.hits = 0
        #: Seconds the server takes to answer.
        self.delay = 0.0

    def add(self, n: int, word: str = "Acme") -> None:
        start = len(self.entries)
        for i in range(start, start + n):
            when = datetime(2026, 3, 2, 9, tzinfo=UTC) + timedelta(minutes=i)
            self.entries.append(
                (f"https://reviews.example/{i}", f"{word} review {i}: late delivery, awful", when)
            )

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, headers=self.headers, text="nope")
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/rss+xml")
        items = "".join(
            f"<item><guid>{g}</guid><link>{g}</link><title>Review</title>"
            f"<description>{t}</description><author>r@example.com (Reviewer {n})</author>"
            f"<pubDate>{format_datetime(w)}</pubDate></item>"
            for n, (g, t, w) in enumerate(self.entries)
        )
        xml = (
            '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
            f"{items}</channel></rss>"
        )
        return web.Response(text=xml, content_type="application/rss+xml")


@pytest.fixture
async def feed() -> AsyncIterator[tuple[FeedServer, str]]:
    server = FeedServer()
    app = web.Application()
    app.router.add_get("/feed", server.handle)
    async with TestServer(app, host="127.0.0.1") as ts:
        yield server, str(ts.make_url("/feed"))


class FakeClock:
    """Monotonic seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def daemon_config(config: Config, sources: list[dict[str, Any]]) -> Config:
    return config.model_copy(
        update={"sources": Config.model_validate({"sources": sources}).sources}
    )


@pytest.fixture
async def daemon(
    config: Config, store: Store, feed: tuple[FeedServer, str]
) -> AsyncIterator[Daemon]:
    _, url = feed
    cfg = daemon_config(
        config,
        [
            {"name": "reviews", "type": "rss", "url": url, "keywords": ["acme"], "interval": "1h"},
            {"name": "forms", "type": "webhook", "secret": SECRET, "interval": 0},
        ],
    )
    clock = FakeClock()
    d = Daemon(cfg, store, clock=clock)
    d.poller.rng = random.Random(1)
    for i, src in enumerate(cfg.sources):
        d.poller.add(make_source(src, i))
    await d.poller.load_state()
    d.clock = clock  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        await d.stop()


async def count(store: Store, model: Any, *where: Any) -> int:
    async with store.reader() as s:
        return int(
            (
                await s.execute(sa.select(sa.func.count()).select_from(model).where(*where))
            ).scalar_one()
        )


async def state(store: Store, name: str) -> SourceState:
    async with store.reader() as s:
        st = await s.get(SourceState, name)
        assert st is not None
        return st


# -- polling ----------------------------------------------------------------------------------


async def test_poll_stores_new_entries_and_resumes(
    daemon: Daemon, feed: tuple[FeedServer, str], store: Store
) -> None:
    server, _ = feed
    server.add(5)
    out = await daemon.poller.poll("reviews")
    assert out.error is None and out.result.stored == 5
    server.add(3)
    out = await daemon.poller.poll("reviews")
    assert out.result.stored == 3 and out.result.duplicates == 0
    assert await count(store, Message) == 8
    st = await state(store, "reviews")
    assert st.health == "ok" and len(st.cursor["seen"]) == 8  # type: ignore[index]


async def test_rate_limit_reset_wins_over_backoff(
    daemon: Daemon, feed: tuple[FeedServer, str], store: Store
) -> None:
    server, _ = feed
    server.add(2)
    server.status = 429
    server.headers = {"Retry-After": "120"}
    out = await daemon.poller.poll("reviews")
    assert out.error and out.error.startswith("retryable")
    src = daemon.poller.sources["reviews"]
    clock: Any = daemon.clock  # type: ignore[attr-defined]
    assert src.not_before - clock.now == pytest.approx(120)
    hits = server.hits
    clock.tick(119)
    assert (await daemon.poller.poll("reviews")).skipped is not None
    assert server.hits == hits  # no request while backing off
    server.status = 200
    clock.tick(2)
    out = await daemon.poller.poll("reviews")
    assert out.error is None and out.result.stored == 2
    assert (await state(store, "reviews")).health == "ok"


async def test_server_errors_back_off_exponentially(
    daemon: Daemon, feed: tuple[FeedServer, str]
) -> None:
    server, _ = feed
    server.status = 503
    src = daemon.poller.sources["reviews"]
    clock: Any = daemon.clock  # type: ignore[attr-defined]
    waits = []
    for _ in range(5):
        await daemon.poller.poll("reviews")
        waits.append(src.not_before - clock.now)
        clock.tick(waits[-1] + 0.01)
    assert src.failures == 5
    assert waits[-1] > waits[0] * 4  # doubles, with jitter


def test_backoff_has_jitter_and_a_ceiling() -> None:
    rng = random.Random(3)
    first = {round(backoff_s(1, rng), 3) for _ in range(20)}
    assert len(first) > 10 and all(2.5 <= w <= 5 for w in first)
    assert all(backoff_s(30, rng) <= 900 for _ in range(20))


async def test_auth_failure_pauses_and_alerts_once(
    daemon: Daemon, feed: tuple[FeedServer, str], store: Store
) -> None:
    server, _ = feed
    server.status = 401
    out = await daemon.poller.poll("reviews")
    assert out.error and out.error.startswith("auth")
    assert (await daemon.poller.poll("reviews")).skipped == "paused"
    st = await state(store, "reviews")
    assert st.paused and st.health == "paused"
    async with store.reader() as s:
        alerts = (await s.execute(sa.select(Alert))).scalars().all()
    assert [(a.kind, a.dedupe_key) for a in alerts] == [("source_auth", "source_auth:reviews")]
    # The pause survives a restart of the poller.
    daemon.poller.sources["reviews"].paused = False
    await daemon.poller.load_state()
    assert daemon.poller.sources["reviews"].paused
    await daemon.poller.resume("reviews")
    server.status = 200
    server.add(1)
    assert (await daemon.poller.poll("reviews")).result.stored == 1


async def test_resume_from_the_cli_reaches_a_running_daemon(
    daemon: Daemon, feed: tuple[FeedServer, str], store: Store
) -> None:
    server, _ = feed
    server.status = 401
    await daemon.poller.poll("reviews")
    assert (await daemon.poller.poll("reviews")).skipped == "paused"
    # Another process (the CLI) has its own Commands on the same database.
    cli = Commands(daemon.config, store)
    listing = await cli.run(Actor("ops", "viewer", "cli"), "sources")
    assert "reviews" in listing and "PAUSED (credentials refused" in listing
    unmute = await cli.run(Actor("ann", "agent", "cli"), "mute reviews 0")
    assert "paused for refused credentials" in unmute and "polled again" not in unmute
    with pytest.raises(CommandError, match="needs the admin role"):
        await cli.run(Actor("ann", "agent", "slack"), "resume reviews")
    answer = await cli.run(Actor("root", "admin", "cli"), "resume reviews")
    assert answer.startswith("Source reviews is resumed")
    server.status = 200
    server.add(2)
    out = await daemon.poller.poll("reviews")
    assert out.skipped is None and out.result.stored == 2
    assert daemon.health()["sources"]["reviews"]["state"] == "ok"
    with pytest.raises(CommandError, match="not paused"):
        await cli.run(Actor("root", "admin", "cli"), "resume reviews")


async def test_paused_source_is_tried_once_at_start_when_its_settings_changed(
    config: Config, store: Store, feed: tuple[FeedServer, str]
) -> None:
    server, url = feed
    server.status = 401

    async def restarted(settings: dict[str, Any]) -> Daemon:
        source = {"name": "reviews", "type": "rss", "interval": "1h", **settings}
        cfg = daemon_config(config, [source])
        d = Daemon(cfg, store)
        d.poller.add(make_source(cfg.sources[0], 0))
        await d.poller.load_state()
        return d

    first = await restarted({"url": url})
    await first.poller.poll("reviews")
    await first.stop()
    st = await state(store, "reviews")
    assert st.paused and st.settings_fingerprint and url not in st.settings_fingerprint
    same = await restarted({"url": url})
    assert same.poller.sources["reviews"].paused  # nothing changed: stays paused
    await same.stop()
    changed = await restarted({"url": url + "?key=new-credentials"})
    try:
        assert not changed.poller.sources["reviews"].paused
        assert (await changed.poller.poll("reviews")).error.startswith("auth")  # type: ignore[union-attr]
    finally:
        await changed.stop()
    # Refused again: paused with the new fingerprint, so the next start does not retry.
    again = await restarted({"url": url + "?key=new-credentials"})
    assert again.poller.sources["reviews"].paused
    await again.stop()


async def test_malformed_feed_is_a_failed_poll_not_a_crash(
    daemon: Daemon, feed: tuple[FeedServer, str]
) -> None:
    server, _ = feed
    server.body = b"<html><body>Service Unavailable</body></html>"
    out = await daemon.poller.poll("reviews")
    assert out.error is not None
    server.body = None
    server.add(2)
    daemon.poller.sources["reviews"].not_before = 0
    assert (await daemon.poller.poll("reviews")).result.stored == 2


async def test_unknown_connector_and_bad_settings_name_the_path(
    config: Config, store: Store
) -> None:
    cfg = daemon_config(config, [{"name": "a", "type": "carrier-pigeon"}])
    with pytest.raises(
        SourceSetupError, match=r"sources\[0\].type: unknown connector 'carrier-pigeon'"
    ):
        make_source(cfg.sources[0], 0)
    cfg = daemon_config(config, [{"name": "a", "type": "rss"}])
    with pytest.raises(SourceSetupError, match=r"sources\[0\].url: Field required"):
        make_source(cfg.sources[0], 0)


# -- HTTP: health, metrics, webhooks --------------------------------------------------------


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(daemon.app(), host="127.0.0.1")) as c:
        yield c


async def test_healthz_and_metrics(
    daemon: Daemon, client: TestClient[Any, Any], feed: tuple[FeedServer, str]
) -> None:
    server, _ = feed
    server.add(3)
    await daemon.poller.poll("reviews")
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok"
    assert health["sources"]["reviews"]["state"] == "ok"
    assert health["sources"]["reviews"]["lag_s"] is not None
    server.status = 500
    daemon.poller.sources["reviews"].not_before = 0
    await daemon.poller.poll("reviews")
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "degraded" and health["sources"]["reviews"]["state"] == "failing"
    text = await (await client.get("/metrics")).text()
    d = f'daemon="{daemon.name}"'
    assert f'socialcrm_messages_stored_total{{{d},source="reviews"}} 3.0' in text
    assert f'socialcrm_poll_errors_total{{{d},kind="retryable",source="reviews"}} 1.0' in text
    assert "socialcrm_source_up" in text


async def test_metrics_show_the_backlog(daemon: Daemon, client: TestClient[Any, Any]) -> None:
    now = utcnow()
    batch = Batch(
        messages=[
            mention(1, "@acme I will report you to trading standards, awful", now),
            mention(2, "@acme my parcel is late again, terrible", now),
        ]
    )
    await daemon.pipeline.ingest(batch, "forms")
    text = await (await client.get("/metrics")).text()
    drafts = await count(daemon.store, Reply, Reply.status == "draft")
    alerts = await count(daemon.store, Alert, Alert.status == "pending")
    assert drafts >= 2 and alerts >= 1
    assert f'socialcrm_backlog{{daemon="{daemon.name}",what="drafts_waiting"}} {drafts:.1f}' in text
    assert f'socialcrm_backlog{{daemon="{daemon.name}",what="alerts_waiting"}} {alerts:.1f}' in text
    assert f'socialcrm_backlog{{daemon="{daemon.name}",what="replies_sent"}} 0.0' in text
    assert f'socialcrm_backlog{{daemon="{daemon.name}",what="replies_failed"}} 0.0' in text
    assert f'socialcrm_backlog{{daemon="{daemon.name}",what="alerts_failed"}} 0.0' in text
    assert f'socialcrm_alert_delivery_failures_total{{daemon="{daemon.name}"}} 0.0' in text


def signed(body: bytes, ts: float | None = None, secret: str = SECRET) -> dict[str, str]:
    """Headers as a sending system following the README signs them (not with our own code)."""
    stamp = str(int(ts if ts is not None else time.time()))
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: f"sha256={mac}",
        "Content-Type": "application/json",
    }


def test_signature_matches_a_reference_value() -> None:
    # printf '%s' '1772442000.{"id":"f-1","text":"hello"}' |
    #     openssl dgst -sha256 -hmac 'a-webhook-secret-of-some-length'
    reference = "3b7ab8a4ee9ed27718e2d02f28d3c046565c8aa35dc58920f11086ad55a9cee6"
    body = b'{"id":"f-1","text":"hello"}'
    assert sign(SECRET, "1772442000", body) == f"sha256={reference}"
    assert signed(body, 1772442000)[SIGNATURE_HEADER] == f"sha256={reference}"


def form(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"form-{i}",
        "text": f"My order {i} never arrived, terrible",
        "author": {"email": f"c{i}@example.com"},
        **extra,
    }


async def test_signed_webhook_is_stored(client: TestClient[Any, Any], store: Store) -> None:
    body = json.dumps([form(1), form(2)]).encode()
    resp = await client.post("/hooks/inbound/forms", data=body, headers=signed(body))
    assert resp.status == 202
    assert (await resp.json())["stored"] == 2
    assert await count(store, Message, Message.channel == "webhook") == 2


@pytest.mark.parametrize(
    ("mangle", "status", "detail"),
    [
        (lambda b, h: (b, {**h, SIGNATURE_HEADER: "sha256=" + "0" * 64}), 401, "bad signature"),
        (lambda b, h: (b + b" ", h), 401, "bad signature"),
        (lambda b, h: (b, signed(b, time.time() - 600)), 401, "replay window"),
        (lambda b, h: (b, {k: v for k, v in h.items() if k != SIGNATURE_HEADER}), 401, "missing"),
        (lambda b, h: (b, signed(b, secret="another-secret-entirely")), 401, "bad signature"),
        (lambda b, h: (b, {**h, TIMESTAMP_HEADER: "soon"}), 401, "bad timestamp"),
    ],
)
async def test_forged_webhooks_change_nothing(
    client: TestClient[Any, Any], store: Store, mangle: Any, status: int, detail: str
) -> None:
    body = json.dumps(form(9)).encode()
    data, headers = mangle(body, signed(body))
    resp = await client.post("/hooks/inbound/forms", data=data, headers=headers)
    assert resp.status == status
    assert detail in (await resp.json())["detail"]
    assert await count(store, Message) == 0 and await count(store, Quarantine) == 0


async def test_replayed_webhook_is_refused(client: TestClient[Any, Any], store: Store) -> None:
    body = json.dumps(form(3)).encode()
    headers = signed(body)
    assert (await client.post("/hooks/inbound/forms", data=body, headers=headers)).status == 202
    again = await client.post("/hooks/inbound/forms", data=body, headers=headers)
    assert again.status == 401 and "replay" in (await again.json())["detail"]
    assert await count(store, Message) == 1


async def test_malformed_webhook_payloads_are_quarantined(
    client: TestClient[Any, Any], store: Store
) -> None:
    body = b'{"id": "x", "text": '
    resp = await client.post("/hooks/inbound/forms", data=body, headers=signed(body))
    assert resp.status == 202 and (await resp.json())["quarantined"] == 1
    mixed = json.dumps([form(1), {"id": "no-text"}, "not an object", form(2)]).encode()
    resp = await client.post("/hooks/inbound/forms", data=mixed, headers=signed(mixed))
    answer = await resp.json()
    assert answer["stored"] == 2 and answer["quarantined"] == 2
    assert any("text" in e for e in answer["errors"])
    async with store.reader() as s:
        raws = [q.raw for q in (await s.execute(sa.select(Quarantine))).scalars()]
    assert '{"id": "x", "text": ' in raws


async def test_unknown_webhook_source_is_404(client: TestClient[Any, Any]) -> None:
    body = b"{}"
    resp = await client.post("/hooks/inbound/nope", data=body, headers=signed(body))
    assert resp.status == 404
    resp = await client.post("/hooks/inbound/reviews", data=body, headers=signed(body))
    assert resp.status == 404  # a polled source takes no pushes


async def test_stop_waits_for_the_poll_in_hand(
    daemon: Daemon, feed: tuple[FeedServer, str], store: Store
) -> None:
    import asyncio

    server, _ = feed
    server.add(50)
    poll = asyncio.create_task(daemon.poller.poll("reviews"))
    await asyncio.sleep(0)
    await daemon.stop()
    out = await poll
    assert out.error is None
    assert await count(store, Message) == out.result.stored == 50


async def test_a_stop_kept_waiting_says_for_which_polls(
    daemon: Daemon,
    feed: tuple[FeedServer, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socialcrm.daemon as daemon_module

    monkeypatch.setattr(daemon_module, "STOP_NOTE_S", 0.05)
    server, _ = feed
    server.add(3)
    server.delay = 0.5
    poll = asyncio.create_task(daemon.poller.poll("reviews"))
    await asyncio.sleep(0.05)
    with caplog.at_level("WARNING", logger="socialcrm.daemon"):
        await daemon.stop()
    assert (await poll).result.stored == 3
    waited = [r.getMessage() for r in caplog.records if "polls in hand" in r.getMessage()]
    assert waited == ["stopping: waiting up to 60 s for the polls in hand: reviews"]


# -- housekeeping: SLA checks and alert delivery ------------------------------------------------


async def test_sla_breach_is_written_and_delivered_by_the_running_daemon(
    config: Config, store: Store
) -> None:
    receiver = Receiver(WEBHOOK_SECRET)
    app = web.Application()
    app.router.add_post("/alerts", receiver.handle)
    opened = utcnow() - timedelta(hours=2)
    policy = SlaPolicy(SlaConfig())
    async with store.session() as s:
        cust = Customer(name="Cora")
        s.add(cust)
        await s.flush()
        assert cust.id is not None
        first, resolution = policy.due(opened, "urgent")
        s.add(
            Ticket(
                customer_id=cust.id,
                channel="x",
                source="x-acme",
                priority="urgent",
                opened_at=opened,
                first_response_due_at=first,
                resolution_due_at=resolution,
            )
        )
    async with TestServer(app, host="127.0.0.1") as hook:
        sink = {"type": "webhook", "name": "pager", "url": str(hook.make_url("/alerts"))}
        cfg = Config.model_validate(
            {
                **config.model_dump(exclude={"base_dir"}),
                "base_dir": config.base_dir,
                "alerts": {"sinks": [{**sink, "secret": WEBHOOK_SECRET}], "interval": "1s"},
                "sla": {"interval": "1s"},
            }
        )
        daemon = Daemon(cfg, store)
        await daemon.start("127.0.0.1", free_port())
        try:
            for _ in range(100):  # up to 20 s
                if receiver.received:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.5)  # two more rounds of both jobs: nothing new
        finally:
            await daemon.stop()
    assert [a["kind"] for a in receiver.received] == ["sla_breach"]
    assert receiver.received[0]["detail"]["target"] == "first_response"
    assert receiver.bad_signatures == 0
    assert await count(store, Alert, Alert.kind == "sla_breach", Alert.status == "delivered") == 1


async def test_scheduler_polls_one_source_at_a_time_and_skips_it_while_muted(
    config: Config, store: Store
) -> None:
    """A feed slower than its interval is never fetched twice at once; a muted one not at all."""
    active = 0
    most = 0
    hits = 0

    async def slow_feed(request: web.Request) -> web.Response:
        nonlocal active, most, hits
        hits += 1
        active += 1
        most = max(most, active)
        try:
            await asyncio.sleep(0.5)  # five intervals long
        finally:
            active -= 1
        xml = '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
        return web.Response(text=xml, content_type="application/rss+xml")

    app = web.Application()
    app.router.add_get("/feed", slow_feed)
    async with TestServer(app, host="127.0.0.1") as feed:
        source = {
            "name": "slow",
            "type": "rss",
            "url": str(feed.make_url("/feed")),
            "interval": "0.1s",
            "jitter": 0,
        }
        daemon = Daemon(daemon_config(config, [source]), store)
        await daemon.start("127.0.0.1", free_port())
        try:
            await asyncio.sleep(2.2)
            assert most == 1, "two polls of one source overlapped"
            assert 2 <= hits <= 5, hits  # back to back, not piled up
            await Commands(daemon.config, store).run(Actor("ann", "agent", "cli"), "mute slow 1h")
            await asyncio.sleep(0.6)  # the poll in hand ends
            before = hits
            await asyncio.sleep(1.0)
            assert hits == before, "a muted source was polled"
        finally:
            await daemon.stop()


# -- housekeeping: spike checks and digests, scheduled from the config ---------------------------

#: +05:45 all year: a cron read in UTC, or in whole hours, would fire at another minute.
DIGEST_TZ = "Asia/Kathmandu"


def next_local(now: datetime, hour: int, minute: int, weekday: int | None = None) -> datetime:
    """The first wall-clock ``hour:minute`` in DIGEST_TZ after ``now`` (on ``weekday``)."""
    zone = ZoneInfo(DIGEST_TZ)
    today = now.astimezone(zone).date()
    for n in range(8):
        day = today + timedelta(days=n)
        moment = datetime.combine(day, clock_time(hour, minute), tzinfo=zone)
        if moment > now and (weekday is None or day.weekday() == weekday):
            return moment
    raise AssertionError("no such time within a week")


async def test_the_daemon_schedules_spike_checks_and_digests_from_its_config(
    config: Config,
    store: Store,
    pipeline: Pipeline,
    smtp: Smtp,  # noqa: F811
) -> None:
    # The daemon reads the wall clock (utcnow) for digests and spikes, so the data is placed
    # around the real now; the digest's period must not end while the test runs.
    zone = ZoneInfo(DIGEST_TZ)
    local = utcnow().astimezone(zone)
    if (local + timedelta(minutes=1)).date() != local.date():
        await asyncio.sleep(61)
    # Yesterday (in the brand's zone) gets nine mentions; the daily digest covers them.
    today = datetime.combine(utcnow().astimezone(zone).date(), clock_time(), tzinfo=zone)
    yesterday = today - timedelta(days=1)
    texts = [HOSTILE, "@acme love the new app, great work", "@acme my parcel is late again"]
    msgs = [mention(n, texts[n % 3], yesterday + timedelta(hours=1 + 2 * n)) for n in range(9)]
    await pipeline.ingest(Batch(messages=msgs), "x")

    async with slack_workspace() as (workspace, api):
        alerts = digest_sinks(smtp.port, api)
        alerts["routes"].append({"kinds": ["spike"], "sinks": ["reports"]})
        cfg = Config.model_validate(
            {
                **config.model_dump(exclude={"base_dir"}),
                "base_dir": config.base_dir,
                "brand": {**config.brand.model_dump(), "timezone": DIGEST_TZ},
                # Rounds of delivery only when the test runs them: the digest sends its own.
                "alerts": {**alerts, "interval": "1h"},
                "spikes": {"interval": "45s", "sources": ["reviews"]},
                # Runs missed before the start are not made up here (see the next test).
                "reports": {
                    "digests": [
                        {"name": "daily", "cron": "15 7 * * *", "period": "1d", "catch_up": None},
                        {"name": "weekly", "cron": "30 6 * * 1", "period": "7d", "catch_up": None},
                    ]
                },
            }
        )
        daemon = Daemon(cfg, store)
        ran: list[str] = []

        def record(event: JobExecutionEvent) -> None:
            ran.append(event.job_id)

        async def run_job(job_id: str) -> None:
            """Bring a scheduled job forward to now and wait until the scheduler has run it."""
            runs = ran.count(job_id)
            job = daemon.scheduler.get_job(job_id)
            assert job is not None
            job.modify(next_run_time=datetime.now(UTC))
            for _ in range(400):  # up to 20 s
                if ran.count(job_id) > runs:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{job_id} did not run")

        started = datetime.now(UTC)
        await daemon.start("127.0.0.1", free_port())
        daemon.scheduler.add_listener(record, EVENT_JOB_EXECUTED)
        try:
            jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
            assert {"alerts", "sla", "spikes", "digest:daily", "digest:weekly"} <= set(jobs)
            # The spike check every spikes.interval; each digest on its crontab, read in
            # brand.timezone, with crontab's weekday numbers (1 is Monday).
            spikes = jobs["spikes"].trigger
            assert isinstance(spikes, IntervalTrigger)
            assert spikes.interval == timedelta(seconds=45)
            daily = jobs["digest:daily"].next_run_time
            weekly = jobs["digest:weekly"].next_run_time
            assert daily == next_local(started, 7, 15)
            assert weekly == next_local(started, 6, 30, weekday=0)
            assert daily.utcoffset() == weekly.utcoffset() == timedelta(hours=5, minutes=45)
            assert weekly.strftime("%a %H:%M") == "Mon 06:30"

            # The daily digest, run by the scheduler: written and delivered at once.
            await run_job("digest:daily")
            [post] = workspace.messages
            assert len(smtp.box.messages) == 1
            period = f"{yesterday:%Y-%m-%d} 00:00 to {today:%Y-%m-%d} 00:00"
            assert post.text.startswith(f":bar_chart: *Acme report (daily): {period}*")
            assert "Messages: 9 " in post.text and "<" not in post.text
            assert (
                smtp.box.messages[0]["Subject"].strip()
                == f"[Acme info] Acme report (daily): {period}"
            )
            # Run again in the same period: nothing more. The cron still decides the next run.
            await run_job("digest:daily")
            assert len(workspace.messages) == len(smtp.box.messages) == 1
            assert daemon.scheduler.get_job("digest:daily").next_run_time == next_local(
                utcnow(), 7, 15
            )

            # An angry burst on "reviews" in the last hour, after hours of quiet.
            width = 15 * 60
            window = datetime.fromtimestamp(utcnow().timestamp() // width * width, UTC)
            quiet = [
                message_row(
                    "lovely service, thanks",
                    window - timedelta(minutes=20 * i),
                    0.6,
                    source="reviews",
                )
                for i in range(4, 24)
            ]
            angry = burst(window - timedelta(minutes=45), 60, 30, source="reviews")
            await store_rows(store, [*quiet, *angry])
            await run_job("spikes")
            async with store.reader() as s:
                [spike] = (await s.execute(sa.select(Alert).where(Alert.kind == "spike"))).scalars()
            assert spike.status == "pending"  # written by the check, delivered by a round
            assert spike.detail["started_at"] == (window - timedelta(minutes=45)).isoformat()
            await run_job("alerts")
            text = workspace.messages[-1].text
            since = f"{window - timedelta(minutes=45):%Y-%m-%d %H:%M} UTC"
            assert text.startswith(
                "<!here> :chart_with_upwards_trend: *Negative mentions spiked on reviews*"
                f" since {since}\n"
            )
            assert "Last 15m: *30* negative" in text and "`checkout`" in text
            assert "I hate this &lt;script&gt;alert(1)&lt;/script&gt; &lt;!channel&gt;" in text
            assert "<!channel>" not in text and "<script>" not in text
            assert len(workspace.messages) == 2 and len(smtp.box.messages) == 1
            for job_id in set(ran):  # a failed job is logged and counted, not raised
                assert not daemon.metrics.registry.get_sample_value(
                    "socialcrm_job_errors_total", {"job": job_id}
                )
        finally:
            await daemon.stop()
    assert await count(store, Alert, Alert.kind == "spike", Alert.status == "delivered") == 1
    assert await count(store, Alert, Alert.kind == "digest", Alert.status == "delivered") == 1


async def test_a_digest_missed_while_no_daemon_ran_goes_out_at_start_once(
    config: Config, store: Store
) -> None:
    """Due ten minutes before the daemon starts: made up at once; a restart sends it no more."""
    now = utcnow()
    due = (now - timedelta(minutes=10)).replace(second=0, microsecond=0)
    digest = {"name": "daily", "cron": f"{due.minute} {due.hour} * * *", "period": "1d"}
    cfg = Config.model_validate(
        {
            **config.model_dump(exclude={"base_dir"}),
            "base_dir": config.base_dir,
            "brand": {**config.brand.model_dump(), "timezone": "UTC"},
            "reports": {"digests": [digest]},
        }
    )

    async def digests() -> list[Alert]:
        async with store.reader() as s:
            q = sa.select(Alert).where(Alert.kind == "digest")  # type: ignore[arg-type]
            return list((await s.execute(q)).scalars())

    for start in range(2):
        daemon = Daemon(cfg, store)
        ran = asyncio.Event()

        def record(event: JobExecutionEvent, ran: asyncio.Event = ran) -> None:
            if event.job_id == "digest:daily:missed":
                ran.set()

        daemon.scheduler.add_listener(record, EVENT_JOB_EXECUTED)
        await daemon.start("127.0.0.1", free_port())
        try:
            await asyncio.wait_for(ran.wait(), 20)
        finally:
            await daemon.stop()
        [alert] = await digests()  # the first start sent it; the second found it sent
        midnight = due.replace(hour=0, minute=0)
        assert alert.dedupe_key == f"digest:daily:{midnight.isoformat()}", start
        assert alert.detail["end"] == midnight.isoformat()


async def test_start_up_line_names_version_address_and_sources(
    config: Config, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="socialcrm.daemon")
    source = {"name": "forms", "type": "webhook", "secret": SECRET, "interval": 0}
    daemon = Daemon(daemon_config(config, [source]), store)
    port = free_port()
    await daemon.start("127.0.0.1", port)
    try:
        lines = [r.getMessage() for r in caplog.records if "listening" in r.getMessage()]
    finally:
        await daemon.stop()
    from importlib.metadata import version

    assert len(lines) == 1
    assert f"socialcrm {version('socialcrm')} listening on http://127.0.0.1:{port}" in lines[0]
    assert "1 source(s): forms (webhook)" in lines[0]


@pytest.mark.parametrize("stamp", ["nan", "NaN", "inf", "-inf", "1.7e9", "+1772442000"])
async def test_a_timestamp_that_is_not_ascii_digits_is_refused(
    client: TestClient[Any, Any], store: Store, stamp: str
) -> None:
    # "nan" compared as never outside the replay window: a signed request was good for ever.
    body = json.dumps(form(7)).encode()
    mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: f"sha256={mac}"}
    resp = await client.post("/hooks/inbound/forms", data=body, headers=headers)
    assert resp.status == 401 and "bad timestamp" in (await resp.json())["detail"]
    assert await count(store, Message) == 0


@pytest.mark.parametrize("stamp", ["\u0661\u0667\u0667\u0662\u0664\u0664\u0662\u0660\u0660\u0660"])
def test_a_timestamp_in_other_digits_is_refused(stamp: str) -> None:
    from connectors.webhook import Refused, WebhookConnector

    connector = WebhookConnector(WebhookConnector.Config(secret=SECRET), None)  # type: ignore[arg-type]
    body = b'{"id": "f", "text": "hi"}'
    with pytest.raises(Refused, match="bad timestamp"):
        connector.verify(
            {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(SECRET, stamp, body)},
            body,
            now=1772442000,
        )


async def test_a_webhook_with_nul_or_a_lone_surrogate_is_stored(
    client: TestClient[Any, Any], store: Store
) -> None:
    # JSON may carry "\u0000" and a lone "\ud800": PostgreSQL refused the first, neither
    # database could encode the second, and the caller got HTTP 500 with nothing kept.
    body = (
        b'[{"id": "form-n\\u0000", "text": "My order \\u0000 never came", "author": '
        b'{"email": "n@example.com", "name": "N\\u0000"}, "extra": {"k": "\\u0000"}},'
        b' {"id": "form-s", "text": "Broken \\ud800 again", "subject": "\\udfff",'
        b' "author": {"email": "s@example.com"}}]'
    )
    resp = await client.post("/hooks/inbound/forms", data=body, headers=signed(body))
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["stored"] == 2
    async with store.reader() as s:
        texts = sorted((await s.execute(sa.select(Message.text))).scalars())
    assert texts == ["Broken \ufffd again", "My order  never came"]


async def _rename(store: Store, pairs: list[tuple[str, str]]) -> None:
    async with store.session() as s:
        for old, new in pairs:
            await s.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


async def test_a_batch_that_cannot_be_stored_fails_the_poll_visibly(
    daemon: Daemon, client: TestClient[Any, Any], feed: tuple[FeedServer, str], store: Store
) -> None:
    # An error storing a batch escaped the poll: every poll failed while /healthz said ok.
    server, _ = feed
    server.add(2)
    away = [("message", "message_away"), ("quarantine", "quarantine_away")]
    await _rename(store, away)
    try:
        out = await daemon.poller.poll("reviews")
    finally:
        await _rename(store, [(new, old) for old, new in away])
    assert out.error is not None and out.error.startswith("store:")
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "degraded" and health["sources"]["reviews"]["state"] == "failing"
    text = await (await client.get("/metrics")).text()
    assert (
        f'socialcrm_poll_errors_total{{daemon="{daemon.name}",kind="store",source="reviews"}} 1.0'
        in text
    )
    st = await state(store, "reviews")
    assert st.health == "failing" and st.failing_since is not None
    # Once the store works again the next poll stores the batch.
    daemon.poller.sources["reviews"].not_before = 0
    out = await daemon.poller.poll("reviews")
    assert out.error is None and out.result.stored == 2


# -- reloading the rules (SIGHUP) --------------------------------------------------------------

KETTLE = "rules:\n  - name: mine\n    when: {keywords: [kettle]}\n    then: [{tag: kettle}]\n"
TOASTER = (
    "rules:\n  - name: mine\n    when: {phrases: [toaster oven]}\n"
    "    then: [{tag: toaster}, {draft: thanks}]\n"
)


async def _tags(store: Store, external_id: str) -> list[str]:
    async with store.reader() as s:
        row = (
            await s.execute(sa.select(Message).where(Message.external_id == external_id))
        ).scalar_one()
        return list(row.tags)


@pytest.mark.parametrize("pooled", [False, True], ids=["in-process", "scoring-workers"])
async def test_reload_takes_up_edited_rules_and_keeps_them_when_the_new_ones_are_bad(
    config: Config, store: Store, tmp_path: Path, pooled: bool
) -> None:
    from socialcrm.scoring import ScoringPool
    from tests.test_pipeline import ingest, msg

    rule_file = tmp_path / "mine.yaml"
    rule_file.write_text(KETTLE)
    replies = config.responder.model_copy(update={"templates_dir": Path("mine")})
    cfg = config.model_copy(
        update={"rules": [Path("mine.yaml")], "default_rules": False, "responder": replies}
    )
    rules = RuleSet.load(cfg.rule_paths())
    pool = ScoringPool.for_config(cfg, rules) if pooled else None
    d = Daemon(cfg, store, rules=rules, scoring=pool)
    d._schedule_housekeeping()
    d.scheduler.start(paused=True)
    try:
        rule_file.write_text(TOASTER)
        # Until the reload, the daemon runs the rules it started with.
        await ingest(d.pipeline, msg("a kettle and a toaster oven", ext="r1"))
        assert await _tags(store, "r1") == ["kettle"]
        retrain = d.scheduler.get_job("triage")
        assert retrain is not None and retrain.next_run_time > datetime.now(UTC) + timedelta(
            hours=1
        )
        assert await d.reload() is True
        # The retraining job runs now: a model trained beside the old rules is trained again.
        retrain = d.scheduler.get_job("triage")
        assert retrain.next_run_time <= datetime.now(UTC) + timedelta(seconds=1)
        if pool is not None:
            # The workers were started again with the new rules: their text facts are used.
            assert pool.fingerprint == d.rules.fingerprint == d.pipeline.rules.fingerprint
            read = await d.pipeline._prepare([msg("a toaster oven here")], [], None)
            assert read.scored[0].facts == 1
        await ingest(d.pipeline, msg("a kettle and a toaster oven", ext="r2"))
        assert await _tags(store, "r2") == ["toaster"]
        assert await count(store, Reply, Reply.template == "thanks") == 1
        health = d.health()["rules"]
        assert health["fingerprint"] == RuleSet.load(cfg.rule_paths()).fingerprint[:12]
        assert health["count"] == 1 and health["reload_error"] is None
        # Bad rules, or rules that draft with a template that does not exist, are refused
        # whole: the rules in use stay, and /healthz says why.
        rule_file.write_text("rules:\n  - name: mine\n    when: {bogus: 1}\n    then: [ignore]\n")
        assert await d.reload() is False
        assert f"{rule_file}:3" in d.health()["rules"]["reload_error"]
        rule_file.write_text(TOASTER.replace("thanks", "no_such_reply"))
        assert await d.reload() is False
        assert "no_such_reply" in d.health()["rules"]["reload_error"]
        # A reply template that cannot even be read (not UTF-8) is refused the same way.
        (tmp_path / "mine" / "replies").mkdir(parents=True)
        (tmp_path / "mine" / "replies" / "apology.j2").write_bytes(b"Sorry \xff\xfe")
        rule_file.write_text(TOASTER)
        assert await d.reload() is False
        assert "apology.j2: cannot be read" in d.health()["rules"]["reload_error"]
        (tmp_path / "mine" / "replies" / "apology.j2").unlink()
        await ingest(d.pipeline, msg("a toaster oven", ext="r3"))
        assert await _tags(store, "r3") == ["toaster"]
        assert d.health()["rules"]["fingerprint"] == health["fingerprint"]
        # Reply templates are read anew too: one of our own now overrides the shipped one.
        (tmp_path / "mine" / "replies" / "thanks.x.j2").write_text("Cheers, from our own.")
        rule_file.write_text(TOASTER)
        await ingest(d.pipeline, msg("a toaster oven", ext="r4"))
        assert await d.reload() is True
        await ingest(d.pipeline, msg("a toaster oven", ext="r5"))
        async with store.reader() as s:
            drafts = (await s.execute(sa.select(Reply.draft_text).order_by(Reply.id))).all()
        # Not before the reload (r4): the templates in use stay until then.
        assert ["Cheers, from our own." in text for (text,) in drafts][-2:] == [False, True]
        reloads = d.metrics.rule_reloads
        assert reloads.labels("ok")._value.get() == 2
        assert reloads.labels("refused")._value.get() == 3
    finally:
        await d.stop()
        if pool is not None:
            pool.close()


@pytest.mark.parametrize("pooled", [False, True], ids=["in-process", "scoring-workers"])
async def test_a_chunk_read_before_a_reload_is_decided_by_the_new_rules_reading_its_text(
    config: Config, store: Store, tmp_path: Path, pooled: bool
) -> None:
    # The text facts are bits numbered by the conditions' places in the rules they were worked
    # out for: the first condition of the old rules (kettle) is the first of the new ones
    # (toaster oven) too. Read as the new rules' facts, "a kettle" would be a toaster oven.
    from socialcrm.responder import Responder
    from socialcrm.scoring import ScoringPool
    from tests.test_pipeline import msg

    (tmp_path / "old.yaml").write_text(KETTLE)
    (tmp_path / "new.yaml").write_text(TOASTER)
    old, new = RuleSet.load([tmp_path / "old.yaml"]), RuleSet.load([tmp_path / "new.yaml"])
    pool = ScoringPool.for_config(config, old) if pooled else None
    pipeline = Pipeline(config, store, rules=old, scoring=pool)
    try:
        prepared = await pipeline._prepare([msg("a kettle", ext="k1")], [], None)
        assert prepared.scored[0].facts == 1  # the old rules' first condition holds
        pipeline.use_rules(new, Responder(config.responder, "Acme"))
        if pool is not None:
            pool.use_rules(new)
        assert (await pipeline._commit(prepared, "test")).stored == 1
    finally:
        if pool is not None:
            pool.close()
    assert await _tags(store, "k1") == []


@pytest.mark.timeout(120)
async def test_sighup_reloads_the_rules_of_a_running_daemon(tmp_path: Path) -> None:
    """`socialcrm run` as a real process: SIGHUP reloads, bad rules leave it running as it was."""
    import signal

    import aiohttp

    from tests.daemon_process import DaemonProcess, write_config

    rule_file = tmp_path / "mine.yaml"
    rule_file.write_text(KETTLE)
    config = write_config(
        tmp_path / "config.yaml",
        f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}",
        [],
        rules=["mine.yaml"],
        default_rules=False,
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    await daemon.start()
    try:
        await daemon.wait_up()
        assert daemon.proc is not None

        async def rules_once(change: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            """/healthz's rules, once ``change`` holds for them (a reload takes a moment)."""
            url = f"http://127.0.0.1:{daemon.port}/healthz"
            async with aiohttp.ClientSession() as http:
                for _ in range(400):
                    async with http.get(url) as resp:
                        rules: dict[str, Any] = (await resp.json())["rules"]
                    if change(rules):
                        return rules
                    await asyncio.sleep(0.05)
            raise AssertionError(f"no reload seen: {rules}; see {daemon.log}")

        first = await rules_once(lambda r: True)
        rule_file.write_text(TOASTER)
        daemon.proc.send_signal(signal.SIGHUP)
        second = await rules_once(lambda r: r["fingerprint"] != first["fingerprint"])
        assert second["reload_error"] is None
        rule_file.write_text("rules: [oops\n")
        daemon.proc.send_signal(signal.SIGHUP)
        refused = await rules_once(lambda r: r["reload_error"] is not None)
        assert refused["fingerprint"] == second["fingerprint"] and "mine.yaml" in str(refused)
        assert await daemon.terminate() == 0
    finally:
        await daemon.kill()
    log = (tmp_path / "daemon.log").read_text()
    assert "rules reloaded: 1 rule(s) from 1 file(s)" in log and "rules not reloaded" in log
