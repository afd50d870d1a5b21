"""Soak: the daemon polls the sandbox with injected faults for a while; it must stay up, store
every served message exactly once, and keep its memory flat.

    python bench/soak.py [--minutes 10] [--faults 0.2] [--rate 20] [--database URL]

Prints the daemon's resident memory at the start and the end, how many messages were served
and stored, and whether any was lost or stored twice. Exit status 1 if the checks fail.
The test suite runs a short version (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from socialcrm.cli import fault_mix
from socialcrm.db import Store
from socialcrm.demo import free_port, sandbox_sources
from socialcrm.models import Message
from socialcrm.sandbox.server import PLATFORMS, Sandbox, serve
from tests.daemon_process import DaemonProcess, write_config


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def soak(
    minutes: float, faults: float, rate: float, database: str | None, workdir: Path
) -> dict[str, object]:
    """Run one soak; returns its figures."""
    messages = int(rate * minutes * 60 * 1.6) + 500
    sandbox = Sandbox(
        11, messages=messages, release_per_s=rate, faults=fault_mix(11, faults) if faults else None
    )
    port = free_port()
    runner = await serve(sandbox, "127.0.0.1", port)
    url = database or f"sqlite+aiosqlite:///{workdir / 'soak.db'}"
    sources = sandbox_sources(sandbox, f"http://127.0.0.1:{port}", interval="1s")
    for src in sources:
        if src["type"] != "x":  # X's calls use the core's session timeout
            src["timeout_s"] = 5.0
    cfg = write_config(workdir / "config.yaml", url, sources)
    daemon = DaemonProcess(cfg, workdir / "daemon.log")
    await daemon.start()
    assert daemon.proc is not None
    try:
        await asyncio.sleep(15)  # start-up, first polls, caches warm
        rss_start = rss_kib(daemon.proc.pid)
        deadline = time.monotonic() + minutes * 60
        samples = []
        while time.monotonic() < deadline:
            await asyncio.sleep(min(30.0, max(1.0, deadline - time.monotonic())))
            if daemon.proc.returncode is not None:
                raise SystemExit(f"the daemon died: see {workdir / 'daemon.log'}")
            samples.append(rss_kib(daemon.proc.pid))
        rss_end = rss_kib(daemon.proc.pid)
        # Stop releasing and let it catch up with everything served.
        sandbox.release_per_s = None
        store = Store(url)
        served = {i for p in PLATFORMS for i in sandbox.served_ids(p)}
        stored: list[str] = []
        # Sources that were backing off (a 90 s timeout fault, a 429 burst) catch up within a
        # few of their backoffs; give them up to 15 minutes, and say how long it took.
        caught_up = time.monotonic()
        for _ in range(900):
            async with store.reader() as s:
                stored = list((await s.execute(sa.select(Message.external_id))).scalars())
            if served <= set(stored):
                break
            await asyncio.sleep(1)
        catch_up_s = time.monotonic() - caught_up
        await store.dispose()
        status = await daemon.terminate()
    finally:
        await daemon.kill()
        await runner.cleanup()
    injected = sum(1 for _ in sandbox.faults.events)
    missing = served - set(stored)
    by_platform = {p: len(missing & set(sandbox.served_ids(p))) for p in PLATFORMS}
    if missing:
        print("lost by platform:", by_platform, "e.g.", sorted(missing)[:5])
        print("daemon log:", workdir / "daemon.log")
    return {
        "minutes": minutes,
        "served": len(served),
        "stored": len(stored),
        "lost": len(served - set(stored)),
        "duplicates": len(stored) - len(set(stored)),
        "faults_injected": injected,
        "rss_start_mib": rss_start / 1024,
        "rss_end_mib": rss_end / 1024,
        "rss_max_mib": max(samples or [rss_end]) / 1024,
        "catch_up_s": catch_up_s,
        "exit_status": status,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--faults", type=float, default=0.2, help="share of requests that misbehave")
    ap.add_argument("--rate", type=float, default=20.0, help="mentions released per second")
    ap.add_argument("--database", default=None, help="URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(soak(args.minutes, args.faults, args.rate, args.database, Path(tmp)))
    for k, v in r.items():
        print(f"{k:16s} {v:.1f}" if isinstance(v, float) else f"{k:16s} {v}")
    ok = r["lost"] == 0 and r["duplicates"] == 0 and r["exit_status"] == 0
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
