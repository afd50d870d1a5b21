"""RSS and Atom feeds (review sites, blogs, news), filtered by keywords, with feedparser."""

from __future__ import annotations

import base64
import calendar
import hashlib
import xml.sax
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiohttp
import feedparser
from bs4 import BeautifulSoup
from pydantic import Field, ValidationError

from socialcrm.connector import (
    Author,
    Batch,
    Channel,
    ConnectorConfig,
    Credential,
    Cursor,
    InboundMessage,
    MalformedPayload,
    Quarantined,
    RetryableError,
    error_for_status,
)

#: Entry ids remembered in the cursor, newest first, to tell old entries from new ones.
SEEN_KEEP = 500


class RssConnector:
    """Polls one feed; new entries that mention a keyword become messages."""

    name: ClassVar[str] = "rss"
    channel: ClassVar[Channel] = "rss"

    class Config(ConnectorConfig):
        """Settings of a feed source."""

        url: str
        #: An entry is kept when its title or text contains one of these (case-insensitive);
        #: empty keeps every entry (a feed that is about the brand already).
        keywords: list[str] = Field(default_factory=list)
        timeout_s: float = 30.0
        #: HTTP basic credentials, for feeds behind a login (review-site partner feeds).
        username: str | None = None
        password: Credential | None = None

    def __init__(self, config: Config, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http
        self._keywords = [k.lower() for k in config.keywords]

    async def fetch(self, cursor: Cursor | None) -> Batch:
        """Get the feed (conditionally, with ETag/Last-Modified) and return unseen entries."""
        cursor = dict(cursor or {})
        headers = {}
        if self.config.username is not None:
            secret = self.config.password.get_secret_value() if self.config.password else ""
            token = base64.b64encode(f"{self.config.username}:{secret}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        if cursor.get("etag"):
            headers["If-None-Match"] = cursor["etag"]
        if cursor.get("modified"):
            headers["If-Modified-Since"] = cursor["modified"]
        try:
            async with self.http.get(
                self.config.url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            ) as resp:
                if resp.status == 304:
                    return Batch(cursor=cursor)
                body = await resp.read()
                if (
                    err := error_for_status(
                        resp.status, resp.headers, body[:300].decode("utf-8", "replace")
                    )
                ) is not None:
                    raise err
                etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        except (aiohttp.ClientError, TimeoutError) as err:
            raise RetryableError(f"feed unreachable: {err!r}") from err
        parsed = feedparser.parse(body)
        if not parsed.entries and (parsed.bozo or not parsed.get("version")):
            raise MalformedPayload(f"not a feed: {parsed.get('bozo_exception')!r}")
        problem = parsed.get("bozo_exception")
        if isinstance(problem, xml.sax.SAXParseException) and "entity" not in str(problem):
            # Broken XML (a cut-off answer): what parsed may be a part; try the whole again.
            raise MalformedPayload(f"feed is not well-formed XML: {problem}")
        seen = list(cursor.get("seen", []))
        known = set(seen)
        batch = Batch()
        fresh: list[str] = []
        for entry in parsed.entries:
            ident = _entry_id(entry)
            if ident in known:
                continue
            fresh.append(ident)
            try:
                message = self._message(entry, ident)
            except (ValidationError, ValueError, TypeError) as err:
                batch.quarantined.append(
                    Quarantined(external_id=ident, error=str(err), raw=repr(dict(entry))[:100_000])
                )
                continue
            if self._wanted(message.text):
                batch.messages.append(message)
        batch.cursor = {
            "seen": (fresh + seen)[:SEEN_KEEP],
            "etag": etag,
            "modified": modified,
        }
        return batch

    def _wanted(self, text: str) -> bool:
        if not self._keywords:
            return True
        low = text.lower()
        return any(k in low for k in self._keywords)

    def _message(self, entry: Any, ident: str) -> InboundMessage:
        title = _text(entry.get("title", ""))
        summary = _text(
            entry.get("content", [{}])[0].get("value")
            if entry.get("content")
            else entry.get("summary", "")
        )
        text = (
            f"{title}\n\n{summary}".strip() if title and title not in summary else summary or title
        )
        when = entry.get("published_parsed") or entry.get("updated_parsed")
        created = datetime.fromtimestamp(calendar.timegm(when), UTC) if when else datetime.now(UTC)
        return InboundMessage(
            channel="rss",
            external_id=ident,
            text=text,
            subject=title[:998] or None,
            author=_author(entry),
            created_at=created,
            url=entry.get("link"),
            direct=False,
            raw={"feed": self.config.url, "id": entry.get("id"), "link": entry.get("link")},
        )


def _author(entry: Any) -> Author:
    """A reviewer: a name, and an address when the feed gives one (a site's user name is
    their handle there)."""
    detail = entry.get("author_detail") or {}
    name = (detail.get("name") or entry.get("author") or "").strip() or None
    return Author(name=name, email=detail.get("email") or None, handle=name)


def _entry_id(entry: Any) -> str:
    ident = entry.get("id") or entry.get("link")
    if ident:
        return str(ident)[:512]
    digest = hashlib.sha256(f"{entry.get('title')}|{entry.get('summary')}".encode()).hexdigest()
    return f"sha256:{digest[:40]}"


def _text(html: str | None) -> str:
    if not html:
        return ""
    if "<" not in html:
        return html.strip()
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style"]):
        tag.decompose()
    return " ".join(soup.get_text(" ").split())
