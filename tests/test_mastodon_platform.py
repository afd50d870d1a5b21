"""The Mastodon connector against a stand-in that behaves as Mastodon documents: scopes, the
notification policy, search ordering, reply visibility, the length count, edits and deletions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.mastodon import MastodonConnector, countable_length
from socialcrm.connector import Batch, ForbiddenError, InboundMessage, OutboundReply
from socialcrm.db import Store
from socialcrm.models import Message, Reply, Ticket
from socialcrm.pipeline import Pipeline
from socialcrm.sandbox.server import Sandbox
from tests.connector_suite import drain, ids
from tests.mastodon_spec import entity, problems, request
from tests.test_connectors import QUERY, SEED, MastodonHarness, MastodonSearchHarness

#: The scopes the README asks for, without ``read:search``.
NO_SEARCH = {"read:notifications", "read:statuses", "write:statuses"}


@pytest.fixture
async def mastodon() -> AsyncIterator[MastodonHarness]:
    async with MastodonHarness.running() as harness:
        yield harness


@pytest.fixture
async def searching() -> AsyncIterator[MastodonSearchHarness]:
    async with MastodonSearchHarness.running() as harness:
        yield harness


def released_mentions(harness: MastodonHarness) -> list[InboundMessage]:
    standin = harness.sandbox.mastodon
    return [m for m in harness.sandbox.released("mastodon") if standin.is_mention(m)]


# -- 4: read:search --------------------------------------------------------------------------


async def test_search_without_read_search_fails_that_stream_only(
    mastodon: MastodonHarness,
) -> None:
    mastodon.sandbox.mastodon.grant("no-search-token", NO_SEARCH)
    await mastodon.publish(6)
    connector = mastodon.connector(access_token="no-search-token", search=[QUERY])
    batch = await connector.fetch(None)
    error = batch.stream_errors.get(f"search:{QUERY}")
    assert isinstance(error, ForbiddenError)
    assert "outside the authorized scopes" in str(error)
    assert set(batch.stream_errors) == {f"search:{QUERY}"}
    mentions = {m.external_id for m in released_mentions(mastodon)}
    assert mentions and mentions <= set(ids(batch.messages)), "the mentions still arrive"


async def test_a_token_without_a_scope_is_refused_as_mastodon_refuses_it(
    mastodon: MastodonHarness,
) -> None:
    mastodon.sandbox.mastodon.grant("search-only", {"read:search"})
    await mastodon.publish(2)
    connector = mastodon.connector(access_token="search-only", hashtags=[])
    with pytest.raises(ForbiddenError):  # notifications need read:notifications; not a 401
        await connector.fetch(None)


# -- 5: replies keep the original's visibility -------------------------------------------------


@pytest.mark.parametrize(
    ("original", "configured", "expected"),
    [
        ("direct", "public", "direct"),
        ("private", "public", "private"),
        ("unlisted", "public", "unlisted"),
        ("public", "public", "public"),
        ("public", "unlisted", "unlisted"),
        ("private", "direct", "direct"),
        (None, "public", "direct"),
    ],
)
async def test_a_reply_is_never_wider_than_what_it_answers(
    mastodon: MastodonHarness, original: str | None, configured: str, expected: str
) -> None:
    [target_id] = await mastodon.publish(1)
    target = mastodon.sandbox.mastodon._lookup(target_id)
    assert target is not None
    raw = dict(target.raw)
    if original is None:
        raw.pop("visibility", None)
    else:
        raw["visibility"] = original
    acct = str(target.author.handle)
    connector = mastodon.connector(reply_visibility=configured)
    reply = OutboundReply(
        reply_id=7, channel="mastodon", text="We are on it.", in_reply_to=target_id, original=raw
    )
    receipt = await connector.send(reply)
    posted = mastodon.sandbox.mastodon.posted[receipt.external_id]
    assert posted["visibility"] == expected
    # A direct status reaches only the accounts it mentions: the customer is one of them.
    assert [m["acct"] for m in posted["mentions"]] == [acct]


async def test_a_reply_to_a_direct_mention_is_checked_before_approval() -> None:
    config = MastodonConnector.Config(base_url="https://social.example", access_token="t")
    reply = OutboundReply(
        reply_id=1,
        channel="mastodon",
        text="Sorry about that.",
        in_reply_to="1",
        original={"visibility": "direct", "account": {"acct": "ana@else.example"}},
    )
    issues = MastodonConnector.check_reply(config, reply)
    assert [i.blocking for i in issues] == [False]
    assert "sent as direct" in issues[0].reason
    nobody = reply.model_copy(update={"original": {"visibility": "direct"}})
    assert any(i.blocking for i in MastodonConnector.check_reply(config, nobody))


# -- the length, counted as Mastodon counts it ---------------------------------------------------


def test_links_count_23_and_mentions_their_user_part() -> None:
    long_link = "https://example.com/" + "a" * 200
    assert countable_length(long_link) == 23
    assert countable_length("@ana@a-very-long-instance.example hi") == len("@ana hi")
    assert countable_length("mail ana@example.com") == len("mail ana@example.com")


async def test_the_length_rule_matches_the_server(mastodon: MastodonHarness) -> None:
    [target_id] = await mastodon.publish(1)
    config = mastodon.connector().config
    link = "https://example.com/" + "p" * 300
    fits = OutboundReply(
        reply_id=2,
        channel="mastodon",
        text=f"See {link} " + "x" * 400,
        in_reply_to=target_id,
        original={"visibility": "public"},
    )
    assert not [i for i in MastodonConnector.check_reply(config, fits) if i.blocking]
    await mastodon.connector().send(fits)  # the server takes what the check lets through
    too_long = fits.model_copy(update={"reply_id": 3, "text": "x" * 501})
    [issue] = MastodonConnector.check_reply(config, too_long)
    assert issue.blocking and "limit is 500" in issue.reason


async def test_an_emoji_sequence_counts_as_one_character(mastodon: MastodonHarness) -> None:
    family = "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # ZWJ sequence
    assert len(family) == 7 and countable_length(family) == 1
    [target_id] = await mastodon.publish(1)
    config = mastodon.connector().config
    # 500 grapheme clusters, 560 code points: Mastodon takes it.
    at_limit = OutboundReply(
        reply_id=4,
        channel="mastodon",
        text="x" * 490 + family * 10,
        in_reply_to=target_id,
        original={"visibility": "public"},
    )
    assert countable_length(at_limit.text) == 500
    assert not [i for i in MastodonConnector.check_reply(config, at_limit) if i.blocking]
    await mastodon.connector().send(at_limit)
    over = at_limit.model_copy(update={"reply_id": 5, "text": at_limit.text + family})
    [issue] = MastodonConnector.check_reply(config, over)
    assert issue.blocking and "501 characters" in issue.reason


# -- 7: search returns newest first ------------------------------------------------------------


async def test_search_loses_nothing_when_pages_arrive_between_polls(
    searching: MastodonSearchHarness,
) -> None:
    await searching.publish(3)
    connector = searching.connector(max_pages=1)
    _, batch = await drain(connector, None)
    cursor = batch.cursor
    published = await searching.publish(searching.page_size * 4 + 2)
    got: list[InboundMessage] = []
    for _ in range(20):
        batch = await connector.fetch(cursor)
        got += batch.messages
        cursor = batch.cursor
        if not batch.more:
            break
    assert len(ids(got)) == len(set(ids(got))), "a status came twice"
    assert sorted(ids(got)) == sorted(published)
    again, _ = await drain(connector, cursor)
    assert again == []


# -- 8: the notification policy ----------------------------------------------------------------


async def test_filtered_private_mentions_are_read(mastodon: MastodonHarness) -> None:
    published = await mastodon.publish(4)
    standin = mastodon.sandbox.mastodon
    hidden = [m for m in released_mentions(mastodon)][:2]
    for message in hidden:
        message.raw["visibility"] = "direct"
    messages, _ = await drain(mastodon.connector(), None)
    assert {m.external_id for m in hidden} <= set(ids(messages))
    assert sorted(ids(messages)) == sorted(published)
    # Without include_filtered, Mastodon 4.3+ keeps them out of the list.
    left, _ = await drain(mastodon.connector(include_filtered=False), None)
    assert not {m.external_id for m in hidden} & set(ids(left))
    standin.policy["for_private_mentions"] = "drop"
    dropped, _ = await drain(mastodon.connector(), None)
    assert not {m.external_id for m in hidden} & set(ids(dropped))


# -- the documented shapes ---------------------------------------------------------------------


async def test_every_request_and_answer_is_checked(mastodon: MastodonHarness) -> None:
    await mastodon.publish(8)
    connector = mastodon.connector(search=[QUERY], limit=80)
    messages, _ = await drain(connector, None)
    [target] = messages[:1]
    await connector.send(
        OutboundReply(
            reply_id=1,
            channel="mastodon",
            text="Hi",
            in_reply_to=target.external_id,
            original=target.raw,
        )
    )
    assert mastodon.spec is not None
    assert mastodon.spec.checked >= 4 and mastodon.spec.violations == []


def test_a_wrong_field_name_is_caught(mastodon_status: dict[str, Any]) -> None:
    assert problems(entity("Status"), mastodon_status) == []
    renamed = dict(mastodon_status)
    renamed["visibilty"] = renamed.pop("visibility")
    assert problems(entity("Status"), renamed) == ["(top): 'visibility' is a required property"]
    account = dict(mastodon_status["account"])
    account["follower_count"] = account.pop("followers_count")
    assert problems(entity("Status"), {**mastodon_status, "account": account}) == [
        "account: 'followers_count' is a required property"
    ]
    assert problems(entity("Error"), {"message": "Record not found"}) == [
        "(top): 'error' is a required property"
    ]


@pytest.mark.parametrize(
    ("endpoint", "params", "found"),
    [
        ("notifications", {"types": ["mention"]}, "Additional properties"),
        ("notifications", {"limit": ["81"]}, "does not match"),
        ("search", {"q": ["acme"], "limit": ["41"]}, "does not match"),
        ("search", {"q": ["acme"], "offset": ["20"]}, "'type' is a dependency of 'offset'"),
        ("post_status", {"status": ["hi"], "visibility": ["followers"]}, "is not one of"),
    ],
)
def test_a_request_the_docs_do_not_allow_is_caught(
    endpoint: str, params: dict[str, list[str]], found: str
) -> None:
    [problem] = problems(request(endpoint), params)
    assert found in problem


@pytest.fixture
def mastodon_status() -> dict[str, Any]:
    """A status as the stand-in serves it."""
    sandbox = Sandbox(SEED, messages=50)
    [message] = sandbox.release(1, "mastodon")
    return sandbox.mastodon.status(message)


# -- 10: edits and deletions -------------------------------------------------------------------


async def counts(store: Store) -> tuple[int, int, int]:
    async with store.reader() as s:
        return (
            (await s.execute(sa.select(sa.func.count()).select_from(Message))).scalar_one(),
            (await s.execute(sa.select(sa.func.count()).select_from(Ticket))).scalar_one(),
            (await s.execute(sa.select(sa.func.count()).select_from(Reply))).scalar_one(),
        )


async def stored(store: Store, external_id: str) -> Message:
    async with store.reader() as s:
        q = sa.select(Message).where(Message.external_id == external_id)
        return (await s.execute(q)).scalar_one()


async def test_edits_and_deletions_update_the_stored_message(
    mastodon: MastodonHarness, pipeline: Pipeline, store: Store
) -> None:
    await mastodon.publish(6)
    connector = mastodon.connector()
    messages, batch = await drain(connector, None)
    await pipeline.ingest(Batch(messages=messages, cursor=batch.cursor), "social")
    before = await counts(store)
    edited, deleted = messages[0].external_id, messages[1].external_id
    standin = mastodon.sandbox.mastodon
    standin.edit(edited, "@acme never mind, the parcel came today. Thanks!")
    standin.delete(deleted)
    batch = await connector.fetch(batch.cursor)
    assert {m.external_id for m in batch.messages} == {edited, deleted}
    await pipeline.ingest(batch, "social")
    assert await counts(store) == before, "no second message, ticket or draft"
    now = await stored(store, edited)
    assert now.text == "@acme never mind, the parcel came today. Thanks!"
    assert now.raw["edited_at"]
    gone = await stored(store, deleted)
    assert gone.raw["deleted"] is True and gone.text == messages[1].text
    again = await connector.fetch(batch.cursor)
    assert again.messages == [], "an edit or a deletion comes once"
