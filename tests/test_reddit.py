"""Reddit as Reddit behaves: closed subreddits, the 1000-item listing cap, search index lag,
deleted and removed items, ``RATELIMIT`` answers and the User-Agent Reddit requires.

Every test runs the real connector against the sandbox's Reddit stand-in over HTTP.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from connectors.reddit import RedditConnector, ratelimit_wait_s
from socialcrm.connector import FatalError, ForbiddenError, OutboundReply, RetryableError
from socialcrm.sandbox.reddit import SEARCH_LAG_S, search_matcher
from tests.connector_suite import drain, ids
from tests.test_connectors import MESSAGES, QUERY, RedditHarness, reddit_sandbox


@pytest.fixture
async def reddit() -> AsyncIterator[RedditHarness]:
    async with RedditHarness.running(reddit_sandbox(MESSAGES * 3)) as harness:
        yield harness


def busiest(harness: RedditHarness) -> str:
    """The subreddit with the most comments in the traffic."""
    counts = Counter(
        str(m.raw["data"]["subreddit"])
        for m in harness.sandbox.messages["reddit"]
        if m.external_id.startswith("t1_")
    )
    return counts.most_common(1)[0][0]


def comments_in(harness: RedditHarness, subreddit: str) -> list[str]:
    return [
        m.external_id
        for m in harness.sandbox.released("reddit")
        if m.external_id.startswith("t1_") and m.raw["data"]["subreddit"] == subreddit
    ]


@pytest.mark.parametrize(
    ("state", "error", "reason"),
    [
        ("private", ForbiddenError, "private"),
        ("quarantined", ForbiddenError, "quarantined"),
        ("banned", FatalError, "banned"),
    ],
)
async def test_a_closed_subreddit_fails_only_its_own_stream(
    reddit: RedditHarness, state: str, error: type[Exception], reason: str
) -> None:
    reddit.sandbox.release(150, "reddit")
    closed = busiest(reddit)
    reddit.sandbox.reddit.close(closed, state)  # type: ignore[arg-type]
    connector = reddit.connector(keywords=[], limit=100)
    batch = await connector.fetch(None)
    assert set(batch.stream_errors) == {f"r/{closed}"}
    failure = batch.stream_errors[f"r/{closed}"]
    assert type(failure) is error and reason in str(failure)
    got = set(ids(batch.messages))
    others = [
        m.external_id
        for m in reddit.sandbox.released("reddit")
        if m.external_id.startswith("t1_") and m.raw["data"]["subreddit"] != closed
    ]
    assert others and set(others) <= got, "the other subreddits were read"
    assert not set(comments_in(reddit, closed)) & got
    # The closed subreddit's stream keeps no mark; it starts from scratch when it opens.
    assert batch.cursor is not None and f"r/{closed}" not in batch.cursor


async def test_resting_streams_are_not_read(reddit: RedditHarness) -> None:
    reddit.sandbox.release(80, "reddit")
    sub = busiest(reddit)
    connector = reddit.connector(keywords=[], limit=100)
    before = reddit.sandbox.faults.requests("reddit")
    batch = await connector.fetch(None, resting=frozenset({f"r/{sub}"}))
    assert not set(comments_in(reddit, sub)) & set(ids(batch.messages))
    streams = len(connector.streams())
    # A token, then one request per stream walked (one page each here).
    assert reddit.sandbox.faults.requests("reddit") - before == 1 + streams - 1


async def test_a_listing_cut_at_its_cap_reports_the_lost_items(reddit: RedditHarness) -> None:
    sub = busiest(reddit)
    reddit.sandbox.reddit.listing_cap = 10  # Reddit's is 1000; the same rule, smaller
    connector = reddit.connector(query=None, subreddits=[sub], keywords=[], limit=5)
    reddit.sandbox.release(40, "reddit")
    first, last = await drain(connector, None)
    assert last.gaps == {}
    while len(comments_in(reddit, sub)) < len(first) + 15:
        reddit.sandbox.release(1, "reddit")
    _, last = await drain(connector, last.cursor)
    assert f"r/{sub}" in last.gaps and "lost" in last.gaps[f"r/{sub}"]
    # The poll after that joins up again: no gap.
    reddit.sandbox.release(3, "reddit")
    _, last = await drain(connector, last.cursor)
    assert last.gaps == {}


async def test_search_shows_a_new_post_only_after_the_index_lag(reddit: RedditHarness) -> None:
    sandbox = reddit.sandbox
    assert sandbox.reddit.search_lag_s == SEARCH_LAG_S > 0, "the stand-in lags by default"
    wanted = search_matcher(QUERY)
    while not [m for m in sandbox.released("reddit") if wanted(m)][3:]:
        sandbox.release(1, "reddit")
    newest = [m for m in sandbox.released("reddit") if wanted(m)][-1]
    lag = sandbox.reddit.lag_s(newest.external_id)
    connector = reddit.connector(subreddits=[])
    got, _ = await drain(connector, None)
    assert lag > 0 and newest.external_id not in ids(got), "not searchable the moment it is made"
    reddit.wait(lag)
    got, _ = await drain(connector, None)
    assert newest.external_id in ids(got)


async def test_search_rereads_its_overlap_window_for_late_posts() -> None:
    """A poll a minute while Reddit's index shows posts up to five minutes late: a strict mark
    loses the late ones; the default re-read window (``search_overlap_s``) loses nothing."""
    wanted = search_matcher(QUERY)

    async def poll_all(**changes: float) -> tuple[list[str], set[str]]:
        async with RedditHarness.running(reddit_sandbox(MESSAGES * 3)) as harness:
            sandbox = harness.sandbox
            connector = harness.connector(subreddits=[], **changes)
            cursor = None
            got: list[str] = []
            while sandbox.pending("reddit") > 40:
                sandbox.release(2, "reddit")
                harness.wait(60.0)
                messages, last = await drain(connector, cursor)
                got += ids(messages)
                cursor = last.cursor
            harness.wait(sandbox.reddit.search_lag_s)  # the index catches up
            messages, _ = await drain(connector, cursor)
            got += ids(messages)
            posts = {m.external_id for m in sandbox.released("reddit") if wanted(m)}
            return got, posts

    strict, posts = await poll_all(search_overlap_s=0.0)
    assert set(strict) < posts, "a strict mark skips the posts the index showed late"
    got, posts = await poll_all()
    assert sorted(got) == sorted(posts), "every post, once"


async def test_deleted_and_removed_items_are_not_customers_words(reddit: RedditHarness) -> None:
    published = await reddit.publish(12)
    comments = [i for i in published if i.startswith("t1_")]
    posts = [i for i in published if i.startswith("t3_")]
    assert comments and posts
    reddit.sandbox.reddit.remove(comments[0], "[deleted]")
    reddit.sandbox.reddit.remove(posts[0], "[removed]")
    connector = reddit.connector(search_overlap_s=86_400.0)
    got, last = await drain(connector, None)
    assert comments[0] not in ids(got) and posts[0] not in ids(got)
    assert not [m for m in got if m.text.strip() in ("[deleted]", "[removed]")]
    # Removed after it was stored: the re-read of the overlap window brings nothing over it.
    reddit.sandbox.reddit.remove(posts[1], "[removed]")
    again, _ = await drain(connector, last.cursor)
    assert posts[1] not in ids(again)


@pytest.mark.parametrize(
    ("message", "wait_s"),
    [
        ("you are doing that too much. try again in 3 minutes.", 180.0),
        (
            "Looks like you've been doing that a lot. "
            "Take a break for 5 seconds before trying again.",
            5.0,
        ),
        (
            "Looks like you've been doing that a lot. "
            "Take a break for 450 milliseconds before trying again.",
            0.45,
        ),
        ("Take a break for 1 minute before trying again.", 60.0),
    ],
)
async def test_a_ratelimit_answer_gives_its_wait(
    reddit: RedditHarness, message: str, wait_s: float
) -> None:
    published = await reddit.publish(2)
    reddit.sandbox.reddit.throttle_comments(message)
    connector = reddit.connector()
    reply = OutboundReply(reply_id=1, channel="reddit", text="Hi", in_reply_to=published[0])
    with pytest.raises(RetryableError) as caught:
        await connector.send(reply)
    assert caught.value.retry_after_s == pytest.approx(wait_s)
    assert caught.value.not_sent
    assert ratelimit_wait_s(message) == pytest.approx(wait_s)
    receipt = await connector.send(reply)
    assert receipt.external_id.startswith("t1_")


def test_user_agent_follows_reddits_format() -> None:
    base = {"client_id": "abc", "client_secret": "s", "query": "acme"}
    made = RedditConnector.Config.model_validate({**base, "username": "acme", "password": "p"})
    assert made.agent() == "python:socialcrm:0.1 (by /u/acme)"
    given = RedditConnector.Config.model_validate(
        {**base, "user_agent": "linux:com.acme.crm:v1.2.3 (by /u/acme_support)"}
    )
    assert given.agent() == "linux:com.acme.crm:v1.2.3 (by /u/acme_support)"
    for bad in ("python:socialcrm:0.1 (self-hosted social CRM)", "socialcrm/0.1"):
        with pytest.raises(ValidationError, match="user_agent"):
            RedditConnector.Config.model_validate({**base, "user_agent": bad})
    with pytest.raises(ValidationError, match="user_agent"):
        RedditConnector.Config.model_validate(base)  # app-only, nobody to name
