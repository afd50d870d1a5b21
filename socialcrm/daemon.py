"""The monitoring daemon: a scheduler polling every source, and an HTTP server for health,
metrics and inbound webhooks. SIGTERM/SIGINT finish the batch in hand and exit 0; SIGHUP
loads the rule files and reply templates anew (kept as they were if the new ones are bad).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from socialcrm import backlog, memory, triage
from socialcrm.alerts import AlertDispatcher
from socialcrm.chatops.cards import CardNotifier
from socialcrm.chatops.commands import Commands
from socialcrm.chatops.mattermost import add_mattermost_routes
from socialcrm.chatops.slack import add_slack_routes
from socialcrm.cluster import TICK_S, Cluster, DaemonLabel, SqliteClaim, default_name, describe
from socialcrm.config import Config
from socialcrm.connector import Batch
from socialcrm.db import Store
from socialcrm.models import utcnow
from socialcrm.pipeline import Pipeline
from socialcrm.reports.digest import DigestConfig, send_digest
from socialcrm.responder import Responder, load_checked
from socialcrm.rules import RuleError, RuleSet
from socialcrm.scoring import ScoringPool
from socialcrm.sender import Sender
from socialcrm.sla import SlaPolicy, check_sla
from socialcrm.sources import Poller, PollOutcome, Source, make_source
from socialcrm.spikes import check_spikes
from socialcrm.tokens import SourceTokens

log = logging.getLogger(__name__)
# APScheduler warns on every skipped run of a job that is still running; one poll per source
# at a time is what we asked for, so only its errors are worth a line.
logging.getLogger("apscheduler").setLevel(logging.ERROR)

#: How often the C allocator's free memory is handed back to the system.
TRIM_EVERY = timedelta(minutes=5)
#: Longest time a stop waits for polls in flight to finish their batch.
STOP_GRACE_S = 60.0
#: After this long the log says which polls a stop still waits for.
STOP_NOTE_S = 5.0


class Metrics:
    """The daemon's Prometheus metrics, in a registry of its own."""

    def __init__(self, sqlite: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        memory.register(r, sqlite)
        self.stored = Counter(
            "socialcrm_messages_stored_total", "Messages stored", ["source"], registry=r
        )
        self.duplicates = Counter(
            "socialcrm_messages_duplicate_total", "Messages seen again", ["source"], registry=r
        )
        self.quarantined = Counter(
            "socialcrm_messages_quarantined_total", "Payloads quarantined", ["source"], registry=r
        )
        self.tickets = Counter(
            "socialcrm_tickets_opened_total", "Tickets opened", ["source"], registry=r
        )
        self.drafts = Counter(
            "socialcrm_drafts_total", "Reply drafts created", ["source"], registry=r
        )
        self.poll_errors = Counter(
            "socialcrm_poll_errors_total", "Failed polls", ["source", "kind"], registry=r
        )
        self.poll_seconds = Histogram(
            "socialcrm_poll_duration_seconds", "Poll duration", ["source"], registry=r
        )
        self.up = Gauge(
            "socialcrm_source_up", "1 when the last poll succeeded", ["source"], registry=r
        )
        self.lag = Gauge(
            "socialcrm_source_lag_seconds",
            "Seconds since the last successful poll",
            ["source"],
            registry=r,
        )
        self.stream_up = Gauge(
            "socialcrm_stream_up",
            "0 while a stream of a source fails alone, 1 once it works again",
            ["source", "stream"],
            registry=r,
        )
        #: (source, stream) pairs whose gauge was set to 0, to set back to 1 on recovery.
        self._streams_down: set[tuple[str, str]] = set()
        self.alerts_sent = Counter(
            "socialcrm_alert_deliveries_total", "Alerts delivered to a sink", registry=r
        )
        self.job_errors = Counter(
            "socialcrm_job_errors_total", "Failed housekeeping jobs", ["job"], registry=r
        )
        self.alert_failures = Counter(
            "socialcrm_alert_delivery_failures_total",
            "Failed attempts to deliver an alert to a sink (each retry counts)",
            registry=r,
        )
        self.backlog = Gauge(
            "socialcrm_backlog",
            "Drafts waiting, replies sent and failed, alerts waiting and failed, in the store",
            ["what"],
            registry=r,
        )
        self.webhooks = Counter(
            "socialcrm_webhook_requests_total",
            "Inbound webhook requests",
            ["source", "status"],
            registry=r,
        )
        self.rule_reloads = Counter(
            "socialcrm_rule_reloads_total",
            "Reloads of the rules and reply templates (SIGHUP), by outcome: ok or refused",
            ["outcome"],
            registry=r,
        )

    def record(self, src: Source, out: PollOutcome, seconds: float) -> None:
        """Count one poll's outcome."""
        name = src.name
        r = out.result
        self.stored.labels(name).inc(r.stored)
        self.duplicates.labels(name).inc(r.duplicates)
        self.quarantined.labels(name).inc(r.quarantined)
        self.tickets.labels(name).inc(r.tickets_opened)
        self.drafts.labels(name).inc(r.drafts)
        if out.skipped is None:
            self.poll_seconds.labels(name).observe(seconds)
        if out.error:
            self.poll_errors.labels(name, out.error.split(":", 1)[0]).inc()
            self.up.labels(name).set(0)
        elif out.skipped is None:
            self.up.labels(name).set(1)
        self.record_streams(src)

    def record_streams(self, src: Source) -> None:
        """Per-stream gauges: 0 for a stream failing alone, back to 1 when it recovers."""
        down = {(src.name, stream) for stream in src.streams}
        for key in down:
            self.stream_up.labels(*key).set(0)
        for key in [k for k in self._streams_down if k[0] == src.name and k not in down]:
            self.stream_up.labels(*key).set(1)
            self._streams_down.discard(key)
        self._streams_down |= down


class Daemon:
    """Wires the store, the pipeline, the sources, the scheduler and the HTTP server."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        rules: RuleSet | None = None,
        responder: Responder | None = None,
        scoring: ScoringPool | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
        cluster_tick_s: float | None = None,
    ) -> None:
        self.config = config
        #: This daemon's name among the daemons on one database (``run --name``).
        self.name = name or default_name()
        #: Leases on PostgreSQL (None on SQLite, which one daemon claims for itself).
        self.cluster: Cluster | None = None
        self._cluster_tick_s = cluster_tick_s
        self._sqlite_claim: SqliteClaim | None = None
        self.store = store
        self.rules = rules or RuleSet.load(config.rule_paths())
        self.scoring = scoring
        # One responder for drafts and chat, as a reload gives them (``responder``: the one
        # whose templates the start-up check compiled; else each makes its own).
        self.pipeline = Pipeline(
            config, store, rules=self.rules, responder=responder, scoring=scoring
        )
        self.poller = Poller(store, self.pipeline, clock=clock)
        self.metrics = Metrics(sqlite=store.is_sqlite)
        self.poller.on_result = self.metrics.record
        self.sender = Sender(store, {}, who=f"{self.name}/{os.getpid()}", up=self._senders_up)
        self.commands = Commands(config, store, self.pipeline.responder, rules=self.rules)
        #: The daemon's own HTTP session, for chat (answers to Slack, approval cards).
        self.http: aiohttp.ClientSession | None = None
        self.cards: CardNotifier | None = None
        self.alerts: AlertDispatcher | None = None
        self.sla = SlaPolicy(config.sla)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.runner: web.AppRunner | None = None
        self.started_at = utcnow()
        #: When the rules in use were loaded, and why the last reload was refused (None: it
        #: was not), for /healthz.
        self.rules_loaded_at = self.started_at
        self.reload_error: str | None = None
        self._stopped = asyncio.Event()
        self._alert_failures_seen = 0
        #: Sources whose lease came or went since their health was read from the store: what
        #: this process knows of them may be stale (another daemon polled them meanwhile).
        self._stale: set[str] = set()
        #: Cluster-wide jobs running now: their leases wait for them to end.
        self._running: collections.Counter[str] = collections.Counter()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        """Build every source, schedule its polls, and serve HTTP."""
        if self.store.is_sqlite and ":memory:" not in self.store.url:
            self._sqlite_claim = SqliteClaim(self.store.url)
            self._sqlite_claim.acquire()
        for i, cfg in enumerate(self.config.sources):
            if cfg.enabled:
                self.poller.add(make_source(cfg, i, SourceTokens(self.store, cfg.name)))
        await self.poller.load_state()
        self.sender.connectors = {n: s.connector for n, s in self.poller.sources.items()}
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        if self.config.slack is not None:
            self.cards = CardNotifier.from_config(self.store, self.config, self.http)
            self.sender.on_change = self.cards.changed
            self.cards.start(tick_s=1.0)
        self.alerts = AlertDispatcher(
            self.store,
            self.config.alerts,
            self.http,
            brand=self.config.brand.name,
            base_dir=self.config.base_dir,
        )
        self._schedule_housekeeping()
        if not self.store.is_sqlite:
            await self._join_cluster()
        # Once this daemon is a member: its claims name a process the others see up.
        self.sender.start()
        count = max(1, len(self.poller.sources))
        for n, src in enumerate(self.poller.sources.values()):
            interval = src.config.interval.total_seconds()
            if interval <= 0:
                continue
            # Stagger first polls over one interval so sources do not start in step.
            first = utcnow() + timedelta(seconds=min(interval, 5.0) * n / count)
            self.scheduler.add_job(
                self._poll,
                IntervalTrigger(
                    seconds=interval,
                    jitter=src.config.jitter.total_seconds() or None,
                    start_date=first,
                ),
                args=[src.name],
                id=f"poll:{src.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(interval)),
                next_run_time=first,
            )
        self.scheduler.start()
        if self.cluster is not None:
            self.cluster.start()
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        log.info(
            "socialcrm %s listening on http://%s:%d; database %s; %d source(s): %s",
            _version(),
            host,
            port,
            self.store.safe_url(),
            len(self.poller.sources),
            ", ".join(f"{n} ({src.config.type})" for n, src in self.poller.sources.items())
            or "none",
        )

    def _schedule_housekeeping(self) -> None:
        """Alert delivery, memory trims, SLA checks, spike detection and digests, each one run
        at a time."""
        cfg = self.config
        jobs: list[tuple[str, BaseTrigger, Callable[[], Any]]] = [
            ("alerts", _every(cfg.alerts.interval), self._deliver_alerts),
            ("memory", _every(TRIM_EVERY), self._trim_memory),
        ]
        if cfg.sla.enabled:
            jobs.append(("sla", _every(cfg.sla.interval), self._check_sla))
        if cfg.spikes.enabled:
            jobs.append(("spikes", _every(cfg.spikes.interval), self._check_spikes))
        if cfg.triage.enabled:
            jobs.append(("triage", _every(cfg.triage.retrain), self.retrain_triage))
        for digest in cfg.reports.digests:
            jobs.append(
                (
                    f"digest:{digest.name}",
                    digest.trigger(cfg.brand.timezone),
                    functools.partial(self._send_digest, digest),
                )
            )
        for name, trigger, fn in jobs:
            self.scheduler.add_job(
                self._guarded,
                trigger,
                args=[name, fn],
                id=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=3600,
            )
        # A digest that was due while no daemon ran goes out now (once per period); with
        # several daemons, from the one that takes the digest's lease.
        if self.store.is_sqlite:
            for digest in cfg.reports.digests:
                self._make_up_digest(digest.name)

    def _make_up_digest(self, digest_name: str) -> None:
        cfg = self.config
        now = utcnow()
        for digest in cfg.reports.digests:
            due = digest.missed(cfg.brand.timezone, now) if digest.name == digest_name else None
            if due is not None:
                name = f"digest:{digest.name}:missed"
                self.scheduler.add_job(
                    self._guarded,
                    DateTrigger(run_date=now),
                    args=[name, functools.partial(self._send_digest, digest, due)],
                    id=name,
                    misfire_grace_time=None,
                    replace_existing=True,
                )

    # -- several daemons -------------------------------------------------------------------

    async def _join_cluster(self) -> None:
        """Join the daemons on this database: take this daemon's share of the sources and of
        the cluster-wide jobs (see ``socialcrm.cluster``)."""
        jobs = ["alerts"]
        if self.config.sla.enabled:
            jobs.append("sla")
        if self.config.spikes.enabled:
            jobs.append("spikes")
        if self.config.triage.enabled:
            jobs.append("triage")  # one daemon trains; the others take the new version up
        jobs += [f"digest:{d.name}" for d in self.config.reports.digests]
        if self.cards is not None:
            jobs.append("cards")
        polled = [
            n for n, s in self.poller.sources.items() if s.config.interval.total_seconds() > 0
        ]
        # Ticks four times per shortest poll interval: a dead daemon's sources are taken
        # well within two of their intervals.
        shortest = min(
            (self.poller.sources[n].config.interval.total_seconds() for n in polled), default=2.0
        )
        tick = self._cluster_tick_s or min(TICK_S, max(0.2, shortest / 4))
        self.cluster = Cluster(
            self.store,
            self.name,
            sources=polled,
            jobs=jobs,
            busy=self._lease_busy,
            tick_s=tick,
        )
        if self.cards is not None:
            cluster = self.cluster
            self.cards.may_run = lambda: cluster.leads("cards")
        self.cluster.on_source = self._source_lease
        self.cluster.on_job = self._job_lease
        await self.cluster.join()

    async def _senders_up(self, claimers: Collection[str]) -> set[str]:
        """Which of these processes (``daemon/pid``) that claimed a reply for sending are up.
        On SQLite this daemon runs alone, so none other is; in a cluster, the daemons whose
        membership PostgreSQL holds, as each last wrote its pid."""
        if self.cluster is None:
            return set()
        return {f"{v.name}/{v.pid}" for v in await describe(self.store) if v.up} & set(claimers)

    def _lease_busy(self, item: str) -> bool:
        """A source's poll, the card round or a cluster-wide job (a retrain, a digest) is
        running: its lease waits for it to end, so that the next holder does not run it again
        alongside."""
        if item == "cards":
            return self.cards is not None and self.cards.busy
        if self._running[item]:
            return True
        src = self.poller.sources.get(item)
        return src is not None and src.busy

    def _source_lease(self, name: str, held: bool) -> None:
        """A source's lease came: poll it now, from its stored cursor and with its stored
        health (paused, failure streak, backoff), as the daemon that held it left them."""
        self._stale.add(name)
        if held and self.scheduler.running and self.scheduler.get_job(f"poll:{name}"):
            self.scheduler.modify_job(f"poll:{name}", next_run_time=utcnow())

    def _job_lease(self, job: str, held: bool) -> None:
        """A cluster-wide job's lease came or went."""
        if job == "cards" and self.cards is not None and held:
            self.cards.wake()
        elif held and job.startswith("digest:"):
            self._make_up_digest(job.removeprefix("digest:"))

    async def _poll(self, name: str) -> None:
        """Poll a source if this daemon holds its lease (always, alone on SQLite)."""
        if self.cluster is not None and not self.cluster.holds(name):
            return
        if name in self._stale:
            self._stale.discard(name)
            try:
                await self.poller.load_state([name])
            except BaseException:
                self._stale.add(name)
                raise
            if self.cluster is not None and not self.cluster.holds(name):
                return
        # No await between the check and the poll marking itself busy: a lease is never given
        # back while a poll runs.
        await self.poller.poll(name)

    async def _guarded(self, name: str, fn: Callable[[], Any]) -> None:
        """Run one housekeeping job; a failure is logged and counted, and the next run tries."""
        lease = name.removesuffix(":missed")
        if self.cluster is not None and lease != "memory" and not self.cluster.leads(lease):
            return
        # Marked before the first await: the lease is not given back while the job runs.
        self._running[lease] += 1
        try:
            await fn()
        except Exception:
            self.metrics.job_errors.labels(name).inc()
            log.exception("%s job failed; it runs again on schedule", name)
        finally:
            self._running[lease] -= 1

    async def _deliver_alerts(self) -> None:
        assert self.alerts is not None
        self.metrics.alerts_sent.inc(await self.alerts.deliver_due())

    async def retrain_triage(self) -> int | None:
        """Train a new triage model when labels came in since the newest one, or the rules'
        text conditions it reads have changed, and there are enough labels; the pipeline's
        workers take it up. The new version, if any."""
        async with self.store.reader() as s:
            row = await triage.newest(s)
            new = await triage.labels_since(s, row.created_at if row is not None else None)
        if not new and not triage.read_other_rules(row, self.pipeline.rules):
            return None
        try:
            made = await triage.retrain(
                self.store,
                self.pipeline.scorer,
                self.pipeline.rules,
                "socialcrm",
                "system",
                min_labels=self.config.triage.min_labels,
            )
        except triage.TriageError as err:
            log.info("triage model not retrained: %s", err)
            return None
        await self.pipeline.refresh_triage(force=True)
        log.info("triage model %s trained (%s)", made.id, made.card.get("scores"))
        return made.id

    async def reload(self) -> bool:
        """Load the rule files and reply templates anew (SIGHUP): from the next message on,
        on this daemon (each daemon on a database reloads on its own signal). Rules or
        templates with a problem are refused whole, and those in use stay; /healthz and the
        log say why. True when the new ones are in use."""
        try:
            # Off the event loop: the shipped pack takes a few tenths of a second to compile.
            rules, responder = await asyncio.to_thread(load_checked, self.config)
        except Exception as err:  # whatever the files hold, the daemon runs on as it was
            self.reload_error = str(err) if isinstance(err, RuleError) else repr(err)
            self.metrics.rule_reloads.labels("refused").inc()
            log.error("rules not reloaded; the rules in use stay:\n%s", self.reload_error)
            return False
        if self.scoring is not None:
            self.scoring.use_rules(rules)
        self.rules = rules
        self.pipeline.use_rules(rules, responder)
        self.commands.use_rules(rules, responder)
        self.rules_loaded_at = utcnow()
        self.reload_error = None
        self.metrics.rule_reloads.labels("ok").inc()
        # A model trained beside other rules' conditions is trained again now, not at the next
        # scheduled retrain (with several daemons, by the one leading the job, on its reload).
        if self.scheduler.running and self.scheduler.get_job("triage") is not None:
            self.scheduler.modify_job("triage", next_run_time=utcnow())
        log.info(
            "rules reloaded: %d rule(s) from %d file(s), fingerprint %s",
            len(rules.rules),
            len(rules.paths),
            rules.fingerprint[:12],
        )
        return True

    async def _trim_memory(self) -> None:
        await asyncio.to_thread(memory.trim)

    async def _check_sla(self) -> None:
        await check_sla(self.store, self.sla, utcnow())

    async def _check_spikes(self) -> None:
        await check_spikes(self.store, self.config.spikes, utcnow())

    async def _send_digest(self, digest: DigestConfig, due: datetime | None = None) -> None:
        cfg = self.config
        await send_digest(
            self.store,
            digest,
            brand=cfg.brand.name,
            tz=cfg.brand.timezone,
            now=utcnow(),
            due=due,
            templates_dir=cfg.report_templates(),
        )
        await self._deliver_alerts()

    async def stop_polling(self) -> None:
        """Start no new poll, and let polls in flight finish their batch."""
        self.poller.stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._polls_done(), STOP_GRACE_S)

    async def stop(self) -> None:
        """Stop polling, let polls in flight finish their batch, and close everything."""
        # The batch in hand is finished before the scheduler goes: shutting it down cancels
        # the jobs it is running.
        await self.stop_polling()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self.sender.stop()
        if self.cards is not None:
            await self.cards.stop()
        if self.cluster is not None:
            await self.cluster.leave()
        if self._sqlite_claim is not None:
            self._sqlite_claim.release()
        if self.runner is not None:
            await self.runner.cleanup()
        for src in self.poller.sources.values():
            close = getattr(src.connector, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
            await src.http.close()
        if self.http is not None:
            await self.http.close()
        self._stopped.set()

    async def _polls_done(self) -> None:
        """Until no poll runs; a stop kept waiting says for which sources."""
        idle = asyncio.ensure_future(self.poller.idle())
        try:
            await asyncio.wait_for(asyncio.shield(idle), STOP_NOTE_S)
        except TimeoutError:
            busy = sorted(name for name, src in self.poller.sources.items() if src.busy)
            log.warning(
                "stopping: waiting up to %.0f s for the polls in hand: %s",
                STOP_GRACE_S,
                ", ".join(busy) or "none",
            )
            await idle
        finally:
            idle.cancel()  # given up on after the grace: nothing is left pending

    # -- HTTP ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The daemon's HTTP application."""
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_view)
        app.router.add_post("/hooks/inbound/{source}", self.inbound_webhook)
        if self.config.slack is not None and self.http is not None:
            add_slack_routes(
                app,
                self.commands,
                self.config,
                on_approved=self.sender.wake,
                cards=self.cards,
                session=self.http,
            )
        if self.config.mattermost is not None:
            add_mattermost_routes(app, self.commands, self.config, on_approved=self.sender.wake)
        return app

    def health(self) -> dict[str, Any]:
        """Per-source health: last success, last error, lag, paused, failures, and the streams
        failing alone (a source whose other streams work is ``degraded``)."""
        now = utcnow()
        mono = self.poller.clock()
        sources = {}
        worst = "ok"
        holders = (
            {s: v.name for v in self.cluster.view if v.up for s in v.sources}
            if self.cluster is not None
            else {}
        )
        for src in self.poller.sources.values():
            state = "paused" if src.paused else ("failing" if src.failures else "ok")
            if state == "ok" and src.streams:
                state = "degraded"
            # In a cluster, a source another daemon polls is that daemon's to report: what
            # this one knows of it dates from when it last held it.
            here = self.cluster is None or self.cluster.holds(src.name)
            if state != "ok" and here:
                worst = "degraded"
            lag = (now - src.last_success).total_seconds() if src.last_success else None
            if lag is not None:
                self.metrics.lag.labels(src.name).set(lag)
            sources[src.name] = {
                "type": src.config.type,
                "state": state,
                "polled_here": here,
                "held_by": self.name if here else holders.get(src.name),
                "last_success_at": src.last_success.isoformat() if src.last_success else None,
                "last_error": src.last_error,
                "consecutive_failures": src.failures,
                "lag_s": round(lag, 1) if lag is not None else None,
                "newest_message_at": src.newest.isoformat() if src.newest else None,
                "streams": {
                    name: {
                        "state": h.state,
                        "failures": h.failures,
                        "last_error": h.last_error,
                        "since": h.since.isoformat(),
                        "retry_in_s": round(max(0.0, h.not_before - mono), 1),
                    }
                    for name, h in sorted(src.streams.items())
                },
            }
        # Slack refusing for good (revoked token, bot out of the channel) shows here too.
        chat: dict[str, Any] = {}
        if self.cards is not None:
            chat["cards"] = self.cards.health()
        if self.alerts is not None:
            chat["alert_sinks"] = self.alerts.health()
        if chat.get("alert_sinks") or chat.get("cards", {}).get("state", "ok") != "ok":
            worst = "degraded"
        out: dict[str, Any] = {
            "status": worst,
            "daemon": self.name,
            "started_at": self.started_at.isoformat(),
            # Which rule files this daemon runs: after an edit and a SIGHUP to each daemon,
            # the same fingerprint everywhere says every daemon took them up.
            "rules": {
                "count": len(self.rules.rules),
                "fingerprint": self.rules.fingerprint[:12],
                "loaded_at": self.rules_loaded_at.isoformat(),
                "reload_error": self.reload_error,
            },
            "sources": sources,
            "chat": chat,
        }
        if self.cluster is not None:
            out["cluster"] = self.cluster.health()
        return out

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the daemon runs; the body says which sources are failing or paused."""
        return web.json_response(self.health())

    async def metrics_view(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        self.health()  # refresh lag gauges
        for name, value in asdict(await backlog.count(self.store)).items():
            self.metrics.backlog.labels(name).set(value)
        if self.alerts is not None:
            seen = self.alerts.failed_attempts
            self.metrics.alert_failures.inc(seen - self._alert_failures_seen)
            self._alert_failures_seen = seen
        labelled = CollectorRegistry(auto_describe=False)
        labelled.register(DaemonLabel(self.metrics.registry, self.name))
        body = generate_latest(labelled)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def inbound_webhook(self, request: web.Request) -> web.Response:
        """Messages pushed by another system, verified by HMAC before anything is stored."""
        name = request.match_info["source"]
        src = self.poller.sources.get(name)
        accept = getattr(src.connector, "verify", None) if src is not None else None
        if src is None or accept is None:
            return _problem(404, f"no webhook source named {name!r}")
        body = await request.read()
        try:
            src.connector.verify(request.headers, body)  # type: ignore[attr-defined]
        except Exception as err:  # the connector's refusal: never store anything
            status = getattr(err, "status", 401)
            self.metrics.webhooks.labels(name, str(status)).inc()
            return _problem(status, str(err))
        batch: Batch = src.connector.parse(body)  # type: ignore[attr-defined]
        result = await self.pipeline.ingest(batch, name, save_cursor=False)
        self.metrics.webhooks.labels(name, "202").inc()
        self.metrics.stored.labels(name).inc(result.stored)
        self.metrics.quarantined.labels(name).inc(result.quarantined)
        return web.json_response(
            {
                "stored": result.stored,
                "duplicates": result.duplicates,
                "quarantined": result.quarantined,
                "errors": [q.error for q in batch.quarantined],
            },
            status=202,
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("socialcrm")
    except PackageNotFoundError:
        return "(not installed)"


def _every(interval: timedelta) -> IntervalTrigger:
    """An interval trigger whose first run is one interval from now."""
    return IntervalTrigger(seconds=max(1.0, interval.total_seconds()))


def _problem(status: int, detail: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"status": status, "detail": detail}),
        content_type="application/json",
    )


async def run(
    config: Config,
    host: str,
    port: int,
    name: str | None = None,
    rules: RuleSet | None = None,
    responder: Responder | None = None,
) -> None:
    """``socialcrm run``: start everything and serve until SIGTERM or SIGINT, then stop cleanly.
    ``rules`` and ``responder``: the configured rules and reply templates, loaded and checked
    already (else loaded here, the templates when first drafted with)."""
    from socialcrm.db import open_store
    from socialcrm.runtime import tune_allocator, tune_gc

    tune_allocator()
    # Signals first: a stop asked for during start-up still ends in a clean exit.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reload = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    try:
        store = await open_store(config.database_url())
        rules = rules or RuleSet.load(config.rule_paths())
        scoring = ScoringPool.for_config(config, rules)
        daemon = Daemon(config, store, rules=rules, responder=responder, scoring=scoring, name=name)
        try:
            await daemon.start(host, port)
            tune_gc()
            await _serve(daemon, stop, reload)
            log.info("stopping: finishing the batch in hand")
        finally:
            await daemon.stop()
            scoring.close()
            await store.dispose()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _serve(daemon: Daemon, stop: asyncio.Event, reload: asyncio.Event) -> None:
    """Run until ``stop`` is set, reloading the rules each time ``reload`` is."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            reloading = asyncio.ensure_future(reload.wait())
            await asyncio.wait({stopping, reloading}, return_when=asyncio.FIRST_COMPLETED)
            if reload.is_set() and not stop.is_set():
                reload.clear()
                await daemon.reload()
            reloading.cancel()
    finally:
        stopping.cancel()
