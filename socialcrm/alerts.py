"""The alert outbox: pending Alert rows delivered to Slack, email and signed JSON webhooks.

Alerts are written first (in the transaction of whatever raised them: the pipeline's
escalations, the sources' ``source_auth``/``source_failing``, the sender's
``reply_failed``/``reply_needs_check``, :mod:`socialcrm.sla`, :mod:`socialcrm.spikes`) and
delivered from the table afterwards by :class:`AlertDispatcher`, so an alert outlives a
crash or a sink that is down.

Delivery, per round (:meth:`AlertDispatcher.deliver_due`):

1. Claim: in one short transaction, pick ``pending`` alerts whose ``next_attempt_at`` is due
   (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and lease them (``next_attempt_at`` moves a
   ``lease`` ahead, so a crashed round is picked up again). A fresh alert is checked for
   duplicates first: when an alert with the same ``dedupe_key`` reached a sink within the
   kind's cooldown, or an older one is still on its way, it is marked ``delivered`` as a
   duplicate (``detail["_delivery"]["duplicate_of"]``) and sent nowhere. Otherwise it is
   routed (kind, severity, ticket priority -> sink names) and the route is kept with it.
2. Send: outside any transaction, each alert goes to each of its sinks that is due. A sink
   that fails because it is down (refused connection, timeout, 5xx, 429, bad credentials)
   is not tried again in this round; the alerts that were due for it count a failed attempt
   and wait, with the sink's ``Retry-After`` when it gave one.
3. Record: per alert, in a short transaction, each sink's outcome is merged into
   ``detail["_delivery"]["sinks"][name]`` (``state`` pending | sent | failed, ``attempts``,
   ``next_at``, ``sent_at``, ``error``). Retries back off exponentially per alert x sink; a
   sink that has failed ``max_attempts`` times for an alert gives up on it. The alert is
   ``delivered`` when every sink took it, ``failed`` when any sink gave up (``delivered_at``
   still says when the first sink took it), else it stays ``pending`` until its earliest
   retry.

A sink that recovers therefore gets every alert it missed exactly once, and a sink that
worked is never sent an alert again because another one failed. (A crash between a send
and its record sends that one alert to that one sink again when the lease runs out; the
webhook's ``X-Socialcrm-Delivery`` header lets a receiver drop such a repeat.)

Text comes from ``templates/alerts/`` (a ``templates_dir`` overrides them): for each
format, ``alerts/<kind>.<format>.j2``, then ``alerts/<family>.<format>.j2`` (``sla`` for
``sla_warning``), then ``alerts/default.<format>.j2``. Formats: ``slack`` (mrkdwn, every
value escaped), ``text`` (plain: email body, webhook ``text``), ``subject`` (one line) and
``html`` (the email's HTML part, autoescaped).

Wiring: ``AlertsConfig`` is ``Config.alerts``; the daemon builds one ``AlertDispatcher`` with
its shared ``aiohttp.ClientSession`` and runs ``deliver_due`` every ``AlertsConfig.interval``
(one at a time). Code that raises alerts calls :func:`raise_alert` in its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import jinja2
import sqlalchemy as sa
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from socialcrm.alert_config import (
    DEFAULT_COOLDOWN,
    KIND_RE,
    AlertsConfig,
    EmailSinkConfig,
    Severity,
    SlackSinkConfig,
    WebhookSinkConfig,
)
from socialcrm.db import Store
from socialcrm.models import Alert, utcnow
from socialcrm.slackapi import sort_failure

# The clients of the sinks load when a sink is built or sends, not with the config models:
# commands that only read the database never need them.
if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

#: Key of ``Alert.detail`` that holds delivery state; never shown in alert text.
DELIVERY_KEY: Final = "_delivery"
SIGNATURE_HEADER: Final = "X-Socialcrm-Signature"
TIMESTAMP_HEADER: Final = "X-Socialcrm-Timestamp"
DELIVERY_HEADER: Final = "X-Socialcrm-Delivery"
#: PostgreSQL advisory locks taken by this module use this class (two-key form).
_LOCK_CLASS: Final = 0x50C1A1CA
_SLACK_TEXT_LIMIT: Final = 39000
_SUBJECT_LIMIT: Final = 200


# -- raising alerts ---------------------------------------------------------------------------


async def lock_key(session: AsyncSession, key: str) -> None:
    """Serialise transactions that work on ``key`` (PostgreSQL; SQLite writers queue anyway)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            sa.text("SELECT pg_advisory_xact_lock(:cls, hashtext(:key))"),
            {"cls": _LOCK_CLASS, "key": key},
        )


async def raise_alert(
    session: AsyncSession,
    kind: str,
    dedupe_key: str,
    title: str,
    detail: Mapping[str, Any] | None = None,
    severity: Severity = "warning",
    *,
    ticket_id: int | None = None,
    customer_id: int | None = None,
    message_id: int | None = None,
    cooldown: timedelta | None = DEFAULT_COOLDOWN,
    now: datetime | None = None,
    status: Literal["pending", "grouped"] = "pending",
) -> Alert | None:
    """Write an alert unless one with the same key was written within ``cooldown``.

    ``cooldown=None`` means once ever per key. Pass ``AlertsConfig.cooldown_for(kind)`` for
    the configured cooldown. Returns the new (flushed) alert, or None when it was held back.
    ``status="grouped"`` writes an alert that another one (``detail["grouped_in"]``) carries
    to the sinks: it holds its key and history but is never delivered itself.
    """
    now = now or utcnow()
    dedupe_key = dedupe_key[:512]
    await lock_key(session, dedupe_key)
    q = sa.select(col(Alert.id)).where(col(Alert.dedupe_key) == dedupe_key)
    if cooldown is not None:
        q = q.where(col(Alert.created_at) > now - cooldown)
    if (await session.execute(q.limit(1))).first() is not None:
        return None
    clean = {k: v for k, v in (detail or {}).items() if k != DELIVERY_KEY}
    alert = Alert(
        kind=kind,
        dedupe_key=dedupe_key,
        severity=severity,
        title=title[:512],
        detail=clean,
        ticket_id=ticket_id,
        customer_id=customer_id,
        message_id=message_id,
        status=status,
        created_at=now,
    )
    session.add(alert)
    await session.flush()
    return alert


# -- what sinks see ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertView:
    """An alert as sinks and templates see it: no delivery state, links resolved."""

    id: int
    kind: str
    severity: str
    title: str
    detail: Mapping[str, Any]
    ticket_id: int | None
    customer_id: int | None
    message_id: int | None
    created_at: datetime
    #: Web links: ``ticket`` (from ``ticket_url``) and ``message`` (the post, if public).
    links: Mapping[str, str] = field(default_factory=dict)

    @property
    def priority(self) -> str | None:
        """The ticket priority the alert is about, if it says."""
        value = self.detail.get("priority")
        return value if isinstance(value, str) else None

    def payload(self, text: str) -> dict[str, Any]:
        """The JSON document a webhook receives."""
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "text": text,
            "detail": dict(self.detail),
            "ticket_id": self.ticket_id,
            "customer_id": self.customer_id,
            "message_id": self.message_id,
            "created_at": self.created_at.isoformat(),
            "links": dict(self.links),
        }


def safe_url(url: Any) -> str | None:
    """A plain http(s) address that can sit in a link, or None."""
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        return None
    if len(url) > 2000 or any(ch in url for ch in "|<> \t\r\n\"'`"):
        return None
    return url


def view_of(alert: Alert, ticket_url: str | None = None) -> AlertView:
    """The view of a stored alert."""
    detail = {k: v for k, v in (alert.detail or {}).items() if k != DELIVERY_KEY}
    links: dict[str, str] = {}
    if ticket_url and alert.ticket_id is not None:
        links["ticket"] = ticket_url.replace("{id}", str(alert.ticket_id))
    if ticket_url:  # an alert that lists tickets (grouped SLA alerts): "ticket:<id>"
        for t in detail.get("tickets") or ():
            if isinstance(t, dict) and isinstance(t.get("id"), int):
                links[f"ticket:{t['id']}"] = ticket_url.replace("{id}", str(t["id"]))
    message_url = safe_url(detail.get("url"))
    if message_url:
        links["message"] = message_url
    assert alert.id is not None
    return AlertView(
        id=alert.id,
        kind=alert.kind,
        severity=alert.severity,
        title=alert.title,
        detail=detail,
        ticket_id=alert.ticket_id,
        customer_id=alert.customer_id,
        message_id=alert.message_id,
        created_at=alert.created_at,
        links=links,
    )


# -- text -------------------------------------------------------------------------------------

Format = Literal["slack", "text", "subject", "html"]


def escape_mrkdwn(text: str) -> str:
    """Escape ``&``, ``<`` and ``>``: Slack then shows the text and parses nothing in it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_finalize(value: Any) -> Any:
    if isinstance(value, Markup):  # built by our own filters, already escaped
        return str(value)
    return escape_mrkdwn(value) if isinstance(value, str) else value


def _slack_link(url: Any, label: Any) -> Markup:
    text = escape_mrkdwn(str(label)).replace("|", "¦")
    target = safe_url(url)
    return Markup(f"<{target}|{text}>" if target else text)


def _slack_quote(text: Any, limit: int = 1500) -> Markup:
    body = str(text or "").strip()
    if len(body) > limit:
        body = body[: limit - 1] + "…"
    lines = body.splitlines() or [""]
    return Markup("\n".join(f">{escape_mrkdwn(line)}" for line in lines))


def _one_line(text: Any, limit: int = 200) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _when(value: Any) -> str:
    moment: datetime | None = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value)
    if moment is None:
        return str(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ago(seconds: Any) -> str:
    try:
        s = abs(int(seconds))
    except (TypeError, ValueError):
        return str(seconds)
    if s < 3600:
        return f"{max(1, s // 60)}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _due_in(seconds: Any) -> str:
    """How far off the due time is, from seconds until due (negative once overdue): text like
    ``, 1h05m late`` or ``, in 30m``, or nothing."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds:
        return ""
    return f", {_ago(seconds)} late" if seconds < 0 else f", in {_ago(seconds)}"


class AlertRenderer:
    """Alert text per format from the templates, each format escaped as its sink needs."""

    def __init__(self, templates_dir: Path | None = None, brand: str = "Acme") -> None:
        from socialcrm.templating import template_environment

        self.brand = brand
        self.envs: dict[str, jinja2.Environment] = {}
        for fmt in ("slack", "text", "subject", "html"):
            env = template_environment(templates_dir)
            env.filters["when"] = _when
            env.filters["duration"] = _ago
            env.filters["due_in"] = _due_in
            env.filters["one_line"] = _one_line
            if fmt == "slack":
                env.finalize = _slack_finalize
                env.filters["link"] = _slack_link
                env.filters["quote"] = _slack_quote
            elif fmt == "html":
                env.autoescape = True
            self.envs[fmt] = env

    def render(self, fmt: Format, alert: AlertView, **extra: Any) -> str:
        """The alert's text in one format (``alerts/<kind>.<fmt>.j2`` or a fallback)."""
        env = self.envs[fmt]
        names = [f"alerts/default.{fmt}.j2"]
        if KIND_RE.match(alert.kind):
            family = alert.kind.split("_", 1)[0]
            names[:0] = [f"alerts/{alert.kind}.{fmt}.j2", f"alerts/{family}.{fmt}.j2"]
        context = {
            "alert": alert,
            "detail": alert.detail,
            "links": alert.links,
            "brand": self.brand,
            "mention": None,
            **extra,
        }
        text = env.select_template(names).render(**context).strip()
        if fmt == "subject":
            return _one_line(text, _SUBJECT_LIMIT)
        return text


# -- sinks ------------------------------------------------------------------------------------


class SinkError(Exception):
    """A delivery that did not happen.

    ``sink_down``: the sink cannot take anything now (skip it for the rest of the round);
    False: only this alert was refused. ``retry_after_s``: what the sink asked us to wait.
    ``permanent``: no retry can work until a person fixes the sink (a revoked token, a channel
    the bot was removed from); the sink is stopped and tried again only rarely.
    """

    def __init__(
        self,
        reason: str,
        *,
        sink_down: bool = True,
        retry_after_s: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(reason)
        self.sink_down = sink_down or permanent
        self.retry_after_s = retry_after_s
        self.permanent = permanent


class AlertSink(Protocol):
    """Somewhere alerts are delivered; ``send`` raises :class:`SinkError` when it did not."""

    name: str

    async def send(self, alert: AlertView) -> None:
        """Deliver one alert."""
        ...


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    return None


#: Slack answers that concern one message rather than the token or channel.
_SLACK_MESSAGE_ERRORS: Final = frozenset(
    {"msg_too_long", "no_text", "invalid_blocks", "invalid_blocks_format", "too_many_attachments"}
)


class SlackSink:
    """Posts alerts to a Slack channel."""

    def __init__(
        self,
        config: SlackSinkConfig,
        http: aiohttp.ClientSession,
        renderer: AlertRenderer,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.name = config.name
        self.config = config
        self.renderer = renderer
        self.clock = clock
        from slack_sdk.web.async_client import AsyncWebClient

        # No retry handlers: the outbox owns retries and their timing.
        self.client = AsyncWebClient(
            token=config.token.get_secret_value(),
            base_url=config.api_base,
            session=http,
            timeout=int(config.timeout_s),
            retry_handlers=[],
        )

    async def send(self, alert: AlertView) -> None:
        """``chat.postMessage`` with the alert's mrkdwn text."""
        import aiohttp
        from slack_sdk.errors import SlackApiError, SlackClientError

        mention = self.config.mention if alert.severity == "critical" else None
        text = self.renderer.render("slack", alert, mention=Markup(mention) if mention else None)[
            :_SLACK_TEXT_LIMIT
        ]
        try:
            async with asyncio.timeout(self.config.timeout_s):
                await self.client.chat_postMessage(
                    channel=self.config.channel,
                    text=text,
                    mrkdwn=True,
                    unfurl_links=False,
                    unfurl_media=False,
                )
        except SlackApiError as err:
            failure = sort_failure(err, _SLACK_MESSAGE_ERRORS)
            status = getattr(err.response, "status_code", 0)
            raise SinkError(
                f"slack {status} {failure.describe()}",
                sink_down=failure.verdict != "message",
                retry_after_s=failure.retry_after_s,
                permanent=failure.verdict == "permanent",
            ) from err
        except (SlackClientError, aiohttp.ClientError, TimeoutError, OSError) as err:
            raise SinkError(f"slack unreachable: {err!r}"[:300]) from err


class EmailSink:
    """Mails alerts over SMTP: a plain-text body with an HTML alternative."""

    def __init__(
        self,
        config: EmailSinkConfig,
        renderer: AlertRenderer,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.name = config.name
        self.config = config
        self.renderer = renderer
        self.clock = clock

    def message(self, alert: AlertView) -> EmailMessage:
        """The mail for one alert."""
        cfg = self.config
        text = self.renderer.render("text", alert)
        msg = EmailMessage()
        msg["Subject"] = self.renderer.render("subject", alert)
        msg["From"] = cfg.from_addr
        msg["To"] = ", ".join(cfg.to)
        msg["Date"] = format_datetime(self.clock().astimezone(UTC))
        msg["Message-ID"] = make_msgid(f"alert-{alert.id}", cfg.from_addr.rpartition("@")[2])
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Socialcrm-Alert"] = f"{alert.kind} {alert.id}"
        msg.set_content(text)
        msg.add_alternative(self.renderer.render("html", alert, text=text), subtype="html")
        return msg

    async def send(self, alert: AlertView) -> None:
        """Send the alert's mail to every configured address."""
        import aiosmtplib

        cfg = self.config
        msg = self.message(alert)
        try:
            await aiosmtplib.send(
                msg,
                hostname=cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=cfg.password.get_secret_value() if cfg.password else None,
                use_tls=cfg.security == "tls",
                start_tls=cfg.security == "starttls",
                timeout=cfg.timeout_s,
            )
        except aiosmtplib.SMTPResponseException as err:
            # 5xx to a message is about the message (too big, refused content); 4xx is
            # the server asking us to come back later; auth failures concern everything.
            auth = isinstance(err, aiosmtplib.SMTPAuthenticationError)
            raise SinkError(
                f"smtp {err.code} {err.message}"[:300], sink_down=auth or err.code < 500
            ) from err
        except aiosmtplib.SMTPRecipientsRefused as err:
            raise SinkError(f"smtp refused every recipient: {err!r}"[:300]) from err
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            raise SinkError(f"smtp unreachable: {err!r}"[:300]) from err


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` HMAC of ``{timestamp}.{body}``, as our inbound webhooks expect."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


class WebhookSink:
    """POSTs alerts as signed JSON."""

    def __init__(
        self,
        config: WebhookSinkConfig,
        http: aiohttp.ClientSession,
        renderer: AlertRenderer,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.name = config.name
        self.config = config
        self.http = http
        self.renderer = renderer
        self.clock = clock

    def request(self, alert: AlertView) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the POST for one alert."""
        payload = alert.payload(self.renderer.render("text", alert))
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = str(int(self.clock().timestamp()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.config.secret.get_secret_value(), timestamp, body),
            DELIVERY_HEADER: str(alert.id),
        }
        return body, headers

    async def send(self, alert: AlertView) -> None:
        """POST the alert; any 2xx is delivered."""
        import aiohttp

        body, headers = self.request(alert)
        try:
            async with (
                asyncio.timeout(self.config.timeout_s),
                self.http.post(self.config.url, data=body, headers=headers) as resp,
            ):
                if 200 <= resp.status < 300:
                    return
                wait = _retry_after(resp.headers.get("Retry-After"), self.clock())
                down = resp.status in (401, 403, 404, 408, 429) or resp.status >= 500
                raise SinkError(
                    f"webhook answered {resp.status}", sink_down=down, retry_after_s=wait
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise SinkError(f"webhook unreachable: {err!r}"[:300]) from err


def make_sink(
    config: SlackSinkConfig | EmailSinkConfig | WebhookSinkConfig,
    http: aiohttp.ClientSession,
    renderer: AlertRenderer,
    clock: Callable[[], datetime] = utcnow,
) -> AlertSink:
    """The sink a sink config describes."""
    if isinstance(config, SlackSinkConfig):
        return SlackSink(config, http, renderer, clock)
    if isinstance(config, EmailSinkConfig):
        return EmailSink(config, renderer, clock)
    return WebhookSink(config, http, renderer, clock)


# -- the dispatcher ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Result:
    ok: bool
    error: str = ""
    #: Give up on this alert for this sink now (the sink is gone from the config).
    final: bool = False
    #: The sink cannot take anything now: not tried again in this round.
    sink_down: bool = False
    retry_after_s: float | None = None
    #: The sink refused for good (see :class:`SinkError`).
    permanent: bool = False


#: Kind of the alert raised, through the other sinks, when a sink refuses for good.
SINK_FAILING_KIND: Final = "alert_sink_failing"
#: A sink stopped by a permanent refusal is tried again this rarely.
SINK_STOPPED_RETRY_S: Final = 3600.0


@dataclass(slots=True)
class SinkStop:
    """A sink that refused for good: what it said and since when."""

    error: str
    since: datetime


@dataclass(slots=True)
class _Claimed:
    view: AlertView
    sinks: list[str]


class AlertDispatcher:
    """Delivers pending alerts to their sinks, with dedupe, cooldown, routing and retries."""

    def __init__(
        self,
        store: Store,
        config: AlertsConfig,
        http: aiohttp.ClientSession,
        clock: Callable[[], datetime] = utcnow,
        *,
        brand: str = "Acme",
        base_dir: Path | None = None,
        sinks: Mapping[str, AlertSink] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        templates = config.templates_dir
        if templates is not None and not templates.is_absolute() and base_dir is not None:
            templates = base_dir / templates
        self.renderer = AlertRenderer(templates, brand)
        self.sinks: dict[str, AlertSink] = (
            dict(sinks)
            if sinks is not None
            else {c.name: make_sink(c, http, self.renderer, clock) for c in config.sinks}
        )
        self._lock = asyncio.Lock()
        #: Sinks stopped by a permanent refusal, by name (see :meth:`health`).
        self.stopped: dict[str, SinkStop] = {}
        #: Failed attempts in the running failure streak of each sink (one warning a streak).
        self.failing: dict[str, int] = {}
        #: Failed delivery attempts since start, for ``/metrics``.
        self.failed_attempts = 0

    def health(self) -> dict[str, Any]:
        """Each sink stopped by a permanent refusal, for ``/healthz``."""
        return {
            name: {"state": "stopped", "error": stop.error, "since": stop.since.isoformat()}
            for name, stop in sorted(self.stopped.items())
        }

    async def _sink_result(self, name: str, result: _Result) -> None:
        """Keep a sink's stopped state; the first permanent refusal raises one alert, which is
        routed to the other sinks."""
        if result.ok:
            if self.stopped.pop(name, None) is not None:
                log.warning("alert sink %s works again", name)
            return
        if not result.permanent:
            return
        result.retry_after_s = SINK_STOPPED_RETRY_S
        if name in self.stopped:
            return
        now = self.clock()
        self.stopped[name] = SinkStop(result.error, now)
        log.error("alert sink %s refused for good (%s): stopped", name, result.error)
        async with self.store.session() as s:
            await raise_alert(
                s,
                SINK_FAILING_KIND,
                f"{SINK_FAILING_KIND}:{name}",
                f"Alert sink {name} refuses every alert ({result.error}); its alerts wait "
                "until it is fixed",
                {"sink": name, "error": result.error},
                "critical",
                cooldown=self.config.cooldown_for(SINK_FAILING_KIND),
                now=now,
            )

    async def deliver_due(self) -> int:
        """One round: claim due alerts, send them, record the outcome; returns messages sent."""
        async with self._lock:
            claimed = await self._claim(self.clock())
            sent = 0
            down: dict[str, _Result] = {}
            for item in claimed:
                results: dict[str, _Result] = {}
                for name in item.sinks:
                    if name in down:
                        results[name] = down[name]
                        continue
                    result = await self._send(name, item.view)
                    await self._sink_result(name, result)
                    results[name] = result
                    sent += result.ok
                    if result.sink_down:
                        # The alerts due for it in this round wait as this one does.
                        down[name] = result
                await self._record(item.view.id, results, self.clock())
            return sent

    async def _send(self, name: str, alert: AlertView) -> _Result:
        sink = self.sinks.get(name)
        if sink is None:
            return _Result(ok=False, error="the sink is no longer configured", final=True)
        try:
            await sink.send(alert)
        except SinkError as err:
            self._sink_failed(name, f"alert {alert.id} not delivered: {err}")
            return _Result(
                ok=False,
                error=str(err)[:300],
                sink_down=err.sink_down,
                retry_after_s=err.retry_after_s,
                permanent=err.permanent,
            )
        except jinja2.TemplateError as err:
            log.error("alert %s: template error for %s: %s", alert.id, name, err)
            return _Result(ok=False, error=f"template: {err}"[:300])
        except Exception as err:  # a bug in a sink must not stop the other alerts
            if name not in self.failing:
                log.exception("alert %s: sink %s failed", alert.id, name)
            self._sink_failed(name, f"alert {alert.id}: {err!r}")
            return _Result(ok=False, error=repr(err)[:300], sink_down=True)
        streak = self.failing.pop(name, 0)
        if streak:
            log.warning("alert sink %s works again after %d failed attempt(s)", name, streak)
        return _Result(ok=True)

    def _sink_failed(self, name: str, error: str) -> None:
        """Count a failed attempt; warn once when a sink's failure streak begins."""
        self.failed_attempts += 1
        streak = self.failing.get(name, 0) + 1
        self.failing[name] = streak
        if streak == 1:
            log.warning("alert sink %s failing: %s (alerts wait and are retried)", name, error)
        else:
            log.debug("alert sink %s still failing (%d): %s", name, streak, error)

    async def _claim(self, now: datetime) -> list[_Claimed]:
        """Lease the due alerts; settle fresh duplicates and unrouted alerts on the way."""
        out: list[_Claimed] = []
        async with self.store.session() as s:
            q = (
                sa.select(Alert)
                .where(
                    col(Alert.status) == "pending",
                    sa.or_(
                        col(Alert.next_attempt_at).is_(None),
                        col(Alert.next_attempt_at) <= now,
                    ),
                )
                .order_by(col(Alert.id))
                .limit(self.config.batch_size)
                .with_for_update(skip_locked=True)
            )
            for alert in (await s.execute(q)).scalars().all():
                delivery = dict(alert.detail.get(DELIVERY_KEY) or {})
                sinks: dict[str, dict[str, Any]] = {
                    k: dict(v) for k, v in (delivery.get("sinks") or {}).items()
                }
                if "routed" not in delivery:
                    dup = await self._duplicate_of(s, alert, now)
                    if dup is not None:
                        self._settle(alert, {"duplicate_of": dup, "routed": []}, "delivered", now)
                        log.info("alert %s is a repeat of %s: not sent", alert.id, dup)
                        continue
                    view = view_of(alert)
                    routed = self.config.sinks_for(alert.kind, alert.severity, view.priority)
                    if alert.kind == SINK_FAILING_KIND:
                        # Told through the other sinks: every other one if no route has one.
                        broken = alert.detail.get("sink")
                        routed = [n for n in routed if n != broken] or [
                            c.name for c in self.config.sinks if c.name != broken
                        ]
                    if not routed:
                        self._settle(alert, {"routed": []}, "delivered", now)
                        log.info("alert %s (%s) goes to no sink", alert.id, alert.kind)
                        continue
                    delivery = {"routed": routed}
                    sinks = {n: {"state": "pending", "attempts": 0} for n in routed}
                due = [
                    n
                    for n, st in sinks.items()
                    if st.get("state") == "pending" and _at(st.get("next_at"), now) <= now
                ]
                alert.detail = {**alert.detail, DELIVERY_KEY: {**delivery, "sinks": sinks}}
                if not due:
                    alert.next_attempt_at = _next_at(sinks, now)
                    continue
                alert.next_attempt_at = now + self.config.lease
                out.append(_Claimed(view_of(alert, self.config.ticket_url), due))
        return out

    @staticmethod
    def _settle(alert: Alert, delivery: dict[str, Any], status: str, now: datetime) -> None:
        alert.detail = {**alert.detail, DELIVERY_KEY: delivery}
        alert.status = status
        alert.delivered_at = now
        alert.next_attempt_at = None

    async def _duplicate_of(self, s: AsyncSession, alert: Alert, now: datetime) -> int | None:
        """The alert this one repeats: same key, sent within the cooldown, or still on its way."""
        since = now - self.config.cooldown_for(alert.kind)
        q = (
            sa.select(col(Alert.id))
            .where(
                col(Alert.dedupe_key) == alert.dedupe_key,
                col(Alert.id) != alert.id,
                sa.or_(
                    # Reached at least one sink recently (duplicates never made an attempt).
                    sa.and_(col(Alert.delivered_at) > since, col(Alert.attempts) > 0),
                    sa.and_(col(Alert.status) == "pending", col(Alert.id) < alert.id),
                ),
            )
            .order_by(col(Alert.id))
            .limit(1)
        )
        found = (await s.execute(q)).scalar_one_or_none()
        return int(found) if found is not None else None

    async def _record(self, alert_id: int, results: Mapping[str, _Result], now: datetime) -> None:
        """Merge one alert's sink outcomes into its row."""
        async with self.store.session() as s:
            alert = await s.get(Alert, alert_id, with_for_update=True)
            if alert is None:
                return
            delivery = dict(alert.detail.get(DELIVERY_KEY) or {})
            sinks = {k: dict(v) for k, v in (delivery.get("sinks") or {}).items()}
            tried = 0
            for name, res in results.items():
                st = sinks.setdefault(name, {"state": "pending", "attempts": 0})
                if st.get("state") != "pending":
                    continue  # settled meanwhile (another round after a lease ran out)
                tried += 1
                st["attempts"] = int(st.get("attempts", 0)) + 1
                if res.ok:
                    st.update(state="sent", sent_at=now.isoformat())
                    st.pop("next_at", None)
                    st.pop("error", None)
                    continue
                st["error"] = res.error
                if res.final or st["attempts"] >= self.config.max_attempts:
                    st["state"] = "failed"
                    st.pop("next_at", None)
                    log.error(
                        "alert %s: %s gave up after %d attempt(s): %s",
                        alert_id,
                        name,
                        st["attempts"],
                        res.error,
                    )
                else:
                    wait = self.backoff(alert_id, name, st["attempts"], res.retry_after_s)
                    st["next_at"] = (now + wait).isoformat()
            alert.attempts += tried
            if alert.delivered_at is None and any(st["state"] == "sent" for st in sinks.values()):
                alert.delivered_at = now
            states = {st["state"] for st in sinks.values()}
            if "pending" in states:
                alert.next_attempt_at = _next_at(sinks, now)
            else:
                alert.status = "failed" if "failed" in states else "delivered"
                alert.next_attempt_at = None
            alert.detail = {**alert.detail, DELIVERY_KEY: {**delivery, "sinks": sinks}}

    def backoff(
        self, alert_id: int, sink: str, attempts: int, retry_after_s: float | None = None
    ) -> timedelta:
        """Wait before attempt ``attempts + 1``: the sink's Retry-After, else exponential."""
        cfg = self.config
        if retry_after_s is not None:
            return timedelta(seconds=min(retry_after_s, 86400.0))
        base = cfg.backoff_base * (1 << min(max(attempts - 1, 0), 30))
        wait = min(base, cfg.backoff_max)
        if cfg.backoff_jitter:
            # Deterministic spread: the same alert x sink always gets the same share.
            digest = hashlib.blake2b(f"{alert_id}:{sink}:{attempts}".encode(), digest_size=4)
            unit = int.from_bytes(digest.digest(), "big") / 0xFFFFFFFF
            wait = wait * (1 + cfg.backoff_jitter * (2 * unit - 1))
        return wait


def _at(value: Any, default: datetime) -> datetime:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return default


def _next_at(sinks: Mapping[str, Mapping[str, Any]], now: datetime) -> datetime:
    pending = [_at(st.get("next_at"), now) for st in sinks.values() if st["state"] == "pending"]
    return min(pending, default=now)


def delivery_state(alert: Alert) -> dict[str, Any]:
    """The per-sink delivery state kept in an alert (empty before its first round)."""
    state = alert.detail.get(DELIVERY_KEY) if alert.detail else None
    return dict(state) if isinstance(state, dict) else {}
