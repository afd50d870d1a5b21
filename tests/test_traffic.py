"""The traffic generator: deterministic, realistic, and true to each channel's shape."""

from __future__ import annotations

import csv
import itertools
import re
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

import socialcrm
from socialcrm.connector import InboundMessage
from socialcrm.sandbox.traffic import (
    CHANNEL_SHARES,
    CUSTOMER_COLUMNS,
    DEFAULT_START,
    KIND_SHARES,
    Mention,
    TrafficGenerator,
    x_weighted_length,
)

EXAMPLES = Path(socialcrm.__file__).parent / "examples"
EXAMPLE_SEED = 7
EXAMPLE_MESSAGES = 300
EXAMPLE_CUSTOMERS = 30

MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+\.[a-z]+>$")
EMOJI_ONLY = re.compile(r"^[^\w\s@#?.+]+$")


@pytest.fixture(scope="module")
def mentions() -> list[Mention]:
    return list(TrafficGenerator(7).mentions(5000))


@pytest.fixture(scope="module")
def messages(mentions: list[Mention]) -> list[InboundMessage]:
    return [m.message for m in mentions]


def by_channel(messages: list[InboundMessage], channel: str) -> list[InboundMessage]:
    return [m for m in messages if m.channel == channel]


# -- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_the_same_bytes() -> None:
    first = [m.model_dump_json() for m in TrafficGenerator(11).messages(800)]
    second = [m.model_dump_json() for m in TrafficGenerator(11).messages(800)]
    assert first == second


def test_every_call_replays_from_the_start() -> None:
    gen = TrafficGenerator(11)
    assert [m.model_dump_json() for m in gen.messages(300)] == [
        m.model_dump_json() for m in gen.messages(300)
    ]


def test_a_shorter_run_is_a_prefix_of_a_longer_one() -> None:
    short = [m.model_dump_json() for m in TrafficGenerator(5).messages(200)]
    long = [m.model_dump_json() for m in TrafficGenerator(5).messages(600)]
    assert long[:200] == short


def test_different_seeds_differ() -> None:
    a = [m.text for m in TrafficGenerator(1).messages(200)]
    b = [m.text for m in TrafficGenerator(2).messages(200)]
    assert a != b
    assert len(set(a) & set(b)) < 100


def test_brand_and_handle_are_used() -> None:
    msgs = list(TrafficGenerator(3, brand="Globex", brand_handle="globex").messages(600))
    x_texts = [m.text for m in msgs if m.channel == "x"]
    assert sum("@globex" in t for t in x_texts) > len(x_texts) // 2
    assert not any("@acme" in m.text.lower() or "Acme" in m.text for m in msgs)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="mean_gap_s"):
        TrafficGenerator(1, mean_gap_s=0)
    with pytest.raises(ValueError, match="brand"):
        TrafficGenerator(1, brand=" ")


# -- time ----------------------------------------------------------------------------------


def test_time_moves_forward_from_start(messages: list[InboundMessage]) -> None:
    times = [m.created_at for m in messages]
    assert all(t.tzinfo is not None for t in times)
    assert times[0] > DEFAULT_START
    assert all(a < b for a, b in itertools.pairwise(times))


def test_gaps_average_the_mean_and_follow_the_day() -> None:
    start = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    msgs = list(TrafficGenerator(9, start=start, mean_gap_s=60.0).messages(14_400))
    span_s = (msgs[-1].created_at - start).total_seconds()
    assert 0.8 * 60 < span_s / len(msgs) < 1.2 * 60
    by_hour = Counter(m.created_at.hour for m in msgs)
    afternoon = sum(by_hour[h] for h in range(12, 19))
    night = sum(by_hour[h] for h in range(0, 7))
    assert afternoon > 2 * night


# -- ids and threads -----------------------------------------------------------------------


def test_external_ids_are_unique_per_channel(messages: list[InboundMessage]) -> None:
    seen = Counter((m.channel, m.external_id) for m in messages)
    assert seen.most_common(1)[0][1] == 1


def test_replies_point_at_earlier_messages_of_the_same_channel(
    messages: list[InboundMessage],
) -> None:
    earlier: dict[str, set[str]] = defaultdict(set)
    replies = 0
    for m in messages:
        if m.in_reply_to is not None:
            replies += 1
            assert m.in_reply_to in earlier[m.channel], m
        if m.references:
            assert set(m.references) <= earlier[m.channel]
        if m.channel in ("x", "mastodon") and m.conversation_id != m.external_id:
            assert m.conversation_id in earlier[m.channel]
        earlier[m.channel].add(m.external_id)
    assert replies > len(messages) // 10


def test_long_threads_from_one_author_exist(messages: list[InboundMessage]) -> None:
    threads: Counter[tuple[str, str, str]] = Counter()
    for m in messages:
        if m.channel in ("x", "mastodon") and m.conversation_id:
            threads[(m.channel, m.conversation_id, m.author.user_id or "")] += 1
    assert max(threads.values()) >= 4
    assert sum(1 for n in threads.values() if n >= 3) >= 10


def test_email_threads_carry_references(messages: list[InboundMessage]) -> None:
    replies = [m for m in by_channel(messages, "email") if m.in_reply_to]
    assert len(replies) > 50
    for m in replies:
        assert m.references[-1] == m.in_reply_to
        assert m.subject is not None
        assert m.subject.startswith("Re: ")
    assert any(len(m.references) >= 3 for m in replies)
    assert any(re.search(r"\[#\d+\]", m.subject or "") for m in replies)


# -- authors -------------------------------------------------------------------------------


def test_repeat_authors_keep_their_identity(mentions: list[Mention]) -> None:
    identities: dict[tuple[int, str], set[str]] = defaultdict(set)
    for m in mentions:
        identities[(m.author_id, m.message.channel)].add(m.message.author.model_dump_json())
    assert all(len(v) == 1 for v in identities.values())
    per_author = Counter(m.author_id for m in mentions)
    assert sum(1 for n in per_author.values() if n > 1) > 300
    assert per_author.most_common(1)[0][1] >= 20
    # Zipf-like: a few write a lot, most write once.
    assert sum(1 for n in per_author.values() if n == 1) > len(per_author) // 3


def test_handles_and_user_ids_belong_to_one_person(messages: list[InboundMessage]) -> None:
    owner: dict[tuple[str, str], str] = {}
    for m in messages:
        a = m.author
        for key in (a.user_id, a.handle, a.email):
            if key is not None:
                who = a.model_dump_json()
                assert owner.setdefault((m.channel, key.lower()), who) == who


def test_some_people_use_two_channels(mentions: list[Mention]) -> None:
    authors: dict[int, dict[str, InboundMessage]] = defaultdict(dict)
    for m in mentions:
        authors[m.author_id][m.message.channel] = m.message
    same_email = same_handle = 0
    for channels in authors.values():
        if "email" in channels and "webhook" in channels:
            email = channels["email"].author.email
            same_email += email is not None and email == channels["webhook"].author.email
        if "x" in channels:
            x_handle = (channels["x"].author.handle or "").lower()
            for other in ("mastodon", "reddit"):
                if other in channels:
                    handle = (channels[other].author.handle or "").lower()
                    same_handle += handle.split("@")[0] == x_handle
    assert same_email >= 1
    assert same_handle >= 2


def test_followers_are_heavy_tailed(messages: list[InboundMessage]) -> None:
    social = [m.author for m in messages if m.channel in ("x", "mastodon")]
    followers = [a.followers for a in social if a.followers is not None]
    assert len(followers) == len(social)
    assert statistics.median(followers) < 500
    assert max(followers) > 50_000
    assert any(a.verified for a in social)
    assert sum(a.verified for a in social) < len(social) // 10


# -- channel shapes ------------------------------------------------------------------------


def test_x_messages_look_like_x(messages: list[InboundMessage]) -> None:
    xs = by_channel(messages, "x")
    for m in xs:
        assert len(m.text) <= 280
        assert x_weighted_length(m.text) <= 280
        assert m.external_id.isdigit()
        assert m.author.user_id is not None
        assert m.author.user_id.isdigit()
        assert re.fullmatch(r"\w{1,15}", m.author.handle or "")
        assert m.lang is not None
        assert m.conversation_id is not None
        assert m.url == f"https://x.com/{m.author.handle}/status/{m.external_id}"
        assert m.raw["id"] == m.external_id
    ids = [int(m.external_id) for m in xs]
    assert ids == sorted(ids)
    assert sum("@acme" in m.text.lower() for m in xs) > 0.7 * len(xs)
    assert any(not m.direct for m in xs)
    emoji_only = [m for m in xs if EMOJI_ONLY.match(m.text)]
    assert emoji_only
    assert all(m.lang == "und" for m in emoji_only)


def test_mastodon_messages_look_like_mastodon(messages: list[InboundMessage]) -> None:
    toots = by_channel(messages, "mastodon")
    for m in toots:
        assert m.external_id.isdigit()
        assert re.fullmatch(r"\w+@[a-z0-9.-]+\.[a-z]+", m.author.handle or "")
        local, _, instance = (m.author.handle or "").partition("@")
        assert m.url == f"https://{instance}/@{local}/{m.external_id}"
        assert "<p>" in m.raw["content"]
        assert m.author.email is None
    ids = [int(m.external_id) for m in toots]
    assert ids == sorted(ids)
    assert {m.lang for m in toots} >= {"en", None, "de"}


def test_reddit_messages_look_like_reddit(messages: list[InboundMessage]) -> None:
    posts = comments = 0
    for m in by_channel(messages, "reddit"):
        assert re.fullmatch(r"t[13]_[0-9a-z]+", m.external_id)
        assert m.conversation_id is not None
        assert m.conversation_id.startswith("t3_")
        assert (m.author.user_id or "").startswith("t2_")
        assert m.lang is None
        assert (m.url or "").startswith("https://www.reddit.com/r/")
        if m.external_id.startswith("t3_"):
            posts += 1
            assert m.conversation_id == m.external_id
            assert m.subject
        else:
            comments += 1
            assert m.in_reply_to is None or m.in_reply_to[:3] in ("t1_", "t3_")
    assert posts > 50
    assert comments > posts


def test_emails_look_like_emails(messages: list[InboundMessage]) -> None:
    mails = by_channel(messages, "email")
    for m in mails:
        assert MESSAGE_ID.match(m.external_id), m.external_id
        assert m.author.email is not None
        assert "@" in m.author.email
        assert m.author.handle is None
        assert m.lang is None
        assert m.subject is not None
        assert m.direct
        assert m.raw["message_id"] == m.external_id
    assert any(re.match(r"\[#\d+\] ", m.subject or "") for m in mails)
    assert any(len(m.text) > 2000 and m.text.count("\n\n") >= 4 for m in mails)
    assert any(re.search(r"^On .+ wrote:$", m.text, re.M) for m in mails)


def test_reviews_and_forms(messages: list[InboundMessage]) -> None:
    for m in by_channel(messages, "rss"):
        assert not m.direct
        assert m.external_id.startswith("https://")
        assert m.url == m.external_id
        assert m.author.name
        assert (m.author.user_id, m.author.handle, m.author.email) == (None, None, None)
        assert m.raw["rating"] in range(1, 6)
    for m in by_channel(messages, "webhook"):
        assert re.fullmatch(r"form-\d{6}", m.external_id)
        assert m.author.email is not None
        assert m.raw["submission_id"] == m.external_id


def test_raw_is_a_small_payload(messages: list[InboundMessage]) -> None:
    for m in messages:
        assert m.raw
        assert len(m.raw) <= 10


# -- mix -----------------------------------------------------------------------------------


def test_channel_shares_match_the_design(messages: list[InboundMessage]) -> None:
    counts = Counter(m.channel for m in messages)
    for channel, share in CHANNEL_SHARES.items():
        assert counts[channel] / len(messages) == pytest.approx(share, abs=0.025), channel


def test_kind_shares_match_the_design(mentions: list[Mention]) -> None:
    counts = Counter(m.kind for m in mentions)
    for kind, share in KIND_SHARES.items():
        assert counts[kind] / len(mentions) == pytest.approx(share, abs=0.025), kind
    complaints = Counter(m.topic for m in mentions if m.kind == "complaint")
    assert set(complaints) == {"delivery", "billing", "bug", "staff"}


def test_outages_bring_a_spike_of_complaints(mentions: list[Mention]) -> None:
    during = [m for m in mentions if m.incident]
    outside = [m for m in mentions if not m.incident]
    assert len(during) > 50

    def complaint_share(ms: list[Mention]) -> float:
        return sum(m.kind == "complaint" for m in ms) / len(ms)

    assert complaint_share(during) > 1.4 * complaint_share(outside)
    topics = Counter(m.topic for m in during if m.kind == "complaint")
    assert topics.most_common(1)[0][0] == "bug"


def test_texts_vary_and_cover_the_awkward_cases(mentions: list[Mention]) -> None:
    texts = [m.message.text for m in mentions]
    assert len(set(texts)) > 3000
    styles = Counter(s for m in mentions for s in m.styles)
    assert {"typos", "caps", "emoji", "long"} <= set(styles)
    assert any(t.isupper() and len(t) > 40 for t in texts)
    assert any(re.fullmatch(r"https?://\S+", t) for t in texts)
    for words in ("lawyer", "allergic reaction", "data breach"):
        assert any(words in t.lower() for t in texts), words


def test_other_languages_are_reported_like_the_platforms_do(mentions: list[Mention]) -> None:
    foreign = [m for m in mentions if m.kind == "foreign"]
    assert {m.lang for m in foreign} == {"es", "fr", "de", "pt", "ja"}
    x_langs = {m.message.lang for m in foreign if m.message.channel == "x"}
    assert x_langs >= {"es", "pt", "ja"}
    assert all(m.message.lang is None for m in mentions if m.message.channel == "reddit")


def test_angry_vips_exist(mentions: list[Mention]) -> None:
    angry_vips = {m.author_id for m in mentions if m.vip and m.sentiment == "negative"}
    assert len(angry_vips) >= 5
    assert any(m.kind == "churn" and m.vip for m in mentions)


# -- customers -----------------------------------------------------------------------------


def author_keys(messages: list[InboundMessage]) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    for m in messages:
        a = m.author
        if a.email:
            keys.add(("email", a.email))
        if a.handle:
            keys.add((f"{m.channel}_handle", a.handle.lower()))
    return keys


def check_customers(rows: list[dict[str, str]], mentions: list[Mention]) -> None:
    keys = author_keys([m.message for m in mentions])
    for row in rows:
        assert tuple(row) == CUSTOMER_COLUMNS
        assert row["tier"] in ("standard", "gold", "vip")
        assert row["lifecycle_stage"] in ("prospect", "customer", "advocate")
        assert row["do_not_contact"] in ("true", "false")
        assert float(row["lifetime_value"]) >= 0
        assert all(re.fullmatch(r"[a-z_]+", t) for t in row["tags"].split(";") if row["tags"])
        assert "@" in row["email"]
        assert row_keys(row) & keys, row
    angry_vips = author_keys([m.message for m in mentions if m.vip and m.sentiment == "negative"])
    vip_rows = [r for r in rows if r["tier"] == "vip"]
    assert vip_rows
    assert any(row_keys(r) & angry_vips for r in vip_rows)


def row_keys(row: dict[str, str]) -> set[tuple[str, str]]:
    handles = ("x_handle", "mastodon_handle", "reddit_handle")
    return {("email", row["email"])} | {(c, row[c].lower()) for c in handles if row[c]}


def test_customers_are_people_from_the_messages(mentions: list[Mention]) -> None:
    rows = TrafficGenerator(7).customers(40, among=len(mentions))
    assert len(rows) == 40
    check_customers(rows, mentions)
    assert len({r["email"] for r in rows}) == len(rows)
    assert any(sum(bool(r[c]) for c in ("x_handle", "mastodon_handle", "reddit_handle")) > 1
               or (r["x_handle"] and r["email"]) for r in rows)  # fmt: skip


def test_customers_are_deterministic() -> None:
    assert TrafficGenerator(4).customers(10, among=400) == TrafficGenerator(4).customers(
        10, among=400
    )


# -- the shipped examples ------------------------------------------------------------------


def test_example_mentions_parse_and_match_the_generator() -> None:
    lines = (EXAMPLES / "mentions.jsonl").read_text(encoding="utf-8").splitlines()
    parsed = [InboundMessage.model_validate_json(line) for line in lines]
    assert len(parsed) == EXAMPLE_MESSAGES
    expected = [
        m.model_dump_json() for m in TrafficGenerator(EXAMPLE_SEED).messages(EXAMPLE_MESSAGES)
    ]
    # If this fails, regenerate: python bench/generate_mentions.py --count 300 --seed 7
    #   -o socialcrm/examples/mentions.jsonl --customers socialcrm/examples/customers.csv
    assert lines == expected


def test_example_customers_match_the_example_mentions() -> None:
    with (EXAMPLES / "customers.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == EXAMPLE_CUSTOMERS
    gen = TrafficGenerator(EXAMPLE_SEED)
    assert rows == gen.customers(EXAMPLE_CUSTOMERS, among=EXAMPLE_MESSAGES)
    check_customers(rows, list(gen.mentions(EXAMPLE_MESSAGES)))
