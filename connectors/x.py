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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar, Literal

import aiohttp
import tweepy
from pydantic import Field, ValidationError, model_validator
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
    InboundMessage,
    MalformedPayload,
    OutboundReply,
    Quarantined,
    RetryableError,
    SentReceipt,
    error_for_status,
    retry_after_s,
    walk_each,
)

#: The origin tweepy sends every request to, and X's current name for it.
TWEEPY_ORIGIN = "https://api.twitter.com"
X_API_HOSTS = frozenset({"api.twitter.com", "api.x.com"})
TWEET_FIELDS = [
    "author_id",
    "conversation_id",
    "created_at",
    "lang",
    "public_metrics",
    "referenced_tweets",
]
USER_FIELDS = ["name", "username", "public_metrics", "verified"]
#: Post ids remembered in the cursor, newest first (see ``fetch``).
RECENT_KEEP = 300
#: Problem types of a 403 that concern one post or one request, not the credentials.
_NOT_AUTH_403 = ("not-authorized-for-resource", "resource-not-found", "invalid-request")

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

    def __init__(self, config: Config, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http
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

    async def fetch(self, cursor: Cursor | None) -> Batch:
        """Everything new in the mentions timeline and the search since ``cursor``."""
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

        batch.more = await walk_each(streams, walk, batch)
        batch.messages.sort(key=lambda m: (m.created_at, int(m.external_id)))
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
        for n in range(self.config.max_pages):
            try:
                page = await self._page(stream, since, until, token)
                data, users, meta = _envelope(page)
            except PASSING_ERRORS:
                if n == 0:
                    raise
                break  # keep the pages read; the next fetch goes on from ``until_id``
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
            return  # a mention that the search found too
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
        seen[message.external_id] = None
        batch.messages.append(message)

    async def _brand_id(self) -> str | None:
        if self._user_id is None and self._writer is not None:
            body = await self._call(self._writer.get_me, user_auth=self._writer_oauth1)
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
        body = await self._call(
            self._writer.create_tweet,
            text=reply.text,
            in_reply_to_tweet_id=reply.in_reply_to,
            user_auth=self._writer_oauth1,
        )
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise MalformedPayload(f"POST /2/tweets answered without an id: {body!r:.200}")
        return SentReceipt(external_id=data["id"], url=f"https://x.com/i/web/status/{data['id']}")

    # -- errors -------------------------------------------------------------------------------

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Call tweepy and sort what goes wrong where it enters."""
        try:
            return await method(*args, **kwargs)
        except tweepy.TooManyRequests as err:
            raise RetryableError(
                f"X rate limit: {err}", retry_after_s(err.response.headers), not_sent=True
            ) from err
        except tweepy.Unauthorized as err:
            raise AuthError(f"X refused the credentials: {err}") from err
        except tweepy.Forbidden as err:
            raise await _forbidden(err) from err
        except tweepy.TwitterServerError as err:
            raise RetryableError(
                f"X server error: {err}", retry_after_s(err.response.headers)
            ) from err
        except (tweepy.BadRequest, tweepy.NotFound) as err:
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


async def _forbidden(err: tweepy.Forbidden) -> ConnectorError:
    """A 403 is about the credentials unless X says it is about this post or request."""
    try:
        body = await err.response.json(content_type=None)
    except ValueError:
        body = None
    kind = str(body.get("type", "")) if isinstance(body, dict) else ""
    detail = str(body.get("detail", "")) if isinstance(body, dict) else str(err)
    if kind.endswith(_NOT_AUTH_403) or "duplicate content" in detail:
        return FatalError(f"X refused: {detail or err}")
    return AuthError(f"X forbids it: {detail or err}")


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
        external_id=ident,
        text=item["text"],
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
