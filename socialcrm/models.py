"""The store's tables (SQLModel). Schema changes go through Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from socialcrm import utctime


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware datetimes stored as UTC on every backend (text on SQLite; see
    :mod:`socialcrm.utctime`)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def bind_processor(self, dialect: Dialect) -> Any:
        # On SQLite the value goes straight to its text, without the layers of a decorator's
        # processor around process_bind_param (the same conversion): a batch binds thousands.
        if dialect.name == "sqlite":
            return utctime.to_sqlite_column
        return super().bind_processor(dialect)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if dialect.name == "sqlite":
            return utctime.to_sqlite(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return utctime.from_stored(value)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _json(default: Any) -> Any:
    return Field(default_factory=default, sa_type=JSONType, nullable=False)


class Customer(SQLModel, table=True):
    """One person or account, with every identity they use across channels."""

    __table_args__ = (
        # Reports: new customers, the 80/20 view by value, the most followed authors.
        sa.Index("ix_customer_first_seen_at", "first_seen_at"),
        sa.Index("ix_customer_lifetime_value", "lifetime_value", "id"),
        sa.Index("ix_customer_reach", "reach", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str | None = Field(default=None, max_length=512)
    email: str | None = Field(default=None, max_length=320, index=True)
    tier: str = Field(default="standard", max_length=64)
    segment: str | None = Field(default=None, max_length=128)
    lifetime_value: Decimal = Field(default=Decimal(0), max_digits=14, decimal_places=2)
    tags: list[str] = _json(list)
    do_not_contact: bool = False
    #: prospect -> customer -> advocate
    lifecycle_stage: str = Field(default="prospect", max_length=32)
    #: Largest follower count seen on any of the customer's identities.
    reach: int = 0
    notes: str | None = None
    #: Set when this record was merged into another; the row stays for the audit trail.
    merged_into_id: int | None = Field(default=None, foreign_key="customer.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    first_seen_at: datetime | None = _ts()
    last_seen_at: datetime | None = _ts()


class Identity(SQLModel, table=True):
    """One way of reaching a customer: a channel account, a handle or an email address."""

    __table_args__ = (
        sa.UniqueConstraint("channel", "external_user_id", name="uq_identity_channel_user"),
        sa.Index("ix_identity_channel_handle", "channel", "handle_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    channel: str = Field(max_length=32)
    external_user_id: str | None = Field(default=None, max_length=256)
    handle: str | None = Field(default=None, max_length=256)
    #: Lower-cased handle, for lookups.
    handle_key: str | None = Field(default=None, max_length=256)
    email: str | None = Field(default=None, max_length=320, index=True)
    display_name: str | None = Field(default=None, max_length=512)
    followers: int = 0
    verified: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Ticket(SQLModel, table=True):
    """A customer's case: opened by a message, threaded, worked and resolved by staff."""

    __table_args__ = (
        sa.Index("ix_ticket_customer_status", "customer_id", "status"),
        # Reports (service figures, SLA compliance) and the SLA check.
        sa.Index("ix_ticket_report_opened", "opened_at", "team"),
        sa.Index("ix_ticket_report_first_response", "first_response_at", "opened_at", "team"),
        sa.Index("ix_ticket_report_resolved", "resolved_at", "opened_at", "team"),
        sa.Index(
            "ix_ticket_report_first_response_due",
            "first_response_due_at",
            "first_response_at",
            "team",
        ),
        sa.Index("ix_ticket_report_resolution_due", "resolution_due_at", "resolved_at", "team"),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id")
    channel: str = Field(max_length=32)
    source: str = Field(max_length=128)
    subject: str = Field(default="", max_length=512)
    #: open -> pending -> resolved -> closed
    status: str = Field(default="open", max_length=16, index=True)
    #: low | normal | high | urgent
    priority: str = Field(default="normal", max_length=16)
    priority_score: float = 0.0
    #: Why the ticket has the priority it has, in words.
    priority_reason: str = ""
    intent: str | None = Field(default=None, max_length=64)
    team: str | None = Field(default=None, max_length=128)
    queue: str | None = Field(default=None, max_length=128)
    assignee: str | None = Field(default=None, max_length=128)
    conversation_id: str | None = Field(default=None, max_length=512, index=True)
    tags: list[str] = _json(list)
    opened_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    last_message_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    first_response_due_at: datetime | None = _ts()
    resolution_due_at: datetime | None = _ts()
    first_response_at: datetime | None = _ts()
    resolved_at: datetime | None = _ts()
    closed_at: datetime | None = _ts()
    reopened_count: int = 0
    message_count: int = 0
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    #: The ticket a message named (``[#123]``) but its sender could not write into.
    related_ticket_id: int | None = Field(default=None, foreign_key="ticket.id")


class Message(SQLModel, table=True):
    """Every inbound and outbound message, with what the pipeline made of it."""

    __table_args__ = (
        sa.UniqueConstraint("channel", "external_id", name="uq_message_channel_external"),
        sa.Index("ix_message_received", "received_at"),
        sa.Index("ix_message_customer", "customer_id", "created_at"),
        # The report's per-customer counts and its most negative and positive messages read
        # only these columns (an index-only scan); its other counts come from the rollups.
        sa.Index(
            "ix_message_report",
            "created_at",
            "direction",
            "ignored",
            "sentiment",
            "customer_id",
            "triage_class",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=32)
    source: str = Field(max_length=128)
    external_id: str = Field(max_length=998)
    #: inbound | outbound
    direction: str = Field(default="inbound", max_length=8)
    customer_id: int | None = Field(default=None, foreign_key="customer.id")
    identity_id: int | None = Field(default=None, foreign_key="identity.id")
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id", index=True)
    author_handle: str | None = Field(default=None, max_length=320)
    author_name: str | None = Field(default=None, max_length=512)
    followers: int = 0
    text: str = Field(default="", sa_type=sa.Text)
    subject: str | None = Field(default=None, max_length=998)
    lang: str | None = Field(default=None, max_length=16)
    #: False when the language is one VADER cannot score; the scores are then NULL.
    scored: bool = True
    sentiment: float | None = None
    sentiment_pos: float | None = None
    sentiment_neu: float | None = None
    sentiment_neg: float | None = None
    intent: str | None = Field(default=None, max_length=64)
    priority: str | None = Field(default=None, max_length=16)
    tags: list[str] = _json(list)
    rules_matched: list[str] = _json(list)
    ignored: bool = False
    direct: bool = True
    conversation_id: str | None = Field(default=None, max_length=512)
    in_reply_to: str | None = Field(default=None, max_length=998)
    references: list[str] = _json(list)
    url: str | None = Field(default=None, max_length=2048)
    truncated: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    raw: dict[str, Any] = _json(dict)
    #: The triage model's reading (NULL while no model is in use, and for texts the starter
    #: model cannot read): its sentiment class (negative | neutral | positive), whether a
    #: reply is needed, each with a confidence. A person's ``relabel`` replaces the class (its
    #: confidence then NULL, its version 0): reports count the class a person gave.
    triage_class: str | None = Field(default=None, max_length=8)
    triage_confidence: float | None = None
    needs_reply: bool | None = None
    needs_reply_confidence: float | None = None
    #: The model version that read it (-1: the starter model shipped in the package, which
    #: gives the class alone, see socialcrm/starter.py; 0: a person relabelled it).
    triage_version: int | None = None


class Reply(SQLModel, table=True):
    """A reply to a customer: drafted, approved by a person, then sent at most once."""

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id", index=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    customer_id: int | None = Field(default=None, foreign_key="customer.id")
    channel: str = Field(max_length=32)
    source: str = Field(max_length=128)
    template: str | None = Field(default=None, max_length=128)
    draft_text: str = Field(sa_type=sa.Text)
    #: The text that is (or was) sent: the draft, or what an approver changed it to.
    final_text: str | None = Field(default=None, sa_type=sa.Text)
    #: draft -> approved -> sending -> sent | failed | needs_check; draft -> rejected
    status: str = Field(default="draft", max_length=16, index=True)
    priority_score: float = 0.0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    decided_by: str | None = Field(default=None, max_length=128)
    decided_at: datetime | None = _ts()
    rejected_reason: str | None = None
    edited: bool = False
    sending_started_at: datetime | None = _ts()
    #: The process that claimed it for sending (``daemon/pid``): one no longer up left it.
    sending_by: str | None = Field(default=None, max_length=128)
    sent_at: datetime | None = _ts()
    external_id: str | None = Field(default=None, max_length=998)
    attempts: int = 0
    last_error: str | None = None
    #: An approved reply that hit a rate limit waits until then before the next try.
    next_attempt_at: datetime | None = _ts()
    #: Where its approval card lives in chat (e.g. Slack channel id and message ts).
    chat_channel: str | None = Field(default=None, max_length=64)
    chat_ts: str | None = Field(default=None, max_length=64)
    #: The reply state the card last showed; the card is updated when this differs.
    chat_shown: str | None = Field(default=None, max_length=32)
    #: A card being posted: the marker sent in its message metadata, written before
    #: ``chat.postMessage`` so that a poster dying before storing ``chat_ts`` leaves a card
    #: the next poster finds in the channel instead of posting a second one.
    chat_claim: str | None = Field(default=None, max_length=64)
    chat_claimed_at: datetime | None = _ts()
    #: The channel's constraints on this reply (``[{"reason", "blocking"}]``), as its
    #: connector's ``check_reply`` saw them when it was drafted, edited or approved.
    issues: list[dict[str, Any]] | None = Field(default=None, sa_type=JSONType)


class Alert(SQLModel, table=True):
    """Something a person must hear about; written first, delivered from this outbox."""

    __table_args__ = (sa.Index("ix_alert_dedupe", "dedupe_key", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=64)
    dedupe_key: str = Field(max_length=512)
    severity: str = Field(default="warning", max_length=16)
    title: str = Field(max_length=512)
    detail: dict[str, Any] = _json(dict)
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id")
    customer_id: int | None = Field(default=None, foreign_key="customer.id")
    message_id: int | None = Field(default=None, foreign_key="message.id")
    #: pending -> delivered | failed; grouped: carried by another alert, never sent itself
    status: str = Field(default="pending", max_length=16, index=True)
    attempts: int = 0
    next_attempt_at: datetime | None = _ts()
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    delivered_at: datetime | None = _ts()


class AuditEvent(SQLModel, table=True):
    """Who did what, when, and from where."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True)
    actor: str = Field(max_length=128)
    #: cli | slack | mattermost | web | system
    via: str = Field(max_length=32)
    action: str = Field(max_length=64)
    object_type: str = Field(max_length=32)
    object_id: str | None = Field(default=None, max_length=64)
    detail: dict[str, Any] = _json(dict)


class SourceState(SQLModel, table=True):
    """Per-source cursor and health, saved in the same transaction as the batch it came with."""

    source: str = Field(primary_key=True, max_length=128)
    cursor: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    #: ok | failing | paused
    health: str = Field(default="ok", max_length=16)
    paused: bool = False
    paused_reason: str | None = None
    muted_until: datetime | None = _ts()
    consecutive_failures: int = 0
    last_success_at: datetime | None = _ts()
    last_error: str | None = None
    last_error_at: datetime | None = _ts()
    #: When the running failure streak began: no poll since has stored anything.
    failing_since: datetime | None = _ts()
    #: A failing source is not polled before this (its backoff or the platform's reset time),
    #: by this daemon after a restart or by the one that takes it over.
    retry_at: datetime | None = _ts()
    #: Health of each stream (mentions, a search, one subreddit) that failed while the rest of
    #: the source worked, by stream name: state, failures, last error, since, retry_at.
    streams: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    messages_total: int = 0
    #: SHA-256 of the settings whose credentials were refused (never the secrets themselves).
    settings_fingerprint: str | None = Field(default=None, max_length=64)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class SourceToken(SQLModel, table=True):
    """OAuth tokens a source's connector obtained at run time (an X refresh rotates them)."""

    source: str = Field(primary_key=True, max_length=128)
    access_token: str = Field(sa_type=sa.Text, repr=False)
    refresh_token: str | None = Field(default=None, sa_type=sa.Text, repr=False)
    expires_at: datetime | None = _ts()
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Quarantine(SQLModel, table=True):
    """A payload that could not be processed, kept with its error until someone retries it."""

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=128, index=True)
    channel: str | None = Field(default=None, max_length=32)
    external_id: str | None = Field(default=None, max_length=998)
    error: str = Field(sa_type=sa.Text)
    raw: str = Field(sa_type=sa.Text)
    #: waiting | retried | discarded
    status: str = Field(default="waiting", max_length=16, index=True)
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    retried_at: datetime | None = _ts()


class SeenRequest(SQLModel, table=True):
    """A signed chat request let in, kept until its replay window has passed."""

    __tablename__ = "seen_request"

    #: sha256 of the platform, the request's timestamp and its signature.
    key: str = Field(primary_key=True, max_length=128)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class TriageLabel(SQLModel, table=True):
    """One person's (or one import's) word on a message: its sentiment class or reply need.

    The text is kept with the label so that the model can be retrained and audited even when
    the message is not stored here (an import) or has been deleted since.
    """

    __tablename__ = "triage_label"
    __table_args__ = (sa.Index("ix_triage_label_key", "channel", "external_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: int | None = Field(default=None, foreign_key="message.id", index=True)
    channel: str | None = Field(default=None, max_length=32)
    external_id: str | None = Field(default=None, max_length=998)
    text: str = Field(default="", sa_type=sa.Text)
    lang: str | None = Field(default=None, max_length=16)
    #: sentiment | needs_reply
    kind: str = Field(max_length=16)
    #: negative | neutral | positive, or yes | no
    value: str = Field(max_length=16)
    #: relabel | approve | edit | reject-no-reply | closed-without-reply | import
    reason: str = Field(max_length=32)
    actor: str = Field(max_length=128)
    via: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class TriageModelVersion(SQLModel, table=True):
    """One trained triage model: its parameters as data, its card and its scores."""

    __tablename__ = "triage_model"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    created_by: str = Field(max_length=128)
    #: Training-set size per head and label, e.g. {"sentiment": {"negative": 80, ...}}.
    label_counts: dict[str, Any] = _json(dict)
    #: Cross-validated precision, recall and F1 per head and class.
    scores: dict[str, Any] = _json(dict)
    #: The model card: what it was trained on, how well it does, where it fails.
    card: dict[str, Any] = _json(dict)
    #: Payload layout; a payload in any other layout is refused.
    format: str = Field(max_length=32)
    #: SHA-256 of the payload, checked before it is read.
    digest: str = Field(max_length=64)
    #: The fitted parameters as a NumPy .npz archive of plain arrays (never pickles).
    payload: bytes = Field(sa_type=sa.LargeBinary)


#: Length of the 15-minute slots the rollups count in, in seconds.
ROLLUP_SLOT_S = 900
#: Longest tag the topic rollup keeps (its first characters).
ROLLUP_TAG_CHARS = 200


class MessageRollup(SQLModel, table=True):
    """Inbound messages per 15-minute UTC slot, channel, source, ignored and sentiment class.

    Kept by ``socialcrm.rollups`` in each batch's transaction; reports read it instead of the
    messages. Sentiment: 1 positive, -1 negative, 0 neutral (and every ignored message),
    2 unscored.
    """

    __tablename__ = "message_rollup"

    #: Seconds since the epoch // ROLLUP_SLOT_S.
    slot: int = Field(
        sa_column_kwargs={"autoincrement": False}, sa_type=sa.BigInteger, primary_key=True
    )
    channel: str = Field(max_length=32, primary_key=True)
    source: str = Field(max_length=128, primary_key=True)
    ignored: bool = Field(primary_key=True)
    sentiment: int = Field(
        sa_column_kwargs={"autoincrement": False}, sa_type=sa.SmallInteger, primary_key=True
    )
    n: int


class TopicRollup(SQLModel, table=True):
    """Intents and tags of the inbound messages that are not ignored, per 15-minute slot.

    Kept with ``MessageRollup``; ``kind`` is ``intent`` or ``tag`` (each tag counts once a
    message; ``key`` keeps the first 200 characters of a tag).
    """

    __tablename__ = "topic_rollup"

    slot: int = Field(
        sa_column_kwargs={"autoincrement": False}, sa_type=sa.BigInteger, primary_key=True
    )
    kind: str = Field(max_length=8, primary_key=True)
    key: str = Field(max_length=ROLLUP_TAG_CHARS, primary_key=True)
    n: int


class Daemon(SQLModel, table=True):
    """A daemon on this database: who it is, since when, and the sources and jobs it holds.

    Written by the daemon on start and every heartbeat; whether it is up is PostgreSQL's word
    (its membership advisory lock, see ``socialcrm.cluster``), not this row's.
    """

    name: str = Field(primary_key=True, max_length=128)
    host: str = Field(max_length=255)
    pid: int
    #: The PostgreSQL backend of the daemon's lease connection (pg_locks.pid).
    backend_pid: int | None = None
    started_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    heartbeat_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    sources: list[str] = _json(list)
    jobs: list[str] = _json(list)


TABLES = (
    Customer,
    Identity,
    Ticket,
    Message,
    Reply,
    Alert,
    AuditEvent,
    SourceState,
    Quarantine,
    TriageLabel,
    TriageModelVersion,
    Daemon,
)
