"""The rendered report: md, html and csv carry the figures of the fixed dataset of
``test_reports`` (worked out by hand from it; the comments say how), the per-source series
stay readable with many sources, and building a report reads a bounded number of rows
whatever the number of messages.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from socialcrm import rollups
from socialcrm.db import Store
from socialcrm.models import Customer
from socialcrm.reports import build_report, render
from socialcrm.reports.data import TERM_SLICE_ROWS, TERM_SLICES, Report
from tests.test_reports import END, WEEK, _message, at, seed

MESSAGE = SQLModel.metadata.tables["message"]
DAYS = [f"2026-04-0{d}" for d in range(1, 8)]
M = "\u2212"  # the minus sign of the md and html figures
N = "\u2013"  # the en dash of a figure that does not exist


@pytest.fixture
async def report(store: Store) -> Report:
    await seed(store)
    return await build_report(store, period=WEEK, end=END, brand="Acme")


# ---------------------------------------------------------------------------------------------
# The expected figures, by hand from the seed of test_reports.

# Previous-period comparison of the headlines: (this period, previous, change).
HEADLINES = {
    # 20 counted messages against 12: +8/12.
    "Messages": ("20", "12", "+67%"),
    # Net 3/18 against -1/11: +25.8 points.
    f"Net sentiment ({M}100…+100)": ("+17", f"{M}9", "+26 pts"),
    # Customer 9's spam, one in each period.
    "Ignored (spam…)": ("1", "1", "+0"),
    # First seen now: 10 and 11 (12 is merged); before: 9.
    "New customers": ("2", "1", "+1"),
    # Opened now: tickets 1, 2, 3, 4, 8; before: 5, 6. Resolved now: 1, 2, 5; before: 6.
    "Tickets opened": ("5", "2", "+3"),
    "Tickets resolved": ("3", "1", "+2"),
    # Open at 04-08: 3, 4, 7, 8; at 04-01: 5, 7.
    "Backlog at the end": ("4", "2", "+2"),
}

# The 80/20 view. Customers 1-10 qualify (11 is a prospect, 12 merged): ceil(20% of 10) = 2,
# customers 1 (1000) and 2 (900). Now 1 wrote +0.80 +0.30 +0.95 and 2 wrote -0.90 +0.05
# -0.30: 6 messages, net 2/6; before 1 wrote +0.60 +0.30 and 2 -0.50 +0.01: 4, net 1/4.
# Everyone else (3-11 and the stranger) wrote the other 14 (5 positive, 3 neutral,
# 4 negative, 2 unscored: net 1/12) and 8 before (2, 1, 4 and 1: net -2/7); authors now
# 3-11 (9), before 3-9 (7). The top group wrote 6 of 20 now, 4 of 12 before.
TOP = {"authors": (2, 2), "messages": (6, 4), "net": (2 / 6, 1 / 4)}
REST = {"authors": (9, 7), "messages": (14, 8), "net": (1 / 12, -2 / 7)}
TOP_ROW = ["Top 20% by value", "2", "6", "+33", "4", "+25"]
REST_ROW = ["Everyone else", "9", "14", "+8", "8", f"{M}29"]
SPLIT_TEXT = "(2 of 10, 900 and more) wrote 30.0% of"

# Authors, from CUSTOMERS and the messages of this period:
# id: (tier, lifetime value, reach, messages, net sentiment).
AUTHORS: dict[int, tuple[str, int, int, int, float | None]] = {
    1: ("vip", 1000, 50, 3, 1.0),  # +0.80 +0.30 +0.95
    2: ("vip", 900, 100, 3, -1 / 3),  # -0.90 +0.05 -0.30
    3: ("standard", 800, 5000, 2, 0.0),  # -0.60 +0.10
    4: ("standard", 700, 10, 2, -0.5),  # 0.00 -0.20
    5: ("standard", 600, 20000, 2, 1.0),  # unscored, +0.20
    6: ("standard", 500, 0, 2, 0.5),  # +0.50, 0.00
    7: ("standard", 400, 300, 1, 0.0),  # -0.04
    8: ("standard", 300, 1, 1, -1.0),  # -0.05
    9: ("standard", 200, 99999, 1, None),  # unscored (its spam is not counted)
    10: ("standard", 100, 700, 1, -1.0),  # -0.70
    11: ("standard", 0, 2500, 1, 1.0),  # +0.60, a prospect
}
# Most messages (3, 3, 2, 2, 2, 2, then the ones by id: 11 is the eleventh).
MOST_ACTIVE = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
# Largest reach among those who wrote now (6 has none, 12 is merged).
MOST_INFLUENTIAL = [9, 5, 3, 11, 10, 7, 2, 1, 4, 8]

# Newcomers of this period by reach: (id, stage, reach, first seen).
NEWCOMERS = [(11, "prospect", 2500, "2026-04-05 09:00"), (10, "customer", 700, "2026-04-05 08:00")]
NEW_TEXT = "2 first seen in this period (1 in the previous one): 1 customer, 1 prospect."

# Words in the sampled (scored) messages: 17 of the 18 now and all 11 before say "message N
# about the late parcel order" ("about" and "the" are common words); the hostile one says
# script, alert, img, src, onerror and bold. Ties by word.
TERMS = [("late", 17, 11), ("message", 17, 11), ("order", 17, 11), ("parcel", 17, 11)] + [
    (w, 1, 0) for w in ("alert", "bold", "img", "onerror", "script", "src")
]

# Service by team, from TICKETS. Now: first answers 30 min (1), 2 h (2) billing, 1 h (3)
# logistics; resolved 4 h (1), 24 h (2), 72 h (5), all billing; first response due 1 met,
# 2 and 8 missed (billing), 3 met (logistics), 4 missed (unassigned); resolution due 1 and 2
# met, 5 missed (billing), 3 missed (logistics). Before: first answers 20 min (5, billing,
# met) and 2 h (6, logistics, missed); resolved 24 h (6, due 03-28: met).
# Medians and p90 interpolate as percentile_cont: p90 of (a, b) = a + 0.9 (b - a), of
# (a, b, c) = b + 0.8 (c - b).
# team: {metric: (current, previous)}; durations in seconds, SLA as (met, due).
SERVICE: dict[str, dict[str, tuple[Any, Any]]] = {
    "all teams": {
        "opened": (5, 2),
        "resolved": (3, 1),
        "backlog": (4, 2),  # 3, 4, 7, 8 / 5, 7
        "first_response": ((3600, 6480), (4200, 6600)),  # (1800, 3600, 7200) / (1200, 7200)
        "resolution": ((86400, 224640), (86400, 86400)),  # (4, 24, 72 h) / (24 h)
        "first_response_sla": ((2, 5), (1, 2)),
        "resolution_sla": ((2, 4), (1, 1)),
    },
    "billing": {
        "opened": (3, 1),  # 1, 2, 8 / 5
        "resolved": (3, 0),
        "backlog": (1, 1),  # 8 / 5
        "first_response": ((4500, 6660), (1200, 1200)),  # (1800, 7200) / (1200)
        "resolution": ((86400, 224640), (None, None)),
        "first_response_sla": ((1, 3), (1, 1)),
        "resolution_sla": ((2, 3), (0, 0)),
    },
    "logistics": {
        "opened": (1, 1),  # 3 / 6
        "resolved": (0, 1),
        "backlog": (2, 1),  # 3, 7 / 7
        "first_response": ((3600, 3600), (7200, 7200)),
        "resolution": ((None, None), (86400, 86400)),
        "first_response_sla": ((1, 1), (0, 1)),
        "resolution_sla": ((0, 1), (1, 1)),
    },
    "unassigned": {
        "opened": (1, 0),  # 4
        "resolved": (0, 0),
        "backlog": (1, 0),
        "first_response": ((None, None), (None, None)),
        "resolution": ((None, None), (None, None)),
        "first_response_sla": ((0, 1), (0, 0)),
        "resolution_sla": ((0, 0), (0, 0)),
    },
}
# The same durations as the report writes them.
DURATIONS = {
    None: N,
    1200: "20m",
    3600: "1h 00m",
    4200: "1h 10m",
    4500: "1h 15m",
    6480: "1h 48m",
    6600: "1h 50m",
    6660: "1h 51m",
    7200: "2h 00m",
    86400: "1d 0h",
    224640: "2d 14h",  # 62.4 h
}
SLA_PCT = {(0, 0): N, (0, 1): "0.0%", (1, 1): "100.0%", (1, 2): "50.0%", (1, 3): "33.3%"}
SLA_PCT |= {(2, 3): "66.7%", (2, 4): "50.0%", (2, 5): "40.0%"}

# Messages and net sentiment per day and source (x = channel x, support-inbox = email,
# trustpilot = rss), this period (04-01..07) and the previous one (03-25..31), from CURRENT
# and PREVIOUS. None: nothing scored that day.
SOURCE_SERIES: dict[str, tuple[list[int], list[float | None], list[int], list[float | None]]] = {
    "x": (
        [2, 1, 2, 2, 1, 1, 2],  # +0.80 -0.60 | unscored | +0.30 +0.40 | +0.05 unscored | ...
        [0.0, None, 1.0, 1.0, -1.0, 1.0, 1.0],
        [1, 1, 1, 0, 1, 1, 2],  # +0.60 | -0.80 | unscored | | -0.10 | -0.90 | +0.30 +0.01
        [1.0, -1.0, None, None, -1.0, -1.0, 0.5],
    ),
    "support-inbox": (
        [1, 0, 1, 0, 1, 0, 1],  # -0.90 | | -0.04 | | +0.60 | | -0.30
        [-1.0, None, 0.0, None, 1.0, None, -1.0],
        [1, 0, 0, 0, 0, 1, 0],  # -0.50 on 03-25, +0.20 on 03-30
        [-1.0, None, None, None, None, 1.0, None],
    ),
    "mastodon": (
        [0, 1, 0, 0, 0, 1, 0],  # 0.00 on 04-02, -0.20 on 04-06
        [None, 0.0, None, None, None, -1.0, None],
        [0, 0, 1, 0, 0, 0, 0],  # 0.00 on 03-27
        [None, None, 0.0, None, None, None, None],
    ),
    "reddit": (
        [0, 1, 0, 0, 0, 0, 1],  # +0.50 on 04-02, 0.00 on 04-07
        [None, 1.0, None, None, None, None, 0.0],
        [0, 0, 0, 1, 0, 0, 0],  # +0.70 on 03-28
        [None, None, None, 1.0, None, None, None],
    ),
    "trustpilot": (
        [0, 0, 1, 0, 0, 0, 0],  # -0.05 on 04-03
        [None, None, -1.0, None, None, None, None],
        [0, 0, 0, 0, 0, 0, 1],  # -0.40 on 03-31
        [None, None, None, None, None, None, -1.0],
    ),
}
# Sources by messages this period (then previous, then name), as the report lists them.
SOURCE_ORDER = ["x", "support-inbox", "mastodon", "reddit", "trustpilot"]
# By source, against the previous period: support-inbox -0.90 -0.04 +0.60 -0.30 (net -1/4)
# against -0.50 +0.20 (0); trustpilot -0.05 against -0.40.
SOURCE_ROWS = [["support-inbox", "4", "2", "+100%", f"{M}25", f"{M}25 pts"]]
SOURCE_ROWS += [["trustpilot", "1", "1", "+0%", f"{M}100", "+0 pts"]]


def net(value: float | None) -> str:
    """Net sentiment as the tables show it (-100..+100, a minus sign)."""
    return N if value is None else f"{100 * value:+.0f}".replace("-", M)


def sla(metric: tuple[int, int]) -> str:
    return SLA_PCT[metric]


def dur(pair: tuple[int | None, int | None]) -> str:
    return f"{DURATIONS[pair[0]]} / {DURATIONS[pair[1]]}"


# ---------------------------------------------------------------------------------------------
# Reading the tables of each format.


def md_rows(md: str) -> list[list[str]]:
    """The cells of every Markdown table row (separator rows left out)."""
    return [
        [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        for line in md.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]


class _Tables(HTMLParser):
    """The text of every table cell, by row; a <br> in a cell is a newline."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "br" and self.cell is not None:
            self.cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            lines = " ".join(self.cell).split("\n")
            self.rows[-1].append("\n".join(" ".join(line.split()) for line in lines))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def html_rows(html: str) -> list[list[str]]:
    parser = _Tables()
    parser.feed(html)
    return parser.rows


def html_text(html: str) -> str:
    """The page's text on one line (charts left out)."""
    html = re.sub(r"<svg.*?</svg>", " ", html, flags=re.DOTALL)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def has_run(rows: Sequence[list[str]], expected: Sequence[list[str]]) -> bool:
    """``expected`` appears in ``rows`` as consecutive rows, in order."""
    n = len(expected)
    return any(list(rows[i : i + n]) == list(expected) for i in range(len(rows) - n + 1))


def csv_table(text: str) -> dict[tuple[str, str, str, str], tuple[str, str, str]]:
    out = {}
    for r in csv.DictReader(io.StringIO(text)):
        key = (r["section"], r["metric"], r["key"], r["bucket"])
        assert key not in out, key
        out[key] = (r["current"], r["previous"], r["change"])
    return out


# ---------------------------------------------------------------------------------------------
# md


async def test_markdown_carries_the_figures(report: Report) -> None:
    md = render(report, "md")
    rows = md_rows(md)
    for name, figures in HEADLINES.items():
        assert [name, *figures] in rows, name
    for row in SOURCE_ROWS:
        assert row in rows
    # The 80/20 view.
    assert SPLIT_TEXT in md
    assert TOP_ROW in rows and REST_ROW in rows
    # Authors, in order: name, handle (none: the seed has no identities), tier, reach,
    # messages, net sentiment.
    for ids in (MOST_ACTIVE, MOST_INFLUENTIAL):
        expected = []
        for i in ids:
            tier, _, reach, messages, s = AUTHORS[i]
            expected.append([f"Customer {i}", "", tier, f"{reach:,}", str(messages), net(s)])
        assert has_run(rows, expected), ids
    # Newcomers.
    assert NEW_TEXT in md
    expected = [
        [f"Customer {i}", "", stage, f"{reach:,}", seen] for i, stage, reach, seen in NEWCOMERS
    ]
    assert has_run(rows, expected)
    # Words.
    assert "in a sample of 18 scored messages" in md and "(11 in the previous one)" in md
    assert has_run(rows, [[w, str(now), str(before)] for w, now, before in TERMS])
    # Service by team, this period and the previous one (all teams first).
    for i, period in enumerate(("current", "previous")):
        expected = []
        for team, m in SERVICE.items():
            fr, res = m["first_response_sla"][i], m["resolution_sla"][i]
            expected.append(
                [
                    team,
                    *(str(m[k][i]) for k in ("opened", "resolved", "backlog")),
                    dur(m["first_response"][i]),
                    dur(m["resolution"][i]),
                    f"{sla(fr)} ({fr[0]}/{fr[1]})",
                    f"{sla(res)} ({res[0]}/{res[1]})",
                ]
            )
        assert has_run(rows, expected), period
    assert "Previous period:" in md
    # Messages and net sentiment per day by source.
    header = ["Day", *SOURCE_ORDER]
    counts = [[d] + [str(SOURCE_SERIES[s][0][i]) for s in SOURCE_ORDER] for i, d in enumerate(DAYS)]
    nets = [[d] + [net(SOURCE_SERIES[s][1][i]) for s in SOURCE_ORDER] for i, d in enumerate(DAYS)]
    assert "### Messages per day by source" in md and "### Net sentiment per day by source" in md
    assert has_run(rows, [header, *counts]) and has_run(rows, [header, *nets])


# ---------------------------------------------------------------------------------------------
# html


async def test_html_carries_the_figures(report: Report) -> None:
    html = render(report, "html")
    rows = html_rows(html)
    text = html_text(html)
    # The headline cards, each against the previous period, and the rest of the comparison.
    assert [
        "Messages 20 +67% vs 12",
        f"Net sentiment ({M}100…+100) +17 +26 pts vs {M}9",
        "Tickets opened / resolved 5 / 3 vs 2 / 1",
        "Backlog at the end 4 vs 2",
    ] in rows
    assert "Ignored messages (spam and the like), not counted above: 1 (previous 1)" in text
    assert "New customers: 2 (previous 1)" in text
    for row in SOURCE_ROWS:  # html adds the previous net sentiment and the unscored
        name, now, before, change, sentiment, points = row
        previous = {"support-inbox": "+0", "trustpilot": f"{M}100"}[name]
        assert [name, now, before, change, sentiment, previous, points, "0"] in rows
    # The 80/20 view.
    assert SPLIT_TEXT in text
    assert TOP_ROW in rows and REST_ROW in rows
    # Authors, in order, with their lifetime value.
    for ids in (MOST_ACTIVE, MOST_INFLUENTIAL):
        expected = []
        for i in ids:
            tier, ltv, reach, messages, s = AUTHORS[i]
            expected.append(
                [f"Customer {i}", "", tier, f"{ltv:,}", f"{reach:,}", str(messages), net(s)]
            )
        assert has_run(rows, expected), ids
    # Newcomers.
    assert NEW_TEXT in text
    expected = [
        [f"Customer {i}", "", stage, f"{reach:,}", seen] for i, stage, reach, seen in NEWCOMERS
    ]
    assert has_run(rows, expected)
    # Words.
    assert "In a sample of 18 scored messages" in text and "(11 in the previous one)" in text
    assert has_run(rows, [[w, str(now), str(before)] for w, now, before in TERMS])
    # Service by team: each cell is this period, then the previous one (grey).
    expected = []
    for team, m in SERVICE.items():
        (fr, fr0), (res, res0) = m["first_response_sla"], m["resolution_sla"]
        expected.append(
            [
                team,
                *(f"{m[k][0]}\n{m[k][1]}" for k in ("opened", "resolved", "backlog")),
                f"{dur(m['first_response'][0])}\n{dur(m['first_response'][1])}",
                f"{dur(m['resolution'][0])}\n{dur(m['resolution'][1])}",
                f"{sla(fr)} {fr[0]}/{fr[1]}\n{sla(fr0)}",
                f"{sla(res)} {res[0]}/{res[1]}\n{sla(res0)}",
            ]
        )
    assert has_run(rows, expected)
    # Per day by source: messages, then the net sentiment (grey), in the same cell.
    series = [
        [d] + [f"{SOURCE_SERIES[s][0][i]}\n{net(SOURCE_SERIES[s][1][i])}" for s in SOURCE_ORDER]
        for i, d in enumerate(DAYS)
    ]
    assert has_run(rows, [["Day", *SOURCE_ORDER], *series])
    assert 'aria-label="Messages per day by source"' in html
    assert 'aria-label="Net sentiment per day by source"' in html


# ---------------------------------------------------------------------------------------------
# csv


async def test_csv_carries_the_figures(report: Report) -> None:
    table = csv_table(render(report, "csv"))

    def check(section: str, metric: str, key: str, now: Any, before: Any, bucket: str = "") -> None:
        """The row's figures, to the csv's 6 decimals; change = now - before when both exist."""
        where = (section, metric, key, bucket)
        cur, prev, change = table[where]
        diff = None if now is None or before is None else now - before
        for cell, value in ((cur, now), (prev, before), (change, diff)):
            if value is None:
                assert cell == "", where
            else:
                assert float(cell) == pytest.approx(value, abs=1e-6), where

    # Previous-period comparison of the headlines.
    check("headline", "messages", "all", 20, 12)
    check("headline", "net_sentiment", "all", 3 / 18, -1 / 11)
    check("headline", "ignored", "all", 1, 1)
    check("headline", "new_customers", "all", 2, 1)
    check("source", "messages", "support-inbox", 4, 2)
    check("source", "net_sentiment", "support-inbox", -1 / 4, 0)
    # The 80/20 view.
    check("headline", "ranked_customers", "all", 10, None)
    check("headline", "top20_customers", "all", 2, None)
    check("headline", "top20_threshold", "all", 900, None)
    for prefix, group in (("top20", TOP), ("rest", REST)):
        check("headline", f"{prefix}_authors", "all", *group["authors"])
        check("headline", f"{prefix}_messages", "all", *group["messages"])
        check("headline", f"{prefix}_net_sentiment", "all", *group["net"])
    check("headline", "top20_message_share", "all", 6 / 20, 4 / 12)
    # Authors: rank, id and figures of each.
    for section, ids in (("active_author", MOST_ACTIVE), ("influential_author", MOST_INFLUENTIAL)):
        assert len({k[2] for k in table if k[0] == section}) == len(ids)
        for rank, i in enumerate(ids, 1):
            _, ltv, reach, messages, s = AUTHORS[i]
            name = f"Customer {i}"
            check(section, "rank", name, rank, None)
            check(section, "customer_id", name, i, None)
            check(section, "lifetime_value", name, ltv, None)
            check(section, "reach", name, reach, None)
            check(section, "messages", name, messages, None)
            check(section, "net_sentiment", name, s, None)
    # Newcomers.
    check("new_customers", "customers", "customer", 1, None)
    check("new_customers", "customers", "prospect", 1, None)
    for rank, (i, _, reach, _) in enumerate(NEWCOMERS, 1):
        check("newcomer", "rank", f"Customer {i}", rank, None)
        check("newcomer", "customer_id", f"Customer {i}", i, None)
        check("newcomer", "reach", f"Customer {i}", reach, None)
    # Words.
    check("headline", "terms_sample", "all", 18, 11)
    assert [k[2] for k in table if k[0] == "term"] == [w for w, _, _ in TERMS]
    for word, now, before in TERMS:
        check("term", "sampled_messages", word, now, before)
    # Service by team (all teams on the headline rows).
    for team, m in SERVICE.items():
        section, key = ("headline", "all") if team == "all teams" else ("team", team)
        for metric in ("opened", "resolved"):
            check(section, f"tickets_{metric}", key, *m[metric])
        check(section, "backlog", key, *m["backlog"])
        for what in ("first_response", "resolution"):
            (now_median, now_p90), (before_median, before_p90) = m[what]
            check(section, f"{what}_median_s", key, now_median, before_median)
            check(section, f"{what}_p90_s", key, now_p90, before_p90)
            now_sla, before_sla = m[f"{what}_sla"]
            check(
                section,
                f"{what}_sla",
                key,
                now_sla[0] / now_sla[1] if now_sla[1] else None,
                before_sla[0] / before_sla[1] if before_sla[1] else None,
            )
    # Every source's series, against the same day of the previous period.
    for source, (counts, nets, previous_counts, previous_nets) in SOURCE_SERIES.items():
        for i, day in enumerate(DAYS):
            check("source_series", "messages", source, counts[i], previous_counts[i], day)
            check("source_series", "net_sentiment", source, nets[i], previous_nets[i], day)
    assert {k[2] for k in table if k[0] == "source_series"} == set(SOURCE_SERIES)
    # The channel series keep their section: channel x is source x.
    check("series", "messages", "x", 2, 1, "2026-04-01")


# ---------------------------------------------------------------------------------------------
# Many sources: the largest one by one, the rest as "other", in charts and tables alike.


async def test_many_sources_stay_readable(store: Store) -> None:
    await seed(store)
    extra = [
        # (source, when, sentiment): one message each this period, none before.
        ("feed-a", at("04-01", "12:00"), 0.9),
        ("feed-b", at("04-02", "12:00"), 0.5),
        ("feed-c", at("04-02", "13:00"), -0.5),
        ("feed-d", at("04-06", "12:00"), None),
    ]
    async with store.session() as s:
        for i, (source, when, score) in enumerate(extra):
            s.add(_message(300 + i, when, "rss", None, score, None, [], source=source))
        await s.flush()
        await rollups.rebuild(s)
    report = await build_report(store, period=WEEK, end=END, brand="Acme")
    # 9 sources: the 5 of the seed, then the feeds (1 message now, none before) by name.
    # Six are shown: feed-a (+0.9 on 04-01) is the sixth; "other (3)" sums feed-b and feed-c
    # (+0.5 and -0.5 on 04-02) and feed-d (unscored, 04-06).
    shown = [*SOURCE_ORDER, "feed-a", "other (3)"]
    feed_a = (["1", "0", "0", "0", "0", "0", "0"], ["+100", N, N, N, N, N, N])
    other = (["0", "2", "0", "0", "0", "1", "0"], [N, "+0", N, N, N, N, N])
    counts = [
        [d] + [str(SOURCE_SERIES[s][0][i]) for s in SOURCE_ORDER] + [feed_a[0][i], other[0][i]]
        for i, d in enumerate(DAYS)
    ]
    nets = [
        [d] + [net(SOURCE_SERIES[s][1][i]) for s in SOURCE_ORDER] + [feed_a[1][i], other[1][i]]
        for i, d in enumerate(DAYS)
    ]

    md = render(report, "md")
    rows = md_rows(md)
    assert has_run(rows, [["Day", *shown], *counts]) and has_run(rows, [["Day", *shown], *nets])
    assert 'Only the largest channels and sources are shown one by one; "other (N)"' in md
    assert "feed-d" not in md.split("## By channel")[0]  # listed in the table by source

    html = render(report, "html")
    svgs = dict(re.findall(r'<svg [^>]*aria-label="([^"]+)"[^>]*>(.*?)</svg>', html, re.DOTALL))
    for name in ("Messages per day by source", "Net sentiment per day by source"):
        chart = svgs[name]
        assert "other (3)" in chart and "feed-a" in chart and "trustpilot" in chart
        assert "feed-b" not in chart and "feed-d" not in chart
    assert "feed-a" not in svgs["Messages per day by channel"]  # one channel, rss
    series = [
        [c[0], *(f"{n}\n{s}" for n, s in zip(c[1:], t[1:], strict=True))]
        for c, t in zip(counts, nets, strict=True)
    ]
    assert has_run(html_rows(html), [["Day", *shown], *series])
    assert "feed-d" in html and '"other (3)" sums the smaller sources' in html_text(html)
    # Every source keeps its own rows in the csv and the json: nothing is summed there.
    table = csv_table(render(report, "csv"))
    assert table[("source_series", "messages", "feed-d", "2026-04-06")] == ("1", "0", "1")
    assert not any(k[2].startswith("other") for k in table)
    assert len(report.sources) == 9


# ---------------------------------------------------------------------------------------------
# The report reads aggregates, not the messages.


@contextmanager
def rows_fetched(store: Store) -> Iterator[list[int]]:
    """Count the rows the database sends to Python through the store's read engine.

    The async drivers' cursors (aiosqlite, asyncpg) fetch a statement's whole result when it
    is executed, into ``_rows``: its length is what the database sent.
    """
    count = [0]

    def after(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if cursor.description is not None:
            count[0] += len(cursor._rows)

    engine = store.read_engine.sync_engine
    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        yield count
    finally:
        sa.event.remove(engine, "after_cursor_execute", after)


async def _bulk(store: Store, first: int, per_hour: int) -> int:
    """``per_hour`` inbound messages in each hour of the seed's current period, of the same
    few kinds whatever ``per_hour`` (2 channels and sources, 3 sentiment classes and 1 in 16
    unscored, 1 in 16 ignored, customers 1-10), written with their rollups as the pipeline
    writes them."""
    start = END - WEEK
    rows = []
    for hour in range(7 * 24):
        for j in range(per_hour):
            n = first + hour * per_hour + j
            scored = n % 16 != 3
            rows.append(
                {
                    "channel": ("x", "email")[n % 2],
                    "source": ("x", "support-inbox")[n % 2],
                    "external_id": f"bulk{n}",
                    "customer_id": 1 + n % 10,
                    "text": f"bulk message {n} about the courier and the refund",
                    "sentiment": (0.6, 0.0, -0.6, 0.3)[n % 4] if scored else None,
                    "scored": scored,
                    "intent": ("praise", None, "complaint")[n % 3],
                    "tags": [["late"], [], ["vip"]][n % 3],
                    "ignored": n % 16 == 11,
                    "created_at": start + timedelta(hours=hour, seconds=j * 3600 // per_hour),
                    "received_at": start + timedelta(hours=hour),
                }
            )
    for i in range(0, len(rows), 2000):
        async with store.session() as s:
            batch = rows[i : i + 2000]
            await s.execute(sa.insert(MESSAGE), batch)
            await rollups.add(s, batch)
    return len(rows)


async def test_rows_read_do_not_grow_with_the_messages(store: Store) -> None:
    await seed(store)
    # 9 an hour: 63 in each of the 24 seven-hour slices of the word sample, at least 55 of them
    # scored and counted; the sample takes 50 of each. So both reports sample all they can.
    per_hour = 9
    small = await _bulk(store, 0, per_hour)
    with rows_fetched(store) as before:
        first = await build_report(store, period=WEEK, end=END, brand="Acme")
    big = small + await _bulk(store, small, 4 * per_hour)  # five times as many messages
    with rows_fetched(store) as after:
        second = await build_report(store, period=WEEK, end=END, brand="Acme")
    # The seed's 20, and the bulk but its ignored ones.
    assert first.overall.current.total == 20 + sum(n % 16 != 11 for n in range(small))
    assert second.overall.current.total == 20 + sum(n % 16 != 11 for n in range(big))
    assert first.topics.terms_sample == second.topics.terms_sample == TERM_SLICES * TERM_SLICE_ROWS
    # The word sample (at most 24 x 50 a period) is the largest part; the rest are aggregates.
    assert before[0] <= 2 * TERM_SLICES * TERM_SLICE_ROWS + 300
    assert after[0] <= before[0] + 10, (before[0], after[0], big)
    # The counter sees every row a query returns.
    with rows_fetched(store) as plain:
        async with store.reader() as s:
            ids = (await s.execute(sa.select(MESSAGE.c.id))).all()
    assert plain[0] == len(ids) == big + 20 + 12 + 5


async def test_a_line_break_cannot_split_a_row_or_start_a_formula(store: Store) -> None:
    # A name with a bare CR stayed unquoted under a "\n" line end: readers that end rows at
    # CR started a new row with a live formula.
    await seed(store)
    evil = "Eve\r=cmd|' /C calc'!A0\n+1+1\r\n@SUM(A1)"
    async with store.session() as s:
        await s.execute(
            sa.update(Customer).where(Customer.id == MOST_ACTIVE[0]).values(name=evil)  # type: ignore[arg-type]
        )
    text = render(await build_report(store, period=WEEK, end=END, brand="Acme"), "csv")
    assert text.endswith("\r\n")
    # Every physical line (however a reader ends rows) starts with neither a formula nor a
    # line break's leftovers.
    for line in re.split(r"\r\n|\r|\n", text):
        assert line[:1] not in ("=", "+", "-", "@", "\t"), line
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert all(len(row) == len(rows[0]) for row in rows)
    guarded = "Eve\r'=cmd|' /C calc'!A0\n'+1+1\r\n'@SUM(A1)"
    assert any(row[2] == guarded for row in rows)
    assert not any(evil in row for row in rows)
