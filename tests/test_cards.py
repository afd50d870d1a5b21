"""Approval cards: posted once per draft, kept in step with the reply, never lost to a Slack error.

Slack is the sandbox's stand-in, served on 127.0.0.1; the notifier talks to it over HTTP with
slack_sdk's AsyncWebClient. The helpers here are shared by the Slack and Mattermost tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestServer
from slack_sdk.web.async_client import AsyncWebClient

from socialcrm import responder
from socialcrm.chatops.cards import (
    CLAIM_GRACE_S,
    CLAIM_SKEW_S,
    SWEEP_S,
    CardNotifier,
    escape_mrkdwn,
)
from socialcrm.config import Config
from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.daemon import Daemon
from socialcrm.db import Store
from socialcrm.models import Alert, AuditEvent, Reply, utcnow
from socialcrm.pipeline import Pipeline
from socialcrm.sandbox.slack import SlackWorkspace, check_blocks, make_slack_app
from tests.slack_spec import exchange_problems

SIGNING_SECRET = "test-signing-secret-7f3a9c"
BOT_TOKEN = "xoxb-test-bot-token"
MATTERMOST_TOKEN = "mm-slash-token-4d2e"
CHANNEL = "C0APPROVALS"
#: A customer who tries every trick mrkdwn has.
NASTY = "@acme the app crashes all the time, useless <!channel> & <https://evil.example|click>"


def chat_config(base_dir: Path, api_base: str = "http://127.0.0.1:9/api/") -> Config:
    """A configuration with Slack, Mattermost and four staff members of every role."""
    return Config.model_validate(
        {
            "brand": {"name": "Acme", "handles": ["acme"]},
            "base_dir": base_dir,
            "slack": {
                "signing_secret": SIGNING_SECRET,
                "bot_token": BOT_TOKEN,
                "channel": CHANNEL,
                "api_base": api_base,
            },
            "mattermost": {"token": MATTERMOST_TOKEN},
            "staff": [
                {"name": "val", "role": "viewer", "slack_id": "U0VAL", "mattermost_id": "mm-val"},
                {"name": "ann", "role": "agent", "slack_id": "U0ANN", "mattermost_id": "mm-ann"},
                {
                    "name": "dana",
                    "role": "approver",
                    "slack_id": "U0DANA",
                    "mattermost_id": "mm-dana",
                },
            ],
        }
    )


async def ingest(pipeline: Pipeline) -> None:
    """Three drafts: #1 to jane on X, #2 to a customer who writes mrkdwn, #3 a long email."""
    msgs = [
        InboundMessage(
            channel="x",
            external_id="1",
            text="@acme my order is two weeks late, terrible",
            author=Author(user_id="1", handle="jane", name="Jane <Doe> & Co", followers=1200),
        ),
        InboundMessage(
            channel="x",
            external_id="2",
            text=NASTY,
            author=Author(user_id="2", handle="bob"),
            url="https://x.com/bob/status/2",
        ),
        InboundMessage(
            channel="email",
            external_id="3@mail.example",
            text="I want a refund " + "& <b> " * 1000,
            author=Author(user_id="c@mail.example", email="c@mail.example"),
            subject="Refund",
        ),
    ]
    result = await pipeline.ingest(Batch(messages=msgs), "test")
    assert result.drafts == 3


async def reply(store: Store, rid: int) -> Reply:
    """One reply, read fresh."""
    async with store.reader() as s:
        r = await s.get(Reply, rid)
        assert r is not None
        return r


async def audit(store: Store) -> list[AuditEvent]:
    """Every audit row, oldest first."""
    async with store.reader() as s:
        return list((await s.execute(sa.select(AuditEvent).order_by(AuditEvent.id))).scalars())  # type: ignore[arg-type]


async def set_status(store: Store, rid: int, status: str, **values: Any) -> None:
    """Move a reply on as the sender would."""
    async with store.session() as s:
        await s.execute(sa.update(Reply).where(Reply.id == rid).values(status=status, **values))  # type: ignore[arg-type]


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SlackWorld:
    """The Slack stand-in on a real port, a client session, and a notifier talking to it."""

    workspace: SlackWorkspace
    base_url: str
    http: aiohttp.ClientSession
    client: AsyncWebClient
    cards: CardNotifier
    clock: Clock
    config: Config
    approved: list[int] = field(default_factory=list)


@asynccontextmanager
async def slack_world(store: Store, base_dir: Path) -> AsyncIterator[SlackWorld]:
    """Serve the stand-in and build everything that talks to it; close it all afterwards."""
    workspace = SlackWorkspace(
        signing_secret=SIGNING_SECRET,
        bot_token=BOT_TOKEN,
        channels={CHANNEL: "approvals"},
        users={"U0DANA": "dana", "U0VAL": "val", "U0ANN": "ann", "U0NOBODY": "mallory"},
    )
    async with TestServer(make_slack_app(workspace), host="127.0.0.1") as server:
        base = str(server.make_url("")).rstrip("/")
        workspace.base_url = base
        config = chat_config(base_dir, f"{base}/api/")
        async with aiohttp.ClientSession() as http:
            clock = Clock()
            client = AsyncWebClient(token=BOT_TOKEN, base_url=f"{base}/api/", session=http)
            cards = CardNotifier(store, client, CHANNEL, clock=clock)
            try:
                yield SlackWorld(workspace, base, http, client, cards, clock, config)
            finally:
                await cards.stop()


@pytest.fixture
async def world(store: Store, pipeline: Pipeline, tmp_path: Path) -> AsyncIterator[SlackWorld]:
    await ingest(pipeline)
    async with slack_world(store, tmp_path) as w:
        yield w


# -- posting ---------------------------------------------------------------------------------


async def test_a_card_per_draft_with_everything_an_approver_needs(
    world: SlackWorld, store: Store
) -> None:
    assert (await world.client.auth_test())["team_id"] == world.workspace.team_id
    assert await world.cards.sync() == 3
    ws = world.workspace
    assert [m.channel for m in ws.messages] == [CHANNEL] * 3
    jane = ws.card(1)
    text = jane.all_text()
    for expected in (
        "*Reply #1* to x",
        "ticket #1",
        "*NORMAL*",
        "Jane &lt;Doe&gt; &amp; Co",
        "@jane",
        "1,200 followers",
        "sentiment -0.48",
        ">@acme my order is two weeks late, terrible",
        "tier *standard*",
        "value 0.00",
        "Sorry your order is late",
        "awaits approval",
    ):
        assert expected in text, expected
    buttons = jane.buttons()
    assert list(buttons) == ["approve", "edit", "reject"]
    assert buttons["approve"]["style"] == "primary" and buttons["approve"]["value"] == "1"
    assert {b["value"] for b in buttons.values()} == {"1"}
    marker = (await reply(store, 1)).chat_claim
    assert marker and len(marker) == 32, "claimed before it was posted"
    assert jane.metadata == {
        "event_type": "socialcrm_reply",
        "event_payload": {"reply_id": 1, "marker": marker},
    }
    r = await reply(store, 1)
    assert (r.chat_channel, r.chat_ts, r.chat_shown) == (CHANNEL, jane.ts, "draft")
    # Again and again: nothing new to post, nothing to update.
    assert await world.cards.sync() == 0
    assert await world.cards.sync() == 0
    assert len(ws.messages) == 3 and all(not m.updates for m in ws.messages)


async def test_what_a_customer_wrote_cannot_format_link_or_mention(world: SlackWorld) -> None:
    await world.cards.sync()
    bob = world.workspace.card(2).all_text()
    assert escape_mrkdwn(NASTY) in bob
    assert "<!channel>" not in bob and "<https://evil.example|click>" not in bob
    # The message's own link is ours to make, and it is the platform's URL.
    assert "<https://x.com/bob/status/2|Open on x>" in bob


async def test_a_long_email_fits_slacks_limits(world: SlackWorld) -> None:
    await world.cards.sync()
    card = world.workspace.card(3)
    assert check_blocks(card.blocks) is None
    assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in card.blocks)
    assert "&amp; &lt;b&gt;" in card.all_text()


# -- keeping cards in step ---------------------------------------------------------------------


async def test_a_card_follows_its_reply_to_the_end(world: SlackWorld, store: Store) -> None:
    await world.cards.sync()
    async with store.session() as s:
        await responder.approve(s, 1, "dana", "cli")
        await responder.reject(s, 2, "not our customer", "ann", "cli")
    assert await world.cards.sync() == 2
    jane, bob = world.workspace.card(1), world.workspace.card(2)
    assert len(jane.updates) == 1 and not jane.buttons()
    assert "Approved by *dana*" in jane.all_text()
    assert "Rejected by *ann*: not our customer" in bob.all_text() and not bob.buttons()
    assert (await reply(store, 1)).chat_shown == "approved"
    assert await world.cards.sync() == 0

    await set_status(store, 1, "sending")
    await world.cards.sync()
    assert "sending now" in jane.all_text()
    await set_status(store, 1, "sent", sent_at=sa.func.now())
    assert await world.cards.sync() == 1
    assert "Sent on x" in jane.all_text() and "approved by *dana*" in jane.all_text()
    assert [u["text"] for u in jane.updates][-1].endswith("sent")
    assert await world.cards.sync() == 0
    assert len(jane.updates) == 3


async def test_an_edit_shows_the_new_text_and_who_changed_it(
    world: SlackWorld, store: Store
) -> None:
    await world.cards.sync()
    async with store.session() as s:
        await responder.edit(s, 1, "@jane So sorry <3 - on it & DMing you", "dana", "slack")
    await world.cards.sync()
    text = world.workspace.card(1).all_text()
    assert "Reply as edited by dana" in text
    assert "So sorry &lt;3 - on it &amp; DMing you" in text
    assert "Edited and approved by *dana*" in text


@pytest.mark.parametrize("failure", ["needs_check", "failed"])
async def test_a_send_that_went_wrong_asks_for_a_person(
    world: SlackWorld, store: Store, failure: str
) -> None:
    await world.cards.sync()
    async with store.session() as s:
        await responder.approve(s, 1, "dana", "cli")
    await set_status(store, 1, failure, last_error="the <platform> timed out")
    await world.cards.sync()
    text = world.workspace.card(1).all_text()
    assert ":warning:" in text and "the &lt;platform&gt; timed out" in text


async def test_the_loop_updates_a_card_when_woken(world: SlackWorld, store: Store) -> None:
    world.cards.start(tick_s=30)
    ws = world.workspace
    await ws.wait_for(lambda: len(ws.messages) == 3)
    async with store.session() as s:
        await responder.approve(s, 2, "dana", "cli")
    world.cards.changed(2)
    await ws.wait_for(lambda: ws.card(2).updates)
    await world.cards.stop()
    assert "Approved by *dana*" in ws.card(2).all_text()


# -- Slack says no -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["internal_error", "http_503"])
async def test_a_passing_refusal_is_tried_again_after_a_backoff(
    world: SlackWorld, store: Store, how: str
) -> None:
    ws = world.workspace
    if how == "http_503":
        ws.fail_http_next("chat.postMessage", 503)
    else:
        ws.fail_next("chat.postMessage", how)
    assert await world.cards.sync() == 0
    assert (await reply(store, 1)).chat_ts is None
    assert world.workspace.messages == []
    assert world.cards.health()["state"] == "waiting"
    calls = len(ws.calls)
    assert await world.cards.sync() == 0
    assert len(ws.calls) == calls, "not retried before its backoff"
    world.clock.now += 2
    assert await world.cards.sync() == 3
    assert await world.cards.missing() == 0
    assert (await reply(store, 1)).chat_ts == world.workspace.card(1).ts
    assert world.cards.health() == {"state": "ok"}


def _break(world: SlackWorld, error: str) -> None:
    """Make Slack refuse the cards for good, the way each error comes about."""
    ws = world.workspace
    if error == "not_in_channel":
        ws.outside.add(CHANNEL)
    elif error == "is_archived":
        ws.archived.add(CHANNEL)
    elif error == "channel_not_found":
        ws.channels.pop(CHANNEL)
    elif error == "invalid_auth":
        world.client.token = "xoxb-someone-elses-token"
    elif error == "token_revoked":
        ws.revoked = True
    elif error == "account_inactive":
        ws.inactive = True
    elif error == "missing_scope":
        ws.scopes.discard("chat:write")


def _mend(world: SlackWorld) -> None:
    ws = world.workspace
    ws.outside.clear()
    ws.archived.clear()
    ws.channels[CHANNEL] = "approvals"
    world.client.token = BOT_TOKEN
    ws.revoked = ws.inactive = False
    ws.scopes.add("chat:write")


@pytest.mark.parametrize(
    "error",
    [
        "not_in_channel",
        "is_archived",
        "channel_not_found",
        "invalid_auth",
        "token_revoked",
        "account_inactive",
        "missing_scope",
    ],
)
async def test_a_permanent_refusal_stops_the_cards_alerts_once_and_shows_in_health(
    world: SlackWorld, store: Store, error: str
) -> None:
    ws = world.workspace
    _break(world, error)
    assert await world.cards.sync() == 0
    health = world.cards.health()
    assert health["state"] == "stopped" and health["error"].startswith(error)
    if error == "missing_scope":
        assert health["error"] == "missing_scope (needs chat:write)"
    # The loop runs every second: for the next hour Slack is not asked again.
    calls = len(ws.calls)
    for _ in range(3599):
        world.clock.now += 1
        assert await world.cards.sync() == 0
    assert len(ws.calls) == calls, "a permanent refusal is not retried every second"
    world.clock.now += 1
    assert await world.cards.sync() == 0
    assert len(ws.calls) == calls + 1, "tried again once an hour"
    alerts = await slack_alerts(store)
    assert len(alerts) == 1
    assert alerts[0].severity == "critical" and error in alerts[0].title
    assert alerts[0].detail["channel"] == CHANNEL
    # Someone fixes it: within the hour the cards go out, the state is ok again.
    _mend(world)
    world.clock.now += 3600
    assert await world.cards.sync() == 3
    assert world.cards.health() == {"state": "ok"}
    assert len(await slack_alerts(store)) == 1


async def slack_alerts(store: Store) -> list[Alert]:
    async with store.reader() as s:
        q = sa.select(Alert).where(Alert.kind == "slack_failing").order_by(Alert.id)  # type: ignore[arg-type]
        return list((await s.execute(q)).scalars())


async def test_a_rate_limit_is_waited_out(world: SlackWorld, store: Store) -> None:
    ws = world.workspace
    ws.fail_next("chat.postMessage", "ratelimited", retry_after_s=30)
    assert await world.cards.sync() == 0
    calls = len(ws.calls)
    world.clock.now += 10
    assert await world.cards.sync() == 0
    assert len(ws.calls) == calls, "no call to Slack before Retry-After has passed"
    world.clock.now += 21
    assert await world.cards.sync() == 3
    assert (await reply(store, 3)).chat_ts is not None


async def test_a_refused_update_is_tried_again(world: SlackWorld, store: Store) -> None:
    await world.cards.sync()
    async with store.session() as s:
        await responder.approve(s, 1, "dana", "cli")
    world.workspace.fail_next("chat.update", "ratelimited", retry_after_s=5)
    assert await world.cards.sync() == 0
    assert (await reply(store, 1)).chat_shown == "draft"
    world.clock.now += 6
    assert await world.cards.sync() == 1
    assert (await reply(store, 1)).chat_shown == "approved"
    assert "Approved by *dana*" in world.workspace.card(1).all_text()


async def test_one_card_slack_refuses_does_not_hold_up_the_others(
    world: SlackWorld, store: Store
) -> None:
    world.workspace.fail_next("chat.postMessage", "invalid_blocks")
    assert await world.cards.sync() == 2
    assert (await reply(store, 3)).chat_ts is not None  # the queue's first draft was refused
    first = [r for r in (1, 2, 3) if (await reply(store, r)).chat_ts is None]
    assert len(first) == 1
    assert await world.cards.sync() == 1


async def test_a_deleted_card_comes_back_for_a_draft_and_is_let_go_after_a_decision(
    world: SlackWorld, store: Store
) -> None:
    await world.cards.sync()
    ws = world.workspace
    old_ts = ws.card(1).ts
    ws.messages.clear()  # someone deleted the cards in Slack
    async with store.session() as s:
        await responder.approve(s, 2, "dana", "cli")
        # A draft's text changes only through an edit, so force a re-render of #1.
        await s.execute(sa.update(Reply).where(Reply.id == 1).values(chat_shown=None))  # type: ignore[arg-type]
    await world.cards.sync()
    r1, r2 = await reply(store, 1), await reply(store, 2)
    assert r1.chat_ts is None and r2.chat_shown == "approved"
    await world.cards.sync()
    r1 = await reply(store, 1)
    assert r1.chat_ts not in (None, old_ts) and ws.card(1).ts == r1.chat_ts


# -- a poster that dies mid-post -------------------------------------------------------------


def _next_leader(world: SlackWorld, store: Store, after_s: float) -> CardNotifier:
    """Another process's notifier, ``after_s`` of wall-clock time later."""
    later = utcnow() + timedelta(seconds=after_s)
    return CardNotifier(store, world.client, CHANNEL, clock=world.clock, wall_clock=lambda: later)


async def test_a_poster_killed_after_slacks_answer_leaves_one_card_that_the_next_adopts(
    world: SlackWorld, store: Store
) -> None:
    ws = world.workspace
    # Slack posts the first card, but its answer (the ts) is held back while the poster dies.
    ws.hold_answers("chat.postMessage")
    round_ = asyncio.create_task(world.cards.sync())
    await ws.wait_for(lambda: ws.held)
    round_.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await round_
    ws.release()
    (posted,) = ws.messages
    rid = posted.metadata["event_payload"]["reply_id"] if posted.metadata else 0
    claimed = await reply(store, rid)
    assert claimed.chat_ts is None and claimed.chat_claim is not None
    assert posted.metadata == {
        "event_type": "socialcrm_reply",
        "event_payload": {"reply_id": rid, "marker": claimed.chat_claim},
    }
    # At once, the claim may still be in flight: the next leader posts the others only.
    assert await _next_leader(world, store, 0).sync() == 2
    assert len(ws.cards(rid)) == 1 and (await reply(store, rid)).chat_ts is None
    # Once it cannot be in flight any more, the card is found in the channel and adopted.
    leader = _next_leader(world, store, CLAIM_GRACE_S + 1)
    assert await leader.sync() >= 1
    assert [m.ts for m in ws.cards(rid)] == [posted.ts], "one card, the one already posted"
    assert (await reply(store, rid)).chat_ts == posted.ts
    history = [a for m, a in ws.calls if m == "conversations.history"]
    assert len(history) == 1 and history[0]["include_all_metadata"] in ("1", "true", True)
    claimed_at = claimed.chat_claimed_at
    assert claimed_at is not None
    oldest = float(history[0]["oldest"])
    assert claimed_at.timestamp() - CLAIM_SKEW_S - 1 < oldest <= claimed_at.timestamp()
    for r in (1, 2, 3):
        assert len(ws.cards(r)) == 1, f"reply {r} has one card"
    # The adopted card is redrawn, and kept in step with the reply from then on.
    async with store.session() as s:
        await responder.approve(s, rid, "dana", "cli")
    await leader.sync()
    assert posted.updates and "approve" not in posted.buttons()
    assert "Approved by *dana*" in posted.all_text()
    assert len(ws.messages) == 3
    problems = exchange_problems(ws.calls, ws.answers)
    assert problems == [], "\n".join(problems)


async def test_a_claim_whose_card_never_reached_slack_is_posted_once(
    world: SlackWorld, store: Store
) -> None:
    ws = world.workspace
    long_ago = utcnow() - timedelta(minutes=5)
    # A poster died after claiming reply 1 and before Slack saw the card; reply 2 was
    # decided meanwhile, so it needs no card at all.
    await set_status(store, 1, "draft", chat_claim="a" * 32, chat_claimed_at=long_ago)
    await set_status(store, 2, "rejected", chat_claim="b" * 32, chat_claimed_at=long_ago)
    assert await world.cards.sync() == 2
    assert [m for m, _ in ws.calls].count("conversations.history") == 1
    assert len(ws.cards(1)) == 1 and ws.cards(2) == [] and len(ws.cards(3)) == 1
    assert (ws.cards(1)[0].metadata or {})["event_payload"]["marker"] == "a" * 32
    assert (await reply(store, 1)).chat_ts == ws.cards(1)[0].ts
    assert (await reply(store, 2)).chat_claim is None
    assert await world.cards.sync() == 0
    assert [m for m, _ in ws.calls].count("conversations.history") == 1


async def test_a_card_changed_behind_the_floor_is_caught_by_the_sweep(
    world: SlackWorld, store: Store
) -> None:
    await world.cards.sync()
    async with store.session() as s:
        await responder.approve(s, 1, "dana", "cli")
    await set_status(store, 1, "sent")
    await world.cards.sync()
    assert (await reply(store, 1)).chat_shown == "sent"
    # Settled replies are not looked at every second...
    await set_status(store, 1, "needs_check", last_error="someone changed it by hand")
    await world.cards.sync()
    assert (await reply(store, 1)).chat_shown == "sent"
    # ...but the periodic sweep sees them.
    world.clock.now += SWEEP_S + 1
    await world.cards.sync()
    assert (await reply(store, 1)).chat_shown == "needs_check"
    assert "someone changed it by hand" in world.workspace.card(1).all_text()


async def test_the_stand_in_answers_like_slack(world: SlackWorld) -> None:
    ws, http = world.workspace, world.http
    url = f"{world.base_url}/api/chat.postMessage"
    async with http.post(url, json={"channel": CHANNEL, "text": "hi"}) as resp:
        assert resp.status == 200 and await resp.json() == {"ok": False, "error": "not_authed"}
    bad = {"Authorization": "Bearer xoxb-wrong"}
    async with http.post(url, json={"channel": CHANNEL, "text": "hi"}, headers=bad) as resp:
        assert await resp.json() == {"ok": False, "error": "invalid_auth"}
    good = {"Authorization": f"Bearer {BOT_TOKEN}"}
    async with http.post(url, data={"channel": "C0NOPE", "text": "hi"}, headers=good) as resp:
        assert (await resp.json())["error"] == "channel_not_found"
    async with http.post(url, data={"channel": CHANNEL, "text": "hi"}, headers=good) as resp:
        body = await resp.json()
    whole, frac = body["ts"].split(".")
    assert body["ok"] and whole.isdigit() and len(frac) == 6
    blocks = json.dumps([{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}])
    form = {"channel": CHANNEL, "text": "hi", "blocks": blocks}
    async with http.post(url, data=form, headers=good) as resp:
        assert (await resp.json())["error"] == "invalid_blocks"
    ws.fail_next("chat.postMessage", "ratelimited", retry_after_s=7)
    async with http.post(url, data={"channel": CHANNEL, "text": "hi"}, headers=good) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    ephemeral = f"{world.base_url}/api/chat.postEphemeral"
    form = {"channel": CHANNEL, "user": "U0DANA", "text": "psst"}
    async with http.post(ephemeral, data=form, headers=good) as resp:
        assert (await resp.json())["ok"] and ws.ephemeral[-1]["text"] == "psst"
    views = f"{world.base_url}/api/views.open"
    view = {"type": "modal", "title": {"type": "plain_text", "text": "t"}, "blocks": []}
    async with http.post(views, json={"trigger_id": "1.2.abc", "view": view}, headers=good) as r:
        assert (await r.json())["error"] == "exchanged_trigger_id"


async def test_healthz_shows_cards_that_slack_refuses_for_good(
    world: SlackWorld, store: Store
) -> None:
    daemon = Daemon(world.config, store)
    daemon.cards = world.cards
    try:
        assert daemon.health()["chat"]["cards"] == {"state": "ok"}
        world.workspace.revoked = True
        await world.cards.sync()
        health = daemon.health()
        assert health["status"] == "degraded"
        cards = health["chat"]["cards"]
        assert cards["state"] == "stopped" and cards["error"] == "token_revoked"
        assert cards["retry_in_s"] == 3600.0 and cards["since"]
    finally:
        await daemon.stop()
