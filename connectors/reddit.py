"""Reddit: a keyword search of new posts and the new comments of some subreddits; replies.

Plain aiohttp on the core's session. The connector gets its own OAuth token (a script app's
``grant_type=password``, or ``client_credentials`` for read-only use) from ``auth_url`` and
calls the API at ``api_url`` (``https://www.reddit.com`` and ``https://oauth.reddit.com`` in
the real world). A token is renewed when it is about to expire; a token the API refuses is
dropped and the fetch fails as retryable, so the next call gets a fresh one (no sleeping).

Listings come newest first. The cursor keeps, per stream (``search``, ``comments``), a mark:
the ``created_utc`` of the newest item stored and the fullnames seen at that second::

    {"mark_utc": 1772447252.56, "mark_ids": ["t3_1jcynks"]}

A walk reads pages (``after=<fullname>``) until it meets an item at or below the mark. When
``max_pages`` stops it early, the cursor also keeps where to go on (``after``) and the mark the
finished walk will set (``top_utc``/``top_ids``), and ``Batch.more`` says so. Items too broken
to place in time are quarantined once and remembered in ``skip``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

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
Stream = Literal["search", "comments"]


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
        #: Reddit asks for a unique, descriptive one: ``<platform>:<app id>:<version> (by
        #: /u/<username>)``.
        user_agent: str = "python:socialcrm:0.1 (self-hosted social CRM)"
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
        timeout_s: float = Field(default=30.0, gt=0)

        @model_validator(mode="after")
        def _coherent(self) -> RedditConnector.Config:
            if (self.username is None) != (self.password is None):
                raise ValueError("username and password go together (a script app)")
            if self.query is None and not self.subreddits:
                raise ValueError("set query (posts), subreddits (comments), or both")
            return self

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
        subs = [s.strip().removeprefix("r/") for s in config.subreddits if s.strip()]
        self._subreddits = "+".join(subs)

    # -- fetching -----------------------------------------------------------------------------

    async def fetch(self, cursor: Cursor | None) -> Batch:
        """Everything new in the search and the subreddits' comments since ``cursor``."""
        state = dict(cursor or {})
        batch = Batch()
        streams: list[Stream] = []
        if self.config.query:
            streams.append("search")
        if self._subreddits:
            streams.append("comments")

        async def walk(stream: Stream) -> bool:
            state[stream], more = await self._walk(stream, dict(state.get(stream) or {}), batch)
            return more

        batch.more = await walk_each(streams, walk, batch)
        batch.messages.sort(key=lambda m: m.created_at)
        batch.cursor = state
        return batch

    async def _walk(
        self, stream: Stream, state: dict[str, Any], batch: Batch
    ) -> tuple[dict[str, Any], bool]:
        mark: float | None = state.get("mark_utc")
        mark_ids: set[str] = set(state.get("mark_ids") or [])
        after: str | None = state.get("after")
        top: float | None = state.get("top_utc")
        top_ids: list[str] = list(state.get("top_ids") or [])
        skip: list[str] = list(state.get("skip") or [])
        if stream == "search":
            path = "/search"
            params = {"q": self.config.query or "", "sort": "new", "type": "link"}
        else:
            path = f"/r/{self._subreddits}/comments"
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
                if mark is not None:
                    if created < mark:
                        reached = True
                        break
                    if created == mark and key in mark_ids:
                        continue
                if top is None or created > top:
                    top, top_ids = created, [key]
                elif created == top and key not in top_ids:
                    top_ids.append(key)
                self._collect(child, stream, batch)
            if reached or not next_after:
                if top is None:
                    return {"mark_utc": mark, "mark_ids": sorted(mark_ids), "skip": skip}, False
                return {"mark_utc": top, "mark_ids": top_ids, "skip": skip}, False
            after = next_after
        return {
            "mark_utc": mark,
            "mark_ids": sorted(mark_ids),
            "after": after,
            "top_utc": top,
            "top_ids": top_ids,
            "skip": skip,
        }, True

    def _collect(self, child: Any, stream: Stream, batch: Batch) -> None:
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
        if stream == "comments" and self._keywords:
            low = message.text.lower()
            if not any(k in low for k in self._keywords):
                return
        batch.messages.append(message)

    def _message(self, child: Any) -> InboundMessage:
        if not isinstance(child, dict) or not isinstance(child.get("data"), dict):
            raise TypeError("a listing child is {kind, data}")
        kind, data = child.get("kind"), child["data"]
        name = data["name"]
        if kind not in ("t1", "t3") or not isinstance(name, str) or not name.startswith(kind):
            raise ValueError(f"not a post or comment: {kind!r} {name!r}")
        created = datetime.fromtimestamp(float(data["created_utc"]), UTC)
        author = data.get("author")
        if kind == "t3":
            title = data["title"]
            text = data.get("selftext") or title
            subject, in_reply_to, conversation = title, None, name
        else:
            text = data["body"]
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
        headers = {"Authorization": f"bearer {token}", "User-Agent": self.config.user_agent}
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
            "User-Agent": cfg.user_agent,
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
        found = re.search(r"(\d+) (second|minute)", message)
        wait = None if found is None else int(found[1]) * (60 if found[2] == "minute" else 1)
        return RetryableError(f"Reddit: {message}", wait, not_sent=True)
    if code in ("USER_REQUIRED", "NOT_AUTHORIZED"):
        return AuthError(f"Reddit: {message}")
    return FatalError(f"Reddit refused the comment: {code} {message}")


def _detail(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace")
    try:
        parsed = json.loads(body)
    except ValueError:
        return text
    if isinstance(parsed, dict) and "message" in parsed:
        return str(parsed["message"])
    return text
