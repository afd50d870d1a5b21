"""Sending approved replies: once, through the source's connector, and never blindly again.

The platform here is a real HTTP server (the webhook source's reply callback) whose answers
the tests set; one test kills a real process in the middle of a send.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestServer

from socialcrm import responder
from socialcrm.config import Config
from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.daemon import Daemon
from socialcrm.db import Store
from socialcrm.demo import free_port
from socialcrm.models import Alert, Message, Reply, Ticket, utcnow
from socialcrm.pipeline import Pipeline
from socialcrm.sender import CLAIM_SETTLE, MAX_ATTEMPTS, SENDING_GRACE, Sender
from socialcrm.sources import make_source

SECRET = "a-webhook-secret-of-some-length"


class Platform:
    """Records every reply POSTed to it; answers as told."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.hang = False
        self.got_one = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(json.loads(await request.read()))
        self.got_one.set()
        if self.hang:
            await asyncio.sleep(3600)
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        body = {"id": f"posted-{len(self.received)}"} if status == 200 else {"error": "no"}
        return web.json_response(body, status=status, headers=headers)


@pytest.fixture
async def platform() -> AsyncIterator[tuple[Platform, str]]:
    p = Platform()
    app = web.Application()
    app.router.add_post("/replies", p.handle)
    async with TestServer(app, host="127.0.0.1") as ts:
        yield p, str(ts.make_url("/replies"))


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> Any:
        return self.now


async def complaint(pipeline: Pipeline) -> None:
    """A complaint through the webhook source ``forms``: its reply draft is reply 1."""
    msg = InboundMessage(
        channel="webhook",
        external_id="form-1",
        text="My order never arrived and it is two weeks late, terrible",
        author=Author(email="cora@example.com", name="Cora"),
    )
    await pipeline.ingest(Batch(messages=[msg]), "forms")


@pytest.fixture
async def setup(
    config: Config, store: Store, pipeline: Pipeline, platform: tuple[Platform, str]
) -> AsyncIterator[tuple[Sender, Clock]]:
    _, url = platform
    cfg = Config.model_validate(
        {"sources": [{"name": "forms", "type": "webhook", "secret": SECRET, "reply_url": url}]}
    )
    src = make_source(cfg.sources[0], 0)
    await complaint(pipeline)
    clock = Clock()
    sender = Sender(store, {"forms": src.connector}, clock=clock)
    try:
        yield sender, clock
    finally:
        await src.http.close()


async def reply(store: Store, rid: int = 1) -> Reply:
    async with store.reader() as s:
        r = await s.get(Reply, rid)
        assert r is not None
        return r


async def approve(store: Store, rid: int = 1) -> None:
    async with store.session() as s:
        await responder.approve(s, rid, "dana", "slack")


async def test_approved_reply_is_sent_once_and_stamps_the_ticket(
    setup: tuple[Sender, Clock], store: Store, platform: tuple[Platform, str]
) -> None:
    sender, _ = setup
    server, _ = platform
    assert await sender.send_due() == 0  # a draft is not sent
    await approve(store)
    assert await sender.send_due() == 1
    assert await sender.send_due() == 0
    assert len(server.received) == 1
    assert server.received[0]["in_reply_to"] == "form-1"
    assert server.received[0]["to_email"] == "cora@example.com"
    r = await reply(store)
    assert r.status == "sent" and r.external_id == "posted-1" and r.sent_at is not None
    async with store.reader() as s:
        t = (await s.execute(sa.select(Ticket))).scalar_one()
        out = (
            await s.execute(sa.select(Message).where(Message.direction == "outbound"))
        ).scalar_one()
    assert t.first_response_at is not None and t.status == "pending"
    assert out.external_id == "posted-1" and out.ticket_id == t.id


async def test_rate_limit_is_retried_after_the_reset(
    setup: tuple[Sender, Clock], store: Store, platform: tuple[Platform, str]
) -> None:
    sender, clock = setup
    server, _ = platform
    server.answers = [(429, {"Retry-After": "30"})]
    await approve(store)
    assert await sender.send_due() == 0
    r = await reply(store)
    assert r.status == "approved" and r.next_attempt_at is not None
    assert await sender.send_due() == 0  # not before the reset
    clock.now += timedelta(seconds=31)
    assert await sender.send_due() == 1
    assert len(server.received) == 2 and (await reply(store)).status == "sent"


@pytest.mark.parametrize(
    ("status", "final", "alert"),
    [
        (500, "needs_check", ["reply_needs_check"]),
        # Refused credentials also tell a person the source needs new ones (once per source).
        (401, "failed", ["reply_failed", "source_auth"]),
        (404, "failed", ["reply_failed"]),
    ],
)
async def test_failures_are_never_resent_blindly(
    setup: tuple[Sender, Clock],
    store: Store,
    platform: tuple[Platform, str],
    status: int,
    final: str,
    alert: list[str],
) -> None:
    sender, clock = setup
    server, _ = platform
    server.answers = [(status, {})]
    await approve(store)
    await sender.send_due()
    clock.now += timedelta(hours=1)
    await sender.send_due()
    await sender.flag_interrupted()
    assert len(server.received) == 1
    r = await reply(store)
    assert r.status == final and r.last_error
    async with store.reader() as s:
        kinds = [a.kind for a in (await s.execute(sa.select(Alert))).scalars()]
    assert sorted(kinds) == alert


async def test_a_reply_from_an_unsendable_source_fails_with_a_reason(
    store: Store, pipeline: Pipeline
) -> None:
    msg = InboundMessage(
        channel="x",
        external_id="9",
        text="@acme my order is late, awful",
        author=Author(user_id="1", handle="jo"),
    )
    await pipeline.ingest(Batch(messages=[msg]), "file:old.jsonl")
    await approve(store)
    sender = Sender(store, {})
    await sender.send_due()
    r = await reply(store)
    assert r.status == "failed" and "no connector" in (r.last_error or "")


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from socialcrm.config import Config
    from socialcrm.db import Store
    from socialcrm.sender import Sender
    from socialcrm.sources import make_source

    async def main(url, reply_url):
        store = Store(url)
        cfg = Config.model_validate({"sources": [{"name": "forms", "type": "webhook",
            "secret": "a-webhook-secret-of-some-length", "reply_url": reply_url}]})
        src = make_source(cfg.sources[0], 0)
        await Sender(store, {"forms": src.connector}).send_one(1)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_killed_mid_send_is_flagged_and_never_sent_twice(
    setup: tuple[Sender, Clock], store: Store, platform: tuple[Platform, str], tmp_path: Path
) -> None:
    sender, clock = setup
    server, url = platform
    server.hang = True  # the platform never answers: the child is between "sending" and the answer
    await approve(store)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = await asyncio.create_subprocess_exec(sys.executable, str(script), store.url, url)
    try:
        await asyncio.wait_for(server.got_one.wait(), 60)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert (await reply(store)).status == "sending"
    server.hang = False
    assert await sender.send_due() == 0  # not approved any more: nothing to send
    clock.now = utcnow()
    assert await sender.flag_interrupted() == 0  # within the grace period: maybe still in flight
    clock.now = utcnow() + SENDING_GRACE + timedelta(seconds=1)
    assert await sender.flag_interrupted() == 1
    r = await reply(store)
    assert r.status == "needs_check" and "check on the platform" in (r.last_error or "")
    clock.now += timedelta(days=1)
    await sender.send_due()
    assert len(server.received) == 1  # the one the child sent, never a second


async def claimed_by(store: Store, who: str, ago: timedelta, rid: int = 1) -> None:
    """The reply as a process named ``who`` left it, ``ago`` after claiming it to send."""
    async with store.session() as s:
        await s.execute(
            sa.update(Reply)
            .where(Reply.id == rid)  # type: ignore[arg-type]
            .values(status="sending", sending_by=who, sending_started_at=utcnow() - ago)
        )


async def test_a_send_claimed_by_a_process_that_is_not_up_is_flagged_without_the_grace(
    setup: tuple[Sender, Clock], store: Store, platform: tuple[Platform, str]
) -> None:
    """The claim names its process: a reply left ``sending`` by one no longer up goes to a
    person once the claim has settled, not two minutes later; one whose process is up, or
    that names none, waits out the grace (its send may still be in hand)."""
    sender, clock = setup
    server, _ = platform
    up = {"other/2"}

    async def seen_up(names: Any) -> set[str]:
        return up & set(names)

    sender.up = seen_up
    await approve(store)
    await claimed_by(store, "other/2", timedelta(0))
    clock.now = utcnow() + CLAIM_SETTLE + timedelta(seconds=1)
    assert await sender.flag_interrupted() == 0, "its process is up: maybe still sending"
    up.clear()
    clock.now = utcnow()
    assert await sender.flag_interrupted() == 0, "a claim this fresh has not settled"
    clock.now = utcnow() + CLAIM_SETTLE + timedelta(seconds=1)
    assert await sender.flag_interrupted() == 1
    r = await reply(store)
    assert r.status == "needs_check" and "check on the platform" in (r.last_error or "")
    assert "process other/2 stopped" in (r.last_error or ""), "it names the process"
    assert not server.received, "never sent by itself"


async def test_a_restarted_daemon_flags_the_send_its_former_process_left_at_once(
    config: Config, store: Store, pipeline: Pipeline
) -> None:
    """On SQLite one daemon runs, so a claim by any other process is a dead one's; on
    PostgreSQL the daemons up are the ones whose membership the server holds."""
    await complaint(pipeline)
    await approve(store)
    await claimed_by(store, "socialcrm-old/4242", CLAIM_SETTLE * 2)
    daemon = Daemon(config, store, name="socialcrm-new")
    await daemon.start("127.0.0.1", free_port())
    try:
        for _ in range(100):
            if (await reply(store)).status != "sending":
                break
            await asyncio.sleep(0.1)
        assert (await reply(store)).status == "needs_check", "flagged within the grace"
    finally:
        await daemon.stop()


async def test_rate_limits_without_a_reset_back_off_then_give_up(
    setup: tuple[Sender, Clock], store: Store, platform: tuple[Platform, str]
) -> None:
    sender, clock = setup
    server, _ = platform
    server.answers = [(429, {})] * MAX_ATTEMPTS  # the platform never says when to come back
    await approve(store)
    waits = []
    for attempt in range(1, MAX_ATTEMPTS):
        assert await sender.send_due() == 0
        r = await reply(store)
        assert r.status == "approved" and r.next_attempt_at is not None
        wait = (r.next_attempt_at - clock.now).total_seconds()
        # Exponential with jitter: half to all of 5 s x 2^(attempt-1), at most 10 minutes.
        ceiling = min(600.0, 5.0 * 2 ** (attempt - 1))
        assert ceiling / 2 <= wait <= ceiling
        waits.append(wait)
        assert await sender.send_due() == 0, "not before its time"
        clock.now = r.next_attempt_at
    assert waits[-1] > waits[0]
    assert await sender.send_due() == 0
    r = await reply(store)
    assert r.status == "failed" and f"gave up after {MAX_ATTEMPTS} tries" in (r.last_error or "")
    assert len(server.received) == MAX_ATTEMPTS
    async with store.reader() as s:
        alerts = list((await s.execute(sa.select(Alert))).scalars())
    assert [a.kind for a in alerts] == ["reply_failed"]
    assert alerts[0].detail["approved_by"]
    clock.now += timedelta(days=1)
    assert await sender.send_due() == 0 and len(server.received) == MAX_ATTEMPTS


async def test_ticket_with_a_sent_reply_shows_from_chat_and_cli(
    setup: tuple[Sender, Clock], store: Store, config: Config
) -> None:
    """The outbound message has no sentiment: the ticket page says n/a instead of failing."""
    from socialcrm.chatops.commands import Actor, Commands

    sender, _ = setup
    await approve(store)
    assert await sender.send_due() == 1
    page = await Commands(config, store).run(Actor("val", "viewer", "slack"), "ticket 1")
    outbound = [line for line in page.splitlines() if " outbound " in line]
    assert len(outbound) == 1 and "n/a" in outbound[0]
    assert "#1 sent:" in page
