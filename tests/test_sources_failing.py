"""A source that keeps failing raises one ``source_failing`` alert, and only one per streak.

The source is the real Mastodon connector polling the sandbox's Mastodon stand-in over HTTP;
the sandbox's forced faults make each poll fail (5xx, 429, an HTML page, a timeout) or work.
Time is the test's: the poller's monotonic clock and its wall clock move together, a minute
at a time, and the source is polled every minute as the daemon's scheduler would (a poll in
the backoff window is skipped).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestServer
from sqlmodel import col

from socialcrm.config import Config, ConfigError, load_config
from socialcrm.daemon import Daemon
from socialcrm.db import Store
from socialcrm.models import Alert, SourceState
from socialcrm.sandbox.faults import FaultKind, Faults
from socialcrm.sandbox.server import Sandbox, make_app
from socialcrm.sources import Poller, PollOutcome, make_source

NAME = "mastodon-acme"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
THRESHOLD = timedelta(minutes=30)
#: The kinds' default cooldown (``alerts.cooldown``).
COOLDOWN = timedelta(hours=1)
#: The client's timeout for a poll meant to work: a loaded machine never comes near it (one
#: healthy poll took more than 0.3 s on a loaded CI machine).
HEALTHY_TIMEOUT_S = 10.0
#: The client's timeout for a poll the ``timeout`` fault fails: short, since a streak is dozens
#: of such polls, and below the stand-in's delay.
FAULT_TIMEOUT_S = 0.3


class Clocks:
    """The poller's monotonic seconds and its wall clock, moved together by the test."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = T0

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return self.wall

    def tick(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


class Harness:
    """A daemon (built the way ``Daemon.start`` builds it, without the scheduler) polling one
    Mastodon source on the sandbox; :meth:`restart` replaces it with a fresh one."""

    def __init__(
        self, config: Config, store: Store, sandbox: Sandbox, base_url: str, **settings: Any
    ) -> None:
        self.store = store
        self.sandbox = sandbox
        self.clocks = Clocks()
        source = {
            "name": NAME,
            "type": "mastodon",
            "interval": "60s",
            "jitter": 0,
            "base_url": base_url,
            "access_token": sandbox.credentials.mastodon_token,
            "timeout_s": HEALTHY_TIMEOUT_S,
            **settings,
        }
        sources = Config.model_validate({"sources": [source]}).sources
        self.config = config.model_copy(update={"sources": sources})
        self.daemon: Daemon | None = None
        #: A forced fault waits in the sandbox for the next request.
        self.armed = False
        self.armed_kind: FaultKind | None = None
        #: The first failed poll of the running streak, as the test saw it.
        self.first_failure: datetime | None = None

    @property
    def poller(self) -> Poller:
        assert self.daemon is not None
        return self.daemon.poller

    async def start(self) -> None:
        d = Daemon(self.config, self.store, clock=self.clocks.monotonic)
        d.poller.rng = random.Random(1)
        d.poller.wall_clock = self.clocks.now
        for i, cfg in enumerate(self.config.sources):
            d.poller.add(make_source(cfg, i))
        await d.poller.load_state()
        self.daemon = d

    async def restart(self) -> None:
        """Stop the daemon and start another on the same store (a new process)."""
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        if self.daemon is not None:
            await self.daemon.stop()

    async def poll(self, fault: FaultKind | None = None) -> PollOutcome:
        """The scheduled poll a minute after the last; ``fault`` makes its request fail.

        A poll in the backoff window is skipped, and the fault waits for the next one."""
        self.clocks.tick(60)
        if fault is not None and not self.armed:
            self.sandbox.inject("mastodon", fault)
            self.armed, self.armed_kind = True, fault
        requests = self.sandbox.faults.requests("mastodon")
        self.client_timeout(
            FAULT_TIMEOUT_S if self.armed and self.armed_kind == "timeout" else HEALTHY_TIMEOUT_S
        )
        out = await self.poller.poll(NAME)
        if out.skipped is None:
            if self.armed:  # the poll's request took the fault
                assert self.sandbox.faults.requests("mastodon") > requests
            self.armed, self.armed_kind = False, None
        else:
            assert out.skipped.startswith(("backing off", "paused")), out.skipped
        return out

    def client_timeout(self, seconds: float) -> None:
        """Set the connector's request timeout, as its ``timeout_s`` setting would."""
        connector = self.poller.sources[NAME].connector
        config = connector.config  # type: ignore[attr-defined]
        if config.timeout_s != seconds:
            connector.config = config.model_copy(update={"timeout_s": seconds})  # type: ignore[attr-defined]

    async def succeed(self) -> None:
        """Poll until a poll goes through (the backoff may skip some), and works."""
        assert not self.armed
        while (out := await self.poll()).skipped is not None:
            pass
        assert out.error is None, out.error
        self.first_failure = None

    async def fail_for(self, span: timedelta, fault: FaultKind = "server_error") -> None:
        """Fail every poll for ``span``; after each failed one, check the streak's alert."""
        end = self.clocks.wall + span
        while self.clocks.wall < end or self.armed:
            out = await self.poll(fault)
            if out.skipped is None:
                assert out.error is not None and out.result.stored == 0
                self.first_failure = self.first_failure or self.clocks.wall
                await self.check_streak()

    async def check_streak(self) -> None:
        """No alert for this streak before the threshold, exactly one from then on."""
        assert self.first_failure is not None
        failing_for = self.clocks.wall - self.first_failure
        ours = [a for a in await failing_alerts(self.store) if a.created_at >= self.first_failure]
        assert len(ours) == (0 if failing_for < THRESHOLD else 1), (failing_for, ours)


async def failing_alerts(store: Store) -> list[Alert]:
    async with store.reader() as s:
        q = sa.select(Alert).where(col(Alert.kind) == "source_failing").order_by(col(Alert.id))
        return list((await s.execute(q)).scalars())


async def source_state(store: Store) -> SourceState:
    async with store.reader() as s:
        st = await s.get(SourceState, NAME)
        assert st is not None
        return st


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[Sandbox, str]]:
    sb = Sandbox(
        5, messages=300, released=20, faults=Faults(timeout_delay_s=1.0, slow_delay_s=0.05)
    )
    async with TestServer(make_app(sb), host="127.0.0.1") as server:
        yield sb, str(server.make_url("/mastodon"))


@pytest.fixture
async def harness(
    config: Config, store: Store, sandbox: tuple[Sandbox, str]
) -> AsyncIterator[Harness]:
    sb, url = sandbox
    h = Harness(config, store, sb, url)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


# -- one alert per failure streak -------------------------------------------------------------


@pytest.mark.parametrize("fault", ["server_error", "rate_limit", "html", "timeout"])
async def test_a_source_failing_past_the_threshold_alerts_once(
    harness: Harness, store: Store, fault: FaultKind
) -> None:
    await harness.succeed()
    assert await failing_alerts(store) == []
    # Failing for two and a half hours: silent for 30 minutes, then one alert, never repeated
    # (not even once the cooldown has run out).
    await harness.fail_for(timedelta(minutes=150), fault)
    first = harness.first_failure
    assert first is not None
    alerts = await failing_alerts(store)
    assert len(alerts) == 1
    alert = alerts[0]
    assert harness.clocks.wall - alert.created_at > COOLDOWN  # failed on, past the cooldown
    assert alert.dedupe_key == f"source_failing:{NAME}" and alert.status == "pending"
    assert alert.severity == "warning"
    assert THRESHOLD <= alert.created_at - first < THRESHOLD + timedelta(minutes=16)
    assert alert.detail["source"] == NAME
    assert alert.detail["failing_since"] == first.isoformat()
    assert alert.detail["last_success_at"] == (first - timedelta(minutes=1)).isoformat()
    assert alert.detail["failed_polls"] >= 2
    expected = {
        "server_error": "HTTP 50",
        "rate_limit": "HTTP 429",
        "html": "not JSON",
        "timeout": "Mastodon request failed",
    }[fault]
    assert expected in alert.detail["error"]
    assert f"failing since {first:%Y-%m-%d %H:%M} UTC" in alert.title
    assert expected in alert.title

    # It recovers: the streak ends, and a short one raises nothing.
    await harness.succeed()
    st = await source_state(store)
    assert st.health == "ok" and st.consecutive_failures == 0
    await harness.fail_for(timedelta(minutes=20), fault)
    assert len(await failing_alerts(store)) == 1
    await harness.succeed()
    # A new long streak (the cooldown has run out) alerts again, once, with its own start.
    await harness.fail_for(timedelta(minutes=50), fault)
    alerts = await failing_alerts(store)
    assert len(alerts) == 2
    assert alerts[1].detail["failing_since"] == harness.first_failure.isoformat()  # type: ignore[union-attr]


async def test_a_new_streak_waits_for_the_cooldown(harness: Harness, store: Store) -> None:
    await harness.succeed()
    await harness.fail_for(timedelta(minutes=35))
    [first] = await failing_alerts(store)
    await harness.succeed()
    # The second streak passes its threshold well within the hour after the first alert: it
    # alerts at the first failed poll the cooldown allows.
    end = first.created_at + COOLDOWN + timedelta(minutes=20)
    start: datetime | None = None
    held_past_threshold = False
    while harness.clocks.wall < end or harness.armed:
        out = await harness.poll("server_error")
        if out.skipped is not None:
            continue
        assert out.error is not None
        start = start or harness.clocks.wall
        held_back = harness.clocks.wall - first.created_at < COOLDOWN
        held_past_threshold |= held_back and harness.clocks.wall - start >= THRESHOLD
        assert len(await failing_alerts(store)) == (1 if held_back else 2)
    assert start is not None and held_past_threshold
    second = (await failing_alerts(store))[1]
    assert COOLDOWN <= second.created_at - first.created_at < COOLDOWN + timedelta(minutes=16)
    assert second.detail["failing_since"] == start.isoformat()


async def test_a_poll_that_stores_something_ends_the_streak(
    config: Config, store: Store, sandbox: tuple[Sandbox, str]
) -> None:
    sb, url = sandbox
    # Small pages, one a fetch: a poll with new mentions makes several fetches.
    h = Harness(config, store, sb, url, limit=2, max_pages=1)
    await h.start()
    try:
        await h.succeed()
        await h.fail_for(timedelta(minutes=20))
        new_mentions = 0
        while new_mentions < 5:
            new_mentions += sum(sb.mastodon.is_mention(m) for m in sb.release(1, "mastodon"))
        # The poll's first fetch works (slowly); its second meets a 503.
        sb.inject("mastodon", "slow", path_prefix="/api/v1/notifications")
        sb.inject("mastodon", "server_error", path_prefix="/api/v1/notifications")
        h.armed = True
        while (out := await h.poll()).skipped is not None:
            pass
        assert out.error is not None and out.error.startswith(
            "retryable: stream notifications: HTTP 50"
        )
        assert out.result.stored > 0
        assert (await source_state(store)).health == "failing"
        # The source delivers, if badly: the streak starts again from the next failed poll,
        # so twenty more minutes of failures are not yet the thirty that alert.
        h.first_failure = None
        await h.fail_for(timedelta(minutes=20))
        assert await failing_alerts(store) == []
        await h.fail_for(timedelta(minutes=15))
        assert len(await failing_alerts(store)) == 1
    finally:
        await h.stop()


# -- restarts ---------------------------------------------------------------------------------


async def test_restarts_neither_hide_nor_repeat_the_alert(harness: Harness, store: Store) -> None:
    await harness.succeed()
    last_success = harness.clocks.wall
    # The daemon restarts every ten minutes or so while the source is down; after each failed
    # poll, check_streak sees no alert before the streak is 30 minutes old and one after.
    restarts = 0
    while not await failing_alerts(store):
        await harness.fail_for(timedelta(minutes=10))
        if await failing_alerts(store):
            break
        await harness.restart()
        restarts += 1
        assert harness.daemon is not None
        health = harness.daemon.health()["sources"][NAME]
        assert health["state"] == "failing" and health["consecutive_failures"] > 0
    assert restarts >= 2  # no process lived for the 30 minutes
    [alert] = await failing_alerts(store)
    assert harness.first_failure == last_success + timedelta(minutes=1)
    assert alert.detail["failing_since"] == harness.first_failure.isoformat()
    assert alert.detail["last_success_at"] == last_success.isoformat()
    # More restarts, long past the cooldown: still the one alert.
    for _ in range(3):
        await harness.restart()
        await harness.fail_for(timedelta(minutes=45))
    assert len(await failing_alerts(store)) == 1
    await harness.succeed()
    assert (await source_state(store)).health == "ok"
    # After a restart with the source healthy, a new streak is timed from its own start.
    await harness.restart()
    await harness.fail_for(timedelta(minutes=35))
    assert len(await failing_alerts(store)) == 2


async def test_a_restart_waits_out_the_stored_backoff(harness: Harness, store: Store) -> None:
    await harness.succeed()
    assert (await harness.poll("server_error")).error is not None
    st = await source_state(store)
    assert st.retry_at is not None and st.retry_at > harness.clocks.now()
    await harness.restart()
    assert harness.poller.sources[NAME].failures == st.consecutive_failures == 1
    requests = harness.sandbox.faults.requests("mastodon")
    out = await harness.poller.poll(NAME)
    assert out.skipped is not None and out.skipped.startswith("backing off"), out
    assert harness.sandbox.faults.requests("mastodon") == requests
    harness.clocks.tick((st.retry_at - harness.clocks.now()).total_seconds() + 0.1)
    out = await harness.poller.poll(NAME)
    assert out.skipped is None and out.error is None, out
    st = await source_state(store)
    assert st.health == "ok" and st.retry_at is None


async def test_a_source_that_never_worked_alerts_across_restarts(
    harness: Harness, store: Store
) -> None:
    # Down from the first poll, and the daemon restarts every ten minutes: the streak's start
    # is kept in the store, so the alert still comes 30 minutes after the first failure.
    while not await failing_alerts(store):
        await harness.fail_for(timedelta(minutes=10))
        await harness.restart()
    [alert] = await failing_alerts(store)
    assert harness.first_failure is not None
    assert alert.detail["failing_since"] == harness.first_failure.isoformat()
    assert alert.detail["last_success_at"] is None
    assert (await source_state(store)).failing_since == harness.first_failure
    await harness.succeed()
    assert (await source_state(store)).failing_since is None


# -- fatal errors and refused credentials -----------------------------------------------------


async def test_repeated_fatal_errors_raise_one_alert(
    config: Config, store: Store, sandbox: tuple[Sandbox, str]
) -> None:
    sb, url = sandbox
    # A base URL the server has nothing at: 404, a request that can never succeed.
    h = Harness(config, store, sb, url + "/gone")
    await h.start()
    try:
        out = await h.poll()
        assert out.error is not None and out.error.startswith(
            "fatal: stream notifications: HTTP 404"
        )
        alerts = await failing_alerts(store)
        assert len(alerts) == 1  # at once, without waiting for the threshold
        assert alerts[0].title.startswith(
            f"Source {NAME} is failing: stream notifications: HTTP 404"
        )
        assert "HTTP 404" in alerts[0].detail["error"]
        polls = 1
        while h.clocks.wall < T0 + 3 * COOLDOWN:  # past the threshold and the cooldown
            out = await h.poll()
            if out.skipped is None:
                assert out.error is not None and out.error.startswith("fatal")
                polls += 1
        await h.restart()
        for _ in range(30):
            await h.poll()
        assert polls > 5
        assert len(await failing_alerts(store)) == 1
    finally:
        await h.stop()


async def test_refused_credentials_alert_once_within_the_cooldown(
    config: Config, store: Store, sandbox: tuple[Sandbox, str]
) -> None:
    sb, url = sandbox
    h = Harness(config, store, sb, url, access_token="not-the-token")
    await h.start()
    try:
        for _ in range(3):
            out = await h.poll()
            assert out.error is not None and out.error.startswith("auth: HTTP 401")
            assert (await h.poll()).skipped == "paused"
            await h.poller.resume(NAME)  # resumed without new credentials
        async with store.reader() as s:
            rows = (await s.execute(sa.select(Alert))).scalars().all()
        assert [(a.kind, a.dedupe_key, a.severity) for a in rows] == [
            ("source_auth", f"source_auth:{NAME}", "critical")
        ]
        assert "HTTP 401" in rows[0].detail["error"]
    finally:
        await h.stop()


async def test_no_alert_when_the_setting_is_null(
    config: Config, store: Store, sandbox: tuple[Sandbox, str]
) -> None:
    sb, url = sandbox
    h = Harness(config, store, sb, url, failing_alert_after=None)
    await h.start()
    try:
        await h.succeed()
        end = h.clocks.wall + timedelta(hours=3)
        while h.clocks.wall < end or h.armed:
            await h.poll("server_error")
        assert await failing_alerts(store) == []
        assert (await source_state(store)).health == "failing"
    finally:
        await h.stop()


# -- the setting ------------------------------------------------------------------------------


def _load(tmp_path: Path, extra: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"sources:\n  - name: feed\n    type: rss\n    url: https://e.example/f\n{extra}"
    )
    return load_config(path)


def test_failing_alert_after_is_a_positive_duration_or_null(tmp_path: Path) -> None:
    assert _load(tmp_path, "").sources[0].failing_alert_after == THRESHOLD
    src = _load(tmp_path, "    failing_alert_after: 2h\n").sources[0]
    assert src.failing_alert_after == timedelta(hours=2)
    assert "failing_alert_after" not in src.settings()  # not handed to the connector
    none = _load(tmp_path, "    failing_alert_after: null\n").sources[0]
    assert none.failing_alert_after is None
    for bad in ("0", "0s", "soon", "-5"):
        with pytest.raises(
            ConfigError,
            match=r"config\.yaml:5: sources\[0\]\.failing_alert_after: expected a duration",
        ):
            _load(tmp_path, f"    failing_alert_after: {bad}\n")
