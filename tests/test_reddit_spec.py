"""The Reddit connector's requests and the stand-in's answers fit Reddit's documented shapes.

The shapes are encoded once in tests/specs/reddit/ (tests/reddit_spec.py checks them); the
connector runs against the stand-in over HTTP with a recording middleware on its session.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest

from socialcrm.connector import OutboundReply, RetryableError
from tests.reddit_spec import Recorder, exchange_problems, problems
from tests.test_connectors import MESSAGES, RedditHarness, reddit_sandbox


@pytest.fixture
async def reddit() -> AsyncIterator[RedditHarness]:
    async with RedditHarness.running(reddit_sandbox(MESSAGES * 2)) as harness:
        yield harness


async def test_requests_and_answers_fit_reddits_shapes(reddit: RedditHarness) -> None:
    recorder = Recorder(prefix="/reddit")
    counts = Counter(
        str(m.raw["data"]["subreddit"])
        for m in reddit.sandbox.messages["reddit"]
        if m.external_id.startswith("t1_")
    )
    private, quarantined, banned = [name for name, _ in counts.most_common(3)]
    reddit.sandbox.reddit.close(private, "private")
    reddit.sandbox.reddit.close(quarantined, "quarantined")
    reddit.sandbox.reddit.close(banned, "banned")
    published = await reddit.publish(12)
    connector = reddit.connector(keywords=[])
    connector.http = reddit.session(middlewares=[recorder])
    # The closed subreddits fail alone in every fetch; the others are read to the end.
    last = await connector.fetch(None)
    messages = list(last.messages)
    while last.more:
        last = await connector.fetch(last.cursor)
        messages += last.messages
    assert set(last.stream_errors) == {f"r/{private}", f"r/{quarantined}", f"r/{banned}"}
    target = next(m for m in messages if m.external_id in published)
    reddit.sandbox.reddit.throttle_comments(
        "Take a break for 450 milliseconds before trying again."
    )
    reply = OutboundReply(
        reply_id=1, channel="reddit", text="Hi there", in_reply_to=target.external_id
    )
    with pytest.raises(RetryableError):
        await connector.send(reply)
    await connector.send(reply)
    statuses = Counter(ex.status for ex in recorder.exchanges)
    assert statuses[403] == 2 and statuses[404] == 1 and statuses[200] > 5
    paths = {ex.path for ex in recorder.exchanges}
    assert {"/api/v1/access_token", "/search", "/api/comment", f"/r/{private}/comments"} <= paths
    found = exchange_problems(recorder.exchanges)
    assert found == [], "\n".join(found)
    # Listings carry Reddit's rate-limit headers.
    listing = next(ex for ex in recorder.exchanges if ex.path == "/search")
    assert listing.status == 200
    names = {k.lower() for k in listing.response_headers}
    assert {"x-ratelimit-used", "x-ratelimit-remaining", "x-ratelimit-reset"} <= names


def test_the_checker_catches_a_wrong_field_name() -> None:
    listing = {
        "kind": "Listing",
        "data": {"after": None, "before": None, "dist": 0, "children": []},
    }
    assert problems("listing", listing) == []
    wrong = {"kind": "Listing", "data": {"afterr": None, "before": None, "dist": 0, "children": []}}
    assert any("'after' is a required property" in p for p in problems("listing", wrong))
    request = {
        "method": "GET",
        "path": "/search",
        "query": {"q": "acme", "sort": "new", "limt": "100"},
        "headers": {"Authorization": "bearer x", "User-Agent": "python:socialcrm:0.1 (by /u/acme)"},
    }
    assert any("'limt' was unexpected" in p for p in problems("listing_request", request))
    generic = {
        **request,
        "query": {"q": "acme"},
        "headers": {"Authorization": "bearer x", "User-Agent": "python-requests/2.32"},
    }
    assert problems("listing_request", generic), "a generic User-Agent is caught"
    quarantined = {"message": "Forbidden", "error": 403, "reason": "quarantined"}
    assert problems("http_error", quarantined), "a quarantine answer says why"
