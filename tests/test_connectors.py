"""The X, Mastodon and Reddit connectors against the sandbox's stand-ins, over real HTTP.

Each runs the shared conformance suite (tests/connector_suite.py) through a harness; X goes
through tweepy and the base-URL middleware, the others through plain aiohttp. The tests below
the suite check what is particular to each platform.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from connectors.mastodon import MastodonConnector, html_to_text
from connectors.reddit import RedditConnector
from connectors.x import XConnector, base_url_middleware
from socialcrm.connector import (
    AuthError,
    Connector,
    ConnectorError,
    FatalError,
    ForbiddenError,
    InboundMessage,
    OutboundReply,
    RetryableError,
    retry_after_s,
)
from socialcrm.sandbox.faults import Faults
from socialcrm.sandbox.mastodon import tags_of
from socialcrm.sandbox.reddit import search_matcher
from socialcrm.sandbox.server import Platform, Sandbox, make_app
from socialcrm.sandbox.x import BRAND_USER_ID, query_matcher
from tests.connector_suite import (
    BadItemSuite,
    ConnectorHarness,
    ConnectorSuite,
    FailureSuite,
    RateLimitSuite,
    ReplySuite,
    drain,
    ids,
)
from tests.mastodon_spec import MastodonSpec
from tests.x_spec import Exchange, XSpec, record_x

X_SPEC = XSpec()
SEED = 11
MESSAGES = 700
#: Client timeout in the tests: a healthy request on a loaded CI machine never comes near it
#: (a reply sent to the Mastodon stand-in once took more than 1 s there).
CLIENT_TIMEOUT_S = 3.0
#: The sandbox's "timeout" fault answers later than the client waits.
TIMEOUT_DELAY_S = CLIENT_TIMEOUT_S + 1.0
QUERY = "acme"


class SandboxHarness:
    """A harness for one platform of a sandbox served by a TestServer."""

    platform: ClassVar[Platform]
    #: Path (inside the platform) whose next request a forced fault hits.
    path_prefix: ClassVar[str | None] = None
    page_size = 5
    faults = frozenset(
        {"rate_limit", "server_error", "timeout", "truncated", "html", "bad_envelope", "bad_item"}
    )

    def __init__(self, sandbox: Sandbox, server: TestServer) -> None:
        self.sandbox = sandbox
        self.server = server
        self._sessions: list[aiohttp.ClientSession] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, sandbox: Sandbox | None = None) -> AsyncIterator[Any]:
        """Serve a sandbox and yield a harness on it; close every session and the server."""
        sandbox = sandbox or Sandbox(
            SEED, messages=MESSAGES, faults=Faults(timeout_delay_s=TIMEOUT_DELAY_S)
        )
        async with TestServer(make_app(sandbox), host="127.0.0.1") as server:
            harness = cls(sandbox, server)
            try:
                yield harness
            finally:
                for session in harness._sessions:
                    await session.close()

    def base_url(self) -> str:
        """The platform's base URL on the test server."""
        return str(self.server.make_url(f"/{self.platform}"))

    def session(self, middlewares: Any = ()) -> aiohttp.ClientSession:
        """A session like the core's (closed with the harness)."""
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S), middlewares=tuple(middlewares)
        )
        self._sessions.append(session)
        return session

    def visible(self, message: InboundMessage) -> bool:
        """Whether the connector, as configured, sees this message."""
        raise NotImplementedError

    def connector(self, *, valid_credentials: bool = True) -> Connector:
        raise NotImplementedError

    async def publish(self, count: int) -> list[str]:
        """Release this platform's messages until ``count`` the connector can see are out."""
        out: list[str] = []
        while len(out) < count:
            released = self.sandbox.release(1, self.platform)
            assert released, "the sandbox ran out of messages"
            if self.visible(released[0]):
                out.append(released[0].external_id)
        return out

    def inject(self, fault: str) -> None:
        self.sandbox.inject(self.platform, fault, path_prefix=self.path_prefix)

    def rate_limit_wait_s(self) -> float | None:
        event = self.sandbox.faults.last(self.platform, "rate_limit")
        return None if event is None else retry_after_s(event.headers)

    def replies(self) -> list[tuple[str, str]] | None:
        return [
            (r.in_reply_to or "", r.text)
            for r in self.sandbox.replies
            if r.platform == self.platform
        ]


class XHarness(SandboxHarness):
    platform: ClassVar[Platform] = "x"

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, sandbox: Sandbox | None = None) -> AsyncIterator[Any]:
        """Serve a sandbox; at the end, every X exchange the stand-in did not break on purpose
        must follow X's OpenAPI description (tests/specs/x)."""
        sandbox = sandbox or Sandbox(
            SEED, messages=MESSAGES, faults=Faults(timeout_delay_s=TIMEOUT_DELAY_S)
        )
        app = make_app(sandbox)
        exchanges: list[Exchange] = []
        record_x(app, exchanges, sandbox.faults)
        async with TestServer(app, host="127.0.0.1") as server:
            harness = cls(sandbox, server)
            try:
                yield harness
            finally:
                for session in harness._sessions:
                    await session.close()
        for exchange in exchanges:
            X_SPEC.check(exchange)

    def visible(self, message: InboundMessage) -> bool:
        return self.sandbox.x.is_mention(message) or query_matcher(QUERY)(message)

    def config(self, **changes: Any) -> XConnector.Config:
        creds = self.sandbox.credentials
        settings: dict[str, Any] = {
            "bearer_token": creds.x_bearer_token,
            "user_id": BRAND_USER_ID,
            "search_query": QUERY,
            "max_results": self.page_size,
            "max_pages": 2,
            "base_url": self.base_url(),
            "user_access_token": creds.x_user_token,
        }
        settings.update(changes)
        return XConnector.Config.model_validate(settings)

    def connector(self, *, valid_credentials: bool = True, **changes: Any) -> XConnector:
        if not valid_credentials:
            changes["bearer_token"] = "revoked-token"
        config = self.config(**changes)
        return XConnector(config, self.session(XConnector.session_middlewares(config)))


class MastodonHarness(SandboxHarness):
    platform: ClassVar[Platform] = "mastodon"

    spec: MastodonSpec | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, sandbox: Sandbox | None = None) -> AsyncIterator[Any]:
        """Serve a sandbox whose Mastodon traffic is checked against the documented shapes
        (tests/specs/mastodon/): every request the connector makes, every answer it gets."""
        sandbox = sandbox or Sandbox(
            SEED, messages=MESSAGES, faults=Faults(timeout_delay_s=TIMEOUT_DELAY_S)
        )
        spec = MastodonSpec(sandbox)
        async with TestServer(spec.install(make_app(sandbox)), host="127.0.0.1") as server:
            harness = cls(sandbox, server)
            harness.spec = spec
            try:
                yield harness
            finally:
                for session in harness._sessions:
                    await session.close()
        assert spec.violations == [], spec.violations[:5]

    def visible(self, message: InboundMessage) -> bool:
        # Hashtag timelines and search show only public statuses (TagFeed, StatusesIndex).
        public = message.raw.get("visibility", "public") == "public"
        return self.sandbox.mastodon.is_mention(message) or (
            public and QUERY in tags_of(message.text)
        )

    def connector(self, *, valid_credentials: bool = True, **changes: Any) -> MastodonConnector:
        settings: dict[str, Any] = {
            "base_url": self.base_url(),
            "access_token": self.sandbox.credentials.mastodon_token
            if valid_credentials
            else "revoked-token",
            "hashtags": [QUERY],
            "limit": self.page_size,
            "max_pages": 2,
            "timeout_s": CLIENT_TIMEOUT_S,
        }
        settings.update(changes)
        return MastodonConnector(MastodonConnector.Config.model_validate(settings), self.session())


class MastodonSearchHarness(MastodonHarness):
    """The same platform, read only through full-text search (``/api/v2/search``)."""

    def visible(self, message: InboundMessage) -> bool:
        return QUERY in message.text.lower() and message.raw.get("visibility") == "public"

    def connector(self, *, valid_credentials: bool = True, **changes: Any) -> MastodonConnector:
        return super().connector(
            valid_credentials=valid_credentials,
            **{"mentions": False, "hashtags": [], "search": [QUERY], **changes},
        )


class Clock:
    """A fake clock in epoch seconds."""

    def __init__(self, now: float = 1_780_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def reddit_sandbox(messages: int = MESSAGES, seed: int = SEED) -> Sandbox:
    """A sandbox on a fake clock, so that a test can wait out Reddit's search index lag."""
    return Sandbox(
        seed, messages=messages, faults=Faults(timeout_delay_s=TIMEOUT_DELAY_S), clock=Clock()
    )


class RedditHarness(SandboxHarness):
    platform: ClassVar[Platform] = "reddit"
    path_prefix: ClassVar[str | None] = "/search"

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, sandbox: Sandbox | None = None) -> AsyncIterator[Any]:
        """Serve a sandbox on a fake clock and yield a harness (a sandbox built on the real
        clock is moved to a fake one that starts now, before anything is released)."""
        sandbox = sandbox or reddit_sandbox()
        if not isinstance(sandbox.clock, Clock):
            assert not sandbox.released("reddit"), "build it with reddit_sandbox()"
            sandbox.clock = Clock(sandbox.clock())
        async with super().running(sandbox) as harness:
            yield harness

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass on the sandbox's clock."""
        clock = self.sandbox.clock
        assert isinstance(clock, Clock)
        clock.tick(seconds)

    async def publish(self, count: int) -> list[str]:
        """Release ``count`` messages the connector can see, then wait until Reddit's search
        index has taken them all in (it shows a post up to ``search_lag_s`` late)."""
        out = await super().publish(count)
        self.wait(self.sandbox.reddit.search_lag_s)
        return out

    def subreddits(self) -> list[str]:
        return sorted({str(m.raw["data"]["subreddit"]) for m in self.sandbox.messages["reddit"]})

    def visible(self, message: InboundMessage) -> bool:
        if message.external_id.startswith("t1_"):
            return QUERY in message.text.lower()
        return search_matcher(QUERY)(message)

    def connector(self, *, valid_credentials: bool = True, **changes: Any) -> RedditConnector:
        creds = self.sandbox.credentials
        settings: dict[str, Any] = {
            "client_id": creds.reddit_client_id,
            "client_secret": creds.reddit_client_secret if valid_credentials else "wrong",
            "username": creds.reddit_username,
            "password": creds.reddit_password,
            "user_agent": "test:socialcrm:0.1 (by /u/acme)",
            "auth_url": self.base_url(),
            "api_url": self.base_url(),
            "query": QUERY,
            "subreddits": self.subreddits(),
            "limit": self.page_size,
            "max_pages": 2,
            "timeout_s": CLIENT_TIMEOUT_S,
        }
        settings.update(changes)
        return RedditConnector(RedditConnector.Config.model_validate(settings), self.session())


class RedditSearchHarness(RedditHarness):
    """Reddit with one stream, the search: a fault on it fails the whole fetch, as the suite
    expects (with subreddits beside it, it would fail that stream alone)."""

    def visible(self, message: InboundMessage) -> bool:
        return search_matcher(QUERY)(message)

    def connector(self, *, valid_credentials: bool = True, **changes: Any) -> RedditConnector:
        return super().connector(
            valid_credentials=valid_credentials, **{"subreddits": [], **changes}
        )


# -- the conformance suite, three times ---------------------------------------------------------


class TestXConformance(ConnectorSuite, RateLimitSuite, FailureSuite, BadItemSuite, ReplySuite):
    faults = XHarness.faults

    @pytest.fixture
    async def harness(self) -> AsyncIterator[ConnectorHarness]:
        async with XHarness.running() as harness:
            yield harness


class TestMastodonConformance(
    ConnectorSuite, RateLimitSuite, FailureSuite, BadItemSuite, ReplySuite
):
    faults = MastodonHarness.faults

    @pytest.fixture
    async def harness(self) -> AsyncIterator[ConnectorHarness]:
        async with MastodonHarness.running() as harness:
            yield harness


class TestMastodonSearchConformance(
    ConnectorSuite, RateLimitSuite, FailureSuite, BadItemSuite, ReplySuite
):
    faults = MastodonSearchHarness.faults

    @pytest.fixture
    async def harness(self) -> AsyncIterator[ConnectorHarness]:
        async with MastodonSearchHarness.running() as harness:
            yield harness


class TestRedditConformance(ConnectorSuite, RateLimitSuite, FailureSuite, BadItemSuite, ReplySuite):
    faults = RedditHarness.faults

    @pytest.fixture
    async def harness(self) -> AsyncIterator[ConnectorHarness]:
        async with RedditSearchHarness.running() as harness:
            yield harness


@pytest.fixture
async def x() -> AsyncIterator[XHarness]:
    async with XHarness.running() as harness:
        yield harness


@pytest.fixture
async def mastodon() -> AsyncIterator[MastodonHarness]:
    async with MastodonHarness.running() as harness:
        yield harness


@pytest.fixture
async def reddit() -> AsyncIterator[RedditHarness]:
    async with RedditHarness.running() as harness:
        yield harness


def by_id(messages: list[InboundMessage]) -> dict[str, InboundMessage]:
    return {m.external_id: m for m in messages}


# -- X ------------------------------------------------------------------------------------------


async def test_base_url_middleware_moves_x_requests_and_nothing_else() -> None:
    seen: list[tuple[str, str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.path, request.rel_url.raw_query_string, request.headers["Host"]))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with TestServer(app, host="127.0.0.1") as server:
        base = str(server.make_url("/x"))
        middleware = base_url_middleware(base + "/")
        async with aiohttp.ClientSession(middlewares=(middleware,)) as http:
            async with http.get(
                "https://api.twitter.com/2/tweets/search/recent", params={"query": "a b#c"}
            ) as resp:
                assert resp.status == 200
            async with http.get(str(server.make_url("/other")), params={"q": "1"}) as resp:
                assert resp.status == 200
        host = f"127.0.0.1:{server.port}"
    assert seen == [
        ("/x/2/tweets/search/recent", "query=a+b%23c", host),
        ("/other", "q=1", host),
    ]


def test_the_default_base_url_needs_no_middleware() -> None:
    config = XConnector.Config(bearer_token="t", user_id="1")
    assert XConnector.session_middlewares(config) == []
    assert (
        len(XConnector.session_middlewares(config.model_copy(update={"base_url": "http://h/x"})))
        == 1
    )
    with pytest.raises(ValueError, match="user_id"):
        XConnector.Config(bearer_token="t")
    with pytest.raises(ValueError, match=r"OAuth 1\.0a"):
        XConnector.Config(bearer_token="t", user_id="1", consumer_key="k")


async def test_x_messages_carry_what_the_traffic_says(x: XHarness) -> None:
    published = await x.publish(40)
    messages, _ = await drain(x.connector(), None)
    got = by_id(messages)
    assert sorted(got) == sorted(published)
    for truth in x.sandbox.released("x"):
        if truth.external_id not in got:
            continue
        message = got[truth.external_id]
        assert message.text == truth.text
        assert message.author == truth.author
        assert message.created_at == truth.created_at
        assert message.lang == truth.lang
        assert message.in_reply_to == truth.in_reply_to
        assert message.conversation_id == truth.conversation_id
        assert message.url == truth.url
    assert any(m.in_reply_to for m in messages), "threads come through"
    assert any(m.direct for m in messages) and any(not m.direct for m in messages)


async def test_x_finds_the_brand_id_with_user_context(x: XHarness) -> None:
    published = await x.publish(3)
    connector = x.connector(user_id=None, search_query=None)
    messages, _ = await drain(connector, None)
    mentions = [i for i in published if x.sandbox.x.is_mention(x.sandbox.x._lookup(i))]
    assert sorted(ids(messages)) == sorted(mentions)


async def test_x_replies_need_user_context(x: XHarness) -> None:
    [target] = await x.publish(1)
    reply = OutboundReply(reply_id=1, channel="x", text="Hello", in_reply_to=target)
    with pytest.raises(AuthError, match="user context"):
        await x.connector(user_access_token=None).send(reply)
    # An app-only token where user context belongs: X says 403 (the token works, not here).
    with pytest.raises(ForbiddenError, match="Application-Only"):
        await x.connector(user_access_token=x.sandbox.credentials.x_bearer_token).send(reply)
    assert x.replies() == []


async def test_x_duplicate_reply_is_refused_not_an_auth_problem(x: XHarness) -> None:
    [target] = await x.publish(1)
    connector = x.connector()
    reply = OutboundReply(reply_id=1, channel="x", text="We're on it.", in_reply_to=target)
    await connector.send(reply)
    with pytest.raises(FatalError, match="duplicate"):
        await connector.send(reply)
    assert len(x.replies() or []) == 1


async def test_x_oauth1_user_context_can_reply(x: XHarness) -> None:
    [target] = await x.publish(1)
    creds = x.sandbox.credentials
    connector = x.connector(
        user_access_token=None,
        consumer_key=creds.x_consumer_key,
        consumer_secret="secret",
        access_token=creds.x_access_token,
        access_token_secret="secret",
    )
    receipt = await connector.send(
        OutboundReply(reply_id=1, channel="x", text="Thanks!", in_reply_to=target)
    )
    assert x.replies() == [(target, "Thanks!")]
    assert receipt.external_id == x.sandbox.replies[-1].external_id


async def test_x_half_done_walk_resumes_where_it_stopped(x: XHarness) -> None:
    published = await x.publish(x.page_size * 3)
    connector = x.connector(search_query=None, max_pages=1)
    first = await connector.fetch(None)
    assert first.more and first.cursor is not None
    assert first.cursor["mentions"]["until_id"]
    newer = await x.publish(2)
    rest, last = await drain(connector, first.cursor)
    assert last.cursor is not None and set(last.cursor["mentions"]) == {"since_id"}
    latest, _ = await drain(connector, last.cursor)  # what came during the walk: next poll
    got = ids(first.messages) + ids(rest) + ids(latest)
    mentions = {i for i in published + newer if x.sandbox.x.is_mention(x.sandbox.x._lookup(i))}
    assert len(got) == len(set(got))
    assert set(got) == mentions


# -- Mastodon -----------------------------------------------------------------------------------


async def test_mastodon_html_comes_back_as_the_text_written(mastodon: MastodonHarness) -> None:
    for message in mastodon.sandbox.messages["mastodon"]:
        assert html_to_text(mastodon.sandbox.mastodon.content(message.text)) == message.text


async def test_mastodon_messages_carry_what_the_traffic_says(mastodon: MastodonHarness) -> None:
    published = await mastodon.publish(30)
    messages, _ = await drain(mastodon.connector(), None)
    got = by_id(messages)
    assert sorted(got) == sorted(published)
    for truth in mastodon.sandbox.released("mastodon"):
        if truth.external_id not in got:
            continue
        message = got[truth.external_id]
        assert message.text == truth.text
        assert message.author == truth.author
        assert message.created_at == truth.created_at
        assert message.lang == truth.lang
        assert message.in_reply_to == truth.in_reply_to
        assert message.url == truth.url
        assert message.direct == mastodon.sandbox.mastodon.is_mention(truth)


async def test_mastodon_reply_starts_with_the_acct_once(mastodon: MastodonHarness) -> None:
    await mastodon.publish(1)
    [target] = mastodon.sandbox.released("mastodon")[-1:]
    connector = mastodon.connector()
    acct = target.author.handle
    assert acct is not None
    reply = OutboundReply(
        reply_id=7,
        channel="mastodon",
        text="So sorry!",
        in_reply_to=target.external_id,
        to_handle=acct,
    )
    first = await connector.send(reply)
    again = await connector.send(reply)  # a resend after a lost answer: same Idempotency-Key
    assert first.external_id == again.external_id
    assert mastodon.replies() == [(target.external_id, f"@{acct} So sorry!")]
    already = reply.model_copy(update={"reply_id": 8, "text": f"@{acct} Fixed now."})
    await connector.send(already)
    assert (mastodon.replies() or [])[-1] == (target.external_id, f"@{acct} Fixed now.")


async def test_mastodon_first_poll_reads_only_the_backfill(mastodon: MastodonHarness) -> None:
    published = await mastodon.publish(mastodon.page_size * 4)
    connector = mastodon.connector(hashtags=[], backfill_pages=2, max_pages=1)
    messages, last = await drain(connector, None)
    mentions = [
        i
        for i in published
        if mastodon.sandbox.mastodon.is_mention(mastodon.sandbox.mastodon._lookup(i))
    ]
    newest = sorted(mentions, key=lambda i: (len(i), i))[-mastodon.page_size * 2 :]
    assert sorted(ids(messages)) == sorted(newest)
    assert last.cursor is not None and "min_id" in last.cursor["notifications"]


async def test_mastodon_refused_reply_is_fatal(mastodon: MastodonHarness) -> None:
    reply = OutboundReply(reply_id=1, channel="mastodon", text="Hi", in_reply_to="12345")
    with pytest.raises(FatalError):
        await mastodon.connector().send(reply)


# -- Reddit -------------------------------------------------------------------------------------


async def test_reddit_messages_carry_what_the_traffic_says(reddit: RedditHarness) -> None:
    published = await reddit.publish(30)
    messages, _ = await drain(reddit.connector(), None)
    got = by_id(messages)
    assert sorted(got) == sorted(published)
    kinds = set()
    for truth in reddit.sandbox.released("reddit"):
        if truth.external_id not in got:
            continue
        message = got[truth.external_id]
        kinds.add(truth.external_id[:2])
        assert message.text == truth.text
        assert message.subject == truth.subject
        assert message.author == truth.author
        assert message.created_at == truth.created_at
        assert message.conversation_id == truth.conversation_id
        assert message.url == truth.url
        assert message.direct == truth.direct
        if truth.external_id.startswith("t1_"):
            assert message.in_reply_to == truth.raw["data"]["parent_id"]
    assert kinds == {"t1", "t3"}


async def test_reddit_comments_are_filtered_by_keywords(reddit: RedditHarness) -> None:
    reddit.sandbox.release(60, "reddit")
    connector = reddit.connector(query=None, keywords=[])
    messages, _ = await drain(connector, None)
    released = reddit.sandbox.released("reddit")
    assert sorted(ids(messages)) == sorted(
        m.external_id for m in released if m.external_id.startswith("t1_")
    )
    connector = reddit.connector(query=None, keywords=["Acme", "refund"])
    messages, _ = await drain(connector, None)
    wanted = [
        m.external_id
        for m in released
        if m.external_id.startswith("t1_")
        and ("acme" in m.text.lower() or "refund" in m.text.lower())
    ]
    assert wanted and sorted(ids(messages)) == sorted(wanted)


async def test_reddit_expired_token_is_renewed_on_the_next_call(reddit: RedditHarness) -> None:
    first = await reddit.publish(2)
    connector = reddit.connector()
    got, last = await drain(connector, None)
    assert sorted(ids(got)) == sorted(first)
    reddit.sandbox.reddit.expire_tokens()
    second = await reddit.publish(2)
    # The first stream meets the refused token and fails alone, to be tried at once; the
    # next streams get a new token and go on.
    batch = await connector.fetch(last.cursor)
    caught = batch.stream_errors["search"]
    assert isinstance(caught, RetryableError) and caught.retry_after_s == 0.0
    got, _ = await drain(connector, batch.cursor)
    assert sorted(ids(got + batch.messages)) == sorted(second)
    assert len(reddit.sandbox.reddit.tokens) == 2


async def test_reddit_wrong_password_is_an_auth_error(reddit: RedditHarness) -> None:
    with pytest.raises(AuthError, match="invalid_grant"):
        await reddit.connector(password="wrong").fetch(None)


async def test_reddit_app_only_reads_but_cannot_reply(reddit: RedditHarness) -> None:
    published = await reddit.publish(3)
    connector = reddit.connector(username=None, password=None)
    messages, _ = await drain(connector, None)
    assert sorted(ids(messages)) == sorted(published)
    reply = OutboundReply(reply_id=1, channel="reddit", text="Hi", in_reply_to=published[0])
    with pytest.raises(AuthError):
        await connector.send(reply)


async def test_reddit_reply_to_a_missing_thing_is_fatal(reddit: RedditHarness) -> None:
    reply = OutboundReply(reply_id=1, channel="reddit", text="Hi", in_reply_to="t1_nothere")
    with pytest.raises(FatalError, match="NO_THING_ID"):
        await reddit.connector().send(reply)


# -- all three on a bad day ---------------------------------------------------------------------

BAD_DAY = Faults(
    seed=5,
    rate_limit=0.04,
    rate_limit_burst=2,
    server_error=0.05,
    slow=0.05,
    slow_delay_s=0.01,
    truncated=0.03,
    html=0.03,
    bad_envelope=0.03,
    bad_item=0.05,
)


@pytest.mark.parametrize("harness_class", [XHarness, MastodonHarness, RedditHarness])
async def test_every_served_message_is_delivered_exactly_once(
    harness_class: type[SandboxHarness],
) -> None:
    sandbox = Sandbox(SEED, messages=MESSAGES, faults=BAD_DAY)
    async with harness_class.running(sandbox) as harness:
        connector = harness.connector()
        delivered: list[str] = []
        quarantined: list[str | None] = []
        failures = 0
        cursor = None
        platform = harness.platform
        for poll in range(400):
            if sandbox.pending(platform) and poll % 2 == 0:
                sandbox.release(3, platform)
            if isinstance(harness, RedditHarness):
                harness.wait(60.0)  # a poll a minute: Reddit's search index catches up
            try:
                batch = await connector.fetch(cursor)
            except ConnectorError:
                failures += 1
                continue
            # A stream that failed alone (others worked) is a failure too.
            failures += len(batch.stream_errors)
            delivered += ids(batch.messages)
            quarantined += [q.external_id for q in batch.quarantined]
            cursor = batch.cursor
            if not sandbox.pending(platform) and not batch.more and poll > 300:
                break
        assert failures, "the bad day had faults"
        assert len(delivered) == len(set(delivered)), "a message was delivered twice"
        visible = {m.external_id for m in sandbox.released(platform) if harness.visible(m)}
        # Reddit serves every comment of a subreddit; the connector keeps the ones it wants.
        served = set(sandbox.served_ids(platform)) & visible
        missing = served - set(delivered)
        assert not missing, f"served but never delivered: {sorted(missing)[:5]}"
        assert set(delivered) <= visible
        broken = set(sandbox.corrupted[platform])
        named = [q for q in quarantined if q is not None]
        assert quarantined and set(named) <= broken
        assert len(named) == len(set(named)), "a bad item was quarantined twice"
        assert visible == set(delivered) | (broken & visible)


async def test_mastodon_follows_links_only_to_its_own_server() -> None:
    hits: list[str] = []

    async def notifications(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        page = [
            {
                "id": str(100 - i),
                "type": "mention",
                "created_at": "2026-03-02T08:00:00.000Z",
                "account": {"id": "1", "acct": "someone@else.example"},
                "status": {
                    "id": str(900 - i),
                    "created_at": "2026-03-02T08:00:00.000Z",
                    "content": "<p>@acme hi</p>",
                    "account": {"id": "1", "acct": "someone@else.example"},
                },
            }
            for i in range(2)
        ]
        link = '<https://elsewhere.example/api/v1/notifications?max_id=99>; rel="next"'
        return web.json_response(page, headers={"Link": link})

    app = web.Application()
    app.router.add_get("/api/v1/notifications", notifications)
    async with TestServer(app, host="127.0.0.1") as server:
        config = MastodonConnector.Config(
            base_url=str(server.make_url("")), access_token="t", limit=2, max_pages=3
        )
        async with aiohttp.ClientSession() as http:
            batch = await MastodonConnector(config, http).fetch(None)
    assert len(hits) == 1, "the token never goes to another host"
    assert ids(batch.messages) == ["899", "900"]
    assert batch.cursor is not None and batch.cursor["notifications"] == {"min_id": "100"}


# -- RSS and webhooks in the same suite ------------------------------------------------------


class FeedHarness:
    """A review feed on a local server, with basic auth and the faults a feed host shows."""

    page_size = 25
    faults = frozenset(
        {"rate_limit", "server_error", "timeout", "truncated", "html", "bad_envelope", "bad_item"}
    )
    USER, PASSWORD = "partner", "feed-password"

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.entries: list[str] = []
        #: Entries the feed host garbles for good (a reviewer name longer than any we keep).
        self.broken: set[str] = set()
        self.pending: list[str] = []
        self.last_retry_after: float | None = None
        self._sessions: list[aiohttp.ClientSession] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[FeedHarness]:
        app = web.Application()
        holder: list[FeedHarness] = []

        async def feed(request: web.Request) -> web.StreamResponse:
            return await holder[0].answer(request)

        app.router.add_get("/feed.xml", feed)
        async with TestServer(app, host="127.0.0.1") as server:
            harness = cls(server)
            holder.append(harness)
            try:
                yield harness
            finally:
                for session in harness._sessions:
                    await session.close()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        token = base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()
        expected = f"Basic {token}"
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, text="login required")
        fault = self.pending.pop(0) if self.pending else None
        if fault == "rate_limit":
            self.last_retry_after = 120.0
            return web.Response(status=429, headers={"Retry-After": "120"}, text="slow down")
        if fault == "server_error":
            return web.Response(status=503, text="upstream down")
        if fault == "timeout":
            await asyncio.sleep(TIMEOUT_DELAY_S)
        if fault == "bad_item":
            self.broken.add(self.entries[len(self.entries) // 2])
        items = "".join(
            f"<item><guid>{g}</guid><title>Acme review</title><link>{g}</link>"
            f"<description>Review {g}: the Acme blender arrived broken</description>"
            f"<author>reviewer@example.com ({'R' * 600 if g in self.broken else 'Reviewer'})"
            "</author></item>"
            for g in self.entries[-200:]
        )
        body = (
            '<?xml version="1.0"?><rss version="2.0"><channel><title>Reviews</title>'
            f"{items}</channel></rss>"
        )
        if fault == "truncated":
            body = body[: len(body) // 2]
        if fault == "html":
            body = "<html><body><h1>Down for maintenance</h1></body></html>"
        if fault == "bad_envelope":  # well-formed XML, but an error document, not a feed
            body = '<?xml version="1.0"?><error><code>503</code><message>busy</message></error>'

        return web.Response(text=body, content_type="application/rss+xml")

    def connector(self, *, valid_credentials: bool = True) -> Connector:
        from connectors.rss import RssConnector

        session = aiohttp.ClientSession()
        self._sessions.append(session)
        config = RssConnector.Config.model_validate(
            {
                "url": str(self.server.make_url("/feed.xml")),
                "keywords": ["acme"],
                "timeout_s": CLIENT_TIMEOUT_S,
                "username": self.USER,
                "password": self.PASSWORD if valid_credentials else "wrong",
            }
        )
        return RssConnector(config, session)

    async def publish(self, count: int) -> list[str]:
        start = len(self.entries)
        new = [f"https://reviews.example/acme/{i}" for i in range(start, start + count)]
        self.entries.extend(new)
        return new

    def inject(self, fault: str) -> None:
        self.pending.append(fault)

    def rate_limit_wait_s(self) -> float | None:
        return self.last_retry_after

    def replies(self) -> list[tuple[str, str]] | None:
        return None  # review feeds take no replies


class TestRssConnector(ConnectorSuite, RateLimitSuite, FailureSuite, BadItemSuite):
    """Review feeds take no replies."""

    faults = FeedHarness.faults

    @pytest.fixture
    async def harness(self) -> AsyncIterator[FeedHarness]:
        async with FeedHarness.running() as harness:
            yield harness


class WebhookHarness:
    """Pushed messages, signed as a sending system would, and a callback that takes replies."""

    page_size = 5
    faults = frozenset({"bad_item"})
    SECRET = "conformance-webhook-secret"

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.bodies: list[tuple[bytes, dict[str, str]]] = []
        self.posted: list[tuple[str, str]] = []
        self.count = 0
        self._sessions: list[aiohttp.ClientSession] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[WebhookHarness]:
        app = web.Application()
        holder: list[WebhookHarness] = []

        async def reply(request: web.Request) -> web.Response:
            data = await request.json()
            holder[0].posted.append((data["in_reply_to"], data["text"]))
            return web.json_response({"id": f"reply-{len(holder[0].posted)}"})

        app.router.add_post("/replies", reply)
        async with TestServer(app, host="127.0.0.1") as server:
            harness = cls(server)
            holder.append(harness)
            try:
                yield harness
            finally:
                for session in harness._sessions:
                    await session.close()

    def connector(self, *, valid_credentials: bool = True) -> Connector:
        from connectors.webhook import WebhookConnector

        session = aiohttp.ClientSession()
        self._sessions.append(session)
        config = WebhookConnector.Config.model_validate(
            {
                "secret": self.SECRET if valid_credentials else "another-secret-entirely",
                "reply_url": str(self.server.make_url("/replies")),
            }
        )
        return WebhookConnector(config, session)

    async def publish(self, count: int) -> list[str]:
        items: list[dict[str, Any]] = []
        for _ in range(count):
            self.count += 1
            items.append(
                {
                    "id": f"form-{self.count}",
                    "text": f"Order {self.count} never arrived",
                    "author": {"email": f"c{self.count}@example.com"},
                }
            )
        self.bodies.append(self._signed(items))
        return [i["id"] for i in items]

    def _signed(self, items: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
        import json
        import time

        from connectors.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

        body = json.dumps(items).encode()
        ts = str(int(time.time()))
        return body, {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(self.SECRET, ts, body)}

    async def receive(self, connector: Any, cursor: Any) -> Any:
        """What the daemon's endpoint does with each pushed request."""
        from socialcrm.connector import Batch

        batch = Batch(cursor=dict(cursor or {}))
        while self.bodies:
            body, headers = self.bodies.pop(0)
            connector.verify(headers, body)
            got = connector.parse(body)
            batch.messages.extend(got.messages)
            batch.quarantined.extend(got.quarantined)
        return batch

    def inject(self, fault: str) -> None:
        """Break one item of the last push (the sending system sent it without its text)."""
        import json

        assert fault == "bad_item" and self.bodies
        body, _ = self.bodies.pop()
        items = json.loads(body)
        del items[len(items) // 2]["text"]
        self.bodies.append(self._signed(items))

    def rate_limit_wait_s(self) -> float | None:
        return None

    def replies(self) -> list[tuple[str, str]] | None:
        return self.posted


class TestWebhookConnector(ConnectorSuite, BadItemSuite, ReplySuite):
    """Pushed, not fetched: no rate limits, passing failures or broken answers to survive."""

    faults = WebhookHarness.faults

    @pytest.fixture
    async def harness(self) -> AsyncIterator[WebhookHarness]:
        async with WebhookHarness.running() as harness:
            yield harness


# -- progress on a flaky platform ------------------------------------------------------------


@pytest.mark.parametrize(
    "harness_class", [XHarness, MastodonHarness, MastodonSearchHarness, RedditHarness]
)
async def test_each_fetch_keeps_what_it_read_when_a_later_page_fails(
    harness_class: type[SandboxHarness],
) -> None:
    """A third of the requests fail. A fetch of thirty pages almost never succeeds whole, but
    every fetch keeps the pages it read before the failure, so the backlog arrives once each
    in a bounded number of fetches instead of never."""
    faults = Faults(seed=5, server_error=0.3, timeout_delay_s=TIMEOUT_DELAY_S)
    sandbox = Sandbox(SEED, messages=4000, faults=faults)
    async with harness_class.running(sandbox) as harness:
        published = await harness.publish(harness.page_size * 30)
        changes: dict[str, Any] = {"max_pages": 100}
        if harness_class in (MastodonHarness, MastodonSearchHarness):
            changes["backfill_pages"] = 100
        connector = harness.connector(**changes)
        cursor = None
        got: list[InboundMessage] = []
        failed = 0
        for _ in range(200):
            try:
                batch = await connector.fetch(cursor)
            except RetryableError:
                failed += 1  # nothing read: the cursor stays where it was
                continue
            failed += len(batch.stream_errors)  # streams that failed while others worked
            got += batch.messages
            cursor = batch.cursor
            if not batch.more and not batch.stream_errors:
                break
        else:
            raise AssertionError(f"no end after 200 fetches; {len(got)} of {len(published)} read")
    assert failed > 0, "the platform did misbehave"
    assert len(ids(got)) == len(set(ids(got))), "a message came twice"
    assert sorted(ids(got)) == sorted(published)


def test_webhook_item_without_an_id_is_quarantined_without_one() -> None:
    """An item with no id has no external id, not the text "None"."""
    import json

    from connectors.webhook import WebhookConnector

    config = WebhookConnector.Config.model_validate({"secret": WebhookHarness.SECRET})
    batch = WebhookConnector(config, None).parse(json.dumps([{"text": "no author"}]).encode())  # type: ignore[arg-type]
    assert [q.external_id for q in batch.quarantined] == [None]
