"""Stand-in for a Mastodon server: mention notifications, hashtag timelines, posting a status.

Shapes follow docs.joinmastodon.org: ``GET /api/v1/notifications`` returns an array of
Notification entities (``id``, ``type``, ``created_at``, ``account``, ``status``) and
``GET /api/v1/timelines/tag/:hashtag`` an array of Status entities, newest first. Paging is by
``max_id`` / ``since_id`` / ``min_id`` / ``limit`` and the ``Link`` header (``rel="next"`` with
the oldest id as ``max_id`` when the page is full, ``rel="prev"`` with the newest id as
``min_id`` when it is not empty). A status's ``content`` is HTML with the h-card mention and
hashtag markup Mastodon writes. Errors are ``{"error": "..."}``; rate limits are in
``X-RateLimit-Limit/Remaining/Reset`` (an ISO 8601 time), 300 requests per 5 minutes.

Tokens carry OAuth scopes, enforced per endpoint as ``doorkeeper_authorize!`` does in the
controllers (``read:notifications``, ``read:statuses``, ``read:search``, ``write:statuses``; the
umbrella ``read``/``write`` covers its kind); a missing scope is a 403 with Api::BaseController's
``doorkeeper_forbidden_render_options`` body. The brand's notification policy (4.3+,
entities/NotificationPolicy) filters private and direct mentions from accounts it does not
follow unless ``include_filtered=true``; ``drop`` makes no notification at all. Search is
``StatusesSearchService``: newest first, ``min_id``/``max_id`` turned into ``after:``/``before:``
dates of whole seconds, ``offset`` only for a user token.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from typing import Any, ClassVar, Final

import regex
from aiohttp import web

from socialcrm.connector import InboundMessage
from socialcrm.sandbox.server import (
    CORRUPTED,
    SERVED,
    Platform,
    PostedReply,
    Sandbox,
    StandIn,
    iso_z,
    json_answer,
)

#: The stand-in's own domain (the brand's account lives here).
DOMAIN: Final = "social.sandbox.example"
BRAND_ACCOUNT_ID: Final = "109348264712345678"
#: Notification ids are a sequence of their own, as on a real server.
NOTIFICATION_BASE: Final = 34_900_000
NOTIFICATION_LIMIT: Final = (40, 80)  # default, max
TIMELINE_LIMIT: Final = (20, 40)
SEARCH_LIMIT: Final = (20, 40)
#: Scopes of the sandbox's own token: everything, as an app made with ``read write`` has.
FULL_SCOPES: Final = frozenset({"read", "write", "follow", "push"})
#: What each endpoint asks of a token (the controllers' ``doorkeeper_authorize!``).
SCOPES_OF: Final[dict[str, tuple[str, ...]]] = {
    "notifications": ("read", "read:notifications"),
    "tag_timeline": ("read", "read:statuses"),
    "search": ("read", "read:search"),
    "statuses": ("read", "read:statuses"),
    "post_status": ("write", "write:statuses"),
    "delete_status": ("write", "write:statuses"),
    "verify_credentials": ("read", "read:accounts", "profile"),
}
#: Visibilities, narrowest first (docs: entities/Status, ``visibility``).
VISIBILITIES: Final = ("direct", "private", "unlisted", "public")
#: What a link counts towards the status length, whatever its length (StatusLengthValidator).
URL_CHARS: Final = 23
MAX_CHARS: Final = 500
_MARKUP: Final = re.compile(
    r"(?P<url>https?://[^\s<]+)"
    r"|(?P<mention>(?<![\w/@])@(?P<user>\w+)(?:@(?P<domain>[\w.-]*\w))?)"
    r"|(?P<tag>(?<![\w/&;#])#(?P<name>\w+))"
)
_ERROR_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>We're sorry, but something went wrong</title></head>"
    "<body><div class='dialog'><h1>We're sorry, but something went wrong on our end.</h1>"
    "</div></body></html>"
)


def tags_of(text: str) -> set[str]:
    """Hashtags in a post, lower-cased, without ``#``."""
    return {m.lower() for m in re.findall(r"(?<![\w/&;#])#(\w+)", text)}


class MastodonStandIn(StandIn):
    """A Mastodon server under ``/mastodon`` where the brand has an account."""

    platform: ClassVar[Platform] = "mastodon"

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        handle = sandbox.brand_handle
        self.brand_account: dict[str, Any] = {
            "id": BRAND_ACCOUNT_ID,
            "username": handle,
            "acct": handle,
            "display_name": sandbox.brand,
            "locked": False,
            "bot": False,
            "discoverable": True,
            "group": False,
            "created_at": "2022-11-08T00:00:00.000Z",
            "note": f"<p>Official {html.escape(sandbox.brand)} support.</p>",
            "url": f"https://{DOMAIN}/@{handle}",
            "uri": f"https://{DOMAIN}/users/{handle}",
            "avatar": f"https://{DOMAIN}/avatars/original/missing.png",
            "avatar_static": f"https://{DOMAIN}/avatars/original/missing.png",
            "header": f"https://{DOMAIN}/headers/original/missing.png",
            "header_static": f"https://{DOMAIN}/headers/original/missing.png",
            "followers_count": 18_204,
            "following_count": 311,
            "statuses_count": 6_530,
            "last_status_at": "2026-03-01",
            "emojis": [],
            "fields": [],
        }
        self._mention = re.compile(
            rf"(?<![\w/@])@{re.escape(handle)}(?:@{re.escape(DOMAIN)})?(?![\w@])", re.IGNORECASE
        )
        self._by_id: dict[str, int] = {}
        #: Token -> scopes; a test may add a token with fewer (``grant``).
        self.scopes: dict[str, frozenset[str]] = {sandbox.credentials.mastodon_token: FULL_SCOPES}
        #: The brand's notification policy (entities/NotificationPolicy; 4.3 defaults).
        self.policy: dict[str, str] = {
            "for_not_following": "accept",
            "for_not_followers": "accept",
            "for_new_accounts": "accept",
            "for_private_mentions": "filter",
            "for_limited_accounts": "filter",
        }
        #: Account ids the brand follows: their private mentions are never filtered.
        self.following: set[str] = set()
        #: Statuses deleted by their authors (404 from then on, gone from every list).
        self.deleted: set[str] = set()
        #: Edits: status id -> (new text, edited_at).
        self.edits: dict[str, tuple[str, str]] = {}
        self._posted: dict[str, dict[str, Any]] = {}
        self._idempotent: dict[str, dict[str, Any]] = {}
        self._seq = 0

    def routes(self) -> list[web.RouteDef]:
        """Notifications, hashtag timelines, posting, and the brand's own account."""
        return [
            web.get("/api/v1/notifications", self.notifications),
            web.get("/api/v1/timelines/tag/{hashtag}", self.tag_timeline),
            web.get("/api/v2/search", self.search),
            web.get("/api/v1/statuses", self.statuses),
            web.post("/api/v1/statuses", self.post_status),
            web.get("/api/v1/accounts/verify_credentials", self.verify_credentials),
        ]

    # -- the platform's manners -----------------------------------------------------------

    def grant(self, token: str, scopes: set[str] | frozenset[str]) -> None:
        """Accept ``token`` with these scopes (an app authorised for less than everything)."""
        self.scopes[token] = frozenset(scopes)

    @property
    def posted(self) -> dict[str, dict[str, Any]]:
        """The statuses connectors posted, by id, as the server stored them."""
        return self._posted

    def authenticate(self, request: web.Request) -> web.Response | None:
        """A user token; hashtag timelines and searches are public when no token is sent."""
        auth = request.headers.get("Authorization")
        if auth is None and ("/timelines/tag/" in request.path or "/v2/search" in request.path):
            return None
        token = auth[len("Bearer ") :] if auth and auth.startswith("Bearer ") else None
        if token is None or token not in self.scopes:
            return json_answer({"error": "The access token is invalid"}, 401)
        return None

    def _scoped(self, request: web.Request, endpoint: str) -> web.Response | None:
        """The 403 a token without the endpoint's scope gets (Api::BaseController)."""
        auth = request.headers.get("Authorization")
        if auth is None:
            return None
        held = self.scopes.get(auth[len("Bearer ") :], frozenset())
        if held.isdisjoint(SCOPES_OF[endpoint]):
            return json_answer({"error": "This action is outside the authorized scopes"}, 403)
        return None

    def edit(self, status_id: str, text: str) -> None:
        """The author edits a status: same id, new text, ``edited_at`` now (docs: methods/
        statuses, "Edit a status")."""
        self.edits[status_id] = (text, iso_z(self.sandbox.clock()))

    def delete(self, status_id: str) -> None:
        """The author deletes a status: 404 from then on, and gone from every list."""
        self.deleted.add(status_id)

    def _filtered(self, message: InboundMessage) -> str:
        """``accept``, ``filter`` or ``drop``: what the brand's policy does to a mention."""
        if message.raw.get("visibility", "public") not in ("private", "direct"):
            return "accept"
        if message.author.user_id in self.following:
            return "accept"  # "accounts the user follows are always allowed"
        return self.policy["for_private_mentions"]

    def bucket(self, request: web.Request) -> tuple[str, int, float]:
        """One bucket for all of ``/api/*``: 300 requests per 5 minutes."""
        return "api", 300, 300.0

    def rate_headers(
        self, limit: int, remaining: int, used: int, reset_at: float, now: float
    ) -> dict[str, str]:
        """``X-RateLimit-*``; the reset is an ISO 8601 time."""
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": iso_z(reset_at),
        }

    def error(self, status: int) -> web.Response:
        """``{"error": ...}``, or the HTML page the server or its proxy shows for 5xx."""
        messages = {
            401: "The access token is invalid",
            403: "This action is not allowed",
            404: "Record not found",
            422: "Validation failed",
            429: "Too many requests",
        }
        if status in messages:
            return json_answer({"error": messages[status]}, status)
        if status == 500:
            return web.Response(text=_ERROR_PAGE, status=500, content_type="text/html")
        reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable"}.get(status, "Error")
        return web.Response(
            text=f"<html><head><title>{status} {reason}</title></head><body><center><h1>"
            f"{status} {reason}</h1></center><hr><center>nginx</center></body></html>",
            status=status,
            content_type="text/html",
        )

    def break_envelope(self, payload: Any) -> Any:
        """An object where the array belongs."""
        return {"data": payload}

    # -- shapes -----------------------------------------------------------------------------

    def is_mention(self, message: InboundMessage) -> bool:
        """Whether the status mentions the brand (and so makes a notification)."""
        return self._mention.search(message.text) is not None

    def notification_id(self, index: int) -> str:
        """The notification id of the mastodon message at ``index``."""
        return str(NOTIFICATION_BASE + index)

    def content(self, text: str) -> str:
        """Plain text as Mastodon renders it: paragraphs, line breaks, mentions, tags, links."""

        def markup(m: re.Match[str]) -> str:
            if m.group("url"):
                url = m.group("url")
                scheme, _, rest = url.partition("://")
                return (
                    f'<a href="{url}" target="_blank" rel="nofollow noopener" translate="no">'
                    f'<span class="invisible">{scheme}://</span><span class="">{rest}</span>'
                    '<span class="invisible"></span></a>'
                )
            if m.group("mention"):
                user, domain = m.group("user"), m.group("domain") or DOMAIN
                return (
                    f'<span class="h-card" translate="no"><a href="https://{domain}/@{user}" '
                    f'class="u-url mention">@<span>{user}</span></a></span>'
                    if not m.group("domain")
                    else f'<span class="h-card" translate="no"><a href="https://{domain}/@{user}" '
                    f'class="u-url mention">@<span>{user}@{domain}</span></a></span>'
                )
            name = m.group("name")
            return (
                f'<a href="https://{DOMAIN}/tags/{name.lower()}" class="mention hashtag" '
                f'rel="tag">#<span>{name}</span></a>'
            )

        paragraphs = []
        for para in text.split("\n\n"):
            escaped = _MARKUP.sub(markup, html.escape(para, quote=False))
            paragraphs.append("<p>" + escaped.replace("\n", "<br />") + "</p>")
        return "".join(paragraphs)

    def account(self, message: InboundMessage) -> dict[str, Any]:
        """The author as a Mastodon Account entity (remote: ``acct`` is ``user@instance``)."""
        author = message.author
        acct = author.handle or "unknown"
        username, _, instance = acct.partition("@")
        instance = instance or DOMAIN
        seed = int(author.user_id or "0") % 9973
        return {
            "id": author.user_id,
            "username": username,
            "acct": acct,
            "display_name": author.name or "",
            "locked": False,
            "bot": False,
            "discoverable": True,
            "group": False,
            "created_at": f"20{17 + seed % 8:02d}-0{1 + seed % 9}-1{seed % 10}T00:00:00.000Z",
            "note": "",
            "url": f"https://{instance}/@{username}",
            "uri": f"https://{instance}/users/{username}",
            "avatar": f"https://{instance}/avatars/original/missing.png",
            "avatar_static": f"https://{instance}/avatars/original/missing.png",
            "header": f"https://{instance}/headers/original/missing.png",
            "header_static": f"https://{instance}/headers/original/missing.png",
            "followers_count": author.followers or 0,
            "following_count": 20 + seed % 700,
            "statuses_count": 50 + seed * 3,
            "last_status_at": message.created_at.date().isoformat(),
            "emojis": [],
            "fields": [],
        }

    def status(self, message: InboundMessage) -> dict[str, Any]:
        """The message as a Status entity."""
        raw = message.raw
        account = self.account(message)
        parent = self._lookup(message.in_reply_to) if message.in_reply_to else None
        mentions = []
        if self.is_mention(message):
            mentions.append(self._mention_of(self.brand_account))
        if parent is not None:
            parent_account = self.account(parent)
            if f"@{parent_account['username']}".lower() in message.text.lower():
                mentions.append(self._mention_of(parent_account))
        return {
            "id": message.external_id,
            "created_at": raw.get("created_at"),
            "in_reply_to_id": message.in_reply_to,
            "in_reply_to_account_id": parent.author.user_id if parent is not None else None,
            "sensitive": False,
            "spoiler_text": "",
            "visibility": raw.get("visibility", "public"),
            "language": message.lang,
            "uri": f"https://{account['url'].split('/')[2]}/users/{account['username']}/statuses/"
            f"{message.external_id}",
            "url": message.url,
            "replies_count": 0,
            "reblogs_count": 0,
            "favourites_count": 0,
            "edited_at": self.edits[message.external_id][1]
            if message.external_id in self.edits
            else None,
            "content": self.content(
                self.edits[message.external_id][0]
                if message.external_id in self.edits
                else message.text
            ),
            "reblog": None,
            "application": None,
            "account": account,
            "media_attachments": [],
            "mentions": mentions,
            "tags": [
                {"name": tag, "url": f"https://{DOMAIN}/tags/{tag}"}
                for tag in sorted(tags_of(message.text))
            ],
            "emojis": [],
            "card": None,
            "poll": None,
        }

    def _mention_of(self, account: dict[str, Any]) -> dict[str, Any]:
        return {k: account[k] for k in ("id", "username", "url", "acct")}

    def _index(self, status_id: str) -> int | None:
        if not self._by_id:
            self._by_id = {
                m.external_id: i for i, m in enumerate(self.sandbox.messages["mastodon"])
            }
        return self._by_id.get(status_id)

    def _lookup(self, status_id: str) -> InboundMessage | None:
        index = self._index(status_id)
        return None if index is None else self.sandbox.messages["mastodon"][index]

    def _corrupt(self, status: dict[str, Any]) -> dict[str, Any]:
        how = self.sandbox.faults.breakage("mastodon", status["id"], 3)
        broken = dict(status)
        if how == 0:
            broken["account"] = None
        elif how == 1:
            broken["created_at"] = "yesterday"
        else:
            del broken["id"]
        return broken

    # -- endpoints --------------------------------------------------------------------------

    async def notifications(self, request: web.Request) -> web.Response:
        """``GET /api/v1/notifications``: the brand's mention notifications, newest first."""
        if (refused := self._scoped(request, "notifications")) is not None:
            return refused
        query = request.query
        types = query.getall("types[]", [])
        excluded = query.getall("exclude_types[]", [])
        messages = self.sandbox.messages["mastodon"]
        indexes = self.visible("mentions", self.is_mention)
        if (types and "mention" not in types) or "mention" in excluded:
            indexes = []
        # The notification policy (4.3+): filtered ones only with include_filtered=true;
        # dropped ones were never made. A deleted status takes its notification with it.
        shown = ("accept", "filter") if query.get("include_filtered") == "true" else ("accept",)
        indexes = [
            i
            for i in indexes
            if self._filtered(messages[i]) in shown and messages[i].external_id not in self.deleted
        ]
        if "account_id" in query:
            indexes = [i for i in indexes if messages[i].author.user_id == query["account_id"]]
        keyed = [(NOTIFICATION_BASE + i, i) for i in indexes]
        limit = _limit(query, NOTIFICATION_LIMIT)
        page = _paginate(keyed, query, limit)
        ids = [messages[i].external_id for _, i in page]
        broken = self.broken(ids)
        body = []
        for key, i in page:
            message = messages[i]
            status = self.status(message)
            if message.external_id in broken:
                status = self._corrupt(status)
            body.append(
                {
                    "id": str(key),
                    "type": "mention",
                    "group_key": f"ungrouped-{key}",
                    "created_at": message.raw.get("created_at"),
                    "account": self.account(message),
                    "status": status,
                }
            )
        request[SERVED] = [i for i in ids if i not in broken]
        request[CORRUPTED] = [i for i in ids if i in broken]
        carried = ("limit", "types[]", "exclude_types[]", "account_id", "include_filtered")
        return json_answer(
            body, headers=_links(request, [k for k, _ in page], limit, query, carried)
        )

    def _statuses(self, request: web.Request, indexes: list[int]) -> list[dict[str, Any]]:
        """A page of statuses (some broken, as faults decide), recorded as served."""
        messages = self.sandbox.messages["mastodon"]
        ids = [messages[i].external_id for i in indexes]
        broken = self.broken(ids)
        statuses = []
        for i in indexes:
            status = self.status(messages[i])
            statuses.append(self._corrupt(status) if status["id"] in broken else status)
        request[SERVED] = [i for i in ids if i not in broken]
        request[CORRUPTED] = [i for i in ids if i in broken]
        return statuses

    async def tag_timeline(self, request: web.Request) -> web.Response:
        """``GET /api/v1/timelines/tag/:hashtag``: public statuses with the tag, newest first."""
        if (refused := self._scoped(request, "tag_timeline")) is not None:
            return refused
        tag = request.match_info["hashtag"].lstrip("#").lower()
        query = request.query
        messages = self.sandbox.messages["mastodon"]

        def wanted(message: InboundMessage) -> bool:
            return tag in tags_of(message.text)

        indexes = [
            i
            for i in self.visible(f"tag:{tag}", wanted)
            if messages[i].external_id not in self.deleted
            and messages[i].raw.get("visibility", "public") == "public"
        ]
        if query.get("local") in ("true", "1"):
            indexes = []  # every status here comes from another instance
        keyed = [(int(messages[i].external_id), i) for i in indexes]
        limit = _limit(query, TIMELINE_LIMIT)
        page = _paginate(keyed, query, limit)
        body = self._statuses(request, [i for _, i in page])
        carried = ("limit", "any[]", "all[]", "none[]", "local", "remote", "only_media")
        return json_answer(
            body, headers=_links(request, [k for k, _ in page], limit, query, carried)
        )

    async def search(self, request: web.Request) -> web.Response:
        """``GET /api/v2/search``: statuses with every word of ``q`` (full-text search on).

        The answer is the Search entity (``accounts``, ``statuses``, ``hashtags``), without a
        ``Link`` header. As ``StatusesSearchService`` does it: results newest first (ordered by
        id descending) whatever the parameters; ``min_id``/``max_id`` become ``after:``/``before:``
        dates of whole seconds (``Mastodon::Snowflake.to_time(id).iso8601``), so they bound the
        results and do not page forward; ``offset`` skips from the top, only with ``type`` and a
        user token (methods/search: "Without a valid user token, you cannot use the resolve or
        offset parameters"). Only public statuses are found.
        """
        if (refused := self._scoped(request, "search")) is not None:
            return refused
        query = request.query
        words = [w.lstrip("#").lower() for w in query.get("q", "").split()]
        if not words:
            return json_answer({"error": "Validation failed: q is missing"}, 400)
        wanted_type = query.get("type")
        if wanted_type not in (None, "", "accounts", "hashtags", "statuses"):
            return json_answer(
                {"error": "Validation failed: type is not included in the list"}, 422
            )
        if query.get("offset") and "Authorization" not in request.headers:
            return json_answer({"error": "Search queries with offset require a user token"}, 401)
        messages = self.sandbox.messages["mastodon"]

        def wanted(message: InboundMessage) -> bool:
            text = message.text.lower()
            return all(w in text for w in words)

        indexes = [
            i
            for i in self.visible("search:" + " ".join(words), wanted)
            if messages[i].external_id not in self.deleted
            and messages[i].raw.get("visibility", "public") == "public"
        ]
        if wanted_type in ("accounts", "hashtags"):
            indexes = []
        keyed = sorted(((int(messages[i].external_id), i) for i in indexes), reverse=True)
        after, before = _whole_second(query.get("min_id")), _whole_second(query.get("max_id"))
        keyed = [
            (key, i)
            for key, i in keyed
            if (after is None or key >> 16 > after) and (before is None or key >> 16 < before)
        ]
        limit = _limit(query, SEARCH_LIMIT)
        offset = query.get("offset", "0")
        skip = int(offset) if offset.isdigit() and wanted_type else 0
        page = keyed[skip : skip + limit]
        statuses = self._statuses(request, [i for _, i in page])
        return json_answer({"accounts": [], "statuses": statuses, "hashtags": []})

    async def statuses(self, request: web.Request) -> web.Response:
        """``GET /api/v1/statuses?id[]=...`` (4.3+): the statuses asked for that exist and may be
        seen; "there can be fewer records than requested if the requested statuses do not exist
        or cannot be accessed" (methods/statuses#index). At most 20 ids are read, as the
        controller's default statuses limit (an assumption: the docs give no cap)."""
        if (refused := self._scoped(request, "statuses")) is not None:
            return refused
        wanted = list(dict.fromkeys(request.query.getall("id[]", [])))[:20]
        released = self.sandbox.released_count("mastodon")
        indexes = [
            i
            for i in (self._index(status_id) for status_id in wanted)
            if i is not None
            and i < released
            and self.sandbox.messages["mastodon"][i].external_id not in self.deleted
        ]
        return json_answer(self._statuses(request, indexes))

    async def post_status(self, request: web.Request) -> web.Response:
        """``POST /api/v1/statuses`` (form or JSON; ``Idempotency-Key`` honoured).

        The length is counted as ``StatusLengthValidator`` does (each link 23, a mention only
        its ``@user`` part, the spoiler text too); ``visibility`` must be one of the four; a
        reply to a status nobody may see is refused as ``Record not found``."""
        if (refused := self._scoped(request, "post_status")) is not None:
            return refused
        if request.content_type == "application/json":
            try:
                form: dict[str, Any] = json.loads(await request.read())
            except ValueError:
                return json_answer({"error": "Error while parsing request body"}, 400)
        else:
            form = dict(await request.post())
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in self._idempotent:
            return json_answer(self._idempotent[key])
        text = str(form.get("status") or "")
        if not text.strip():
            return json_answer({"error": "Validation failed: Text can't be blank"}, 422)
        if status_length(text) + len(str(form.get("spoiler_text") or "")) > MAX_CHARS:
            return json_answer(
                {"error": f"Validation failed: Text character limit of {MAX_CHARS} exceeded"},
                422,
            )
        visibility = str(form.get("visibility") or "public")
        if visibility not in VISIBILITIES:
            return json_answer(
                {"error": "Validation failed: Visibility is not included in the list"}, 422
            )
        target = form.get("in_reply_to_id")
        parent = None
        if target:
            parent = self._lookup(str(target))
            index = self._index(str(target))
            visible = index is not None and index < self.sandbox.released_count("mastodon")
            if (not visible and str(target) not in self._posted) or str(target) in self.deleted:
                return json_answer({"error": "Record not found"}, 404)
        now = self.sandbox.clock()
        self._seq = (self._seq + 1) & 0xFFFF
        status_id = str((int(now * 1000) << 16) | self._seq)
        handle = self.brand_account["username"]
        status: dict[str, Any] = {
            "id": status_id,
            "created_at": iso_z(now),
            "in_reply_to_id": str(target) if target else None,
            "in_reply_to_account_id": parent.author.user_id if parent is not None else None,
            "sensitive": False,
            "spoiler_text": str(form.get("spoiler_text") or ""),
            "visibility": visibility,
            "language": str(form.get("language") or "en"),
            "uri": f"https://{DOMAIN}/users/{handle}/statuses/{status_id}",
            "url": f"https://{DOMAIN}/@{handle}/{status_id}",
            "replies_count": 0,
            "reblogs_count": 0,
            "favourites_count": 0,
            "edited_at": None,
            "content": self.content(text),
            "reblog": None,
            "application": {"name": "socialcrm", "website": None},
            "account": self.brand_account,
            "media_attachments": [],
            "mentions": self._mentions_in(text),
            "tags": [],
            "emojis": [],
            "card": None,
            "poll": None,
        }
        self._posted[status_id] = status
        if key is not None:
            self._idempotent[key] = status
        self.sandbox.replies.append(
            PostedReply(
                "mastodon",
                status_id,
                str(target) if target else None,
                text,
                idempotency_key=key,
                posted_at=now,
            )
        )
        return json_answer(status)

    def _mentions_in(self, text: str) -> list[dict[str, Any]]:
        """The Mention entities of a posted status: the accounts its ``@acct`` words name
        (a direct status reaches exactly these)."""
        found: dict[str, dict[str, Any]] = {}
        for m in _MARKUP.finditer(text):
            if not m.group("mention"):
                continue
            user, domain = m.group("user"), m.group("domain")
            acct = f"{user}@{domain}" if domain and domain != DOMAIN else user
            found.setdefault(
                acct.lower(),
                {
                    "id": str(int(hashlib.sha1(acct.lower().encode()).hexdigest()[:12], 16)),
                    "username": user,
                    "url": f"https://{domain or DOMAIN}/@{user}",
                    "acct": acct,
                },
            )
        return list(found.values())

    async def verify_credentials(self, request: web.Request) -> web.Response:
        """``GET /api/v1/accounts/verify_credentials``: the brand's CredentialAccount."""
        if (refused := self._scoped(request, "verify_credentials")) is not None:
            return refused
        account = dict(self.brand_account)
        account["source"] = {
            "privacy": "public",
            "sensitive": False,
            "language": "en",
            "note": "",
            "fields": [],
            "follow_requests_count": 0,
        }
        return json_answer(account)


def status_length(text: str) -> int:
    """The length ``StatusLengthValidator`` counts: each link is 23 characters, a mention
    counts only its ``@user`` part, and the rest counts in grapheme clusters
    (``countable_text.each_grapheme_cluster.size``, app/validators/status_length_validator.rb)."""
    text = re.sub(r"https?://[^\s<]+", "x" * URL_CHARS, text)
    text = re.sub(r"(?<![\w/@])@(\w+)@[\w.-]*\w", r"@\1", text)
    return len(regex.findall(r"\X", text))


def _whole_second(value: str | None) -> int | None:
    """A snowflake id's time as the ``after:``/``before:`` date search turns it into: whole
    seconds (``Time#iso8601``), in milliseconds."""
    if not value or not value.isdigit():
        return None
    return (int(value) >> 16) // 1000 * 1000


def _limit(query: Any, limits: tuple[int, int]) -> int:
    """The page size asked for, clamped to the endpoint's maximum as Mastodon does."""
    default, most = limits
    try:
        return min(most, max(1, int(query.get("limit", default))))
    except ValueError:
        return default


def _paginate(keyed: list[tuple[int, int]], query: Any, limit: int) -> list[tuple[int, int]]:
    """One page of ``(id, index)`` pairs (ascending in ``keyed``), newest first, by Mastodon's
    rules: ``min_id`` pages forward from a cursor, otherwise the newest below ``max_id``."""

    def bound(name: str) -> int | None:
        value = query.get(name)
        return int(value) if value and value.isdigit() else None

    max_id, since_id, min_id = bound("max_id"), bound("since_id"), bound("min_id")
    window = [
        pair
        for pair in keyed
        if (max_id is None or pair[0] < max_id)
        and (since_id is None or pair[0] > since_id)
        and (min_id is None or pair[0] > min_id)
    ]
    if min_id is not None:
        return list(reversed(window[:limit]))
    return list(reversed(window[-limit:])) if window else []


def _links(
    request: web.Request, keys: list[int], limit: int, query: Any, carried: tuple[str, ...]
) -> dict[str, str]:
    """The ``Link`` header: ``next`` (older, when the page is full) and ``prev`` (newer)."""
    if not keys:
        return {}
    base = request.url.with_query(None)
    kept = [(name, value) for name in carried for value in query.getall(name, [])]
    links = []
    if len(keys) >= limit:
        links.append(f'<{base.with_query([*kept, ("max_id", str(keys[-1]))])}>; rel="next"')
    links.append(f'<{base.with_query([*kept, ("min_id", str(keys[0]))])}>; rel="prev"')
    return {"Link": ", ".join(links)}
