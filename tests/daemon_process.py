"""Running ``socialcrm run`` as a real process against the sandbox: the kill and soak tests
and their long versions in ``bench/``."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
import yaml
from aiohttp import web

from socialcrm.cli import fault_mix
from socialcrm.daemon import STOP_GRACE_S
from socialcrm.db import Store
from socialcrm.demo import free_port, sandbox_sources
from socialcrm.models import Message
from socialcrm.sandbox.faults import Faults
from socialcrm.sandbox.server import PLATFORMS, Sandbox, serve

_DAEMON_ONLY = re.compile(r'\{daemon="[^"]*"\}$')


def write_config(path: Path, database: str, sources: list[dict[str, Any]], **extra: Any) -> Path:
    """A config file for a daemon under test."""
    path.write_text(
        yaml.safe_dump({"database": database, "sources": sources, **extra}, sort_keys=False),
        encoding="utf-8",
    )
    return path


class DaemonProcess:
    """``socialcrm run -c CONFIG`` in a child process."""

    def __init__(self, config: Path, log: Path, name: str | None = None) -> None:
        self.config = config
        self.log = log
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.port = free_port()

    async def start(self) -> None:
        """Start the daemon, serving HTTP on ``port``."""
        out = self.log.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "socialcrm",
                "-c",
                str(self.config),
                "run",
                "--port",
                str(self.port),
                *(("--name", self.name) if self.name else ()),
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            out.close()

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no last transaction, like a power cut."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def terminate(self, timeout_s: float = STOP_GRACE_S + 30.0) -> int:
        """SIGTERM and wait; returns the exit status. A daemon lets the poll in hand finish
        for up to ``STOP_GRACE_S`` before it closes: it is given that and a margin."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def wait_up(self, timeout_s: float = 60.0) -> None:
        """Until the daemon answers /healthz (its sources are scheduled by then)."""
        url = f"http://127.0.0.1:{self.port}/healthz"
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc is None or self.proc.returncode is not None:
                    raise RuntimeError(f"the daemon exited: see {self.log}")
                try:
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the daemon did not come up: see {self.log}")
                await asyncio.sleep(0.05)

    async def metrics(self) -> dict[str, float]:
        """The daemon's /metrics, unlabelled samples only: {name: value}."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            resp.raise_for_status()
            text = await resp.text()
        out = {}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            # The daemon's own name label alone still counts as unlabelled.
            if self.name:
                name = name.replace(f'{{daemon="{self.name}"}}', "")
            name = _DAEMON_ONLY.sub("", name)
            if line and not line.startswith("#") and "{" not in name:
                out[name] = float(value)
        return out


class SandboxRun:
    """The sandbox serving X, Mastodon and Reddit on a local port, and a daemon process
    polling it into ``database``: what the soak and the kill loop drive."""

    def __init__(
        self,
        workdir: Path,
        database: str,
        *,
        seed: int,
        rate: float,
        minutes: float,
        faults: Faults | None = None,
        source_timeout_s: float = 5.0,
    ) -> None:
        # Enough traffic to release ``rate`` per second for ``minutes``, with room to spare.
        self.sandbox = Sandbox(
            seed,
            messages=int(rate * minutes * 60 * 1.6) + 500,
            release_per_s=rate,
            faults=faults,
        )
        self.workdir = workdir
        self.database = database
        self.port = free_port()
        sources = sandbox_sources(self.sandbox, f"http://127.0.0.1:{self.port}", interval="1s")
        for src in sources:
            if src["type"] != "x":  # X's calls use the core's session timeout
                src["timeout_s"] = source_timeout_s
        self.daemon = DaemonProcess(
            write_config(workdir / "config.yaml", database, sources), workdir / "daemon.log"
        )
        self.runner: web.AppRunner | None = None

    async def __aenter__(self) -> SandboxRun:
        self.runner = await serve(self.sandbox, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.daemon.kill()
        if self.runner is not None:
            await self.runner.cleanup()

    def served(self) -> set[str]:
        """Every external id the sandbox has served intact."""
        return {i for p in PLATFORMS for i in self.sandbox.served_ids(p)}

    async def stored(self) -> list[str]:
        """External ids of the stored messages, repeats included."""
        store = Store(self.database)
        try:
            async with store.reader() as s:
                return list((await s.execute(sa.select(Message.external_id))).scalars())
        finally:
            await store.dispose()

    async def catch_up(self, limit_s: float) -> tuple[list[str], float]:
        """Stop releasing, wait until everything served is stored; (stored, seconds taken)."""
        self.sandbox.release_per_s = None
        began = time.monotonic()
        stored: list[str] = []
        while time.monotonic() - began < limit_s:
            stored = await self.stored()
            if self.served() <= set(stored):
                break
            await asyncio.sleep(1)
        return stored, time.monotonic() - began

    def figures(self, stored: list[str]) -> dict[str, Any]:
        """Served, stored, lost and stored twice, and where the losses were."""
        served = self.served()
        missing = served - set(stored)
        return {
            "served": len(served),
            "stored": len(stored),
            "lost": len(missing),
            "duplicates": len(stored) - len(set(stored)),
            "lost_by_platform": {
                p: len(missing & set(self.sandbox.served_ids(p))) for p in PLATFORMS
            },
            # For the post-mortem of a loss: which ones, and whether they were also served broken.
            "lost_sample": sorted(missing)[:10],
            "lost_also_corrupted": sorted(
                i for p in PLATFORMS for i in set(self.sandbox.corrupted[p]) & missing
            )[:10],
        }


@dataclasses.dataclass(frozen=True)
class MemorySample:
    """The daemon's memory at one moment, in MiB (see ``socialcrm.memory``)."""

    rss: float
    python_blocks: int
    #: The C allocator: handed out (SQLite's share included) and held but free.
    malloc_in_use: float
    malloc_free: float
    sqlite: float | None


async def _memory(daemon: DaemonProcess) -> MemorySample:
    m = await daemon.metrics()
    sqlite = m.get("socialcrm_sqlite_memory_bytes")
    return MemorySample(
        rss=m["process_resident_memory_bytes"] / 2**20,
        python_blocks=int(m["socialcrm_python_allocated_blocks"]),
        malloc_in_use=m["socialcrm_malloc_in_use_bytes"] / 2**20,
        malloc_free=m["socialcrm_malloc_free_bytes"] / 2**20,
        sqlite=None if sqlite is None else sqlite / 2**20,
    )


#: Most a memory figure may grow from the middle third of a soak to its last third (medians,
#: which the garbage collector's and the allocator's ups and downs do not move).
FLAT_WITHIN = 0.05


def _trend(values: list[float]) -> tuple[float, float]:
    """(median of the middle third, median of the last third)."""
    third = max(1, len(values) // 3)
    return statistics.median(values[third : 2 * third] or values), statistics.median(
        values[-third:]
    )


def memory_figures(samples: list[MemorySample]) -> dict[str, Any]:
    """Start, end, the trend of each figure over the run's later part, and every sample.

    The first third is left out of the judgement: it fills caches (SQLite's pages, compiled
    rules and templates, connection pools) and is expected to grow. Memory is flat when
    resident memory, the C allocator's memory in use and the interpreter's blocks each grow
    by at most FLAT_WITHIN from the middle third to the last.
    """
    out: dict[str, Any] = {
        "rss_start_mib": samples[0].rss,
        "rss_end_mib": samples[-1].rss,
        "rss_max_mib": max(s.rss for s in samples),
    }
    flat = True
    for name, values in (
        ("rss_mib", [s.rss for s in samples]),
        ("malloc_in_use_mib", [s.malloc_in_use for s in samples]),
        ("python_blocks", [float(s.python_blocks) for s in samples]),
    ):
        middle, last = _trend(values)
        growth = (last - middle) / middle if middle else 0.0
        out[f"{name}_middle_to_last_third"] = f"{middle:.1f} -> {last:.1f} ({growth:+.1%})"
        flat = flat and growth <= FLAT_WITHIN
    out["memory_flat"] = flat
    out["rss_every_30s_mib"] = [round(s.rss) for s in samples]
    out["malloc_in_use_every_30s_mib"] = [round(s.malloc_in_use) for s in samples]
    out["malloc_free_every_30s_mib"] = [round(s.malloc_free) for s in samples]
    out["python_blocks_every_30s_k"] = [round(s.python_blocks / 1000) for s in samples]
    if samples[-1].sqlite is not None:
        out["sqlite_every_30s_mib"] = [round(s.sqlite or 0.0) for s in samples]
    return out


async def soak(
    workdir: Path,
    database: str,
    *,
    minutes: float,
    faults: float,
    rate: float,
    warmup_s: float = 15.0,
    timeout_delay_s: float | None = None,
    rate_limit_reset_s: float | None = None,
    catch_up_limit_s: float = 900.0,
) -> dict[str, Any]:
    """The daemon polls the faulty sandbox for ``minutes``; memory, losses and repeats."""
    mix = fault_mix(11, faults) if faults else None
    if mix is not None and timeout_delay_s is not None:
        mix = dataclasses.replace(mix, timeout_delay_s=timeout_delay_s)
    if mix is not None and rate_limit_reset_s is not None:
        mix = dataclasses.replace(mix, rate_limit_reset_s=rate_limit_reset_s)
    async with SandboxRun(
        workdir, database, seed=11, rate=rate, minutes=minutes, faults=mix
    ) as run:
        await run.daemon.start()
        assert run.daemon.proc is not None
        await run.daemon.wait_up()
        await asyncio.sleep(warmup_s)  # first polls, caches warm
        memory = [await _memory(run.daemon)]
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            await asyncio.sleep(min(30.0, max(1.0, deadline - time.monotonic())))
            if run.daemon.proc.returncode is not None:
                raise RuntimeError(f"the daemon died: see {workdir / 'daemon.log'}")
            memory.append(await _memory(run.daemon))
        # Sources that were backing off (a timeout fault, a 429 burst) catch up within a few
        # of their backoffs.
        _, catch_up_s = await run.catch_up(catch_up_limit_s)
        status = await run.daemon.terminate()
        # Counted after the stop: a poll still running at the catch-up's last look may have
        # been served more, and a clean stop stores the batch in hand.
        stored = await run.stored()
        return {
            "minutes": minutes,
            **run.figures(stored),
            "faults_injected": sum(1 for _ in run.sandbox.faults.events),
            **memory_figures(memory),
            "catch_up_s": catch_up_s,
            "exit_status": status,
        }


async def kill_loop(
    workdir: Path,
    database: str,
    *,
    kills: int,
    seed: int,
    rate: float = 20.0,
    up_s: tuple[float, float] = (1.5, 4.0),
    catch_up_limit_s: float = 120.0,
) -> dict[str, Any]:
    """SIGKILL the daemon ``kills`` times at random moments while the sandbox feeds it, then
    run it once more, cleanly: everything served must be stored exactly once."""
    rng = random.Random(seed)
    minutes = kills * up_s[1] / 60 + 2
    async with SandboxRun(workdir, database, seed=seed, rate=rate, minutes=minutes) as run:
        for _ in range(kills):
            await run.daemon.start()
            # Half the kills count from the start (some land in start-up), half from when the
            # daemon is up and polling: on a slow machine start-up alone can outlast up_s.
            if rng.random() < 0.5:
                await run.daemon.wait_up()
            await asyncio.sleep(rng.uniform(*up_s))
            await run.daemon.kill()
        served_before_last_run = len(run.served())
        await run.daemon.start()
        # The last run must be up and polling (new mentions keep coming) before it is judged
        # and stopped: a SIGTERM before its signal handlers exist would end it uncleanly.
        for _ in range(int(catch_up_limit_s / 0.1)):
            if len(run.served()) > served_before_last_run:
                break
            await asyncio.sleep(0.1)
        _, catch_up_s = await run.catch_up(catch_up_limit_s)
        status = await run.daemon.terminate()
        # Counted after the stop: a poll still running at the catch-up's last look may have
        # been served more, and a clean stop stores the batch in hand.
        stored = await run.stored()
        return {
            "kills": kills,
            "served_while_killing": served_before_last_run,
            **run.figures(stored),
            "catch_up_s": catch_up_s,
            "exit_status": status,
        }


def print_figures(figures: dict[str, Any]) -> int:
    """Print a soak's or a kill loop's figures and OK or FAILED; the exit status."""
    for k, v in figures.items():
        print(f"{k:22s} {v:.1f}" if isinstance(v, float) else f"{k:22s} {v}")
    ok = figures["lost"] == 0 and figures["duplicates"] == 0 and figures["exit_status"] == 0
    ok = ok and figures.get("memory_flat", True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1
