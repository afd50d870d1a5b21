"""A channel's constraints on a reply, known before approval: found through the source's
connector (``check_reply``), stored with the draft, shown on the card and by ``show``; a
blocking one refuses the approval with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestServer

from socialcrm.chatops.cards import card_blocks, load_card
from socialcrm.chatops.commands import Actor, CommandError, Commands
from socialcrm.config import Config
from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.db import Store
from socialcrm.models import Message, Reply
from socialcrm.pipeline import Pipeline
from socialcrm.rules import RuleSet
from socialcrm.sandbox.server import Sandbox, make_app
from socialcrm.sender import Sender
from socialcrm.sentiment import SentimentScorer
from socialcrm.sources import make_source

APPROVER = Actor("dana", "approver", "slack")
LINK = "https://shop.example/orders/" + "8" * 120


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A brand with one Mastodon source (its settings are only validated, never used)."""
    return Config.model_validate(
        {
            "brand": {"name": "Acme", "handles": ["acme"]},
            "base_dir": tmp_path,
            "sources": [
                {
                    "name": "social",
                    "type": "mastodon",
                    "base_url": "https://social.example",
                    "access_token": "token",
                }
            ],
        }
    )


@pytest.fixture
def pipeline(config: Config, store: Store, scorer: SentimentScorer) -> Pipeline:
    return Pipeline(config, store, rules=RuleSet.load(config.rule_paths()), scorer=scorer)


def mention(external_id: str, visibility: str, text: str) -> InboundMessage:
    acct = f"user{external_id}@else.example"
    return InboundMessage(
        channel="mastodon",
        external_id=external_id,
        text=text,
        author=Author(user_id=external_id, handle=acct),
        raw={"id": external_id, "visibility": visibility, "account": {"acct": acct}},
    )


async def only_reply(store: Store) -> Reply:
    async with store.reader() as s:
        [reply] = (await s.execute(sa.select(Reply))).scalars().all()
        return reply


async def test_a_direct_mention_drafts_a_direct_reply_and_says_so(
    pipeline: Pipeline, config: Config, store: Store
) -> None:
    batch = Batch(messages=[mention("1", "direct", "@acme my order is late, terrible")])
    await pipeline.ingest(batch, "social")
    reply = await only_reply(store)
    assert reply.issues is not None
    [issue] = reply.issues
    assert not issue["blocking"] and "sent as direct" in issue["reason"]
    shown = await Commands(config, store).run(APPROVER, f"show {reply.id}")
    assert "Note: the status answered is direct, so the reply is sent as direct" in shown
    assert reply.id is not None
    card = await load_card(store, reply.id)
    assert card is not None
    [draft] = [b for b in card_blocks(card) if b.get("block_id") == "draft"]
    assert "Note: the status answered is direct" in draft["text"]["text"]
    assert "approved" in await Commands(config, store).run(APPROVER, f"approve {reply.id}")


async def test_mastodon_counts_a_link_as_23_characters(
    pipeline: Pipeline, config: Config, store: Store
) -> None:
    await pipeline.ingest(
        Batch(messages=[mention("2", "public", "@acme my order is late, terrible")]), "social"
    )
    reply = await only_reply(store)
    text = f"See {LINK} for the tracking. " + "Sorry. " * 60
    assert len(text) > 500 and len(text) - len(LINK) + 23 < 480
    out = await Commands(config, store).run(APPROVER, f"edit {reply.id} {text}")
    assert "edited and approved" in out


async def test_a_blocking_issue_refuses_the_approval_with_its_reason(
    pipeline: Pipeline, config: Config, store: Store
) -> None:
    await pipeline.ingest(
        Batch(messages=[mention("3", "private", "@acme my order is late, terrible")]), "social"
    )
    reply = await only_reply(store)
    commands = Commands(config, store)
    with pytest.raises(CommandError, match="too long for Mastodon: 606 characters"):
        await commands.run(APPROVER, f"edit {reply.id} {'word ' * 120}")
    async with store.session() as s:
        stored = await s.get(Reply, reply.id)
        assert stored is not None
        stored.draft_text = "x" * 520  # a template that rendered too much
    with pytest.raises(CommandError, match="cannot be approved: too long for Mastodon"):
        await commands.run(APPROVER, f"approve {reply.id}")
    assert (await only_reply(store)).status == "draft"


async def test_a_connector_without_check_reply_keeps_the_length_rule(
    pipeline: Pipeline, config: Config, store: Store
) -> None:
    x_post = InboundMessage(
        channel="x",
        external_id="9",
        text="@acme my order is two weeks late, terrible",
        author=Author(user_id="9", handle="jane"),
    )
    await pipeline.ingest(Batch(messages=[x_post]), "not-configured")
    reply = await only_reply(store)
    with pytest.raises(CommandError, match="too long for x"):
        await Commands(config, store).run(APPROVER, f"edit {reply.id} {'a' * 300}")


async def test_the_sender_keeps_the_audience_of_what_it_answers(
    tmp_path: Path, store: Store, scorer: SentimentScorer
) -> None:
    """Through the whole core: a private mention is answered privately, a public one publicly
    (the sender hands the connector the original's stored payload)."""
    sandbox = Sandbox(11, messages=400)
    async with TestServer(make_app(sandbox), host="127.0.0.1") as server:
        config = Config.model_validate(
            {
                "brand": {"name": "Acme", "handles": [sandbox.brand_handle]},
                "base_dir": tmp_path,
                "backfill_before": None,  # the sandbox's traffic spans days: none is history here
                "sources": [
                    {
                        "name": "social",
                        "type": "mastodon",
                        "base_url": str(server.make_url("/mastodon")),
                        "access_token": sandbox.credentials.mastodon_token,
                    }
                ],
            }
        )
        standin = sandbox.mastodon
        mentions: list[InboundMessage] = []
        while len(mentions) < 30:
            mentions += [m for m in sandbox.release(10, "mastodon") if standin.is_mention(m)]
        for i, m in enumerate(mentions):
            m.raw["visibility"] = "private" if i % 2 else "public"
            standin.following.add(str(m.author.user_id))  # never filtered by the policy
        pipeline = Pipeline(config, store, rules=RuleSet.load(config.rule_paths()), scorer=scorer)
        source = make_source(config.sources[0], 0)
        try:
            batch = await source.connector.fetch(None)
            await pipeline.ingest(batch, "social")
            async with store.reader() as s:
                drafts = list(
                    (await s.execute(sa.select(Reply, Message).join(Message))).all()  # type: ignore[arg-type]
                )
            by_visibility = {msg.raw["visibility"]: reply for reply, msg in drafts}
            assert set(by_visibility) == {"private", "public"}
            commands = Commands(config, store)
            sender = Sender(store, {"social": source.connector})
            for visibility, reply in by_visibility.items():
                await commands.run(APPROVER, f"approve {reply.id}")
                assert await sender.send_one(int(reply.id or 0))
                sent = await only_sent(store, int(reply.id or 0))
                assert standin.posted[sent]["visibility"] == visibility
        finally:
            await source.http.close()


async def only_sent(store: Store, reply_id: int) -> str:
    async with store.reader() as s:
        reply = await s.get(Reply, reply_id)
        assert reply is not None and reply.status == "sent" and reply.external_id
        return reply.external_id


async def test_a_draft_that_cannot_reach_its_reader_needs_an_edit(
    pipeline: Pipeline, config: Config, store: Store
) -> None:
    """A direct mention whose author's account is unknown: a direct reply would reach nobody."""
    nameless = InboundMessage(
        channel="mastodon",
        external_id="5",
        text="@acme my order is late, terrible",
        author=Author(user_id="5"),
        raw={"id": "5", "visibility": "direct"},
    )
    await pipeline.ingest(Batch(messages=[nameless]), "social")
    reply = await only_reply(store)
    assert reply.issues is not None and any(i["blocking"] for i in reply.issues)
    assert reply.last_error is not None and "must mention" in reply.last_error
    commands = Commands(config, store)
    shown = await commands.run(APPROVER, f"show {reply.id}")
    assert "Needs an edit: a direct reply must mention the person it answers" in shown
    with pytest.raises(CommandError, match="cannot be approved: a direct reply must mention"):
        await commands.run(APPROVER, f"approve {reply.id}")
