"""End to end with the sandbox: a complaint arrives, a draft waits, a person approves it, and the
reply appears on the platform exactly once, threaded to the original; the ticket records the
first response time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestServer

from socialcrm.chatops.commands import Actor, Commands
from socialcrm.config import Config
from socialcrm.daemon import Daemon
from socialcrm.db import Store
from socialcrm.demo import sandbox_sources
from socialcrm.models import Message, Reply, Ticket, utcnow
from socialcrm.sandbox.server import Platform, Sandbox, make_app, start_ending_before
from socialcrm.sender import TICK_S
from socialcrm.sources import make_source
from tests.slack_stand_in import slack_stand_in

APPROVER = Actor("dana", "approver", "slack")


@pytest.fixture
async def running(config: Config, store: Store) -> AsyncIterator[tuple[Daemon, Sandbox]]:
    sandbox = Sandbox(11, messages=400)
    async with TestServer(make_app(sandbox), host="127.0.0.1") as server:
        base = str(server.make_url("")).rstrip("/")
        cfg = config.model_copy(
            update={
                "sources": Config.model_validate(
                    {"sources": sandbox_sources(sandbox, base, interval="0")}
                ).sources
            }
        )
        daemon = Daemon(cfg, store)
        for i, src in enumerate(cfg.sources):
            daemon.poller.add(make_source(src, i))
        daemon.sender.connectors = {n: s.connector for n, s in daemon.poller.sources.items()}
        try:
            yield daemon, sandbox
        finally:
            await daemon.stop()


async def first_complaint_draft(store: Store, channel: str) -> tuple[Reply, Message]:
    async with store.reader() as s:
        row = (
            await s.execute(
                sa.select(Reply, Message)
                .join(Message, Message.id == Reply.message_id)
                .where(
                    Reply.status == "draft", Reply.channel == channel, Reply.ticket_id.is_not(None)
                )  # type: ignore[union-attr]
                .order_by(Reply.id)
                .limit(1)
            )
        ).first()
    assert row is not None, f"no draft for a {channel} ticket"
    return row[0], row[1]


@pytest.mark.parametrize(("platform", "source"), [("x", "x-acme"), ("mastodon", "mastodon-acme")])
async def test_complaint_to_approved_reply_on_the_platform(
    running: tuple[Daemon, Sandbox], store: Store, platform: Platform, source: str
) -> None:
    daemon, sandbox = running
    sandbox.release(120, platform)
    out = await daemon.poller.poll(source)
    assert out.error is None and out.result.stored > 0
    reply, original = await first_complaint_draft(store, platform)
    commands = Commands(daemon.config, store)
    assert "approved by dana" in await commands.run(APPROVER, f"approve {reply.id}")
    assert await daemon.sender.send_due() == 1
    assert await daemon.sender.send_due() == 0
    posted = sandbox.replies_to(original.external_id)
    assert len(sandbox.replies) == len(posted) == 1, "one reply, threaded to the original"
    assert posted[0].text.strip()
    async with store.reader() as s:
        r = await s.get(Reply, reply.id)
        t = await s.get(Ticket, reply.ticket_id)
    assert r is not None and r.status == "sent" and r.external_id == posted[0].external_id
    assert t is not None and t.first_response_at is not None and t.status == "pending"
    # The platform's copy of our reply comes back on the next poll: it is not a new ticket.
    await daemon.poller.poll(source)
    async with store.reader() as s:
        outbound = (
            (
                await s.execute(
                    sa.select(Message).where(Message.external_id == posted[0].external_id)
                )
            )
            .scalars()
            .all()
        )
    assert len(outbound) == 1 and outbound[0].direction == "outbound"


async def test_approval_from_another_process_goes_out_on_the_next_tick(
    running: tuple[Daemon, Sandbox], store: Store
) -> None:
    """The CLI approves in its own process: nobody wakes the daemon's sender, its tick does."""
    daemon, sandbox = running
    sandbox.release(120, "x")
    await daemon.poller.poll("x-acme")
    reply, original = await first_complaint_draft(store, "x")
    daemon.sender.start()
    await Commands(daemon.config, store).run(APPROVER, f"approve {reply.id}")
    for _ in range(int(3 * TICK_S / 0.05)):
        if sandbox.replies:
            break
        await asyncio.sleep(0.05)
    assert len(sandbox.replies) == 1
    assert sandbox.replies[0].in_reply_to == original.external_id


def mrkdwn(text: str) -> str:
    """Text as an approval card shows it (Slack's three escapes)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@pytest.mark.parametrize(("platform", "source"), [("x", "x-acme"), ("mastodon", "mastodon-acme")])
async def test_slack_card_click_sends_the_reply_once(
    config: Config, store: Store, platform: Platform, source: str
) -> None:
    """Complaint -> draft -> card in Slack -> an approver clicks Approve -> one threaded reply."""
    # Today's traffic: with the default backfill_before, older messages would be history.
    sandbox = Sandbox(11, messages=400, start=start_ending_before(utcnow(), 11, 400))
    async with (
        TestServer(make_app(sandbox), host="127.0.0.1") as platforms,
        slack_stand_in() as slack,
    ):
        base = str(platforms.make_url("")).rstrip("/")
        cfg = Config.model_validate(
            {
                "sources": sandbox_sources(sandbox, base, interval="0"),
                **slack.settings(),
                "base_dir": config.base_dir,
            }
        )
        daemon = Daemon(cfg, store)
        await daemon.start("127.0.0.1", 0)
        try:
            sandbox.release(120, platform)
            await daemon.poller.poll(source)
            reply, original = await first_complaint_draft(store, platform)
            assert daemon.cards is not None
            await daemon.cards.sync()
            card = slack.workspace.card(reply.id)
            shown = card.all_text()
            # The card carries the customer's words, the draft, and the buttons to decide.
            assert mrkdwn(original.text.splitlines()[0][:60]) in shown
            assert mrkdwn(reply.draft_text.splitlines()[0][:60]) in shown
            assert {"approve", "edit", "reject"} <= set(card.buttons())
            await slack.approve(daemon, reply.id, lambda: bool(sandbox.replies))
            await asyncio.sleep(0.3)
            assert len(sandbox.replies) == 1, "exactly one reply reached the platform"
            assert sandbox.replies[0].in_reply_to == original.external_id, "threaded"
            async with store.reader() as s:
                t = await s.get(Ticket, reply.ticket_id)
                r = await s.get(Reply, reply.id)
            assert r is not None and r.status == "sent" and r.decided_by == "dana"
            assert t is not None and t.first_response_at is not None and t.status == "pending"
            await daemon.cards.sync()
            assert card.updates, "the card was updated"
            assert f"Sent on {platform}" in card.all_text()
            assert card.buttons() == {}, "a decided card has no buttons left"
        finally:
            await daemon.stop()
