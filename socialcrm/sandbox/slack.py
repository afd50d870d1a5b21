"""Stand-in for the part of the Slack Web API socialcrm uses, and for Slack's side of a click.

Methods follow api.slack.com/methods (docs.slack.dev/reference/methods): ``auth.test``,
``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``, ``views.open`` and
``conversations.history`` under ``/api/``, each taking form-encoded or JSON arguments (or, as
Slack allows, query arguments on a GET) and a bearer token. Like Slack, every
answer is HTTP 200 with ``{"ok": true, ...}`` or ``{"ok": false, "error": "invalid_auth"}``,
except a rate limit, which is HTTP 429 with ``Retry-After`` and ``{"ok": false, "error":
"ratelimited"}``. Message ``ts`` values look like Slack's (``"1712345678.000100"``, unique per
workspace here), trigger ids expire after 3 seconds and can be exchanged once, and blocks are
checked against Block Kit's size limits so a card that Slack would refuse is refused here too.
Messages keep their metadata (docs.slack.dev/messaging/message-metadata), which
``conversations.history`` shows only when asked with ``include_all_metadata``.

A post can be answered late (:meth:`SlackWorkspace.hold_answers`): the message is in the
channel, but the answer carrying its ts waits until the test lets it go, so the caller can be
killed in between, as a poster dying after Slack's answer and before storing it would be.

Slack refuses for good, and says so the way it does (HTTP 200, ``ok: false``; each method's
"Errors" table at docs.slack.dev/reference/methods/chat.postMessage): a revoked token is
``token_revoked``, a deactivated bot ``account_inactive``, a token without ``chat:write``
``missing_scope`` (with ``needed`` and ``provided``), an archived channel ``is_archived``, a
channel the bot is not a member of ``not_in_channel``. Slack's own trouble is an HTTP 5xx
(:meth:`SlackWorkspace.fail_http_next`).

Posts to a ``response_url`` (``/hooks/commands/...`` and ``/hooks/actions/...``) are recorded.

Slack's side of an interaction is built by :meth:`SlackWorkspace.click` (a button on a card),
:meth:`SlackWorkspace.submit` (a modal) and :meth:`SlackWorkspace.slash` (a slash command),
each returning the form body and the signed headers Slack would send::

    workspace = SlackWorkspace(channels={"C0APPROVALS": "approvals"})
    async with TestServer(make_slack_app(workspace), host="127.0.0.1") as server:
        workspace.base_url = str(server.make_url(""))
        ...                                  # cards get posted to the stand-in
        body, headers = workspace.click(workspace.card(7), "approve", "U0DANA")
        await http.post(f"{socialcrm_url}/slack/interactions", data=body, headers=headers)
"""

from __future__ import annotations

import asyncio
import base64
import decimal
import itertools
import json
import secrets
import string
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from slack_sdk.signature import SignatureVerifier

#: Block Kit limits that Slack enforces (docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS: Final = 50
MAX_SECTION_TEXT: Final = 3000
MAX_CONTEXT_ELEMENTS: Final = 10
MAX_ACTION_ELEMENTS: Final = 25
MAX_BUTTON_VALUE: Final = 2000
MAX_BUTTON_TEXT: Final = 75
MAX_MESSAGE_TEXT: Final = 40000
MAX_MODAL_TITLE: Final = 24
MAX_INPUT_VALUE: Final = 3000
#: A trigger id can be exchanged for a modal this long after the interaction.
TRIGGER_TTL_S: Final = 3.0

#: The scope each method needs (docs.slack.dev/reference/methods/<method>, "Required scopes").
_SCOPES: Final = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    # Public channels; a private one would need groups:history.
    "conversations.history": "channels:history",
}
#: conversations.history: the default and the largest ``limit``
#: (docs.slack.dev/reference/methods/conversations.history, "Arguments").
HISTORY_LIMIT: Final = 100
HISTORY_MAX_LIMIT: Final = 999

_STATE: Final[web.AppKey[SlackWorkspace]] = web.AppKey("socialcrm_slack_workspace")
_ID_CHARS: Final = string.ascii_uppercase + string.digits


def signed_request(
    signing_secret: str, body: bytes, timestamp: float | None = None
) -> dict[str, str]:
    """The headers Slack sends with a request body: content type, timestamp and v0 signature."""
    ts = str(int(time.time() if timestamp is None else timestamp))
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


@dataclass
class SlackMessage:
    """A message in a channel as the stand-in holds it, with every update in order."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    #: Message metadata (``event_type`` and ``event_payload``) as posted or last updated.
    metadata: dict[str, Any] | None = None
    #: Each ``chat.update`` as ``{"text": ..., "blocks": [...]}``, oldest first.
    updates: list[dict[str, Any]] = field(default_factory=list)

    def buttons(self) -> dict[str, dict[str, Any]]:
        """The message's buttons by ``action_id``, with the ``block_id`` they sit in."""
        found: dict[str, dict[str, Any]] = {}
        for block in self.blocks:
            if block.get("type") != "actions":
                continue
            for element in block.get("elements", []):
                if element.get("type") == "button" and "action_id" in element:
                    found[element["action_id"]] = {**element, "block_id": block.get("block_id")}
        return found

    def all_text(self) -> str:
        """Every text in the message (fallback text and blocks), for assertions."""
        parts = [self.text]

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("text"), str):
                    parts.append(node["text"])
                for value in node.values():
                    if isinstance(value, dict | list):
                        walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(self.blocks)
        return "\n".join(parts)


@dataclass
class _Fault:
    error: str
    retry_after_s: int | None


@dataclass
class SlackWorkspace:
    """One Slack workspace with the socialcrm app installed: its state and what was done there."""

    signing_secret: str = "sandbox-slack-signing-secret"
    bot_token: str = "xoxb-sandbox-bot-token"
    team_id: str = "T0SANDBOX1"
    team: str = "Sandbox"
    bot_user_id: str = "U0SOCIALCRM"
    bot_id: str = "B0SOCIALCRM"
    app_id: str = "A0SOCIALCRM"
    #: Channel id -> name; posting anywhere else is ``channel_not_found``.
    channels: dict[str, str] = field(default_factory=lambda: {"C0APPROVALS": "approvals"})
    #: User id -> name, for the payloads of clicks and slash commands.
    users: dict[str, str] = field(default_factory=dict)
    #: Where this stand-in is served (``http://127.0.0.1:PORT``), for ``response_url`` values.
    base_url: str = "http://127.0.0.1"
    clock: Callable[[], float] = time.time
    messages: list[SlackMessage] = field(default_factory=list)
    ephemeral: list[dict[str, Any]] = field(default_factory=list)
    #: Views opened with ``views.open``: the view as answered, plus ``user_id`` and ``trigger_id``.
    views: list[dict[str, Any]] = field(default_factory=list)
    #: Posts to a ``response_url``: ``{"url": ..., "json": {...}}``.
    responses: list[dict[str, Any]] = field(default_factory=list)
    #: Every Web API call, answered or not: ``(method, arguments)``.
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Every JSON answer given: ``(method, http status, body)``, to check against Slack's spec.
    answers: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    #: Archived channels (posting is ``is_archived``).
    archived: set[str] = field(default_factory=set)
    #: Channels the bot was removed from (posting is ``not_in_channel``).
    outside: set[str] = field(default_factory=set)
    #: The bot token's scopes; a method whose scope is missing is ``missing_scope``.
    scopes: set[str] = field(
        default_factory=lambda: {"chat:write", "commands", "chat:write.public", "channels:history"}
    )
    #: The token was revoked (``token_revoked``), or the bot deactivated (``account_inactive``).
    revoked: bool = False
    inactive: bool = False
    _faults: dict[str, deque[_Fault]] = field(default_factory=dict)
    _http_faults: dict[str, deque[int]] = field(default_factory=dict)
    _triggers: dict[str, tuple[float, str]] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _changed: asyncio.Event | None = None
    #: Methods whose next answers are held back, and the answers held now.
    _holds: dict[str, int] = field(default_factory=dict)
    held: list[tuple[str, asyncio.Event]] = field(default_factory=list)

    # -- what the tests set up and look at -------------------------------------------------

    def fail_next(self, method: str, error: str, *, times: int = 1, retry_after_s: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with ``error`` (ratelimited: a 429)."""
        queue = self._faults.setdefault(method, deque())
        for _ in range(times):
            queue.append(_Fault(error, retry_after_s if error == "ratelimited" else None))

    def fail_http_next(self, method: str, status: int = 503, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with an HTTP ``status`` error page."""
        self._http_faults.setdefault(method, deque()).extend([status] * times)

    def hold_answers(self, method: str, *, times: int = 1) -> None:
        """Do the next ``times`` calls of ``method``, but hold their answers until released."""
        self._holds[method] = self._holds.get(method, 0) + times

    def release(self) -> None:
        """Let every held answer go (to whoever is still there to read it)."""
        for _, gate in self.held:
            gate.set()
        self.held.clear()

    def take_hold(self, method: str) -> asyncio.Event | None:
        """A gate to wait on before answering this call, if its answer is to be held."""
        if not self._holds.get(method):
            return None
        self._holds[method] -= 1
        gate = asyncio.Event()
        self.held.append((method, gate))
        self._notify()
        return gate

    def cards(self, reply_id: int) -> list[SlackMessage]:
        """Every message whose metadata names the reply (its approval cards), oldest first."""
        return [
            m
            for m in self.messages
            if ((m.metadata or {}).get("event_payload") or {}).get("reply_id") == reply_id
        ]

    def card(self, reply_id: int) -> SlackMessage:
        """The newest approval card of a reply: by its metadata, else by its buttons' value."""
        for msg in reversed(self.messages):
            payload = (msg.metadata or {}).get("event_payload") or {}
            if payload.get("reply_id") == reply_id:
                return msg
            if str(reply_id) in {b.get("value") for b in msg.buttons().values()}:
                return msg
        raise LookupError(f"no card for reply #{reply_id}")

    def message(self, channel: str, ts: str) -> SlackMessage | None:
        """A message by channel and ts."""
        for msg in self.messages:
            if msg.channel == channel and msg.ts == ts:
                return msg
        return None

    async def wait_for(self, check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Wait until ``check()`` is truthy (it is tried after every request) and return it."""
        if self._changed is None:
            self._changed = asyncio.Event()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            self._changed.clear()
            result = check()
            if result:
                return result
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError("the stand-in never saw what was waited for")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                continue

    # -- Slack's side of an interaction ----------------------------------------------------

    def slash(
        self,
        text: str,
        user_id: str,
        *,
        command: str = "/crm",
        channel_id: str = "C0APPROVALS",
        timestamp: float | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A signed slash command request, as Slack POSTs it to the app."""
        n = next(self._seq)
        form = {
            "token": "gIkuvaNzQIHg97ATvDxqgjtO",  # the deprecated verification token
            "team_id": self.team_id,
            "team_domain": self.team.lower(),
            "channel_id": channel_id,
            "channel_name": self.channels.get(channel_id, "directmessage"),
            "user_id": user_id,
            "user_name": self.users.get(user_id, user_id.lower()),
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": self._hook("commands", n),
            "trigger_id": self._trigger(user_id),
        }
        body = urllib.parse.urlencode(form).encode()
        return body, signed_request(self.signing_secret, body, timestamp)

    def click(
        self, card: SlackMessage, action_id: str, user_id: str, *, timestamp: float | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """A signed ``block_actions`` request for a button of a message, as Slack sends it."""
        button = card.buttons().get(action_id)
        if button is None:
            raise LookupError(f"the message has no button {action_id!r}")
        n = next(self._seq)
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": self.app_id,
            "token": "gIkuvaNzQIHg97ATvDxqgjtO",
            "container": {
                "type": "message",
                "message_ts": card.ts,
                "channel_id": card.channel,
                "is_ephemeral": False,
            },
            "trigger_id": self._trigger(user_id),
            "team": {"id": self.team_id, "domain": self.team.lower()},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": card.channel, "name": self.channels.get(card.channel, "")},
            "message": {
                "type": "message",
                "user": self.bot_user_id,
                "bot_id": self.bot_id,
                "ts": card.ts,
                "text": card.text,
                "blocks": card.blocks,
            },
            "state": {"values": {}},
            "response_url": self._hook("actions", n),
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": button["block_id"],
                    "text": button.get("text"),
                    "value": button.get("value"),
                    **({"style": button["style"]} if "style" in button else {}),
                    "action_ts": f"{self.clock():.6f}",
                }
            ],
        }
        return self._interaction(payload, timestamp)

    def submit(
        self,
        view: dict[str, Any],
        values: dict[str, str],
        user_id: str,
        *,
        timestamp: float | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A signed ``view_submission`` for an opened view; ``values`` maps action_id -> text."""
        state: dict[str, dict[str, Any]] = {}
        for block in view.get("blocks", []):
            element = block.get("element") or {}
            if block.get("type") != "input" or "action_id" not in element:
                continue
            action_id = element["action_id"]
            value = values.get(action_id, element.get("initial_value"))
            state[block["block_id"]] = {action_id: {"type": element["type"], "value": value}}
        payload: dict[str, Any] = {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": self.team.lower()},
            "user": self._user(user_id),
            "api_app_id": self.app_id,
            "token": "gIkuvaNzQIHg97ATvDxqgjtO",
            "trigger_id": self._trigger(user_id),
            "view": {**view, "state": {"values": state}},
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
        return self._interaction(payload, timestamp)

    def _interaction(
        self, payload: dict[str, Any], timestamp: float | None
    ) -> tuple[bytes, dict[str, str]]:
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        return body, signed_request(self.signing_secret, body, timestamp)

    def _user(self, user_id: str) -> dict[str, str]:
        name = self.users.get(user_id, user_id.lower())
        return {"id": user_id, "username": name, "name": name, "team_id": self.team_id}

    def _hook(self, kind: str, n: int) -> str:
        return (
            f"{self.base_url.rstrip('/')}/hooks/{kind}/{self.team_id}/{n}/{secrets.token_hex(12)}"
        )

    def _trigger(self, user_id: str) -> str:
        trigger = f"{int(self.clock())}.{next(self._seq)}.{secrets.token_hex(16)}"
        self._triggers[trigger] = (self.clock() + TRIGGER_TTL_S, user_id)
        return trigger

    def _ts(self) -> str:
        return f"{int(self.clock())}.{next(self._seq):06d}"

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # -- the Web API methods ---------------------------------------------------------------

    def call(self, method: str, args: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer one authenticated Web API call: ``(http status, body, headers)``."""
        self.calls.append((method, args))
        if self.revoked or self.inactive:
            self._notify()
            return 200, {"ok": False, "error": self._token_error()}, {}
        needed = _SCOPES.get(method)
        if needed is not None and needed not in self.scopes:
            self._notify()
            refused = {
                "ok": False,
                "error": "missing_scope",
                "needed": needed,
                "provided": ",".join(sorted(self.scopes)),
            }
            return 200, refused, {}
        queue = self._faults.get(method)
        if queue:
            fault = queue.popleft()
            self._notify()
            if fault.retry_after_s is not None:
                headers = {"Retry-After": str(fault.retry_after_s)}
                return 429, {"ok": False, "error": fault.error}, headers
            return 200, {"ok": False, "error": fault.error}, {}
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        answer: dict[str, Any] = handler(args)
        return 200, answer, {}

    def _token_error(self) -> str:
        return "token_revoked" if self.revoked else "account_inactive"

    def http_fault(self, method: str) -> int | None:
        """The HTTP error status queued for this call, if any."""
        queue = self._http_faults.get(method)
        if queue:
            self._notify()
            return queue.popleft()
        return None

    def _channel_error(self, channel: str | None) -> str | None:
        """Why a message cannot go to ``channel``, as Slack says it."""
        if not channel or channel not in self.channels:
            return "channel_not_found"
        if channel in self.archived:
            return "is_archived"
        if channel in self.outside:
            return "not_in_channel"
        return None

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{self.team.lower()}.slack.com/",
            "team": self.team,
            "user": "socialcrm",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _metadata(self, args: dict[str, Any]) -> dict[str, Any] | str | None:
        metadata = args.get("metadata")
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except ValueError:
                return "invalid_metadata_format"
        if metadata is None:
            return None
        if not isinstance(metadata, dict) or not isinstance(metadata.get("event_type"), str):
            return "invalid_metadata_schema"
        if not isinstance(metadata.get("event_payload"), dict):
            return "invalid_metadata_schema"
        return metadata

    def _content(self, args: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | str:
        """The text and blocks of a message, or the error Slack would give."""
        text = args.get("text")
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                return "invalid_blocks_format"
        if blocks is None:
            blocks = []
        if not isinstance(blocks, list):
            return "invalid_blocks_format"
        if not (text or "").strip() and not blocks:
            return "no_text"
        if text is not None and not isinstance(text, str):
            return "invalid_arguments"
        if text and len(text) > MAX_MESSAGE_TEXT:
            return "msg_too_long"
        problem = check_blocks(blocks)
        if problem:
            return "invalid_blocks"
        return text or "", blocks

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel") or "")
        problem = self._channel_error(channel)
        if problem:
            return {"ok": False, "error": problem}
        content = self._content(args)
        if isinstance(content, str):
            return {"ok": False, "error": content}
        text, blocks = content
        metadata = self._metadata(args)
        if isinstance(metadata, str):
            return {"ok": False, "error": metadata}
        msg = SlackMessage(channel, self._ts(), text, blocks, args.get("thread_ts"), metadata)
        self.messages.append(msg)
        self._notify()
        return {
            "ok": True,
            "channel": channel,
            "ts": msg.ts,
            "message": self._message_json(msg),
        }

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel") or "")
        problem = self._channel_error(channel)
        if problem:
            return {"ok": False, "error": problem}
        msg = self.message(channel, str(args.get("ts") or ""))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        content = self._content(args)
        if isinstance(content, str):
            return {"ok": False, "error": content}
        metadata = self._metadata(args)
        if isinstance(metadata, str):
            return {"ok": False, "error": metadata}
        msg.text, msg.blocks = content
        if metadata is not None:
            msg.metadata = metadata
        msg.updates.append({"text": msg.text, "blocks": msg.blocks})
        self._notify()
        return {
            "ok": True,
            "channel": channel,
            "ts": msg.ts,
            "text": msg.text,
            "message": self._message_json(msg),
        }

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not channel or channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        if not args.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        content = self._content(args)
        if isinstance(content, str):
            return {"ok": False, "error": content}
        ts = self._ts()
        self.ephemeral.append(
            {"channel": channel, "user": args["user"], "text": content[0], "blocks": content[1]}
        )
        self._notify()
        return {"ok": True, "message_ts": ts}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        trigger = args.get("trigger_id")
        if not trigger:
            return {"ok": False, "error": "invalid_arguments"}
        known = self._triggers.get(str(trigger))
        if known is None:
            parts = str(trigger).split(".")
            valid_shape = len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit()
            return {
                "ok": False,
                "error": "exchanged_trigger_id" if valid_shape else "invalid_trigger_id",
            }
        expires, user_id = known
        del self._triggers[str(trigger)]
        if self.clock() > expires:
            return {"ok": False, "error": "expired_trigger_id"}
        view = args.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                return {"ok": False, "error": "invalid_arguments"}
        if not isinstance(view, dict) or view.get("type") != "modal":
            return {"ok": False, "error": "invalid_arguments"}
        title = (view.get("title") or {}).get("text", "")
        blocks = view.get("blocks")
        if not title or len(title) > MAX_MODAL_TITLE or not isinstance(blocks, list):
            return {"ok": False, "error": "invalid_arguments"}
        has_input = any(b.get("type") == "input" for b in blocks)
        if (has_input and not view.get("submit")) or check_blocks(blocks):
            return {"ok": False, "error": "invalid_arguments"}
        view_id = "V" + "".join(secrets.choice(_ID_CHARS) for _ in range(10))
        opened = {
            "id": view_id,
            "team_id": self.team_id,
            "type": "modal",
            "title": view["title"],
            "submit": view.get("submit"),
            "close": view.get("close"),
            "blocks": blocks,
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(self.clock())}.{secrets.token_hex(4)}",
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "root_view_id": view_id,
            "previous_view_id": None,
            "app_id": self.app_id,
            "external_id": view.get("external_id", ""),
            "bot_id": self.bot_id,
        }
        self.views.append({**opened, "user_id": user_id, "trigger_id": trigger})
        self._notify()
        return {"ok": True, "view": opened}

    def _message_json(self, msg: SlackMessage, *, metadata: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "text": msg.text,
            "ts": msg.ts,
            "bot_id": self.bot_id,
            "user": self.bot_user_id,
            "blocks": msg.blocks,
        }
        if msg.thread_ts is not None:
            out["thread_ts"] = msg.thread_ts
        if metadata and msg.metadata is not None:
            # docs.slack.dev/messaging/message-metadata: "event_type" and "event_payload"
            # as posted, shown with include_all_metadata.
            out["metadata"] = {
                "event_type": msg.metadata["event_type"],
                "event_payload": msg.metadata["event_payload"],
            }
        return out

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        """docs.slack.dev/reference/methods/conversations.history: a channel's messages, newest
        first, between ``oldest`` and ``latest`` (exclusive unless ``inclusive``), ``limit``
        at a time with a ``next_cursor`` while there are more; thread replies are left out
        (they are read with conversations.replies)."""
        channel = str(args.get("channel") or "")
        if not channel or channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.outside:
            return {"ok": False, "error": "not_in_channel"}
        oldest = _history_ts(args.get("oldest"), decimal.Decimal(0))
        if oldest is None:
            return {"ok": False, "error": "invalid_ts_oldest"}
        # No latest: up to now, which is every message here.
        latest = _history_ts(args.get("latest"), decimal.Decimal("Infinity"))
        if latest is None:
            return {"ok": False, "error": "invalid_ts_latest"}
        inclusive = _flag(args.get("inclusive"))
        with_metadata = _flag(args.get("include_all_metadata"))
        raw_limit = args.get("limit")
        try:
            limit = int(raw_limit) if raw_limit not in (None, "") else HISTORY_LIMIT
        except (TypeError, ValueError):
            return {"ok": False, "error": "invalid_arguments"}
        # Slack gives "no more than" limit; 0 or less means the default, above the most: the most.
        limit = HISTORY_LIMIT if limit <= 0 else min(limit, HISTORY_MAX_LIMIT)
        cursor = args.get("cursor")
        if cursor:
            before = _cursor_ts(str(cursor))
            if before is None:
                return {"ok": False, "error": "invalid_cursor"}
            latest, inclusive_latest = min(latest, before), False
        else:
            inclusive_latest = inclusive

        def within(ts: decimal.Decimal) -> bool:
            above = ts >= oldest if inclusive else ts > oldest
            below = ts <= latest if inclusive_latest else ts < latest
            return above and below

        found = sorted(
            (
                m
                for m in self.messages
                if m.channel == channel
                and (m.thread_ts is None or m.thread_ts == m.ts)
                and within(decimal.Decimal(m.ts))
            ),
            key=lambda m: decimal.Decimal(m.ts),
            reverse=True,
        )
        page, more = found[:limit], len(found) > limit
        answer: dict[str, Any] = {
            "ok": True,
            "messages": [self._message_json(m, metadata=with_metadata) for m in page],
            "has_more": more,
            "pin_count": 0,
            "channel_actions_ts": None,
            "channel_actions_count": 0,
        }
        if more:
            answer["response_metadata"] = {"next_cursor": _make_cursor(page[-1].ts)}
        return answer

    def record_response(self, url: str, body: Any) -> None:
        """Record a post to a ``response_url``."""
        self.responses.append({"url": url, "json": body})
        self._notify()


def _flag(value: Any) -> bool:
    """A boolean argument as Slack reads it: true, 1 (form or JSON) or a real boolean."""
    return value is True or str(value).lower() in ("true", "1")


def _history_ts(value: Any, default: decimal.Decimal) -> decimal.Decimal | None:
    """A message ts argument (``"1712345678.000100"``), the default if absent, None if bad."""
    if value in (None, ""):
        return default
    try:
        ts = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        return None
    return ts if ts.is_finite() and ts >= 0 else None


def _make_cursor(ts: str) -> str:
    # Slack's cursors are opaque base64 ("bmV4dF90czox..." is "next_ts:1..."); so are ours.
    return base64.b64encode(f"next_ts:{ts}".encode()).decode()


def _cursor_ts(cursor: str) -> decimal.Decimal | None:
    try:
        text = base64.b64decode(cursor, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if not text.startswith("next_ts:"):
        return None
    return _history_ts(text[len("next_ts:") :], decimal.Decimal(0))


def check_blocks(blocks: list[Any]) -> str | None:
    """What Slack would refuse in a list of blocks, or None."""
    if len(blocks) > MAX_BLOCKS:
        return f"more than {MAX_BLOCKS} blocks"
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"block {i} has no type"
        kind = block["type"]
        text = block.get("text")
        if kind == "section":
            if text is None and not block.get("fields"):
                return f"section {i} has no text"
            if isinstance(text, dict) and len(text.get("text", "")) > MAX_SECTION_TEXT:
                return f"section {i} text is over {MAX_SECTION_TEXT} characters"
        elif kind == "context":
            elements = block.get("elements") or []
            if not elements or len(elements) > MAX_CONTEXT_ELEMENTS:
                return f"context {i} needs 1 to {MAX_CONTEXT_ELEMENTS} elements"
        elif kind == "actions":
            elements = block.get("elements") or []
            if not elements or len(elements) > MAX_ACTION_ELEMENTS:
                return f"actions {i} needs 1 to {MAX_ACTION_ELEMENTS} elements"
            for element in elements:
                if element.get("type") == "button":
                    if len(str(element.get("value", ""))) > MAX_BUTTON_VALUE:
                        return f"a button value in block {i} is too long"
                    if len((element.get("text") or {}).get("text", "")) > MAX_BUTTON_TEXT:
                        return f"a button text in block {i} is too long"
                    if element.get("style") not in (None, "primary", "danger"):
                        return f"a button style in block {i} is not primary or danger"
        elif kind == "input":
            element = block.get("element") or {}
            if "label" not in block or "type" not in element:
                return f"input {i} needs a label and an element"
            if len(str(element.get("initial_value", ""))) > MAX_INPUT_VALUE:
                return f"input {i} initial value is too long"
        elif kind not in ("header", "divider"):
            return f"block {i} has a type the stand-in does not know: {kind}"
    return None


def _bearer(request: web.Request, args: dict[str, Any]) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    token = args.pop("token", None)
    return str(token) if token else None


async def _api(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    method = request.match_info["method"]
    args: dict[str, Any] = dict(request.query)
    raw = await request.read()
    if raw:
        if request.content_type == "application/json":
            try:
                data = json.loads(raw)
            except ValueError:
                return web.json_response({"ok": False, "error": "invalid_json"})
            if not isinstance(data, dict):
                return web.json_response({"ok": False, "error": "invalid_json"})
            args.update(data)
        else:
            args.update(dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace"))))
    token = _bearer(request, args)
    if not token or token != state.bot_token:
        state.calls.append((method, args))
        refused = {"ok": False, "error": "not_authed" if not token else "invalid_auth"}
        state.answers.append((method, 200, refused))
        return web.json_response(refused)
    failed = state.http_fault(method)
    if failed is not None:
        state.calls.append((method, args))
        page = "<html><body><h1>Slack is having trouble</h1></body></html>"
        return web.Response(status=failed, text=page, content_type="text/html")
    status, body, headers = state.call(method, args)
    state.answers.append((method, status, body))
    gate = state.take_hold(method)
    if gate is not None:
        await gate.wait()
    return web.json_response(body, status=status, headers=headers)


async def _hook(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return web.Response(status=400, text="invalid_payload")
    state.record_response(str(request.url), body)
    return web.Response(text="ok")


def make_slack_app(state: SlackWorkspace) -> web.Application:
    """The stand-in as an aiohttp app: the Web API under ``/api/``, hooks under ``/hooks/``."""
    app = web.Application()
    app[_STATE] = state
    app.router.add_post("/api/{method}", _api)
    app.router.add_get("/api/{method}", _api)
    app.router.add_post("/hooks/{kind}/{team}/{n}/{secret}", _hook)
    return app
