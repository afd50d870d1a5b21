"""Spike detection: a window with far more (negative) mentions than usual for its source.

Counts come from one SQL aggregate per run: inbound, not-ignored messages per source and
per time bucket (``window``, 15 minutes by default, aligned to UTC midnight), by
``created_at`` (when customers wrote, so a backfill lands in the past, not in a spike).
Negative means ``sentiment <= negative_below``; unscored messages (NULL) only count in the
total.

The method, per source and metric (negative, total), for the last complete window:

- *Recent baseline*: the previous ``baseline_windows`` windows (4 hours).
- *Seasonal baseline*: the same window of the day, and its two neighbours, on each of the
  previous ``seasonal_days`` days (used from ``seasonal_min_days`` days of history on), so
  the morning ramp of a normal day is compared with other mornings, not with the night.
- Expected = the larger of the baselines' medians; spread = the larger of their MADs
  (x1.4826, a standard deviation for normal data), and never less than the Poisson noise
  of the expected count, ``sqrt(expected)``, nor 1. A window must stand out from both:
  ``count >= expected + threshold * spread`` and ``count >= min_ratio * expected``, and reach
  ``min_negative`` / ``min_total`` so a quiet source does not alert on 2 against 0.
- Median and MAD shrug off earlier spikes and gaps in the baseline, where a mean and
  standard deviation (or an EWMA) would be dragged up by last week's incident.

A spike's start is the first window of the run of anomalous windows that ends at the window
being checked (walked back up to ``max_run_windows``), so the run keeps one dedupe key,
``spike:<source>:<start>``, however long it lasts and however often this runs. A new run on
the same source within ``cooldown`` of the last spike alert is not alerted either.

Wiring: ``SpikeConfig`` is ``Config.spikes``; the daemon calls :func:`check_spikes` every
``SpikeConfig.interval`` (60s is plenty; only complete windows are judged, once they are
``settle`` old). A source needs ``baseline_windows`` of history before it can spike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from socialcrm.alerts import lock_key, raise_alert
from socialcrm.db import Store
from socialcrm.models import Alert, Message
from socialcrm.spike_config import DAY_S, METRICS, Metric, SpikeConfig

log = logging.getLogger(__name__)

#: The seasonal baseline takes the same window of the day and this many either side.
_NEIGHBOURS: Final = 2
#: MAD x this estimates the standard deviation of normally distributed counts.
_MAD_SCALE: Final = 1.4826
_URL_RE: Final = re.compile(r"https?://\S+|www\.\S+|[@#]\w+")
_WORD_RE: Final = re.compile(r"[^\W_][\w'-]*[^\W_]")
_STOPWORDS: Final = frozenset(
    """
    about after again all also and any are aren't because been before being both but can
    can't cannot could did didn't does doesn't doing don't down each even ever every few for
    from get got had has hasn't have haven't having her here hers him his how i'm i've into
    isn't it's its just let's like more most much must my myself never now off once one only
    other our ours out over own really same she should shouldn't since some still such than
    that that's the their them then there these they this those through too under until very
    was wasn't way we're we've were weren't what when where which while who why will with
    won't would wouldn't you you're your yours yet you've via amp just
    """.split()
)


@dataclass(frozen=True, slots=True)
class Example:
    """One message quoted in a spike alert."""

    id: int
    text: str
    channel: str
    author: str | None
    url: str | None
    sentiment: float | None


@dataclass(frozen=True, slots=True)
class RisingWord:
    """A word used by more of the spike's messages than of the baseline's."""

    word: str
    #: Spike messages that use it.
    spike: int
    #: Baseline messages that use it.
    baseline: int


@dataclass(frozen=True, slots=True)
class Spike:
    """A run of windows with far more (negative) mentions than usual on one source."""

    source: str
    #: Start of the first anomalous window of the run.
    started_at: datetime
    #: The window that was checked (the latest complete one).
    window_start: datetime
    window_end: datetime
    #: Which metrics are anomalous in the checked window.
    metrics: tuple[Metric, ...]
    negative: int
    total: int
    expected_negative: float
    expected_total: float
    #: Robust z-score of the strongest metric.
    score: float
    #: ``seasonal``, ``recent`` or ``seasonal+recent``: what the counts were compared with.
    baseline: str
    examples: tuple[Example, ...] = ()
    rising_words: tuple[RisingWord, ...] = ()

    @property
    def dedupe_key(self) -> str:
        """``spike:<source>:<start>``: one key for the whole run."""
        return f"spike:{self.source}:{self.started_at.strftime('%Y-%m-%dT%H:%MZ')}"

    @property
    def severity(self) -> Literal["warning", "critical"]:
        """Critical for angry mentions, a warning for volume alone."""
        return "critical" if "negative" in self.metrics else "warning"

    def title(self) -> str:
        """A one-line summary (the sink templates say the rest)."""
        what = "Negative mentions" if "negative" in self.metrics else "Mentions"
        count = self.negative if "negative" in self.metrics else self.total
        expected = self.expected_negative if "negative" in self.metrics else self.expected_total
        return f"{what} spiked on {self.source}: {count} in a window (usually ~{expected:.0f})"

    def detail(self) -> dict[str, Any]:
        """The alert's detail: counts, baselines, examples and rising words."""
        return {
            "source": self.source,
            "metrics": list(self.metrics),
            "started_at": self.started_at.isoformat(),
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "window_s": int((self.window_end - self.window_start).total_seconds()),
            "negative": self.negative,
            "total": self.total,
            "expected_negative": round(self.expected_negative, 1),
            "expected_total": round(self.expected_total, 1),
            "score": round(self.score, 1),
            "baseline": self.baseline,
            "examples": [
                {
                    "id": e.id,
                    "text": e.text,
                    "channel": e.channel,
                    "author": e.author,
                    "url": e.url,
                    "sentiment": e.sentiment,
                }
                for e in self.examples
            ],
            "rising_words": [
                {"word": w.word, "spike": w.spike, "baseline": w.baseline}
                for w in self.rising_words
            ],
        }


@dataclass(slots=True)
class _Judgement:
    anomalous: dict[Metric, bool] = field(default_factory=dict)
    expected: dict[Metric, float] = field(default_factory=dict)
    score: dict[Metric, float] = field(default_factory=dict)
    baseline: str = ""


class _Series:
    """One source's counts per bucket, and how far back it has history."""

    def __init__(self, config: SpikeConfig, counts: dict[int, tuple[int, int]], first: int):
        self.config = config
        self.counts = counts
        self.first = first
        self.per_day = DAY_S // int(config.window.total_seconds())

    def value(self, bucket: int, metric: Metric) -> int:
        total, negative = self.counts.get(bucket, (0, 0))
        return negative if metric == "negative" else total

    def judge(self, x: int) -> _Judgement | None:
        """Whether window ``x`` stands out, per metric (None: not enough history)."""
        cfg = self.config
        n = cfg.baseline_windows
        recent = list(range(x - n, x)) if x - n >= self.first else None
        days = [
            d
            for d in range(1, cfg.seasonal_days + 1)
            if x - d * self.per_day - _NEIGHBOURS >= self.first
        ]
        seasonal = None
        if len(days) >= cfg.seasonal_min_days:
            seasonal = [
                x - d * self.per_day + o for d in days for o in range(-_NEIGHBOURS, _NEIGHBOURS + 1)
            ]
        if recent is None and seasonal is None:
            return None
        out = _Judgement(
            baseline="+".join(
                name for name, b in (("seasonal", seasonal), ("recent", recent)) if b is not None
            )
        )
        for metric in METRICS:
            value = self.value(x, metric)
            expected, spread = 0.0, 0.0
            for buckets in (seasonal, recent):
                if buckets is None:
                    continue
                samples = [self.value(b, metric) for b in buckets]
                med = float(statistics.median(samples))
                mad = float(statistics.median(abs(s - med) for s in samples))
                expected = max(expected, med)
                spread = max(spread, _MAD_SCALE * mad)
            # Both must clear the threshold: the count against Poisson noise around the
            # expected level (variance-stabilised: 2*sqrt is ~N(0,1) for counts), and against
            # the source's own spread (MAD), which is wider when its traffic is bursty.
            noise = 2.0 * (math.sqrt(value) - math.sqrt(expected))
            score = min(noise, (value - expected) / max(spread, 1.0))
            floor = cfg.min_negative if metric == "negative" else cfg.min_total
            out.expected[metric] = expected
            out.score[metric] = score
            out.anomalous[metric] = metric in cfg.metrics and (
                value >= floor and value >= cfg.min_ratio * expected and score >= cfg.threshold
            )
        return out


def _bucket(dialect: str, seconds: int) -> sa.ColumnElement[Any]:
    """The window number of ``created_at`` (seconds since the epoch // window)."""
    width = sa.literal_column(str(seconds), sa.Integer)
    created = col(Message.created_at)
    if dialect == "postgresql":
        epoch = sa.cast(sa.func.floor(sa.extract("epoch", created)), sa.BigInteger)
    else:
        epoch = sa.cast(sa.func.strftime("%s", created), sa.Integer)
    return epoch // width


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _moment(bucket: int, seconds: int) -> datetime:
    return datetime.fromtimestamp(bucket * seconds, UTC)


def _watched(config: SpikeConfig) -> list[sa.ColumnElement[bool]]:
    conds = [col(Message.direction) == "inbound", sa.not_(col(Message.ignored))]
    if config.sources:
        conds.append(col(Message.source).in_(config.sources))
    return conds


def _spans(config: SpikeConfig, last: int, run: int) -> list[tuple[int, int]]:
    """Bucket ranges ``[lo, hi)`` that judging windows ``last - run .. last`` needs."""
    per_day = DAY_S // int(config.window.total_seconds())
    ranges = [(last - run - config.baseline_windows, last + 1)]
    ranges += [
        (last - run - d * per_day - _NEIGHBOURS, last - d * per_day + _NEIGHBOURS + 1)
        for d in range(1, config.seasonal_days + 1)
    ]
    return _merge(ranges)


async def _counts(
    session: AsyncSession,
    config: SpikeConfig,
    spans: Sequence[tuple[int, int]],
    source: str | None = None,
) -> dict[str, dict[int, tuple[int, int]]]:
    """(total, negative) per source and bucket within ``spans``: one GROUP BY query."""
    width = int(config.window.total_seconds())
    bucket = _bucket(session.get_bind().dialect.name, width).label("bucket")
    negative = sa.func.sum(sa.case((col(Message.sentiment) <= config.negative_below, 1), else_=0))
    created = col(Message.created_at)
    where = [
        # One cheap test first rejects most rows where no index on created_at helps.
        created >= _moment(spans[0][0], width),
        created < _moment(spans[-1][1], width),
        *_watched(config),
        sa.or_(
            *(
                sa.and_(created >= _moment(lo, width), created < _moment(hi, width))
                for lo, hi in spans
            )
        ),
    ]
    if source is not None:
        where.append(col(Message.source) == source)
    q = (
        sa.select(col(Message.source), bucket, sa.func.count(), negative)
        .where(*where)
        .group_by(col(Message.source), bucket)
    )
    counts: dict[str, dict[int, tuple[int, int]]] = {}
    for src, b, total, neg in (await session.execute(q)).all():
        counts.setdefault(src, {})[int(b)] = (int(total), int(neg or 0))
    return counts


async def detect_spikes(store: Store, config: SpikeConfig, now: datetime) -> list[Spike]:
    """Spikes going on in the last complete window, one per source at most."""
    if not config.enabled:
        return []
    width = int(config.window.total_seconds())
    last = math.floor((now - config.settle).timestamp() / width) - 1
    n = config.baseline_windows
    spikes = []
    async with store.reader() as session:
        # Only what judging the last window needs; a spike's start is looked for afterwards.
        counts = await _counts(session, config, _spans(config, last, 0))
        for source, series_counts in sorted(counts.items()):
            if last not in series_counts:
                continue
            first = min(series_counts)
            if first >= last - n:
                # Seen only lately (new, or quiet): when did the source really begin?
                first = await _first_bucket(session, config, source, width, first)
            series = _Series(config, series_counts, first)
            now_j = series.judge(last)
            if now_j is None or not any(now_j.anomalous.values()):
                continue
            wider = await _counts(
                session, config, _spans(config, last, config.max_run_windows), source
            )
            series = _Series(config, wider.get(source, series_counts), first)
            start = last
            for x in range(last - 1, last - config.max_run_windows, -1):
                j = series.judge(x)
                if j is None or not any(j.anomalous.values()):
                    break
                start = x
            metrics = tuple(m for m in config.metrics if now_j.anomalous[m])
            spike = Spike(
                source=source,
                started_at=_moment(start, width),
                window_start=_moment(last, width),
                window_end=_moment(last + 1, width),
                metrics=metrics,
                negative=series.value(last, "negative"),
                total=series.value(last, "total"),
                expected_negative=now_j.expected["negative"],
                expected_total=now_j.expected["total"],
                score=max(now_j.score[m] for m in metrics),
                baseline=now_j.baseline,
            )
            spikes.append(await _describe(session, config, spike, n * width))
    return spikes


async def _first_bucket(
    session: AsyncSession, config: SpikeConfig, source: str, width: int, seen: int
) -> int:
    q = sa.select(sa.func.min(col(Message.created_at))).where(
        *_watched(config), col(Message.source) == source
    )
    first = (await session.execute(q)).scalar_one_or_none()
    if first is None:
        return seen
    return min(seen, math.floor(first.timestamp() / width))


async def _describe(
    session: AsyncSession, config: SpikeConfig, spike: Spike, baseline_s: int
) -> Spike:
    """Add the most negative examples and the words that rose most."""
    created = col(Message.created_at)
    in_spike = [
        *_watched(config),
        col(Message.source) == spike.source,
        created >= spike.started_at,
        created < spike.window_end,
    ]
    examples: tuple[Example, ...] = ()
    if config.examples:
        q = (
            sa.select(
                col(Message.id),
                col(Message.text),
                col(Message.channel),
                col(Message.author_handle),
                col(Message.url),
                col(Message.sentiment),
            )
            .where(*in_spike, col(Message.sentiment).is_not(None))
            .order_by(col(Message.sentiment), col(Message.id))
            .limit(config.examples * 5)
        )
        seen: set[str] = set()
        found = []
        for i, text, ch, author, url, sent in (await session.execute(q)).all():
            key = " ".join((text or "").lower().split())
            if key not in seen:  # the same complaint pasted by many says little more
                seen.add(key)
                found.append(Example(int(i or 0), _clip(text or "", 500), ch, author, url, sent))
        examples = tuple(found[: config.examples])
    words: tuple[RisingWord, ...] = ()
    if config.rising_words:
        negative_only = "negative" in spike.metrics
        extra = [col(Message.sentiment) <= config.negative_below] if negative_only else []
        base_from = spike.started_at - timedelta(seconds=baseline_s)
        in_base = [
            *_watched(config),
            col(Message.source) == spike.source,
            created >= base_from,
            created < spike.started_at,
        ]
        spike_texts = await _texts(session, [*in_spike, *extra], 1000)
        base_texts = await _texts(session, [*in_base, *extra], 2000)
        words = rising_words(spike_texts, base_texts, config.rising_words)
    return dataclasses.replace(spike, examples=examples, rising_words=words)


async def _texts(session: AsyncSession, where: Sequence[Any], limit: int) -> list[str]:
    q = (
        sa.select(col(Message.text))
        .where(*where)
        .order_by(col(Message.created_at).desc())
        .limit(limit)
    )
    return [t or "" for t in (await session.execute(q)).scalars().all()]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def words_of(text: str) -> set[str]:
    """The distinct words of a message worth comparing (no links, handles or stop words)."""
    text = _URL_RE.sub(" ", text.lower())
    return {w for w in _WORD_RE.findall(text) if len(w) >= 3 and w not in _STOPWORDS}


def rising_words(
    spike_texts: Sequence[str], baseline_texts: Sequence[str], limit: int
) -> tuple[RisingWord, ...]:
    """Words used by a larger share of the spike's messages than of the baseline's.

    Ranked by how much that share grew; a word must be in at least 3 spike messages and
    (smoothed) at least twice as common as before.
    """
    if not spike_texts:
        return ()
    spike_df: Counter[str] = Counter()
    for t in spike_texts:
        spike_df.update(words_of(t))
    base_df: Counter[str] = Counter()
    for t in baseline_texts:
        base_df.update(words_of(t))
    ns, nb = len(spike_texts), len(baseline_texts)
    ranked = []
    for word, s in spike_df.items():
        if s < 3:
            continue
        b = base_df.get(word, 0)
        share, before = s / ns, (b + 0.5) / (nb + 1)
        if share >= 2 * before:
            ranked.append((share - before, share / before, word, s, b))
    ranked.sort(key=lambda r: (-r[0], -r[1], r[2]))
    return tuple(RisingWord(word, s, b) for _, _, word, s, b in ranked[:limit])


async def check_spikes(store: Store, config: SpikeConfig, now: datetime) -> list[Spike]:
    """Detect spikes and write one ``spike`` alert per run; returns the spikes alerted."""
    alerted = []
    for spike in await detect_spikes(store, config, now):
        async with store.session() as session:
            scope = f"spike:{spike.source}:"
            await lock_key(session, scope)
            recent = sa.select(col(Alert.id)).where(
                col(Alert.dedupe_key).startswith(scope, autoescape=True),
                col(Alert.dedupe_key) != spike.dedupe_key,
                col(Alert.created_at) > now - config.cooldown,
            )
            if (await session.execute(recent.limit(1))).first() is not None:
                continue
            alert = await raise_alert(
                session,
                "spike",
                spike.dedupe_key,
                spike.title(),
                spike.detail(),
                spike.severity,
                message_id=spike.examples[0].id if spike.examples else None,
                cooldown=None,
                now=now,
            )
            if alert is not None:
                log.warning("%s", spike.title())
                alerted.append(spike)
    return alerted
