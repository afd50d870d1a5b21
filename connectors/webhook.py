"""Inbound webhook: any system that can POST JSON, authenticated by an HMAC signature.

The daemon serves ``POST /hooks/inbound/{source}`` and hands the raw body and headers to
``WebhookConnector.accept``. The signature is HMAC-SHA256 over ``{timestamp}.{body}`` with the
source's secret, sent as ``X-Socialcrm-Signature: sha256=<hex>`` with
``X-Socialcrm-Timestamp: <unix seconds>``; requests older than the replay window are refused.

The body is one message or a list of them::

    {"id": "form-123", "text": "...", "author": {"email": "...", "name": "..."},
     "created_at": "2026-03-02T09:00:00Z", "subject": "...", "in_reply_to": null,
     "conversation_id": null, "url": null}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp
from pydantic import ValidationError

from socialcrm.connector import (
    AuthError,
    Batch,
    Channel,
    ConnectorConfig,
    Cursor,
    InboundMessage,
    OutboundReply,
    Quarantined,
    SentReceipt,
    SigningSecret,
    error_for_status,
)

SIGNATURE_HEADER = "X-Socialcrm-Signature"
TIMESTAMP_HEADER = "X-Socialcrm-Timestamp"
#: Largest body accepted, in bytes.
MAX_BODY = 1_000_000


class Refused(AuthError):
    """A request that is not let in; ``status`` is the HTTP answer, the message says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


class WebhookConnector:
    """Push-only source: messages arrive by HTTP; replies go to an optional callback URL."""

    name: ClassVar[str] = "webhook"
    channel: ClassVar[Channel] = "webhook"

    class Config(ConnectorConfig):
        """Settings of an inbound webhook source."""

        secret: SigningSecret
        #: Requests whose timestamp is further from now than this are refused (replays).
        replay_window_s: float = 300.0
        #: Where approved replies are POSTed (signed the same way); none: replies not sent.
        reply_url: str | None = None

    def __init__(self, config: Config, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http
        #: Signatures accepted within the replay window: the same request twice is refused.
        self._seen: dict[str, float] = {}

    async def fetch(self, cursor: Cursor | None) -> Batch:
        """Nothing to poll: webhook messages are pushed."""
        return Batch(cursor=cursor)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
        """Refuse a request that is not signed with our secret, or is stale or replayed."""
        now = time.time() if now is None else now
        if len(body) > MAX_BODY:
            raise Refused(413, f"body larger than {MAX_BODY} bytes")
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        signature = headers.get(SIGNATURE_HEADER, "")
        if not timestamp or not signature:
            raise Refused(401, f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
        # Unix seconds in ASCII digits only: float() would take "nan" (never outside any
        # window), "inf", "1e9" and other scripts' digits.
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
            raise Refused(401, "bad timestamp")
        sent_at = float(timestamp)
        if abs(now - sent_at) > self.config.replay_window_s:
            raise Refused(401, "timestamp outside the replay window")
        expected = sign(self.config.secret.get_secret_value(), timestamp, body)
        if not hmac.compare_digest(expected, signature):
            raise Refused(401, "bad signature")
        window = self.config.replay_window_s
        self._seen = {sig: at for sig, at in self._seen.items() if now - at <= window}
        if signature in self._seen:
            raise Refused(401, "this request was already received (replay)")
        self._seen[signature] = now

    def parse(self, body: bytes) -> Batch:
        """Messages from a verified body; items that do not validate are quarantined."""
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return Batch(
                quarantined=[
                    Quarantined(error=f"not JSON: {err}", raw=body.decode("utf-8", "replace"))
                ]
            )
        items = data if isinstance(data, list) else [data]
        batch = Batch()
        for item in items:
            try:
                batch.messages.append(self._message(item))
            except (ValidationError, TypeError, ValueError) as err:
                batch.quarantined.append(
                    Quarantined(
                        external_id=(
                            str(item["id"])
                            if isinstance(item, dict) and item.get("id") is not None
                            else None
                        ),
                        error=_first_error(err),
                        raw=json.dumps(item, ensure_ascii=False, default=str)[:100_000],
                    )
                )
        return batch

    def _message(self, item: Any) -> InboundMessage:
        if not isinstance(item, dict):
            raise TypeError(f"expected a JSON object, got {type(item).__name__}")
        fields = dict(item)
        if "external_id" not in fields and "id" in fields:
            fields["external_id"] = str(fields.pop("id"))
        fields["channel"] = "webhook"
        fields.setdefault("raw", item)
        return InboundMessage.model_validate(fields)

    @classmethod
    def sends_with(cls, config: Config) -> bool:
        """Replies go out only to a configured callback URL."""
        return bool(config.reply_url)

    async def send(self, reply: OutboundReply) -> SentReceipt:
        """POST an approved reply to the configured callback URL, signed."""
        if not self.config.reply_url:
            raise AuthError("this webhook source has no reply_url; replies cannot be sent")
        body = json.dumps(
            {
                "reply_id": reply.reply_id,
                "in_reply_to": reply.in_reply_to,
                "ticket_id": reply.ticket_id,
                "to_email": reply.to_email,
                "text": reply.text,
            }
        ).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(self.config.secret.get_secret_value(), ts, body),
        }
        async with self.http.post(self.config.reply_url, data=body, headers=headers) as resp:
            text = await resp.text()
            if (err := error_for_status(resp.status, resp.headers, text)) is not None:
                raise err
        try:
            answer = json.loads(text) if text else {}
        except json.JSONDecodeError:
            answer = {}
        ext = answer.get("id") if isinstance(answer, dict) else None
        return SentReceipt(external_id=str(ext or f"webhook-reply-{reply.reply_id}"))


def _first_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(message)"
        return f"{where}: {e['msg']}"
    return str(err)
