"""The sandbox's stand-ins answer in the platforms' documented shapes, and misbehave on cue.

Field names, paging, headers and error bodies follow the X API v2 reference (docs.x.com),
docs.joinmastodon.org and reddit.com/dev/api with Reddit's OAuth2 wiki.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from socialcrm.connector import retry_after_s
from socialcrm.sandbox.faults import FaultPlan, Faults
from socialcrm.sandbox.mastodon import NOTIFICATION_BASE, tags_of
from socialcrm.sandbox.server import Sandbox, make_app, serve
from socialcrm.sandbox.traffic import TrafficGenerator
from socialcrm.sandbox.x import BRAND_USER_ID, query_matcher

SEED = 11
MENTIONS = f"/x/2/users/{BRAND_USER_ID}/mentions"
X_APP = {"Authorization": "Bearer sandbox-x-app-bearer"}
X_USER = {"Authorization": "Bearer sandbox-x-user-token"}
MASTODON = {"Authorization": "Bearer sandbox-mastodon-token"}
REDDIT_APP = "sandbox-reddit-client:sandbox-reddit-secret"


def basic(pair: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(SEED, messages=700, released=400, faults=Faults(timeout_delay_s=2.0))


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(sandbox), host="127.0.0.1")) as c:
        yield c


async def reddit_token(client: TestClient[Any, Any], **form: str) -> str:
    form = form or {
        "grant_type": "password",
        "username": "acme",
        "password": "sandbox-reddit-password",
    }
    resp = await client.post("/reddit/api/v1/access_token", data=form, headers=basic(REDDIT_APP))
    body = await resp.json()
    return str(body["access_token"])


# -- X API v2 -----------------------------------------------------------------------------------


async def test_x_mentions_page_has_the_documented_shape(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    resp = await client.get(
        MENTIONS,
        params={
            "max_results": "10",
            "expansions": "author_id",
            "tweet.fields": "created_at,author_id,conversation_id,lang,referenced_tweets",
            "user.fields": "public_metrics,verified",
        },
        headers=X_APP,
    )
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert int(resp.headers["x-rate-limit-limit"]) > int(resp.headers["x-rate-limit-remaining"])
    assert int(resp.headers["x-rate-limit-reset"]) > time.time() - 1
    body = await resp.json()
    assert set(body) == {"data", "includes", "meta"}
    tweets = body["data"]
    assert len(tweets) == 10
    for tweet in tweets:
        assert {"id", "text", "edit_history_tweet_ids", "author_id", "created_at"} <= set(tweet)
        assert {"conversation_id", "lang"} <= set(tweet)
        assert "@acme" in tweet["text"].lower()
        datetime.fromisoformat(tweet["created_at"].replace("Z", "+00:00"))
    assert [int(t["id"]) for t in tweets] == sorted((int(t["id"]) for t in tweets), reverse=True)
    users = {u["id"]: u for u in body["includes"]["users"]}
    assert {t["author_id"] for t in tweets} == set(users)
    for user in users.values():
        assert {"id", "name", "username", "verified"} <= set(user)
        assert isinstance(user["public_metrics"]["followers_count"], int)
    meta = body["meta"]
    assert meta["result_count"] == 10
    assert meta["newest_id"] == tweets[0]["id"] and meta["oldest_id"] == tweets[-1]["id"]
    assert meta["next_token"]
    truth = {m.external_id: m for m in sandbox.released("x")}
    for tweet in tweets:
        assert tweet["text"] == truth[tweet["id"]].text
        replied = [r["id"] for r in tweet.get("referenced_tweets", []) if r["type"] == "replied_to"]
        assert replied == (
            [truth[tweet["id"]].in_reply_to] if truth[tweet["id"]].in_reply_to else []
        )


async def test_x_returns_only_default_fields_unless_asked(client: TestClient[Any, Any]) -> None:
    body = await (await client.get(MENTIONS, params={"max_results": "5"}, headers=X_APP)).json()
    assert all(set(t) == {"id", "text", "edit_history_tweet_ids"} for t in body["data"])
    assert "includes" not in body


async def test_x_pagination_tokens_walk_to_the_end(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    expected = [m.external_id for m in sandbox.released("x") if sandbox.x.is_mention(m)][::-1]
    got: list[str] = []
    params = {"max_results": "100"}
    while True:
        body = await (await client.get(MENTIONS, params=params, headers=X_APP)).json()
        got += [t["id"] for t in body.get("data", [])]
        token = body["meta"].get("next_token")
        if token is None:
            break
        params = {"max_results": "100", "pagination_token": token}
    assert got == expected and len(got) > 100


async def test_x_since_id_until_id_and_the_empty_page(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    ids = [int(m.external_id) for m in sandbox.released("x") if sandbox.x.is_mention(m)]
    since, until = ids[10], ids[20]
    params = {"since_id": str(since), "until_id": str(until), "max_results": "100"}
    body = await (await client.get(MENTIONS, params=params, headers=X_APP)).json()
    assert [int(t["id"]) for t in body["data"]] == ids[11:20][::-1]
    params = {"since_id": str(ids[-1])}
    body = await (await client.get(MENTIONS, params=params, headers=X_APP)).json()
    assert body == {"meta": {"result_count": 0}}


async def test_x_recent_search_matches_its_query(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    query = "refund -is:retweet"
    params = {"query": query, "max_results": "100"}
    body = await (
        await client.get("/x/2/tweets/search/recent", params=params, headers=X_APP)
    ).json()
    wanted = query_matcher(query)
    expected = [m.external_id for m in sandbox.released("x") if wanted(m)][::-1]
    assert expected and [t["id"] for t in body["data"]] == expected[:100]
    assert all("refund" in t["text"].lower() for t in body["data"])


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/x/2/tweets/search/recent", {}, "The `query` query parameter can not be empty"),
        ("/x/2/tweets/search/recent", {"query": "a", "max_results": "5"}, "is not between 10"),
        (MENTIONS, {"max_results": "101"}, "is not between 5 and 100"),
        (MENTIONS, {"pagination_token": "nope"}, "`pagination_token` query parameter value"),
        (MENTIONS, {"next_token": "x"}, "The query parameter [next_token] is not one of"),
    ],
)
async def test_x_bad_parameters_get_an_invalid_request_problem(
    client: TestClient[Any, Any], path: str, params: dict[str, str], message: str
) -> None:
    resp = await client.get(path, params=params, headers=X_APP)
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["title"] == "Invalid Request"
    assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    assert message in body["errors"][0]["message"]


async def test_x_refuses_a_bad_token_with_its_problem_body(client: TestClient[Any, Any]) -> None:
    resp = await client.get(MENTIONS, headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    assert await resp.json() == {
        "title": "Unauthorized",
        "type": "about:blank",
        "status": 401,
        "detail": "Unauthorized",
    }


async def test_x_reply_is_created_and_recorded(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    target = sandbox.released("x")[-1].external_id
    body = {"text": "We're on it!", "reply": {"in_reply_to_tweet_id": target}}
    resp = await client.post("/x/2/tweets", json=body, headers=X_USER)
    assert resp.status == 201
    data = (await resp.json())["data"]
    # TweetCreateResponse in X's OpenAPI: data is {id, text}.
    assert set(data) == {"id", "text"} and data["text"] == body["text"]
    [reply] = sandbox.replies
    assert (reply.platform, reply.external_id, reply.in_reply_to) == ("x", data["id"], target)
    assert sandbox.replies_to(target) == [reply]
    again = await client.post("/x/2/tweets", json=body, headers=X_USER)
    assert again.status == 403
    assert "duplicate content" in (await again.json())["detail"]
    app_only = await client.post("/x/2/tweets", json={"text": "other"}, headers=X_APP)
    assert app_only.status == 403
    assert (await app_only.json())["type"].endswith("/unsupported-authentication")
    nowhere = {"text": "third", "reply": {"in_reply_to_tweet_id": "1"}}
    assert (await client.post("/x/2/tweets", json=nowhere, headers=X_USER)).status == 400
    assert len(sandbox.replies) == 1


async def test_x_users_me_needs_user_context(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/x/2/users/me", headers=X_USER)
    assert (await resp.json())["data"] == {"id": BRAND_USER_ID, "name": "Acme", "username": "acme"}
    assert (await client.get("/x/2/users/me", headers=X_APP)).status == 403


# -- Mastodon -----------------------------------------------------------------------------------


def parse_links(header: str) -> dict[str, str]:
    links = {}
    for part in header.split(","):
        url, rel = part.split(";")
        links[rel.strip().removeprefix('rel="').removesuffix('"')] = url.strip()[1:-1]
    return links


async def test_mastodon_notifications_have_the_documented_shape(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    resp = await client.get(
        "/mastodon/api/v1/notifications",
        params={"types[]": "mention", "limit": "5"},
        headers=MASTODON,
    )
    assert resp.status == 200
    datetime.fromisoformat(resp.headers["X-RateLimit-Reset"].replace("Z", "+00:00"))
    assert resp.headers["X-RateLimit-Limit"] == "300"
    notes = await resp.json()
    assert isinstance(notes, list) and len(notes) == 5
    ids = [int(n["id"]) for n in notes]
    assert ids == sorted(ids, reverse=True)
    truth = {m.external_id: m for m in sandbox.released("mastodon")}
    for note in notes:
        assert note["type"] == "mention"
        assert {"id", "type", "created_at", "account", "status"} <= set(note)
        status = note["status"]
        assert {"id", "created_at", "in_reply_to_id", "language", "url", "content"} <= set(status)
        assert {"visibility", "account", "mentions", "tags", "media_attachments"} <= set(status)
        account = status["account"]
        assert {"id", "username", "acct", "display_name", "followers_count", "url"} <= set(account)
        message = truth[status["id"]]
        assert account["acct"] == message.author.handle
        assert status["in_reply_to_id"] == message.in_reply_to
        assert status["content"].startswith("<p>")
        assert any(m["acct"] == "acme" for m in status["mentions"])
        assert 'class="u-url mention"' in status["content"]
    links = parse_links(resp.headers["Link"])
    assert f"max_id={ids[-1]}" in links["next"] and f"min_id={ids[0]}" in links["prev"]
    for link in links.values():
        assert "types%5B%5D=mention" in link and "limit=5" in link


async def test_mastodon_next_links_reach_the_end_without_overlap(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    released = sandbox.released("mastodon")
    expected = [
        str(NOTIFICATION_BASE + i) for i, m in enumerate(released) if sandbox.mastodon.is_mention(m)
    ][::-1]
    got: list[str] = []
    url: str | None = str(client.make_url("/mastodon/api/v1/notifications?limit=7"))
    async with aiohttp.ClientSession(headers=MASTODON) as http:
        while url is not None:
            async with http.get(url) as resp:
                page = await resp.json()
                got += [n["id"] for n in page]
                url = (
                    parse_links(resp.headers["Link"]).get("next")
                    if "Link" in resp.headers
                    else None
                )
    assert got == expected


async def test_mastodon_min_id_pages_forward(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    released = sandbox.released("mastodon")
    keys = [NOTIFICATION_BASE + i for i, m in enumerate(released) if sandbox.mastodon.is_mention(m)]
    params = {"min_id": str(keys[3]), "limit": "4"}
    page = await (
        await client.get("/mastodon/api/v1/notifications", params=params, headers=MASTODON)
    ).json()
    assert [int(n["id"]) for n in page] == keys[4:8][::-1]
    params = {"since_id": str(keys[3]), "limit": "4"}
    page = await (
        await client.get("/mastodon/api/v1/notifications", params=params, headers=MASTODON)
    ).json()
    assert [int(n["id"]) for n in page] == keys[-4:][::-1]


async def test_mastodon_tag_timeline_is_public_but_checks_a_sent_token(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    page = await (await client.get("/mastodon/api/v1/timelines/tag/acme")).json()
    expected = [
        m.external_id
        for m in sandbox.released("mastodon")
        if "acme" in tags_of(m.text) and m.raw["visibility"] == "public"  # TagFeed: public only
    ]
    assert [s["id"] for s in page] == expected[::-1][:20]
    assert all(any(t["name"] == "acme" for t in s["tags"]) for s in page)
    resp = await client.get(
        "/mastodon/api/v1/timelines/tag/acme", headers={"Authorization": "Bearer wrong"}
    )
    assert resp.status == 401
    assert await resp.json() == {"error": "The access token is invalid"}


async def test_mastodon_search_answers_newest_first_whatever_the_bounds(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    """StatusesSearchService: newest first; min_id/max_id become after:/before: dates of whole
    seconds, so min_id bounds the results and does not page forward; offset pages."""
    expected = [
        m.external_id
        for m in sandbox.released("mastodon")
        if "acme" in m.text.lower() and m.raw["visibility"] == "public"
    ][::-1]

    def second(status_id: str) -> int:
        return (int(status_id) >> 16) // 1000

    params = {"q": "Acme", "type": "statuses", "limit": "7"}
    resp = await client.get("/mastodon/api/v2/search", params=params, headers=MASTODON)
    body = await resp.json()
    assert set(body) == {"accounts", "statuses", "hashtags"}
    assert "Link" not in resp.headers  # search pages by offset or ids, not by Link
    assert [s["id"] for s in body["statuses"]] == expected[:7]
    page = await (
        await client.get(
            "/mastodon/api/v2/search", params={**params, "offset": "7"}, headers=MASTODON
        )
    ).json()
    assert [s["id"] for s in page["statuses"]] == expected[7:14]
    older = {**params, "max_id": expected[6]}
    page = await (
        await client.get("/mastodon/api/v2/search", params=older, headers=MASTODON)
    ).json()
    before = [i for i in expected if second(i) < second(expected[6])]
    assert [s["id"] for s in page["statuses"]] == before[:7]
    newer = {**params, "min_id": expected[10]}
    page = await (
        await client.get("/mastodon/api/v2/search", params=newer, headers=MASTODON)
    ).json()
    assert [s["id"] for s in page["statuses"]] == expected[:7], "the newest, not the next"
    anonymous = await client.get("/mastodon/api/v2/search", params={**params, "offset": "7"})
    assert anonymous.status == 401
    missing = await client.get("/mastodon/api/v2/search", headers=MASTODON)
    assert missing.status == 400 and "error" in await missing.json()
    refused = await client.get(
        "/mastodon/api/v2/search", params=params, headers={"Authorization": "Bearer wrong"}
    )
    assert refused.status == 401


async def test_mastodon_post_status_honours_idempotency(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    target = sandbox.released("mastodon")[-1].external_id
    form = {"status": "@someone thanks!", "in_reply_to_id": target, "visibility": "public"}
    headers = {**MASTODON, "Idempotency-Key": "reply-1"}
    first = await (
        await client.post("/mastodon/api/v1/statuses", data=form, headers=headers)
    ).json()
    again = await (
        await client.post("/mastodon/api/v1/statuses", data=form, headers=headers)
    ).json()
    assert first["id"] == again["id"] and first["in_reply_to_id"] == target
    assert first["account"]["acct"] == "acme"
    assert [(r.in_reply_to, r.text, r.idempotency_key) for r in sandbox.replies] == [
        (target, "@someone thanks!", "reply-1")
    ]
    blank = await client.post("/mastodon/api/v1/statuses", data={"status": " "}, headers=MASTODON)
    assert blank.status == 422 and "blank" in (await blank.json())["error"]
    lost = await client.post(
        "/mastodon/api/v1/statuses", data={"status": "x", "in_reply_to_id": "1"}, headers=MASTODON
    )
    assert lost.status == 404 and await lost.json() == {"error": "Record not found"}
    me = await (
        await client.get("/mastodon/api/v1/accounts/verify_credentials", headers=MASTODON)
    ).json()
    assert me["acct"] == "acme" and "source" in me


# -- Reddit -------------------------------------------------------------------------------------


async def test_reddit_token_endpoint_speaks_oauth2(client: TestClient[Any, Any]) -> None:
    url = "/reddit/api/v1/access_token"
    good = {"grant_type": "password", "username": "acme", "password": "sandbox-reddit-password"}
    body = await (await client.post(url, data=good, headers=basic(REDDIT_APP))).json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    app_only = await client.post(
        url, data={"grant_type": "client_credentials"}, headers=basic(REDDIT_APP)
    )
    assert "access_token" in await app_only.json()
    wrong = await client.post(url, data={**good, "password": "no"}, headers=basic(REDDIT_APP))
    assert wrong.status == 200 and await wrong.json() == {"error": "invalid_grant"}
    stranger = await client.post(url, data=good, headers=basic("someone:else"))
    assert stranger.status == 401
    assert await stranger.json() == {"message": "Unauthorized", "error": 401}
    odd = await client.post(url, data={"grant_type": "magic"}, headers=basic(REDDIT_APP))
    assert odd.status == 400


async def test_reddit_search_is_a_listing_paged_by_fullname(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    headers = {"Authorization": f"bearer {await reddit_token(client)}"}
    params = {"q": "acme", "sort": "new", "type": "link", "limit": "5", "raw_json": "1"}
    resp = await client.get("/reddit/search", params=params, headers=headers)
    assert int(resp.headers["X-Ratelimit-Used"]) >= 1
    assert float(resp.headers["X-Ratelimit-Remaining"]) < 1000
    assert 0 <= int(resp.headers["X-Ratelimit-Reset"]) <= 600
    listing = await resp.json()
    assert listing["kind"] == "Listing"
    assert {"after", "before", "dist", "children"} <= set(listing["data"])
    children = listing["data"]["children"]
    assert listing["data"]["dist"] == 5 and listing["data"]["before"] is None
    for child in children:
        assert child["kind"] == "t3"
        data = child["data"]
        assert {"id", "name", "author", "author_fullname", "title", "selftext"} <= set(data)
        assert {"created_utc", "permalink", "subreddit", "num_comments", "url"} <= set(data)
        assert data["name"] == f"t3_{data['id']}"
    times = [c["data"]["created_utc"] for c in children]
    assert times == sorted(times, reverse=True)
    names = [c["data"]["name"] for c in children]
    seen = list(names)
    after = listing["data"]["after"]
    assert after == names[-1]
    while after:
        page = await (
            await client.get("/reddit/search", params={**params, "after": after}, headers=headers)
        ).json()
        seen += [c["data"]["name"] for c in page["data"]["children"]]
        after = page["data"]["after"]
    posts = [m for m in sandbox.released("reddit") if m.external_id.startswith("t3_")]
    assert len(seen) == len(set(seen)) and set(seen) <= {m.external_id for m in posts}
    back = await (
        await client.get("/reddit/search", params={**params, "before": seen[7]}, headers=headers)
    ).json()
    assert [c["data"]["name"] for c in back["data"]["children"]] == seen[2:7]


async def test_reddit_escapes_text_without_raw_json(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    now = sandbox.reddit.now_utc()
    post = next(  # the newest post Reddit's search index has taken in
        m
        for i, m in reversed(list(enumerate(sandbox.released("reddit"))))
        if m.external_id.startswith("t3_") and sandbox.reddit.searchable(i, now)
    )
    post.raw["data"]["selftext"] = "Q&A: is <this> right?"
    headers = {"Authorization": f"bearer {await reddit_token(client)}"}
    sub = post.raw["data"]["subreddit"]
    params = {"q": f"subreddit:{sub}", "limit": "100"}
    raw = await (
        await client.get("/reddit/search", params={**params, "raw_json": "1"}, headers=headers)
    ).json()
    legacy = await (await client.get("/reddit/search", params=params, headers=headers)).json()

    def text_of(listing: dict[str, Any]) -> str:
        return next(
            c["data"]["selftext"]
            for c in listing["data"]["children"]
            if c["data"]["name"] == post.external_id
        )

    assert text_of(raw) == "Q&A: is <this> right?"
    assert text_of(legacy) == "Q&amp;A: is &lt;this&gt; right?"


async def test_reddit_comments_of_some_subreddits(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    headers = {"Authorization": f"bearer {await reddit_token(client)}"}
    listing = await (
        await client.get("/reddit/r/Acme+Frugal/comments", params={"limit": "100"}, headers=headers)
    ).json()
    children = listing["data"]["children"]
    expected = [
        m.external_id
        for m in sandbox.released("reddit")
        if m.external_id.startswith("t1_") and m.raw["data"]["subreddit"] in ("Acme", "Frugal")
    ][::-1]
    assert [c["data"]["name"] for c in children] == expected
    for child in children:
        assert child["kind"] == "t1"
        assert {"body", "link_id", "parent_id", "link_title", "permalink"} <= set(child["data"])
        assert child["data"]["link_id"].startswith("t3_")


async def test_reddit_comment_posting(client: TestClient[Any, Any], sandbox: Sandbox) -> None:
    headers = {"Authorization": f"bearer {await reddit_token(client)}"}
    target = next(m for m in sandbox.released("reddit")[::-1] if m.external_id.startswith("t1_"))
    form = {"thing_id": target.external_id, "text": "Sorry! DM us.", "api_type": "json"}
    body = await (await client.post("/reddit/api/comment", data=form, headers=headers)).json()
    assert body["json"]["errors"] == []
    [thing] = body["json"]["data"]["things"]
    assert thing["kind"] == "t1"
    assert thing["data"]["parent_id"] == target.external_id
    assert thing["data"]["link_id"] == target.raw["data"]["link_id"]
    assert [(r.external_id, r.in_reply_to) for r in sandbox.replies] == [
        (thing["data"]["name"], target.external_id)
    ]
    empty = await (
        await client.post("/reddit/api/comment", data={**form, "text": ""}, headers=headers)
    ).json()
    assert empty["json"]["errors"][0][0] == "NO_TEXT"
    app_token = await reddit_token(client, grant_type="client_credentials")
    refused = await client.post(
        "/reddit/api/comment", data=form, headers={"Authorization": f"bearer {app_token}"}
    )
    assert (await refused.json())["json"]["errors"][0][0] == "USER_REQUIRED"
    lost = await client.post(
        "/reddit/api/comment", data={**form, "thing_id": "t1_zzzzzzz"}, headers=headers
    )
    assert (await lost.json())["json"]["errors"][0][0] == "NO_THING_ID"
    assert len(sandbox.replies) == 1


async def test_reddit_expired_token_gets_a_401(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    headers = {"Authorization": f"bearer {await reddit_token(client)}"}
    assert (await client.get("/reddit/api/v1/me", headers=headers)).status == 200
    sandbox.reddit.expire_tokens()
    resp = await client.get("/reddit/api/v1/me", headers=headers)
    assert resp.status == 401
    assert "invalid_token" in resp.headers["WWW-Authenticate"]
    assert await resp.json() == {"message": "Unauthorized", "error": 401}


# -- faults -------------------------------------------------------------------------------------

SOME_FAULTS = Faults(
    seed=3,
    rate_limit=0.1,
    server_error=0.1,
    truncated=0.05,
    html=0.05,
    bad_envelope=0.05,
    slow=0.05,
    slow_delay_s=0.001,
    bad_item=0.05,
)


async def run_requests(faults: Faults) -> tuple[list[tuple[int, str]], list[tuple[str, str]]]:
    sandbox = Sandbox(SEED, messages=400, released=300, faults=faults)
    answers: list[tuple[int, str]] = []
    async with TestClient(TestServer(make_app(sandbox), host="127.0.0.1")) as client:
        for i in range(40):
            resp = await client.get(MENTIONS, params={"max_results": str(5 + i % 5)}, headers=X_APP)
            answers.append((resp.status, (await resp.read()).decode()[:60]))
            resp = await client.get("/mastodon/api/v1/timelines/tag/acme")
            answers.append((resp.status, (await resp.read()).decode()[:60]))
    events = [(e.platform, e.kind) for e in sandbox.faults.events]
    return answers, events


async def test_faults_are_reproducible_from_their_seed() -> None:
    first = await run_requests(SOME_FAULTS)
    second = await run_requests(SOME_FAULTS)
    other = await run_requests(Faults(**{**SOME_FAULTS.__dict__, "seed": 4}))
    assert first == second
    assert first[1] != other[1]
    kinds = {kind for _, kind in first[1]}
    assert {"rate_limit", "server_error", "truncated", "html", "bad_envelope"} <= kinds


def test_a_rate_limit_fault_is_a_burst() -> None:
    plan = FaultPlan(Faults(seed=1, rate_limit=0.1, rate_limit_burst=3))
    kinds = [plan.decide("x", "/2/tweets")[1] for _ in range(300)]
    starts = [i for i, k in enumerate(kinds) if k == "rate_limit" and (i == 0 or kinds[i - 1] != k)]
    assert starts
    for start in starts:
        assert kinds[start : start + 3] == ["rate_limit"] * 3


def test_a_rate_limit_burst_ends_when_its_window_resets() -> None:
    """A client that waits for the reset is served; one that hammers gets the whole burst."""
    plan = FaultPlan(Faults(seed=1, rate_limit=1.0, rate_limit_burst=3, rate_limit_reset_s=30))
    assert plan.decide("x", "/2/tweets", now=1000.0)[1] == "rate_limit"
    assert plan.reset_at("x") == 1030.0
    assert plan.decide("x", "/2/tweets", now=1010.0)[1] == "rate_limit"  # too early
    # Past the reset the burst is over (this plan's dice still say rate_limit: a new one).
    assert plan.decide("x", "/2/tweets", now=1031.0)[1] == "rate_limit"
    assert plan.reset_at("x") == 1061.0, "a new burst with its own window"

    def longest_run(kinds: list[str | None]) -> int:
        run = best = 0
        for k in kinds:
            run = run + 1 if k == "rate_limit" else 0
            best = max(best, run)
        return best

    settings = Faults(seed=1, rate_limit=0.02, rate_limit_burst=3, rate_limit_reset_s=30)
    patient = FaultPlan(settings)  # asks again only after each reset
    hasty = FaultPlan(settings)  # asks again at once
    waited = [patient.decide("x", "/2/tweets", now=1000.0 + 40 * i)[1] for i in range(2000)]
    hurried = [hasty.decide("x", "/2/tweets", now=1000.0 + 0.01 * i)[1] for i in range(2000)]
    assert "rate_limit" in waited
    assert longest_run(waited) < 3  # (two dice picks may follow each other)
    assert longest_run(hurried) >= 3  # whole bursts


def test_fault_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(server_error=1.5)
    with pytest.raises(ValueError, match="more than 1"):
        Faults(rate_limit=0.6, server_error=0.6)
    with pytest.raises(ValueError, match="unknown fault"):
        FaultPlan(Faults()).inject("x", "gremlins")  # type: ignore[arg-type]


def test_bad_items_are_bad_every_time() -> None:
    plan = FaultPlan(Faults(seed=9, bad_item=0.3))
    ids = [str(1000 + i) for i in range(1000)]
    first = [plan.item_is_bad("x", i) for i in ids]
    assert first == [FaultPlan(Faults(seed=9, bad_item=0.3)).item_is_bad("x", i) for i in ids]
    assert 200 < sum(first) < 400


async def test_an_injected_rate_limit_says_when_to_come_back(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    for platform, path, headers, reset in [
        ("x", MENTIONS, X_APP, "x-rate-limit-reset"),
        ("mastodon", "/mastodon/api/v1/notifications", MASTODON, "X-RateLimit-Reset"),
    ]:
        sandbox.inject(platform, "rate_limit")  # type: ignore[arg-type]
        resp = await client.get(path, headers=headers)
        assert resp.status == 429
        wait = retry_after_s(resp.headers)
        assert wait is not None and 25 <= wait <= 31
        assert resp.headers[reset]
        event = sandbox.faults.last(platform, "rate_limit")
        assert event is not None and event.headers[reset] == resp.headers[reset]
        assert (await client.get(path, headers=headers)).status == 200
    assert await (await client.get(MENTIONS, headers={})).json() == {
        "title": "Unauthorized",
        "type": "about:blank",
        "status": 401,
        "detail": "Unauthorized",
    }
    sandbox.inject("x", "rate_limit")
    body = await (await client.get(MENTIONS, headers=X_APP)).json()
    assert body == {
        "title": "Too Many Requests",
        "detail": "Too Many Requests",
        "type": "about:blank",
        "status": 429,
    }
    token = await reddit_token(client)
    sandbox.inject("reddit", "rate_limit", path_prefix="/search")
    resp = await client.get(
        "/reddit/search", params={"q": "acme"}, headers={"Authorization": f"bearer {token}"}
    )
    assert resp.status == 429 and resp.headers["X-Ratelimit-Remaining"] == "0.0"
    assert await resp.json() == {"message": "Too Many Requests", "error": 429}
    assert 29 <= int(resp.headers["X-Ratelimit-Reset"]) <= 30


async def test_broken_answers_look_broken(client: TestClient[Any, Any], sandbox: Sandbox) -> None:
    sandbox.inject("x", "truncated")
    text = await (await client.get(MENTIONS, headers=X_APP)).text()
    with pytest.raises(ValueError):
        json.loads(text)
    sandbox.inject("mastodon", "html")
    resp = await client.get("/mastodon/api/v1/timelines/tag/acme")
    assert resp.status == 200 and resp.content_type == "text/html" and "Link" not in resp.headers
    sandbox.inject("x", "bad_envelope")
    body = await (await client.get(MENTIONS, headers=X_APP)).json()
    assert "data" not in body and "meta" not in body
    sandbox.inject("mastodon", "bad_envelope")
    body = await (await client.get("/mastodon/api/v1/timelines/tag/acme")).json()
    assert isinstance(body, dict)
    sandbox.inject("mastodon", "server_error")
    assert (await client.get("/mastodon/api/v1/timelines/tag/acme")).status >= 500
    assert [e.kind for e in sandbox.faults.events] == [
        "truncated",
        "html",
        "bad_envelope",
        "bad_envelope",
        "server_error",
    ]
    assert sandbox.served == {"x": {}, "mastodon": {}, "reddit": {}}, "broken answers serve nothing"


async def test_a_timeout_answers_after_the_client_gave_up(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    sandbox.inject("x", "timeout")
    with pytest.raises(TimeoutError):
        await client.get(MENTIONS, headers=X_APP, timeout=aiohttp.ClientTimeout(total=0.2))
    assert sandbox.served["x"] == {}
    assert (await client.get(MENTIONS, headers=X_APP)).status == 200


async def test_a_bad_item_is_served_broken_and_recorded(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    sandbox.inject("x", "bad_item")
    params = {"max_results": "5", "tweet.fields": "created_at"}
    first = (await (await client.get(MENTIONS, params=params, headers=X_APP)).json())["data"]
    [broken] = sandbox.corrupted["x"]

    def is_broken(tweet: dict[str, Any]) -> bool:
        return "id" not in tweet or tweet["text"] is None or tweet["created_at"] == "last Tuesday"

    assert sum(map(is_broken, first)) == 1
    assert len(sandbox.served["x"]) == 4 and broken not in sandbox.served["x"]
    again = (await (await client.get(MENTIONS, params=params, headers=X_APP)).json())["data"]
    assert again == first, "a bad item stays bad"
    assert sandbox.corrupted["x"] == [broken, broken]
    assert set(sandbox.served["x"].values()) == {2}


# -- records, release and serving -------------------------------------------------------------


def test_messages_keep_the_traffic_generators_ids_and_order() -> None:
    sandbox = Sandbox(SEED, messages=300)
    truth = [
        m for m in TrafficGenerator(SEED).messages(300) if m.channel in ("x", "mastodon", "reddit")
    ]
    assert sandbox.release(20) == truth[:20]
    reddit = sandbox.release(5, "reddit")
    assert reddit == [m for m in truth[20:] if m.channel == "reddit"][:5]
    rest = sandbox.release(10)
    assert not {m.external_id for m in rest} & {m.external_id for m in reddit}
    assert rest == [m for m in truth[20:] if m not in reddit][:10]
    assert sandbox.pending() == len(truth) - 35
    sandbox.release_all()
    assert sandbox.pending() == 0
    assert [m.external_id for m in sandbox.released("x")] == [
        m.external_id for m in truth if m.channel == "x"
    ]


def test_release_rate_follows_the_clock() -> None:
    now = [1000.0]
    sandbox = Sandbox(SEED, messages=300, release_per_s=2.0, clock=lambda: now[0])
    sandbox.tick()
    assert sandbox.pending() == len(sandbox._order)
    now[0] += 5.0
    sandbox.tick()
    assert len(sandbox._order) - sandbox.pending() == 10


async def test_served_records_count_each_delivery(
    client: TestClient[Any, Any], sandbox: Sandbox
) -> None:
    page = await (await client.get(MENTIONS, params={"max_results": "5"}, headers=X_APP)).json()
    await client.get(MENTIONS, params={"max_results": "5"}, headers=X_APP)
    assert sandbox.served_ids("x") == [t["id"] for t in page["data"]]
    assert set(sandbox.served["x"].values()) == {2}
    state = await (await client.get("/")).json()
    assert state["x"]["served"] == 5 and state["x"]["requests"] == 2


async def test_enforced_rate_limits_refuse_past_the_window() -> None:
    sandbox = Sandbox(SEED, messages=100, enforce_rate_limits=True)
    async with TestClient(TestServer(make_app(sandbox), host="127.0.0.1")) as client:
        statuses = [(await client.get("/x/2/users/me", headers=X_USER)).status for _ in range(76)]
    assert statuses[:75] == [200] * 75 and statuses[75] == 429
    assert sandbox.faults.events == [], "the platform's own limit is not a fault"


async def test_serve_listens_on_a_port_and_stops() -> None:
    sandbox = Sandbox(SEED, messages=100, released=50)
    runner = await serve(sandbox, "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/") as resp:
            state = await resp.json()
    finally:
        await runner.cleanup()
    assert (
        state["x"]["released"] + state["mastodon"]["released"] + state["reddit"]["released"] == 50
    )


def test_traffic_is_dated_up_to_now_and_the_sandbox_says_what_it_accepts(
    tmp_path: Path,
) -> None:
    """A fresh sandbox's traffic lies in the past, its newest a moment ago (not in March 2026,
    not in the future), and it prints the credentials and ids it accepts.

    The traffic follows the hours of the day: in its quiet night hours the newest message can
    be over an hour old, and then the traffic is as recent as it can be, its start two
    minutes later would put a message past now. Checked at now and at two fixed night
    moments (so the test does not depend on when it runs)."""
    import subprocess
    import sys
    from datetime import UTC, datetime, timedelta

    from socialcrm.demo import free_port
    from socialcrm.sandbox.server import RECENT_MARGIN, Sandbox, start_ending_before
    from socialcrm.sandbox.traffic import TrafficGenerator

    def newest(start: datetime) -> datetime:
        return max(m.created_at for m in TrafficGenerator(7, start=start).messages(1500))

    moments = [datetime.now(UTC), datetime(2026, 12, 7, 1, 24, tzinfo=UTC)]
    # A start rounded down to the minute once ended in the future here: an earlier start can
    # end later, so every start is checked before it is returned.
    moments.append(datetime(2026, 12, 7, 1, 39, 57, 833739, tzinfo=UTC))
    for now in moments:
        start = start_ending_before(now, 7, 1500)
        box = Sandbox(7, messages=1500, start=start)
        dates = [m.created_at for ms in box.messages.values() for m in ms]
        assert max(dates) <= now, now
        if now - max(dates) >= timedelta(hours=1):
            assert newest(start + timedelta(minutes=2)) > now - RECENT_MARGIN, now
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "socialcrm",
            "sandbox",
            "--port",
            str(free_port()),
            "--messages",
            "50",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(13)]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    text = "".join(lines)
    creds = box.credentials
    for shown in (
        creds.x_bearer_token,
        creds.mastodon_token,
        creds.reddit_client_secret,
        box.slack.signing_secret,
        "C0APPROVALS",
        "U0DANA",
        "1585736014429175808",
    ):
        assert shown in text, shown
