"""Reddit: a keyword search of new posts and the new comments of some subreddits; replies.

Plain aiohttp on the core's session. The connector gets its own OAuth token (a script app's
``grant_type=password``, or ``client_credentials`` for read-only use) from ``auth_url`` and
calls the API at ``api_url`` (``https://www.reddit.com`` and ``https://oauth.reddit.com`` in
the real world). A token is renewed when it is about to expire; a token the API refuses is
dropped and the fetch fails as retryable, so the next call gets a fresh one (no sleeping).

The streams are ``search`` and one ``r/<name>`` per subreddit (its new comments), so a
private, quarantined (403) or banned (404) subreddit fails alone, by name. Listings come
newest first. The cursor keeps, per stream, a mark (the ``created_utc`` of the newest item
stored) and ``seen``, the fullnames stored at or after ``mark - overlap``::

    {"search": {"mark_utc": 1772447252.56, "seen": {"t3_1jcynks": 1772447252.56}}}

A walk reads pages (``after=<fullname>``) until it meets an item older than ``mark -
overlap``; ``seen`` keeps a re-read from storing anything twice. The search's overlap is
``search_overlap_s``, because Reddit's search index shows posts late; a subreddit's comments
have none. When ``max_pages`` stops a walk early, the cursor also keeps where to go on
(``after``) and what this walk stored (``pending``), and ``Batch.more`` says so. A walk that
runs off the end of a listing (Reddit serves about 1000 items) without meeting what the last
walk stored reports the gap in ``Batch.gaps``. Deleted and removed items (``[deleted]``,
``[removed]``) are not stored. Items too broken to place in time are quarantined once and
remembered in ``skip``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiohttp
from pydantic import Field, ValidationError, model_validator

from socialcrm.connector import (
    PASSING_ERRORS,
    AuthError,
    Author,
    Batch,
    Channel,
    ConnectorConfig,
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
    walk_each,
)

#: Renew a token this long before Reddit says it expires.
TOKEN_MARGIN_S = 60.0
#: Unreadable items remembered (so each is quarantined once), newest first.
SKIP_KEEP = 100
#: Fullnames remembered per stream (those in the overlap window), newest kept.
SEEN_KEEP = 2000
#: Reddit's required User-Agent shape (github.com/reddit-archive/reddit/wiki/API, "Rules").
USER_AGENT_PATTERN = r"^[\w.-]+:[\w.-]+:v?[\w.+-]+ \(by /u/[\w-]{3,20}\)$"
VERSION = "0.1"
#: Bodies of deleted and removed posts and comments: the platform's words, not a customer's.
GONE_TEXTS = frozenset({"[deleted]", "[removed]"})
#: Reddit serves about this many items of any listing, however far ``after`` goes.
LISTING_CAP = 1000


class RedditConnector:
    """Reads new posts matching a query and new comments in some subreddits; replies."""

    name: ClassVar[str] = "reddit"
    channel: ClassVar[Channel] = "reddit"

    class Config(ConnectorConfig):
        """Settings of a Reddit source (a "script" app acting as the brand's account)."""

        client_id: str = Field(min_length=1)
        client_secret: Credential
        #: The brand's account; without it the token is app-only and replies are impossible.
        username: str | None = None
        password: Credential | None = None
        #: Reddit requires ``<platform>:<app ID>:<version> (by /u/<username>)`` and throttles
        #: or blocks anything generic; without it, one is made from ``username``.
        user_agent: str | None = Field(default=None, pattern=USER_AGENT_PATTERN)
        auth_url: str = "https://www.reddit.com"
        api_url: str = "https://oauth.reddit.com"
        #: Search of new posts, site-wide (Reddit's search syntax).
        query: str | None = Field(default=None, min_length=1, max_length=512)
        #: Subreddits whose new comments are read (without ``r/``).
        subreddits: list[str] = Field(default_factory=list)
        #: A comment is kept when it contains one of these (case-insensitive); ``None`` takes
        #: the words of ``query``, an empty list keeps every comment.
        keywords: list[str] | None = None
        #: Items per page (Reddit's maximum is 100).
        limit: int = Field(default=100, ge=1, le=100)
        #: Pages per stream in one fetch; the rest comes with the next (``Batch.more``).
        max_pages: int = Field(default=5, ge=1, le=100)
        #: The search is read again this far below its newest post each time: Reddit's search
        #: index shows posts late, and a strict mark would skip them (repeats are dropped).
        search_overlap_s: float = Field(default=900.0, ge=0)
        timeout_s: float = Field(default=30.0, gt=0)

        @model_validator(mode="after")
        def _coherent(self) -> RedditConnector.Config:
            if (self.username is None) != (self.password is None):
                raise ValueError("username and password go together (a script app)")
            if self.query is None and not self.subreddits:
                raise ValueError("set query (posts), subreddits (comments), or both")
            if self.user_agent is None and self.username is None:
                raise ValueError(
                    "set user_agent to '<platform>:<app ID>:<version> (by /u/<your username>)'"
                    " as Reddit requires"
                )
            return self

        def agent(self) -> str:
            """The User-Agent sent: the configured one, else made in Reddit's format."""
            if self.user_agent is not None:
                return self.user_agent
            return f"python:socialcrm:{VERSION} (by /u/{self.username})"

    def __init__(self, config: Config, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http
        self._api = config.api_url.rstrip("/")
        self._token: str | None = None
        self._token_expires = 0.0
        if config.keywords is not None:
            words = config.keywords
        else:
            words = [
                w
                for w in re.findall(r'[^\s"()]+', config.query or "")
                if w.upper() not in ("OR", "AND", "NOT") and ":" not in w
            ]
        self._keywords = [w.lower() for w in words if w.strip()]
        subs = [s.strip().removeprefix("/").removeprefix("r/") for s in config.subreddits]
        self._subreddits = list(dict.fromkeys(s for s in subs if s))

    # -- fetching -----------------------------------------------------------------------------

    def streams(self) -> list[str]:
        """The source's streams: ``search`` and one ``r/<name>`` per subreddit."""
        out = ["search"] if self.config.query else []
        return out + [f"r/{sub}" for sub in self._subreddits]

    async def fetch(self, cursor: Cursor | None, resting: frozenset[str] = frozenset()) -> Batch:
        """Everything new in the search and each subreddit's comments since ``cursor``.

        Each subreddit is a stream of its own: a private, quarantined or banned one fails
        alone (``Batch.stream_errors``) and the others are read as usual."""
        state = dict(cursor or {})
        legacy = state.pop("comments", None)
        batch = Batch()
        streams = self.streams()
        for stream in streams:
            if stream != "search" and stream not in state and isinstance(legacy, dict):
                # Before each subreddit was a stream, they shared one mark: each starts there.
                state[stream] = {k: v for k, v in legacy.items() if k in ("mark_utc", "mark_ids")}

        async def walk(stream: str) -> bool:
            state[stream], more = await self._walk(stream, dict(state.get(stream) or {}), batch)
            return more

        batch.more = await walk_each(streams, walk, batch, resting=resting)
        batch.messages.sort(key=lambda m: m.created_at)
        batch.cursor = state
        return batch

    async def _walk(
        self, stream: str, state: dict[str, Any], batch: Batch
    ) -> tuple[dict[str, Any], bool]:
        """Read one stream's pages, newest first, down to its mark.

        The mark is the newest ``created_utc`` stored; ``seen`` keeps the fullnames stored at
        or after ``mark - overlap`` so a re-read of the overlap window stores nothing twice.
        The search re-reads ``search_overlap_s`` below its mark, because Reddit's search index
        shows posts minutes late; a subreddit's comments listing does not lag."""
        mark: float | None = state.get("mark_utc")
        seen: dict[str, float] = dict(state.get("seen") or {})
        if not seen and mark is not None:
            seen = {k: float(mark) for k in state.get("mark_ids") or []}
        after: str | None = state.get("after")
        pending: dict[str, float] = dict(state.get("pending") or {})
        #: The walk met an item the last walk stored: nothing between them is missing.
        joined: bool = bool(state.get("joined"))
        skip: list[str] = list(state.get("skip") or [])
        overlap = self.config.search_overlap_s if stream == "search" else 0.0
        floor = None if mark is None else mark - overlap
        if stream == "search":
            path = "/search"
            params = {"q": self.config.query or "", "sort": "new", "type": "link"}
        else:
            path = f"/{stream}/comments"
            params = {}
        params.update(limit=str(self.config.limit), raw_json="1")
        for n in range(self.config.max_pages):
            try:
                listing = await self._get(path, {**params, **({"after": after} if after else {})})
                children, next_after = _children(listing)
            except PASSING_ERRORS:
                if n == 0:
                    raise
                break  # keep the pages read; the next fetch goes on ``after`` them
            reached = False
            for child in children:
                name, created = _peek(child)
                key = name or _digest(child)
                if created is None:
                    # Unplaceable in time: quarantine it once, and remember it.
                    if key not in skip:
                        skip = [key, *skip][:SKIP_KEEP]
                        self._collect(child, stream, batch)
                    continue
                if floor is not None and created < floor:
                    reached = True
                    break
                if key in seen:
                    joined = True
                    continue
                if key in pending:
                    continue
                pending[key] = created
                self._collect(child, stream, batch)
            if reached or not next_after:
                if not reached and not joined and floor is not None:
                    # The listing ran out before it came back to what the last walk stored:
                    # Reddit serves only about LISTING_CAP items, the rest is out of reach.
                    batch.gaps[stream] = (
                        f"Reddit's listing of {stream} ended before it reached the items read "
                        f"last time (it serves about {LISTING_CAP}); the ones between are lost"
                    )
                merged = {**seen, **pending}
                top = max([mark or 0.0, *merged.values()]) if merged or mark else None
                if top is not None:
                    low = top - overlap
                    merged = {k: c for k, c in merged.items() if c >= low}
                    if len(merged) > SEEN_KEEP:
                        keep = sorted(merged.items(), key=lambda kv: kv[1])[-SEEN_KEEP:]
                        merged = dict(keep)
                return {"mark_utc": top, "seen": merged, "skip": skip}, False
            after = next_after
        return {
            "mark_utc": mark,
            "seen": seen,
            "after": after,
            "pending": pending,
            "joined": joined,
            "skip": skip,
        }, True

    def _collect(self, child: Any, stream: str, batch: Batch) -> None:
        data = child.get("data") if isinstance(child, dict) else None
        name = data.get("name") if isinstance(data, dict) else None
        try:
            message = self._message(child)
        except (KeyError, TypeError, ValueError, ValidationError) as err:
            batch.quarantined.append(
                Quarantined(
                    external_id=name if isinstance(name, str) else None,
                    error=f"{type(err).__name__}: {err}",
                    raw=json.dumps(child, ensure_ascii=False, default=str),
                )
            )
            return
        if message is None:
            return  # deleted or removed: nothing a customer said is left
        if stream != "search" and self._keywords:
            low = message.text.lower()
            if not any(k in low for k in self._keywords):
                return
        batch.messages.append(message)

    def _message(self, child: Any) -> InboundMessage | None:
        if not isinstance(child, dict) or not isinstance(child.get("data"), dict):
            raise TypeError("a listing child is {kind, data}")
        kind, data = child.get("kind"), child["data"]
        name = data["name"]
        if kind not in ("t1", "t3") or not isinstance(name, str) or not name.startswith(kind):
            raise ValueError(f"not a post or comment: {kind!r} {name!r}")
        created = datetime.fromtimestamp(float(data["created_utc"]), UTC)
        author = data.get("author")
        body = data.get("selftext") if kind == "t3" else data["body"]
        if isinstance(body, str) and body.strip() in GONE_TEXTS:
            # A deleted or removed item keeps its place in the listing with Reddit's own
            # placeholder; it is not stored, so it never replaces what the customer wrote.
            return None
        if kind == "t3":
            title = data["title"]
            text = body or title
            subject, in_reply_to, conversation = title, None, name
        else:
            text = body
            subject, in_reply_to, conversation = None, data.get("parent_id"), data.get("link_id")
        username = self.config.username
        direct = bool(
            username and isinstance(text, str) and f"u/{username}".lower() in text.lower()
        )
        permalink = data.get("permalink")
        return InboundMessage(
            channel="reddit",
            external_id=name,
            text=text,
            subject=subject,
            author=Author(
                user_id=data.get("author_fullname"),
                handle=author if author and author != "[deleted]" else None,
            ),
            created_at=created,
            in_reply_to=in_reply_to,
            conversation_id=conversation,
            url=f"https://www.reddit.com{permalink}" if permalink else None,
            direct=direct,
            raw={"kind": kind, "data": data},
        )

    # -- replying -----------------------------------------------------------------------------

    @classmethod
    def sends_with(cls, config: Config) -> bool:
        """Only the brand's account can comment: a read-only app (no username) cannot."""
        return config.username is not None

    async def send(self, reply: OutboundReply) -> SentReceipt:
        """Post ``reply`` as a comment under the post or comment it answers."""
        if self.config.username is None:
            raise AuthError("replying on Reddit needs the account: set username and password")
        answer = await self._call(
            "POST",
            "/api/comment",
            data={"thing_id": reply.in_reply_to, "text": reply.text, "api_type": "json"},
        )
        body = answer.get("json") if isinstance(answer, dict) else None
        if not isinstance(body, dict):
            raise MalformedPayload(f"Reddit's comment answer has no json: {str(answer)[:200]}")
        errors = body.get("errors") or []
        if errors:
            raise _comment_error(errors)
        try:
            data = body["data"]["things"][0]["data"]
            name = str(data["name"])
        except (KeyError, IndexError, TypeError) as err:
            raise MalformedPayload(f"Reddit's comment answer has no thing: {body!r:.200}") from err
        permalink = data.get("permalink")
        return SentReceipt(
            external_id=name, url=f"https://www.reddit.com{permalink}" if permalink else None
        )

    # -- HTTP, tokens and errors --------------------------------------------------------------

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        return await self._call("GET", path, params=params)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
    ) -> Any:
        fresh = self._token is None or time.monotonic() >= self._token_expires
        token = await self._access_token()
        headers = {"Authorization": f"bearer {token}", "User-Agent": self.config.agent()}
        status, resp_headers, body, content_type = await self._request(
            method, self._api + path, params=params, data=data, headers=headers
        )
        if status == 401:
            self._token = None
            if fresh:
                raise AuthError(f"Reddit refused a new token: {_detail(body)}")
            # An old token the API no longer takes: the next call gets a new one.
            raise RetryableError("Reddit token expired", 0.0, not_sent=True)
        problem = error_for_status(status, resp_headers, _detail(body))
        if problem is not None:
            raise problem
        return _json(body, content_type)

    async def _access_token(self) -> str:
        if self._token is not None and time.monotonic() < self._token_expires:
            return self._token
        cfg = self.config
        secret = f"{cfg.client_id}:{cfg.client_secret.get_secret_value()}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(secret).decode("ascii"),
            "User-Agent": cfg.agent(),
        }
        if cfg.username is not None and cfg.password is not None:
            form = {
                "grant_type": "password",
                "username": cfg.username,
                "password": cfg.password.get_secret_value(),
            }
        else:
            form = {"grant_type": "client_credentials"}
        status, resp_headers, body, content_type = await self._request(
            "POST", cfg.auth_url.rstrip("/") + "/api/v1/access_token", data=form, headers=headers
        )
        problem = error_for_status(status, resp_headers, _detail(body))
        if problem is not None:
            raise problem
        answer = _json(body, content_type)
        if not isinstance(answer, dict):
            raise MalformedPayload(f"Reddit's token answer is not an object: {_detail(body)}")
        if "error" in answer:
            # A wrong password is a 200 with {"error": "invalid_grant"}.
            raise AuthError(f"Reddit refused the credentials: {answer['error']}")
        token, expires_in = answer.get("access_token"), answer.get("expires_in", 3600)
        if not isinstance(token, str) or not isinstance(expires_in, int | float):
            raise MalformedPayload(f"Reddit's token answer has no token: {_detail(body)}")
        self._token = token
        self._token_expires = time.monotonic() + max(0.0, float(expires_in) - TOKEN_MARGIN_S)
        return token

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
    ) -> tuple[int, Any, bytes, str]:
        try:
            async with self.http.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            ) as resp:
                return resp.status, resp.headers, await resp.read(), resp.content_type
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            raise RetryableError(f"Reddit unreachable: {err!r}", not_sent=True) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise RetryableError(f"Reddit request failed: {err!r}") from err


def _json(body: bytes, content_type: str) -> Any:
    if "json" not in content_type:
        raise MalformedPayload(f"Reddit answered {content_type}, not JSON: {_detail(body)}")
    try:
        return json.loads(body)
    except ValueError as err:
        raise MalformedPayload(f"Reddit answered with broken JSON: {err}") from err


def _children(listing: Any) -> tuple[list[Any], str | None]:
    """A Listing's children and its ``after``, or MalformedPayload."""
    if not isinstance(listing, dict) or listing.get("kind") != "Listing":
        raise MalformedPayload(f"not a Listing: {str(listing)[:200]}")
    data = listing.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("children"), list):
        raise MalformedPayload(f"a Listing without children: {str(listing)[:200]}")
    after = data.get("after")
    return data["children"], after if isinstance(after, str) and after else None


def _peek(child: Any) -> tuple[str | None, float | None]:
    """A child's fullname and time, when they can be read (a broken child may lack them)."""
    data = child.get("data") if isinstance(child, dict) else None
    if not isinstance(data, dict):
        return None, None
    name = data.get("name") if isinstance(data.get("name"), str) else None
    created = data.get("created_utc")
    return name, float(created) if isinstance(created, int | float) else None


def _digest(child: Any) -> str:
    """A stable name for a child that has none."""
    text = json.dumps(child, sort_keys=True, ensure_ascii=False, default=str)
    return "sha1:" + hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:20]


def _comment_error(errors: list[Any]) -> Exception:
    """Sort ``/api/comment``'s ``[code, message, field]`` errors."""
    code, message = "", str(errors)
    first = errors[0]
    if isinstance(first, list) and first:
        code = str(first[0])
        message = str(first[1]) if len(first) > 1 else code
    if code == "RATELIMIT":
        return RetryableError(f"Reddit: {message}", ratelimit_wait_s(message), not_sent=True)
    if code in ("USER_REQUIRED", "NOT_AUTHORIZED"):
        return AuthError(f"Reddit: {message}")
    return FatalError(f"Reddit refused the comment: {code} {message}")


def ratelimit_wait_s(message: str) -> float | None:
    """The wait in a ``RATELIMIT`` message: "try again in 3 minutes", "Take a break for 2
    seconds", or the newer "... 450 milliseconds" (as PRAW reads them)."""
    found = re.search(r"(\d+) (milliseconds?|seconds?|minutes?)", message)
    if found is None:
        return None
    amount, unit = int(found[1]), found[2]
    if unit.startswith("minute"):
        return amount * 60.0
    if unit.startswith("millisecond"):
        return amount / 1000.0
    return float(amount)


def _detail(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace")
    try:
        parsed = json.loads(body)
    except ValueError:
        return text
    if isinstance(parsed, dict) and "message" in parsed:
        # A refused subreddit says why: private, quarantined, banned, gated.
        reason = parsed.get("reason")
        return f"{parsed['message']} ({reason})" if reason else str(parsed["message"])
    return text
