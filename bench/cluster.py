"""Several daemons on one PostgreSQL database, under fire: a random daemon is SIGKILLed every
20-60 s and restarted while approvals arrive at random daemons; or, with ``--throughput``,
the ingest rate of 1, 2 and 3 daemons' pipelines on one database.

    python bench/cluster.py [--minutes 10] [--daemons 3] [--sources-per-platform 4] [--seed 1]
    python bench/cluster.py --throughput [--messages 6000] [--batch 200]

The chaos run prints messages served vs stored, approval cards per draft, replies sent per
approval, alerts delivered per alert, polls per source per interval, failover time p50/p99,
and exits 1 on any violation. It needs PostgreSQL (``SOCIALCRM_TEST_PG``, default the local
server); a fresh database is created and dropped. The test suite runs a short chaos run
(tests/test_cluster.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.cluster_run import chaos
from tests.conftest import PG_ADMIN_URL


async def _create(name: str) -> str:
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)
    from socialcrm.db import Store

    store = Store(url)
    await store.upgrade()
    await store.dispose()
    return url


async def _drop(name: str) -> None:
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def _lock_waits(url: str, stop: asyncio.Event) -> float:
    """Session-seconds spent waiting on a lock, sampled from pg_stat_activity every 50 ms."""
    admin = create_async_engine(url)
    waited = 0.0
    q = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    try:
        async with admin.connect() as conn:
            while not stop.is_set():
                waited += (await conn.execute(q)).scalar_one() * 0.05
                await conn.commit()
                await asyncio.sleep(0.05)
    finally:
        await admin.dispose()
    return waited


async def _round(url: str, n: int, messages: int, batch: int, old: bool) -> dict[str, Any]:
    """``n`` pipelines, each with its own store (its own connections, as a daemon has),
    ingesting ``messages`` between them at once."""
    from socialcrm.config import Config
    from socialcrm.connector import Author, Batch, InboundMessage
    from socialcrm.db import Store
    from socialcrm.models import utcnow
    from socialcrm.pipeline import Pipeline
    from socialcrm.rules import RuleSet

    class OneLockStore(Store):
        """The store as it was: every batch takes the database-wide ingest lock."""

        async def lock_keys(self, session: Any, keys: Any) -> None:
            await self.lock_ingest(session)

    stores = [(OneLockStore if old else Store)(url) for _ in range(n)]
    config = Config.model_validate({"brand": {"name": "Acme", "handles": ["acme"]}})
    rules = RuleSet.load(config.rule_paths())
    pipes = [Pipeline(config, s, rules=rules) for s in stores]
    per = messages // n
    now = utcnow()
    tag = f"{'old' if old else 'new'}{n}"

    async def one(d: int) -> None:
        for start in range(0, per, batch):
            msgs = [
                InboundMessage(
                    channel="x",
                    external_id=f"{tag}-{d}-{i}",
                    author=Author(user_id=f"{tag}-{d}-{i % 300}", handle=f"u{tag}_{d}_{i % 300}"),
                    text=f"@acme my order {i} is late again, not happy",
                    created_at=now,
                )
                for i in range(start, min(per, start + batch))
            ]
            await pipes[d].ingest(Batch(messages=msgs), f"{tag}-{d}", save_cursor=False)

    stop = asyncio.Event()
    watcher = asyncio.create_task(_lock_waits(url, stop))
    began = time.monotonic()
    await asyncio.gather(*(one(d) for d in range(n)))
    took = time.monotonic() - began
    stop.set()
    waited = await watcher
    for s in stores:
        await s.dispose()
    return {
        "ingest_lock": "database-wide (before)" if old else "per key (now)",
        "daemons": n,
        "messages": per * n,
        "seconds": round(took, 1),
        "messages_per_s": round(per * n / took),
        "lock_wait_share": round(waited / (took * n), 3),
    }


async def _throughput(url: str, messages: int, batch: int) -> list[dict[str, Any]]:
    """The ingest rate of 1, 2 and 3 pipelines on one database, with the database-wide lock
    of before and the per-key locks of now, and the share of their time spent waiting on a
    lock."""
    return [await _round(url, n, messages, batch, old) for old in (True, False) for n in (1, 2, 3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--daemons", type=int, default=3)
    ap.add_argument("--sources-per-platform", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=10.0, help="mentions released per second")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--messages", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=200)
    args = ap.parse_args()
    name = f"socialcrm_cluster_{uuid.uuid4().hex[:8]}"
    url = asyncio.run(_create(name))
    try:
        if args.throughput:
            for row in asyncio.run(_throughput(url, args.messages, args.batch)):
                print("  ".join(f"{k}={v}" for k, v in row.items()))
            return
        with tempfile.TemporaryDirectory() as tmp:
            r = asyncio.run(
                chaos(
                    Path(tmp),
                    url,
                    minutes=args.minutes,
                    daemons=args.daemons,
                    sources_per_platform=args.sources_per_platform,
                    seed=args.seed,
                    rate=args.rate,
                )
            )
    finally:
        asyncio.run(_drop(name))
    for k, v in r.items():
        print(f"{k:48s} {v}")
    print("OK" if not r["violations"] else "FAILED")
    sys.exit(1 if r["violations"] else 0)


if __name__ == "__main__":
    main()
