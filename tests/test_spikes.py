"""Spike detection on generated traffic: incidents alert once, normal days never.

Time is the ``now`` handed to the detector, one call per window as the daemon would make;
messages are stored up front (the detector only ever looks at windows before ``now``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import col

from socialcrm.connector import Batch
from socialcrm.db import Store, executemany
from socialcrm.models import Alert, Message
from socialcrm.pipeline import Pipeline
from socialcrm.sandbox.traffic import DEFAULT_START, Mention, TrafficGenerator
from socialcrm.sentiment import SentimentScorer
from socialcrm.spikes import SpikeConfig, check_spikes, detect_spikes, rising_words, words_of

WINDOW = timedelta(minutes=15)
_SCORED: dict[tuple[int, int], list[dict[str, Any]]] = {}
_ids = itertools.count(1)


def scored_rows(scorer: SentimentScorer, seed: int, count: int) -> list[dict[str, Any]]:
    """Generated mentions as message rows, scored as the pipeline scores them (cached)."""
    key = (seed, count)
    if key not in _SCORED:
        _SCORED[key] = [
            message_row(
                m.message.text,
                m.message.created_at,
                scorer.score(m.message.text, m.message.lang).compound,
                channel=m.message.channel,
                external_id=m.message.external_id,
                url=m.message.url,
            )
            for m in TrafficGenerator(seed=seed).mentions(count)
        ]
    return _SCORED[key]


def message_row(
    text: str,
    created_at: datetime,
    sentiment: float | None,
    *,
    source: str = "generated",
    channel: str = "x",
    external_id: str | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    return {
        "channel": channel,
        "source": source,
        "external_id": external_id or f"injected-{next(_ids)}",
        "direction": "inbound",
        "author_handle": "someone",
        "text": text,
        "sentiment": sentiment,
        "scored": sentiment is not None,
        "ignored": False,
        "url": url,
        "tags": [],
        "rules_matched": [],
        "references": [],
        "raw": {},
        "created_at": created_at,
        "received_at": created_at,
    }


async def store_rows(store: Store, rows: Sequence[dict[str, Any]]) -> None:
    async with store.session() as s:
        for i in range(0, len(rows), 2000):
            await executemany(s, sa.insert(Message), rows[i : i + 2000])


async def run_detector(
    store: Store, config: SpikeConfig, start: datetime, end: datetime
) -> list[tuple[datetime, Any]]:
    """Call check_spikes at every window boundary from start to end; (when, spike) alerted."""
    alerted = []
    now = start
    while now <= end:
        for spike in await check_spikes(store, config, now + config.settle):
            alerted.append((now, spike))
        now += config.window
    return alerted


async def spike_alerts(store: Store) -> list[Alert]:
    async with store.reader() as s:
        q = sa.select(Alert).where(col(Alert.kind) == "spike").order_by(col(Alert.id))
        return list((await s.execute(q)).scalars().all())


def incident_runs(mentions: Sequence[Mention]) -> list[tuple[datetime, datetime]]:
    runs: list[tuple[datetime, datetime]] = []
    for key, group in itertools.groupby(mentions, key=lambda m: m.incident):
        if key:
            items = list(group)
            runs.append((items[0].message.created_at, items[-1].message.created_at))
    return runs


# -- generated traffic -----------------------------------------------------------------------------


async def test_an_outage_in_generated_traffic_alerts_once(pipeline: Pipeline, store: Store) -> None:
    # Seed 3: a 35-minute outage on the third afternoon, the only one in this stretch.
    end = datetime(2026, 3, 4, 21, tzinfo=UTC)
    mentions = [
        m
        for m in itertools.takewhile(
            lambda m: m.message.created_at < end, TrafficGenerator(seed=3).mentions(20000)
        )
    ]
    (outage,) = incident_runs(mentions)
    for i in range(0, len(mentions), 1000):
        batch = Batch(messages=[m.message for m in mentions[i : i + 1000]])
        await pipeline.ingest(batch, "generated")

    config = SpikeConfig()
    alerted = await run_detector(store, config, DEFAULT_START, end)
    assert len(alerted) == 1
    when, spike = alerted[0]
    assert outage[0] - WINDOW <= spike.started_at <= outage[1]
    assert when <= outage[0] + 2 * WINDOW  # raised at the end of the first window it shows in
    assert "negative" in spike.metrics
    assert spike.negative >= config.min_negative

    (alert,) = await spike_alerts(store)
    assert alert.dedupe_key == spike.dedupe_key
    assert alert.dedupe_key.startswith("spike:generated:2026-03-04T17:")
    assert alert.severity == "critical"
    assert alert.status == "pending"
    examples = alert.detail["examples"]
    assert len(examples) == 3
    assert [e["sentiment"] for e in examples] == sorted(e["sentiment"] for e in examples)
    assert examples[0]["sentiment"] < -0.5
    assert alert.message_id == examples[0]["id"]
    assert alert.detail["rising_words"]


async def test_normal_days_raise_nothing(store: Store, scorer: SentimentScorer) -> None:
    # Seed 4: four days of ordinary traffic (a busy afternoon, a quiet night), no outage.
    mentions = list(TrafficGenerator(seed=4).mentions(4 * 2880))
    assert not any(m.incident for m in mentions)
    await store_rows(store, scored_rows(scorer, 4, 4 * 2880))
    start, end = DEFAULT_START, mentions[-1].message.created_at
    assert await run_detector(store, SpikeConfig(), start, end) == []
    # The same days would alert all the time with a fixed count and no baseline.
    assert await detect_spikes(
        store, SpikeConfig(threshold=0.1, min_ratio=1.0), datetime(2026, 3, 5, 15, 2, tzinfo=UTC)
    )
    assert await spike_alerts(store) == []


# -- a burst of negative messages ------------------------------------------------------------------


def burst(
    start: datetime, minutes: int, per_window: int, source: str = "generated"
) -> list[dict[str, Any]]:
    """Angry messages about the same broken checkout, evenly spread."""
    texts = [
        "Checkout is broken again, I hate this <script>alert(1)</script> <!channel>",
        "Your checkout keeps failing with error 503, worst service ever",
        "Terrible. The checkout page crashes every time, so angry",
        "Checkout broken for hours, awful, cancel my account",
    ]
    count = per_window * minutes // 15
    step = timedelta(minutes=minutes) / count
    return [
        message_row(
            texts[i % len(texts)],
            start + step * i,
            -0.95 if i % len(texts) == 0 else -0.6 - 0.3 * ((i * 7) % 10) / 10,
            source=source,
            url=f"https://x.com/u/status/{i}",
        )
        for i in range(count)
    ]


async def test_a_burst_that_lasts_hours_alerts_once_then_cooldown(
    store: Store, scorer: SentimentScorer
) -> None:
    rows = scored_rows(scorer, 4, 2 * 2880)  # two ordinary days from 2 March 08:00
    burst_at = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)
    # A new burst once the first one is out of the recent baseline, then one in its cooldown.
    second_at = burst_at + timedelta(hours=7, minutes=30)
    third_at = second_at + timedelta(hours=1, minutes=30)
    await store_rows(
        store,
        [
            *rows,
            *burst(burst_at, 180, 30),
            *burst(second_at, 30, 30),
            *burst(third_at, 30, 30),
        ],
    )
    config = SpikeConfig(cooldown=timedelta(hours=2))
    alerted = await run_detector(
        store, config, datetime(2026, 3, 3, 8, tzinfo=UTC), datetime(2026, 3, 4, 6, tzinfo=UTC)
    )
    assert [(when, spike.started_at) for when, spike in alerted] == [
        (burst_at + WINDOW, burst_at),
        (second_at + WINDOW, second_at),
    ]
    # While it stood out, the run kept its start (so its key) and nothing more was written;
    # after two hours it is half the recent baseline, and no longer stands out at all.
    ongoing = await detect_spikes(store, config, burst_at + timedelta(hours=1, minutes=17))
    assert [(s.started_at, s.window_start) for s in ongoing] == [(burst_at, burst_at + 4 * WINDOW)]
    assert await detect_spikes(store, config, burst_at + timedelta(hours=2, minutes=32)) == []

    first, second = await spike_alerts(store)
    assert first.dedupe_key == "spike:generated:2026-03-03T14:00Z"
    assert second.dedupe_key == "spike:generated:2026-03-03T21:30Z"
    detail = first.detail
    assert detail["metrics"] == ["negative"]
    assert first.severity == "critical"
    assert detail["negative"] >= 30
    assert detail["expected_negative"] < 10
    assert (detail["window_s"], detail["baseline"]) == (900, "seasonal+recent")
    rising = detail["rising_words"][0]
    assert rising["word"] == "checkout" and rising["spike"] >= 25 and rising["baseline"] <= 3
    # The most negative first, each text once, stored as written (sinks escape for themselves).
    examples = detail["examples"]
    assert examples[0]["text"].startswith("Checkout is broken again, I hate this <script>")
    assert examples[0]["sentiment"] == -0.95
    assert len({e["text"] for e in examples}) == len(examples) == 3
    assert all(e["sentiment"] <= -0.6 for e in examples)


async def test_quiet_and_new_sources_need_volume_and_history(
    store: Store, scorer: SentimentScorer
) -> None:
    day = datetime(2026, 3, 2, tzinfo=UTC)
    quiet = [
        message_row(
            "meh, it is fine I guess", day + timedelta(minutes=37 * i), -0.1, source="reviews"
        )
        for i in range(2 * 24 * 60 // 37)
    ]
    small = burst(day + timedelta(days=2, hours=10), 15, 6, source="reviews")  # 6 vs ~0
    big = burst(day + timedelta(days=2, hours=14), 15, 14, source="reviews")
    fresh = burst(day + timedelta(days=2, hours=14), 15, 40, source="brand-new")
    await store_rows(store, [*quiet, *small, *big, *fresh])
    alerted = await run_detector(
        store, SpikeConfig(), day + timedelta(days=2), day + timedelta(days=3)
    )
    assert [(s.source, s.started_at) for _, s in alerted] == [
        ("reviews", day + timedelta(days=2, hours=14))
    ]


async def test_only_watched_sources_and_metrics(store: Store, scorer: SentimentScorer) -> None:
    rows = scored_rows(scorer, 4, 2 * 2880)
    at = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)
    await store_rows(store, [*rows, *burst(at, 30, 40)])
    now = at + WINDOW + timedelta(minutes=2)
    assert await detect_spikes(store, SpikeConfig(sources=["elsewhere"]), now) == []
    (spike,) = await detect_spikes(store, SpikeConfig(metrics=["total"]), now)
    assert spike.metrics == ("total",) and spike.severity == "warning"
    assert await detect_spikes(store, SpikeConfig(enabled=False), now) == []


# -- pieces ----------------------------------------------------------------------------------------


def test_rising_words() -> None:
    before = ["where is my parcel", "love the new flavour", "parcel late again", "hello there"] * 5
    during = [
        "checkout broken, error 503",
        "the CHECKOUT is broken!!",
        "checkout broken https://acme.example/checkout @acme",
        "my parcel is late and the checkout slow",
    ]
    words = rising_words(during, before, 5)
    assert [w.word for w in words] == ["checkout", "broken"]
    assert (words[0].spike, words[0].baseline) == (4, 0)
    assert words_of("See https://x.example/abc @acme #fail the the and") == {"see"}
    assert rising_words([], before, 5) == ()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"window": "7m"}, "divide a day"),
        ({"window": "30s"}, "divide a day"),
        ({"baseline_windows": 2}, "greater than or equal"),
        ({"metrics": ["angry"]}, "negative"),
        ({"metrics": []}, "at least 1"),
    ],
)
def test_bad_config_is_refused(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        SpikeConfig.model_validate(settings)


def test_config_reads_durations() -> None:
    cfg = SpikeConfig.model_validate({"window": "1h", "cooldown": "3h", "settle": 90})
    assert (cfg.window, cfg.cooldown, cfg.settle) == (
        timedelta(hours=1),
        timedelta(hours=3),
        timedelta(seconds=90),
    )
