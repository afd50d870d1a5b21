"""X (Twitter) API v2: the brand's mentions and a recent-search query; replies as posts.

Uses tweepy's ``AsyncClient`` on the core's aiohttp session (tweepy uses a session it is
given and never closes it). tweepy always calls ``https://api.twitter.com``; to reach another
base URL (the sandbox, a proxy) the core builds the session with :func:`base_url_middleware`,
which :meth:`XConnector.session_middlewares` hands it.

The cursor holds one state per stream (``mentions``, ``search``) and the ids delivered lately
(``recent``, so a post both streams find is delivered once)::

    {"since_id": "1790..."}                                   # everything up to here is stored
    {"since_id": "1790...", "until_id": "1791...", "newest_id": "1795..."}   # a walk half done

A walk goes newest first, page by page, down to ``since_id``; the newest id of its first page
becomes the next ``since_id`` once the walk reaches the end. When ``max_pages`` stops a walk
early, the cursor keeps where it stopped (``until_id``) and ``Batch.more`` says so.

Recent search serves only the last seven days and refuses an older ``since_id`` with a 400
naming the smallest id it accepts; the search walk then starts again from that id, so what the
platform still serves is read and the cursor moves on (the mentions timeline has no such limit;
it serves the newest 800).

An edited post comes back as a new post whose ``edit_history_tweet_ids`` starts with the
original's id: its message keeps that first id as ``external_id`` (``edited`` set), so the core
updates the stored message instead of opening a second ticket.

OAuth 2.0 user access tokens last two hours. With ``client_id`` and ``refresh_token`` set, a
user token is renewed by the refresh grant (``POST /2/oauth2/token``) ``REFRESH_AHEAD_S`` before
it expires (the grant's ``expires_in`` is kept with the pair), or after a 401 when its expiry is
not known (the configured token); X rotates the refresh token each time, so the new pair goes to
the :class:`TokenStore` the core hands in before it is used. A refused refresh is an
:class:`AuthError` (the source's one auth alert).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

import aiohttp
import tweepy
from pydantic import Field, SecretStr, ValidationError, model_validator
from tweepy.asynchronous import AsyncClient
from yarl import URL

from socialcrm.connector import (
    PASSING_ERRORS,
    AuthError,
    Author,
    Batch,
    Channel,
    ConnectorConfig,
    ConnectorError,
    Credential,
    Cursor,
    FatalError,
    ForbiddenError,
    InboundMessage,
    MalformedPayload,
    MemoryTokens,
    OutboundReply,
    Quarantined,
    ReplyIssue,
    RetryableError,
    SentReceipt,
    TokenSet,
    TokenStore,
    error_for_status,
    retry_after_s,
    walk_each,
)
from socialcrm.xtext import MAX_POST_WEIGHT, post_weight

#: The origin tweepy sends every request to, and X's current name for it.
TWEEPY_ORIGIN = "https://api.twitter.com"
X_API_HOSTS = frozenset({"api.twitter.com", "api.x.com"})
TWEET_FIELDS = [
    "author_id",
    "conversation_id",
    "created_at",
    "edit_history_tweet_ids",
    "entities",
    "lang",
    # A long post's ``text`` is cut short; its whole text is in ``note_tweet``.
    "note_tweet",
    "public_metrics",
    "referenced_tweets",
]
USER_FIELDS = ["name", "username", "public_metrics", "verified"]
#: Post ids remembered in the cursor, newest first (see ``fetch``).
RECENT_KEEP = 300
#: X's token endpoint (the refresh grant), on the API host.
TOKEN_URL = "https://api.x.com/2/oauth2/token"
#: A user token this close to its expiry is renewed before a call, not after X refuses it.
REFRESH_AHEAD_S = 300.0
#: X does not say when a usage cap resets: look again after this long, per cap period.
USAGE_CAP_WAIT_S = {"Daily": 3600.0, "Monthly": 6 * 3600.0}
#: What X says when a self-serve reply goes to a post that did not summon the brand.
_NOT_SUMMONED = "not been mentioned or otherwise engaged"
_STALE_ID = re.compile(r"larger than (\d+)")

Stream = Literal["mentions", "search"]


def base_url_middleware(base_url: str) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware sending requests meant for X's API host to ``base_url``.

    ``base_url`` may carry a path prefix (``http://127.0.0.1:8765/x``): a request for
    ``https://api.twitter.com/2/tweets`` goes to ``http://127.0.0.1:8765/x/2/tweets``, query and
    all. Requests to other hosts pass untouched. (An OAuth 1.0a signature still names
    api.twitter.com; only a stand-in that does not check signatures accepts it.)
    """
    target = URL(base_url.rstrip("/"))
    if not target.scheme or not target.host:
        raise ValueError(f"base_url must be an absolute URL, not {base_url!r}")
    prefix = target.raw_path.rstrip("/")

    async def to_base_url(
        req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        url = req.url
        if url.host in X_API_HOSTS:
            req.url = URL.build(
                scheme=target.scheme,
                host=target.raw_host or "",
                port=target.explicit_port,
                path=prefix + url.raw_path,
                query_string=url.raw_query_string,
                encoded=True,
            )
            req.headers["Host"] = req.url.host_port_subcomponent or req.url.raw_host or ""
        return await handler(req)

    return to_base_url


class XConnector:
    """Reads the brand's mentions and a search query; posts approved replies."""

    name: ClassVar[str] = "x"
    channel: ClassVar[Channel] = "x"

    class Config(ConnectorConfig):
        """Settings of an X source."""

        #: App-only bearer token: reads mentions and search.
        bearer_token: Credential
        #: The brand account's numeric id (whose mentions are read); found with
        #: ``/2/users/me`` when unset and user-context credentials are given.
        user_id: str | None = Field(default=None, pattern=r"^\d+$")
        #: A recent-search query (X's query language), e.g. ``acme -is:retweet``.
        search_query: str | None = Field(default=None, min_length=1, max_length=512)
        #: Posts per page (mentions: 5..100; search asks for at least 10).
        max_results: int = Field(default=100, ge=5, le=100)
        #: Pages per stream in one fetch; the rest comes with the next (``Batch.more``).
        max_pages: int = Field(default=5, ge=1, le=100)
        #: Where X's API is; the sandbox is ``http://HOST:PORT/x``.
        base_url: str = TWEEPY_ORIGIN
        #: OAuth 2.0 user-context access token (``tweet.write``), needed to reply.
        user_access_token: Credential | None = None
        #: The app's OAuth 2.0 client id and, for a confidential client, its secret; with
        #: ``refresh_token`` (granted with ``offline.access``) an expired user token is renewed.
        client_id: str | None = Field(default=None, min_length=1)
        client_secret: Credential | None = None
        refresh_token: Credential | None = None
        #: OAuth 1.0a user context, the other way to reply (all four or none).
        consumer_key: Credential | None = None
        consumer_secret: Credential | None = None
        access_token: Credential | None = None
        access_token_secret: Credential | None = None

        @model_validator(mode="after")
        def _coherent(self) -> XConnector.Config:
            oauth1 = (self.consumer_key, self.consumer_secret, self.access_token)
            given = [v is not None for v in (*oauth1, self.access_token_secret)]
            if any(given) and not all(given):
                raise ValueError(
                    "OAuth 1.0a needs consumer_key, consumer_secret, access_token and "
                    "access_token_secret together"
                )
            if self.refresh_token is not None and self.client_id is None:
                raise ValueError("refresh_token needs the app's client_id")
            if self.refresh_token is not None and self.user_access_token is None:
                raise ValueError("refresh_token renews user_access_token: set both")
            user_context = all(given) or self.user_access_token is not None
            if self.user_id is None and self.search_query is None and not user_context:
                raise ValueError("set user_id (mentions) or search_query, or both")
            return self

    @staticmethod
    def session_middlewares(config: XConnector.Config) -> list[aiohttp.ClientMiddlewareType]:
        """Middlewares the core puts on this source's session: send tweepy to ``base_url``."""
        if config.base_url.rstrip("/") == TWEEPY_ORIGIN:
            return []
        return [base_url_middleware(config.base_url)]

    def __init__(
        self,
        config: Config,
        http: aiohttp.ClientSession,
        *,
        tokens: TokenStore | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.http = http
        #: Where refreshed user tokens are kept (the core's store; memory without one).
        self.tokens: TokenStore = tokens if tokens is not None else MemoryTokens()
        #: The time now (a test's fake clock), for the user token's expiry.
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._refreshing = asyncio.Lock()
        self._tokens_loaded = False
        #: When the user token in use expires; None while unknown (the configured token).
        self._expires_at: datetime | None = None
        self._reader = AsyncClient(
            bearer_token=config.bearer_token.get_secret_value(), return_type=dict
        )
        self._reader.session = http
        self._writer: Any = None
        self._writer_oauth1 = False
        if config.consumer_key is not None:
            assert config.consumer_secret and config.access_token and config.access_token_secret
            self._writer = AsyncClient(
                consumer_key=config.consumer_key.get_secret_value(),
                consumer_secret=config.consumer_secret.get_secret_value(),
                access_token=config.access_token.get_secret_value(),
                access_token_secret=config.access_token_secret.get_secret_value(),
                return_type=dict,
            )
            self._writer_oauth1 = True
        elif config.user_access_token is not None:
            self._writer = AsyncClient(
                bearer_token=config.user_access_token.get_secret_value(), return_type=dict
            )
        if self._writer is not None:
            self._writer.session = http
        self._user_id = config.user_id

    # -- fetching -----------------------------------------------------------------------------

    async def fetch(self, cursor: Cursor | None, resting: frozenset[str] = frozenset()) -> Batch:
        """Everything new in the mentions timeline and the search since ``cursor``; streams
        named in ``resting`` (backing off, as the core decided) are left for later."""
        state = dict(cursor or {})
        batch = Batch()
        # Ids delivered (or quarantined) lately: a post both streams find comes once.
        recent: list[str] = list(state.get("recent") or [])
        seen: dict[str, None] = dict.fromkeys(recent)
        streams: list[Stream] = []
        if await self._brand_id() is not None:
            streams.append("mentions")
        if self.config.search_query:
            streams.append("search")

        async def walk(stream: Stream) -> bool:
            state[stream], more = await self._walk(
                stream, dict(state.get(stream) or {}), batch, seen
            )
            return more

        batch.more = await walk_each(streams, walk, batch, resting=resting)
        batch.messages.sort(key=lambda m: (m.created_at, int(m.raw["id"])))
        fresh = list(seen)[len(recent) :]  # delivered or quarantined by this fetch
        state["recent"] = (fresh[::-1] + recent)[:RECENT_KEEP]
        batch.cursor = state
        return batch

    async def _walk(
        self, stream: Stream, state: dict[str, Any], batch: Batch, seen: dict[str, None]
    ) -> tuple[dict[str, Any], bool]:
        since: str | None = state.get("since_id")
        until: str | None = state.get("until_id")
        newest: str | None = state.get("newest_id")
        token: str | None = None
        restarted = False
        n = 0
        while n < self.config.max_pages:
            try:
                page = await self._page(stream, since, until, token)
                data, users, meta = _envelope(page)
            except _StaleBound as err:
                if n > 0 or restarted:
                    raise
                # Older than search serves (seven days): walk again from the oldest id X still
                # accepts; what lay between is gone from search (the mentions walk keeps its own).
                restarted = True
                since, until, newest = err.since_id, None, None
                continue
            except PASSING_ERRORS:
                if n == 0:
                    raise
                break  # keep the pages read; the next fetch goes on from ``until_id``
            n += 1
            if newest is None and meta.get("newest_id"):
                newest = str(meta["newest_id"])
            for item in data:
                self._collect(item, users, stream, batch, seen)
            if meta.get("oldest_id"):
                until = str(meta["oldest_id"])
            token = meta.get("next_token")
            if not token:
                return {"since_id": newest or since}, False
        return {"since_id": since, "until_id": until, "newest_id": newest}, True

    async def _page(
        self, stream: Stream, since: str | None, until: str | None, token: str | None
    ) -> Any:
        common: dict[str, Any] = {
            "since_id": since,
            "until_id": until,
            "expansions": ["author_id"],
            "tweet_fields": TWEET_FIELDS,
            "user_fields": USER_FIELDS,
            "user_auth": False,
        }
        if stream == "mentions":
            return await self._call(
                self._reader.get_users_mentions,
                self._user_id,
                max_results=self.config.max_results,
                pagination_token=token,
                **common,
            )
        return await self._call(
            self._reader.search_recent_tweets,
            self.config.search_query,
            max_results=max(10, self.config.max_results),
            next_token=token,
            **common,
        )

    def _collect(
        self,
        item: Any,
        users: dict[str, dict[str, Any]],
        stream: Stream,
        batch: Batch,
        seen: dict[str, None],
    ) -> None:
        ident = item.get("id") if isinstance(item, dict) else None
        if isinstance(ident, str) and ident in seen:
            return  # a mention that the search found too (``seen`` holds post ids)
        if isinstance(item, dict) and _is_retweet(item):
            # A retweet carries no words of its author's, only the original cut short: the
            # original comes by itself where it names us, and "RT @brand: ..." is our own.
            return
        raw = json.dumps(item, ensure_ascii=False, sort_keys=True, default=str)
        try:
            message = _message(item, users, direct=stream == "mentions")
        except (KeyError, TypeError, ValueError, ValidationError) as err:
            key = ident if isinstance(ident, str) else _digest(raw)
            if key not in seen:  # the other stream's copy is as broken: keep it once
                seen[key] = None
                batch.quarantined.append(
                    Quarantined(
                        external_id=ident if isinstance(ident, str) else None,
                        error=f"{type(err).__name__}: {err}",
                        raw=raw,
                    )
                )
            return
        seen[str(message.raw["id"])] = None
        for i, other in enumerate(batch.messages):
            if other.external_id == message.external_id:
                # Two versions of one post in one fetch: keep the latest edit.
                if int(message.raw["id"]) > int(other.raw["id"]):
                    batch.messages[i] = message
                return
        batch.messages.append(message)

    async def _brand_id(self) -> str | None:
        if self._user_id is None and self._writer is not None:
            body = await self._as_user(self._writer.get_me, user_auth=self._writer_oauth1)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, dict) or not str(data.get("id", "")).isdigit():
                raise MalformedPayload(f"/2/users/me answered without a user id: {body!r:.200}")
            self._user_id = str(data["id"])
        return self._user_id

    # -- replying -----------------------------------------------------------------------------

    async def send(self, reply: OutboundReply) -> SentReceipt:
        """Post ``reply`` as an answer to the post it replies to."""
        if self._writer is None:
            raise AuthError(
                "replying on X needs user context: set user_access_token or the OAuth 1.0a keys"
            )
        body = await self._as_user(
            self._writer.create_tweet,
            text=reply.text,
            in_reply_to_tweet_id=reply.in_reply_to,
            user_auth=self._writer_oauth1,
        )
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise MalformedPayload(f"POST /2/tweets answered without an id: {body!r:.200}")
        return SentReceipt(external_id=data["id"], url=f"https://x.com/i/web/status/{data['id']}")

    @classmethod
    def check_reply(cls, config: Config, reply: OutboundReply) -> list[ReplyIssue]:
        """X's constraints on a reply, known before approval: its length, and whether X may
        refuse it because the post did not mention or quote the brand (self-serve tiers)."""
        issues: list[ReplyIssue] = []
        weight = post_weight(reply.text)
        if weight > MAX_POST_WEIGHT:
            issues.append(
                ReplyIssue(
                    reason=f"X takes at most {MAX_POST_WEIGHT} characters in a post; this reply "
                    f"counts {weight} (links count 23, CJK and emoji 2)",
                    blocking=True,
                )
            )
        if reply.original and not _summons(reply.original, config.user_id):
            issues.append(
                ReplyIssue(
                    reason="X may refuse a reply to a post that did not mention @brand or quote "
                    "one of its posts (self-serve API tiers allow only replies the author "
                    "summoned)",
                )
            )
        return issues

    # -- user context -------------------------------------------------------------------------

    async def _as_user(
        self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        """A user-context call; an expired OAuth 2.0 token is renewed once and the call made
        again (a 401 means X did nothing, so nothing is done twice)."""
        await self._load_tokens()
        used = getattr(self._writer, "bearer_token", None)
        if self._expiring():
            try:
                await self._refresh(used)
            except RetryableError:
                if self._expires_at is not None and self.clock() >= self._expires_at:
                    raise
                # X's token endpoint is down, but the token still works a little longer.
            used = self._writer.bearer_token
        try:
            return await self._call(method, *args, **kwargs)
        except _Unauthorized:
            if self._writer_oauth1 or self.config.refresh_token is None:
                raise
        await self._refresh(used)
        return await self._call(method, *args, **kwargs)

    def _expiring(self) -> bool:
        """Whether the OAuth 2.0 user token is due for renewal (its expiry known and near)."""
        if self._writer_oauth1 or self.config.refresh_token is None or self._expires_at is None:
            return False
        return self.clock() >= self._expires_at - timedelta(seconds=REFRESH_AHEAD_S)

    def _use(self, tokens: TokenSet) -> None:
        """Make ``tokens`` the pair user-context calls go out with."""
        self._writer.bearer_token = tokens.access_token.get_secret_value()
        expires = tokens.expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)  # a store that drops the zone keeps UTC
        self._expires_at = expires

    async def _load_tokens(self) -> None:
        """Take the newest tokens the store has (a refresh before a restart rotated them)."""
        if self._tokens_loaded or self._writer is None or self._writer_oauth1:
            return
        saved = await self.tokens.load()
        if saved is not None:
            self._use(saved)
        self._tokens_loaded = True

    async def _refresh(self, used: str | None) -> None:
        """Run the refresh grant once for everyone who saw ``used`` expire."""
        async with self._refreshing:
            saved = await self.tokens.load()
            if saved is not None and saved.access_token.get_secret_value() != used:
                self._use(saved)
                return  # renewed meanwhile (another call, another daemon)
            if self._writer.bearer_token != used:
                return
            refresh = (saved.refresh_token if saved is not None else None) or (
                self.config.refresh_token
            )
            assert refresh is not None and self.config.client_id is not None
            try:
                fresh = await self._grant(refresh.get_secret_value())
            except AuthError:
                # Another daemon on the same store may have used this refresh token a moment
                # ago: X then refuses it here, and the store has the pair it got.
                again = await self.tokens.load()
                if again is None or again.access_token.get_secret_value() == used:
                    raise
                self._use(again)
                return
            await self.tokens.save(fresh)  # before use: the old refresh token is dead now
            self._use(fresh)

    async def _grant(self, refresh_token: str) -> TokenSet:
        """``POST /2/oauth2/token`` with ``grant_type=refresh_token``."""
        assert self.config.client_id is not None
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        headers: dict[str, str] = {}
        if self.config.client_secret is not None:
            pair = f"{self.config.client_id}:{self.config.client_secret.get_secret_value()}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.config.client_id
        try:
            async with self.http.post(TOKEN_URL, data=form, headers=headers) as resp:
                status = resp.status
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                rate_headers = dict(resp.headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            raise RetryableError(
                f"X unreachable for a token refresh: {err!r}", not_sent=True
            ) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise RetryableError(f"X token refresh failed: {err!r}", not_sent=True) from err
        if status in (400, 401, 403):
            error = body.get("error") if isinstance(body, dict) else None
            raise AuthError(
                f"X refused to renew the user token ({error or status}): authorise the app "
                "again and set a new refresh_token"
            )
        found = error_for_status(status, rate_headers, "token refresh")
        if found is not None:
            if isinstance(found, RetryableError):
                found.not_sent = True
            raise found
        try:
            access = str(body["access_token"])
            rotated = body.get("refresh_token")
            ttl = float(body.get("expires_in", 7200))
        except (KeyError, TypeError, ValueError) as err:
            raise MalformedPayload("X's token answer has no access_token") from err
        return TokenSet(
            access_token=SecretStr(access),
            refresh_token=SecretStr(str(rotated)) if rotated else SecretStr(refresh_token),
            expires_at=self.clock() + timedelta(seconds=ttl),
        )

    # -- errors -------------------------------------------------------------------------------

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Call tweepy and sort what goes wrong where it enters."""
        try:
            return await method(*args, **kwargs)
        except tweepy.TooManyRequests as err:
            body = await _problem(err)
            if str(body.get("type", "")).endswith("/usage-capped"):
                # A usage cap is not a 15-minute window: the reset headers would bring us back
                # to the same refusal every quarter hour for the rest of the month.
                period = str(body.get("period", "Monthly"))
                raise RetryableError(
                    f"X usage cap reached ({period} {body.get('scope', 'Product')} cap): "
                    f"{body.get('detail', err)}",
                    USAGE_CAP_WAIT_S.get(period, USAGE_CAP_WAIT_S["Monthly"]),
                    not_sent=True,
                ) from err
            raise RetryableError(
                f"X rate limit: {err}", retry_after_s(err.response.headers), not_sent=True
            ) from err
        except tweepy.Unauthorized as err:
            raise _Unauthorized(f"X refused the credentials: {err}") from err
        except tweepy.Forbidden as err:
            raise await _forbidden(err) from err
        except tweepy.TwitterServerError as err:
            raise RetryableError(
                f"X server error: {err}", retry_after_s(err.response.headers)
            ) from err
        except tweepy.BadRequest as err:
            stale = _stale_bound(await _problem(err))
            if stale is not None:
                raise stale from err
            raise FatalError(f"X refused the request: {err}") from err
        except tweepy.NotFound as err:
            raise FatalError(f"X refused the request: {err}") from err
        except tweepy.HTTPException as err:
            status = int(err.response.status)
            raise (
                error_for_status(status, err.response.headers, str(err))
                or MalformedPayload(f"unexpected X answer: {err}")
            ) from err
        except aiohttp.ContentTypeError as err:
            # tweepy reads every answer as JSON, errors too: an HTML page lands here.
            found = error_for_status(err.status, err.headers or {}, err.message)
            raise (found or MalformedPayload(f"X answered with non-JSON: {err.message}")) from err
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            raise RetryableError(f"X unreachable: {err!r}", not_sent=True) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise RetryableError(f"X request failed: {err!r}") from err
        except ValueError as err:  # JSON that does not parse (a cut-off answer)
            raise MalformedPayload(f"X answered with broken JSON: {err}") from err


class _Unauthorized(AuthError):
    """A real 401: for a user token, the sign that it expired."""


class _StaleBound(FatalError):
    """Search refused a ``since_id``/``until_id`` older than it serves; ``since_id`` is the
    smallest id X said it accepts, if it said."""

    def __init__(self, message: str, since_id: str | None) -> None:
        super().__init__(message)
        self.since_id = since_id


async def _problem(err: tweepy.HTTPException) -> dict[str, Any]:
    """The problem JSON of an error answer, or {}."""
    try:
        body = await err.response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return {}
    return body if isinstance(body, dict) else {}


def _stale_bound(body: dict[str, Any]) -> _StaleBound | None:
    """A 400 naming ``since_id``/``until_id`` as older than search serves, sorted out."""
    for error in body.get("errors") or []:
        if not isinstance(error, dict):
            continue
        params = error.get("parameters") or {}
        message = str(error.get("message", ""))
        if ("since_id" in params or "until_id" in params) and "created after" in message:
            found = _STALE_ID.search(message)
            return _StaleBound(f"X search: {message}", found.group(1) if found else None)
    return None


async def _forbidden(err: tweepy.Forbidden) -> ConnectorError:
    """A 403: the credentials work, but X will not do this; its reason goes with the error."""
    body = await _problem(err)
    detail = str(body.get("detail", "")) or str(err)
    if _NOT_SUMMONED in detail:
        return ForbiddenError(
            "X refused the reply: the post did not mention or quote the brand, and self-serve "
            f"API tiers only allow replies the author summoned ({detail})"
        )
    return ForbiddenError(f"X refused: {detail}")


def _summons(post: dict[str, Any], brand_id: str | None) -> bool:
    """Whether a post (X's payload) mentions the brand's account or quotes a post."""
    note = post.get("note_tweet")
    for holder in (post, note if isinstance(note, dict) else {}):
        entities = holder.get("entities")
        mentions = entities.get("mentions") if isinstance(entities, dict) else None
        for mention in mentions if isinstance(mentions, list) else []:
            if isinstance(mention, dict) and brand_id is not None and mention.get("id") == brand_id:
                return True
    return False


def _is_retweet(item: dict[str, Any]) -> bool:
    """A plain retweet (a quote is the quoter's own words, and stays)."""
    refs = item.get("referenced_tweets")
    return isinstance(refs, list) and any(
        isinstance(ref, dict) and ref.get("type") == "retweeted" for ref in refs
    )


def _whole_text(item: dict[str, Any]) -> Any:
    """A post's text: for a long post (over 280), X cuts ``text`` short and sends the whole in
    ``note_tweet.text`` (data dictionary, "note_tweet")."""
    note = item.get("note_tweet")
    if isinstance(note, dict) and isinstance(note.get("text"), str) and note["text"].strip():
        return note["text"]
    return item["text"]


def _digest(raw: str) -> str:
    """A stable key for a broken post that has no id."""
    return "sha1:" + hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()[:20]


def _envelope(page: Any) -> tuple[list[Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """The page's posts, its users by id and its meta, or MalformedPayload."""
    if not isinstance(page, dict) or not isinstance(page.get("meta"), dict):
        raise MalformedPayload(f"X page without meta: {str(page)[:200]}")
    meta: dict[str, Any] = page["meta"]
    data = page.get("data", [])
    if not isinstance(data, list) or (not data and meta.get("result_count")):
        raise MalformedPayload(f"X page without data: {str(page)[:200]}")
    users: dict[str, dict[str, Any]] = {}
    includes = page.get("includes")
    if isinstance(includes, dict) and isinstance(includes.get("users"), list):
        for user in includes["users"]:
            if isinstance(user, dict) and isinstance(user.get("id"), str):
                users[user["id"]] = user
    return data, users, meta


def _message(item: Any, users: dict[str, dict[str, Any]], *, direct: bool) -> InboundMessage:
    if not isinstance(item, dict):
        raise TypeError(f"a post is an object, not {type(item).__name__}")
    ident = item["id"]
    if not isinstance(ident, str) or not ident.isdigit():
        raise ValueError(f"bad post id {ident!r}")
    history = item.get("edit_history_tweet_ids") or [ident]
    if not isinstance(history, list) or not all(
        isinstance(h, str) and h.isdigit() for h in history
    ):
        raise ValueError(f"bad edit_history_tweet_ids {history!r}")
    first = history[0]
    author_id = item.get("author_id")
    user = users.get(author_id, {}) if isinstance(author_id, str) else {}
    metrics = user.get("public_metrics") or {}
    username = user.get("username")
    author = Author(
        user_id=author_id,
        handle=username,
        name=user.get("name"),
        followers=metrics.get("followers_count"),
        verified=bool(user.get("verified", False)),
    )
    created = item.get("created_at")
    replied_to = next(
        (
            str(ref["id"])
            for ref in item.get("referenced_tweets") or []
            if isinstance(ref, dict) and ref.get("type") == "replied_to"
        ),
        None,
    )
    extra: dict[str, Any] = {}
    if created is not None:
        extra["created_at"] = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    return InboundMessage(
        channel="x",
        external_id=first,  # an edit is the same message as the post it edits
        edited=first != ident,
        # X escapes "&", "<" and ">" as HTML entities; people wrote the characters.
        text=html.unescape(_whole_text(item)),
        author=author,
        lang=item.get("lang"),
        in_reply_to=replied_to,
        conversation_id=item.get("conversation_id"),
        url=f"https://x.com/{username}/status/{ident}"
        if username
        else f"https://x.com/i/web/status/{ident}",
        direct=direct,
        raw=item,
        **extra,
    )
