"""Several ``socialcrm run`` processes on one PostgreSQL database against the sandbox: what
tests/test_cluster.py and bench/cluster.py drive (kills, restarts, approvals at random daemons)
and the figures they judge."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web

from socialcrm.cluster import describe
from socialcrm.db import Store
from socialcrm.demo import free_port, sandbox_chat, sandbox_sources
from socialcrm.models import Alert, Message, Reply, utcnow
from socialcrm.sandbox.server import PLATFORMS, SLACK_APPROVER, SLACK_CHANNEL, Sandbox, serve
from tests.daemon_process import DaemonProcess, write_config

ALERT_SECRET = "cluster-bench-alert-secret"
_POLLS = re.compile(
    r'^socialcrm_poll_duration_seconds_count\{daemon="([^"]+)",source="([^"]+)"\} (\S+)$', re.M
)


class AlertReceiver:
    """A webhook alert sink that counts each delivery by its ``X-Socialcrm-Delivery`` id."""

    def __init__(self) -> None:
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.deliveries[request.headers.get("X-Socialcrm-Delivery", "?")] += 1
        return web.Response(status=204)

    async def start(self) -> None:
        """Serve on ``port``."""
        app = web.Application()
        app.router.add_post("/alerts", self._hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


class ClusterRun:
    """The sandbox, an alert receiver and ``daemons`` named daemon processes sharing one
    configuration and one database; each platform is polled through several sources (or the
    ``sources`` given, built from the sandbox and its base URL)."""

    def __init__(
        self,
        workdir: Path,
        database: str,
        *,
        daemons: int = 2,
        sources_per_platform: int = 2,
        seed: int = 7,
        rate: float = 10.0,
        minutes: float = 2.0,
        interval_s: float = 1.0,
        chat: bool = True,
        sources: Callable[[Sandbox, str], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.sandbox = Sandbox(
            seed, messages=int(rate * minutes * 60 * 1.6) + 500, release_per_s=rate
        )
        self.workdir = workdir
        self.database = database
        self.interval_s = interval_s
        self.port = free_port()
        self.alerts = AlertReceiver()
        base = f"http://127.0.0.1:{self.port}"
        if sources is not None:
            configured = sources(self.sandbox, base)
        else:
            configured = []
            for src in sandbox_sources(self.sandbox, base, interval=f"{interval_s:g}s"):
                for i in range(sources_per_platform):
                    one = {**src, "name": f"{src['name']}-{i + 1}"}
                    if one["type"] != "x":
                        one["timeout_s"] = 5.0
                    configured.append(one)
        self.source_names = [s["name"] for s in configured]
        extra: dict[str, Any] = {
            "brand": {"name": self.sandbox.brand, "handles": [self.sandbox.brand_handle]},
            # The sandbox's traffic spans days; none of it is history here, so it is drafted.
            "backfill_before": None,
            "alerts": {
                "interval": "1s",
                "lease": "20s",
                "sinks": [
                    {
                        "type": "webhook",
                        "name": "receiver",
                        "url": f"http://127.0.0.1:{self.alerts.port}/alerts",
                        "secret": ALERT_SECRET,
                    }
                ],
            },
        }
        if chat:
            extra.update(sandbox_chat(self.sandbox, base))
        config = write_config(workdir / "config.yaml", database, configured, **extra)
        self.daemons = {
            f"d{i + 1}": DaemonProcess(config, workdir / f"d{i + 1}.log", name=f"d{i + 1}")
            for i in range(daemons)
        }
        self.runner: web.AppRunner | None = None
        self.store = Store(database)
        self.approved: set[int] = set()

    async def __aenter__(self) -> ClusterRun:
        self.runner = await serve(self.sandbox, "127.0.0.1", self.port)
        self.sandbox.slack.base_url = f"http://127.0.0.1:{self.port}/slack"
        await self.alerts.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for d in self.daemons.values():
            await d.kill()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.alerts.runner is not None:
            await self.alerts.runner.cleanup()
        await self.store.dispose()

    def up(self) -> list[str]:
        """Names of the daemon processes running."""
        return [
            n for n, d in self.daemons.items() if d.proc is not None and d.proc.returncode is None
        ]

    async def holdings(self) -> dict[str, list[str]]:
        """Sources held by each daemon that PostgreSQL says is up."""
        return {v.name: v.sources for v in await describe(self.store) if v.up}

    async def wait_for(self, check: Any, timeout_s: float, what: str) -> Any:
        """Until ``await check()`` is truthy."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = await check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:.0f}s (see {self.workdir})")
            await asyncio.sleep(0.2)

    async def spread(self, names: list[str]) -> dict[str, list[str]] | None:
        """Holdings when every source is held once, by the daemons ``names`` only, each with
        a share; else None."""
        held = await self.holdings()
        if sorted(held) != sorted(names) or not all(held.values()):
            return None
        every = [s for srcs in held.values() for s in srcs]
        return held if sorted(every) == sorted(self.source_names) else None

    async def polls(self) -> dict[tuple[str, str], float]:
        """Polls made so far by (daemon, source), from each running daemon's /metrics."""
        out: dict[tuple[str, str], float] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for name in self.up():
                try:
                    url = f"http://127.0.0.1:{self.daemons[name].port}/metrics"
                    async with http.get(url) as resp:
                        text = await resp.text()
                except (aiohttp.ClientError, TimeoutError):
                    continue
                for daemon, source, value in _POLLS.findall(text):
                    out[(daemon, source)] = float(value)
        return out

    async def approve_some(self, rng: random.Random, most: int = 5) -> int:
        """Click Approve on up to ``most`` cards of drafts, each click sent to a random
        running daemon; returns how many clicks a daemon accepted."""
        async with self.store.reader() as s:
            ids = list(
                (
                    await s.execute(
                        sa.select(Reply.id).where(
                            Reply.status == "draft", Reply.chat_ts.is_not(None)
                        )
                    )
                ).scalars()
            )
        ids = [i for i in ids if i not in self.approved]
        rng.shuffle(ids)
        done = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for rid in ids[:most]:
                up = self.up()
                if not up:
                    break
                daemon = self.daemons[rng.choice(up)]
                try:
                    card = self.sandbox.slack.card(rid)
                    body, headers = self.sandbox.slack.click(card, "approve", SLACK_APPROVER)
                    url = f"http://127.0.0.1:{daemon.port}/slack/interactions"
                    async with http.post(url, data=body, headers=headers) as resp:
                        if resp.status == 200:
                            self.approved.add(rid)
                            done += 1
                except (LookupError, aiohttp.ClientError, TimeoutError):
                    continue
        return done

    def served(self) -> set[str]:
        """Every external id the sandbox has served intact."""
        return {i for p in PLATFORMS for i in self.sandbox.served_ids(p)}

    async def stored(self) -> list[str]:
        """External ids of the inbound messages stored, repeats included."""
        async with self.store.reader() as s:
            q = sa.select(Message.external_id).where(Message.direction == "inbound")
            return list((await s.execute(q)).scalars())

    async def catch_up(self, limit_s: float) -> float:
        """Stop releasing; wait until everything served is stored and stays so while every
        source is polled again (messages released before the stop may still be served by the
        next polls, and a poll in hand has been served what it has not stored yet); seconds
        taken until it was all stored."""
        self.sandbox.release_per_s = None
        began = time.monotonic()
        caught: float | None = None
        served = self.served()
        while time.monotonic() - began < limit_s:
            now = time.monotonic()
            if served <= set(await self.stored()):
                caught = caught if caught is not None else now
                if now - caught >= 3 * self.interval_s:
                    return caught - began
            else:
                caught = None
            await asyncio.sleep(0.5)
            more = self.served()
            if more != served:
                served, caught = more, None
        return time.monotonic() - began

    async def figures(self) -> dict[str, Any]:
        """Messages, cards, replies and alerts: each counted against what it should be."""
        served = self.served()
        stored = await self.stored()
        async with self.store.reader() as s:
            replies = (
                await s.execute(
                    sa.select(Reply.id, Reply.status, Reply.message_id, Reply.next_attempt_at)
                )
            ).all()
            q = sa.select(Message.id, Message.external_id)
            msg_ext = {r[0]: r[1] for r in (await s.execute(q)).all()}
            q = sa.select(Alert.id, Alert.status, Alert.detail)
            rows = (await s.execute(q)).all()
        alerts = {r[0]: r[1] for r in rows}
        # Delivered to no sink: a duplicate of another alert, or routed nowhere.
        unrouted = {r[0] for r in rows if not ((r[2] or {}).get("_delivery") or {}).get("routed")}
        cards: collections.Counter[int] = collections.Counter()
        for m in self.sandbox.slack.messages:
            if m.channel != SLACK_CHANNEL:
                continue
            payload = (m.metadata or {}).get("event_payload") or {}
            if "reply_id" in payload:
                cards[int(payload["reply_id"])] += 1
        posted: collections.Counter[str] = collections.Counter(
            r.in_reply_to or "" for r in self.sandbox.replies
        )
        sent_ids = [r.id for r in replies if r.status == "sent"]
        # A reply goes to its message: the platform's replies to that message, per approval.
        per_approval = [
            posted[msg_ext.get(r.message_id, "")] for r in replies if r.id in self.approved
        ]
        now = utcnow()
        stuck = [
            r.id
            for r in replies
            if r.id in self.approved
            and (
                r.status == "sending"
                or (
                    r.status == "approved"
                    and (r.next_attempt_at is None or r.next_attempt_at <= now)
                )
            )
        ]
        sent_unposted = [
            r.id
            for r in replies
            if r.status == "sent" and not posted[msg_ext.get(r.message_id, "")]
        ]
        delivered = [a for a, st in alerts.items() if st == "delivered" and a not in unrouted]
        return {
            "served": len(served),
            "stored": len(stored),
            "lost": len(served - set(stored)),
            "stored_twice": len(stored) - len(set(stored)),
            "drafts": len(replies),
            "drafts_with_card": sum(1 for r in replies if cards[r.id] > 0),
            "drafts_with_two_cards": sum(1 for r in replies if cards[r.id] > 1),
            "approved": len(self.approved),
            "sent": len(sent_ids),
            "approvals_sent_twice": sum(1 for n in per_approval if n > 1),
            "approvals_sent_once": sum(1 for n in per_approval if n == 1),
            "approvals_stuck": len(stuck),
            "sent_but_not_posted": len(sent_unposted),
            "approved_by_status": dict(
                collections.Counter(r.status for r in replies if r.id in self.approved)
            ),
            "alerts": len(alerts),
            "alerts_by_status": dict(collections.Counter(alerts.values())),
            "alerts_delivered": len(delivered),
            "alerts_delivered_twice": sum(
                1 for a in delivered if self.alerts.deliveries[str(a)] > 1
            ),
            "alerts_sent_but_not_received": sum(
                1 for a in delivered if self.alerts.deliveries[str(a)] == 0
            ),
        }


class PollWatch:
    """Which daemon polled which source when, from the daemons' poll counters sampled often."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], float] = {}
        #: (monotonic time, daemon, source) of each sample in which a poll counter rose.
        self.events: list[tuple[float, str, str]] = []
        #: Samples in which two daemons' counters rose for one source: (time, source, daemons).
        self.shared: list[tuple[float, str, list[str]]] = []

    def forget(self, daemon: str) -> None:
        """A daemon was killed: its counters start again from zero."""
        self.last = {k: v for k, v in self.last.items() if k[0] != daemon}

    async def sample(self, run: ClusterRun) -> None:
        """One look at every running daemon's counters."""
        now = time.monotonic()
        polls = await run.polls()
        rose: dict[str, list[str]] = collections.defaultdict(list)
        for key, n in polls.items():
            if n > self.last.get(key, 0.0):
                rose[key[1]].append(key[0])
                self.events.append((now, key[0], key[1]))
            self.last[key] = n
        for source, daemons in rose.items():
            if len(daemons) > 1:
                self.shared.append((now, source, sorted(daemons)))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def chaos(
    workdir: Path,
    database: str,
    *,
    minutes: float,
    daemons: int = 3,
    sources_per_platform: int = 4,
    seed: int = 1,
    rate: float = 10.0,
    kill_every_s: tuple[float, float] = (20.0, 60.0),
    down_s: tuple[float, float] = (2.0, 6.0),
    interval_s: float = 1.0,
    failover_within_s: float | None = None,
) -> dict[str, Any]:
    """Daemons poll the sandbox for ``minutes``; a random one is SIGKILLed every
    ``kill_every_s`` and restarted ``down_s`` later; approvals arrive at random daemons. The
    figures, and ``violations``: what broke a promise (empty when none did). A takeover
    slower than ``failover_within_s`` (two poll intervals unless given) is one."""
    rng = random.Random(seed)
    async with ClusterRun(
        workdir,
        database,
        daemons=daemons,
        sources_per_platform=sources_per_platform,
        seed=seed,
        rate=rate,
        minutes=minutes + 3,
        interval_s=interval_s,
    ) as run:
        names = list(run.daemons)
        for d in run.daemons.values():
            await d.start()
        await run.wait_for(lambda: run.spread(names), 180, "every daemon holds a share")
        watch = PollWatch()
        await watch.sample(run)
        began = time.monotonic()
        deadline = began + minutes * 60
        within = 2 * interval_s if failover_within_s is None else failover_within_s
        next_kill = began + rng.uniform(*kill_every_s) / 2
        restart_at: dict[str, float] = {}
        #: source -> (time of the kill, daemon killed), until another daemon holds it.
        orphaned: dict[str, tuple[float, str]] = {}
        failover: list[float] = []
        kills = 0
        done = asyncio.Event()
        #: Set while no source waits to be taken over.
        all_taken = asyncio.Event()

        async def watch_leases() -> None:
            while not done.is_set():
                held = await run.holdings()
                now = time.monotonic()
                for daemon, sources in held.items():
                    for src in sources:
                        if src in orphaned and daemon != orphaned[src][1]:
                            failover.append(now - orphaned.pop(src)[0])
                if not orphaned:
                    all_taken.set()
                await asyncio.sleep(0.1)

        async def approve() -> None:
            while not done.is_set():
                await run.approve_some(rng, most=2)
                await asyncio.sleep(0.5)

        helpers = [asyncio.create_task(watch_leases()), asyncio.create_task(approve())]
        while time.monotonic() < deadline:
            now = time.monotonic()
            for name, at in list(restart_at.items()):
                if now >= at:
                    await run.daemons[name].start()
                    del restart_at[name]
            if now >= next_kill and len(run.up()) > 1:
                victim = rng.choice(run.up())
                held = (await run.holdings()).get(victim, [])
                await run.daemons[victim].kill()
                killed_at = time.monotonic()
                watch.forget(victim)
                for src in held:
                    orphaned[src] = (killed_at, victim)
                restart_at[victim] = killed_at + rng.uniform(*down_s)
                next_kill = killed_at + rng.uniform(*kill_every_s)
                kills += 1
            await watch.sample(run)
            await asyncio.sleep(0.25)
        # A kill just before the end is owed its takeover too: the leases are watched until
        # each source is taken over or the time allowed for it has passed.
        if orphaned:
            owed = max(at for at, _ in orphaned.values()) + within - time.monotonic()
            all_taken.clear()  # set again by the watch once nothing is orphaned
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_taken.wait(), max(0.0, owed))
        done.set()
        await asyncio.gather(*helpers)
        for name in restart_at:
            await run.daemons[name].start()
        catch_up_s = await run.catch_up(180)

        async def settled() -> bool:
            f = await run.figures()
            return (
                f["drafts_with_card"] == f["drafts"]
                and not f["approvals_stuck"]
                and not f["alerts_by_status"].get("pending")
            )

        with contextlib.suppress(TimeoutError):
            await run.wait_for(settled, 90, "cards and sends settle")
        # Windows in which two daemons polled one source and it was not a handover (a source
        # changing hands shows its old and new holder in one sample once at most).
        runs: collections.Counter[str] = collections.Counter()
        sustained = 0
        last_seen: dict[str, float] = {}
        for t, source, _ in watch.shared:
            if t - last_seen.get(source, -1e9) <= 1.5 * interval_s:
                runs[source] += 1
                if runs[source] >= 2:
                    sustained += 1
            else:
                runs[source] = 0
            last_seen[source] = t
        per_interval: collections.Counter[tuple[str, int]] = collections.Counter(
            (source, int((t - began) / interval_s)) for t, _, source in watch.events
        )
        figures = await run.figures()
        statuses = []
        for n in run.up():
            # One restarted late must be up (its signal handlers set) before it is stopped.
            await run.daemons[n].wait_up()
            statuses.append(await run.daemons[n].terminate())
        figures.update(
            {
                "minutes": minutes,
                "daemons": daemons,
                "sources": len(run.source_names),
                "kills": kills,
                "catch_up_s": round(catch_up_s, 1),
                "failovers": len(failover),
                "failover_p50_s": round(_pct(failover, 0.5), 2),
                "failover_p99_s": round(_pct(failover, 0.99), 2),
                "sources_never_taken_over": len(orphaned),
                "max_poll_samples_per_source_per_interval": max(per_interval.values(), default=0),
                "samples_two_daemons_polled_one_source": len(watch.shared),
                "two_daemons_polling_one_source_beyond_a_handover": sustained,
                "exit_statuses": statuses,
            }
        )
        violations = []
        if figures["lost"] or figures["stored_twice"]:
            violations.append("messages lost or stored twice")
        if figures["drafts_with_two_cards"] or figures["drafts_with_card"] != figures["drafts"]:
            violations.append("a draft without exactly one card")
        if figures["approvals_sent_twice"]:
            violations.append("an approval sent twice")
        if figures["approvals_stuck"] or figures["sent_but_not_posted"]:
            violations.append("an approval stuck, or marked sent and not posted")
        if figures["alerts_delivered_twice"] or figures["alerts_sent_but_not_received"]:
            violations.append("an alert not delivered exactly once")
        if sustained:
            violations.append("two daemons polled one source beyond a handover")
        if figures["failover_p99_s"] > within or orphaned:
            violations.append(f"a source not taken over within {within:g}s of a kill")
        if any(s != 0 for s in statuses):
            violations.append("a daemon did not stop cleanly")
        figures["violations"] = violations
        return figures
