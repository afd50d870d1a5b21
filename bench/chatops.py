"""Chat-ops under load: Approve-to-reply latency, and slash-command answers during a backfill.

    python bench/chatops.py [--backfill 100000] [--approvals 30] [--database URL]

One daemon process-equivalent (in this process): the sandbox stands in for X and Slack. First,
approvals are clicked (signed as Slack signs them) and the time until the reply reaches the X
stand-in is measured. Then a backfill of generated mentions is ingested while a signed
``/crm queue`` slash command is sent every 100 ms; its answer times are reported (p50/p99;
target p99 under 300 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from socialcrm.config import Config
from socialcrm.connector import Batch
from socialcrm.daemon import Daemon
from socialcrm.db import open_store
from socialcrm.demo import sandbox_sources
from socialcrm.models import Message, Reply
from socialcrm.rules import RuleSet
from socialcrm.runtime import tune_gc
from socialcrm.sandbox.server import Sandbox, make_app
from socialcrm.sandbox.slack import SlackWorkspace, make_slack_app
from socialcrm.sandbox.traffic import TrafficGenerator
from socialcrm.scoring import ScoringPool

SECRET = "bench-signing-secret"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def run(backfill: int, approvals: int, database: str | None, workdir: Path) -> None:
    sandbox = Sandbox(11, messages=3000)
    workspace = SlackWorkspace(
        signing_secret=SECRET,
        bot_token="xoxb-bench",
        channels={"C0APPROVALS": "approvals"},
        users={"U0DANA": "dana"},
    )
    async with (
        TestServer(make_app(sandbox), host="127.0.0.1") as platforms,
        TestServer(make_slack_app(workspace), host="127.0.0.1") as slack,
    ):
        base = str(platforms.make_url("")).rstrip("/")
        slack_base = str(slack.make_url("")).rstrip("/")
        workspace.base_url = slack_base
        url = database or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        config = Config.model_validate(
            {
                "database": url,
                "sources": [
                    s for s in sandbox_sources(sandbox, base, interval="0") if s["type"] == "x"
                ],
                "slack": {
                    "signing_secret": SECRET,
                    "bot_token": "xoxb-bench",
                    "channel": "C0APPROVALS",
                    "api_base": f"{slack_base}/api/",
                },
                "staff": [{"name": "dana", "role": "approver", "slack_id": "U0DANA"}],
                "base_dir": workdir,
            }
        )
        store = await open_store(config.database_url())
        rules = RuleSet.load(config.rule_paths())
        scoring = ScoringPool.for_config(config, rules)
        daemon = Daemon(config, store, rules=rules, scoring=scoring)
        await daemon.start("127.0.0.1", 0)
        tune_gc()
        try:
            async with TestClient(TestServer(daemon.app(), host="127.0.0.1")) as client:
                sandbox.release_all()
                await daemon.poller.poll("x-acme")
                assert daemon.cards is not None
                while await daemon.cards.sync():
                    pass
                # 1. Approve -> reply on the platform.
                async with store.reader() as s:
                    rows = (
                        await s.execute(
                            sa.select(Reply.id, Message.external_id)
                            .join(Message, Message.id == Reply.message_id)
                            .where(Reply.status == "draft", Reply.channel == "x")
                            .order_by(Reply.id)
                            .limit(approvals)
                        )
                    ).all()
                latencies = []
                for reply_id, original in rows:
                    body, headers = workspace.click(workspace.card(reply_id), "approve", "U0DANA")
                    start = time.perf_counter()
                    resp = await client.post("/slack/interactions", data=body, headers=headers)
                    assert resp.status == 200
                    deadline = start + 10
                    while not sandbox.replies_to(original) and time.perf_counter() < deadline:  # noqa: ASYNC110 - polling the stand-in's record
                        await asyncio.sleep(0.002)
                    if sandbox.replies_to(original):  # X refuses duplicate texts: not counted
                        latencies.append(time.perf_counter() - start)
                # 2. Slash commands during a backfill.
                messages = list(TrafficGenerator(23).messages(backfill))

                async def batches() -> AsyncIterator[Batch]:
                    for i in range(0, len(messages), 1000):
                        yield Batch(messages=messages[i : i + 1000])

                started = time.perf_counter()
                job = asyncio.create_task(
                    daemon.pipeline.ingest_stream(batches(), "backfill", save_cursor=False)
                )
                answers = []
                while not job.done():
                    body, headers = workspace.slash("queue", "U0DANA")
                    t0 = time.perf_counter()
                    resp = await client.post("/slack/commands", data=body, headers=headers)
                    await resp.read()
                    answers.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.1)
                result = await job
                took = time.perf_counter() - started
        finally:
            await daemon.stop()
            scoring.close()
            await store.dispose()
    print(f"approve -> reply at the X stand-in ({len(latencies)} approvals):")
    print(
        f"  p50 {statistics.median(latencies) * 1000:.0f} ms"
        f"  p99 {pct(latencies, 0.99) * 1000:.0f} ms  max {max(latencies) * 1000:.0f} ms"
    )
    print(f"backfill: {result.stored} messages in {took:.0f}s ({result.stored / took:.0f}/s)")
    print(f"slash command `/crm queue` during the backfill ({len(answers)} requests):")
    print(
        f"  p50 {statistics.median(answers) * 1000:.0f} ms  p99 {pct(answers, 0.99) * 1000:.0f} ms"
        f"  max {max(answers) * 1000:.0f} ms  (target p99 < 300 ms)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backfill", type=int, default=100_000)
    ap.add_argument("--approvals", type=int, default=30)
    ap.add_argument("--database", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.backfill, args.approvals, args.database, Path(tmp)))


if __name__ == "__main__":
    main()
