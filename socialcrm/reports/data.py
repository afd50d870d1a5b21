"""The report's numbers: SQL aggregates over messages, customers and tickets.

Every figure is computed by the database (GROUP BY, COUNT, SUM, window functions,
``percentile_cont``); Python only folds the aggregated rows (a few thousand at most) into the
report and never loads the period's messages. Volume, sentiment, channels, sources, intents
and tags are summed from the rollups (``socialcrm.rollups``: counts per 15-minute UTC slot),
except in the quarter hours a period boundary cuts, which are counted from the messages.
The one exception to "no messages in Python" is the list of content words: the texts of a
bounded, evenly spread sample of the period's scored messages (``TERM_SLICES``
time slices x ``TERM_SLICE_ROWS`` messages each, so at most a few thousand texts whatever the
volume) are tokenised here, because neither database can split text into words portably.

Definitions (the report's templates repeat them in words):

- A message counts when it is inbound; ignored messages (spam and the like, which the rules
  mark ``ignored``) are counted apart and left out of everything else.
- Positive: compound sentiment >= 0.05; negative: <= -0.05; neutral: in between. Messages in a
  language the scorer cannot score have NULL sentiment: they are *unscored*, never neutral.
- Net sentiment = (positive - negative) / scored messages, from -1 to +1 (None when nothing
  was scored).
- The previous period is the one of the same length that ends where the current one starts.
- Buckets are local days (local hours for periods of two days or less) in the report's
  time zone, labelled ``YYYY-MM-DD`` (``YYYY-MM-DD HH:00``); the first and last bucket may be
  partial when ``end`` is not at a local midnight.
- The 80/20 view ranks the non-merged customers past the prospect stage by lifetime value
  (ties: the newer customer first) and takes the first ceil(20%) of them; "everyone else"
  is every other counted message, including messages from prospects and from nobody known.
- Service: *opened* and *resolved* count tickets whose ``opened_at`` / ``resolved_at`` fall in
  the period; the backlog is the tickets opened before the period's end and not resolved by
  then; first response time is measured on the tickets first answered in the period and
  resolution time on those resolved in it (median and 90th percentile, interpolated as
  PostgreSQL's ``percentile_cont``); SLA compliance is the share of tickets whose due time fell
  in the period that were answered (resolved) by it. A ticket without a team is "unassigned".
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel

import socialcrm.models as _models  # noqa: F401  (registers the tables in the metadata)
from socialcrm.db import Store
from socialcrm.intents import PROBLEM_INTENTS
from socialcrm.models import ROLLUP_SLOT_S, ROLLUP_TAG_CHARS, UTCDateTime, utcnow
from socialcrm.rollups import EPOCH, NEGATIVE_AT, POSITIVE_AT, class_sql, slot_of, slot_start

M = SQLModel.metadata.tables["message"]
R = SQLModel.metadata.tables["message_rollup"]
TR = SQLModel.metadata.tables["topic_rollup"]
C = SQLModel.metadata.tables["customer"]
T = SQLModel.metadata.tables["ticket"]
IDENT = SQLModel.metadata.tables["identity"]

#: The 80/20 view: the top share of customers by lifetime value.
TOP_SHARE = 0.2
#: Period length up to which the series is per hour instead of per day.
HOURLY_UP_TO = timedelta(days=2)
#: Lengths of the lists in the report.
TOP_MESSAGES = 5
TOP_AUTHORS = 10
TOP_TOPICS = 10
TOP_TERMS = 15
#: The content-word sample: this many evenly spaced time slices per period, the first
#: TERM_SLICE_ROWS scored messages of each, the first TERM_TEXT_CHARS characters of each text.
TERM_SLICES = 24
TERM_SLICE_ROWS = 50
TERM_TEXT_CHARS = 1000
#: Longest message text kept in the report's lists.
QUOTE_CHARS = 500
#: Queries running at once (each on its own read session): the report's aggregates are
#: independent, and two databases sessions use two cores.
PARALLEL_QUERIES = 4

#: PostgreSQL's memory for each sort or hash of a report query (the server's default, 4 MB,
#: spills the per-customer counts of a busy week to disk).
WORK_MEM = "64MB"

BucketUnit = Literal["day", "hour"]
Flag = Literal[0, 1]  # 1 = current period, 0 = previous period

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# The report's shape. Derived figures are properties; ``derived`` names them for the JSON.


@dataclass(frozen=True, slots=True)
class Sentiment:
    """Message counts by sentiment class."""

    derived: ClassVar[tuple[str, ...]] = ("total", "scored", "net_sentiment")

    positive: int = 0
    neutral: int = 0
    negative: int = 0
    unscored: int = 0

    @property
    def total(self) -> int:
        """Every message, scored or not."""
        return self.positive + self.neutral + self.negative + self.unscored

    @property
    def scored(self) -> int:
        """Messages whose language could be scored."""
        return self.positive + self.neutral + self.negative

    @property
    def net_sentiment(self) -> float | None:
        """Share positive minus share negative among scored messages (-1..+1)."""
        if not self.scored:
            return None
        return (self.positive - self.negative) / self.scored

    def __add__(self, other: Sentiment) -> Sentiment:
        return Sentiment(
            self.positive + other.positive,
            self.neutral + other.neutral,
            self.negative + other.negative,
            self.unscored + other.unscored,
        )

    def __sub__(self, other: Sentiment) -> Sentiment:
        return Sentiment(
            self.positive - other.positive,
            self.neutral - other.neutral,
            self.negative - other.negative,
            self.unscored - other.unscored,
        )


def change(current: float | None, previous: float | None) -> float | None:
    """current - previous, or None when either is unknown."""
    if current is None or previous is None:
        return None
    return current - previous


def ratio_change(current: float, previous: float) -> float | None:
    """Relative change (0.25 = +25%), None when there was nothing before."""
    if not previous:
        return None
    return (current - previous) / previous


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Volume and sentiment of one slice (all messages, a channel or a source)."""

    derived: ClassVar[tuple[str, ...]] = ("volume_change", "net_sentiment_change")

    key: str
    current: Sentiment
    previous: Sentiment
    #: One entry per bucket of the current period (Period.buckets).
    series: tuple[Sentiment, ...]
    #: One entry per bucket of the previous period (Period.previous_buckets).
    previous_series: tuple[Sentiment, ...]

    @property
    def volume_change(self) -> float | None:
        """Relative change in messages against the previous period."""
        return ratio_change(self.current.total, self.previous.total)

    @property
    def net_sentiment_change(self) -> float | None:
        """Change in net sentiment against the previous period."""
        return change(self.current.net_sentiment, self.previous.net_sentiment)


@dataclass(frozen=True, slots=True)
class Period:
    """The window the report covers, and its buckets."""

    start: datetime
    end: datetime
    previous_start: datetime
    tz: str
    unit: BucketUnit
    buckets: tuple[str, ...]
    previous_buckets: tuple[str, ...]
    #: Buckets of this period that it covers only in part (an end or start inside a day or
    #: hour), so a short first or last bucket is not read as a drop.
    partial: tuple[str, ...] = ()

    @property
    def length(self) -> timedelta:
        """How long each period is."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Quote:
    """One message shown in the report (its text is the customer's, untrusted)."""

    id: int
    created_at: datetime
    channel: str
    source: str
    author: str
    text: str
    #: The message's link, only when it is an http(s) URL.
    url: str | None
    sentiment: float


@dataclass(frozen=True, slots=True)
class Count:
    """How often a topic (intent, tag or word) came up in each period."""

    derived: ClassVar[tuple[str, ...]] = ("change",)

    key: str
    current: int
    previous: int

    @property
    def change(self) -> int:
        """current - previous."""
        return self.current - self.previous


@dataclass(frozen=True, slots=True)
class Topics:
    """What people talked about: intents, tags and the commonest content words."""

    intents: tuple[Count, ...]
    tags: tuple[Count, ...]
    #: Words: the number of sampled messages that contain each.
    terms: tuple[Count, ...]
    #: Messages in the word sample of each period.
    terms_sample: int
    terms_previous_sample: int


@dataclass(frozen=True, slots=True)
class Group:
    """Messages from one group of customers, in both periods."""

    #: Customers of the group who wrote in the current (previous) period.
    authors: int
    previous_authors: int
    current: Sentiment
    previous: Sentiment


@dataclass(frozen=True, slots=True)
class ValueSplit:
    """The 80/20 view: the most valuable customers against everyone else."""

    derived: ClassVar[tuple[str, ...]] = ("top_message_share",)

    #: Non-merged customers past the prospect stage.
    customers: int
    #: How many of them are in the top group.
    top_customers: int
    #: Lowest lifetime value in the top group.
    threshold: float | None
    top: Group
    rest: Group

    @property
    def top_message_share(self) -> float | None:
        """Share of the current period's messages written by the top group."""
        total = self.top.current.total + self.rest.current.total
        return self.top.current.total / total if total else None


@dataclass(frozen=True, slots=True)
class Author:
    """A customer who wrote in the period."""

    customer_id: int
    name: str
    handle: str | None
    channel: str | None
    tier: str
    lifecycle_stage: str
    lifetime_value: float
    reach: int
    messages: Sentiment


@dataclass(frozen=True, slots=True)
class Newcomer:
    """A customer first seen in the period."""

    customer_id: int
    name: str
    handle: str | None
    channel: str | None
    lifecycle_stage: str
    first_seen_at: datetime
    reach: int


@dataclass(frozen=True, slots=True)
class Customers:
    """Who wrote: the 80/20 view, the busiest and the most followed authors, new people."""

    value_split: ValueSplit
    most_active: tuple[Author, ...]
    most_influential: tuple[Author, ...]
    new: Count
    #: New customers of the current period by lifecycle stage.
    new_by_stage: dict[str, int]
    newcomers: tuple[Newcomer, ...]


@dataclass(frozen=True, slots=True)
class Durations:
    """Median and 90th percentile of a duration, in seconds."""

    count: int = 0
    median_s: float | None = None
    p90_s: float | None = None


@dataclass(frozen=True, slots=True)
class Sla:
    """Tickets whose due time fell in the period, and how many met it."""

    derived: ClassVar[tuple[str, ...]] = ("compliance",)

    due: int = 0
    met: int = 0

    @property
    def compliance(self) -> float | None:
        """met / due."""
        return self.met / self.due if self.due else None


@dataclass(frozen=True, slots=True)
class TeamPeriod:
    """One team's service figures for one period."""

    opened: int = 0
    resolved: int = 0
    #: Tickets open at the end of the period.
    backlog: int = 0
    first_response: Durations = field(default_factory=Durations)
    resolution: Durations = field(default_factory=Durations)
    first_response_sla: Sla = field(default_factory=Sla)
    resolution_sla: Sla = field(default_factory=Sla)


@dataclass(frozen=True, slots=True)
class TeamService:
    """One team (or all teams) in both periods."""

    team: str
    current: TeamPeriod
    previous: TeamPeriod


@dataclass(frozen=True, slots=True)
class Service:
    """Tickets by team, and for all teams together."""

    teams: tuple[TeamService, ...]
    total: TeamService


@dataclass(frozen=True, slots=True)
class Report:
    """Everything a report shows; ``render`` turns it into html, md, json or csv."""

    derived: ClassVar[tuple[str, ...]] = ("empty",)

    brand: str
    generated_at: datetime
    period: Period
    overall: Breakdown
    channels: tuple[Breakdown, ...]
    sources: tuple[Breakdown, ...]
    #: Ignored messages (spam...) in the current and the previous period.
    ignored: Count
    most_negative: tuple[Quote, ...]
    most_positive: tuple[Quote, ...]
    topics: Topics
    customers: Customers
    service: Service

    @property
    def empty(self) -> bool:
        """True when neither period has a message, a new customer or a ticket."""
        t = self.service.total
        return not (
            self.overall.current.total
            or self.overall.previous.total
            or self.ignored.current
            or self.ignored.previous
            or self.customers.new.current
            or self.customers.new.previous
            or t.current.opened
            or t.previous.opened
            or t.current.backlog
            or t.current.resolved
            or t.previous.resolved
        )


# ---------------------------------------------------------------------------------------------
# Time: the window, local buckets and the SQL that puts a timestamp in its bucket.


@dataclass(frozen=True, slots=True)
class _Window:
    previous_start: datetime
    start: datetime
    end: datetime
    zone: ZoneInfo
    unit: BucketUnit

    def flag(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
        """1 for the current period, 0 for the previous one."""
        return sa.case((column >= self.start, 1), else_=0)

    def both(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """The timestamp falls in either period."""
        return sa.and_(column >= self.previous_start, column < self.end)

    def current(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """The timestamp falls in the current period."""
        return sa.and_(column >= self.start, column < self.end)


def _labels(start: datetime, end: datetime, zone: ZoneInfo, unit: BucketUnit) -> tuple[str, ...]:
    """Labels of the local buckets that [start, end) touches, in order."""
    labels: list[str] = []
    if end <= start:
        return ()
    if unit == "day":
        day = start.astimezone(zone).date()
        last = (end - timedelta(microseconds=1)).astimezone(zone).date()
        while day <= last:
            labels.append(day.isoformat())
            day += timedelta(days=1)
        return tuple(labels)
    t = start.astimezone(zone).replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    while t < end:
        label = t.astimezone(zone).strftime("%Y-%m-%d %H:00")
        if not labels or labels[-1] != label:  # the repeated hour when clocks go back
            labels.append(label)
        t += timedelta(hours=1)
    return tuple(labels)


def _offsets(start: datetime, end: datetime, zone: ZoneInfo) -> list[tuple[datetime, int]]:
    """(from, UTC offset in minutes) for each stretch of [start, end) with one offset."""

    def minutes(t: datetime) -> int:
        off = t.astimezone(zone).utcoffset() or timedelta(0)
        return int(off.total_seconds() // 60)

    spans = [(start, minutes(start))]
    t = start
    step = timedelta(hours=1)
    while t < end:
        nxt = min(t + step, end)
        if minutes(nxt) != spans[-1][1]:
            lo, hi = t, nxt  # the change happens in (lo, hi]: find the minute
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if minutes(mid) == spans[-1][1]:
                    lo = mid
                else:
                    hi = mid
            spans.append((hi, minutes(hi)))
        t = nxt
    return spans


def _bucket_sql(dialect: str, column: sa.ColumnElement[Any], w: _Window) -> sa.ColumnElement[Any]:
    """The local bucket of a timestamp: a label on SQLite, a local timestamp on PostgreSQL."""
    if dialect == "postgresql":
        local = sa.func.timezone(w.zone.key, column)
        return sa.func.date_trunc(w.unit, local)
    width = 10 if w.unit == "day" else 13  # "YYYY-MM-DD" / "YYYY-MM-DD HH" of the stored text
    fmt = "%Y-%m-%d" if w.unit == "day" else "%Y-%m-%d %H"
    spans = _offsets(w.previous_start, w.end, w.zone)
    if len(spans) == 1 and spans[0][1] == 0:
        return sa.func.substr(column, 1, width)  # UTC: the stored text already starts with it
    whens = [
        (column < until, sa.func.strftime(fmt, column, f"{off:+d} minutes"))
        for (_, off), (until, _) in itertools.pairwise(spans)
    ]
    last = sa.func.strftime(fmt, column, f"{spans[-1][1]:+d} minutes")
    return sa.case(*whens, else_=last) if whens else last


def _bucket_label(value: Any, unit: BucketUnit) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d" if unit == "day" else "%Y-%m-%d %H:00")
    text = str(value)
    return text if unit == "day" else f"{text}:00"


def _by(*columns: sa.ColumnElement[Any]) -> list[sa.ColumnElement[Any]]:
    """GROUP BY terms: labelled expressions by their label, so each is computed once a row."""
    return [sa.literal_column(c.name) if isinstance(c, sa.Label) else c for c in columns]


def _ts(value: datetime) -> sa.BindParameter[datetime]:
    return sa.bindparam(None, value, type_=UTCDateTime)


# ---------------------------------------------------------------------------------------------
# Shared SQL pieces.


def _sentiment_sums(
    within: sa.ColumnElement[bool] | None = None, suffix: str = ""
) -> list[sa.ColumnElement[Any]]:
    """n, pos, neg, uns (in the order ``_sentiment_of`` takes them) of the rows, or of those
    ``within`` a condition, labelled with ``suffix``: by the class the headline counts (the
    learned model's where it read the message, else the score's), so that a customer's
    figures agree with the headline's."""
    c = class_sql(M.c.sentiment, triage=M.c.triage_class)

    def count(cond: sa.ColumnElement[bool] | None) -> sa.ColumnElement[Any]:
        if within is not None:
            cond = within if cond is None else sa.and_(within, cond)
        if cond is None:
            return sa.func.count()
        return sa.func.sum(sa.case((cond, 1), else_=0))

    return [
        count(None).label(f"n{suffix}"),
        count(c == 1).label(f"pos{suffix}"),
        count(c == -1).label(f"neg{suffix}"),
        count(c == 2).label(f"uns{suffix}"),
    ]


def _sentiment_of(n: Any, pos: Any, neg: Any, uns: Any) -> Sentiment:
    n, pos, neg, uns = int(n or 0), int(pos or 0), int(neg or 0), int(uns or 0)
    return Sentiment(positive=pos, neutral=n - pos - neg - uns, negative=neg, unscored=uns)


def _counted(w: _Window) -> list[sa.ColumnElement[bool]]:
    """Inbound, not ignored, in either period."""
    return [w.both(M.c.created_at), M.c.direction == "inbound", M.c.ignored.is_(False)]


def _safe_url(url: str | None) -> str | None:
    if not url:
        return None
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError:
        return None
    return url.strip() if scheme in ("http", "https") else None


def _text(value: Any, limit: int = QUOTE_CHARS) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration_sql(
    dialect: str, later: sa.ColumnElement[Any], earlier: sa.ColumnElement[Any]
) -> Any:
    if dialect == "postgresql":
        return sa.func.extract("epoch", later - earlier)
    return (sa.func.julianday(later) - sa.func.julianday(earlier)) * 86400.0


# ---------------------------------------------------------------------------------------------
# Messages: one pass for every categorical figure.


@dataclass
class _MessageFacts:
    overall: Breakdown
    channels: tuple[Breakdown, ...]
    sources: tuple[Breakdown, ...]
    ignored: Count
    intents: tuple[Count, ...]
    tags: tuple[Count, ...]


class _FactsBuilder:
    """Folds message counts (from the rollups or from the messages) into the report's facts."""

    def __init__(self, period: Period) -> None:
        self.index = [
            {b: i for i, b in enumerate(period.previous_buckets)},
            {b: i for i, b in enumerate(period.buckets)},
        ]
        self.sizes = [len(period.previous_buckets), len(period.buckets)]
        # key -> flag -> bucket index -> [pos, neu, neg, uns]
        self.cells: dict[str, list[list[list[int]]]] = {}
        self.ignored = [0, 0]
        self.topics: dict[str, list[Counter[str]]] = {
            "intent": [Counter(), Counter()],
            "tag": [Counter(), Counter()],
        }

    def add(
        self, flag: int, bucket: str, channel: str, source: str, ignored: bool, cls: int, n: int
    ) -> None:
        """``n`` messages of one bucket, channel, source, ignored flag and sentiment class."""
        if ignored:
            self.ignored[flag] += n
            return
        for key in ("", f"c:{channel}", f"s:{source}"):
            self._cell(key, flag, bucket, cls, n)

    def add_topic(self, flag: int, kind: str, key: str, n: int) -> None:
        """``n`` messages with an intent or a tag."""
        self.topics[kind][flag][key] += n

    def _cell(self, key: str, flag: int, bucket: str, cls: int, n: int) -> None:
        cells = self.cells.get(key)
        if cells is None:
            cells = self.cells[key] = [[[0, 0, 0, 0] for _ in range(s)] for s in self.sizes]
        i = self.index[flag].get(bucket)
        if i is None:
            return
        slot = {1: 0, 0: 1, -1: 2, 2: 3}[cls]
        cells[flag][i][slot] += n

    def breakdown(self, key: str, name: str) -> Breakdown:
        cells = self.cells.get(key) or [[[0, 0, 0, 0] for _ in range(s)] for s in self.sizes]
        prev = tuple(Sentiment(*c) for c in cells[0])
        cur = tuple(Sentiment(*c) for c in cells[1])
        return Breakdown(name, sum(cur, Sentiment()), sum(prev, Sentiment()), cur, prev)

    def breakdowns(self, prefix: str) -> tuple[Breakdown, ...]:
        rows = [self.breakdown(k, k[len(prefix) :]) for k in self.cells if k.startswith(prefix)]
        return tuple(sorted(rows, key=lambda r: (-r.current.total, -r.previous.total, r.key)))

    def facts(self) -> _MessageFacts:
        intents, tags = self.topics["intent"], self.topics["tag"]
        return _MessageFacts(
            overall=self.breakdown("", "all"),
            channels=self.breakdowns("c:"),
            sources=self.breakdowns("s:"),
            ignored=Count("ignored", self.ignored[1], self.ignored[0]),
            intents=_top_counts(intents[1], intents[0], TOP_TOPICS),
            tags=_top_counts(tags[1], tags[0], TOP_TOPICS),
        )


def _top_counts(current: Counter[str], previous: Counter[str], n: int) -> tuple[Count, ...]:
    keys = sorted(set(current) | set(previous), key=lambda k: (-current[k], -previous[k], k))
    return tuple(Count(k, current[k], previous[k]) for k in keys[:n])


@dataclass(frozen=True, slots=True)
class _Slots:
    """How the window splits between the rollups' 15-minute slots and the messages.

    The slots in ``[first, stop)`` lie wholly in one period and come from the rollups, except
    those in ``cut``: a period boundary that is not on a quarter hour cuts its slot, whose part
    in the window (``ranges``) is counted from the messages.
    """

    first: int
    stop: int
    #: The first slot of the current period.
    current: int
    cut: tuple[int, ...]
    ranges: tuple[tuple[datetime, datetime], ...]

    @classmethod
    def of(cls, w: _Window) -> _Slots:
        def ceil(t: datetime) -> int:
            slot = slot_of(t)
            return slot if slot_start(slot) == t else slot + 1

        bounds = (w.previous_start, w.start, w.end)
        cut = sorted({slot_of(t) for t in bounds if slot_of(t) != ceil(t)})
        ranges = [
            (max(slot_start(s), w.previous_start), min(slot_start(s + 1), w.end)) for s in cut
        ]
        return cls(
            first=ceil(w.previous_start),
            stop=slot_of(w.end),
            current=ceil(w.start),
            cut=tuple(cut),
            ranges=tuple((a, b) for a, b in ranges if a < b),
        )

    def where(self, column: sa.ColumnElement[int]) -> list[sa.ColumnElement[bool]]:
        """The rollup rows of the slots wholly in the window."""
        out = [column >= self.first, column < self.stop]
        if self.cut:
            out.append(column.not_in(self.cut))
        return out


def _local_bucket_sql(slot: sa.ColumnElement[int], w: _Window) -> sa.ColumnElement[int]:
    """The local day (hour) of a slot, counted from the epoch: integer arithmetic on both
    databases, one offset per stretch of the window with one UTC offset."""
    width = 86400 if w.unit == "day" else 3600
    spans = _offsets(w.previous_start, w.end, w.zone)

    def number(value: int) -> sa.ColumnElement[int]:
        return sa.literal_column(str(value), sa.BigInteger)

    def local(offset_minutes: int) -> sa.ColumnElement[int]:
        return (slot * number(ROLLUP_SLOT_S) + number(offset_minutes * 60)) // number(width)

    whens = [
        (slot < slot_of(until), local(off)) for (_, off), (until, _) in itertools.pairwise(spans)
    ]
    last = local(spans[-1][1])
    return sa.case(*whens, else_=last) if whens else last


def _local_label(number: int, unit: BucketUnit) -> str:
    if unit == "day":
        return (EPOCH + timedelta(days=number)).date().isoformat()
    return (EPOCH + timedelta(hours=number)).strftime("%Y-%m-%d %H:00")


async def _rollup_facts(
    session: AsyncSession, w: _Window, slots: _Slots, facts: _FactsBuilder
) -> None:
    """Counts of the slots wholly in the window, from the rollups."""
    flag = sa.case((R.c.slot >= slots.current, 1), else_=0).label("p")
    bucket = _local_bucket_sql(R.c.slot, w).label("b")
    keys = [flag, bucket, R.c.channel, R.c.source, R.c.ignored, R.c.sentiment]
    q = sa.select(*keys, sa.func.sum(R.c.n)).where(*slots.where(R.c.slot)).group_by(*_by(*keys))
    row: Any
    for row in await session.execute(q):
        p, b, channel, source, ignored, cls, n = row
        facts.add(p, _local_label(int(b), w.unit), channel, source, ignored, cls, int(n))
    topic_flag = sa.case((TR.c.slot >= slots.current, 1), else_=0).label("p")
    q = (
        sa.select(topic_flag, TR.c.kind, TR.c.key, sa.func.sum(TR.c.n))
        .where(*slots.where(TR.c.slot))
        .group_by(*_by(topic_flag, TR.c.kind, TR.c.key))
    )
    topic: Any
    for topic in await session.execute(q):
        p, kind, key, n = topic
        if kind in facts.topics:
            facts.add_topic(p, kind, key, int(n))


async def _raw_facts(
    session: AsyncSession,
    w: _Window,
    ranges: Sequence[tuple[datetime, datetime]],
    facts: _FactsBuilder,
) -> None:
    """Counts of the messages in ``ranges``, from the messages themselves."""
    if not ranges:
        return
    dialect = session.get_bind().dialect.name
    flag = w.flag(M.c.created_at).label("p")
    bucket = _bucket_sql(dialect, M.c.created_at, w).label("b")
    cls = class_sql(M.c.sentiment, triage=M.c.triage_class).label("c")
    keys = [flag, bucket, M.c.channel, M.c.source, M.c.ignored, cls, M.c.intent, M.c.tags]
    within = [sa.and_(M.c.created_at >= _ts(a), M.c.created_at < _ts(b)) for a, b in ranges]
    q = (
        sa.select(*keys, sa.func.count().label("n"))
        .where(sa.or_(*within), M.c.direction == "inbound")
        .group_by(*_by(*keys))
    )
    row: Any
    for row in await session.execute(q):
        p, b, channel, source, is_ignored, c, intent, tag_list, n = row
        facts.add(p, _bucket_label(b, w.unit), channel, source, is_ignored, c, n)
        if is_ignored:
            continue
        if intent:
            facts.add_topic(p, "intent", intent, n)
        for tag in set(tag_list or ()):
            facts.add_topic(p, "tag", str(tag)[:ROLLUP_TAG_CHARS], n)


async def _message_facts(
    session: AsyncSession, w: _Window, period: Period, *, rollups: bool = True
) -> _MessageFacts:
    """Series, channels, sources, ignored, intents and tags.

    From the rollups for the quarter hours wholly in the window and from the messages for the
    (at most three) quarter hours a period boundary cuts; ``rollups=False`` counts everything
    from the messages (the reference the rollups are tested against).
    """
    facts = _FactsBuilder(period)
    if rollups:
        slots = _Slots.of(w)
        await _rollup_facts(session, w, slots, facts)
        await _raw_facts(session, w, slots.ranges, facts)
    else:
        await _raw_facts(session, w, [(w.previous_start, w.end)], facts)
    return facts.facts()


async def _quotes(session: AsyncSession, w: _Window, negative: bool) -> tuple[Quote, ...]:
    """The most negative (positive) messages of the current period."""
    s = M.c.sentiment
    # A message the rules read as a problem is never among the most positive, whatever its
    # score ("thanks for charging me twice"), and praise never among the most negative.
    intent = M.c.intent
    wrong = PROBLEM_INTENTS if not negative else ("praise",)
    ids = (
        sa.select(M.c.id)
        .where(
            w.current(M.c.created_at),
            M.c.direction == "inbound",
            M.c.ignored.is_(False),
            s <= NEGATIVE_AT if negative else s >= POSITIVE_AT,
            sa.or_(intent.is_(None), intent.not_in(wrong)),
            # The learned model's class, where there is one, must agree: a complaint in
            # cheerful words is not a "most positive" message.
            sa.or_(
                M.c.triage_class.is_(None),
                M.c.triage_class == ("negative" if negative else "positive"),
            ),
        )
        .order_by(s.asc() if negative else s.desc(), M.c.id.desc())
        .limit(TOP_MESSAGES)
    )
    q = sa.select(
        M.c.id,
        M.c.created_at,
        M.c.channel,
        M.c.source,
        M.c.author_handle,
        M.c.author_name,
        sa.func.substr(M.c.text, 1, QUOTE_CHARS + 1).label("text"),
        M.c.url,
        s,
    ).where(M.c.id.in_(ids.scalar_subquery()))
    rows = sorted(
        (await session.execute(q)).all(),
        key=lambda r: (r.sentiment if negative else -r.sentiment, -r.id),
    )
    return tuple(
        Quote(
            id=r.id,
            created_at=r.created_at,
            channel=r.channel,
            source=r.source,
            author=r.author_handle or r.author_name or "",
            text=_text(r.text),
            url=_safe_url(r.url),
            sentiment=float(r.sentiment),
        )
        for r in rows
    )


# ---------------------------------------------------------------------------------------------
# Content words from a bounded sample.

_WORD_RE = re.compile(r"[a-z][a-z'\u2019-]*[a-z]")
_NOISE_RE = re.compile(r"https?://\S+|www\.\S+|\S+@\S+|[@#]\w[\w.-]*", re.IGNORECASE)
#: English function words, chat filler and e-mail furniture: not topics.
STOP_WORDS = frozenset(
    """
    a about above after again against all almost also am an and any are aren't as at be because
    been before being below between both but by can can't cannot could couldn't did didn't do
    does doesn't doing don't down during each even ever every few for from further get gets
    getting got had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers
    herself him himself his how how's however i i'd i'll i'm i've if in into is isn't it it's its
    itself just let's like made make many may me might more most much must mustn't my myself
    need needs never no nor not now of off on once one only or other ought our ours ourselves out
    over own really same says see seems shan't she she'd she'll she's should shouldn't since so
    some still such than that that's the their theirs them themselves then there there's these
    they they'd they'll they're they've thing things this those though through to too two under
    until up upon us very via was wasn't we we'd we'll we're we've well were weren't what what's
    when when's where where's whether which while who who's whom why why's will with won't would
    wouldn't yes yet you you'd you'll you're you've your yours yourself yourselves im ive dont
    cant wont didnt doesnt isnt thats its youre theyre ok okay oh hey hi hello lol pls please
    thanks thank thx guys anyone someone something anything everything nothing go going gonna
    want wanna know think said say going day days today yesterday tomorrow time back new
    re fw fwd wrote sent regards best kind dear hello team sincerely cheers iphone android mobile
    http https www com amp via rt
    """.split()
)


def _words(text: str, stop: frozenset[str]) -> set[str]:
    text = _NOISE_RE.sub(" ", text.lower())
    out = set()
    for found in _WORD_RE.findall(text):
        word = found.replace("\u2019", "'")
        if len(word) >= 3 and word not in stop and not word.endswith("'s"):
            out.add(word)
        elif word.endswith("'s") and word[:-2] not in stop and len(word) > 4:
            out.add(word[:-2])
    return out


async def _term_sample(session: AsyncSession, w: _Window) -> list[tuple[int, str]]:
    """(flag, text) of up to TERM_SLICES x TERM_SLICE_ROWS scored messages per period."""
    parts = []
    for flag, (lo, hi) in enumerate(((w.previous_start, w.start), (w.start, w.end))):
        step = (hi - lo) / TERM_SLICES
        for i in range(TERM_SLICES):
            a, b = lo + step * i, lo + step * (i + 1) if i < TERM_SLICES - 1 else hi
            part = (
                sa.select(
                    sa.literal_column(str(flag)).label("p"),
                    sa.func.substr(M.c.text, 1, TERM_TEXT_CHARS).label("text"),
                )
                .where(
                    M.c.created_at >= _ts(a),
                    M.c.created_at < _ts(b),
                    M.c.direction == "inbound",
                    M.c.ignored.is_(False),
                    M.c.sentiment.is_not(None),
                )
                .order_by(M.c.created_at)
                .limit(TERM_SLICE_ROWS)
                .subquery()
            )
            parts.append(sa.select(part.c.p, part.c.text))
    rows = await session.execute(sa.union_all(*parts))
    return [(int(p), str(text or "")) for p, text in rows]


def _terms(sample: Iterable[tuple[int, str]], brand: str) -> tuple[tuple[Count, ...], int, int]:
    stop = STOP_WORDS | {w for w in re.findall(r"[a-z][a-z'-]*", brand.lower())}
    counts: list[Counter[str]] = [Counter(), Counter()]
    sizes = [0, 0]
    for flag, text in sample:
        sizes[flag] += 1
        counts[flag].update(_words(text, stop))
    current, previous = counts[1], counts[0]
    keys = sorted(current, key=lambda k: (-current[k], k))[:TOP_TERMS]
    return tuple(Count(k, current[k], previous[k]) for k in keys), sizes[1], sizes[0]


# ---------------------------------------------------------------------------------------------
# Customers.


def _eligible() -> list[sa.ColumnElement[bool]]:
    return [C.c.merged_into_id.is_(None), C.c.lifecycle_stage != "prospect"]


@dataclass(frozen=True, slots=True)
class _Activity:
    """The customers' side of the messages: the 80/20 split and the most active authors."""

    #: Non-merged customers past the prospect stage, and how many are in the top group.
    population: int
    top_k: int
    threshold: float | None
    #: Authors (current, previous) and the messages of the top group in each period.
    top_authors: tuple[int, int]
    top_current: Sentiment
    top_previous: Sentiment
    #: Authors (current, previous) of everyone else.
    rest_authors: tuple[int, int]
    #: The customers with the most messages in the current period, with their counts.
    active: tuple[tuple[int, Sentiment], ...]

    def value_split(self, overall: Breakdown) -> ValueSplit:
        """The 80/20 view; everyone else wrote the rest of ``overall``'s messages."""
        return ValueSplit(
            customers=self.population,
            top_customers=self.top_k,
            threshold=self.threshold,
            top=Group(*self.top_authors, self.top_current, self.top_previous),
            rest=Group(
                *self.rest_authors,
                overall.current - self.top_current,
                overall.previous - self.top_previous,
            ),
        )


async def _activity(session: AsyncSession, w: _Window) -> _Activity:
    """One pass over the period's messages per customer serves the 80/20 split (joined to the
    customers' value) and the most active authors."""
    population = int(
        (await session.execute(sa.select(sa.func.count()).where(*_eligible()))).scalar_one()
    )
    k = math.ceil(population * TOP_SHARE)
    last = None
    if k:
        # Ties go to the newer customer: (value desc, id desc) is an index's order backwards.
        ranked = sa.select(C.c.id, C.c.lifetime_value).where(*_eligible())
        ranked = ranked.order_by(C.c.lifetime_value.desc(), C.c.id.desc())
        last = (await session.execute(ranked.offset(k - 1).limit(1))).one()
    per = (
        sa.select(
            M.c.customer_id.label("cid"),
            *_sentiment_sums(M.c.created_at >= w.start, "_c"),
            *_sentiment_sums(M.c.created_at < w.start, "_p"),
        )
        .where(*_counted(w), M.c.customer_id.is_not(None))
        .group_by(M.c.customer_id)
        .cte("per")
    )
    if last is not None:
        # The k-th customer by (value desc, id desc) bounds the top group: no second sort.
        value = sa.bindparam("v", last.lifetime_value, type_=C.c.lifetime_value.type)
        is_top = sa.and_(
            *_eligible(),
            sa.or_(
                C.c.lifetime_value > value, sa.and_(C.c.lifetime_value == value, C.c.id >= last.id)
            ),
        )
        top: sa.ColumnElement[int] = sa.case((is_top, 1), else_=0)
    else:
        top = sa.literal(0)
    sums = [c for c in per.c if c.name != "cid"]

    def authors(name: str) -> sa.ColumnElement[Any]:
        return sa.func.sum(sa.case((per.c[f"n_{name}"] > 0, 1), else_=0))

    split = (
        sa.select(
            sa.literal(0).label("part"),
            top.label("key"),
            authors("c"),
            authors("p"),
            *(sa.func.sum(c) for c in sums),
        )
        .select_from(per.join(C, C.c.id == per.c.cid))
        .group_by(sa.literal_column("key"))
    )
    busiest = (
        sa.select(per)
        .where(per.c.n_c > 0)
        .order_by(per.c.n_c.desc(), per.c.cid)
        .limit(TOP_AUTHORS)
        .subquery()
    )
    active = sa.select(sa.literal(1), busiest.c.cid, sa.literal(0), sa.literal(0), *busiest.c[1:])
    groups: dict[int, tuple[int, int, Sentiment, Sentiment]] = {}
    busy: list[tuple[int, Sentiment]] = []
    row: Any
    for row in await session.execute(sa.union_all(split, active)):
        part, key, authors_c, authors_p, *n = (int(v or 0) for v in row)
        if part == 0:
            groups[key] = (authors_c, authors_p, _sentiment_of(*n[:4]), _sentiment_of(*n[4:]))
        else:
            busy.append((key, _sentiment_of(*n[:4])))
    busy.sort(key=lambda a: (-a[1].total, a[0]))
    top_c, top_p, top_current, top_previous = groups.get(1, (0, 0, Sentiment(), Sentiment()))
    rest_c, rest_p, _, _ = groups.get(0, (0, 0, Sentiment(), Sentiment()))
    return _Activity(
        population=population,
        top_k=k,
        threshold=None if last is None else float(last.lifetime_value),
        top_authors=(top_c, top_p),
        top_current=top_current,
        top_previous=top_previous,
        rest_authors=(rest_c, rest_p),
        active=tuple(busy),
    )


async def _influential_ids(session: AsyncSession, w: _Window) -> list[int]:
    """The customers with the largest reach who wrote in the current period."""
    wrote = (
        sa.select(M.c.id)
        .where(
            M.c.customer_id == C.c.id,
            w.current(M.c.created_at),
            M.c.direction == "inbound",
            M.c.ignored.is_(False),
        )
        .exists()
    )
    q = (
        sa.select(C.c.id)
        .where(C.c.merged_into_id.is_(None), C.c.reach > 0, wrote)
        .order_by(C.c.reach.desc(), C.c.id.desc())
        .limit(TOP_AUTHORS)
    )
    return list((await session.execute(q)).scalars())


async def _authors(
    session: AsyncSession, w: _Window, ids: Sequence[int], known: dict[int, Sentiment]
) -> dict[int, Author]:
    """Customer details and the period's message counts of the given customers."""
    if not ids:
        return {}
    people = {r.id: r for r in await session.execute(sa.select(C).where(C.c.id.in_(ids)))}
    handles = await _handles(session, ids)
    missing = [i for i in ids if i not in known]
    counts = dict(known)
    if missing:
        q = (
            sa.select(M.c.customer_id, *_sentiment_sums())
            .where(
                M.c.customer_id.in_(missing),
                w.current(M.c.created_at),
                M.c.direction == "inbound",
                M.c.ignored.is_(False),
            )
            .group_by(M.c.customer_id)
        )
        for r in await session.execute(q):
            counts[r.customer_id] = _sentiment_of(r.n, r.pos, r.neg, r.uns)
    out = {}
    for i in ids:
        c = people.get(i)
        if c is None:
            continue
        handle, channel = handles.get(i, (None, None))
        out[i] = Author(
            customer_id=i,
            name=c.name or handle or c.email or f"customer {i}",
            handle=handle,
            channel=channel,
            tier=c.tier,
            lifecycle_stage=c.lifecycle_stage,
            lifetime_value=float(c.lifetime_value or 0),
            reach=int(c.reach or 0),
            messages=counts.get(i, Sentiment()),
        )
    return out


async def _handles(session: AsyncSession, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """One (handle or e-mail, channel) per customer: the most followed identity."""
    q = (
        sa.select(IDENT.c.customer_id, IDENT.c.channel, IDENT.c.handle, IDENT.c.email)
        .where(IDENT.c.customer_id.in_(ids))
        .order_by(IDENT.c.customer_id, IDENT.c.followers.desc(), IDENT.c.id)
    )
    out: dict[int, tuple[str, str]] = {}
    for r in await session.execute(q):
        name = r.handle or r.email
        if name and r.customer_id not in out:
            out[r.customer_id] = (name, r.channel)
    return out


async def _newcomers(
    session: AsyncSession, w: _Window
) -> tuple[Count, dict[str, int], tuple[Newcomer, ...]]:
    first = C.c.first_seen_at
    q = (
        sa.select(w.flag(first).label("p"), C.c.lifecycle_stage, sa.func.count())
        .where(w.both(first), C.c.merged_into_id.is_(None))
        .group_by(sa.literal_column("p"), C.c.lifecycle_stage)
    )
    totals = [0, 0]
    stages: dict[str, int] = {}
    for p, stage, n in await session.execute(q):
        totals[p] += n
        if p:
            stages[stage] = stages.get(stage, 0) + n
    listed = (
        sa.select(C)
        .where(w.current(first), C.c.merged_into_id.is_(None))
        .order_by(C.c.reach.desc(), first.desc(), C.c.id)
        .limit(TOP_AUTHORS)
    )
    rows = (await session.execute(listed)).all()
    handles = await _handles(session, [r.id for r in rows])
    people = []
    for r in rows:
        handle, channel = handles.get(r.id, (None, None))
        people.append(
            Newcomer(
                customer_id=r.id,
                name=r.name or handle or r.email or f"customer {r.id}",
                handle=handle,
                channel=channel,
                lifecycle_stage=r.lifecycle_stage,
                first_seen_at=r.first_seen_at,
                reach=int(r.reach or 0),
            )
        )
    return Count("new customers", totals[1], totals[0]), stages, tuple(people)


# ---------------------------------------------------------------------------------------------
# Service.

_Key = tuple[int, str | None]  # (flag, team)
_TOTAL = "\x00all"  # the "all teams" group of a percentile query


async def _ticket_counts(session: AsyncSession, w: _Window) -> dict[str, dict[_Key, Any]]:
    """opened, backlog, and SLA due/met counts by (period, team)."""
    out: dict[str, dict[_Key, Any]] = {}
    q = (
        sa.select(w.flag(T.c.opened_at).label("p"), T.c.team, sa.func.count())
        .where(w.both(T.c.opened_at))
        .group_by(sa.literal_column("p"), T.c.team)
    )
    out["opened"] = {(p, team): n for p, team, n in await session.execute(q)}
    # Open at a moment = opened before it and not resolved by then. Only the unresolved
    # tickets and those resolved since the period began can be, so the two parts below each
    # read a short range of the resolved_at index instead of every ticket ever opened.
    alive = sa.union_all(
        sa.select(T.c.team, T.c.opened_at, T.c.resolved_at).where(
            T.c.resolved_at.is_(None), T.c.opened_at < w.end
        ),
        sa.select(T.c.team, T.c.opened_at, T.c.resolved_at).where(
            T.c.resolved_at >= w.start, T.c.opened_at < w.end
        ),
    ).subquery()
    open_at_start = sa.and_(
        alive.c.opened_at < w.start,
        sa.or_(alive.c.resolved_at.is_(None), alive.c.resolved_at >= w.start),
    )
    open_at_end = sa.or_(alive.c.resolved_at.is_(None), alive.c.resolved_at >= w.end)
    q = sa.select(
        alive.c.team,
        sa.func.sum(sa.case((open_at_start, 1), else_=0)),
        sa.func.sum(sa.case((open_at_end, 1), else_=0)),
    ).group_by(alive.c.team)
    backlog: dict[_Key, int] = {}
    for team, at_start, at_end in await session.execute(q):
        backlog[(0, team)] = int(at_start or 0)
        backlog[(1, team)] = int(at_end or 0)
    out["backlog"] = backlog
    for name, due, done in (
        ("first_response_sla", T.c.first_response_due_at, T.c.first_response_at),
        ("resolution_sla", T.c.resolution_due_at, T.c.resolved_at),
    ):
        met = sa.and_(done.is_not(None), done <= due)
        q = (
            sa.select(
                w.flag(due).label("p"),
                T.c.team,
                sa.func.count(),
                sa.func.sum(sa.case((met, 1), else_=0)),
            )
            .where(w.both(due))
            .group_by(sa.literal_column("p"), T.c.team)
        )
        out[name] = {
            (p, team): Sla(due=n, met=int(m or 0)) for p, team, n, m in await session.execute(q)
        }
    return out


async def _percentiles(
    session: AsyncSession, w: _Window, done: sa.Column[Any]
) -> dict[tuple[int, str | None], Durations]:
    """Count, median and p90 of (done - opened_at) for tickets done in each period, by team.

    The key's team is ``_TOTAL`` for all teams together.
    """
    dialect = session.get_bind().dialect.name
    inner = (
        sa.select(
            w.flag(done).label("p"),
            T.c.team.label("team"),
            _duration_sql(dialect, done, T.c.opened_at).label("d"),
        )
        .where(w.both(done))
        .subquery()
    )
    out: dict[tuple[int, str | None], Durations] = {}
    if dialect == "postgresql":
        q = sa.select(
            inner.c.p,
            inner.c.team,
            sa.func.grouping(inner.c.team).label("total"),
            sa.func.count(),
            sa.func.percentile_cont(0.5).within_group(inner.c.d),
            sa.func.percentile_cont(0.9).within_group(inner.c.d),
        ).group_by(sa.func.grouping_sets(sa.tuple_(inner.c.p, inner.c.team), sa.tuple_(inner.c.p)))
        for p, team, total, n, median, p90 in await session.execute(q):
            key = (p, _TOTAL if total else team)
            out[key] = Durations(n, _seconds(median), _seconds(p90))
        return out
    # SQLite has no percentile function: count each group, rank each duration within its team
    # and within all teams (one sort each), keep only the rows at each percentile's position
    # and the next, interpolate here.
    sizes: dict[tuple[int, str | None], int] = {}
    totals: Counter[int] = Counter()
    counted: Any = sa.select(inner.c.p, inner.c.team, sa.func.count()).group_by(
        inner.c.p, inner.c.team
    )
    for p, team, n in await session.execute(counted):
        sizes[(p, team)] = n
        totals[p] += n
    if not sizes:
        return out
    ranked = sa.select(
        inner.c.p,
        inner.c.team,
        inner.c.d,
        sa.func.row_number()
        .over(partition_by=[inner.c.p, inner.c.team], order_by=inner.c.d)
        .label("rt"),
        sa.func.row_number().over(partition_by=inner.c.p, order_by=inner.c.d).label("ra"),
    ).subquery()
    by_team = set().union(*map(_ranks, sizes.values()))
    by_all = set().union(*map(_ranks, totals.values()))
    q = sa.select(ranked).where(sa.or_(ranked.c.rt.in_(by_team), ranked.c.ra.in_(by_all)))
    picked: dict[tuple[int, str | None], dict[int, float]] = {}
    for r in await session.execute(q):
        for key, rank, n in (
            ((r.p, r.team), r.rt, sizes[(r.p, r.team)]),
            ((r.p, _TOTAL), r.ra, totals[r.p]),
        ):
            if rank in _ranks(n):
                picked.setdefault(key, {})[rank - 1] = float(r.d)
    for (p, team), n in [*sizes.items(), *(((p, _TOTAL), n) for p, n in totals.items())]:
        values = picked.get((p, team), {})
        out[(p, team)] = Durations(n, _interpolate(values, n, 0.5), _interpolate(values, n, 0.9))
    return out


def _ranks(n: int) -> set[int]:
    """1-based ranks of the values percentile_cont(0.5) and (0.9) of n values interpolate."""
    return {r for q in (0.5, 0.9) for r in (int((n - 1) * q) + 1, int((n - 1) * q) + 2) if r <= n}


def _interpolate(values: dict[int, float], n: int, q: float) -> float | None:
    """percentile_cont from the values at 0-based positions floor(q(n-1)) and the next."""
    pos = (n - 1) * q
    low = int(pos)
    if low not in values:
        return None
    frac = pos - low
    if not frac or low + 1 not in values:
        return _seconds(values[low])
    return _seconds(values[low] + (values[low + 1] - values[low]) * frac)


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    return round(float(value), 3)


def _service(
    counts: dict[str, dict[_Key, Any]],
    first: dict[tuple[int, str | None], Durations],
    resolution: dict[tuple[int, str | None], Durations],
) -> Service:
    teams: set[str | None] = set()
    for table in (*counts.values(), first, resolution):
        teams.update(team for _, team in table if team != _TOTAL)

    def period(flag: int, team: str | None) -> TeamPeriod:
        key = (flag, team)
        res = resolution.get(key, Durations())
        return TeamPeriod(
            opened=int(counts["opened"].get(key, 0)),
            resolved=res.count,
            backlog=int(counts["backlog"].get(key, 0)),
            first_response=first.get(key, Durations()),
            resolution=res,
            first_response_sla=counts["first_response_sla"].get(key, Sla()),
            resolution_sla=counts["resolution_sla"].get(key, Sla()),
        )

    def total(flag: int) -> TeamPeriod:
        rows = [period(flag, t) for t in teams]
        return TeamPeriod(
            opened=sum(r.opened for r in rows),
            resolved=sum(r.resolved for r in rows),
            backlog=sum(r.backlog for r in rows),
            first_response=first.get((flag, _TOTAL), Durations()),
            resolution=resolution.get((flag, _TOTAL), Durations()),
            first_response_sla=Sla(
                sum(r.first_response_sla.due for r in rows),
                sum(r.first_response_sla.met for r in rows),
            ),
            resolution_sla=Sla(
                sum(r.resolution_sla.due for r in rows), sum(r.resolution_sla.met for r in rows)
            ),
        )

    rows = [TeamService(t or "unassigned", period(1, t), period(0, t)) for t in teams]
    rows.sort(key=lambda r: (-r.current.opened, -r.current.backlog, r.team))
    return Service(teams=tuple(rows), total=TeamService("all teams", total(1), total(0)))


# ---------------------------------------------------------------------------------------------
# The whole report.


def window(end: datetime, period: timedelta, tz: str) -> tuple[_Window, Period]:
    """The two periods ending at ``end`` and their local buckets in the zone ``tz``."""
    zone = ZoneInfo(tz)
    end = end.astimezone(UTC)
    start = end - period
    unit: BucketUnit = "hour" if period <= HOURLY_UP_TO else "day"
    w = _Window(start - period, start, end, zone, unit)
    buckets = _labels(start, end, zone, unit)
    partial: list[str] = []
    if buckets and start != _bucket_start(start, zone, unit):
        partial.append(buckets[0])
    if buckets and end != _bucket_start(end, zone, unit) and buckets[-1] not in partial:
        partial.append(buckets[-1])
    info = Period(
        start=start,
        end=end,
        previous_start=w.previous_start,
        tz=zone.key,
        unit=unit,
        buckets=buckets,
        previous_buckets=_labels(w.previous_start, start, zone, unit),
        partial=tuple(partial),
    )
    return w, info


def _bucket_start(at: datetime, zone: ZoneInfo, unit: BucketUnit) -> datetime:
    """The start of the local day or hour ``at`` falls in, in UTC."""
    local = at.astimezone(zone)
    if unit == "hour":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    return datetime.combine(local.date(), time(), zone).astimezone(UTC)


def ending_now(now: datetime) -> datetime:
    """The end of a period that takes in everything up to ``now``: the next whole minute."""
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


def last_complete(now: datetime, period: timedelta, tz: str) -> datetime:
    """The default end of a report: the last whole local hour (periods of two days or less)
    or the last local midnight before ``now``, so no bucket of the report is cut short."""
    unit: BucketUnit = "hour" if period <= HOURLY_UP_TO else "day"
    return _bucket_start(now, ZoneInfo(tz), unit)


async def build_report(
    store: Store, *, period: timedelta, end: datetime, brand: str, tz: str = "UTC"
) -> Report:
    """The report for the ``period`` that ends at ``end``, against the period before it.

    ``end`` must be timezone-aware (pass a local midnight for whole days); ``tz`` is the IANA
    zone whose days (or hours, for periods of two days or less) the series use. The queries
    run concurrently, each in its own read session, so the figures are each consistent but
    may straddle a batch that is committed while the report is built.
    """
    if end.tzinfo is None:
        raise ValueError("end must be timezone-aware")
    if period <= timedelta(0):
        raise ValueError("period must be positive")
    w, info = window(end, period, tz)
    limit = asyncio.Semaphore(PARALLEL_QUERIES)

    async def read(job: Callable[[AsyncSession], Awaitable[_T]]) -> _T:
        async with limit, store.reader() as session:
            if not store.is_sqlite:
                # Per-customer counts hash a few hundred thousand groups: in memory, not on disk.
                await session.execute(sa.text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
            return await job(session)

    # Started longest first: with two cores, the big scans should not wait behind small ones.
    facts_job = asyncio.create_task(read(lambda s: _message_facts(s, w, info)))
    activity_job = asyncio.create_task(read(lambda s: _activity(s, w)))
    first_job = asyncio.create_task(read(lambda s: _percentiles(s, w, T.c.first_response_at)))
    resolution_job = asyncio.create_task(read(lambda s: _percentiles(s, w, T.c.resolved_at)))
    counts_job = asyncio.create_task(read(lambda s: _ticket_counts(s, w)))
    negative_job = asyncio.create_task(read(lambda s: _quotes(s, w, negative=True)))
    positive_job = asyncio.create_task(read(lambda s: _quotes(s, w, negative=False)))
    sample_job = asyncio.create_task(read(lambda s: _term_sample(s, w)))
    new_job = asyncio.create_task(read(lambda s: _newcomers(s, w)))
    influential_job = asyncio.create_task(read(lambda s: _influential_ids(s, w)))
    try:
        activity = await activity_job
        infl = await influential_job
        facts = await facts_job
        first = await first_job
        resolution = await resolution_job
        counts = await counts_job
        negative = await negative_job
        positive = await positive_job
        sample = await sample_job
        new = await new_job
    finally:
        jobs = (facts_job, activity_job, first_job, resolution_job, counts_job)
        for job in (*jobs, negative_job, positive_job, sample_job, new_job, influential_job):
            job.cancel()  # a failed query stops the others (a no-op for finished ones)
    active = activity.active
    ids = list(dict.fromkeys([i for i, _ in active] + infl))
    authors = await read(lambda s: _authors(s, w, ids, dict(active)))
    terms, sample_size, previous_sample_size = _terms(sample, brand)
    new_count, new_by_stage, newcomers = new
    return Report(
        brand=brand,
        generated_at=utcnow(),
        period=info,
        overall=facts.overall,
        channels=facts.channels,
        sources=facts.sources,
        ignored=facts.ignored,
        most_negative=negative,
        most_positive=positive,
        topics=Topics(
            intents=facts.intents,
            tags=facts.tags,
            terms=terms,
            terms_sample=sample_size,
            terms_previous_sample=previous_sample_size,
        ),
        customers=Customers(
            value_split=activity.value_split(facts.overall),
            most_active=tuple(authors[i] for i, _ in active if i in authors),
            most_influential=tuple(authors[i] for i in infl if i in authors),
            new=new_count,
            new_by_stage=dict(sorted(new_by_stage.items())),
            newcomers=newcomers,
        ),
        service=_service(counts, first, resolution),
    )
