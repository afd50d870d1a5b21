"""Kill test: the daemon is SIGKILLed at random moments while a source keeps serving; after
a restart every message that was served is stored exactly once.

This is the short version run by the test suite; ``bench/kill_loop.py`` runs many more kills.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestServer

from socialcrm.db import Store
from socialcrm.models import Message, Quarantine
from tests.daemon_process import DaemonProcess, write_config


class GrowingFeed:
    """A review feed that gains entries with every request and remembers what it served."""

    def __init__(self, per_request: int = 7, keep: int = 60) -> None:
        self.per_request = per_request
        self.keep = keep
        self.total = 0
        self.served: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        self.total += self.per_request
        first = max(0, self.total - self.keep)
        items = []
        for i in range(first, self.total):
            guid = f"https://reviews.example/r/{i}"
            self.served.add(guid)
            when = datetime(2026, 3, 2, tzinfo=UTC) + timedelta(minutes=i)
            items.append(
                f"<item><guid>{guid}</guid><title>Acme review {i}</title>"
                f"<description>Acme order {i} arrived late and broken, awful</description>"
                f"<pubDate>{format_datetime(when)}</pubDate></item>"
            )
        xml = f'<?xml version="1.0"?><rss version="2.0"><channel>{"".join(items)}</channel></rss>'
        return web.Response(text=xml, content_type="application/rss+xml")


@pytest.fixture
async def feed() -> AsyncIterator[tuple[GrowingFeed, str]]:
    f = GrowingFeed()
    app = web.Application()
    app.router.add_get("/feed", f.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield f, str(server.make_url("/feed"))


async def stored_ids(store: Store) -> list[str]:
    async with store.reader() as s:
        return list((await s.execute(sa.select(Message.external_id))).scalars())


@pytest.mark.timeout(300)
async def test_sigkill_loses_and_duplicates_nothing(
    store: Store, feed: tuple[GrowingFeed, str], tmp_path: Path
) -> None:
    server, url = feed
    cfg = write_config(
        tmp_path / "config.yaml",
        store.url,
        [{"name": "reviews", "type": "rss", "url": url, "interval": "0.2s", "jitter": 0}],
    )
    rng = random.Random(42)
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    for _ in range(4):
        await daemon.start()
        await asyncio.sleep(rng.uniform(1.5, 4.0))
        await daemon.kill()
    assert server.served, "the daemon never polled: see daemon.log"
    # A last, clean run: it must catch up with everything that was served.
    target = set(server.served)
    polls = server.total
    await daemon.start()
    for _ in range(600):
        if server.total > polls and target <= set(await stored_ids(store)):
            break
        await asyncio.sleep(0.1)
    assert await daemon.terminate() == 0
    ids = await stored_ids(store)
    assert len(ids) == len(set(ids)), "a message was stored twice"
    assert set(server.served) <= set(ids), "a served message was lost"
    async with store.reader() as s:
        assert (
            await s.execute(sa.select(sa.func.count()).select_from(Quarantine))
        ).scalar_one() == 0
