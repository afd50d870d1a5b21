"""Through the daemon: poll-to-stored latency at a steady rate, and messages/s for a backlog.

    python bench/daemon.py [--rate 20] [--seconds 60] [--backlog 5000] [--interval 1s]

The sandbox serves X, Mastodon and Reddit; ``socialcrm run`` polls it in a child process.
Latency is from the moment a mention becomes visible on the platform to the moment it is
stored (the pipeline's ``received_at``), so it includes waiting for the next poll.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from socialcrm.db import Store
from socialcrm.demo import free_port, sandbox_sources
from socialcrm.models import Message
from socialcrm.sandbox.server import PLATFORMS, Sandbox, serve
from tests.daemon_process import DaemonProcess, write_config


async def stored_at(store: Store) -> dict[str, datetime]:
    async with store.reader() as s:
        rows = (await s.execute(sa.select(Message.external_id, Message.received_at))).all()
    return {r[0]: r[1] for r in rows}


async def wait_for(store: Store, ids: set[str], timeout_s: float) -> dict[str, datetime]:
    deadline = time.monotonic() + timeout_s
    have: dict[str, datetime] = {}
    while time.monotonic() < deadline:
        have = await stored_at(store)
        if ids <= have.keys():
            break
        await asyncio.sleep(0.2)
    return have


async def run(rate: float, seconds: float, backlog: int, interval: str, workdir: Path) -> None:
    sandbox = Sandbox(5, messages=int(rate * seconds * 1.5) + backlog * 2 + 500)
    port = free_port()
    runner = await serve(sandbox, "127.0.0.1", port)
    url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    sources = sandbox_sources(sandbox, f"http://127.0.0.1:{port}", interval=interval)
    daemon = DaemonProcess(write_config(workdir / "config.yaml", url, sources), workdir / "d.log")
    store = Store(url)
    await daemon.start()
    try:
        await asyncio.sleep(8)  # start-up
        # 1. Steady rate: release a few mentions every 250 ms and note when each became visible.
        visible_at: dict[str, float] = {}
        t_end = time.monotonic() + seconds
        carry = 0.0
        while time.monotonic() < t_end:
            carry += rate / 4
            n, carry = int(carry), carry - int(carry)
            now = time.time()
            for m in sandbox.release(n) if n else []:
                visible_at[m.external_id] = now
            await asyncio.sleep(0.25)
        served = {i for p in PLATFORMS for i in sandbox.served_ids(p)}
        have = await wait_for(store, served, 120)
        lat = sorted(
            have[i].timestamp() - visible_at[i] for i in served if i in have and i in visible_at
        )
        # 2. Backlog: a burst of mentions at once; how fast does the daemon work through it?
        before = set(have)
        start = time.time()
        sandbox.release(backlog)
        await asyncio.sleep(1)
        served2 = {i for p in PLATFORMS for i in sandbox.served_ids(p)}
        have2 = await wait_for(store, served2, 600)
        new = [t for i, t in have2.items() if i not in before]
        took = max(t.timestamp() for t in new) - start if new else float("nan")
        status = await daemon.terminate()
    finally:
        await daemon.kill()
        await store.dispose()
        await runner.cleanup()
    print(f"steady {rate}/s for {seconds:.0f}s, polling every {interval}: {len(lat)} mentions")
    if lat:
        print(
            f"  poll-to-stored latency: p50 {statistics.median(lat):.2f}s  "
            f"p90 {lat[int(len(lat) * 0.9)]:.2f}s  p99 {lat[int(len(lat) * 0.99)]:.2f}s  "
            f"max {lat[-1]:.2f}s"
        )
    print(f"backlog of {len(new)} mentions stored in {took:.1f}s: {len(new) / took:.0f} messages/s")
    print(f"daemon exit status {status}; finished {datetime.now(UTC):%H:%M:%S}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--backlog", type=int, default=5000)
    ap.add_argument("--interval", default="1s")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.rate, args.seconds, args.backlog, args.interval, Path(tmp)))


if __name__ == "__main__":
    main()
