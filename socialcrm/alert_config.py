"""Configuration of alerts: the sinks, the routes, cooldowns and retries (``Config.alerts``).

Kept apart from :mod:`socialcrm.alerts` (the outbox and its delivery) so that reading the
config file needs neither the database layer nor the sinks' clients.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from socialcrm.connector import Credential, SigningSecret
from socialcrm.timespec import Duration

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: Final[dict[str, int]] = {"info": 0, "warning": 1, "critical": 2}
Priority = Literal["low", "normal", "high", "urgent"]

DEFAULT_COOLDOWN: Final = timedelta(hours=1)
_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
#: What an alert kind may look like.
KIND_RE: Final = re.compile(r"^[a-z0-9_]{1,64}$")
#: Slack's own mentions, the only raw mrkdwn allowed in ``mention``.
_MENTION_RE: Final = r"^<(!here|!channel|!everyone|@[UW][A-Z0-9]+|!subteam\^[A-Z0-9]+)>$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlackSinkConfig(_Section):
    """Alerts posted to a Slack channel with ``chat.postMessage``."""

    type: Literal["slack"]
    name: str = Field(pattern=_NAME_PATTERN)
    token: Credential
    #: Channel id (C0123456789) or name.
    channel: str = Field(min_length=1, max_length=80)
    api_base: str = "https://slack.com/api/"
    #: Put in front of critical alerts, e.g. ``<!here>`` or ``<!subteam^S0123>``.
    mention: str | None = Field(default=None, pattern=_MENTION_RE)
    timeout_s: float = 10.0


class EmailSinkConfig(_Section):
    """Alerts mailed over SMTP to fixed addresses."""

    type: Literal["email"]
    name: str = Field(pattern=_NAME_PATTERN)
    host: str
    port: int = 587
    #: starttls: plain connection upgraded (587); tls: TLS from the start (465); none: local relay.
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: Credential | None = None
    from_addr: str = Field(pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    to: list[Annotated[str, Field(pattern=r"^[^@\s<>,]+@[^@\s<>,]+$")]] = Field(min_length=1)
    timeout_s: float = 20.0


class WebhookSinkConfig(_Section):
    """Alerts POSTed as JSON, signed like our inbound webhooks (HMAC-SHA256)."""

    type: Literal["webhook"]
    name: str = Field(pattern=_NAME_PATTERN)
    url: str = Field(pattern=r"^https?://\S+$")
    secret: SigningSecret
    timeout_s: float = 10.0


SinkConfig = Annotated[
    SlackSinkConfig | EmailSinkConfig | WebhookSinkConfig, Field(discriminator="type")
]


class AlertRoute(_Section):
    """Alerts this route matches go to its sinks; every matching route adds its sinks."""

    #: Kinds matched; ``sla_*`` matches by prefix; empty: every kind.
    kinds: list[str] = Field(default_factory=list)
    min_severity: Severity = "info"
    #: Ticket priorities matched (``detail.priority``); empty: any, with or without one.
    priorities: list[Priority] = Field(default_factory=list)
    sinks: list[str] = Field(min_length=1)

    def matches(self, kind: str, severity: str, priority: str | None) -> bool:
        """True when an alert of this kind, severity and priority takes this route."""
        if self.kinds and not any(
            kind.startswith(k[:-1]) if k.endswith("*") else kind == k for k in self.kinds
        ):
            return False
        if SEVERITY_RANK.get(severity, 1) < SEVERITY_RANK[self.min_severity]:
            return False
        return not self.priorities or priority in self.priorities


class AlertsConfig(_Section):
    """Where alerts go, how often the same one may be repeated, and how hard we retry."""

    sinks: list[SinkConfig] = Field(default_factory=list)
    routes: list[AlertRoute] = Field(default_factory=list)
    #: Sinks of an alert no route matches; None: every sink.
    default_sinks: list[str] | None = None
    #: An alert with the same dedupe key as one sent this recently is not sent again.
    cooldown: Duration = DEFAULT_COOLDOWN
    #: Per-kind cooldowns, e.g. ``{escalation: 30m, source_failing: 6h}``.
    cooldowns: dict[str, Duration] = Field(default_factory=dict)
    #: A sink gives up on an alert after this many failed attempts (it is then ``failed``).
    max_attempts: int = Field(default=12, ge=1)
    backoff_base: Duration = timedelta(seconds=30)
    backoff_max: Duration = timedelta(hours=1)
    #: Retries are spread by up to this fraction either way, so they do not come in step.
    backoff_jitter: float = Field(default=0.1, ge=0.0, le=0.5)
    #: A claimed alert is left alone this long; after a crash it is picked up again.
    lease: Duration = timedelta(minutes=10)
    #: Alerts claimed per round.
    batch_size: int = Field(default=50, ge=1)
    #: When one batch of messages raises more escalations than this, they come as one alert
    #: that lists them (each message's own is kept ``grouped``); None: always one each.
    group_over: int | None = Field(default=5, ge=1)
    #: How often the daemon should call ``deliver_due``.
    interval: Duration = timedelta(seconds=5)
    #: Link to a ticket in alert text, with ``{id}``: ``https://crm.example/tickets/{id}``.
    ticket_url: str | None = Field(default=None, pattern=r"^https?://\S*\{id\}\S*$")
    #: Folder searched for ``alerts/*.j2`` before the shipped templates.
    templates_dir: Path | None = None

    @model_validator(mode="after")
    def _known_sinks(self) -> AlertsConfig:
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError("two alert sinks have the same name")
        wanted = [n for r in self.routes for n in r.sinks] + list(self.default_sinks or [])
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ValueError(f"routes name alert sinks that are not configured: {unknown}")
        return self

    @field_validator("cooldowns")
    @classmethod
    def _kinds(cls, v: dict[str, timedelta]) -> dict[str, timedelta]:
        for kind in v:
            if not KIND_RE.match(kind):
                raise ValueError(f"{kind!r} is not an alert kind")
        return v

    def cooldown_for(self, kind: str) -> timedelta:
        """The cooldown of one kind of alert."""
        return self.cooldowns.get(kind, self.cooldown)

    def sinks_for(self, kind: str, severity: str, priority: str | None) -> list[str]:
        """The names of the sinks an alert goes to, in the order the sinks are configured."""
        chosen = {n for r in self.routes if r.matches(kind, severity, priority) for n in r.sinks}
        if not chosen:
            default = self.default_sinks
            chosen = {s.name for s in self.sinks} if default is None else set(default)
        return [s.name for s in self.sinks if s.name in chosen]
