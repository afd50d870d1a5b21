"""Sources: one configured channel account each, polled by the core, which owns time.

The core builds each source's connector (found by entry point) with its own HTTP session,
polls it one poll at a time, saves its cursor with the batch it came with, backs off with
jitter when it fails (a rate-limit reset from the platform wins over the computed wait),
pauses it and raises an alert when its credentials are refused, and keeps its health for
``/healthz`` and ``/metrics``. It logs once when a source fails and once when it recovers.

A source whose every poll has failed for its ``failing_alert_after`` (rate limits, 5xx,
timeouts, malformed answers, transport errors alike) raises one ``source_failing`` alert with
the last error and since when; a fatal error (a request that can never succeed) raises it at
once. One alert per failure streak: a successful poll, or one that stored something before it
failed, ends the streak, and the next streak may alert again once the kind's cooldown allows
(:func:`socialcrm.alerts.raise_alert`). The streak outlives a restart: its start and failure
count are kept in the source's state row, and whether it has alerted already is read from the
alerts table, so a daemon that restarts in a loop neither hides the alert nor repeats it.

A source may read several streams (mentions, a search, each subreddit or hashtag). A stream
that fails while the others work (``Batch.stream_errors``) has a health of its own: it backs off
alone, with the same jittered backoff and the platform's reset time, while the rest of the
source is polled on schedule (the connector is told which streams rest, when its ``fetch``
takes ``resting``). A stream refused for good (:class:`~socialcrm.connector.FatalError`, e.g. a
403 for a private subreddit) is stopped, alerted once by name and tried again only every
``STOPPED_RETRY_S`` or as soon as the source's settings change. A stream failing for a passing
reason alerts like a source, after ``failing_alert_after``, naming the stream. Only a real 401
(:class:`~socialcrm.connector.AuthError`) pauses the whole source. Stream health is kept in the
source's state row (``SourceState.streams``), so it outlives a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import aiohttp
import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import col

from socialcrm import logs, yamldoc
from socialcrm.alerts import Severity, raise_alert
from socialcrm.config import SourceConfig
from socialcrm.connector import (
    AuthError,
    Batch,
    Connector,
    ConnectorError,
    FatalError,
    RetryableError,
    TokenStore,
    connector_names,
    load_connector,
)
from socialcrm.db import Store
from socialcrm.models import Alert, SourceState, utcnow
from socialcrm.pipeline import IngestResult, Pipeline

log = logging.getLogger(__name__)

#: First wait after a failure, and the longest wait of the exponential backoff.
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 900.0
#: Fetches in one poll while the connector says it has more (then the next poll goes on).
MAX_FETCHES_PER_POLL = 50
USER_AGENT = "socialcrm/0.1 (+self-hosted social CRM)"
FAILING_KIND: Final = "source_failing"
AUTH_KIND: Final = "source_auth"
#: A stream's listing lost items between two polls (it serves only so many).
GAP_KIND: Final = "source_gap"
#: A stream refused for good (403, gone) is tried again this rarely, or when settings change.
STOPPED_RETRY_S: Final = 3600.0


class SourceSetupError(ValueError):
    """A source whose type or settings cannot be used; the message names the config path.

    ``problems`` keeps each problem's YAML path, so the CLI can add the file and line.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("\n".join(f"{yamldoc.format_loc(loc)}: {msg}" for loc, msg in problems))
        self.problems = problems


def check_settings(cfg: SourceConfig, index: int) -> tuple[type[Connector], Any]:
    """A source's connector class and its validated settings (what ``run`` builds it from);
    ``config check`` runs the same check without building anything."""
    try:
        cls = load_connector(cfg.type)
    except LookupError:
        known = ", ".join(connector_names()) or "none installed"
        raise SourceSetupError(
            [(("sources", index, "type"), f"unknown connector {cfg.type!r} (known: {known})")]
        ) from None
    try:
        settings = cls.Config.model_validate(cfg.settings())
    except ValidationError as err:
        raise SourceSetupError(
            [(("sources", index, *e["loc"]), e["msg"]) for e in err.errors()]
        ) from err
    return cls, settings


def check_sources(sources: list[SourceConfig]) -> list[tuple[tuple[str | int, ...], str]]:
    """Every problem of every source's type and settings, with its YAML path."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, cfg in enumerate(sources):
        try:
            check_settings(cfg, i)
        except SourceSetupError as err:
            problems.extend(err.problems)
    return problems


def settings_fingerprint(cfg: SourceConfig) -> str:
    """A SHA-256 of a source's type and settings: tells that credentials changed without
    keeping them."""
    doc = json.dumps([cfg.type, cfg.settings()], sort_keys=True, default=str)
    return hashlib.sha256(f"socialcrm-source-settings:{doc}".encode()).hexdigest()


def _described(err: BaseException) -> str:
    """An error's message, naming the stream a connector error failed in."""
    return err.described() if isinstance(err, ConnectorError) else str(err)


def backoff_s(failures: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter, so failing sources do not retry in step."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, failures - 1))
    return rng.uniform(ceiling / 2, ceiling)


@dataclass
class PollOutcome:
    """What one poll did."""

    result: IngestResult = field(default_factory=IngestResult)
    fetches: int = 0
    error: str | None = None
    skipped: str | None = None


@dataclass
class StreamHealth:
    """The health of one stream of a source that failed while the rest worked."""

    #: failing (a passing error: backs off) | stopped (refused for good: tried rarely)
    state: str
    failures: int
    last_error: str
    #: Wall time of the first failure of the running streak.
    since: datetime
    #: Monotonic time before which the stream rests (not walked).
    not_before: float
    #: The same moment as wall time, kept in the store across restarts.
    retry_at: datetime
    #: The streak has its ``source_failing`` alert.
    alerted: bool = False
    #: For a stopped stream: the fingerprint of the settings it was refused with.
    settings: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The stream's health as stored in ``SourceState.streams``."""
        return {
            "state": self.state,
            "failures": self.failures,
            "last_error": self.last_error,
            "since": self.since.isoformat(),
            "retry_at": self.retry_at.isoformat(),
            "alerted": self.alerted,
            "settings": self.settings,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], mono: float, wall: datetime) -> StreamHealth | None:
        """A stored stream's health, its rest measured from now; None if unreadable."""
        try:
            retry_at = datetime.fromisoformat(str(data["retry_at"]))
            return cls(
                state=str(data["state"]),
                failures=int(data["failures"]),
                last_error=str(data.get("last_error") or ""),
                since=datetime.fromisoformat(str(data["since"])),
                not_before=mono + max(0.0, (retry_at - wall).total_seconds()),
                retry_at=retry_at,
                alerted=bool(data.get("alerted")),
                settings=data.get("settings"),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class Source:
    """A source at run time: its connector, session, health and backoff."""

    config: SourceConfig
    connector: Connector
    http: aiohttp.ClientSession
    index: int
    failures: int = 0
    #: Monotonic time before which no poll is made (backoff, rate limit).
    not_before: float = 0.0
    #: The same moment as wall time, kept in the store (``SourceState.retry_at``) for a
    #: restart or for the daemon that takes the source over.
    retry_at: datetime | None = None
    paused: bool = False
    last_error: str | None = None
    last_success: datetime | None = None
    last_poll_s: float = 0.0
    #: Newest message time seen in the last batch, for lag.
    newest: datetime | None = None
    busy: bool = False
    #: When the running failure streak began (no poll since has stored anything), if any.
    failing_since: datetime | None = None
    #: The running streak has its ``source_failing`` alert (here or before a restart).
    failing_alerted: bool = False
    #: Streams failing alone, by name; a stream not listed is well.
    streams: dict[str, StreamHealth] = field(default_factory=dict)
    #: Fingerprint of the connector's settings (secrets masked): a stopped stream is tried
    #: again when it changes.
    settings_digest: str = ""
    #: The connector's ``fetch`` takes ``resting`` (the streams held back this time).
    takes_resting: bool = False

    def clear_streak(self, *, unpause: bool = True) -> None:
        """No failure streak and no backoff (and, with ``unpause``, not paused)."""
        if unpause:
            self.paused = False
        self.failures = 0
        self.not_before = 0.0
        self.retry_at = None
        self.failing_since = None
        self.failing_alerted = False

    @property
    def name(self) -> str:
        """The source's configured name."""
        return self.config.name


def make_source(cfg: SourceConfig, index: int, tokens: TokenStore | None = None) -> Source:
    """Build a source: its connector (found by ``cfg.type``) with validated settings and an
    HTTP session of its own, which the core owns and closes; ``tokens`` goes to a connector
    whose ``__init__`` takes a ``tokens`` keyword (where it keeps refreshed OAuth tokens)."""
    cls, settings = check_settings(cfg, index)
    logs.add_secrets(settings)  # whatever a library logs, these never reach the log
    # A connector may ask for middlewares on its session (X: send tweepy's requests to a
    # configured base URL); everything else about the session is the core's.
    hook = getattr(cls, "session_middlewares", None)
    http = aiohttp.ClientSession(
        headers={"User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=60, sock_connect=10),
        middlewares=tuple(hook(settings)) if hook is not None else (),
    )
    factory: Callable[..., Connector] = cls
    extra: dict[str, Any] = {}
    if tokens is not None and "tokens" in inspect.signature(cls).parameters:
        extra["tokens"] = tokens
    try:
        connector = factory(settings, http, **extra)
    except BaseException:
        # Closing needs a loop turn; the caller is async, so schedule it.
        _close_later(http)
        raise
    digest = hashlib.sha256(
        json.dumps(settings.model_dump(mode="json"), sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    takes_resting = "resting" in inspect.signature(connector.fetch).parameters
    return Source(cfg, connector, http, index, settings_digest=digest, takes_resting=takes_resting)


def _close_later(http: aiohttp.ClientSession) -> None:
    asyncio.get_running_loop().create_task(http.close())


class Poller:
    """Polls sources into the pipeline; one poll per source at a time."""

    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        #: Monotonic seconds, for backoff; ``wall_clock`` for what is stored and alerted.
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.sources: dict[str, Source] = {}
        self.stopping = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.on_result: Callable[[Source, PollOutcome, float], None] | None = None

    def add(self, source: Source) -> None:
        """Register a source to be polled."""
        self.sources[source.name] = source

    async def load_state(self, names: Collection[str] | None = None) -> None:
        """Take paused flags and health from the store: a restart keeps a paused source paused,
        and a failing one failing, with its streak and the rest of its backoff. With ``names``,
        those sources only, whatever this process thought of them before: a daemon taking a
        source over from another (dead, or giving it back) goes on from what that one stored."""
        wanted = sa.select(SourceState)
        if names is not None:
            wanted = wanted.where(col(SourceState.source).in_(list(names)))
        async with self.store.reader() as s:
            rows = (await s.execute(wanted)).scalars().all()
            keys = [f"{FAILING_KIND}:{row.source}" for row in rows if row.health == "failing"]
            last_alerts: dict[str, datetime] = {}
            if keys:
                q = (
                    sa.select(col(Alert.dedupe_key), sa.func.max(col(Alert.created_at)))
                    .where(col(Alert.dedupe_key).in_(keys))
                    .group_by(col(Alert.dedupe_key))
                )
                last_alerts = {str(k): at for k, at in (await s.execute(q)).all()}
        # A poll running here knows better than the store: it stores what it ends with.
        for name in names or ():
            if name in self.sources and not self.sources[name].busy:
                self._forget_state(self.sources[name])
        for row in rows:
            src = self.sources.get(row.source)
            if src is None or (names is not None and src.busy):
                continue
            src.paused = row.paused
            if row.paused and row.settings_fingerprint != settings_fingerprint(src.config):
                # New credentials in the config: worth one more try (a refusal pauses it again).
                log.warning(
                    "source %s: settings changed since it was paused; trying again", src.name
                )
                src.paused = False
            src.last_success = row.last_success_at
            src.last_error = row.last_error
            if row.health == "failing" and row.consecutive_failures > 0:
                self._restore_streak(src, row, last_alerts.get(f"{FAILING_KIND}:{src.name}"))
                self._restore_backoff(src, row)
            elif row.paused:
                src.failures = row.consecutive_failures
            self._restore_streams(src, row)

    @staticmethod
    def _forget_state(src: Source) -> None:
        """Health as if nothing was known of the source (before the store's is read)."""
        src.clear_streak()
        src.last_error = None
        src.last_success = None
        src.streams = {}

    def _restore_backoff(self, src: Source, row: SourceState) -> None:
        """The rest of a failing source's backoff: no poll before its stored ``retry_at``."""
        if row.retry_at is None:
            return
        wait = (row.retry_at - self.wall_clock()).total_seconds()
        src.retry_at = row.retry_at
        src.not_before = self.clock() + max(0.0, wait)

    def _restore_streams(self, src: Source, row: SourceState) -> None:
        """Pick up the streams that were failing; a stopped stream whose source's settings
        changed since it was refused is tried again at once."""
        mono, wall = self.clock(), self.wall_clock()
        for name, data in (row.streams or {}).items():
            health = StreamHealth.from_json(data, mono, wall) if isinstance(data, dict) else None
            if health is None:
                continue
            if health.state == "stopped" and health.settings != src.settings_digest:
                log.info("source %s: settings changed, stream %s is tried again", src.name, name)
                health.not_before = mono
                health.retry_at = wall
            src.streams[name] = health

    @staticmethod
    def _restore_streak(src: Source, row: SourceState, last_alert: datetime | None) -> None:
        """Pick up a failure streak that a stopped process left: its failures, when it began,
        and whether it has alerted (an alert raised since the streak began is its own)."""
        src.failures = row.consecutive_failures
        src.failing_since = row.failing_since or row.last_error_at
        src.failing_alerted = last_alert is not None and (
            src.failing_since is None or last_alert >= src.failing_since
        )

    async def poll(self, name: str) -> PollOutcome:
        """One poll of one source: fetch until the connector has nothing more, ingest each batch."""
        src = self.sources[name]
        out = PollOutcome()
        if self.stopping:
            out.skipped = "stopping"
            return out
        if src.busy:
            out.skipped = "a poll is running"
            return out
        if src.paused and not await self._resumed_elsewhere(src):
            out.skipped = "paused"
            return out
        now = self.clock()
        if now < src.not_before:
            out.skipped = f"backing off for {src.not_before - now:.0f}s"
            return out
        # Busy from here on, before the first await: a stop now waits for this poll.
        src.busy = True
        self._busy += 1
        self._idle.clear()
        started = self.clock()
        try:
            if await self._muted(name):
                out.skipped = "muted"
                return out
            cursor = await self._cursor(name)
            while out.fetches < MAX_FETCHES_PER_POLL:
                resting = self.resting(src)
                batch: Batch
                if src.takes_resting:
                    batch = await src.connector.fetch(cursor, resting=resting)  # type: ignore[call-arg]
                else:
                    batch = await src.connector.fetch(cursor)
                out.fetches += 1
                if batch.messages:
                    src.newest = max(m.created_at for m in batch.messages)
                # The cursor is saved in the batch's own transaction.
                out.result.add(await self.pipeline.ingest(batch, name))
                cursor = batch.cursor if batch.cursor is not None else cursor
                await self._streams_after(src, batch, resting)
                if not batch.more or self.stopping:
                    break
            await self._succeeded(src)
        except AuthError as err:
            out.error = f"auth: {err}"
            await self._auth_failed(src, err)
        except RetryableError as err:
            out.error = f"retryable: {err.described()}"
            wait = err.retry_after_s
            await self._failed(src, err, wait, progressed=out.fetches > 0)
        except FatalError as err:
            out.error = f"fatal: {err.described()}"
            await self._failed(src, err, None, fatal=True)
        except ConnectorError as err:  # MalformedPayload and friends: try again later
            out.error = f"{type(err).__name__}: {err.described()}"
            await self._failed(src, err, None, progressed=out.fetches > 0)
        except (aiohttp.ClientError, TimeoutError) as err:
            # A connector that let a transport error through: still a passing failure.
            out.error = f"transport: {err!r}"
            await self._failed(src, err, None, progressed=out.fetches > 0)
        except Exception as err:  # storing a batch failed: the poll failed, and says so
            log.exception("source %s: a batch could not be stored", src.name)
            out.error = f"store: {err!r}"[:500]
            await self._failed(src, err, None, progressed=out.result.stored > 0)
        finally:
            src.busy = False
            self._busy -= 1
            if not self._busy:
                self._idle.set()
            src.last_poll_s = self.clock() - started
        if self.on_result is not None:
            self.on_result(src, out, src.last_poll_s)
        return out

    def resting(self, src: Source) -> frozenset[str]:
        """The streams of ``src`` backing off now (not walked by this fetch)."""
        now = self.clock()
        return frozenset(n for n, h in src.streams.items() if now < h.not_before)

    async def _streams_after(self, src: Source, batch: Batch, resting: frozenset[str]) -> None:
        """Keep each stream's health after a fetch: the failed ones back off or stop, and
        those that were failing and were walked without error have recovered."""
        for stream in [n for n in src.streams if n not in resting]:
            if stream not in batch.stream_errors:
                old = src.streams.pop(stream)
                log.warning(
                    "source %s: stream %s recovered after %d failure(s)",
                    src.name,
                    stream,
                    old.failures,
                )
        for stream, err in batch.stream_errors.items():
            await self._stream_failed(src, stream, err)
        for stream, what in batch.gaps.items():
            log.warning("source %s: stream %s lost items: %s", src.name, stream, what)
            await self._alert(
                src,
                GAP_KIND,
                f"Source {src.name}: stream {stream} lost items between two polls; poll it "
                f"more often (a shorter interval) or narrow it: {what}",
                self.wall_clock(),
                key=f"{GAP_KIND}:{src.name}:{stream}",
                stream=stream,
                error=what,
            )

    async def _stream_failed(self, src: Source, stream: str, err: ConnectorError) -> None:
        now, wall = self.clock(), self.wall_clock()
        old = src.streams.get(stream)
        failures = (old.failures if old else 0) + 1
        stopped = isinstance(err, FatalError)
        if stopped:
            wait = STOPPED_RETRY_S
        elif isinstance(err, RetryableError) and err.retry_after_s is not None:
            wait = err.retry_after_s
        else:
            wait = backoff_s(failures, self.rng)
        health = StreamHealth(
            state="stopped" if stopped else "failing",
            failures=failures,
            last_error=str(err)[:1000],
            since=old.since if old else wall,
            not_before=now + wait,
            retry_at=wall + timedelta(seconds=wait),
            alerted=old.alerted if old else False,
            settings=src.settings_digest if stopped else None,
        )
        src.streams[stream] = health
        if old is None or old.state != health.state:
            log.warning(
                "source %s: stream %s %s: %s (next try in %.0fs)",
                src.name,
                stream,
                "stopped" if stopped else "failing",
                err,
                wait,
            )
        if health.alerted:
            return
        if not stopped:
            after = src.config.failing_alert_after
            if after is None or wall - health.since < after:
                return
            title = (
                f"Source {src.name}: stream {stream} has been failing since "
                f"{health.since:%Y-%m-%d %H:%M} UTC: {err}"
            )
        else:
            title = f"Source {src.name}: stream {stream} is stopped: {err}"
        alert = await self._alert(
            src,
            FAILING_KIND,
            title,
            wall,
            key=f"{FAILING_KIND}:{src.name}:{stream}",
            stream=stream,
            error=health.last_error,
            failing_since=health.since.isoformat(),
            failed_polls=failures,
            retry_at=health.retry_at.isoformat(),
        )
        health.alerted = alert is not None

    async def idle(self) -> None:
        """Return when no poll is running."""
        await self._idle.wait()

    async def _resumed_elsewhere(self, src: Source) -> bool:
        """Whether a paused source was resumed in the store (``sources resume`` from the CLI or
        chat, or another daemon); if so it is resumed here too."""
        async with self.store.reader() as s:
            state = await s.get(SourceState, src.name)
        if state is None or state.paused:
            return False
        log.warning("source %s resumed; polling it again", src.name)
        src.clear_streak()
        return True

    async def _cursor(self, name: str) -> dict[str, Any] | None:
        async with self.store.reader() as s:
            state = await s.get(SourceState, name)
            return dict(state.cursor) if state is not None and state.cursor is not None else None

    async def _muted(self, name: str) -> bool:
        async with self.store.reader() as s:
            state = await s.get(SourceState, name)
        return bool(state and state.muted_until and state.muted_until > utcnow())

    async def _succeeded(self, src: Source) -> None:
        if src.failures:
            log.warning("source %s recovered after %d failed polls", src.name, src.failures)
        src.clear_streak(unpause=False)  # paused meanwhile by a person: it stays paused
        src.last_error = None
        src.last_success = self.wall_clock()
        await self._save_health(src, "ok")

    async def _failed(
        self,
        src: Source,
        err: BaseException,
        retry_after: float | None,
        *,
        fatal: bool = False,
        progressed: bool = False,
    ) -> None:
        # A poll that stored something before it failed is not a source getting worse: its
        # wait does not grow, or a flaky platform with a backlog would be polled ever more
        # rarely and fall ever further behind.
        src.failures = max(src.failures, 1) if progressed else src.failures + 1
        steps = 1 if progressed else src.failures
        # The platform's own reset time wins over our computed wait.
        wait = retry_after if retry_after is not None else backoff_s(steps, self.rng)
        src.not_before = self.clock() + wait
        src.retry_at = self.wall_clock() + timedelta(seconds=wait)
        src.last_error = _described(err)[:1000]
        if src.failures == 1:
            log.warning("source %s failing: %s (next try in %.0fs)", src.name, src.last_error, wait)
        else:
            log.debug("source %s still failing (%d): %s", src.name, src.failures, src.last_error)
        now = self.wall_clock()
        if progressed:
            # It stored something: not down, so no streak runs (and a running one ends).
            src.failing_since = None
            src.failing_alerted = False
        elif src.failing_since is None:
            src.failing_since = now
        await self._save_health(src, "failing")
        await self._check_failing(src, err, now, fatal=fatal)

    async def _check_failing(
        self, src: Source, err: BaseException, now: datetime, *, fatal: bool
    ) -> None:
        """Raise the streak's one ``source_failing`` alert once it is due: at once for a fatal
        error, else when every poll has failed for the source's ``failing_alert_after``."""
        since = src.failing_since
        if since is None or src.failing_alerted:
            return
        if not fatal:
            after = src.config.failing_alert_after
            if after is None or now - since < after:
                return
        what = _described(err)
        title = (
            f"Source {src.name} is failing: {what}"
            if fatal
            else f"Source {src.name} has been failing since {since:%Y-%m-%d %H:%M} UTC: {what}"
        )
        alert = await self._alert(
            src,
            FAILING_KIND,
            title,
            now,
            failing_since=since.isoformat(),
            failed_polls=src.failures,
            last_success_at=src.last_success.isoformat() if src.last_success else None,
            stream=err.stream if isinstance(err, ConnectorError) else None,
        )
        # Held back by the cooldown (a recent streak alerted): the next failed poll tries again.
        src.failing_alerted = alert is not None
        if alert is not None:
            log.error("source %s failing since %s: alert %s raised", src.name, since, alert.id)

    async def _auth_failed(self, src: Source, err: AuthError) -> None:
        src.paused = True
        src.failures += 1
        src.retry_at = None
        src.last_error = str(err)[:1000]
        log.error("source %s paused: credentials refused (%s)", src.name, err)
        await self._save_health(
            src,
            "paused",
            paused_reason=f"credentials refused: {err}",
            fingerprint=settings_fingerprint(src.config),
        )
        await self._alert(
            src,
            AUTH_KIND,
            f"Source {src.name} needs new credentials; it is paused",
            self.wall_clock(),
        )

    async def _save_health(
        self,
        src: Source,
        health: str,
        paused_reason: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        async with self.store.session() as s:
            state = await s.get(SourceState, src.name, with_for_update=True)
            if state is None:
                state = SourceState(source=src.name)
                s.add(state)
            state.health = health
            state.paused = src.paused
            if paused_reason is not None:
                state.paused_reason = paused_reason
            if fingerprint is not None:
                state.settings_fingerprint = fingerprint
            state.consecutive_failures = src.failures
            state.failing_since = src.failing_since
            state.retry_at = src.retry_at
            state.streams = {n: h.to_json() for n, h in src.streams.items()} or None
            now = self.wall_clock()
            if health == "ok":
                state.last_success_at = src.last_success
            else:
                state.last_error = src.last_error
                state.last_error_at = now
            state.updated_at = now

    async def _alert(
        self,
        src: Source,
        kind: str,
        title: str,
        now: datetime,
        *,
        key: str | None = None,
        **detail: Any,
    ) -> Alert | None:
        """Raise a source alert through :func:`raise_alert`: one dedupe key per kind and
        source (and stream, for a stream's alert), the kind's configured cooldown. None when
        the cooldown held it back."""
        severity: Severity = "critical" if kind == AUTH_KIND else "warning"
        async with self.store.session() as s:
            return await raise_alert(
                s,
                kind,
                key or f"{kind}:{src.name}",
                title,
                {"source": src.name, "error": src.last_error, **detail},
                severity,
                cooldown=self.pipeline.config.alerts.cooldown_for(kind),
                now=now,
            )

    async def resume(self, name: str) -> None:
        """Unpause a source (after its credentials were fixed)."""
        src = self.sources[name]
        src.clear_streak()
        # New credentials may also open what was refused: every stream is tried again.
        src.streams.clear()
        await self._save_health(src, "ok", paused_reason="")
