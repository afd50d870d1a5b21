"""The Slack stand-in for end-to-end tests: a workspace on a local port, the config that
points socialcrm at it, and an approver's click on an approval card."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from socialcrm.daemon import Daemon
from socialcrm.sandbox.slack import SlackMessage, SlackWorkspace, make_slack_app

SIGNING_SECRET = "slack-signing-secret-for-tests"
APPROVER_ID = "U0DANA"


@dataclass
class SlackStandIn:
    """A running Slack stand-in and the settings that point socialcrm at it."""

    workspace: SlackWorkspace
    base_url: str

    def settings(self) -> dict[str, Any]:
        """The ``slack`` and ``staff`` sections of a config (dana approves)."""
        return {
            "slack": {
                "signing_secret": SIGNING_SECRET,
                "bot_token": "xoxb-sandbox",
                "channel": "C0APPROVALS",
                "api_base": f"{self.base_url}/api/",
            },
            "staff": [{"name": "dana", "role": "approver", "slack_id": APPROVER_ID}],
        }

    async def approve(
        self, daemon: Daemon, reply_id: int, done: Callable[[], bool], *, wait_s: float = 10.0
    ) -> SlackMessage:
        """Post the reply's card, click Approve as dana, and wait until ``done()``."""
        assert daemon.cards is not None, "the daemon posts cards only with Slack configured"
        await daemon.cards.sync()
        card = self.workspace.card(reply_id)
        async with TestClient(TestServer(daemon.app(), host="127.0.0.1")) as client:
            body, headers = self.workspace.click(card, "approve", APPROVER_ID)
            resp = await client.post("/slack/interactions", data=body, headers=headers)
            assert resp.status == 200
            # Nothing here wakes the sender: the approval itself does.
            for _ in range(int(wait_s / 0.05)):
                if done():
                    break
                await asyncio.sleep(0.05)
        return card


@asynccontextmanager
async def slack_stand_in() -> AsyncIterator[SlackStandIn]:
    """Serve a Slack workspace with an approvals channel and one approver."""
    workspace = SlackWorkspace(
        signing_secret=SIGNING_SECRET,
        bot_token="xoxb-sandbox",
        channels={"C0APPROVALS": "approvals"},
        users={APPROVER_ID: "dana"},
    )
    async with TestServer(make_slack_app(workspace), host="127.0.0.1") as server:
        base = str(server.make_url("")).rstrip("/")
        workspace.base_url = base
        yield SlackStandIn(workspace, base)
