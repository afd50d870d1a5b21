"""The Mattermost adapter: the command token, roles, and the same commands as everywhere else."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from socialcrm.chatops.commands import Commands
from socialcrm.chatops.mattermost import add_mattermost_routes
from socialcrm.db import Store
from socialcrm.models import Reply
from socialcrm.pipeline import Pipeline
from tests.test_cards import MATTERMOST_TOKEN, audit, chat_config, ingest, reply


@dataclass
class Harness:
    http: TestClient[web.Request, web.Application]
    approved: list[int]

    async def post(self, line: str, user: str, **change: str) -> tuple[int, Any]:
        form = {
            "token": MATTERMOST_TOKEN,
            "team_id": "tm1",
            "team_domain": "acme",
            "channel_id": "ch1",
            "channel_name": "support",
            "user_id": user,
            "user_name": user.removeprefix("mm-"),
            "command": "/crm",
            "text": line,
            "response_url": "http://127.0.0.1:9/hooks/commands/x",
            "trigger_id": "tr1",
            **change,
        }
        form = {k: v for k, v in form.items() if v != "<drop>"}
        resp = await self.http.post(
            "/mattermost/commands",
            data=urllib.parse.urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return resp.status, await resp.json()

    async def text(self, text: str, user_id: str) -> str:
        status, body = await self.post(text, user_id)
        assert status == 200 and body["response_type"] == "ephemeral", body
        answer: str = body["text"]
        assert answer.startswith("```\n") and answer.endswith("\n```")
        return answer[4:-4]


@pytest.fixture
async def h(store: Store, pipeline: Pipeline, tmp_path: Path) -> AsyncIterator[Harness]:
    await ingest(pipeline)
    config = chat_config(tmp_path)
    approved: list[int] = []
    app = web.Application()
    add_mattermost_routes(app, Commands(config, store), config, on_approved=approved.append)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Harness(client, approved)


async def test_the_same_commands_as_everywhere(h: Harness) -> None:
    queue = await h.text("queue", "mm-val")
    assert "3 drafts awaiting approval" in queue
    assert "Reply #2 (draft) on x" in await h.text("show 2", "mm-val")
    assert "Commands you can use" in await h.text("", "mm-val")


async def test_approve_and_reject(h: Harness, store: Store) -> None:
    assert "Reply #1 approved by dana" in await h.text("approve 1", "mm-dana")
    assert h.approved == [1]
    assert "Reply #2 rejected by ann" in await h.text("reject 2 spam, not a customer", "mm-ann")
    assert h.approved == [1]
    r1, r2 = await reply(store, 1), await reply(store, 2)
    assert (r1.status, r2.status, r2.rejected_reason) == (
        "approved",
        "rejected",
        "spam, not a customer",
    )
    events = {a.action: a for a in await audit(store)}
    assert (events["reply.approve"].actor, events["reply.approve"].via) == ("dana", "mattermost")


@pytest.mark.parametrize("token", ["wrong-token", "", "<drop>", MATTERMOST_TOKEN + "x"])
async def test_a_wrong_token_changes_nothing(h: Harness, store: Store, token: str) -> None:
    status, body = await h.post("approve 1", "mm-dana", token=token)
    assert status == 401 and body["detail"] == "bad token"
    assert (await reply(store, 1)).status == "draft"
    assert await audit(store) == [] and h.approved == []


async def test_roles_are_respected(h: Harness, store: Store) -> None:
    assert (
        await h.text("approve 1", "mm-val")
        == "sorry, approve needs the approver role and you are viewer"
    )
    assert (
        await h.text("edit 1 hello", "mm-ann")
        == "sorry, edit needs the approver role and you are agent"
    )
    assert (await reply(store, 1)).status == "draft" and h.approved == []
    refused = [(a.actor, a.via, a.object_id) for a in await audit(store)]
    assert refused == [("val", "mattermost", "approve"), ("ann", "mattermost", "edit")]


async def test_a_stranger_is_refused_politely_and_audited(h: Harness, store: Store) -> None:
    answer = await h.text("approve 1", "mm-nobody")
    assert "don't know you" in answer and "mm-nobody" in answer
    assert (await reply(store, 1)).status == "draft"
    [event] = await audit(store)
    assert (event.actor, event.via, event.action, event.object_id) == (
        "mattermost:mm-nobody",
        "mattermost",
        "command.refused",
        "approve",
    )


@pytest.mark.parametrize("missing", ["user_id", "text", "command"])
async def test_a_malformed_command_is_400(h: Harness, store: Store, missing: str) -> None:
    status, body = await h.post("approve 1", "mm-dana", **{missing: "<drop>"})
    assert status == 400 and missing in body["detail"]
    assert (await reply(store, 1)).status == "draft" and await audit(store) == []


async def test_a_customer_cannot_break_out_of_the_code_block(h: Harness, store: Store) -> None:
    async with store.session() as s:
        r = await s.get(Reply, 1)
        assert r is not None
        r.draft_text = "```\n![x](https://tracker.example/p.png) [click](https://evil.example)"
    answer = await h.text("show 1", "mm-val")
    assert "```" not in answer
    assert "![x](https://tracker.example/p.png)" in answer


async def test_an_id_in_other_digits_is_not_a_number(h: Harness, store: Store) -> None:
    # "٣".isdigit() is true and int("٣") == 3: "approve ٣" approved reply 3.
    answer = await h.text("approve \u0663", "mm-dana")
    assert "must be a number" in answer
    assert (await reply(store, 3)).status == "draft" and h.approved == []
    assert "must be a number" in await h.text("approve \u00b2", "mm-dana")
