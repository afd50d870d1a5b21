"""The starter sentiment model: what ships, how it is built, and that it gives a class alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from socialcrm import starter, triage
from socialcrm.config import Config
from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.db import Store
from socialcrm.models import Message, Reply
from socialcrm.pipeline import Pipeline
from socialcrm.rules import RuleSet
from socialcrm.scoring import ScoringPool
from socialcrm.sentiment import SentimentScorer

#: Messages of each kind, sent to the brand; the rules ticket some, thank some, leave some.
MESSAGES = [
    ("1", "I love you guys, thank you so much!", None),
    ("2", "worst airline ever, lost my bag and nobody helps", None),
    ("3", "what time does the store open tomorrow?", None),
    ("4", "my order arrived today", None),
    ("5", "thanks for nothing, still waiting on my refund", None),
    ("6", "great flight, but the seat was broken", None),
    ("7", "Merci beaucoup, le service était parfait", "fr"),
    # Found by search, not sent to us: the rules tag it and open no ticket.
    ("8", "so sad, my flight got cancelled and I missed my sister's wedding", None),
    # Too short to tell its language: VADER scores it, the starter does not read it.
    ("9", "schlecht!!", None),
]
#: A team's rule for its own model: it must not fire on the starter's reading.
TEAM_RULE = """
rules:
  - name: model-says-negative
    when: {triage: [negative], triage_confidence: {at_least: 0.5}}
    then: [open_ticket]
"""


def _messages() -> list[InboundMessage]:
    return [
        InboundMessage(
            channel="x",
            external_id=key,
            text=text,
            author=Author(user_id=key, handle=f"user{key}"),
            lang=lang,
            direct=key != "8",
        )
        for key, text, lang in MESSAGES
    ]


def test_which_way_raters_leaned() -> None:
    assert [starter.label_of(m) for m in (2.7, 0.5, 0.49, 0.0, -0.49, -0.5, -3.1)] == [
        "positive",
        "positive",
        "neutral",
        "neutral",
        "neutral",
        "negative",
        "negative",
    ]


def test_the_ground_truth_format_is_read_and_bad_lines_refused() -> None:
    lines = ["1\t2.7\tSo lucky.", "2\t-2.15\tDie die die\tagain", "3\t0.1\tok"]
    assert starter.ratings(lines) == [
        (2.7, "So lucky."),
        (-2.15, "Die die die\tagain"),
        (0.1, "ok"),
    ]
    for bad, why in [
        ("1\t2.7", "line 1: expected id, mean rating and text"),
        ("1\tlots\ttext", "line 1: the mean rating 'lots' is not a number"),
        ("1\t9\ttext", "line 1: the mean rating 9.0 is outside"),
        ("1\t1.0\t  ", "line 1: expected id"),
    ]:
        with pytest.raises(ValueError, match=why):
            starter.ratings([bad])


def test_training_learns_the_raters_classes() -> None:
    rated = [
        (2.5, "love it, thank you"),
        (2.0, "brilliant service, so happy"),
        (1.8, "great job, well done"),
        (-2.5, "awful, still broken"),
        (-2.0, "terrible service, never again"),
        (-1.9, "worst day, lost my bag"),
        (0.0, "the store opens at nine"),
        (0.1, "order number is 1234"),
        (-0.2, "flight leaves from gate 5"),
    ] * 3
    model = starter.train(rated)
    assert model.version == starter.VERSION and set(model.heads) == {"sentiment"}
    scorer = SentimentScorer()
    texts = ["so happy, thank you", "awful, lost again", "the store opens at ten"]
    got = model.predict([triage.sample(t, scorer.score(t)) for t in texts])
    assert [v.sentiment for v in got] == ["positive", "negative", "neutral"]


def test_the_shipped_starter_loads_and_reads_plain_cases() -> None:
    model = starter.model()
    assert model is not None, f"{starter.PATH} is missing or unreadable"
    assert model.version == starter.VERSION and set(model.heads) == {"sentiment"}
    scorer = SentimentScorer()
    texts = [text for _, text, lang in MESSAGES if lang is None][:3]
    got = model.predict([triage.sample(t, scorer.score(t)) for t in texts])
    assert [v.sentiment for v in got] == ["positive", "negative", "neutral"]
    assert all(v.needs_reply is None and (v.confidence or 0) > 0.5 for v in got)


async def _ingest(config: Config, store: Store, scoring: ScoringPool | None = None) -> None:
    extra = config.base_dir / "team.yaml"
    extra.write_text(TEAM_RULE)
    rules = RuleSet.load([*config.rule_paths(), extra])
    pipeline = Pipeline(config, store, rules=rules, scoring=scoring)
    await pipeline.ingest(Batch(messages=_messages()), "t")


async def _outcomes(store: Store) -> dict[str, tuple[object, ...]]:
    async with store.reader() as s:
        rows = (await s.execute(sa.select(Message))).scalars().all()
        drafts = {r.message_id: r.template for r in (await s.execute(sa.select(Reply))).scalars()}
    return {
        m.external_id: (
            m.ticket_id is not None,
            drafts.get(m.id),
            m.intent,
            m.triage_class,
            m.triage_version,
        )
        for m in rows
    }


async def test_the_starter_gives_a_class_and_decides_nothing(
    config: Config, store: Store, tmp_path: Path
) -> None:
    config = config.model_copy(update={"backfill_before": None})
    await _ingest(config, store)
    with_starter = await _outcomes(store)
    off = config.model_copy(update={"triage": config.triage.model_copy(update={"starter": False})})
    other = await _fresh_store(tmp_path)
    try:
        await _ingest(off, other)
        without = await _outcomes(other)
    finally:
        await other.dispose()
    # Tickets, drafts and intents are the rules' alone, with the starter or without.
    assert {k: v[:3] for k, v in with_starter.items()} == {k: v[:3] for k, v in without.items()}
    assert any(v[0] for v in without.values()) and any(v[1] for v in without.values())
    assert without["8"][:3] == (False, None, "complaint")
    # The starter's class and version are stored; a text not known to be English gets none.
    assert {k: v[3:] for k, v in with_starter.items() if k in "1238"} == {
        "1": ("positive", starter.VERSION),
        "2": ("negative", starter.VERSION),
        "3": ("neutral", starter.VERSION),
        "8": ("negative", starter.VERSION),
    }
    assert with_starter["7"][3:] == with_starter["9"][3:] == (None, None)
    assert all(v[3:] == (None, None) for v in without.values())
    assert starter.VERSION < 0  # no team model, stored or not, has it


async def test_the_scoring_worker_reads_with_the_starter(config: Config, store: Store) -> None:
    rules = RuleSet.load(config.rule_paths())
    pool = ScoringPool.for_config(config, rules)
    try:
        await _ingest(config, store, pool)
    finally:
        pool.close()
    got = await _outcomes(store)
    assert got["2"][3:] == ("negative", starter.VERSION)
    assert got["7"][3:] == (None, None)


async def _fresh_store(tmp_path: Path) -> Store:
    from socialcrm.db import open_store

    return await open_store(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
