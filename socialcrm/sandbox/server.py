"""The sandbox: local stand-ins for X API v2, Mastodon and Reddit, on one aiohttp app and port.

The platforms live under path prefixes, each with the real API's paths below it::

    http://HOST:PORT/x/2/users/:id/mentions        (X API v2: base URL http://HOST:PORT/x)
    http://HOST:PORT/mastodon/api/v1/notifications (Mastodon: base URL http://HOST:PORT/mastodon)
    http://HOST:PORT/reddit/search                 (Reddit: both the OAuth URL and the API URL
                                                    are http://HOST:PORT/reddit)

A :class:`Sandbox` holds the state: the messages of a :class:`TrafficGenerator` for the x,
mastodon and reddit channels (only the released ones are visible), what was served and what was
replied, and the fault plan. Run it with :func:`serve` (the ``socialcrm sandbox`` command) or
mount :func:`make_app` in ``aiohttp.test_utils.TestServer``::

    sandbox = Sandbox(7, messages=5000, release_per_s=1.0, faults=Faults.typical(7))
    runner = await serve(sandbox, "127.0.0.1", 8765)
    try:
        ...
    finally:
        await runner.cleanup()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from socialcrm.connector import InboundMessage
from socialcrm.sandbox.faults import FaultEvent, FaultKind, FaultPlan, Faults
from socialcrm.sandbox.slack import SlackWorkspace, make_slack_app
from socialcrm.sandbox.traffic import DEFAULT_START, TrafficGenerator

if TYPE_CHECKING:
    from socialcrm.sandbox.mastodon import MastodonStandIn
    from socialcrm.sandbox.reddit import RedditStandIn
    from socialcrm.sandbox.x import XStandIn

Platform = Literal["x", "mastodon", "reddit"]
PLATFORMS: Final[tuple[Platform, ...]] = ("x", "mastodon", "reddit")

#: External ids a handler served intact in this answer (recorded only if it is delivered).
SERVED: Final = web.RequestKey("socialcrm_served", list[str])
#: External ids a handler served broken on purpose (``bad_item``).
CORRUPTED: Final = web.RequestKey("socialcrm_corrupted", list[str])
_CLOSING: Final = web.AppKey("socialcrm_sandbox_closing", asyncio.Event)

_MAINTENANCE_PAGE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>Down for maintenance</title></head>"
    b"<body><h1>We'll be right back.</h1><p>Please try again in a few minutes.</p></body></html>"
)


@dataclass(frozen=True)
class Credentials:
    """The credentials the stand-ins accept; anything else is refused the way the platform would.

    They are fixed, public strings: the sandbox guards nothing, but connectors must still send
    the right ones so that a wrong token is seen as :class:`~socialcrm.connector.AuthError`.
    """

    #: X app-only bearer token (reads).
    x_bearer_token: str = "sandbox-x-app-bearer"
    #: X OAuth 2.0 user-context access token (reads and ``POST /2/tweets``).
    x_user_token: str = "sandbox-x-user-token"
    #: X OAuth 1.0a consumer key and access token (signatures are not checked).
    x_consumer_key: str = "sandbox-x-consumer-key"
    x_access_token: str = "sandbox-x-access-token"
    mastodon_token: str = "sandbox-mastodon-token"
    reddit_client_id: str = "sandbox-reddit-client"
    reddit_client_secret: str = "sandbox-reddit-secret"
    #: The Reddit script app's account; ``None`` is the sandbox's brand handle.
    reddit_username: str | None = None
    reddit_password: str = "sandbox-reddit-password"
    reddit_token_ttl_s: int = 86_400


#: The Slack stand-in's approvals channel and its approver (dana), as the demo configures them.
SLACK_CHANNEL: Final = "C0APPROVALS"
SLACK_APPROVER: Final = "U0DANA"


@dataclass(frozen=True)
class PostedReply:
    """A reply a connector posted to a stand-in."""

    platform: Platform
    #: The id the platform gave the reply (tweet id, status id, comment fullname).
    external_id: str
    #: What it answers (tweet id, status id, t1_/t3_ fullname).
    in_reply_to: str | None
    text: str
    idempotency_key: str | None = None
    posted_at: float = 0.0


@dataclass
class _Window:
    start: float
    used: int = 0


class Sandbox:
    """State of the stand-ins: the traffic, what is visible, served and replied, and the faults."""

    def __init__(
        self,
        seed: int = 7,
        *,
        messages: int = 2000,
        brand: str = "Acme",
        brand_handle: str = "acme",
        start: datetime = DEFAULT_START,
        faults: Faults | None = None,
        credentials: Credentials | None = None,
        released: int = 0,
        release_per_s: float | None = None,
        enforce_rate_limits: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Build the traffic of ``TrafficGenerator(seed)``: its first ``messages`` messages, of
        which those on x, mastodon and reddit are served.

        ``released`` messages are visible at once; ``release_per_s`` releases more as wall-clock
        time passes (counted from the first request), for the demo and the soak. With
        ``enforce_rate_limits`` a platform answers 429 once its documented window is used up;
        otherwise its rate-limit headers only count. ``clock`` gives epoch seconds.
        """
        if release_per_s is not None and release_per_s <= 0:
            raise ValueError("release_per_s must be positive")
        self.seed = seed
        self.brand = brand
        self.brand_handle = brand_handle.lstrip("@")
        self.generator = TrafficGenerator(
            seed, brand=brand, brand_handle=self.brand_handle, start=start
        )
        creds = credentials or Credentials()
        if creds.reddit_username is None:
            creds = dataclasses.replace(creds, reddit_username=self.brand_handle)
        self.credentials = creds
        self.faults = FaultPlan(faults or Faults())
        self.clock = clock
        self.enforce_rate_limits = enforce_rate_limits
        self.release_per_s = release_per_s
        self.messages: dict[Platform, list[InboundMessage]] = {p: [] for p in PLATFORMS}
        self._order: list[tuple[Platform, int]] = []
        for message in self.generator.messages(messages):
            if message.channel in PLATFORMS:
                platform: Platform = message.channel
                self._order.append((platform, len(self.messages[platform])))
                self.messages[platform].append(message)
        self._released: dict[Platform, int] = dict.fromkeys(PLATFORMS, 0)
        #: Per platform: the ``clock`` time each released message was released at, in order.
        self.released_at: dict[Platform, list[float]] = {p: [] for p in PLATFORMS}
        self._next = 0
        self._auto_origin: float | None = None
        self._auto_released = 0
        #: Per platform: external id -> how many times it was served intact.
        self.served: dict[Platform, dict[str, int]] = {p: {} for p in PLATFORMS}
        #: Per platform: external ids served broken on purpose, in order.
        self.corrupted: dict[Platform, list[str]] = {p: [] for p in PLATFORMS}
        #: Every reply posted, in order.
        self.replies: list[PostedReply] = []
        self._windows: dict[tuple[Platform, str], _Window] = {}
        # Imported here because the stand-ins import this module for their base class.
        from socialcrm.sandbox.mastodon import MastodonStandIn
        from socialcrm.sandbox.reddit import RedditStandIn
        from socialcrm.sandbox.x import XStandIn

        self.x: XStandIn = XStandIn(self)
        self.mastodon: MastodonStandIn = MastodonStandIn(self)
        self.reddit: RedditStandIn = RedditStandIn(self)
        #: The Slack workspace (served under ``/slack``): an approvals channel and one approver.
        self.slack = SlackWorkspace(
            channels={SLACK_CHANNEL: "approvals"}, users={SLACK_APPROVER: "dana"}
        )
        if released:
            self.release(released)

    def __repr__(self) -> str:
        counts = ", ".join(f"{p}={self._released[p]}/{len(self.messages[p])}" for p in PLATFORMS)
        return f"Sandbox(seed={self.seed!r}, released: {counts})"

    # -- the release model ---------------------------------------------------------------------

    def release(self, count: int = 1, platform: Platform | None = None) -> list[InboundMessage]:
        """Make the next ``count`` messages visible (of one platform, or in traffic order)."""
        out: list[InboundMessage] = []
        if platform is not None:
            start = self._released[platform]
            stop = min(len(self.messages[platform]), start + count)
            self._released[platform] = stop
            self.released_at[platform] += [self.clock()] * (stop - start)
            return list(self.messages[platform][start:stop])
        while len(out) < count and self._next < len(self._order):
            p, idx = self._order[self._next]
            self._next += 1
            if idx < self._released[p]:
                continue  # already released on its own
            self.released_at[p] += [self.clock()] * (idx + 1 - self._released[p])
            self._released[p] = idx + 1
            out.append(self.messages[p][idx])
        return out

    def release_all(self) -> list[InboundMessage]:
        """Make every message visible."""
        return self.release(len(self._order))

    def released(self, platform: Platform) -> list[InboundMessage]:
        """The visible messages of ``platform``, oldest first."""
        return self.messages[platform][: self._released[platform]]

    def released_count(self, platform: Platform) -> int:
        """How many of ``platform``'s messages are visible."""
        return self._released[platform]

    def pending(self, platform: Platform | None = None) -> int:
        """How many messages are not visible yet."""
        platforms = PLATFORMS if platform is None else (platform,)
        return sum(len(self.messages[p]) - self._released[p] for p in platforms)

    def tick(self) -> None:
        """Release what ``release_per_s`` has made due by now (called on every request)."""
        if self.release_per_s is None:
            return
        now = self.clock()
        if self._auto_origin is None:
            self._auto_origin = now
        due = int((now - self._auto_origin) * self.release_per_s)
        if due > self._auto_released:
            self.release(due - self._auto_released)
            self._auto_released = due

    # -- records -----------------------------------------------------------------------------

    def served_ids(self, platform: Platform) -> list[str]:
        """External ids served intact at least once, in the order first served."""
        return list(self.served[platform])

    def replies_to(self, in_reply_to: str) -> list[PostedReply]:
        """The replies posted to one message."""
        return [r for r in self.replies if r.in_reply_to == in_reply_to]

    def inject(
        self, platform: Platform, kind: FaultKind, count: int = 1, *, path_prefix: str | None = None
    ) -> None:
        """Make the next ``count`` requests to ``platform`` misbehave (see FaultPlan.inject)."""
        self.faults.inject(platform, kind, count, path_prefix=path_prefix)

    def state(self) -> dict[str, Any]:
        """A summary for humans: released, served, broken and replied counts per platform."""
        return {
            p: {
                "released": self._released[p],
                "total": len(self.messages[p]),
                "served": len(self.served[p]),
                "corrupted": len(self.corrupted[p]),
                "replies": sum(1 for r in self.replies if r.platform == p),
                "requests": self.faults.requests(p),
                "faults": sum(1 for e in self.faults.events if e.platform == p),
            }
            for p in PLATFORMS
        }

    # -- serving -----------------------------------------------------------------------------

    def _window(self, platform: Platform, bucket: str, window_s: float, now: float) -> _Window:
        key = (platform, bucket)
        start = now - now % window_s
        win = self._windows.get(key)
        if win is None or win.start != start:
            win = self._windows[key] = _Window(start)
        return win

    def middleware(self, standin: StandIn) -> Middleware:
        """The gate in front of one stand-in: release, auth, rate limits, faults, records."""
        platform = standin.platform
        prefix = f"/{platform}"
        cfg = self.faults.config

        @web.middleware
        async def gate(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            self.tick()
            path = request.path[len(prefix) :] if request.path.startswith(prefix) else request.path
            refused = standin.authenticate(request)
            if refused is not None:
                return refused
            now = self.clock()
            bucket, limit, window_s = standin.bucket(request)
            win = self._window(platform, bucket, window_s, now)
            win.used += 1
            n, kind = self.faults.decide(platform, path, now)
            over = self.enforce_rate_limits and win.used > limit
            if kind == "rate_limit" or over:
                faulted = kind == "rate_limit"
                if faulted:  # every 429 of a burst names the same reset
                    reset_at = self.faults.reset_at(platform) or now + cfg.rate_limit_reset_s
                else:
                    reset_at = win.start + window_s
                headers = standin.rate_headers(limit, 0, win.used, reset_at, now)
                limited = standin.error(429)
                limited.headers.update(headers)
                if faulted:
                    self._log(platform, n, "rate_limit", request, headers)
                return limited
            if kind == "server_error":
                self._log(platform, n, kind, request, {})
                return standin.error((500, 502, 503)[n % 3])
            if kind == "slow":
                self._log(platform, n, kind, request, {})
                await self._pause(request, cfg.slow_delay_s)
            answer: web.StreamResponse
            try:
                answer = await handler(request)
            except web.HTTPException as exc:
                answer = standin.error(exc.status)
            remaining = max(0, limit - win.used)
            answer.headers.update(
                standin.rate_headers(limit, remaining, win.used, win.start + window_s, now)
            )
            if kind == "timeout":
                # The work is done (a reply is posted), but the answer comes too late to matter.
                self._log(platform, n, kind, request, {})
                await self._pause(request, cfg.timeout_delay_s)
                return answer
            if (
                kind in ("truncated", "html", "bad_envelope")
                and isinstance(answer, web.Response)
                and answer.status < 300
                and isinstance(answer.body, bytes)
            ):
                self._log(platform, n, kind, request, {})
                return _damage(standin, answer, kind)
            self._record(platform, request)
            return answer

        return gate

    def _log(
        self,
        platform: Platform,
        n: int,
        kind: FaultKind,
        request: web.Request,
        headers: dict[str, str],
    ) -> None:
        self.faults.record(FaultEvent(platform, n, kind, request.method, request.path, headers))

    def _record(self, platform: Platform, request: web.Request) -> None:
        served = self.served[platform]
        for ident in request.get(SERVED, ()):
            served[ident] = served.get(ident, 0) + 1
        for ident in request.get(CORRUPTED, ()):
            self.corrupted[platform].append(ident)
            self.faults.record(
                FaultEvent(
                    platform,
                    self.faults.requests(platform),
                    "bad_item",
                    request.method,
                    request.path,
                    item_id=ident,
                )
            )

    async def _pause(self, request: web.Request, delay_s: float) -> None:
        closing = request.config_dict.get(_CLOSING)
        if closing is None:
            await asyncio.sleep(delay_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), delay_s)


class StandIn:
    """One platform's stand-in: its routes and the platform's own ways of saying no."""

    platform: ClassVar[Platform]

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._indexes: dict[str, tuple[int, list[int]]] = {}

    def routes(self) -> list[web.RouteDef]:
        """The platform's endpoints, with paths as the real API has them."""
        raise NotImplementedError

    def authenticate(self, request: web.Request) -> web.Response | None:
        """None when the request's credentials are good, else the platform's 401/403."""
        raise NotImplementedError

    def bucket(self, request: web.Request) -> tuple[str, int, float]:
        """The rate-limit bucket of a request: its name, its limit, its window in seconds."""
        raise NotImplementedError

    def rate_headers(
        self, limit: int, remaining: int, used: int, reset_at: float, now: float
    ) -> dict[str, str]:
        """The platform's rate-limit headers."""
        raise NotImplementedError

    def error(self, status: int) -> web.Response:
        """The platform's error answer for ``status``, body and all."""
        raise NotImplementedError

    def break_envelope(self, payload: Any) -> Any:
        """The same data without the documented envelope (the ``bad_envelope`` fault)."""
        raise NotImplementedError

    # -- helpers for the platforms -------------------------------------------------------------

    def visible(self, name: str, wanted: Callable[[InboundMessage], bool]) -> list[int]:
        """Indexes of the visible messages ``wanted`` picks, oldest first (cached by ``name``)."""
        messages = self.sandbox.messages[self.platform]
        upto = self.sandbox.released_count(self.platform)
        checked, found = self._indexes.get(name, (0, []))
        if checked < upto:
            found = found + [i for i in range(checked, upto) if wanted(messages[i])]
            self._indexes[name] = (upto, found)
        return found

    def broken(self, ids: list[str]) -> set[str]:
        """Which items of a page go out broken: the few bad-by-seed ones and a forced one."""
        faults = self.sandbox.faults
        if ids and faults.take_forced_item(self.platform):
            faults.mark_bad(self.platform, ids[len(ids) // 2])
        return {i for i in ids if faults.item_is_bad(self.platform, i)}


def json_answer(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None, *, problem: bool = False
) -> web.Response:
    """A JSON answer (``application/problem+json`` for X's errors)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    content_type = "application/problem+json" if problem else "application/json"
    return web.Response(
        body=body,
        status=status,
        headers={**(headers or {}), "Content-Type": f"{content_type}; charset=utf-8"},
    )


def iso_z(epoch_s: float) -> str:
    """Epoch seconds as ISO 8601 with a Z, the way Mastodon writes times."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _damage(standin: StandIn, answer: web.Response, kind: FaultKind) -> web.Response:
    headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-length"}
    assert isinstance(answer.body, bytes)
    if kind == "truncated":
        body = answer.body[: max(1, len(answer.body) // 2)]
        return web.Response(body=body, status=answer.status, headers=headers)
    if kind == "html":
        headers["Content-Type"] = "text/html; charset=utf-8"
        headers.pop("Link", None)
        return web.Response(body=_MAINTENANCE_PAGE, status=200, headers=headers)
    payload = json.loads(answer.body)
    damaged = json.dumps(standin.break_envelope(payload), ensure_ascii=False).encode()
    return web.Response(body=damaged, status=answer.status, headers=headers)


def make_app(sandbox: Sandbox) -> web.Application:
    """The aiohttp app serving the stand-ins under ``/x``, ``/mastodon``, ``/reddit`` and
    ``/slack`` (the Web API at ``/slack/api/``).

    ``GET /`` answers a JSON summary of the sandbox's state.
    """
    app = web.Application()

    async def opened(app: web.Application) -> None:
        app[_CLOSING] = asyncio.Event()

    async def closing(app: web.Application) -> None:
        app[_CLOSING].set()  # wake the stand-ins that are playing dead (timeouts)

    async def summary(_request: web.Request) -> web.Response:
        return json_answer(sandbox.state())

    app.on_startup.append(opened)
    app.on_shutdown.append(closing)
    app.router.add_get("/", summary)
    standins: tuple[StandIn, ...] = (sandbox.x, sandbox.mastodon, sandbox.reddit)
    for standin in standins:
        sub = web.Application(middlewares=[sandbox.middleware(standin)])
        sub.router.add_routes(standin.routes())
        app.add_subapp(f"/{standin.platform}", sub)
    app.add_subapp("/slack", make_slack_app(sandbox.slack))
    return app


#: The newest generated message is this long before "now" (see :func:`start_ending_before`).
RECENT_MARGIN: Final = timedelta(minutes=2)


def start_ending_before(
    now: datetime,
    seed: int = 7,
    messages: int = 2000,
    *,
    brand: str = "Acme",
    brand_handle: str = "acme",
    at_least: timedelta = timedelta(0),
) -> datetime:
    """The ``start`` for a :class:`Sandbox` whose traffic of ``messages`` messages all lies in
    the past, its newest a moment before ``now`` (and its oldest at least ``at_least`` ago).

    The traffic's shape is fixed by the seed; only its dates move, so a demo or a fresh
    sandbox today reads like today's traffic: no message from the future, and no months-old
    backlog that makes every SLA overdue at once.
    """

    @functools.cache
    def newest(start: datetime) -> datetime:
        probe = TrafficGenerator(seed, brand=brand, brand_handle=brand_handle, start=start)
        return max((m.created_at for m in probe.messages(messages)), default=start)

    target = now - RECENT_MARGIN
    span = max(newest(DEFAULT_START) - DEFAULT_START, at_least)
    # The traffic follows the hours of the day, so its span depends on when it starts: find
    # the latest start (to the minute) whose newest message is not after ``target``.
    early, late = target - 3 * span - timedelta(hours=1), target - span / 2
    while newest(early) > target:
        early -= span
    for _ in range(16):
        if late - early <= timedelta(minutes=1):
            break
        mid = early + (late - early) / 2
        if newest(mid) <= target:
            early = mid
        else:
            late = mid
    # The newest message does not move steadily with the start (quiet hours stretch the
    # traffic), so an earlier start can end later: a start is returned only once checked.
    start = min(early, target - at_least)
    for _ in range(120):
        whole = start.replace(second=0, microsecond=0)
        if newest(whole) <= target:
            return whole
        if newest(start) <= target:
            return start
        start = whole - timedelta(minutes=1)
    return start


async def serve(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 8765) -> web.AppRunner:
    """Start serving ``sandbox`` on ``host:port`` and return the runner; stop it with
    ``await runner.cleanup()``. Base URLs: ``http://host:port/x``, ``/mastodon``, ``/reddit``,
    ``/slack``."""
    sandbox.slack.base_url = f"http://{host}:{port}/slack"
    runner = web.AppRunner(make_app(sandbox), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
