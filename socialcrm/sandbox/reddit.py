"""Stand-in for Reddit's OAuth API: tokens, search, subreddit comments, posting a comment.

Shapes follow reddit.com/dev/api and the OAuth2 wiki. ``POST /api/v1/access_token`` (HTTP basic
auth with the app's id and secret; ``grant_type=password`` for a script app or
``client_credentials``) answers ``{"access_token", "token_type": "bearer", "expires_in",
"scope"}``; a wrong password is a 200 with ``{"error": "invalid_grant"}``, a wrong app a 401.
``GET /search`` and ``GET /r/{subreddit}/comments`` answer Listings (``{"kind": "Listing",
"data": {"after", "before", "dist", "children": [{"kind": "t3"|"t1", "data": {...}}]}}``),
newest first, paged with ``after``/``before`` fullnames; without ``raw_json=1`` ``&<>`` in text
come HTML-escaped, as on Reddit. ``POST /api/comment`` with ``api_type=json`` answers
``{"json": {"errors": [], "data": {"things": [...]}}}`` (``errors`` holds ``[code, message,
field]`` triples: ``USER_REQUIRED``, ``NO_THING_ID``, ``NO_TEXT``). HTTP errors are
``{"message", "error"}``; rate limits are in ``X-Ratelimit-Used/Remaining/Reset`` (seconds to
the window's end).

What Reddit does that a kind server would not, modelled here:

- A listing serves at most ``LISTING_CAP`` (1000) items, however far ``after`` goes (r2
  precomputes listings to 1000 items; PRAW's listing docs: "Reddit's listings are limited to
  1000 items").
- A subreddit may be private (403 ``{"reason": "private", "message": "Forbidden", "error":
  403}``), quarantined (403 with ``"reason": "quarantined"`` and a ``quarantine_message``) or
  banned (404 ``{"reason": "banned", "message": "Not Found", "error": 404}``), as r2's
  ``abort(403, "private")``-style errors and PRAW's handling of them show (:meth:`close`).
- Search shows posts late (the index lags, :data:`SEARCH_LAG_S`): each post becomes searchable
  between 0 and ``search_lag_s`` seconds after it was made, so a later post may be found
  before an earlier one (:meth:`searchable`). Listings of a subreddit's comments do not lag.
- Deleted and removed items keep their place in listings with ``[deleted]``/``[removed]``
  bodies (:meth:`remove`).
- ``POST /api/comment`` may answer ``RATELIMIT`` in ``json.errors`` (HTTP 200), with the wait
  in minutes, seconds or milliseconds in the message (:meth:`throttle_comments`).

Search understands words (all must appear in the title or text), ``"phrases"``, ``OR`` and
``subreddit:`` / ``author:``; it only finds posts (``type=link``), as Reddit's does.
"""

from __future__ import annotations

import base64
import html
import re
import shlex
import zlib
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal

from aiohttp import web

from socialcrm.connector import InboundMessage
from socialcrm.sandbox.server import (
    CORRUPTED,
    SERVED,
    Platform,
    PostedReply,
    Sandbox,
    StandIn,
    json_answer,
)

BRAND_FULLNAME: Final = "t2_1q2w3e4r"
LIMIT: Final = (25, 100)  # default, max
#: Items of one listing Reddit serves at most.
LISTING_CAP: Final = 1000
#: How late, at most, a new post shows in search. Reddit does not publish a figure; this is an
#: assumption from how its search was built: r2 (reddit-archive/reddit, r2/lib/cloudsearch.py,
#: ``run_changed``) queues every change on ``cloudsearch_changes`` and uploads it in batches
#: (at least 500 changes, or every 10 seconds) to a separate search service that applies them
#: in its own time, and users report new posts "taking a few minutes" to be found. Five
#: minutes, spread evenly over the posts, is that order; the connector's default re-read
#: window (``search_overlap_s``, 15 minutes) is three times as long.
SEARCH_LAG_S: Final = 300.0
SubredditState = Literal["private", "quarantined", "banned"]
_QUARANTINE_MESSAGE: Final = (
    "This community is quarantined: it may contain misinformation or content that is "
    "upsetting. You must opt in to view it."
)
#: The username the request's token acts for ("" for an app-only token).
REDDIT_USER: Final = web.RequestKey("socialcrm_reddit_user", str)
_B36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_CDN_PAGE: Final = (
    "<!doctype html><html><head><title>reddit.com: server error</title></head><body>"
    "<h1>Our CDN was unable to reach our servers</h1><p>Please try again in a few minutes.</p>"
    "</body></html>"
)


def _b36(n: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = _B36[r] + out
    return out or "0"


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def search_matcher(query: str) -> Callable[[InboundMessage], bool]:
    """A predicate for the supported subset of Reddit's search syntax (posts only)."""
    try:
        tokens = shlex.split(query, posix=True)
    except ValueError:
        tokens = query.split()
    groups: list[list[str]] = [[]]
    for token in tokens:
        if token == "OR":
            groups.append([])
        elif token != "AND":
            groups[-1].append(token.lower())

    def holds(term: str, message: InboundMessage, words: set[str], low: str) -> bool:
        data = message.raw.get("data", {})
        if term.startswith("subreddit:"):
            return str(data.get("subreddit", "")).lower() == term[10:]
        if term.startswith("author:"):
            return (message.author.handle or "").lower() == term[7:]
        if " " in term:
            return term in low
        return term in words

    def wanted(message: InboundMessage) -> bool:
        if not message.external_id.startswith("t3_"):
            return False
        text = f"{message.subject or ''}\n{message.text}"
        low, words = text.lower(), _words(text)
        return any(group and all(holds(t, message, words, low) for t in group) for group in groups)

    return wanted


class RedditStandIn(StandIn):
    """Reddit under ``/reddit``: the token endpoint and the OAuth API on one prefix."""

    platform: ClassVar[Platform] = "reddit"

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        #: Issued tokens: token -> (expires at, username or "" for app-only).
        self.tokens: dict[str, tuple[float, str]] = {}
        self._by_name: dict[str, int] = {}
        self._posted: dict[str, dict[str, Any]] = {}
        self._issued = 0
        self._comments = 0
        #: Subreddits that refuse to be read, by lower-case name.
        self.closed: dict[str, SubredditState] = {}
        #: Items one listing serves at most (Reddit's 1000; a test may lower it to stay small).
        self.listing_cap = LISTING_CAP
        #: How late, at most, search shows a post (seconds; 0 turns the lag off).
        self.search_lag_s = SEARCH_LAG_S
        #: Fullnames shown as deleted or removed: fullname -> "[deleted]" or "[removed]".
        self.removed: dict[str, str] = {}
        self._comment_errors: list[str] = []
        #: Requests to each subreddit's comments listing (answered, refused or faulted).
        self.hits: dict[str, int] = {}

    def routes(self) -> list[web.RouteDef]:
        """Token, search (site-wide and in a subreddit), comments, posting, ``/api/v1/me``."""
        return [
            web.post("/api/v1/access_token", self.access_token),
            web.get("/search", self.search),
            web.get("/r/{subreddit}/search", self.search),
            web.get("/r/{subreddits}/comments", self.comments),
            web.post("/api/comment", self.comment),
            web.get("/api/v1/me", self.me),
        ]

    def close(self, subreddit: str, state: SubredditState) -> None:
        """Make a subreddit private, quarantined or banned."""
        self.closed[subreddit.lower()] = state

    def remove(self, fullname: str, how: str = "[removed]") -> None:
        """Show an item as ``[removed]`` by a moderator (or ``[deleted]`` by its author)."""
        self.removed[fullname] = how

    def throttle_comments(self, message: str, times: int = 1) -> None:
        """Answer the next ``times`` comments with a ``RATELIMIT`` error saying ``message``."""
        self._comment_errors.extend([message] * times)

    def refusal(self, subreddits: list[str]) -> web.Response | None:
        """Reddit's answer for a listing of a private, quarantined or banned subreddit."""
        for sub in subreddits:
            state = self.closed.get(sub.lower())
            if state == "banned":
                return json_answer({"reason": "banned", "message": "Not Found", "error": 404}, 404)
            if state == "private":
                return json_answer({"reason": "private", "message": "Forbidden", "error": 403}, 403)
            if state == "quarantined":
                return json_answer(
                    {
                        "reason": "quarantined",
                        "quarantine_message": _QUARANTINE_MESSAGE,
                        "quarantine_message_html": f"<p>{_QUARANTINE_MESSAGE}</p>",
                        "message": "Forbidden",
                        "error": 403,
                    },
                    403,
                )
        return None

    def lag_s(self, fullname: str) -> float:
        """How late search shows this post: a fixed share of ``search_lag_s`` per fullname."""
        return self.search_lag_s * (zlib.crc32(fullname.encode()) % 1000) / 999

    def now_utc(self) -> float:
        """Reddit's time now: the newest released item's time, plus the clock since then."""
        count = self.sandbox.released_count("reddit")
        if not count:
            return 0.0
        newest = self.sandbox.messages["reddit"][count - 1]
        since = self.sandbox.clock() - self.sandbox.released_at["reddit"][count - 1]
        return newest.created_at.timestamp() + max(0.0, since)

    def searchable(self, index: int, now_utc: float) -> bool:
        """Whether the search index has taken in this released post by ``now_utc``."""
        message = self.sandbox.messages["reddit"][index]
        return message.created_at.timestamp() + self.lag_s(message.external_id) <= now_utc

    def expire_tokens(self) -> None:
        """Expire every issued token (the next API call gets a 401)."""
        self.tokens = {token: (0.0, user) for token, (_, user) in self.tokens.items()}

    # -- the platform's manners -----------------------------------------------------------

    def authenticate(self, request: web.Request) -> web.Response | None:
        """HTTP basic auth for the token endpoint, a live bearer token everywhere else."""
        creds = self.sandbox.credentials
        auth = request.headers.get("Authorization", "")
        listing = re.search(r"/r/([^/]+)/comments$", request.path)
        if listing is not None:
            for sub in listing[1].lower().split("+"):
                self.hits[sub] = self.hits.get(sub, 0) + 1
        if request.path.endswith("/api/v1/access_token"):
            expected = f"{creds.reddit_client_id}:{creds.reddit_client_secret}".encode()
            if auth == "Basic " + base64.b64encode(expected).decode():
                return None
            return self.error(401)
        if auth.startswith("bearer ") or auth.startswith("Bearer "):
            issued = self.tokens.get(auth[7:].strip())
            if issued is not None and issued[0] > self.sandbox.clock():
                request[REDDIT_USER] = issued[1]
                return None
        answer = self.error(401)
        answer.headers["WWW-Authenticate"] = 'Bearer realm="reddit", error="invalid_token"'
        return answer

    def bucket(self, request: web.Request) -> tuple[str, int, float]:
        """1000 requests per 10 minutes for the API (100 a minute); tokens apart."""
        if request.path.endswith("/api/v1/access_token"):
            return "auth", 300, 600.0
        return "api", 1000, 600.0

    def rate_headers(
        self, limit: int, remaining: int, used: int, reset_at: float, now: float
    ) -> dict[str, str]:
        """``X-Ratelimit-*``; the reset is in seconds from now."""
        return {
            "X-Ratelimit-Used": str(used),
            "X-Ratelimit-Remaining": f"{float(remaining):.1f}",
            "X-Ratelimit-Reset": str(max(0, int(reset_at - now))),
        }

    def error(self, status: int) -> web.Response:
        """``{"message", "error"}``, or the CDN's HTML page for 5xx."""
        messages = {
            400: "Bad Request",
            401: "Unauthorized",
            403: "Forbidden",
            404: "Not Found",
            429: "Too Many Requests",
        }
        if status in messages:
            return json_answer({"message": messages[status], "error": status}, status)
        return web.Response(text=_CDN_PAGE, status=status, content_type="text/html")

    def break_envelope(self, payload: Any) -> Any:
        """A Listing without its ``data`` (or a comment answer without ``json``)."""
        if isinstance(payload, dict):
            return {k: v for k, v in payload.items() if k not in ("data", "json")} or {"ok": 1}
        return {"kind": "Listing"}

    # -- shapes -----------------------------------------------------------------------------

    def thing(self, message: InboundMessage, raw_json: bool) -> dict[str, Any]:
        """The message as a Listing child (``t3`` post or ``t1`` comment)."""
        data: dict[str, Any] = dict(message.raw.get("data", {}))
        kind = message.external_id[:2]
        sub = str(data.get("subreddit", ""))
        data.update(
            subreddit_name_prefixed=f"r/{sub}",
            subreddit_id="t5_" + _b36(sum(map(ord, sub.lower())) * 7919),
            created=float(data.get("created_utc", 0)) - 28_800,  # legacy: Pacific time
            ups=data.get("score", 1),
            downs=0,
            edited=False,
            distinguished=None,
            stickied=False,
            locked=False,
            archived=False,
            over_18=False,
            author_flair_text=None,
        )
        text_key = "selftext" if kind == "t3" else "body"
        gone = self.removed.get(message.external_id)
        if gone is not None:
            data[text_key] = gone
            if gone == "[deleted]":
                data.update(author="[deleted]", author_fullname=None)
        text = str(data.get(text_key, ""))
        data[f"{text_key}_html"] = html.escape(
            f'<div class="md"><p>{html.escape(text)}</p>\n</div>', quote=False
        )
        if kind == "t3":
            data.update(
                url=f"https://www.reddit.com{data.get('permalink', '')}",
                domain=f"self.{sub}",
                is_self=True,
            )
        else:
            link = self._lookup(str(data.get("link_id", "")))
            if link is not None and link.subject:
                data["link_title"] = link.subject
            else:
                slug = str(data.get("permalink", "")).strip("/").split("/")
                data["link_title"] = slug[4].replace("_", " ").capitalize() if len(slug) > 4 else ""
            data["link_permalink"] = (
                "https://www.reddit.com"
                + "/".join(str(data.get("permalink", "")).split("/")[:6])
                + "/"
            )
            data["is_submitter"] = link is not None and link.author.handle == message.author.handle
        if not raw_json:
            for key in ("title", "selftext", "body"):
                if isinstance(data.get(key), str):
                    data[key] = html.escape(data[key], quote=False)
        return {"kind": kind, "data": data}

    def _index(self, fullname: str) -> int | None:
        if not self._by_name:
            self._by_name = {
                m.external_id: i for i, m in enumerate(self.sandbox.messages["reddit"])
            }
        return self._by_name.get(fullname)

    def _lookup(self, fullname: str) -> InboundMessage | None:
        index = self._index(fullname)
        return None if index is None else self.sandbox.messages["reddit"][index]

    def _corrupt(self, child: dict[str, Any]) -> dict[str, Any]:
        data = dict(child["data"])
        how = self.sandbox.faults.breakage("reddit", str(data.get("name")), 3)
        if how == 0:
            data.pop("name", None)
            data.pop("id", None)
        elif how == 1:
            data["created_utc"] = "yesterday"
        else:
            data["body" if child["kind"] == "t1" else "selftext"] = None
            data["title"] = None
        return {"kind": child["kind"], "data": data}

    def _listing(self, request: web.Request, indexes: list[int]) -> web.Response:
        query = request.query
        try:
            limit = min(LIMIT[1], max(1, int(query.get("limit", LIMIT[0]))))
        except ValueError:
            limit = LIMIT[0]
        messages = self.sandbox.messages["reddit"]
        newest_first = [messages[i] for i in reversed(indexes)][: self.listing_cap]
        names = [m.external_id for m in newest_first]
        after, before = query.get("after"), query.get("before")
        start, stop = 0, min(limit, len(names))
        if after:
            if after not in names:
                start = stop = 0
            else:
                start = names.index(after) + 1
                stop = min(len(names), start + limit)
        elif before:
            if before not in names:
                start = stop = 0
            else:
                stop = names.index(before)
                start = max(0, stop - limit)
        page = newest_first[start:stop]
        raw_json = query.get("raw_json") == "1"
        ids = [m.external_id for m in page]
        broken = self.broken(ids)
        children = []
        for message in page:
            child = self.thing(message, raw_json)
            children.append(self._corrupt(child) if message.external_id in broken else child)
        request[SERVED] = [i for i in ids if i not in broken]
        request[CORRUPTED] = [i for i in ids if i in broken]
        return json_answer(
            {
                "kind": "Listing",
                "data": {
                    "after": ids[-1] if page and stop < len(names) else None,
                    "dist": len(page),
                    "modhash": "",
                    "geo_filter": "",
                    "children": children,
                    "before": ids[0] if page and start > 0 else None,
                },
            }
        )

    # -- endpoints --------------------------------------------------------------------------

    async def access_token(self, request: web.Request) -> web.Response:
        """``POST /api/v1/access_token``: a bearer token for a script app or app-only."""
        form = await request.post()
        creds = self.sandbox.credentials
        grant = form.get("grant_type")
        if grant == "password":
            if (
                form.get("username") != creds.reddit_username
                or form.get("password") != creds.reddit_password
            ):
                return json_answer({"error": "invalid_grant"})
            user = str(creds.reddit_username)
        elif grant == "client_credentials":
            user = ""
        else:
            return json_answer({"error": "unsupported_grant_type"}, 400)
        self._issued += 1
        token = f"{self._issued}-sandbox{_b36(self.sandbox.seed * 7919 + self._issued * 104729)}"
        ttl = creds.reddit_token_ttl_s
        self.tokens[token] = (self.sandbox.clock() + ttl, user)
        return json_answer(
            {"access_token": token, "token_type": "bearer", "expires_in": ttl, "scope": "*"}
        )

    async def search(self, request: web.Request) -> web.Response:
        """``GET /search`` and ``GET /r/{subreddit}/search``: matching posts, newest first."""
        query = request.query
        q = query.get("q", "").strip()
        types = query.get("type", "link").split(",")
        if not q or "link" not in types:
            return self._listing(request, [])
        indexes = self.visible(f"search:{q.lower()}", search_matcher(q))
        if self.search_lag_s:
            now = self.now_utc()
            indexes = [i for i in indexes if self.searchable(i, now)]
        subreddit = request.match_info.get("subreddit")
        if subreddit and query.get("restrict_sr") in ("1", "true", "on"):
            messages = self.sandbox.messages["reddit"]
            indexes = [
                i
                for i in indexes
                if str(messages[i].raw["data"].get("subreddit", "")).lower() == subreddit.lower()
            ]
        return self._listing(request, indexes)

    async def comments(self, request: web.Request) -> web.Response:
        """``GET /r/{sub1+sub2}/comments``: the newest comments in those subreddits."""
        wanted = {s.lower() for s in request.match_info["subreddits"].split("+") if s}
        refused = self.refusal(sorted(wanted))
        if refused is not None:
            return refused
        messages = self.sandbox.messages["reddit"]
        indexes = self.visible("comments", lambda m: m.external_id.startswith("t1_"))
        if "all" not in wanted:
            indexes = [
                i
                for i in indexes
                if str(messages[i].raw["data"].get("subreddit", "")).lower() in wanted
            ]
        return self._listing(request, indexes)

    async def comment(self, request: web.Request) -> web.Response:
        """``POST /api/comment``: reply to a post or comment (a user token is needed)."""
        if not request.get(REDDIT_USER):
            return json_answer(
                {"json": {"errors": [["USER_REQUIRED", "Please log in to do that.", None]]}}
            )
        form = await request.post()
        if self._comment_errors:
            message = self._comment_errors.pop(0)
            return json_answer({"json": {"errors": [["RATELIMIT", message, "ratelimit"]]}})
        thing_id = str(form.get("thing_id") or "")
        text = str(form.get("text") or "")
        if form.get("api_type") != "json":
            return json_answer({"jquery": [], "success": False})
        if not text.strip():
            return json_answer(
                {"json": {"errors": [["NO_TEXT", "we need something here", "text"]]}}
            )
        index = self._index(thing_id)
        visible = index is not None and index < self.sandbox.released_count("reddit")
        if not visible and thing_id not in self._posted:
            return json_answer(
                {"json": {"errors": [["NO_THING_ID", "couldn't find that thing", "thing_id"]]}}
            )
        parent = self._lookup(thing_id)
        parent_data: dict[str, Any] = (
            parent.raw.get("data", {}) if parent is not None else self._posted[thing_id]
        )
        self._comments += 1
        cid = _b36(36**6 + self._comments * 7)
        link_id = thing_id if thing_id.startswith("t3_") else str(parent_data.get("link_id", ""))
        sub = str(parent_data.get("subreddit", ""))
        post_path = "/".join(str(parent_data.get("permalink", "")).split("/")[:6])
        now = self.sandbox.clock()
        user = request[REDDIT_USER]
        name = f"t1_{cid}"
        data: dict[str, Any] = {
            "id": cid,
            "name": name,
            "author": user,
            "author_fullname": BRAND_FULLNAME,
            "body": text,
            "body_html": html.escape(f'<div class="md"><p>{html.escape(text)}</p>\n</div>'),
            "link_id": link_id,
            "parent_id": thing_id,
            "subreddit": sub,
            "subreddit_name_prefixed": f"r/{sub}",
            "permalink": f"{post_path}/{cid}/",
            "created_utc": now,
            "created": now - 28_800,
            "score": 1,
            "ups": 1,
            "downs": 0,
            "edited": False,
            "distinguished": None,
            "stickied": False,
        }
        self._posted[name] = data
        self.sandbox.replies.append(PostedReply("reddit", name, thing_id, text, posted_at=now))
        return json_answer(
            {"json": {"errors": [], "data": {"things": [{"kind": "t1", "data": data}]}}}
        )

    async def me(self, request: web.Request) -> web.Response:
        """``GET /api/v1/me``: the script app's account."""
        user = request.get(REDDIT_USER)
        if not user:
            return self.error(403)
        return json_answer(
            {
                "name": user,
                "id": BRAND_FULLNAME[3:],
                "created_utc": 1_500_000_000.0,
                "link_karma": 1,
            }
        )
