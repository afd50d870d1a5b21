"""The X connector against a stand-in held to X API v2's documented behaviour and its OpenAPI file.

Every exchange of these tests (the connector's requests and the stand-in's answers) is checked
against the vendored spec (tests/specs/x) at the end of each test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from connectors.x import MAX_POST_WEIGHT, XConnector
from connectors.x import _message as x_message
from socialcrm import responder
from socialcrm.config import Config
from socialcrm.connector import (
    AuthError,
    Author,
    ForbiddenError,
    InboundMessage,
    MemoryTokens,
    OutboundReply,
    RetryableError,
    TokenSet,
)
from socialcrm.db import Store
from socialcrm.models import Alert, Message, Reply, SourceToken, Ticket
from socialcrm.pipeline import Pipeline
from socialcrm.sandbox.server import Sandbox, make_app
from socialcrm.sandbox.x import (
    BRAND_USER_ID,
    MENTIONS_CAP,
    SEARCH_WINDOW_S,
    USER_TOKEN_TTL_S,
    X_CLIENT_ID,
    X_CLIENT_SECRET,
    X_REFRESH_TOKEN,
    query_matcher,
)
from socialcrm.sender import Sender
from socialcrm.sources import Poller, Source, make_source
from socialcrm.tokens import SourceTokens
from socialcrm.xtext import post_weight
from tests.connector_suite import drain, ids
from tests.x_spec import Exchange, XSpec, record_x

QUERY = "acme"
SPEC = XSpec()


class Clock:
    """A fake clock in epoch seconds."""

    def __init__(self, now: float = 1_780_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


class X:
    """A sandbox on a fake clock, served, with every X exchange recorded."""

    def __init__(self, sandbox: Sandbox, server: TestServer, clock: Clock) -> None:
        self.sandbox = sandbox
        self.server = server
        self.clock = clock
        self.exchanges: list[Exchange] = []
        self.sessions: list[aiohttp.ClientSession] = []

    def connector(self, tokens: Any = None, **changes: Any) -> XConnector:
        creds = self.sandbox.credentials
        settings: dict[str, Any] = {
            "bearer_token": creds.x_bearer_token,
            "user_id": BRAND_USER_ID,
            "search_query": QUERY,
            "max_results": 100,
            "max_pages": 50,
            "base_url": str(self.server.make_url("/x")),
            "user_access_token": creds.x_user_token,
            "client_id": X_CLIENT_ID,
            "client_secret": X_CLIENT_SECRET,
            "refresh_token": X_REFRESH_TOKEN,
        }
        settings.update(changes)
        config = XConnector.Config.model_validate(settings)
        session = aiohttp.ClientSession(middlewares=XConnector.session_middlewares(config))
        self.sessions.append(session)
        return XConnector(config, session, tokens=tokens, clock=self.now)

    def now(self) -> datetime:
        """The fake clock's time, as the connector reads it."""
        return datetime.fromtimestamp(self.clock(), UTC)

    def mention(self) -> InboundMessage:
        """Release X posts until one names @acme; return it."""
        while True:
            [post] = self.sandbox.release(1, "x")
            if self.sandbox.x.is_mention(post):
                return post

    def unsummoned(self) -> InboundMessage:
        """Release X posts until one matches the search but does not name @acme."""
        wanted = query_matcher(QUERY)
        while True:
            [post] = self.sandbox.release(1, "x")
            if wanted(post) and not self.sandbox.x.is_mention(post):
                return post


@pytest.fixture
async def x(request: pytest.FixtureRequest) -> AsyncIterator[X]:
    messages = getattr(request, "param", 3000)
    clock = Clock()
    sandbox = Sandbox(7, messages=messages, clock=clock)
    app = make_app(sandbox)
    harness_exchanges: list[Exchange] = []
    record_x(app, harness_exchanges)
    async with TestServer(app, host="127.0.0.1") as server:
        harness = X(sandbox, server, clock)
        harness.exchanges = harness_exchanges
        try:
            yield harness
        finally:
            for session in harness.sessions:
                await session.close()
    # Every request the connector made and every answer the stand-in gave follow the spec.
    assert harness_exchanges
    for exchange in harness_exchanges:
        SPEC.check(exchange)


def reply_to(post: InboundMessage, text: str = "Sorry! We sent you a DM.") -> OutboundReply:
    return OutboundReply(
        reply_id=1, channel="x", text=text, in_reply_to=post.external_id, original=post.raw
    )


# -- the spec checker ---------------------------------------------------------------------------


def exchange(**changes: Any) -> Exchange:
    base = Exchange(
        method="GET",
        path="/2/tweets/search/recent",
        query=[("query", "acme"), ("max_results", "10"), ("tweet.fields", "author_id")],
        content_type="",
        body=b"",
        status=200,
        answer_type="application/json",
        answer=json.dumps(
            {
                "data": [{"id": "1", "text": "hi", "edit_history_tweet_ids": ["1"]}],
                "meta": {"result_count": 1, "newest_id": "1", "oldest_id": "1"},
            }
        ).encode(),
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_the_spec_checker_catches_a_wrong_field_name() -> None:
    SPEC.check(exchange())  # the shape X documents passes
    misspelt = b'{"data": [{"idd": "1", "text": "hi"}], "meta": {"result_count": 1}}'
    with pytest.raises(Exception, match="idd"):
        SPEC.check_answer(exchange(answer=misspelt))
    with pytest.raises(ValueError, match="tweet_fields"):
        SPEC.check_request(exchange(query=[("query", "acme"), ("tweet_fields", "author_id")]))
    with pytest.raises(Exception, match="max_results"):
        SPEC.check_request(exchange(query=[("query", "acme"), ("max_results", "200")]))
    body = b'{"text": "hi", "reply": {"in_reply_to_id": "1"}}'
    with pytest.raises(Exception, match="in_reply_to"):
        SPEC.check_request(
            exchange(
                method="POST",
                path="/2/tweets",
                query=[],
                content_type="application/json",
                body=body,
            )
        )


# -- 1. user tokens expire; the refresh grant rotates the refresh token -------------------------


async def test_an_expired_user_token_is_refreshed_and_the_rotated_token_kept(x: X) -> None:
    tokens = MemoryTokens()
    connector = x.connector(tokens)
    await connector.send(reply_to(x.mention()))
    x.clock.tick(USER_TOKEN_TTL_S + 1)
    await connector.send(reply_to(x.mention(), "Second"))  # 401, refresh, sent
    assert x.sandbox.x.refreshes == 1 and len(x.sandbox.replies) == 2
    saved = await tokens.load()
    assert saved is not None and saved.refresh_token is not None
    rotated = saved.refresh_token.get_secret_value()
    assert rotated != X_REFRESH_TOKEN and X_REFRESH_TOKEN not in x.sandbox.x.refresh_tokens
    assert rotated not in repr(saved) and rotated not in str(saved)
    # A restart reads the store: the configured refresh token is dead, the stored one works.
    x.clock.tick(USER_TOKEN_TTL_S + 1)
    await x.connector(tokens).send(reply_to(x.mention(), "Third"))
    assert x.sandbox.x.refreshes == 2 and len(x.sandbox.replies) == 3


async def test_a_user_token_is_renewed_before_it_expires_so_no_reply_is_refused(x: X) -> None:
    tokens = MemoryTokens()
    connector = x.connector(tokens)
    x.clock.tick(USER_TOKEN_TTL_S + 1)
    await connector.send(reply_to(x.mention()))  # the configured token: expiry unknown, a 401
    assert x.sandbox.x.refreshes == 1
    saved = await tokens.load()
    assert saved is not None and saved.expires_at == x.now() + timedelta(seconds=USER_TOKEN_TTL_S)
    refused = sum(1 for e in x.exchanges if e.status == 401)
    for n in range(1, 7):  # twelve hours, a reply every two hours less a minute
        x.clock.tick(USER_TOKEN_TTL_S - 60)
        await connector.send(reply_to(x.mention(), f"Reply {n}"))
        assert x.sandbox.x.refreshes == 1 + n, "renewed ahead of its expiry"
    assert sum(1 for e in x.exchanges if e.status == 401) == refused, "no call was refused"
    assert len(x.sandbox.replies) == 7
    # A restart takes the stored pair with its expiry and renews it ahead too.
    x.clock.tick(USER_TOKEN_TTL_S - 60)
    await x.connector(tokens).send(reply_to(x.mention(), "After a restart"))
    assert x.sandbox.x.refreshes == 8
    assert sum(1 for e in x.exchanges if e.status == 401) == refused


async def test_two_daemons_on_one_store_renew_without_a_false_alarm(x: X) -> None:
    tokens = MemoryTokens()  # stands for the shared store's sourcetoken row
    first, second = x.connector(tokens), x.connector(tokens)
    x.clock.tick(USER_TOKEN_TTL_S + 1)
    targets = [x.mention(), x.mention()]
    await asyncio.gather(
        first.send(reply_to(targets[0], "One")), second.send(reply_to(targets[1], "Two"))
    )
    assert len(x.sandbox.replies) == 2
    saved = await tokens.load()
    assert saved is not None and saved.refresh_token is not None
    assert saved.refresh_token.get_secret_value() in x.sandbox.x.refresh_tokens


async def test_a_refused_refresh_is_one_auth_error(x: X) -> None:
    connector = x.connector()
    x.clock.tick(USER_TOKEN_TTL_S + 1)
    x.sandbox.x.revoke_refresh_tokens()
    with pytest.raises(AuthError, match="refused to renew") as caught:
        await connector.send(reply_to(x.mention()))
    assert X_REFRESH_TOKEN not in str(caught.value)
    assert x.sandbox.replies == []


async def test_five_hours_of_replies_cross_two_expiries_and_all_go_out(x: X) -> None:
    """Every 10 minutes for 5 hours (a fake clock), one approved reply: every one is sent."""
    connector = x.connector()
    for n in range(30):
        await connector.send(reply_to(x.mention(), f"Reply {n}"))
        x.clock.tick(600)
    assert len(x.sandbox.replies) == 30
    assert x.sandbox.x.refreshes == 2


async def test_the_store_keeps_tokens_for_the_next_start(store: Store) -> None:
    tokens = SourceTokens(store, "x-acme")
    assert await tokens.load() is None
    await tokens.save(TokenSet(access_token=SecretStr("a1"), refresh_token=SecretStr("r1")))
    await tokens.save(TokenSet(access_token=SecretStr("a2"), refresh_token=SecretStr("r2")))
    again = await SourceTokens(store, "x-acme").load()
    assert again is not None and again.refresh_token is not None
    assert again.refresh_token.get_secret_value() == "r2"
    async with store.reader() as s:
        row = await s.get(SourceToken, "x-acme")
    assert row is not None and "r2" not in repr(row) and "a2" not in repr(row)


def x_source(x: X, store: Store) -> Source:
    """The X source as the daemon builds it: settings from config, tokens in the store."""
    creds = x.sandbox.credentials
    config = Config.model_validate(
        {
            "sources": [
                {
                    "name": "x-acme",
                    "type": "x",
                    "bearer_token": creds.x_bearer_token,
                    "user_id": BRAND_USER_ID,
                    "base_url": str(x.server.make_url("/x")),
                    "user_access_token": creds.x_user_token,
                    "client_id": X_CLIENT_ID,
                    "client_secret": X_CLIENT_SECRET,
                    "refresh_token": X_REFRESH_TOKEN,
                }
            ]
        }
    )
    return make_source(config.sources[0], 0, SourceTokens(store, "x-acme"))


async def approve_drafts(store: Store) -> int:
    async with store.session() as s:
        drafts = (await s.execute(sa.select(Reply.id).where(Reply.status == "draft"))).scalars()
        ids_ = list(drafts)
        for rid in ids_:
            # Staff make each answer their own: X refuses a post it has seen word for word.
            r = await s.get(Reply, rid)
            assert r is not None
            await responder.edit(s, rid, f"{r.draft_text} (case {rid})", "dana", "slack")
    return len(ids_)


async def test_every_approved_reply_goes_out_across_token_expiries(
    x: X, pipeline: Pipeline, store: Store
) -> None:
    """A run of five hours on a fake clock (user tokens expire every two): mentions come in,
    drafts are approved every ten minutes, and the sender sends every one."""
    src = x_source(x, store)
    sender = Sender(store, {"x-acme": src.connector})
    cursor = None
    approved = 0
    try:
        for _ in range(30):
            x.mention()
            batch = await src.connector.fetch(cursor)
            cursor = batch.cursor
            await pipeline.ingest(batch, "x-acme")
            approved += await approve_drafts(store)
            await sender.send_due()
            x.clock.tick(600)
    finally:
        await src.http.close()
    async with store.reader() as s:
        statuses = list((await s.execute(sa.select(Reply.status))).scalars())
        row = await s.get(SourceToken, "x-acme")
    assert approved >= 10
    assert statuses.count("sent") == approved, statuses
    assert len(x.sandbox.replies) == approved
    assert x.sandbox.x.refreshes == 2
    # The rotated refresh token is in the store, and it is the live one.
    assert row is not None and row.refresh_token in x.sandbox.x.refresh_tokens


async def test_a_refused_renewal_raises_one_source_auth_alert(
    x: X, pipeline: Pipeline, store: Store
) -> None:
    src = x_source(x, store)
    sender = Sender(store, {"x-acme": src.connector})
    try:
        for _ in range(3):
            x.mention()
        batch = await src.connector.fetch(None)
        await pipeline.ingest(batch, "x-acme")
        x.clock.tick(USER_TOKEN_TTL_S + 1)
        x.sandbox.x.revoke_refresh_tokens()
        assert await approve_drafts(store) >= 2
        await sender.send_due()
    finally:
        await src.http.close()
    async with store.reader() as s:
        kinds = list((await s.execute(sa.select(Alert.kind))).scalars())
        failed = list((await s.execute(sa.select(Reply.last_error))).scalars())
    assert kinds.count("source_auth") == 1
    assert all("refused to renew" in (e or "") for e in failed)


# -- 2. recent search refuses a since_id older than seven days ----------------------------------


async def test_a_since_id_older_than_seven_days_does_not_stop_the_source(x: X) -> None:
    x.sandbox.release(60, "x")
    connector = x.connector()
    _, first = await drain(connector, None)
    x.clock.tick(SEARCH_WINDOW_S + 86400)  # eight quiet days
    later = [x.mention() for _ in range(3)]
    messages, batch = await drain(connector, first.cursor)
    assert not batch.stream_errors
    assert {m.external_id for m in later} <= set(ids(messages))
    assert batch.cursor is not None
    assert batch.cursor["search"]["since_id"] != first.cursor["search"]["since_id"]  # type: ignore[index]
    refused = [e for e in x.exchanges if e.status == 400]
    assert len(refused) == 1 and b"since_id" in refused[0].answer


@pytest.mark.parametrize("x", [10_500], indirect=True)
async def test_a_ten_day_outage_loses_nothing_the_platform_still_serves(x: X) -> None:
    x.sandbox.release(40, "x")
    _, first = await drain(x.connector(), None)
    cut = x.sandbox.released_count("x")
    x.clock.tick(10 * 86400)
    x.sandbox.release_all()
    messages, batch = await drain(x.connector(), first.cursor)  # the restart
    assert not batch.stream_errors
    now = x.sandbox.x.now()
    after = x.sandbox.messages["x"][cut:]
    mentions = [m for m in after if x.sandbox.x.is_mention(m)][-MENTIONS_CAP:]
    wanted = query_matcher(QUERY)
    recent = [m for m in after if wanted(m) and m.created_at.timestamp() >= now - SEARCH_WINDOW_S]
    assert recent, "the traffic reaches into the search window"
    expected = {m.external_id for m in mentions + recent}
    got = ids(messages)
    assert len(got) == len(set(got))
    assert set(got) == expected


async def test_a_walk_half_done_before_an_outage_resumes_at_the_window(x: X) -> None:
    x.sandbox.release(400, "x")
    first = await x.connector(max_results=10, max_pages=1).fetch(None)
    assert first.more and first.cursor is not None and first.cursor["search"].get("until_id")
    x.clock.tick(SEARCH_WINDOW_S + 3600)
    fresh = [x.mention() for _ in range(2)]
    connector = x.connector()
    messages, batch = await drain(connector, first.cursor)
    assert not batch.stream_errors
    assert batch.cursor is not None and set(batch.cursor["search"]) == {"since_id"}
    latest, _ = await drain(connector, batch.cursor)  # what came during the walk: next poll
    got = ids(first.messages) + ids(messages) + ids(latest)
    assert {m.external_id for m in fresh} <= set(got)
    assert len(got) == len(set(got))


async def test_search_keeps_to_its_seven_days_and_its_time_bounds(x: X) -> None:
    x.sandbox.release(300, "x")
    async with aiohttp.ClientSession() as http:
        url = str(x.server.make_url("/x/2/tweets/search/recent"))
        auth = {"Authorization": f"Bearer {x.sandbox.credentials.x_bearer_token}"}
        now = datetime.fromtimestamp(x.sandbox.x.now(), UTC)
        old = (now.replace(microsecond=0) - timedelta(days=8)).isoformat().replace("+00:00", "Z")
        async with http.get(url, params={"query": QUERY, "start_time": old}, headers=auth) as r:
            assert r.status == 400
            assert "'start_time' must be on or after" in (await r.json())["errors"][0]["message"]
        posts = [m for m in x.sandbox.released("x") if query_matcher(QUERY)(m)]
        middle = posts[len(posts) // 2].created_at.isoformat().replace("+00:00", "Z")
        params = {"query": QUERY, "end_time": middle, "max_results": "100"}
        async with http.get(url, params=params, headers=auth) as r:
            data = (await r.json())["data"]
        assert {d["id"] for d in data} == {m.external_id for m in posts[: len(posts) // 2]}


# -- 3. self-serve tiers refuse replies the author did not summon -------------------------------


async def test_a_reply_to_an_unsummoned_post_fails_with_xs_reason(x: X) -> None:
    connector = x.connector()
    with pytest.raises(ForbiddenError, match="did not mention or quote the brand"):
        await connector.send(reply_to(x.unsummoned()))
    assert x.sandbox.replies == []
    await connector.send(reply_to(x.mention()))  # a mention may be answered
    assert len(x.sandbox.replies) == 1


async def test_check_reply_warns_for_search_results_and_blocks_long_text(x: X) -> None:
    connector = x.connector()
    x.unsummoned()
    x.mention()
    messages, _ = await drain(connector, None)
    config = connector.config
    for message in messages:
        issues = XConnector.check_reply(config, reply_to(message))
        assert [i.blocking for i in issues] == ([] if message.direct else [False]), message.text
        if not message.direct:
            assert "did not mention @brand" in issues[0].reason
    mention = next(m for m in messages if m.direct)
    long = XConnector.check_reply(config, reply_to(mention, "a" * (MAX_POST_WEIGHT + 1)))
    assert [i.blocking for i in long] == [True]
    # Links count 23 whatever their length; CJK counts 2.
    assert not XConnector.check_reply(config, reply_to(mention, "https://x.co/" + "a" * 300))
    assert XConnector.check_reply(config, reply_to(mention, "漢" * 141))[0].blocking


# -- 9. the usage cap is not a 15-minute rate limit ---------------------------------------------


async def test_a_usage_cap_waits_for_hours_not_the_rate_window(x: X) -> None:
    x.sandbox.release(20, "x")
    connector = x.connector()
    x.sandbox.x.usage_capped = "Monthly"
    with pytest.raises(RetryableError, match="usage cap") as caught:
        await connector.fetch(None)
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 3600
    with pytest.raises(RetryableError, match="usage cap") as sent:
        await connector.send(reply_to(x.mention()))
    assert sent.value.not_sent and (sent.value.retry_after_s or 0) >= 3600
    x.sandbox.x.usage_capped = None
    messages, _ = await drain(connector, None)
    assert messages


async def test_a_usage_capped_source_rests_for_hours_and_alerts_once(
    x: X, pipeline: Pipeline, store: Store
) -> None:
    src = x_source(x, store)
    mono = [1000.0]
    poller = Poller(
        store,
        pipeline,
        clock=lambda: mono[0],
        wall_clock=lambda: datetime.fromtimestamp(x.clock(), UTC),
    )
    poller.add(src)
    x.sandbox.release(20, "x")
    x.sandbox.x.usage_capped = "Monthly"
    try:
        for _ in range(4):
            out = await poller.poll("x-acme")
            assert out.error is not None and "usage cap" in out.error
            wait = src.not_before - mono[0]
            assert wait >= 3600, wait  # not the 15-minute rate window
            assert (await poller.poll("x-acme")).skipped  # resting, no request made
            mono[0] += wait
            x.clock.tick(wait)
        x.sandbox.x.usage_capped = None
        assert (await poller.poll("x-acme")).error is None
    finally:
        await src.http.close()
    async with store.reader() as s:
        kinds = list((await s.execute(sa.select(Alert.kind))).scalars())
    assert kinds.count("source_failing") == 1


# -- 10. an edit is the same message ------------------------------------------------------------


async def test_an_edit_keeps_the_originals_id_and_the_latest_text(x: X) -> None:
    post = x.mention()
    connector = x.connector()
    first, batch = await drain(connector, None)
    assert post.external_id in ids(first)
    edited = x.sandbox.x.edit(post.external_id, post.text + " (edited: order #123)")
    later, _ = await drain(connector, batch.cursor)
    [again] = [m for m in later if m.external_id == post.external_id]
    assert again.edited and again.text == edited.text
    assert again.raw["id"] == edited.external_id
    # Both versions in one fetch: one message, the latest text.
    both, _ = await drain(x.connector(), None)
    versions = [m for m in both if m.external_id == post.external_id]
    assert len(versions) == 1 and versions[0].text == edited.text


async def test_text_arrives_as_written_though_x_sends_html_entities(x: X) -> None:
    post = x.mention()
    written = "@acme Q&A: is a <3 hour> wait fair?? I typed &amp; myself & it's gone"
    x.sandbox.x.edit(post.external_id, written)
    got, _ = await drain(x.connector(), None)
    [message] = [m for m in got if m.external_id == post.external_id]
    assert message.text == written
    # On the wire it was escaped, as X escapes it; what the author typed as "&amp;" too.
    wire = b"".join(e.answer for e in x.exchanges)
    assert b"Q&amp;A: is a &lt;3 hour&gt; wait fair?? I typed &amp;amp; myself &amp; it" in wire


async def test_a_long_post_arrives_whole_though_x_cuts_its_text(x: X) -> None:
    post = x.mention()
    story = " ".join(f"day {i}: still no refund for order 1234." for i in range(1, 30))
    written = f"{story} Fix it @acme"
    edited = x.sandbox.x.edit(post.external_id, written)
    # Asked for the default fields, X sends the first 270 characters, cut at a word.
    shown = x.sandbox.x.tweet(edited, set())["text"]
    assert len(shown) <= 270 and written.startswith(shown) and "@acme" not in shown
    connector = x.connector()
    got, _ = await drain(connector, None)
    [message] = [m for m in got if m.external_id == post.external_id]
    assert message.text == written
    # The brand is named only past the cut: the reply check finds it in note_tweet.
    assert not XConnector.check_reply(connector.config, reply_to(message))


async def test_long_posts_are_cut_by_weight_and_a_blank_note_is_not_the_text(x: X) -> None:
    post = x.mention()
    # 150 CJK characters weigh 300: a long post, cut within 270 of weight.
    edited = x.sandbox.x.edit(post.external_id, "@acme " + "漢" * 150)
    out = x.sandbox.x.tweet(edited, {"note_tweet"})
    assert post_weight(out["text"]) <= 270 and out["note_tweet"]["text"] == edited.text
    item = {**out, "id": post.external_id, "note_tweet": {"text": "  "}}
    assert x_message(item, {}, direct=True).text == out["text"]
    got, _ = await drain(x.connector(), None)
    assert [m.text for m in got if m.external_id == post.external_id] == [edited.text]


async def test_retweets_are_not_messages_though_the_mentions_timeline_holds_them(x: X) -> None:
    post = x.mention()
    fan = Author(user_id="4242", handle="fan_of_acme", name="Fan")
    # A retweet of a customer's complaint: the original, cut short, under someone else's name.
    rt = x.sandbox.x.retweet(post.external_id, fan)
    # A retweet of our own reply: "RT @acme: ..." names us, so the mentions timeline has it.
    receipt = await x.connector().send(reply_to(post, "Sorry to hear that! We sent you a DM."))
    ours = x.sandbox.x.retweet(receipt.external_id, fan)
    assert rt.text.startswith(f"RT @{post.author.handle}: ") and len(rt.text) <= 140
    assert x.sandbox.x.is_mention(ours) and ours.text.startswith("RT @acme: Sorry")
    got, _ = await drain(x.connector(), None)
    assert post.external_id in ids(got)
    assert not {rt.external_id, ours.external_id} & set(ids(got))
    # They were served as X serves them, retweet and all.
    wire = b"".join(e.answer for e in x.exchanges)
    assert ours.external_id.encode() in wire and b'"type":"retweeted"' in wire.replace(b" ", b"")


async def test_an_edit_updates_the_stored_message_and_opens_nothing(
    x: X, pipeline: Pipeline, store: Store
) -> None:
    post = x.mention()
    connector = x.connector()
    _, batch = await drain(connector, None)
    await pipeline.ingest(batch, "x-acme")
    x.sandbox.x.edit(post.external_id, "@acme never mind, it works now")
    _, again = await drain(connector, batch.cursor)
    await pipeline.ingest(again, "x-acme")
    async with store.reader() as s:
        stored = (await s.execute(sa.select(Message).where(Message.channel == "x"))).scalars()
        texts = {m.external_id: m.text for m in stored}
        tickets = (await s.execute(sa.select(sa.func.count()).select_from(Ticket))).scalar()
        drafts = (await s.execute(sa.select(sa.func.count()).select_from(Reply))).scalar()
    assert texts[post.external_id] == "@acme never mind, it works now"
    assert len(texts) == len({m.external_id for m in batch.messages})
    assert (tickets or 0) <= len(texts) and (drafts or 0) <= len(texts)
