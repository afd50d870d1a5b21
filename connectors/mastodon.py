"""Mastodon: mentions of the brand (notifications), hashtag timelines and full-text searches;
replies as statuses.

Plain aiohttp on the core's session (there is no good async Mastodon library). The cursor keeps
one state per stream, ``notifications``, ``tag:<name>`` and ``search:<query>``::

    {"min_id": "34975861"}     # the newest id stored; the next walk starts right after it

A stream with a cursor is walked forward in time: ``min_id`` gives the page immediately newer
than the cursor and the ``Link`` header's ``rel="prev"`` the page after that, to the end. A
new stream is first read backwards from the newest, following ``rel="next"``, for at most
``backfill_pages`` pages (over as many fetches as ``max_pages`` makes it take; meanwhile the
state is ``{"top", "max_id", "pages"}``); older history is not fetched. ``recent`` keeps the
status ids delivered lately, so a status found by two streams is delivered once.

Searches (``GET /api/v2/search?type=statuses``) answer a Search entity without a ``Link``
header, newest first whatever the parameters (``StatusesSearchService`` orders by id
descending); ``min_id`` only bounds the results ("after", turned into an ``after:`` date of
whole seconds), it does not page forward. So a search is swept from the top down: ``min_id``
the stored cursor, ``offset`` growing by a page, until a page comes back short; the newest id
seen becomes the cursor when the sweep ends. A sweep cut short by ``max_pages`` goes on at its
offset next time (``{"min_id", "top", "offset"}``); statuses that arrived meanwhile push the
rest down, so a page may repeat, never skip. ``max_id`` is not used: its ``before:`` date of
whole seconds would drop the statuses of the page's last second. (Status search needs the
server's full-text search; without it a server finds only statuses the account has seen.)

Mentions read with ``include_filtered=true`` (Mastodon 4.3+): the brand's notification policy
filters private mentions from accounts it does not follow, and those are often the customers
who most need an answer. A policy set to ``drop`` creates no notification at all.

Edits and deletions: Mastodon sends no notification when a mention is edited or deleted
(``update`` is only for statuses the brand boosted), so each fetch re-reads the ``watch_edits``
newest statuses it delivered (``GET /api/v1/statuses?id[]=``, 4.3+; the cursor's ``watch`` keeps
their ``edited_at``). An edited one comes again with the same id and its new ``edited_at``; one
the server no longer returns comes as ``raw={"id", "deleted": true}``. The core updates the
stored message instead of making a second one.

Replies keep the visibility of the status they answer, or narrower (direct < private <
unlisted < public), never wider: a reply to a direct mention is direct and names its recipient.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, ClassVar, Final, Literal

import aiohttp
import regex
from bs4 import BeautifulSoup
from pydantic import Field, ValidationError, field_validator
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
    InboundMessage,
    MalformedPayload,
    OutboundReply,
    Quarantined,
    ReplyIssue,
    RetryableError,
    SentReceipt,
    error_for_status,
    walk_each,
)

#: Status ids remembered in the cursor, newest first.
RECENT_KEEP = 300
#: Mastodon's page-size caps: notifications 80, timelines 40.
NOTIFICATIONS_MAX = 80
TIMELINE_MAX = 40
SEARCH_MAX = 40
#: Ids asked for in one ``GET /api/v1/statuses`` (the controller's default statuses limit).
STATUSES_MAX = 20
WATCH_MAX = 300

Visibility = Literal["public", "unlisted", "private", "direct"]
#: Narrowest first: a reply may keep its original's visibility or go down this list, never up.
VISIBILITIES: Final[tuple[Visibility, ...]] = ("direct", "private", "unlisted", "public")
#: What Mastodon counts for a link, whatever its length (``StatusLengthValidator``).
URL_CHARS: Final = 23
_URL: Final = re.compile(r"https?://[^\s<>\"]+", re.IGNORECASE)
#: ``@user`` or ``@user@domain``; only ``@user`` counts towards the limit.
_MENTION: Final = re.compile(
    r"(?<![\w/@])@(?P<user>[a-z0-9_]+(?:[a-z0-9_.-]+[a-z0-9_]+)?)(?:@[\w.-]+\w)?", re.IGNORECASE
)
#: One extended grapheme cluster (Unicode UAX #29), what Ruby's ``each_grapheme_cluster`` yields.
_GRAPHEME: Final = regex.compile(r"\X")


class MastodonConnector:
    """Reads the brand's mentions and hashtag timelines on one Mastodon server; replies."""

    name: ClassVar[str] = "mastodon"
    channel: ClassVar[Channel] = "mastodon"

    class Config(ConnectorConfig):
        """Settings of a Mastodon source."""

        #: The brand account's server, e.g. ``https://mastodon.social``.
        base_url: str
        #: A user token with ``read:notifications``, ``read:statuses``, ``read:search`` (only
        #: for ``search``) and ``write:statuses``.
        access_token: Credential
        #: Read the brand's mention notifications.
        mentions: bool = True
        #: Also read the mentions the brand's notification policy filtered (Mastodon 4.3+).
        include_filtered: bool = True
        #: Hashtags to follow (without ``#``).
        hashtags: list[str] = Field(default_factory=list)
        #: Full-text searches of statuses, e.g. ``["acme blender"]`` (every word must match).
        search: list[str] = Field(default_factory=list)
        #: Items per page (timelines are capped at 40 by Mastodon).
        limit: int = Field(default=40, ge=1, le=NOTIFICATIONS_MAX)
        #: Pages per stream in one fetch; the rest comes with the next (``Batch.more``).
        max_pages: int = Field(default=5, ge=1, le=100)
        #: History read by the first polls of a stream, in pages (newest first).
        backfill_pages: int = Field(default=10, ge=1, le=1000)
        #: Statuses (newest delivered) re-read on each fetch for edits and deletions; 0: none.
        watch_edits: int = Field(default=STATUSES_MAX, ge=0, le=WATCH_MAX)
        #: Widest visibility of the brand's replies; a reply never goes wider than what it
        #: answers (a reply to a direct mention is direct).
        reply_visibility: Visibility = "public"
        #: The server's status length limit (Mastodon's default; some servers allow more).
        max_characters: int = Field(default=500, ge=1)
        timeout_s: float = Field(default=30.0, gt=0)

        @field_validator("hashtags")
        @classmethod
        def _plain_tags(cls, tags: list[str]) -> list[str]:
            return [t.strip().lstrip("#") for t in tags if t.strip().lstrip("#")]

    def __init__(self, config: Config, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http
        self._base = config.base_url.rstrip("/")
        self._origin = URL(self._base).origin()
        self._auth = {"Authorization": f"Bearer {config.access_token.get_secret_value()}"}

    # -- fetching -----------------------------------------------------------------------------

    async def fetch(self, cursor: Cursor | None, resting: frozenset[str] = frozenset()) -> Batch:
        """Everything new in the mentions, hashtag timelines and searches since ``cursor``
        (streams in ``resting`` are held back by the core this time)."""
        state = dict(cursor or {})
        batch = Batch()
        recent: list[str] = list(state.get("recent") or [])
        seen: dict[str, None] = dict.fromkeys(recent)
        streams: list[str] = ["notifications"] if self.config.mentions else []
        streams += [f"tag:{tag.lower()}" for tag in self.config.hashtags]
        streams += [f"search:{q}" for q in self.config.search]
        watch: dict[str, str] = dict(state.get("watch") or {})

        async def walk(stream: str) -> bool:
            state[stream], more = await self._walk(
                stream, dict(state.get(stream) or {}), batch, seen
            )
            return more

        batch.more = await walk_each(streams, walk, batch, resting=resting)
        if self.config.watch_edits and watch and "edits" not in resting:
            # Not a stream of new messages: it never hides that all of them failed.
            try:
                await self._recheck(watch, batch)
            except AuthError:
                raise
            except ConnectorError as err:
                batch.stream_errors["edits"] = err
        batch.messages.sort(key=lambda m: (m.created_at, _id_key(m.external_id)))
        fresh = list(seen)[len(recent) :]  # delivered or quarantined by this fetch
        state["recent"] = (fresh[::-1] + recent)[:RECENT_KEEP]
        for message in batch.messages:
            if not message.raw.get("deleted"):
                watch[message.external_id] = str(message.raw.get("edited_at") or "")
        newest = sorted(watch, key=_id_key, reverse=True)[: self.config.watch_edits]
        state["watch"] = {i: watch[i] for i in newest}
        batch.cursor = state
        return batch

    async def _recheck(self, watch: dict[str, str], batch: Batch) -> None:
        """Re-read the watched statuses: edited ones come again, vanished ones as deleted."""
        ids = sorted(watch, key=_id_key, reverse=True)[: self.config.watch_edits]
        for start in range(0, len(ids), STATUSES_MAX):
            chunk = ids[start : start + STATUSES_MAX]
            url = URL(self._base + "/api/v1/statuses").with_query([("id[]", i) for i in chunk])
            items, _ = await self._get_page(url, "edits")
            found = {
                str(item["id"]): item
                for item in items
                if isinstance(item, dict) and isinstance(item.get("id"), str)
            }
            unreadable = len(found) < len(items)  # then absence proves nothing
            for ident in chunk:
                status = found.get(ident)
                if status is None:
                    if not unreadable:
                        del watch[ident]
                        batch.messages.append(_deleted(ident))
                    continue
                if str(status.get("edited_at") or "") == watch[ident]:
                    continue
                try:
                    message = _message(status, direct=status.get("visibility") == "direct")
                except (KeyError, TypeError, ValueError, ValidationError) as err:
                    batch.quarantined.append(
                        Quarantined(
                            external_id=ident,
                            error=f"{type(err).__name__}: {err}",
                            raw=json.dumps(status, ensure_ascii=False, default=str),
                        )
                    )
                    continue
                if message is not None:
                    batch.messages.append(message)

    async def _walk(
        self, stream: str, state: dict[str, Any], batch: Batch, seen: dict[str, None]
    ) -> tuple[dict[str, Any], bool]:
        if stream == "notifications":
            path, limit = "/api/v1/notifications", self.config.limit
            params: list[tuple[str, str]] = [("types[]", "mention"), ("limit", str(limit))]
            if self.config.include_filtered:
                params.append(("include_filtered", "true"))
        elif stream.startswith("search:"):
            limit = min(self.config.limit, SEARCH_MAX)
            params = [("q", stream.split(":", 1)[1]), ("type", "statuses"), ("limit", str(limit))]
            return await self._sweep(params, limit, state, batch, seen, stream)
        else:
            tag = stream.split(":", 1)[1]
            path, limit = f"/api/v1/timelines/tag/{tag}", min(self.config.limit, TIMELINE_MAX)
            params = [("limit", str(limit))]
        if state.get("min_id") is not None:
            return await self._forward(path, params, limit, state["min_id"], batch, seen, stream)
        return await self._backfill(path, params, limit, state, batch, seen, stream)

    async def _forward(
        self,
        path: str,
        params: list[tuple[str, str]],
        limit: int,
        cursor: str,
        batch: Batch,
        seen: dict[str, None],
        stream: str,
    ) -> tuple[dict[str, Any], bool]:
        """Walk forward from ``cursor`` (``min_id``, then ``rel="prev"``) to the newest."""
        url = URL(self._base + path).with_query([*params, ("min_id", cursor)])
        newest = cursor
        for n in range(self.config.max_pages):
            page = await self._next_page(url, stream, n)
            if page is None:
                break  # keep the pages read; the next fetch goes on from ``newest``
            items, links = page
            keys = [k for k in (self._collect(i, stream, batch, seen) for i in items) if k]
            # The Link header bounds the page even when an item in it is unreadable.
            keys += _bound(links, "prev", "min_id")
            newest = max([newest, *keys], key=_id_key)
            follow = links.get("prev")
            if len(items) < limit or follow is None:
                return {"min_id": newest}, False
            url = follow
        return {"min_id": newest}, True

    async def _backfill(
        self,
        path: str,
        params: list[tuple[str, str]],
        limit: int,
        state: dict[str, Any],
        batch: Batch,
        seen: dict[str, None],
        stream: str,
    ) -> tuple[dict[str, Any], bool]:
        """First polls: walk back from the newest (``rel="next"``) for ``backfill_pages``."""
        top: str | None = state.get("top")
        below: str | None = state.get("max_id")
        pages: int = state.get("pages", 0)
        url = URL(self._base + path).with_query([*params, *([("max_id", below)] if below else [])])
        for n in range(self.config.max_pages):
            page = await self._next_page(url, stream, n)
            if page is None:
                break  # keep the pages read; the next fetch goes on below ``below``
            items, links = page
            pages += 1
            keys = [k for k in (self._collect(i, stream, batch, seen) for i in items) if k]
            if keys or links:
                newer = [*keys, *_bound(links, "prev", "min_id")]
                older = [*keys, *_bound(links, "next", "max_id")]
                top = max([*([top] if top else []), *newer], key=_id_key) if newer else top
                below = min(older, key=_id_key) if older else below
            follow = links.get("next")
            if len(items) < limit or follow is None or pages >= self.config.backfill_pages:
                # Done: from now on, walk forward from the newest item seen.
                return ({"min_id": top} if top else {}), False
            url = follow
        return {"top": top, "max_id": below, "pages": pages}, True

    async def _sweep(
        self,
        params: list[tuple[str, str]],
        limit: int,
        state: dict[str, Any],
        batch: Batch,
        seen: dict[str, None],
        stream: str,
    ) -> tuple[dict[str, Any], bool]:
        """A search, newest first: from the top down by ``offset`` to the stored cursor."""
        floor: str | None = state.get("min_id")
        top: str | None = state.get("top")
        offset: int = state.get("offset", 0)
        pages: int = state.get("pages", 0)
        bounded = [*params, *([("min_id", floor)] if floor else [])]
        for n in range(self.config.max_pages):
            url = URL(self._base + "/api/v2/search").with_query(
                [*bounded, *([("offset", str(offset))] if offset else [])]
            )
            page = await self._next_page(url, stream, n)
            if page is None:
                break  # keep the pages read; the next fetch goes on at ``offset``
            items, _ = page
            pages += 1
            offset += len(items)
            keys = [k for k in (self._collect(i, stream, batch, seen) for i in items) if k]
            top = max([*([top] if top else []), *keys], key=_id_key) if keys else top
            backfilled = floor is None and pages >= self.config.backfill_pages
            if len(items) < limit or backfilled:
                newest = top or floor
                return ({"min_id": newest} if newest else {}), False
        return {"min_id": floor, "top": top, "offset": offset, "pages": pages}, True

    async def _next_page(
        self, url: URL, stream: str, n: int
    ) -> tuple[list[Any], dict[str, URL]] | None:
        """Page ``n`` of a walk; None when a passing failure stops a walk that read pages."""
        try:
            return await self._get_page(url, stream)
        except PASSING_ERRORS:
            if n == 0:
                raise
            return None

    async def _get_page(self, url: URL, stream: str) -> tuple[list[Any], dict[str, URL]]:
        try:
            async with self.http.get(
                url,
                headers=self._auth,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            ) as resp:
                body = await resp.read()
                if resp.status == 404 and stream.startswith("tag:"):
                    return [], {}  # a tag nobody has used yet
                problem = error_for_status(resp.status, resp.headers, _detail(body))
                if problem is not None:
                    raise problem
                links: dict[str, URL] = {}
                for rel, link in resp.links.items():
                    target = link.get("url")
                    # Only links to the server itself are followed: they carry our token.
                    if isinstance(target, URL) and target.origin() == self._origin:
                        links[str(rel)] = target
                content_type = resp.content_type
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            raise RetryableError(f"Mastodon unreachable: {err!r}", not_sent=True) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise RetryableError(f"Mastodon request failed: {err!r}") from err
        if "json" not in content_type:
            raise MalformedPayload(f"Mastodon answered {content_type}, not JSON: {_detail(body)}")
        try:
            items = json.loads(body)
        except ValueError as err:
            raise MalformedPayload(f"Mastodon answered with broken JSON: {err}") from err
        if stream.startswith("search:"):
            statuses = items.get("statuses") if isinstance(items, dict) else None
            if not isinstance(statuses, list):
                raise MalformedPayload(
                    f"Mastodon answered no statuses to a search: {_detail(body)}"
                )
            return statuses, {}
        if not isinstance(items, list):
            raise MalformedPayload(f"Mastodon answered {type(items).__name__}, not a list")
        return items, links

    def _collect(self, item: Any, stream: str, batch: Batch, seen: dict[str, None]) -> str | None:
        """Add one notification or status to the batch; return its id for the cursor."""
        key = item.get("id") if isinstance(item, dict) else None
        key = str(key) if isinstance(key, str | int) else None
        status = (
            item.get("status") if stream == "notifications" and isinstance(item, dict) else item
        )
        status_id = status.get("id") if isinstance(status, dict) else None
        if isinstance(status_id, str) and status_id in seen:
            return key
        try:
            if stream == "notifications" and (
                not isinstance(item, dict) or item.get("type") != "mention"
            ):
                raise ValueError(f"not a mention notification: {str(item)[:100]}")
            message = _message(status, direct=stream == "notifications")
        except (KeyError, TypeError, ValueError, ValidationError) as err:
            same = status_id if isinstance(status_id, str) else _digest(status)
            if same not in seen:  # the other stream's copy is as broken: keep it once
                seen[same] = None
                batch.quarantined.append(
                    Quarantined(
                        external_id=status_id if isinstance(status_id, str) else None,
                        error=f"{type(err).__name__}: {err}",
                        raw=json.dumps(item, ensure_ascii=False, default=str),
                    )
                )
            return key
        if message is not None:
            seen[message.external_id] = None
            batch.messages.append(message)
        return key

    # -- replying -----------------------------------------------------------------------------

    @classmethod
    def check_reply(cls, config: Config, reply: OutboundReply) -> list[ReplyIssue]:
        """Mastodon's constraints on ``reply``: the server's length limit, counted as Mastodon
        counts, and the audience a reply to a private or direct status may have."""
        issues: list[ReplyIssue] = []
        text = _status_text(reply)
        if not reply.text.strip():
            issues.append(ReplyIssue(reason="the reply is empty", blocking=True))
        n = countable_length(text)
        if n > config.max_characters:
            issues.append(
                ReplyIssue(
                    reason=f"too long for Mastodon: {n} characters as Mastodon counts them "
                    f"(a link is {URL_CHARS}, a mention only its @user part), the limit is "
                    f"{config.max_characters}",
                    blocking=True,
                )
            )
        original = _original_visibility(reply)
        visibility = reply_visibility(config.reply_visibility, reply)
        if original is None:
            issues.append(
                ReplyIssue(
                    reason="the visibility of the status answered is unknown, so the reply "
                    "goes out as a direct message to its author only"
                )
            )
        elif visibility != config.reply_visibility:
            issues.append(
                ReplyIssue(
                    reason=f"the status answered is {original}, so the reply is sent as "
                    f"{visibility}, not {config.reply_visibility}"
                )
            )
        if visibility in ("direct", "private") and not _recipients(reply):
            issues.append(
                ReplyIssue(
                    reason=f"a {visibility} reply must mention the person it answers, and "
                    "their account is not known",
                    blocking=True,
                )
            )
        return issues

    async def send(self, reply: OutboundReply) -> SentReceipt:
        """Post ``reply`` as a status answering ``in_reply_to``, starting with its recipients'
        ``@acct``, never more visible than the status it answers."""
        form = {
            "status": _status_text(reply),
            "in_reply_to_id": reply.in_reply_to,
            "visibility": reply_visibility(self.config.reply_visibility, reply),
        }
        # Mastodon keeps an Idempotency-Key for an hour: a repeat cannot post twice.
        headers = {**self._auth, "Idempotency-Key": f"socialcrm-reply-{reply.reply_id}"}
        try:
            async with self.http.post(
                self._base + "/api/v1/statuses",
                data=form,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            ) as resp:
                body = await resp.read()
                problem = error_for_status(resp.status, resp.headers, _detail(body))
                if problem is not None:
                    raise problem
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            raise RetryableError(f"Mastodon unreachable: {err!r}", not_sent=True) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise RetryableError(f"Mastodon request failed: {err!r}") from err
        try:
            status = json.loads(body)
        except ValueError as err:
            raise MalformedPayload(f"Mastodon answered with broken JSON: {err}") from err
        if not isinstance(status, dict) or not isinstance(status.get("id"), str):
            raise MalformedPayload(f"Mastodon answered without a status id: {_detail(body)}")
        return SentReceipt(external_id=status["id"], url=status.get("url"))


def reply_visibility(widest: Visibility, reply: OutboundReply) -> Visibility:
    """The visibility a reply goes out with: the original's or ``widest``, whichever is
    narrower; direct when the original's is unknown."""
    original = _original_visibility(reply) or "direct"
    return min(widest, original, key=VISIBILITIES.index)


def countable_length(text: str) -> int:
    """A status's length as Mastodon counts it: each link 23, each ``@user@domain`` as
    ``@user``, and the rest in grapheme clusters (``StatusLengthValidator``:
    ``countable_text.each_grapheme_cluster.size``), so an emoji sequence counts one."""
    text = _URL.sub("x" * URL_CHARS, text)
    text = _MENTION.sub(lambda m: "@" + m.group("user"), text)
    return len(_GRAPHEME.findall(text))


def _original_visibility(reply: OutboundReply) -> Visibility | None:
    value = reply.original.get("visibility")
    for known in VISIBILITIES:
        if value == known:
            return known
    return None


def _recipients(reply: OutboundReply) -> list[str]:
    """Who a reply addresses: the author of the status it answers (``@acct``)."""
    account = reply.original.get("account")
    acct = reply.to_handle or (account.get("acct") if isinstance(account, dict) else None)
    return [f"@{acct.lstrip('@')}"] if isinstance(acct, str) and acct.strip("@ ") else []


def _status_text(reply: OutboundReply) -> str:
    """The status as posted: the reply's text after the mention of its recipient, once.

    A direct status reaches only the accounts it mentions, so the mention is what delivers
    it (docs: methods/statuses, ``visibility``)."""
    text = reply.text
    for mention in _recipients(reply):
        if not text.lstrip().lower().startswith(mention.lower()):
            text = f"{mention} {text}"
    return text


def html_to_text(content: str) -> str:
    """A status's HTML as the plain text its author typed: paragraphs and line breaks kept."""
    soup = BeautifulSoup(content, "html.parser")
    for br in soup.find_all("br"):
        br.replace_with("\n")
    paragraphs = soup.find_all("p")
    if paragraphs:
        return "\n\n".join(p.get_text() for p in paragraphs)
    return soup.get_text()


def _message(status: Any, *, direct: bool) -> InboundMessage | None:
    if not isinstance(status, dict):
        raise TypeError(f"a status is an object, not {type(status).__name__}")
    if status.get("reblog"):
        return None  # a boost: the original is what matters, and it has its own id
    account = status["account"]
    if not isinstance(account, dict):
        raise TypeError("status without an account")
    ident = status["id"]
    if not isinstance(ident, str) or not ident:
        raise ValueError(f"bad status id {ident!r}")
    content = status["content"]
    if not isinstance(content, str):
        raise TypeError("status content is not text")
    spoiler = status.get("spoiler_text") or None
    followers = account.get("followers_count")
    return InboundMessage(
        channel="mastodon",
        external_id=ident,
        text=html_to_text(content),
        subject=spoiler,
        author=Author(
            user_id=str(account["id"]),
            handle=account.get("acct"),
            name=account.get("display_name") or None,
            followers=followers if isinstance(followers, int) and followers >= 0 else None,
            verified=False,
        ),
        created_at=datetime.fromisoformat(str(status["created_at"]).replace("Z", "+00:00")),
        lang=status.get("language"),
        in_reply_to=status.get("in_reply_to_id"),
        url=status.get("url") or status.get("uri"),
        direct=direct or status.get("visibility") == "direct",
        raw=status,
    )


def _deleted(ident: str) -> InboundMessage:
    """A status its author deleted: the core marks the stored message, stores nothing new."""
    return InboundMessage(
        channel="mastodon",
        external_id=ident,
        text="",
        author=Author(),
        direct=False,
        raw={"id": ident, "deleted": True},
    )


def _digest(status: Any) -> str:
    """A stable key for a broken status that has no id."""
    text = json.dumps(status, ensure_ascii=False, sort_keys=True, default=str)
    return "sha1:" + hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:20]


def _bound(links: dict[str, URL], rel: str, param: str) -> list[str]:
    """The id a ``Link`` names as the page's edge (``prev``'s ``min_id``, ``next``'s ``max_id``)."""
    link = links.get(rel)
    value = link.query.get(param) if link is not None else None
    return [value] if value else []


def _id_key(ident: str) -> tuple[int, str]:
    """Order Mastodon ids (numeric strings of any length) without trusting them to be ints."""
    return (len(ident), ident)


def _detail(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace")
    try:
        parsed = json.loads(body)
    except ValueError:
        return text
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return text
