"""Stand-in for X API v2: mentions, recent search, posting a reply, ``/2/users/me``, and the
OAuth 2.0 token endpoint (refresh grant).

Shapes follow the X API v2 reference (docs.x.com): a page is ``{"data": [...], "includes":
{"users": [...]}, "meta": {"result_count", "newest_id", "oldest_id", "next_token"}}`` with the
newest post first, an empty page is ``{"meta": {"result_count": 0}}``; only the default fields
(``id``, ``text``, ``edit_history_tweet_ids``) come back unless ``tweet.fields`` /
``user.fields`` ask for more. Errors are problem JSON (``title``, ``detail``, ``type``,
``status``); rate limits are in ``x-rate-limit-limit/remaining/reset`` (epoch seconds).

Search understands a small part of X's query language: words (a tokenised match, so ``acme``
does not match ``@acme`` or ``#acme``), ``"phrases"``, ``@mentions``, ``#hashtags``, ``OR``,
``-negation``, ``lang:``, ``from:``, ``is:reply`` and ``is:retweet``; parentheses are ignored.

The platform's limits are kept, each citing the page of docs.x.com (mirrored in the public
``xdevplatform/docs`` repository) that states it:

- OAuth 2.0 user access tokens last two hours; a refresh rotates the refresh token
  (``fundamentals/authentication/oauth-2-0/authorization-code.mdx``).
- Recent search serves the last seven days and refuses an older ``since_id``
  (``x-api/posts/search/introduction.mdx``); the mentions timeline serves the newest 800
  (``x-api/posts/timelines/introduction.mdx``).
- Self-serve tiers may reply only to a post that mentions or quotes the replying account
  (``x-api/posts/manage-tweets/integrate.mdx``, "Reply restrictions"; changelog 2026-02-23).
- A project over its usage cap gets 429 ``usage-capped`` (``x-api/fundamentals/
  response-codes-and-errors.mdx``; body fields from ``UsageCapExceededProblem`` in the spec).
- An edit is a new post whose ``edit_history_tweet_ids`` lists every version, oldest first
  (``x-api/fundamentals/edit-posts.mdx``).
- ``text`` carries ``&``, ``<`` and ``>`` as HTML entities (the example in
  ``x-api/fundamentals/data-dictionary.mdx``); a post over 280 weighted characters has its
  ``text`` cut short, the whole of it in ``note_tweet`` when ``tweet.fields`` asks for it
  (same page, "note_tweet").
- A retweet is a post of its own whose ``text`` is ``RT @author: `` and the original, cut
  to 140 characters with an ellipsis, and whose ``referenced_tweets`` has the original as
  ``retweeted`` (data dictionary, "referenced_tweets"); a retweet of a post naming @brand, or
  of the brand's own post, names @brand too and is in its mentions timeline.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import re
import secrets
import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Literal

from aiohttp import web

from socialcrm.connector import Author, InboundMessage
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
from socialcrm.xtext import MAX_POST_WEIGHT, post_weight

#: The brand's account on the stand-in.
BRAND_USER_ID: Final = "1585736014429175808"
X_EPOCH_MS: Final = 1_288_834_974_657
PROBLEMS: Final = "https://api.twitter.com/2/problems"
DEFAULT_TWEET_FIELDS: Final = ("id", "text", "edit_history_tweet_ids")
DEFAULT_USER_FIELDS: Final = ("id", "name", "username")
_COMMON_PARAMS: Final = (
    "end_time",
    "expansions",
    "max_results",
    "media.fields",
    "place.fields",
    "poll.fields",
    "since_id",
    "start_time",
    "tweet.fields",
    "until_id",
    "user.fields",
)
MENTIONS_PARAMS: Final = frozenset((*_COMMON_PARAMS, "pagination_token"))
SEARCH_PARAMS: Final = frozenset(
    (*_COMMON_PARAMS, "query", "next_token", "pagination_token", "sort_order")
)
#: Auth context of a request: "app" (app-only bearer) or "user" (user context).
X_CONTEXT: Final = web.RequestKey("socialcrm_x_context", str)
_B36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
#: The OAuth 2.0 app (a confidential client) and the refresh token the brand's grant gave it.
X_CLIENT_ID: Final = "sandbox-x-client-id"
X_CLIENT_SECRET: Final = "sandbox-x-client-secret"
X_REFRESH_TOKEN: Final = "sandbox-x-refresh-token"
#: User access tokens live two hours (authorization-code.mdx: "expires after two hours").
USER_TOKEN_TTL_S: Final = 7200.0
#: Recent search covers the last seven days (search/introduction.mdx).
SEARCH_WINDOW_S: Final = 7 * 86400.0
#: The mentions timeline serves the newest 800 posts (timelines/introduction.mdx).
MENTIONS_CAP: Final = 800
#: Where a long post's ``text`` is cut (seen on X: 270 characters, at a word).
LONG_POST_CUT: Final = 270
#: A retweet's ``RT @author: text`` is cut to this many characters, the last an ellipsis.
RETWEET_CUT: Final = 140
#: X's answer to a reply the author did not summon us to (self-serve tiers; observed body).
NOT_SUMMONED: Final = (
    "Reply to this conversation is not allowed because you have not been mentioned or "
    "otherwise engaged by the author of the post you are replying to."
)
Tier = Literal["self-serve", "enterprise"]
_TOKEN_PAD: Final = 15


def snowflake_ms(tweet_id: int) -> int:
    """The epoch milliseconds a post id was made at (X ids are snowflakes)."""
    return (tweet_id >> 22) + X_EPOCH_MS


def _b36(n: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = _B36[r] + out
    return out or "0"


def encode_token(tweet_id: str) -> str:
    """A pagination token: opaque to clients, it names the oldest post already served."""
    return "7140" + _b36(int(tweet_id)).rjust(_TOKEN_PAD, "0")


def decode_token(token: str) -> int | None:
    """The post id a token stands for, or None when it is not one of ours."""
    if not token.startswith("7140") or len(token) != 4 + _TOKEN_PAD:
        return None
    try:
        return int(token[4:], 36)
    except ValueError:
        return None


def problem(
    status: int, title: str, detail: str, kind: str = "about:blank", **extra: Any
) -> web.Response:
    """An X problem-JSON error answer."""
    body: dict[str, Any] = {"title": title, "detail": detail, "type": kind, "status": status}
    body.update(extra)
    return json_answer(body, status, problem=True)


def invalid_request(message: str, parameters: dict[str, list[str]]) -> web.Response:
    """X's 400 for a bad parameter."""
    return json_answer(
        {
            "errors": [{"parameters": parameters, "message": message}],
            "title": "Invalid Request",
            "detail": "One or more parameters to your request was invalid.",
            "type": f"{PROBLEMS}/invalid-request",
        },
        400,
        problem=True,
    )


def _cut_short(text: str) -> str:
    """A long post's ``text`` as X sends it: over 280 weighted characters, cut at a word within
    270 (the whole text is only in ``note_tweet``, and only when asked for)."""
    if post_weight(text) <= MAX_POST_WEIGHT:
        return text
    # The longest start that weighs at most LONG_POST_CUT (CJK and emoji weigh 2).
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if post_weight(text[:mid]) <= LONG_POST_CUT else (low, mid - 1)
    head = text[:low]
    space = head.rfind(" ")
    return head[:space] if space > 0 else head


def _words(text: str) -> set[str]:
    return set(re.findall(r"(?<![@#\w])\w+", text.lower()))


def query_matcher(query: str) -> Callable[[InboundMessage], bool]:
    """A predicate for the supported subset of X's search query language."""
    try:
        tokens = shlex.split(query.replace("(", " ").replace(")", " "), posix=True)
    except ValueError:
        tokens = query.split()
    groups: list[list[tuple[bool, str]]] = [[]]
    for token in tokens:
        if token == "OR":
            groups.append([])
            continue
        negated = token.startswith("-") and len(token) > 1
        groups[-1].append((negated, token[1:] if negated else token))

    def term_holds(term: str, message: InboundMessage, words: set[str], low: str) -> bool:
        t = term.lower()
        if t.startswith("lang:"):
            return (message.lang or "") == t[5:]
        if t.startswith("from:"):
            return (message.author.handle or "").lower() == t[5:].lstrip("@")
        if t == "is:reply":
            return message.in_reply_to is not None
        if t == "is:retweet":
            return False
        if t.startswith(("@", "#")):
            return re.search(rf"(?<![\w@#]){re.escape(t)}(?!\w)", low) is not None
        if " " in t:
            return t in low
        return t in words

    def wanted(message: InboundMessage) -> bool:
        low = message.text.lower()
        words = _words(message.text)
        return any(
            group and all(term_holds(term, message, words, low) != neg for neg, term in group)
            for group in groups
        )

    return wanted


class XStandIn(StandIn):
    """X API v2 under ``/x``: the brand's mentions, recent search and replies."""

    platform: ClassVar[Platform] = "x"

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        handle = sandbox.brand_handle
        self.brand_user: dict[str, Any] = {
            "id": BRAND_USER_ID,
            "name": sandbox.brand,
            "username": handle,
            "created_at": "2012-06-01T09:00:00.000Z",
            "description": f"Official {sandbox.brand} support. We're here to help.",
            "verified": True,
            "verified_type": "business",
            "protected": False,
            "public_metrics": {
                "followers_count": 284_113,
                "following_count": 1_022,
                "tweet_count": 48_917,
                "listed_count": 903,
                "like_count": 12_440,
            },
        }
        self._mention = re.compile(rf"(?<![\w@]){re.escape('@' + handle)}(?!\w)", re.IGNORECASE)
        self._by_id: dict[str, int] = {}
        self._handles: dict[str, str] = {}
        self._posted: dict[str, str] = {}  # reply id -> text
        self._seq = 0
        #: Self-serve (pay per use, Basic, Pro) or Enterprise: only the first restricts replies.
        self.tier: Tier = "self-serve"
        #: Live user access tokens -> when each expires (sandbox clock); live refresh tokens.
        now = sandbox.clock()
        self.access_tokens: dict[str, float] = {
            sandbox.credentials.x_user_token: now + USER_TOKEN_TTL_S
        }
        self.refresh_tokens: set[str] = {X_REFRESH_TOKEN}
        #: Refresh grants answered, and the client secret a confidential client must send.
        self.refreshes = 0
        self.client_secret: str | None = X_CLIENT_SECRET
        #: While set, every API call answers 429 usage-capped for this period.
        self.usage_capped: Literal["Daily", "Monthly"] | None = None
        #: Posts made on the platform while it runs (edits), oldest first.
        self.extra: list[InboundMessage] = []
        # The platform's "now": the traffic's start plus the time the clock has run since,
        # or the newest visible post's time if the traffic has run ahead of the clock.
        self._origin = (sandbox.generator.start.timestamp(), now)

    def routes(self) -> list[web.RouteDef]:
        """``GET /2/users/me``, ``GET /2/users/:id/mentions``, ``GET /2/tweets/search/recent``,
        ``POST /2/tweets``, ``POST /2/oauth2/token``."""
        return [
            web.post("/2/oauth2/token", self.token),
            web.get("/2/users/me", self.me),
            web.get("/2/users/{id}/mentions", self.mentions),
            web.get("/2/tweets/search/recent", self.search),
            web.post("/2/tweets", self.create),
        ]

    # -- the platform's manners -----------------------------------------------------------

    def authenticate(self, request: web.Request) -> web.Response | None:
        """Bearer tokens (app-only or user context) or an OAuth 1.0a header."""
        creds = self.sandbox.credentials
        auth = request.headers.get("Authorization", "")
        if request.path.endswith("/2/oauth2/token"):
            return None  # the client authenticates in the form or with Basic (see ``token``)
        if auth.startswith("Bearer "):
            token = auth[7:].strip()
            if token == creds.x_bearer_token:
                request[X_CONTEXT] = "app"
                return None
            expires = self.access_tokens.get(token)
            if expires is not None and self.sandbox.clock() < expires:
                request[X_CONTEXT] = "user"
                return None
            # An expired user token is refused like any unknown one: 401 (authorization-code.mdx).
        elif auth.startswith("OAuth "):
            fields = dict(re.findall(r'(\w+)="([^"]*)"', auth))
            if (
                fields.get("oauth_consumer_key") == creds.x_consumer_key
                and fields.get("oauth_token") == creds.x_access_token
            ):
                request[X_CONTEXT] = "user"
                return None
        return self.error(401)

    def bucket(self, request: web.Request) -> tuple[str, int, float]:
        """Per-endpoint 15-minute windows with X's documented limits."""
        path = request.path
        if path.endswith("/mentions"):
            return "mentions", 450, 900.0
        if path.endswith("/search/recent"):
            return "search", 450, 900.0
        if path.endswith("/users/me"):
            return "me", 75, 900.0
        if path.endswith("/oauth2/token"):
            return "oauth2", 300, 900.0
        return "tweets", 100, 900.0

    def rate_headers(
        self, limit: int, remaining: int, used: int, reset_at: float, now: float
    ) -> dict[str, str]:
        """``x-rate-limit-*``; the reset is in epoch seconds."""
        return {
            "x-rate-limit-limit": str(limit),
            "x-rate-limit-remaining": str(remaining),
            "x-rate-limit-reset": str(int(reset_at)),
        }

    def error(self, status: int) -> web.Response:
        """Problem JSON, or the HTML a gateway sends for 502."""
        if status == 401:
            return problem(401, "Unauthorized", "Unauthorized")
        if status == 403:
            return problem(403, "Forbidden", "Forbidden")
        if status == 404:
            return json_answer(
                {"errors": [{"message": "Sorry, that page does not exist", "code": 34}]}, 404
            )
        if status == 429:
            return problem(429, "Too Many Requests", "Too Many Requests")
        if status == 502:
            return web.Response(
                text="<html><head><title>502 Bad Gateway</title></head><body>"
                "<center><h1>502 Bad Gateway</h1></center></body></html>",
                status=502,
                content_type="text/html",
            )
        if status == 503:
            return problem(503, "Service Unavailable", "Service Unavailable")
        return problem(status, "Internal Server Error", "Internal Server Error")

    def break_envelope(self, payload: Any) -> Any:
        """A v1.1-looking answer: ``statuses`` and ``search_metadata``, no ``data``/``meta``."""
        if isinstance(payload, dict):
            return {"statuses": payload.get("data"), "search_metadata": payload.get("meta")}
        return {"statuses": payload}

    # -- shapes -----------------------------------------------------------------------------

    def is_mention(self, message: InboundMessage) -> bool:
        """Whether a post shows up in the brand's mentions timeline (it names ``@brand``)."""
        return self._mention.search(message.text) is not None

    def tweet(self, message: InboundMessage, fields: set[str]) -> dict[str, Any]:
        """The post as X returns it with ``tweet.fields=fields``."""
        raw = message.raw
        plain = raw.get("text", message.text)
        shown = _cut_short(plain)
        out: dict[str, Any] = {
            "id": message.external_id,
            # X sends ``&``, ``<`` and ``>`` as HTML entities (the data dictionary's example
            # reads "understand &amp; respond"); entity offsets count the plain text.
            "text": html.escape(shown, quote=False),
            "edit_history_tweet_ids": list(
                raw.get("edit_history_tweet_ids", [message.external_id])
            ),
        }
        for name in sorted(fields):
            if name in out:
                continue
            if name in raw:
                out[name] = copy.deepcopy(raw[name])
                if name == "public_metrics":
                    # The spec requires these two; the traffic does not count them.
                    out[name].setdefault("bookmark_count", 0)
                    out[name].setdefault("impression_count", 0)
            elif name == "in_reply_to_user_id" and message.in_reply_to:
                parent = self._lookup(message.in_reply_to)
                if parent is not None and parent.author.user_id:
                    out[name] = parent.author.user_id
            elif name == "entities":
                out[name] = self._entities(shown)
            elif name == "note_tweet" and shown != plain:
                note: dict[str, Any] = {"text": html.escape(plain, quote=False)}
                if entities := self._entities(plain):
                    note["entities"] = entities
                out[name] = note
            elif name == "reply_settings":
                out[name] = "everyone"
            elif name == "possibly_sensitive":
                out[name] = False
        return out

    def user(self, author: Author, fields: set[str]) -> dict[str, Any]:
        """An author as an X user object with ``user.fields=fields``."""
        seed = int(author.user_id or "0") % 9973
        followers = author.followers or 0
        full: dict[str, Any] = {
            "id": author.user_id,
            "name": author.name or author.handle,
            "username": author.handle,
            "verified": author.verified,
            "protected": False,
            "created_at": f"20{10 + seed % 14:02d}-0{1 + seed % 9}-1{seed % 10}T12:00:00.000Z",
            "description": "",
            "public_metrics": {
                "followers_count": followers,
                "following_count": 40 + seed % 900,
                "tweet_count": 200 + seed * 7,
                "listed_count": followers // 500,
                "like_count": 300 + seed * 3,
            },
        }
        return {k: v for k, v in full.items() if k in DEFAULT_USER_FIELDS or k in fields}

    def _entities(self, text: str) -> dict[str, Any]:
        mentions: list[dict[str, Any]] = []
        for m in re.finditer(r"(?<![\w@])@(\w{1,15})", text):
            mention: dict[str, Any] = {"start": m.start(), "end": m.end(), "username": m.group(1)}
            user_id = self._user_ids().get(m.group(1).lower())
            if user_id is not None:
                mention["id"] = user_id  # X names the account mentioned, when it exists
            mentions.append(mention)
        tags = [
            {"start": m.start(), "end": m.end(), "tag": m.group(1)}
            for m in re.finditer(r"(?<![\w#])#(\w+)", text)
        ]
        out: dict[str, Any] = {}
        if mentions:
            out["mentions"] = mentions
        if tags:
            out["hashtags"] = tags
        return out

    def _user_ids(self) -> dict[str, str]:
        """Handle (lower case) -> user id of every account the stand-in knows."""
        if not self._handles:
            self._handles[self.sandbox.brand_handle.lower()] = BRAND_USER_ID
            for message in self.sandbox.messages["x"]:
                author = message.author
                if author.handle and author.user_id:
                    self._handles.setdefault(author.handle.lower(), author.user_id)
        return self._handles

    def _index(self, tweet_id: str) -> int | None:
        if not self._by_id:
            self._by_id = {m.external_id: i for i, m in enumerate(self.sandbox.messages["x"])}
        return self._by_id.get(tweet_id)

    def _lookup(self, tweet_id: str) -> InboundMessage | None:
        index = self._index(tweet_id)
        if index is None:
            return next((m for m in self.extra if m.external_id == tweet_id), None)
        return self.sandbox.messages["x"][index]

    def _visible_id(self, tweet_id: str) -> bool:
        index = self._index(tweet_id)
        if index is None:
            return tweet_id in self._posted or any(m.external_id == tweet_id for m in self.extra)
        return index < self.sandbox.released_count("x")

    def now(self) -> float:
        """The platform's time, in epoch seconds (see ``__init__``)."""
        start, clock0 = self._origin
        now = start + (self.sandbox.clock() - clock0)
        count = self.sandbox.released_count("x")
        if count:
            now = max(now, self.sandbox.messages["x"][count - 1].created_at.timestamp())
        if self.extra:
            now = max(now, self.extra[-1].created_at.timestamp())
        return now

    def _new_id(self, at: float, worker: int) -> str:
        """A snowflake id for a post made at ``at`` (epoch seconds) by this stand-in."""
        self._seq = (self._seq + 1) & 0xFFF
        return str(((int(at * 1000) - X_EPOCH_MS) << 22) | (worker << 12) | self._seq)

    def edit(self, tweet_id: str, text: str) -> InboundMessage:
        """The author edits a visible post: a new post, ``edit_history_tweet_ids`` the chain."""
        old = self._lookup(tweet_id)
        if old is None or not self._visible_id(tweet_id):
            raise KeyError(tweet_id)
        history = [*old.raw.get("edit_history_tweet_ids", [tweet_id])]
        now = self.now() + 1.0
        new_id = self._new_id(now, 2)
        created = datetime.fromtimestamp(now, old.created_at.tzinfo)
        raw = {
            **copy.deepcopy(old.raw),
            "id": new_id,
            "text": text,
            "created_at": iso_z(now),
            "edit_history_tweet_ids": [*history, new_id],
        }
        post = old.model_copy(
            update={"external_id": new_id, "text": text, "created_at": created, "raw": raw}
        )
        self.extra.append(post)
        return post

    def retweet(self, tweet_id: str, by: Author) -> InboundMessage:
        """``by`` retweets a visible post (or one of the brand's own replies)."""
        old = self._lookup(tweet_id)
        if old is not None and self._visible_id(tweet_id):
            handle, text = old.author.handle, old.raw.get("text", old.text)
        elif tweet_id in self._posted:
            handle, text = self.sandbox.brand_handle, self._posted[tweet_id]
        else:
            raise KeyError(tweet_id)
        shown = f"RT @{handle}: {text}"
        if len(shown) > RETWEET_CUT:
            shown = shown[: RETWEET_CUT - 1] + "\u2026"
        now = self.now() + 1.0
        new_id = self._new_id(now, 2)
        created = datetime.fromtimestamp(now, UTC)
        raw = {
            "id": new_id,
            "text": shown,
            "author_id": by.user_id,
            "created_at": iso_z(now),
            "conversation_id": new_id,
            "edit_history_tweet_ids": [new_id],
            "referenced_tweets": [{"type": "retweeted", "id": tweet_id}],
            "public_metrics": {"retweet_count": 0, "reply_count": 0, "like_count": 0},
        }
        if old is not None and old.lang:
            raw["lang"] = old.lang
        post = InboundMessage(
            channel="x",
            external_id=new_id,
            text=shown,
            author=by,
            created_at=created,
            lang=old.lang if old is not None else None,
            conversation_id=new_id,
            raw=raw,
        )
        self.extra.append(post)
        return post

    def _capped(self) -> web.Response | None:
        """429 usage-capped while the project is over its cap (UsageCapExceededProblem)."""
        if self.usage_capped is None:
            return None
        return problem(
            429,
            "UsageCapExceeded",
            f"Usage cap exceeded: {self.usage_capped} product cap",
            f"{PROBLEMS}/usage-capped",
            period=self.usage_capped,
            scope="Product",
        )

    def _candidates(
        self, indexes: list[int], wanted: Callable[[InboundMessage], bool]
    ) -> list[InboundMessage]:
        messages = self.sandbox.messages["x"]
        out = [messages[i] for i in indexes] + [m for m in self.extra if wanted(m)]
        if self.extra:
            out.sort(key=lambda m: int(m.external_id))
        return out

    # -- endpoints --------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        """``POST /2/oauth2/token`` with ``grant_type=refresh_token``: new tokens, the refresh
        token rotated (the one sent stops working). authorization-code.mdx, "Refresh tokens"."""
        form = await request.post()
        client_id = str(form.get("client_id", ""))
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                secret = ""
            if client_id != X_CLIENT_ID or secret != self.client_secret:
                return _oauth_error(
                    401, "unauthorized_client", "Missing valid authorization header"
                )
        elif self.client_secret is not None or client_id != X_CLIENT_ID:
            # A confidential client must authenticate with Basic; a public one names itself.
            return _oauth_error(401, "unauthorized_client", "Missing valid authorization header")
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "invalid_request", "Missing required parameter [grant_type].")
        refresh = str(form.get("refresh_token", ""))
        if refresh not in self.refresh_tokens:
            return _oauth_error(400, "invalid_request", "Value passed for the token was invalid.")
        self.refresh_tokens.discard(refresh)
        access, rotated = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access_tokens[access] = self.sandbox.clock() + USER_TOKEN_TTL_S
        self.refresh_tokens.add(rotated)
        self.refreshes += 1
        return json_answer(
            {
                "token_type": "bearer",
                "expires_in": int(USER_TOKEN_TTL_S),
                "access_token": access,
                "scope": "tweet.read users.read tweet.write offline.access",
                "refresh_token": rotated,
            }
        )

    def revoke_refresh_tokens(self) -> None:
        """The brand revoked the app's access: no refresh token works any more."""
        self.refresh_tokens.clear()

    async def mentions(self, request: web.Request) -> web.Response:
        """``GET /2/users/:id/mentions``: posts naming the user, newest first."""
        user_id = request.match_info["id"]
        if not user_id.isdigit():
            return invalid_request(
                f"The `id` query parameter value [{user_id}] is not valid", {"id": [user_id]}
            )
        capped = self._capped()
        if capped is not None:
            return capped
        indexes = self.visible("mentions", self.is_mention) if user_id == BRAND_USER_ID else []
        posts = self._candidates(indexes, self.is_mention)[-MENTIONS_CAP:]
        return self._page(request, posts, MENTIONS_PARAMS, 5, "pagination_token")

    async def search(self, request: web.Request) -> web.Response:
        """``GET /2/tweets/search/recent``: posts matching ``query``, newest first."""
        query = request.query.get("query", "").strip()
        if not query:
            return invalid_request(
                "The `query` query parameter can not be empty", {"query": [query]}
            )
        if len(query) > 512:
            return invalid_request(
                "The `query` query parameter value is too long", {"query": [query]}
            )
        capped = self._capped()
        if capped is not None:
            return capped
        matcher = query_matcher(query)
        indexes = self.visible(f"search:{query}", matcher)
        oldest_ms = int((self.now() - SEARCH_WINDOW_S) * 1000)
        edge = datetime.fromtimestamp(oldest_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")
        for name in ("since_id", "until_id"):
            value = request.query.get(name, "")
            if value.isdigit() and snowflake_ms(int(value)) < oldest_ms:
                larger = (oldest_ms - X_EPOCH_MS) << 22
                return invalid_request(
                    f"'{name}' must be a tweet id created after {edge}. "
                    f"Please use a '{name}' that is larger than {larger}",
                    {name: [value]},
                )
        times: dict[str, float] = {}
        for name in ("start_time", "end_time"):
            if name not in request.query:
                continue
            value = request.query[name]
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return invalid_request(
                    f"Invalid '{name}':'{value}'. '{name}' must be a valid RFC 3339 date-time",
                    {name: [value]},
                )
            stamp = moment.timestamp() if moment.tzinfo else moment.replace(tzinfo=UTC).timestamp()
            if name == "start_time" and stamp * 1000 < oldest_ms:
                return invalid_request(
                    f"Invalid 'start_time':'{value}'. 'start_time' must be on or after {edge}",
                    {name: [value]},
                )
            times[name] = stamp
        start_ms = max(oldest_ms, int(times.get("start_time", 0) * 1000))
        end = times.get("end_time")
        posts = [
            m
            for m in self._candidates(indexes, matcher)
            if m.created_at.timestamp() * 1000 >= start_ms
            and (end is None or m.created_at.timestamp() < end)
        ]
        token_param = "next_token" if "next_token" in request.query else "pagination_token"
        return self._page(request, posts, SEARCH_PARAMS, 10, token_param)

    def _page(
        self,
        request: web.Request,
        posts: list[InboundMessage],
        allowed: frozenset[str],
        min_results: int,
        token_param: str,
    ) -> web.Response:
        query = request.query
        for name in query:
            if name not in allowed:
                return invalid_request(
                    f"The query parameter [{name}] is not one of [{','.join(sorted(allowed))}]",
                    {name: [query[name]]},
                )
        raw_max = query.get("max_results", "10")
        if not raw_max.isdigit() or not min_results <= int(raw_max) <= 100:
            return invalid_request(
                f"The `max_results` query parameter value [{raw_max}] is not between "
                f"{min_results} and 100",
                {"max_results": [raw_max]},
            )
        max_results = int(raw_max)
        bounds: dict[str, int | None] = {}
        for name in ("since_id", "until_id"):
            value = query.get(name)
            if value is not None and not value.isdigit():
                return invalid_request(
                    f"The `{name}` query parameter value [{value}] is not valid", {name: [value]}
                )
            bounds[name] = int(value) if value else None
        before: int | None = None
        token = query.get(token_param)
        if token is not None:
            before = decode_token(token)
            if before is None:
                return invalid_request(
                    f"The `{token_param}` query parameter value [{token}] is not valid",
                    {token_param: [token]},
                )
        since, until = bounds["since_id"], bounds["until_id"]
        chosen: list[InboundMessage] = []
        more = False
        for message in reversed(posts):
            tid = int(message.external_id)
            if since is not None and tid <= since:
                break  # ids grow with time: everything further is older still
            if (until is not None and tid >= until) or (before is not None and tid >= before):
                continue
            if len(chosen) == max_results:
                more = True
                break
            chosen.append(message)
        if not chosen:
            return json_answer({"meta": {"result_count": 0}})
        tweet_fields = _split(query.get("tweet.fields"))
        user_fields = _split(query.get("user.fields"))
        ids = [m.external_id for m in chosen]
        broken = self.broken(ids)
        data = []
        for message in chosen:
            tweet = self.tweet(message, tweet_fields)
            if message.external_id in broken:
                tweet = self._corrupt(tweet)
            data.append(tweet)
        body: dict[str, Any] = {"data": data}
        if "author_id" in _split(query.get("expansions")):
            users: dict[str, dict[str, Any]] = {}
            for message in chosen:
                if message.author.user_id and message.author.user_id not in users:
                    users[message.author.user_id] = self.user(message.author, user_fields)
            body["includes"] = {"users": list(users.values())}
        meta: dict[str, Any] = {
            "newest_id": ids[0],
            "oldest_id": ids[-1],
            "result_count": len(ids),
        }
        if more:
            meta["next_token"] = encode_token(ids[-1])
        body["meta"] = meta
        request[SERVED] = [i for i in ids if i not in broken]
        request[CORRUPTED] = [i for i in ids if i in broken]
        return json_answer(body)

    def _corrupt(self, tweet: dict[str, Any]) -> dict[str, Any]:
        how = self.sandbox.faults.breakage("x", tweet["id"], 3)
        broken = dict(tweet)
        if how == 0:
            del broken["id"]
        elif how == 1:
            broken["created_at"] = "last Tuesday"
        else:
            broken["text"] = None
            broken.pop("note_tweet", None)  # no whole text to fall back on either
        return broken

    async def create(self, request: web.Request) -> web.Response:
        """``POST /2/tweets``: a reply (user context only); 201 ``{"data": {"id", "text"}}``."""
        if request.get(X_CONTEXT) != "user":
            return problem(
                403,
                "Unsupported Authentication",
                "Authenticating with OAuth 2.0 Application-Only is forbidden for this endpoint.  "
                "Supported authentication types are [OAuth 1.0a User Context, OAuth 2.0 User "
                "Context].",
                f"{PROBLEMS}/unsupported-authentication",
            )
        try:
            body = json.loads(await request.read())
        except ValueError:
            return problem(
                400,
                "Invalid Request",
                "Request body is not valid JSON.",
                f"{PROBLEMS}/invalid-request",
            )
        if not isinstance(body, dict):
            return problem(
                400,
                "Invalid Request",
                "Request body must be an object.",
                f"{PROBLEMS}/invalid-request",
            )
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return invalid_request("$.text: is missing but it is required", {"text": []})
        reply = body.get("reply") or {}
        target = reply.get("in_reply_to_tweet_id") if isinstance(reply, dict) else None
        if target is not None and not self._visible_id(str(target)):
            return invalid_request(
                f"The `reply.in_reply_to_tweet_id` value [{target}] does not exist",
                {"reply.in_reply_to_tweet_id": [str(target)]},
            )
        capped = self._capped()
        if capped is not None:
            return capped
        if target is not None and not self._summoned(str(target)):
            return problem(403, "Forbidden", NOT_SUMMONED)
        if text in self._posted.values():
            return problem(
                403, "Forbidden", "You are not allowed to create a Tweet with duplicate content."
            )
        tweet_id = self._new_id(self.sandbox.clock(), 1)
        self._posted[tweet_id] = text
        self.sandbox.replies.append(
            PostedReply(
                "x",
                tweet_id,
                str(target) if target is not None else None,
                text,
                posted_at=self.sandbox.clock(),
            )
        )
        # TweetCreateResponse in the spec: ``data`` is ``{"id", "text"}``.
        return json_answer({"data": {"id": tweet_id, "text": text}}, 201)

    def _summoned(self, target: str) -> bool:
        """Whether a reply to ``target`` is allowed: always on Enterprise; on self-serve tiers
        only when its author mentioned the brand or quoted one of its posts, or it is ours."""
        if self.tier == "enterprise" or target in self._posted:
            return True
        post = self._lookup(target)
        if post is None:
            return False
        quoted = {
            str(ref.get("id"))
            for ref in post.raw.get("referenced_tweets") or []
            if isinstance(ref, dict) and ref.get("type") == "quoted"
        }
        return self.is_mention(post) or bool(quoted & set(self._posted))

    async def me(self, request: web.Request) -> web.Response:
        """``GET /2/users/me``: the brand account (user context only)."""
        if request.get(X_CONTEXT) != "user":
            return problem(
                403,
                "Unsupported Authentication",
                "Authenticating with OAuth 2.0 Application-Only is forbidden for this endpoint.  "
                "Supported authentication types are [OAuth 1.0a User Context, OAuth 2.0 User "
                "Context].",
                f"{PROBLEMS}/unsupported-authentication",
            )
        fields = _split(request.query.get("user.fields"))
        user = {k: v for k, v in self.brand_user.items() if k in DEFAULT_USER_FIELDS or k in fields}
        return json_answer({"data": user})


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    """An OAuth 2.0 error answer (RFC 6749 section 5.2), the shape X's token endpoint uses."""
    return json_answer({"error": error, "error_description": description}, status)


def _split(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}
