"""History asks nothing of anyone: old messages are stored, scored, linked and counted, but
get no drafts, no approval cards and no alerts of their own; escalations come grouped."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner

from socialcrm.config import Config
from socialcrm.connector import Batch
from socialcrm.db import Store
from socialcrm.models import Alert, Message, Reply, Ticket, utcnow
from socialcrm.pipeline import Pipeline
from socialcrm.rules import RuleSet
from socialcrm.sentiment import SentimentScorer
from tests.test_pipeline import msg

LEGAL = "@acme I will report you to trading standards, awful"


def aged(config: Config, **update: Any) -> Config:
    """The test config with the shipped default horizon (24h) and any other changes."""
    return config.model_copy(update={"backfill_before": timedelta(hours=24), **update})


async def rows(store: Store, model: Any) -> list[Any]:
    async with store.reader() as s:
        return list((await s.execute(sa.select(model))).scalars())


async def test_old_messages_are_counted_but_draft_and_alert_nothing(
    config: Config, store: Store, scorer: SentimentScorer
) -> None:
    cfg = aged(config)
    pipeline = Pipeline(cfg, store, rules=RuleSet.load(cfg.rule_paths()), scorer=scorer)
    now = utcnow()
    old = [
        msg(LEGAL, user=f"o{i}", handle=f"old{i}", at=now - timedelta(days=3)) for i in range(12)
    ]
    fresh = msg("@acme my order is two weeks late, terrible", user="f", handle="fresh", at=now)
    r = await pipeline.ingest(Batch(messages=[*old, fresh]), "import")
    assert r.stored == 13 and r.tickets_opened == 13 and r.escalations == 12
    assert r.drafts == 1  # the fresh one only
    assert {x.message_id for x in await rows(store, Reply)} == {13}
    alerts = await rows(store, Alert)
    pending = [a for a in alerts if a.status == "pending"]
    assert len(pending) == 1 and pending[0].title.startswith("12 escalation(s) in old messages")
    assert pending[0].detail["count"] == 12 and len(pending[0].detail["tickets"]) == 12
    grouped = [a for a in alerts if a.status == "grouped"]
    assert len(grouped) == 12 and all(a.detail["grouped_in"] == pending[0].id for a in grouped)
    # The next batch of history within the cooldown adds no alert to send.
    more = [msg(LEGAL, user="o99", handle="old99", at=now - timedelta(days=2))]
    await pipeline.ingest(Batch(messages=more), "import")
    assert len([a for a in await rows(store, Alert) if a.status == "pending"]) == 1
    assert len(await rows(store, Message)) == 14


async def test_backfill_flag_and_many_live_escalations_are_grouped(
    config: Config, store: Store, scorer: SentimentScorer
) -> None:
    cfg = aged(config)
    pipeline = Pipeline(cfg, store, rules=RuleSet.load(cfg.rule_paths()), scorer=scorer)
    now = utcnow()
    recent = [msg(LEGAL, user=f"b{i}", handle=f"b{i}", at=now) for i in range(3)]
    r = await pipeline.ingest(Batch(messages=recent), "import", backfill=True)
    assert r.drafts == 0 and r.escalations == 3
    live = [msg(LEGAL, user=f"l{i}", handle=f"l{i}", at=now) for i in range(7)]
    r = await pipeline.ingest(Batch(messages=live), "x-acme")
    assert r.drafts == 7  # live messages are answered as always
    pending = [a for a in await rows(store, Alert) if a.status == "pending"]
    titles = sorted(a.title for a in pending)
    assert titles == [
        "3 escalation(s) in old messages from import: kept, not sent one by one",
        "7 escalations at once from x-acme",
    ]
    assert len(await rows(store, Ticket)) == 10


def test_cli_ingest_backfill(tmp_path: Path, monkeypatch: Any) -> None:
    from socialcrm.cli import main
    from tests.test_cli import jsonl, mention

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["init"]).exit_code == 0
    f = jsonl(tmp_path / "old.jsonl", [mention(str(i), LEGAL, f"u{i}", f"h{i}") for i in range(4)])
    res = runner.invoke(main, ["ingest", "--backfill", str(f)], catch_exceptions=False)
    assert "4 stored" in res.output and "0 drafts awaiting approval" in res.output
    assert "The approval queue is empty" in runner.invoke(main, ["queue"]).output


async def test_broken_template_leaves_an_empty_draft_naming_file_and_line(
    config: Config, store: Store, scorer: SentimentScorer
) -> None:
    tpl = config.base_dir / "tpl" / "replies"
    tpl.mkdir(parents=True)
    for name in ("apology", "delivery_delay"):
        (tpl / f"{name}.x.j2").write_text("Hello {{ name }},\n\n{{ order.number.first }}\n")
    cfg = config.model_copy(
        update={"responder": config.responder.model_copy(update={"templates_dir": tpl.parent})}
    )
    pipeline = Pipeline(cfg, store, rules=RuleSet.load(cfg.rule_paths()), scorer=scorer)
    r = await pipeline.ingest(
        Batch(messages=[msg("@acme my order is late, terrible and rude staff")]), "t"
    )
    assert r.drafts == 1 and r.draft_problems == 1
    (reply,) = await rows(store, Reply)
    assert reply.draft_text == "" and reply.status == "draft"
    assert reply.last_error is not None
    assert f"{tpl}/apology.x.j2:3" in reply.last_error or f"{tpl}/delivery_delay.x.j2:3" in (
        reply.last_error
    )
    assert "write this reply yourself" in reply.last_error
