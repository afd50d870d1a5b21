"""A stream that fails alone is reported by name and backs off alone; the source goes on.

The source is the real Reddit connector polling the sandbox's Reddit stand-in over HTTP: its
search and each subreddit are streams. A subreddit made private (403), banned (404), or one
that answers 5xx fails its own stream while the rest is polled on schedule. Time is the test's:
the poller's monotonic clock and its wall clock move together, and the source is polled every
minute as the daemon's scheduler would.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestServer
from sqlmodel import col

from socialcrm.config import Config
from socialcrm.daemon import Daemon
from socialcrm.db import Store
from socialcrm.models import Alert, Message, SourceState
from socialcrm.sandbox.faults import Faults
from socialcrm.sandbox.server import Sandbox, make_app
from socialcrm.sources import STOPPED_RETRY_S, PollOutcome, make_source
from tests.reddit_spec import Recorder
from tests.test_connectors import MastodonHarness
from tests.test_sources_failing import Clocks

NAME = "reddit-acme"


class Harness:
    """A daemon (built as ``Daemon.start`` builds it, without the scheduler) polling one
    Reddit source with a search and a few subreddits."""

    def __init__(self, config: Config, store: Store, sandbox: Sandbox, url: str) -> None:
        self.config = config
        self.store = store
        self.sandbox = sandbox
        self.url = url
        self.clocks = Clocks()
        self.daemon: Daemon | None = None
        counts = Counter(
            str(m.raw["data"]["subreddit"])
            for m in sandbox.messages["reddit"]
            if m.external_id.startswith("t1_")
        )
        self.subreddits = [name for name, _ in counts.most_common(3)]
        self.settings: dict[str, Any] = {}

    def source(self, **settings: Any) -> dict[str, Any]:
        creds = self.sandbox.credentials
        return {
            "name": NAME,
            "type": "reddit",
            "interval": "60s",
            "jitter": 0,
            "auth_url": self.url,
            "api_url": self.url,
            "client_id": creds.reddit_client_id,
            "client_secret": creds.reddit_client_secret,
            "username": creds.reddit_username,
            "password": creds.reddit_password,
            "query": "acme",
            "subreddits": self.subreddits,
            "keywords": [],
            "timeout_s": 10.0,  # no test here times out: a loaded machine must not either
            **settings,
        }

    async def start(self, **settings: Any) -> None:
        sources = Config.model_validate({"sources": [self.source(**settings)]}).sources
        config = self.config.model_copy(update={"sources": sources})
        d = Daemon(config, self.store, clock=self.clocks.monotonic)
        d.poller.rng = random.Random(1)
        d.poller.wall_clock = self.clocks.now
        for i, cfg in enumerate(config.sources):
            d.poller.add(make_source(cfg, i))
        await d.poller.load_state()
        self.daemon = d

    async def restart(self, **settings: Any) -> None:
        await self.stop()
        await self.start(**settings)

    async def stop(self) -> None:
        if self.daemon is not None:
            await self.daemon.stop()

    async def poll(self, seconds: float = 60) -> PollOutcome:
        self.clocks.tick(seconds)
        assert self.daemon is not None
        return await self.daemon.poller.poll(NAME)

    def health(self) -> dict[str, Any]:
        assert self.daemon is not None
        source: dict[str, Any] = self.daemon.health()["sources"][NAME]
        return source

    def requests_to(self, subreddit: str) -> int:
        """Requests that reached a subreddit's comments listing (served or refused)."""
        reddit = self.sandbox.reddit
        return reddit.hits.get(subreddit.lower(), 0)


async def alerts(store: Store, kind: str = "source_failing") -> list[Alert]:
    async with store.reader() as s:
        q = sa.select(Alert).where(col(Alert.kind) == kind).order_by(col(Alert.id))
        return list((await s.execute(q)).scalars())


async def state(store: Store) -> SourceState:
    async with store.reader() as s:
        st = await s.get(SourceState, NAME)
        assert st is not None
        return st


async def stored_ids(store: Store) -> set[str]:
    async with store.reader() as s:
        return set((await s.execute(sa.select(col(Message.external_id)))).scalars())


def released_comments(sandbox: Sandbox, subreddit: str) -> set[str]:
    return {
        m.external_id
        for m in sandbox.released("reddit")
        if m.external_id.startswith("t1_") and m.raw["data"]["subreddit"] == subreddit
    }


@pytest.fixture
async def harness(config: Config, store: Store) -> AsyncIterator[Harness]:
    sandbox = Sandbox(5, messages=600, released=60, faults=Faults(timeout_delay_s=1.0))
    async with TestServer(make_app(sandbox), host="127.0.0.1") as server:
        h = Harness(config, store, sandbox, str(server.make_url("/reddit")))
        await h.start()
        try:
            yield h
        finally:
            await h.stop()


async def test_a_private_subreddit_is_stopped_alone_alerted_once_and_retried_rarely(
    harness: Harness, store: Store
) -> None:
    closed, *others = harness.subreddits
    stream = f"r/{closed}"
    harness.sandbox.reddit.close(closed, "private")
    out = await harness.poll()
    assert out.error is None and out.skipped is None, out
    # The other subreddits and the search were stored; the source is neither paused nor failing.
    kept = await stored_ids(store)
    for sub in others:
        assert released_comments(harness.sandbox, sub) <= kept
    assert not released_comments(harness.sandbox, closed) & kept
    health = harness.health()
    assert health["state"] == "degraded" and health["consecutive_failures"] == 0
    assert health["streams"][stream]["state"] == "stopped"
    assert "private" in health["streams"][stream]["last_error"]
    assert health["streams"][stream]["retry_in_s"] == pytest.approx(STOPPED_RETRY_S)
    st = await state(store)
    assert st.health == "ok" and not st.paused
    assert st.streams is not None and st.streams[stream]["state"] == "stopped"
    found = await alerts(store)
    assert len(found) == 1
    assert found[0].dedupe_key == f"source_failing:{NAME}:{stream}"
    assert found[0].detail["stream"] == stream and stream in found[0].title
    assert "private" in found[0].title
    assert await alerts(store, "source_auth") == []

    # New comments arrive; for the next hour the source is polled each minute, the stopped
    # stream rests, and nothing more is alerted.
    asked = harness.requests_to(closed)
    harness.sandbox.release(40, "reddit")
    for _ in range(59):
        out = await harness.poll()
        assert out.skipped is None and out.error is None
    assert harness.requests_to(closed) == asked
    kept = await stored_ids(store)
    for sub in others:
        assert released_comments(harness.sandbox, sub) <= kept
    assert len(await alerts(store)) == 1

    # An hour on it is tried again: still private, still one alert.
    await harness.poll()
    assert harness.requests_to(closed) == asked + 1
    assert len(await alerts(store)) == 1

    # A restart keeps it stopped (same settings) ...
    await harness.restart()
    await harness.poll()
    assert harness.requests_to(closed) == asked + 1
    assert harness.health()["streams"][stream]["state"] == "stopped"
    # ... a change of settings tries it at once; opened, it recovers and is read in full.
    harness.sandbox.reddit.closed.clear()
    await harness.restart(max_pages=6)
    await harness.poll()
    assert harness.requests_to(closed) == asked + 2
    assert harness.health()["streams"] == {} and harness.health()["state"] == "ok"
    assert (await state(store)).streams is None
    assert released_comments(harness.sandbox, closed) <= await stored_ids(store)


async def test_a_failing_stream_backs_off_alone_and_alerts_after_the_threshold(
    harness: Harness, store: Store
) -> None:
    sub = harness.subreddits[1]
    stream = f"r/{sub}"
    await harness.poll()
    # Its listing answers 5xx its next twelve times; the rest of the source works.
    harness.sandbox.inject("reddit", "server_error", 12, path_prefix=f"/r/{sub}/comments")
    out = await harness.poll()
    assert out.error is None
    health = harness.health()
    assert health["streams"][stream]["state"] == "failing"
    assert health["streams"][stream]["failures"] == 1
    first_wait = health["streams"][stream]["retry_in_s"]
    assert 2.5 <= first_wait <= 5.0  # the jittered backoff's first step
    # Polled every minute: the source is never held back, the stream is asked ever more
    # rarely, until the faults are spent and it recovers.
    asked_at: list[int] = []
    for minute in range(1, 240):
        before = harness.requests_to(sub)
        out = await harness.poll()
        assert out.error is None and out.skipped is None
        assert harness.health()["consecutive_failures"] == 0
        if harness.requests_to(sub) > before:
            asked_at.append(minute)
        if not harness.health()["streams"]:
            break
    assert harness.health()["streams"] == {}, "it recovered"
    gaps = [b - a for a, b in itertools.pairwise(asked_at)]
    # Twelve failures after the first, then the try that works; jittered, the waits grow.
    assert len(asked_at) == 12 and gaps[:3] == [1, 1, 1] and min(gaps[-3:]) >= 7, asked_at
    # One alert, after the source's failing_alert_after (30 minutes), naming the stream.
    found = await alerts(store)
    assert len(found) == 1 and found[0].detail["stream"] == stream
    assert "HTTP 50" in found[0].title and stream in found[0].title


async def test_a_listing_gap_is_alerted_with_advice(harness: Harness, store: Store) -> None:
    harness.sandbox.reddit.listing_cap = 5
    await harness.restart(query=None, subreddits=[harness.subreddits[0]], limit=5, max_pages=1)
    sub = harness.subreddits[0]
    while not released_comments(harness.sandbox, sub):
        harness.sandbox.release(1, "reddit")
    await harness.poll()
    before = len(released_comments(harness.sandbox, sub))
    while len(released_comments(harness.sandbox, sub)) < before + 8:
        harness.sandbox.release(1, "reddit")
    await harness.poll()
    found = await alerts(store, "source_gap")
    assert len(found) == 1
    assert found[0].detail["stream"] == f"r/{sub}"
    assert "more often" in found[0].title and "lost" in found[0].title


async def test_healthz_and_metrics_name_the_stream(harness: Harness) -> None:
    closed = harness.subreddits[0]
    harness.sandbox.reddit.close(closed, "banned")
    await harness.poll()
    assert harness.daemon is not None
    body = harness.health()
    assert body["streams"][f"r/{closed}"]["state"] == "stopped"
    assert "banned" in body["streams"][f"r/{closed}"]["last_error"]
    assert harness.daemon.health()["status"] == "degraded"
    metrics = harness.daemon.metrics
    value = metrics.registry.get_sample_value(
        "socialcrm_stream_up", {"source": NAME, "stream": f"r/{closed}"}
    )
    assert value == 0.0


async def test_when_every_stream_fails_the_alert_and_healthz_name_the_stream(
    harness: Harness, store: Store
) -> None:
    await harness.restart(query=None)
    for sub in harness.subreddits:
        harness.sandbox.reddit.close(sub, "private")
    out = await harness.poll()
    first = f"r/{harness.subreddits[0]}"
    assert out.error is not None and f"stream {first}: " in out.error
    found = await alerts(store)
    assert len(found) == 1
    assert found[0].detail["stream"] == first
    assert f"stream {first}: " in found[0].title and "private" in found[0].title
    body = harness.health()
    assert body["last_error"].startswith(f"stream {first}: ")
    assert (await state(store)).last_error == body["last_error"]


async def test_only_a_real_401_pauses_the_source(harness: Harness, store: Store) -> None:
    harness.sandbox.reddit.close(harness.subreddits[0], "private")
    harness.sandbox.reddit.close(harness.subreddits[1], "quarantined")
    await harness.poll()
    assert harness.health()["state"] != "paused"
    await harness.restart(client_secret="wrong")
    await harness.poll()
    assert harness.health()["state"] == "paused"
    assert len(await alerts(store, "source_auth")) == 1


async def test_mastodon_leaves_its_resting_streams_alone() -> None:
    """The core's ``resting`` reaches the Mastodon connector: a resting hashtag is not read."""
    async with MastodonHarness.running() as harness:
        await harness.publish(5)
        recorder = Recorder(prefix="/mastodon")
        connector = harness.connector()
        connector.http = harness.session(middlewares=[recorder])
        await connector.fetch(None, resting=frozenset({"tag:acme"}))
        paths = {ex.path for ex in recorder.exchanges}
        assert "/api/v1/notifications" in paths
        assert not any(p.startswith("/api/v1/timelines/tag") for p in paths), paths
        recorder.exchanges.clear()
        await connector.fetch(None)
        assert any(ex.path.startswith("/api/v1/timelines/tag") for ex in recorder.exchanges)
