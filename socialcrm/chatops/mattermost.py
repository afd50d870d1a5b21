"""Mattermost adapter: slash commands through the one command layer.

Mattermost POSTs a slash command as a form with the command's ``token``; a request whose token
is not the configured one is refused (401) before anything is read or changed. The person is
found by ``staff[].mattermost_id``; what they may do is their role's, exactly as in Slack.
Answers are ephemeral and shown as a code block, so nothing a customer wrote can turn into
Markdown (links, images, mentions) in Mattermost.
"""

from __future__ import annotations

import hmac
import logging
import urllib.parse
from collections.abc import Callable
from typing import Final

from aiohttp import web

from socialcrm.chatops.commands import Commands
from socialcrm.chatops.slack import chat_answer
from socialcrm.config import Config

log = logging.getLogger(__name__)

#: Longest answer sent back (Mattermost's post limit is 16,383 characters).
ANSWER_LIMIT: Final = 16000
_FENCE: Final = "```"


def as_code_block(text: str) -> str:
    """Text shown verbatim in Mattermost: inside a fence that the text cannot close."""
    body = text.replace(_FENCE, "`\u200b``")[: ANSWER_LIMIT - 8]
    return f"{_FENCE}\n{body}\n{_FENCE}"


def _answer(text: str, status: int = 200) -> web.Response:
    return web.json_response({"response_type": "ephemeral", "text": text}, status=status)


class MattermostAdapter:
    """The Mattermost slash command endpoint."""

    def __init__(
        self,
        commands: Commands,
        config: Config,
        *,
        on_approved: Callable[[int], None] | None = None,
    ) -> None:
        if config.mattermost is None:
            raise ValueError("Mattermost is not configured (no mattermost: section)")
        self.commands = commands
        self.config = config
        self.on_approved = on_approved
        self._token = config.mattermost.token.get_secret_value().encode()

    async def slash_command(self, request: web.Request) -> web.Response:
        """``POST /mattermost/commands``: run the text as a command for the person who typed it."""
        raw = await request.read()
        try:
            form = dict(urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            form = {}
        token = form.get("token", "")
        if not hmac.compare_digest(token.encode(), self._token):
            log.warning("refused a Mattermost command: wrong or missing token")
            return web.json_response({"status": 401, "detail": "bad token"}, status=401)
        for key in ("user_id", "command", "text"):
            if key not in form or (key != "text" and not form[key]):
                return web.json_response(
                    {"status": 400, "detail": f"missing field {key!r}"}, status=400
                )
        answer = await chat_answer(
            self.commands,
            self.config,
            "mattermost",
            form["user_id"],
            form.get("user_name"),
            form["text"],
            self.on_approved,
        )
        return _answer(as_code_block(answer))


def add_mattermost_routes(
    app: web.Application,
    commands: Commands,
    config: Config,
    *,
    on_approved: Callable[[int], None] | None = None,
) -> MattermostAdapter:
    """Add ``POST /mattermost/commands`` to the daemon's app (``on_approved``: ``Sender.wake``)."""
    adapter = MattermostAdapter(commands, config, on_approved=on_approved)
    app.router.add_post("/mattermost/commands", adapter.slash_command)
    return adapter
