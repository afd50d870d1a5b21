"""The connector contract: what a channel connector hands the core, and what it may raise.

A connector imports this module and its own client library, nothing else of the core.
It never touches the database, never sleeps and never retries by itself: it sorts the
errors where they enter and the core decides what to do.
"""

from __future__ import annotations

import email.utils
import importlib.metadata
import json
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

Channel = Literal["x", "mastodon", "reddit", "email", "rss", "webhook"]
CHANNELS: tuple[str, ...] = ("x", "mastodon", "reddit", "email", "rss", "webhook")

#: Longest text kept for one message; anything longer is cut and flagged as truncated.
MAX_TEXT_CHARS = 40_000


def _secret(min_chars: int) -> BeforeValidator:
    """A check of a secret's length whose error never repeats the value."""

    def check(v: Any) -> Any:
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        if not isinstance(text, str):
            raise ValueError("must be text (got something else)")
        if not text.strip():
            raise ValueError("must not be empty or blank (got an empty value)")
        if len(text) < min_chars:
            raise ValueError(f"must be at least {min_chars} characters, got {len(text)}")
        return v

    return BeforeValidator(check)


#: A secret that lets a request in (a signing secret, a slash command's token, our webhook
#: secret): empty or short, anyone could forge requests, so at least 16 characters (Slack's
#: signing secrets are 32, Mattermost's command tokens 26).
SigningSecret = Annotated[SecretStr, _secret(16)]
#: A credential we present to a platform (bearer token, password), which the platform checks:
#: it must not be empty or blank; its length is the platform's business.
Credential = Annotated[SecretStr, _secret(1)]


def _number_as_text(value: Any) -> Any:
    # True is an int to Python, and no id.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: A platform's id as text: exports often write tweet and user ids as JSON numbers.
IdText = Annotated[str, BeforeValidator(_number_as_text)]


#: What no store keeps: NUL (PostgreSQL text and JSONB refuse it) and UTF-16 surrogates, which
#: a valid str never holds paired and neither database can encode alone.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` without NUL characters, a lone surrogate replaced by U+FFFD."""
    if "\x00" not in text and text.isascii():
        return text
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def clean(value: Any) -> Any:
    """Every string in ``value`` (dict keys, lists, nested) made storable by :func:`clean_text`."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def _needs_cleaning(data: dict[Any, Any]) -> bool:
    """Whether anything in ``data`` is unstorable; one pass in C, as nearly nothing is."""
    try:
        text = _JSON.encode(data)
    except (TypeError, ValueError):
        return True
    # json escapes NUL as \u0000 and leaves a lone surrogate as it is, which UTF-8 refuses.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return "\\u0000" in text


class _Clean(BaseModel):
    """A model whose string fields, at any depth, are cleaned before validation."""

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any) -> Any:
        return clean(data) if isinstance(data, dict) and _needs_cleaning(data) else data


class Author(_Clean):
    """Who wrote a message, as the channel knows them."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: IdText | None = Field(default=None, max_length=256)
    handle: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=512)
    email: str | None = Field(default=None, max_length=320)
    followers: int | None = Field(default=None, ge=0)
    verified: bool = False

    @field_validator("email")
    @classmethod
    def _email_lower(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower()
        return v or None

    @field_validator("handle")
    @classmethod
    def _handle_plain(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lstrip("@")
        return v or None


class InboundMessage(_Clean):
    """One message a customer wrote, normalised by its connector."""

    model_config = ConfigDict(extra="ignore")

    channel: Channel
    external_id: IdText = Field(min_length=1, max_length=512)
    text: str
    author: Author
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    #: Language the platform reported (BCP 47 / ISO 639-1), if any.
    lang: str | None = Field(default=None, max_length=16)
    #: External id of the message this one answers (tweet, status, comment, Message-ID).
    in_reply_to: IdText | None = Field(default=None, max_length=998)
    #: Platform conversation or thread id (X conversation_id, Reddit link id, ...).
    conversation_id: IdText | None = Field(default=None, max_length=512)
    #: Email References chain, oldest first.
    references: list[str] = Field(default_factory=list)
    subject: str | None = Field(default=None, max_length=998)
    url: str | None = Field(default=None, max_length=2048)
    #: True when the message was addressed to the brand directly (mention, DM, support mail).
    direct: bool = True
    truncated: bool = False
    #: A later version of a message the platform gave before under the same ``external_id``
    #: (an X edit): the core updates the stored message's text and raw payload.
    edited: bool = False
    raw: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, _ctx: Any) -> None:
        if len(self.text) > MAX_TEXT_CHARS:
            object.__setattr__(self, "text", self.text[:MAX_TEXT_CHARS])
            object.__setattr__(self, "truncated", True)
        if self.created_at.tzinfo is None:
            object.__setattr__(self, "created_at", self.created_at.replace(tzinfo=UTC))


class Quarantined(_Clean):
    """A payload the connector could not turn into an InboundMessage; kept, never dropped."""

    external_id: str | None = None
    error: str
    raw: str


Cursor = dict[str, Any]


class Batch(BaseModel):
    """What one fetch returns: the messages, the payloads that failed, and the next cursor."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    messages: list[InboundMessage] = Field(default_factory=list)
    quarantined: list[Quarantined] = Field(default_factory=list)
    cursor: Cursor | None = None
    #: True when the connector stopped early (page limit) and has more to fetch right away.
    more: bool = False
    #: Streams (mentions, a search, one subreddit, one hashtag) that failed while the rest of
    #: the source worked, by stream name. The core keeps each stream's health and backoff; the
    #: batch's messages and cursor are stored as usual. Filled by :func:`walk_each`.
    stream_errors: dict[str, ConnectorError] = Field(default_factory=dict)
    #: Streams whose listing ended before it reached where the last fetch stopped (a platform
    #: serves only so many items of a listing): what came between is lost. By stream name, a
    #: sentence saying what happened; the core warns and alerts, the stream goes on.
    gaps: dict[str, str] = Field(default_factory=dict)


class OutboundReply(BaseModel):
    """An approved reply, handed to the connector of the channel it goes out on."""

    reply_id: int
    channel: Channel
    text: str
    in_reply_to: str
    to_handle: str | None = None
    to_email: str | None = None
    subject: str | None = None
    references: list[str] = Field(default_factory=list)
    ticket_id: int | None = None
    #: The stored raw payload of the message this reply answers (``InboundMessage.raw``), so a
    #: connector can keep the platform's constraints: a Mastodon status's visibility, whether
    #: an X post mentioned the brand.
    original: dict[str, Any] = Field(default_factory=dict)


class ReplyIssue(BaseModel):
    """A platform constraint on one reply, known before anyone approves it."""

    reason: str
    #: True: it cannot be sent as written (too long, would widen a private post's audience);
    #: False: it may be sent, but the platform may refuse it.
    blocking: bool = False


class SentReceipt(BaseModel):
    """What the platform answered when a reply was sent."""

    external_id: str
    url: str | None = None


class TokenSet(BaseModel):
    """OAuth tokens a connector obtained at run time (a refresh grant rotates them)."""

    model_config = ConfigDict(frozen=True)

    access_token: SecretStr
    refresh_token: SecretStr | None = None
    expires_at: datetime | None = None


@runtime_checkable
class TokenStore(Protocol):
    """Where a connector keeps the tokens it was given at run time, so a restart (or another
    daemon) uses the newest ones: the core hands one to a connector whose ``__init__`` takes a
    ``tokens`` keyword, as it hands the HTTP session. A connector never touches the database."""

    async def load(self) -> TokenSet | None:
        """The tokens saved last, or None before the first save."""
        ...

    async def save(self, tokens: TokenSet) -> None:
        """Keep ``tokens`` (before they are used: a rotated refresh token must not be lost)."""
        ...


class MemoryTokens:
    """A :class:`TokenStore` in memory, for a connector the core gives no store (tests, CLI)."""

    def __init__(self) -> None:
        self._tokens: TokenSet | None = None

    def __repr__(self) -> str:
        return f"MemoryTokens(saved={self._tokens is not None})"

    async def load(self) -> TokenSet | None:
        """The tokens saved last."""
        return self._tokens

    async def save(self, tokens: TokenSet) -> None:
        """Keep ``tokens``."""
        self._tokens = tokens


class ConnectorError(Exception):
    """Base of the errors a connector raises; the core decides what each means."""

    #: The stream it failed in (``search``, ``r/foo``), set by :func:`walk_each`; None for a
    #: source without streams.
    stream: str | None = None

    def described(self) -> str:
        """The message, naming the stream when there is one: ``stream r/foo: HTTP 403: ...``."""
        return f"stream {self.stream}: {self}" if self.stream else str(self)


class RetryableError(ConnectorError):
    """A passing failure (429, 5xx, timeout): try again after ``retry_after_s`` if given.

    ``not_sent`` is True only when the request surely did not take effect (a rate-limit
    refusal, a connection that never opened). A reply is only sent again in that case: after
    a timeout or a 5xx nobody knows whether the platform posted it.
    """

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, not_sent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.not_sent = not_sent


class AuthError(ConnectorError):
    """Credentials were refused (a real 401, a refused token grant): pause the source and
    tell a human; never retry forever. Raised only when the whole source cannot work."""


class FatalError(ConnectorError):
    """The request can never succeed as made (bad query, gone resource)."""


class ForbiddenError(FatalError):
    """The credentials work, but this stream or this action is not allowed with them (a 403:
    a private subreddit, a missing scope, a reply the platform refuses). It stops that stream
    or that reply, with the platform's reason, and never pauses the whole source."""


class MalformedPayload(ConnectorError):
    """The platform answered with something that is not what its API documents.

    Raised for a whole response (truncated JSON, a missing envelope); a single bad item in
    an otherwise good page goes to ``Batch.quarantined`` instead.
    """


# Batch names ConnectorError, defined after it.
Batch.model_rebuild()

#: Failures that pass: a walk that made progress keeps it and stops there (see ``walk_each``).
PASSING_ERRORS: tuple[type[ConnectorError], ...] = (RetryableError, MalformedPayload)

_S = TypeVar("_S")


async def walk_each(
    streams: Sequence[_S],
    walk: Callable[[_S], Awaitable[bool]],
    batch: Batch | None = None,
    *,
    resting: Collection[str] = (),
) -> bool:
    """Walk each stream in turn (``walk`` stores its state and says whether it has more).

    Streams are independent: one that fails is recorded in ``batch.stream_errors`` under its
    name (``str(stream)``) and the others go on, so a private subreddit or a missing search
    scope does not stop the mentions. Streams named in ``resting`` (backing off after a
    failure, as the core decided) are not walked this time. When every stream walked failed,
    the first error is raised, its ``stream`` naming where it failed: the source as a whole
    is failing. An :class:`AuthError` (credentials refused) is raised at once. Without a
    ``batch`` the first failure is raised, as before streams had their own health.

    A connector's page loop keeps the pages it read when a passing failure stops it, so at a
    fault rate where few fetches of many pages would succeed whole, every fetch still moves
    its cursor forward.
    """
    more = False
    walked = 0
    failed: dict[str, ConnectorError] = {}
    for stream in streams:
        name = str(stream)
        if name in resting:
            continue
        walked += 1
        try:
            more = await walk(stream) or more
        except AuthError:
            raise
        except ConnectorError as err:
            err.stream = err.stream or name
            if batch is None:
                raise
            failed[name] = err
    if failed and len(failed) == walked:
        raise next(iter(failed.values()))
    if batch is not None:
        batch.stream_errors.update(failed)
    return more


#: Rate-limit headers, each a different dialect: seconds to wait, or when the window resets.
_RESET_HEADERS = (
    "retry-after",  # seconds or an HTTP date (RFC 9110)
    "x-rate-limit-reset",  # X API: epoch seconds
    "x-ratelimit-reset",  # Mastodon: ISO 8601 time; Reddit: seconds until reset
)


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long the platform asks us to wait, from whichever rate-limit header it sent."""
    now = time.time() if now is None else now
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in _RESET_HEADERS:
        value = lowered.get(name)
        if not value:
            continue
        value = value.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None:
            # Epoch seconds are large; a small number is a duration.
            wait = number - now if number > 1_000_000_000 else number
            return max(0.0, wait)
        when = _parse_when(value)
        if when is not None:
            return max(0.0, when.timestamp() - now)
    return None


def _parse_when(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def error_for_status(status: int, headers: Mapping[str, str], detail: str) -> ConnectorError | None:
    """Sort an HTTP answer where it enters: None for success, else the error to raise."""
    if status < 400:
        return None
    text = f"HTTP {status}: {detail[:300]}"
    if status == 429:
        return RetryableError(text, retry_after_s(headers), not_sent=True)
    if status >= 500 or status == 408:
        return RetryableError(text, retry_after_s(headers))
    if status == 401:
        return AuthError(text)
    if status == 403:
        return ForbiddenError(text)
    return FatalError(text)


class ConnectorConfig(BaseModel):
    """Settings of one connector; secrets are ``SecretStr`` so they never reach a log."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@runtime_checkable
class Connector(Protocol):
    """A channel connector, found by the core through the ``socialcrm.connectors`` entry point.

    The core builds it as ``cls(config, http)``: ``config`` an instance of ``cls.Config``
    (validated from the source's settings), ``http`` the aiohttp session the core owns, so
    tests and the sandbox can point it anywhere. A connector never touches the database,
    never sleeps and never retries: it sorts errors where they enter and returns.
    """

    name: ClassVar[str]
    channel: ClassVar[Channel]
    Config: ClassVar[type[ConnectorConfig]]

    async def fetch(self, cursor: Cursor | None) -> Batch:
        """Fetch everything new since ``cursor`` and return it with the next cursor.

        A connector with several streams may also take ``resting: frozenset[str]``, the
        streams the core holds back this time (backing off); the core passes it only to a
        ``fetch`` whose signature names it, so older connectors keep working.
        """
        ...


@runtime_checkable
class ReplyingConnector(Connector, Protocol):
    """A connector whose channel accepts replies."""

    async def send(self, reply: OutboundReply) -> SentReceipt:
        """Send an approved reply and return the platform's id for it."""
        ...

    # A replying connector may also define, without any I/O:
    #   @classmethod
    #   def check_reply(cls, config: Config, reply: OutboundReply) -> list[ReplyIssue]
    # the channel's constraints on ``reply`` (length, visibility, reply permission). The core
    # calls it when a draft is made, edited or approved and shows the reasons on the card and
    # in the CLI; a blocking issue stops the approval. And:
    #   @classmethod
    #   def sends_with(cls, config: Config) -> bool
    # False where these settings leave it unable to send (no callback URL, a read-only app):
    # an approval then says so rather than "It will be sent".


ENTRY_POINT_GROUP = "socialcrm.connectors"


def connector_names() -> list[str]:
    """The names of every installed connector (``type:`` in the config)."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def load_connector(name: str) -> type[Connector]:
    """The connector class installed under ``name``; only that plug-in is imported."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        cls: type[Connector] = ep.load()
        return cls
    raise LookupError(name)
