"""Ingestion throughput: VADER alone vs the full pipeline into a fresh SQLite file.

    python bench/ingest.py [--count 5000] [--seed 7] [--database URL] [--triage] [--warm 2000]

Prints texts/s for VADER alone, messages/s for the whole pipeline (dedupe, sentiment,
identity, rules, tickets, drafts, alerts, one transaction per batch), and their ratio.
Target: the pipeline reaches at least 50% of VADER-alone throughput. ``--triage`` stores a
learned triage model first (trained on 300 generated messages labelled by VADER's class and
the rules' ticket decision), so the worker reads every message with it as well.

Before the timed part the worker reads ``--warm`` other generated messages (another seed), as
the worker of a daemon that has run a while has: it has hashed most words of a new message
before (2,000 messages hold 97% of the timed messages' words; 100 hold 79%), but it has
never read these texts. ``--warm 0`` warms it with the first 100 timed messages alone.

The CPU time per message of the main process (with its database thread) and of the worker is
printed too: the two run side by side on two cores, so each must stay under twice VADER's
time per text; on a machine busy with other work these hold steadier than the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from socialcrm import triage
from socialcrm.config import Config
from socialcrm.connector import Batch, InboundMessage
from socialcrm.db import open_store
from socialcrm.pipeline import Pipeline
from socialcrm.responder import load_checked
from socialcrm.rules import RuleSet
from socialcrm.runtime import tune_gc
from socialcrm.sandbox.traffic import TrafficGenerator
from socialcrm.scoring import ScoringPool
from socialcrm.sentiment import SentimentScorer

LEXICON = {"delayed": -1.8, "refund": -0.5}


def vader_alone(texts: list[str]) -> tuple[float, float]:
    """Texts per second through VADER's polarity_scores, nothing else, and CPU s per text."""
    analyzer = SentimentIntensityAnalyzer()
    analyzer.lexicon.update(LEXICON)
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    for t in texts:
        analyzer.polarity_scores(t)
    took = time.perf_counter() - start
    return len(texts) / took, (time.process_time() - cpu) / len(texts)


async def pipeline_run(
    messages: list[InboundMessage],
    url: str | None,
    batch: int,
    *,
    pool: bool = True,
    model: triage.Trained | None = None,
    warm: Sequence[InboundMessage] = (),
) -> tuple[float, dict[str, int], tuple[float, float]]:
    """Messages per second through the whole pipeline into a fresh database, what it did,
    and the CPU seconds per message of this process and of the worker (0 without one).

    ``pool``: sentiment and the rules' text matching in a worker process, as ``socialcrm run``
    and ``socialcrm ingest`` do; otherwise in a thread of this process (one core for all).
    """
    with tempfile.TemporaryDirectory() as tmp:
        db_url = url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        # Generated traffic is dated in the past; it is live here, so it gets its drafts.
        config = Config.model_validate(
            {
                "database": db_url,
                "brand": {"lexicon": LEXICON},
                "base_dir": tmp,
                "backfill_before": None,
            }
        )
        store = await open_store(config.database_url())
        # As `socialcrm ingest` starts: the rules and every reply template checked (compiled)
        # before the first message.
        rules, responder = load_checked(config)
        # As the daemon runs it: the brand's lexicon and names, and the starter model.
        scoring = ScoringPool.for_config(config, rules) if pool else None
        pipeline = Pipeline(config, store, rules=rules, responder=responder, scoring=scoring)
        if model is not None:
            async with store.session() as s:
                await triage.store_model(s, model, "bench")
            await pipeline.refresh_triage(force=True)
        # Start the worker (or load the scorer) and warm it up outside the timed part with
        # other generated traffic (scored, not stored): what the worker of a daemon that has
        # run a while holds (language profiles, compiled patterns, the hashes of the words it
        # has read) is not counted against this run, but these messages' own texts are new.
        if scoring is not None:
            sample = list(warm) or messages[:100]
            for i in range(0, len(sample), 1000):
                await scoring.analyse([(m.text, m.lang) for m in sample[i : i + 1000]])
        else:
            await pipeline.ingest(Batch(messages=messages[:50]), "warm-up", save_cursor=False)
        tune_gc()  # as `socialcrm ingest` and the daemon do

        async def batches() -> AsyncIterator[Batch]:
            for i in range(0, len(messages), batch):
                yield Batch(messages=messages[i : i + batch])

        worker_cpu = await scoring.cpu_s() if scoring is not None else 0.0
        start, cpu = time.perf_counter(), time.process_time()
        r = await pipeline.ingest_stream(batches(), "bench")
        rate = len(messages) / (time.perf_counter() - start)
        cpu = (time.process_time() - cpu) / len(messages)
        if scoring is not None:
            worker_cpu = (await scoring.cpu_s() - worker_cpu) / len(messages)
        totals = {
            k: getattr(r, k)
            for k in ("stored", "tickets_opened", "drafts", "escalations", "new_customers")
        }
        if scoring is not None:
            scoring.close()
        await store.dispose()
        return rate, totals, (cpu, worker_cpu)


def trained_model(messages: list[InboundMessage], rules: RuleSet) -> triage.Trained:
    """A model trained on generated messages labelled by VADER and the rules (for speed only)."""
    scorer = SentimentScorer(LEXICON)
    scores = [scorer.score(m.text, m.lang) for m in messages]
    xs = triage.read([(m.text, m.lang) for m in messages], scorer, rules)
    return triage.train(
        {
            "sentiment": (xs, [triage.vader_class(s) for s in scores]),
            "needs_reply": (
                xs,
                [
                    triage.rules_need_reply(rules, m.text, s)
                    for m, s in zip(messages, scores, strict=True)
                ],
            ),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1000, help="as `socialcrm ingest` uses")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported")
    ap.add_argument("--database", default=None, help="URL (default: a fresh SQLite file)")
    ap.add_argument("--triage", action="store_true", help="with a learned triage model in use")
    ap.add_argument(
        "--warm",
        type=int,
        default=2000,
        help="other generated messages the worker reads before the timed part",
    )
    args = ap.parse_args()

    messages = list(TrafficGenerator(args.seed).messages(args.count))
    texts = [m.text for m in messages]
    print(f"{len(messages)} generated mentions, mean {statistics.mean(map(len, texts)):.0f} chars")
    # The worker of a daemon that has run a while has read most words of a new message before.
    warm = list(TrafficGenerator(args.seed + 2).messages(args.warm))
    model = None
    if args.triage:
        labelled = list(TrafficGenerator(args.seed + 1).messages(300))
        model = trained_model(labelled, RuleSet.load(Config().rule_paths()))
        print(f"triage model in use: trained on {len(labelled)} generated messages")

    # Rounds alternate the two measurements, so a busy neighbour on a shared machine slows
    # both halves of a round alike; the median round is reported.
    rounds = []
    cpus = []
    for i in range(args.rounds):
        # VADER is timed just before and just after the pipeline, and the round compares the
        # pipeline with the two together: a shared machine's slow spell then weighs on both
        # sides of the ratio rather than on one.
        before, cpu_before = vader_alone(texts)
        full, totals, (main_cpu, worker_cpu) = asyncio.run(
            pipeline_run(messages, args.database, args.batch, model=model, warm=warm)
        )
        after, cpu_after = vader_alone(texts)
        vader = 2 / (1 / before + 1 / after)  # texts/s over both runs together
        vader_cpu = (cpu_before + cpu_after) / 2
        single, _, _ = asyncio.run(
            pipeline_run(messages, args.database, args.batch, pool=False, model=model)
        )
        rounds.append((full / vader, vader, full, single))
        cpus.append((vader_cpu, main_cpu, worker_cpu))
        print(
            f"  round {i + 1}: VADER {vader:7.0f} texts/s, pipeline {full:7.0f} messages/s "
            f"(one process: {single:7.0f})"
        )
    ratio, vader, full, single = sorted(rounds)[len(rounds) // 2]
    print(f"VADER alone:   {vader:9.0f} texts/s  (one process, one core)")
    print(
        f"full pipeline: {full:9.0f} messages/s  ({args.database or 'fresh SQLite file'}; "
        "sentiment in a worker process, as the daemon runs it)"
    )
    print(f"ratio:         {ratio:9.1%}  (median of {len(rounds)} rounds; target >= 50%)")
    print(
        f"one process:   {single:9.0f} messages/s  ({single / vader:.1%} of VADER alone; "
        "everything on one core, for comparison)"
    )
    vader_cpu, main_cpu, worker_cpu = (statistics.median(c) * 1e6 for c in zip(*cpus, strict=True))
    print(
        f"CPU time:      {main_cpu:9.0f} us/message in the main process, {worker_cpu:.0f} in the "
        f"worker; VADER alone {vader_cpu:.0f} us/text (medians of the rounds)"
    )
    print("pipeline did:  " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    sys.exit(0 if ratio >= 0.5 else 1)


if __name__ == "__main__":
    main()
