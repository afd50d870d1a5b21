"""Reports: figures from a small fixed dataset, checked against hand-computed values.

The dataset (inserted by ``seed``) covers a 7-day period, 2026-04-01 -> 2026-04-08 UTC, and
the 7 days before it. Every expected number below was worked out by hand from it; the comments
say how.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from socialcrm import rollups
from socialcrm.chatops.commands import Actor, Commands
from socialcrm.config import Config
from socialcrm.connector import Batch
from socialcrm.db import Store
from socialcrm.models import Customer, Message, Ticket, TriageLabel
from socialcrm.pipeline import Pipeline
from socialcrm.reports import build_report, render
from socialcrm.reports.data import Report, Sentiment, _message_facts, window
from socialcrm.sandbox.traffic import TrafficGenerator

END = datetime(2026, 4, 8, tzinfo=UTC)
WEEK = timedelta(days=7)
HOSTILE = '<script>alert(1)</script> and <img src=x onerror="alert(2)"> $x^2$ | *bold*'


def at(day: str, hm: str = "09:00") -> datetime:
    return datetime.fromisoformat(f"2026-{day}T{hm}:00+00:00")


SOURCES = {"x": "x", "email": "support-inbox", "mastodon": "mastodon", "reddit": "reddit"}
SOURCES["rss"] = "trustpilot"

# (when, channel, customer, sentiment, intent, tags), current period: 20 counted messages.
CURRENT: list[tuple[datetime, str, int | None, float | None, str | None, list[str]]] = [
    (at("04-01", "09:00"), "x", 1, 0.80, "praise", ["praise"]),  # 1
    (at("04-01", "10:00"), "x", 3, -0.60, "complaint", ["negative", "public"]),  # 2
    (at("04-01", "11:00"), "email", 2, -0.90, "complaint", ["negative"]),  # 3
    (at("04-02", "09:00"), "mastodon", 4, 0.00, "question", []),  # 4
    (at("04-02", "12:00"), "x", 5, None, None, ["needs-translation"]),  # 5 unscored
    (at("04-02", "13:00"), "reddit", 6, 0.50, "praise", ["praise"]),  # 6
    (at("04-03", "09:00"), "x", 1, 0.30, "praise", ["praise"]),  # 7
    (at("04-03", "10:00"), "email", 7, -0.04, "question", []),  # 8 neutral
    (at("04-03", "11:00"), "rss", 8, -0.05, "complaint", ["review", "negative"]),  # 9 negative
    (at("04-04", "09:00"), "x", 2, 0.05, "praise", ["praise"]),  # 10 positive
    (at("04-04", "10:00"), "x", 9, None, None, []),  # 11 unscored
    (at("04-05", "09:00"), "x", 10, -0.70, "complaint", ["negative", "public"]),  # 12 hostile
    (at("04-05", "10:00"), "email", 11, 0.60, "question", ["first-contact"]),  # 13
    (at("04-06", "09:00"), "x", 1, 0.95, "praise", ["praise"]),  # 14
    (at("04-06", "10:00"), "mastodon", 4, -0.20, "complaint", ["negative"]),  # 15
    (at("04-07", "09:00"), "x", 3, 0.10, "praise", []),  # 16
    (at("04-07", "10:00"), "reddit", 6, 0.00, None, []),  # 17
    (at("04-07", "23:00"), "email", 2, -0.30, "complaint", ["negative"]),  # 18
    (at("04-07", "23:59"), "x", 5, 0.20, "praise", ["praise"]),  # 19
    (at("04-03", "14:00"), "x", None, 0.40, "praise", []),  # 20: nobody known
]
# Previous period: 12 counted messages.
PREVIOUS: list[tuple[datetime, str, int | None, float | None, str | None, list[str]]] = [
    (at("03-25", "09:00"), "x", 1, 0.60, "praise", ["praise"]),
    (at("03-25", "10:00"), "email", 2, -0.50, "complaint", ["negative"]),
    (at("03-26", "09:00"), "x", 3, -0.80, "complaint", ["negative", "public"]),
    (at("03-27", "09:00"), "mastodon", 4, 0.00, "question", []),
    (at("03-27", "10:00"), "x", 5, None, None, []),
    (at("03-28", "09:00"), "reddit", 6, 0.70, "praise", ["praise"]),
    (at("03-29", "09:00"), "x", 7, -0.10, "complaint", ["negative"]),
    (at("03-30", "09:00"), "email", 8, 0.20, "question", []),
    (at("03-30", "10:00"), "x", 9, -0.90, "complaint", ["negative"]),
    (at("03-31", "09:00"), "x", 1, 0.30, "praise", ["praise"]),
    (at("03-31", "10:00"), "x", 2, 0.01, "question", []),
    (at("03-31", "23:00"), "rss", 9, -0.40, "complaint", ["review", "negative"]),
]

# id: (ltv, stage, reach, first seen); 11 is a prospect, 12 was merged into 1.
CUSTOMERS = {
    1: (1000, "customer", 50, at("01-01")),
    2: (900, "advocate", 100, at("01-01")),
    3: (800, "customer", 5000, at("01-01")),
    4: (700, "customer", 10, at("01-01")),
    5: (600, "customer", 20000, at("01-01")),
    6: (500, "customer", 0, at("01-01")),
    7: (400, "customer", 300, at("01-01")),
    8: (300, "customer", 1, at("01-01")),
    9: (200, "customer", 99999, at("03-30", "08:00")),
    10: (100, "customer", 700, at("04-05", "08:00")),
    11: (0, "prospect", 2500, at("04-05", "09:00")),
    12: (5000, "customer", 1_000_000, at("04-02", "08:00")),
}

H = 3600
# id: (team, opened, first response, resolved, first response due, resolution due)
TICKETS: dict[int, tuple[str | None, datetime, datetime | None, datetime | None, Any, Any]] = {
    1: ("billing", at("04-01", "10:00"), at("04-01", "10:30"), at("04-01", "14:00"),
        at("04-01", "11:00"), at("04-02", "10:00")),
    2: ("billing", at("04-02", "09:00"), at("04-02", "11:00"), at("04-03", "09:00"),
        at("04-02", "10:00"), at("04-04", "09:00")),
    3: ("logistics", at("04-03", "08:00"), at("04-03", "09:00"), None,
        at("04-03", "12:00"), at("04-06", "08:00")),
    4: (None, at("04-05", "08:00"), None, None, at("04-05", "09:00"), at("04-10", "08:00")),
    5: ("billing", at("03-30", "08:00"), at("03-30", "08:20"), at("04-02", "08:00"),
        at("03-30", "09:00"), at("04-01", "08:00")),
    6: ("logistics", at("03-26", "10:00"), at("03-26", "12:00"), at("03-27", "10:00"),
        at("03-26", "11:00"), at("03-28", "10:00")),
    7: ("logistics", at("03-20", "10:00"), at("03-20", "11:00"), None, None, None),
    8: ("billing", at("04-07", "20:00"), at("04-08", "01:00"), None, at("04-07", "21:00"), None),
}  # fmt: skip


def _message(i: int, when: datetime, channel: str, cust: int | None, s: float | None,
             intent: str | None, tags: list[str], **extra: Any) -> Message:  # fmt: skip
    fields: dict[str, Any] = {
        "channel": channel,
        "source": SOURCES.get(channel, channel),
        "external_id": f"m{i}",
        "customer_id": cust,
        "author_handle": f"user{cust}" if cust else "stranger",
        "text": f"message {i} about the late parcel order",
        "scored": s is not None,
        "sentiment": s,
        "intent": intent,
        "tags": tags,
        "created_at": when,
        "received_at": when,
        "url": f"https://x.example/status/{i}" if channel == "x" else None,
    }
    fields.update(extra)
    return Message(**fields)


async def seed(store: Store) -> None:
    """The fixed dataset of the module docstring."""
    async with store.session() as s:
        for cid, (ltv, stage, reach, first) in CUSTOMERS.items():
            s.add(
                Customer(
                    id=cid,
                    name=f"Customer {cid}",
                    lifetime_value=Decimal(ltv),
                    lifecycle_stage=stage,
                    reach=reach,
                    first_seen_at=first,
                    tier="vip" if ltv >= 900 else "standard",
                )
            )
        await s.flush()
        await s.execute(
            Customer.__table__.update()
            .where(Customer.__table__.c.id == 12)
            .values(merged_into_id=1)  # type: ignore[attr-defined]
        )
        for tid, (team, opened, first, resolved, fr_due, res_due) in TICKETS.items():
            s.add(
                Ticket(
                    id=tid,
                    customer_id=1,
                    channel="x",
                    source="x",
                    team=team,
                    opened_at=opened,
                    first_response_at=first,
                    resolved_at=resolved,
                    first_response_due_at=fr_due,
                    resolution_due_at=res_due,
                    status="resolved" if resolved else "open",
                )
            )
        rows = [_message(i, *m) for i, m in enumerate(CURRENT, 1)]
        rows[11].text = HOSTILE
        rows[11].url = "javascript:alert(1)"
        rows += [_message(100 + i, *m) for i, m in enumerate(PREVIOUS, 1)]
        rows += [
            # ignored (spam), one per period
            _message(200, at("04-02", "15:00"), "x", 9, 0.9, None, ["spam"], ignored=True),
            _message(201, at("03-26", "15:00"), "x", 9, 0.9, None, ["spam"], ignored=True),
            # outbound: never counted
            _message(202, at("04-02", "16:00"), "x", 3, None, None, [], direction="outbound"),
            # outside both periods
            _message(203, at("03-20"), "x", 1, 0.5, "praise", []),
            _message(204, END, "x", 1, 0.5, "praise", []),
        ]
        s.add_all(rows)
        await s.flush()
        await rollups.rebuild(s)  # written as an import would, not by the pipeline


@pytest.fixture
async def report(store: Store) -> Report:
    await seed(store)
    return await build_report(store, period=WEEK, end=END, brand="Acme")


async def test_volume_and_sentiment(report: Report) -> None:
    o = report.overall
    # 9 positive, 3 neutral (0.00, -0.04, 0.00), 6 negative (-0.05 counts), 2 unscored.
    assert (o.current.positive, o.current.neutral, o.current.negative) == (9, 3, 6)
    assert o.current.unscored == 2  # never neutral
    assert o.current.total == 20
    assert o.current.net_sentiment == pytest.approx(3 / 18)  # among the 18 scored
    assert (o.previous.positive, o.previous.neutral, o.previous.negative) == (4, 2, 5)
    assert (o.previous.unscored, o.previous.total) == (1, 12)
    assert o.previous.net_sentiment == pytest.approx(-1 / 11)
    assert o.volume_change == pytest.approx(8 / 12)
    assert o.net_sentiment_change == pytest.approx(3 / 18 + 1 / 11)
    assert (report.ignored.current, report.ignored.previous) == (1, 1)


async def test_series_per_day(report: Report) -> None:
    p = report.period
    assert p.unit == "day"
    assert p.buckets == tuple(f"2026-04-0{d}" for d in range(1, 8))
    assert p.previous_buckets[0] == "2026-03-25"
    assert [s.total for s in report.overall.series] == [3, 3, 4, 2, 2, 2, 4]
    assert [s.total for s in report.overall.previous_series] == [2, 1, 2, 1, 1, 2, 3]
    first = report.overall.series[0]  # +0.80, -0.60, -0.90
    assert (first.positive, first.negative, first.net_sentiment) == (1, 2, pytest.approx(-1 / 3))


async def test_channels_and_sources(report: Report) -> None:
    channels = {b.key: b for b in report.channels}
    assert [b.key for b in report.channels] == ["x", "email", "mastodon", "reddit", "rss"]
    assert {k: b.current.total for k, b in channels.items()} == {
        "x": 11, "email": 4, "mastodon": 2, "reddit": 2, "rss": 1,
    }  # fmt: skip
    assert {k: b.previous.total for k, b in channels.items()} == {
        "x": 7, "email": 2, "mastodon": 1, "reddit": 1, "rss": 1,
    }  # fmt: skip
    x = channels["x"].current  # 7 positive, 2 negative, 2 unscored
    assert (x.positive, x.neutral, x.negative, x.unscored) == (7, 0, 2, 2)
    assert x.net_sentiment == pytest.approx(5 / 9)
    sources = {b.key: b.current.total for b in report.sources}
    assert sources == {"x": 11, "support-inbox": 4, "mastodon": 2, "reddit": 2, "trustpilot": 1}
    assert sum(channels["x"].series, type(x)()).total == 11


async def test_most_negative_and_positive(report: Report) -> None:
    assert [q.sentiment for q in report.most_negative] == [-0.9, -0.7, -0.6, -0.3, -0.2]
    assert [q.sentiment for q in report.most_positive] == [0.95, 0.8, 0.6, 0.5, 0.4]
    hostile = report.most_negative[1]
    assert hostile.text == " ".join(HOSTILE.split())
    assert hostile.url is None  # javascript: is never a link
    assert report.most_positive[1].url == "https://x.example/status/1"
    assert report.most_positive[1].author == "user1"


async def test_complaints_are_never_the_most_positive(store: Store) -> None:
    """A complaint VADER reads as happy ("thanks for charging me twice!") is not praise."""
    await seed(store)
    async with store.session() as s:
        s.add_all(
            [
                _message(300, at("04-02", "17:00"), "x", 1, 0.99, "billing", ["billing"]),
                _message(301, at("04-02", "18:00"), "x", 1, 0.97, "complaint", ["negative"]),
                _message(302, at("04-02", "19:00"), "x", 1, -0.95, "praise", ["praise"]),
            ]
        )
    report = await build_report(store, period=WEEK, end=END, brand="Acme")
    assert [q.sentiment for q in report.most_positive] == [0.95, 0.8, 0.6, 0.5, 0.4]
    assert [q.sentiment for q in report.most_negative] == [-0.9, -0.7, -0.6, -0.3, -0.2]


async def test_a_customers_figures_count_the_class_the_headline_counts(store: Store) -> None:
    """ "oh great, another delay" reads happy to VADER; the team's model reads it negative, and
    so do the customer's figures, as the headline does."""
    await seed(store)
    before = await build_report(store, period=WEEK, end=END, brand="Acme")
    was = {a.customer_id: a.messages for a in before.customers.most_active}[1]
    async with store.session() as s:
        s.add_all(
            _message(310 + i, at("04-02", f"1{i}:00"), "x", 1, 0.9, None, [], triage_class=c)
            for i, c in enumerate(["negative", "negative", "neutral"])
        )
    after = await build_report(store, period=WEEK, end=END, brand="Acme")
    now = {a.customer_id: a.messages for a in after.customers.most_active}[1]
    assert (now.negative, now.neutral, now.positive) == (
        was.negative + 2,
        was.neutral + 1,
        was.positive,
    )


async def test_topics(report: Report) -> None:
    t = report.topics
    assert [(c.key, c.current, c.previous) for c in t.intents] == [
        ("praise", 8, 3), ("complaint", 6, 5), ("question", 3, 3),
    ]  # fmt: skip
    assert [(c.key, c.current, c.previous) for c in t.tags] == [
        ("negative", 6, 5),
        ("praise", 6, 3),
        ("public", 2, 1),
        ("review", 1, 1),
        ("first-contact", 1, 0),
        ("needs-translation", 1, 0),
    ]
    # Scored messages only: 18 now, 11 before; every text has "late", "parcel", "order".
    assert (t.terms_sample, t.terms_previous_sample) == (18, 11)
    words = {c.key: (c.current, c.previous) for c in t.terms}
    assert words["parcel"] == (17, 11)  # the hostile one says something else
    assert "the" not in words and "about" not in words and "acme" not in words


async def test_customers(report: Report) -> None:
    c = report.customers
    v = c.value_split
    # Customers 1-10 qualify (11 is a prospect, 12 merged): the top 2 are 1 and 2.
    assert (v.customers, v.top_customers, v.threshold) == (10, 2, 900.0)
    # Now: 1 wrote +0.8 +0.3 +0.95, 2 wrote -0.9 +0.05 -0.3.
    assert (v.top.authors, v.top.current.total) == (2, 6)
    assert v.top.current.net_sentiment == pytest.approx(2 / 6)
    assert v.top.previous.total == 4 and v.top.previous.net_sentiment == pytest.approx(1 / 4)
    assert (v.rest.authors, v.rest.current.total) == (9, 14)
    assert v.rest.current.net_sentiment == pytest.approx(1 / 12)
    assert (v.rest.previous_authors, v.rest.previous.total) == (7, 8)
    assert v.rest.previous.net_sentiment == pytest.approx(-2 / 7)
    assert v.top_message_share == pytest.approx(0.3)
    assert [a.customer_id for a in c.most_active] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert [a.messages.total for a in c.most_active[:3]] == [3, 3, 2]
    assert [a.customer_id for a in c.most_influential] == [9, 5, 3, 11, 10, 7, 2, 1, 4, 8]
    assert c.most_influential[0].messages.total == 1  # the spam one is not counted
    assert (c.new.current, c.new.previous) == (2, 1)
    assert c.new_by_stage == {"customer": 1, "prospect": 1}
    assert [n.customer_id for n in c.newcomers] == [11, 10]


async def test_service(report: Report) -> None:
    svc = report.service
    teams = {t.team: t for t in svc.teams}
    assert set(teams) == {"billing", "logistics", "unassigned"}
    total = svc.total.current
    assert (total.opened, total.resolved, total.backlog) == (5, 3, 4)
    assert {k: t.current.opened for k, t in teams.items()} == {
        "billing": 3, "logistics": 1, "unassigned": 1,
    }  # fmt: skip
    assert {k: t.current.backlog for k, t in teams.items()} == {
        "billing": 1, "logistics": 2, "unassigned": 1,
    }  # fmt: skip
    # Resolved now: 4 h, 24 h, 72 h (all billing).
    assert total.resolution.median_s == 24 * H
    assert total.resolution.p90_s == pytest.approx(224640)
    # First answers now: 30 min and 2 h (billing), 1 h (logistics).
    assert total.first_response.median_s == H
    assert total.first_response.p90_s == pytest.approx(6480)
    assert teams["billing"].current.first_response.median_s == pytest.approx(4500)
    assert teams["billing"].current.first_response.p90_s == pytest.approx(6660)
    assert teams["logistics"].current.first_response.median_s == H
    assert (total.first_response_sla.due, total.first_response_sla.met) == (5, 2)
    assert total.first_response_sla.compliance == pytest.approx(0.4)
    assert (total.resolution_sla.due, total.resolution_sla.met) == (4, 2)
    assert teams["billing"].current.resolution_sla.compliance == pytest.approx(2 / 3)
    assert teams["unassigned"].current.first_response_sla.compliance == 0
    prev = svc.total.previous
    assert (prev.opened, prev.resolved, prev.backlog) == (2, 1, 2)
    assert prev.first_response.median_s == pytest.approx(4200)
    assert prev.first_response.p90_s == pytest.approx(6600)
    assert prev.resolution.median_s == 24 * H
    assert (prev.first_response_sla.met, prev.first_response_sla.due) == (1, 2)
    assert (prev.resolution_sla.met, prev.resolution_sla.due) == (1, 1)


async def test_json(report: Report) -> None:
    data = json.loads(render(report, "json"))
    assert data["overall"]["current"]["total"] == 20
    assert data["overall"]["current"]["unscored"] == 2
    assert data["overall"]["current"]["net_sentiment"] == pytest.approx(3 / 18)
    assert data["period"]["start"] == "2026-04-01T00:00:00+00:00"
    assert data["service"]["total"]["current"]["first_response_sla"]["compliance"] == 0.4
    assert data["customers"]["value_split"]["top_customers"] == 2
    assert data["most_negative"][1]["text"].startswith("<script>")  # json keeps the text
    assert data["empty"] is False


async def test_csv(report: Report) -> None:
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert list(rows[0]) == ["section", "metric", "key", "bucket", "current", "previous", "change"]

    def value(section: str, metric: str, key: str = "all", bucket: str = "") -> dict[str, str]:
        hits = [
            r for r in rows
            if (r["section"], r["metric"], r["key"], r["bucket"]) == (section, metric, key, bucket)
        ]  # fmt: skip
        assert len(hits) == 1, (section, metric, key, bucket)
        return hits[0]

    assert value("headline", "messages") == {
        "section": "headline", "metric": "messages", "key": "all", "bucket": "",
        "current": "20", "previous": "12", "change": "8",
    }  # fmt: skip
    assert value("headline", "unscored")["current"] == "2"
    assert float(value("headline", "net_sentiment")["current"]) == pytest.approx(3 / 18, abs=1e-6)
    assert value("headline", "backlog")["current"] == "4"
    assert value("headline", "first_response_sla")["current"] == "0.4"
    assert value("channel", "messages", "x")["previous"] == "7"
    assert value("series", "messages", "all", "2026-04-03")["current"] == "4"
    assert value("series", "messages", "all", "2026-04-03")["previous"] == "2"  # 03-27
    assert value("team", "tickets_opened", "billing")["current"] == "3"


async def test_markdown(report: Report) -> None:
    md = render(report, "md")
    assert "| Messages | 20 | 12 | +67% |" in md
    assert "| Net sentiment (\u2212100…+100) | +17 | \u22129 |" in md
    assert "| 2026-04-03 | 4 | 2 |" in md
    assert "| x | 11 | 7 |" in md
    assert "| billing | 3 | 3 | 1 |" in md
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "javascript:" not in md


async def test_html(report: Report) -> None:
    html = render(report, "html")
    assert html.startswith("<!DOCTYPE html>")
    # Volume and net sentiment by channel, the same by source, the distribution.
    assert html.count("<svg") == 5
    assert "<script" not in html.lower()
    assert "javascript:" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', ""
    ).replace("http://purl.org/dc", "").replace("http://creativecommons.org", "").replace(
        "http://www.w3.org/1999/02/22-rdf-syntax-ns#", ""
    )  # nothing fetched
    assert re.search(r"<span class=\"big\">20</span>", html)
    assert "+17" in html and "\u22129" in html
    assert "1h 00m / 1h 48m" in html  # first response, all teams
    assert "40.0%" in html  # first response SLA
    assert 'href="https://x.example/status/1"' in html


async def test_hostile_names_in_charts(store: Store) -> None:
    short = "<script>alert(1)</script>"  # fits a channel (32) and an intent (64)
    async with store.session() as s:
        for i in range(3):
            s.add(
                _message(
                    i, at("04-0" + str(i + 2)), short, None, -0.5, short, [HOSTILE],
                    source=HOSTILE, author_handle=HOSTILE, url="https://ok.example/?a=<b>&c=\"d\"",
                )
            )  # fmt: skip
        await s.flush()
        await rollups.rebuild(s)
    report = await build_report(store, period=WEEK, end=END, brand="<b>Acme</b>")
    html = render(report, "html")
    assert "<script" not in html.lower() and "<img" not in html and "<b>" not in html
    assert html.count("<svg") == 5 and html.count("</svg>") == 5
    assert 'href="https://ok.example/?a=&lt;b&gt;&amp;c=&#34;d&#34;"' in html
    md = render(report, "md")
    assert "<script>" not in md and "<b>" not in md


async def test_empty_database(store: Store) -> None:
    report = await build_report(store, period=WEEK, end=END, brand="Acme")
    assert report.empty
    assert report.overall.current.net_sentiment is None
    assert report.service.total.current.first_response.median_s is None
    assert report.customers.value_split.top_customers == 0
    html = render(report, "html")
    assert "No data in this period" in html and "<svg" not in html
    assert "No data in this period" in render(report, "md")
    assert json.loads(render(report, "json"))["empty"] is True
    assert render(report, "csv").startswith("section,metric,key,bucket,current,previous,change")


async def test_time_zone_buckets(store: Store) -> None:
    await seed(store)
    report = await build_report(store, period=WEEK, end=END, brand="Acme", tz="Asia/Kolkata")
    # +05:30: the period starts 04-01 05:30 and ends 04-08 05:30 local time.
    assert report.period.buckets[0] == "2026-04-01" and report.period.buckets[-1] == "2026-04-08"
    totals = dict(zip(report.period.buckets, (s.total for s in report.overall.series), strict=True))
    assert totals["2026-04-07"] == 2  # 09:00 and 10:00 UTC
    assert totals["2026-04-08"] == 2  # 23:00 and 23:59 UTC
    assert report.overall.current.total == 20


async def test_hourly_for_short_periods(store: Store) -> None:
    await seed(store)
    report = await build_report(store, period=timedelta(days=1), end=END, brand="Acme")
    assert report.period.unit == "hour" and len(report.period.buckets) == 24
    hours = dict(zip(report.period.buckets, (s.total for s in report.overall.series), strict=True))
    assert hours["2026-04-07 09:00"] == 1 and hours["2026-04-07 23:00"] == 2
    assert report.overall.current.total == 4 and report.overall.previous.total == 2


@pytest.mark.parametrize(
    ("period", "end"),
    [(timedelta(0), END), (WEEK, datetime(2026, 4, 8))],
)
async def test_bad_arguments(store: Store, period: timedelta, end: datetime) -> None:
    with pytest.raises(ValueError):
        await build_report(store, period=period, end=end, brand="Acme")


# ---------------------------------------------------------------------------------------------
# The rollups the message figures are read from agree with counting the messages themselves.


async def _random_messages(store: Store, seed: int) -> None:
    """Messages of every kind spread over 2026-03-01..04-10 (both DST changes of New York
    and Lord Howe), written in batches with their rollups as the pipeline writes them."""
    rng = random.Random(seed)
    begin = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        {
            "channel": rng.choice(["x", "mastodon", "email"]),
            "source": rng.choice(["a", "b"]),
            "external_id": f"r{i}",
            "direction": "outbound" if rng.random() < 0.1 else "inbound",
            "sentiment": rng.choice([None, -0.9, -0.05, -0.04, 0.0, 0.04, 0.05, 0.6]),
            "intent": rng.choice([None, "", "praise", "billing"]),
            "tags": rng.sample(["vip", "late", "spam", "late"], rng.randint(0, 3)),
            "ignored": rng.random() < 0.1,
            "created_at": begin + timedelta(seconds=rng.randrange(40 * 86400)),
        }
        for i in range(600)
    ]
    for i in range(0, len(rows), 150):
        async with store.session() as s:
            batch = rows[i : i + 150]
            await s.execute(sa.insert(Message.__table__), batch)  # type: ignore[arg-type]
            await rollups.add(s, batch)


async def _rollup_tables(store: Store) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    async with store.reader() as s:
        return (
            {tuple(r) for r in await s.execute(sa.text("SELECT * FROM message_rollup"))},
            {tuple(r) for r in await s.execute(sa.text("SELECT * FROM topic_rollup"))},
        )


@pytest.mark.parametrize(
    "tz", ["UTC", "Asia/Kathmandu", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
)
async def test_rollups_agree_with_the_messages(store: Store, tz: str) -> None:
    await _random_messages(store, seed=len(tz))
    rng = random.Random(tz)
    ends = [datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 3, 20, 7, 45, tzinfo=UTC)] + [
        datetime(2026, 3, 3, tzinfo=UTC) + timedelta(minutes=rng.randrange(38 * 1440))
        for _ in range(4)
    ]
    periods = [timedelta(minutes=10), timedelta(hours=5), timedelta(days=2), timedelta(days=9)]
    compared = 0
    for end in ends:
        for period in periods:
            w, info = window(end, period, tz)
            async with store.reader() as s:
                from_rollups = await _message_facts(s, w, info)
                from_messages = await _message_facts(s, w, info, rollups=False)
            assert from_rollups == from_messages, (end, period)
            compared += from_messages.overall.current.total + from_messages.ignored.current
    assert compared > 500, "the windows held messages"


async def test_rebuilding_the_rollups_counts_the_same(store: Store) -> None:
    await _random_messages(store, seed=3)
    added = await _rollup_tables(store)
    assert sum(r[-1] for r in added[0]) > 450
    async with store.session() as s:
        await rollups.rebuild(s)
    assert await _rollup_tables(store) == added


async def test_the_pipeline_keeps_the_rollups(store: Store, pipeline: Pipeline) -> None:
    traffic = list(TrafficGenerator(5).messages(400))
    for i in range(0, len(traffic), 100):
        await pipeline.ingest(Batch(messages=traffic[i : i + 100]), "mixed")
    await pipeline.ingest(Batch(messages=traffic[:50]), "mixed")  # repeats count once
    kept = await _rollup_tables(store)
    assert sum(r[-1] for r in kept[0]) == 400
    assert {r[1] for r in kept[1]} == {"intent", "tag"}
    async with store.session() as s:
        await rollups.rebuild(s)
    assert await _rollup_tables(store) == kept


async def test_a_message_the_team_relabelled_counts_as_they_said(store: Store) -> None:
    """The most positive message of the week was sarcasm: a person relabels it negative, and
    the report counts it negative and no longer quotes it as praise; the rollups moved its
    count as a rebuild would count it."""
    await seed(store)
    before = await build_report(store, period=WEEK, end=END, brand="Acme")
    top = before.most_positive[0]
    assert top.sentiment == 0.95
    agent = Actor("ana", "agent", "cli")
    out = await Commands(Config(), store).run(agent, f"relabel {top.id} negative")
    assert "labelled negative" in out
    after = await build_report(store, period=WEEK, end=END, brand="Acme")
    assert top.id not in {q.id for q in after.most_positive}
    was, now = before.overall.current, after.overall.current
    assert (now.positive, now.negative, now.neutral) == (
        was.positive - 1,
        was.negative + 1,
        was.neutral,
    )
    # Its author's figures too (customer 1 wrote it).
    mine = {a.customer_id: a.messages for a in before.customers.most_active}[1]
    assert {a.customer_id: a.messages for a in after.customers.most_active}[1] == (
        mine - Sentiment(positive=1) + Sentiment(negative=1)
    )
    # The same label again moves nothing; another moves it on, once.
    await Commands(Config(), store).run(agent, f"relabel {top.id} negative")
    await Commands(Config(), store).run(agent, f"relabel {top.id} neutral")
    again = (await build_report(store, period=WEEK, end=END, brand="Acme")).overall.current
    assert (again.negative, again.neutral) == (was.negative, was.neutral + 1)
    kept = await _rollup_tables(store)
    async with store.session() as s:
        await rollups.rebuild(s)
    rebuilt = await _rollup_tables(store)
    assert {r for r in kept[0] if r[-1]} == rebuilt[0] and kept[1] == rebuilt[1]


async def test_relabels_of_an_earlier_version_and_imported_labels_count_too(store: Store) -> None:
    """Relabels made before the class was written on the message take effect on upgrade
    (migration 0017); a label that came with an import takes effect when a person says it."""
    await seed(store)
    before = await build_report(store, period=WEEK, end=END, brand="Acme")
    first, second = before.most_positive[0].id, before.most_positive[1].id
    async with store.session() as s:
        for mid, reason in ((first, "relabel"), (second, "import")):
            msg = await s.get(Message, mid)
            assert msg is not None
            s.add(TriageLabel(message_id=mid, text=msg.text, kind="sentiment", value="negative",
                              reason=reason, actor="ana", via="cli"))  # fmt: skip
    await store.downgrade("0016")
    await store.upgrade("head")
    after = await build_report(store, period=WEEK, end=END, brand="Acme")
    shown = {q.id for q in after.most_positive}
    assert first not in shown and second in shown
    was, now = before.overall.current, after.overall.current
    assert (now.positive, now.negative) == (was.positive - 1, was.negative + 1)
    out = await Commands(Config(), store).run(
        Actor("ana", "agent", "cli"), f"relabel {second} negative"
    )
    assert "already" in out
    now = (await build_report(store, period=WEEK, end=END, brand="Acme")).overall.current
    assert (now.positive, now.negative) == (was.positive - 2, was.negative + 2)
    kept = await _rollup_tables(store)
    async with store.session() as s:
        await rollups.rebuild(s)
    assert {r for r in kept[0] if r[-1]} == (await _rollup_tables(store))[0]
