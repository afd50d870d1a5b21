"""The Slack adapter: signed requests only, roles respected, Slack's deadline met, cards clicked.

Both sides are real HTTP servers on 127.0.0.1: socialcrm's routes, and the sandbox's Slack
stand-in that records what socialcrm posts and builds the signed requests Slack would send.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from socialcrm.chatops.cards import EDIT_CALLBACK
from socialcrm.chatops.commands import Commands
from socialcrm.chatops.slack import SLACK_ADAPTER, add_slack_routes
from socialcrm.db import Store
from socialcrm.models import Reply
from socialcrm.pipeline import Pipeline
from socialcrm.sandbox.slack import signed_request
from tests import slack_spec
from tests.test_cards import (
    NASTY,
    SIGNING_SECRET,
    SlackWorld,
    audit,
    ingest,
    reply,
    slack_world,
)


@dataclass
class Harness:
    """socialcrm's Slack routes, the Slack stand-in, and what was approved."""

    world: SlackWorld
    http: TestClient[web.Request, web.Application]
    approved: list[int]
    store: Store

    async def slash(self, text: str, user_id: str) -> Any:
        body, headers = self.world.workspace.slash(text, user_id)
        resp = await self.http.post("/slack/commands", data=body, headers=headers)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def interact(self, body: bytes, headers: dict[str, str]) -> Any:
        resp = await self.http.post("/slack/interactions", data=body, headers=headers)
        assert resp.status == 200, await resp.text()
        return await resp.text()

    async def click(self, reply_id: int, action: str, user_id: str) -> None:
        ws = self.world.workspace
        await self.interact(*ws.click(ws.card(reply_id), action, user_id))

    async def settle(self) -> None:
        """Wait until the answers still being worked on have been delivered."""
        await self.http.app[SLACK_ADAPTER].drain()

    def responses(self) -> list[str]:
        return [r["json"]["text"] for r in self.world.workspace.responses]


#: What an approval says of a draft from source "test", which the chat config has not.
UNSENT = (
    "This config has no enabled source test that sends replies, so a daemon run with it does "
    "not send this one (it is marked failed and a person alerted)."
)


@pytest.fixture
async def h(store: Store, pipeline: Pipeline, tmp_path: Path) -> AsyncIterator[Harness]:
    await ingest(pipeline)
    async with slack_world(store, tmp_path) as world:
        approved: list[int] = []
        app = web.Application()
        add_slack_routes(
            app,
            Commands(world.config, store),
            world.config,
            on_approved=approved.append,
            cards=world.cards,
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await world.cards.sync()
            yield Harness(world, client, approved, store)


async def snapshot(store: Store) -> tuple[list[tuple[int, str, str | None]], int]:
    """Every reply's state and the number of audit rows: what a refusal must not change."""
    rows = []
    for rid in (1, 2, 3):
        r = await reply(store, rid)
        rows.append((rid, r.status, r.final_text))
    return rows, len(await audit(store))


# -- slash commands ------------------------------------------------------------------------------


async def test_a_signed_slash_command_is_answered(h: Harness) -> None:
    answer = await h.slash("queue", "U0VAL")
    assert answer["response_type"] == "ephemeral"
    assert "3 drafts awaiting approval" in answer["text"]
    # What the customer wrote is escaped for mrkdwn; the answer cannot mention anyone.
    assert "&lt;!channel&gt; &amp;" in answer["text"] and "<!channel>" not in answer["text"]


async def test_approve_from_a_slash_command_wakes_the_sender(h: Harness, store: Store) -> None:
    answer = await h.slash("approve #2", "U0DANA")
    assert "Reply #2 approved by dana" in answer["text"]
    assert h.approved == [2]
    assert (await reply(store, 2)).status == "approved"
    event = next(a for a in await audit(store) if a.action == "reply.approve")
    assert (event.actor, event.via) == ("dana", "slack")


async def test_slack_escapes_in_typed_text_are_undone(h: Harness, store: Store) -> None:
    # Slack sends "&", "<" and ">" in a slash command's text as entities.
    await h.slash("edit 1 @jane Sorry &lt;3 &amp; thanks", "U0DANA")
    assert (await reply(store, 1)).final_text == "@jane Sorry <3 & thanks"


# -- refused before anything is read ------------------------------------------------------------


def _resign(headers: dict[str, str], body: bytes, **change: Any) -> dict[str, str]:
    out = dict(headers)
    if "secret" in change:
        out.update(signed_request(change["secret"], body))
    if "age_s" in change:
        out.update(signed_request(SIGNING_SECRET, body, time.time() - change["age_s"]))
    if change.get("drop"):
        del out["X-Slack-Signature"]
    return out


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"secret": "not-the-signing-secret"}, "bad signature"),
        ({"age_s": 301}, "request too old"),
        ({"age_s": -301}, "request too old"),
        ({"drop": True}, "missing signature"),
    ],
)
@pytest.mark.parametrize("route", ["/slack/commands", "/slack/interactions"])
async def test_unsigned_or_stale_requests_change_nothing(
    h: Harness, store: Store, route: str, change: dict[str, Any], reason: str
) -> None:
    ws = h.world.workspace
    if route == "/slack/commands":
        body, headers = ws.slash("approve 1", "U0DANA")
    else:
        body, headers = ws.click(ws.card(1), "approve", "U0DANA")
    before = await snapshot(store)
    resp = await h.http.post(route, data=body, headers=_resign(headers, body, **change))
    assert resp.status == 401
    assert (await resp.json())["detail"] == reason
    await h.settle()
    assert await snapshot(store) == before
    assert h.approved == [] and ws.responses == []


async def test_a_tampered_body_is_refused(h: Harness, store: Store) -> None:
    body, headers = h.world.workspace.slash("queue", "U0VAL")
    tampered = body.replace(b"U0VAL", b"U0DANA").replace(b"queue", b"approve+1")
    before = await snapshot(store)
    resp = await h.http.post("/slack/commands", data=tampered, headers=headers)
    assert resp.status == 401 and await snapshot(store) == before


async def test_a_replayed_request_is_refused(h: Harness, store: Store) -> None:
    ws = h.world.workspace
    body, headers = ws.click(ws.card(1), "reject", "U0ANN")
    assert (await h.http.post("/slack/interactions", data=body, headers=headers)).status == 200
    view = ws.views[-1]
    body, headers = ws.submit(view, {"reason": "duplicate"}, "U0ANN")
    assert (await h.http.post("/slack/interactions", data=body, headers=headers)).status == 200
    assert (await reply(store, 1)).status == "rejected"
    before = await snapshot(store)
    again = await h.http.post("/slack/interactions", data=body, headers=headers)
    assert again.status == 401 and (await again.json())["detail"] == "replayed request"
    body, headers = ws.slash("approve 2", "U0DANA")
    assert (await h.http.post("/slack/commands", data=body, headers=headers)).status == 200
    before = await snapshot(store)
    again = await h.http.post("/slack/commands", data=body, headers=headers)
    assert again.status == 401 and await snapshot(store) == before
    assert h.approved == [2]


# -- who may do what ----------------------------------------------------------------------------


async def test_a_stranger_is_refused_politely_and_audited(h: Harness, store: Store) -> None:
    before = await snapshot(store)
    answer = await h.slash("approve 1", "U0NOBODY")
    assert "don't know you" in answer["text"] and "U0NOBODY" in answer["text"]
    await h.click(1, "approve", "U0NOBODY")
    await h.click(2, "edit", "U0NOBODY")
    await h.settle()
    assert all("don't know you" in t for t in h.responses()) and len(h.responses()) == 2
    assert h.world.workspace.views == []
    rows, _ = await snapshot(store)
    assert rows == before[0] and h.approved == []
    refused = [a for a in await audit(store) if a.action == "command.refused"]
    assert [(a.actor, a.via, a.object_id) for a in refused] == [
        ("slack:U0NOBODY", "slack", "approve"),
        ("slack:U0NOBODY", "slack", "approve"),
        ("slack:U0NOBODY", "slack", "edit"),
    ]
    assert refused[0].detail["user_id"] == "U0NOBODY"


async def test_even_an_empty_command_from_a_stranger_is_audited(h: Harness, store: Store) -> None:
    answer = await h.slash("", "U0NOBODY")
    assert "don't know you" in answer["text"]
    assert [a.object_id for a in await audit(store)] == ["help"]


async def test_a_viewer_cannot_approve_from_chat_or_a_card(h: Harness, store: Store) -> None:
    before = await snapshot(store)
    answer = await h.slash("approve 1", "U0VAL")
    assert answer["text"] == "sorry, approve needs the approver role and you are viewer"
    await h.click(1, "approve", "U0VAL")
    await h.click(1, "edit", "U0VAL")
    await h.click(1, "reject", "U0VAL")
    await h.settle()
    assert h.responses() == [
        "sorry, approve needs the approver role and you are viewer",
        "sorry, edit needs the approver role and you are viewer",
        "sorry, reject needs the agent role and you are viewer",
    ]
    assert h.world.workspace.views == [] and h.approved == []
    rows, _ = await snapshot(store)
    assert rows == before[0]
    refused = [(a.actor, a.object_id) for a in await audit(store)]
    assert refused == [("val", "approve"), ("val", "approve"), ("val", "edit"), ("val", "reject")]


async def test_an_agent_may_reject_but_not_edit(h: Harness, store: Store) -> None:
    ws = h.world.workspace
    await h.click(1, "edit", "U0ANN")
    await h.settle()
    assert h.responses() == ["sorry, edit needs the approver role and you are agent"]
    await h.click(1, "reject", "U0ANN")
    assert ws.views[-1]["user_id"] == "U0ANN"
    # A forged submission of the edit modal by the agent is refused inside the modal.
    forged = {**ws.views[-1], "callback_id": EDIT_CALLBACK}
    forged["blocks"] = [
        {
            "type": "input",
            "block_id": "text",
            "label": {"type": "plain_text", "text": "t"},
            "element": {"type": "plain_text_input", "action_id": "text"},
        }
    ]
    answer = json.loads(await h.interact(*ws.submit(forged, {"text": "hello"}, "U0ANN")))
    assert answer == {
        "response_action": "errors",
        "errors": {"text": "sorry, edit needs the approver role and you are agent"},
    }
    assert (await reply(store, 1)).status == "draft"


# -- malformed ----------------------------------------------------------------------------------


def _payload(**payload: Any) -> bytes:
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


USER = {"id": "U0DANA", "username": "dana"}
ACTION = {"action_id": "approve", "value": "1", "type": "button"}
HOOK = "http://127.0.0.1:9/hooks/actions/T/1/x"


@pytest.mark.parametrize(
    ("route", "body", "reason"),
    [
        ("/slack/commands", b"text=approve+1&command=%2Fcrm&response_url=x", "'user_id'"),
        ("/slack/commands", b"user_id=U0DANA&command=%2Fcrm&response_url=x", "'text'"),
        ("/slack/commands", b"user_id=U0DANA&text=queue&command=%2Fcrm", "'response_url'"),
        ("/slack/interactions", b"", "'payload'"),
        ("/slack/interactions", b"payload=%7Bnot+json", "not JSON"),
        ("/slack/interactions", _payload(), "'user'"),
        ("/slack/interactions", b"payload=%5B1%2C2%5D", "not a JSON object"),
        ("/slack/interactions", _payload(type="shortcut", user=USER), "unsupported"),
        ("/slack/interactions", _payload(type="block_actions", user=USER), "missing actions"),
        (
            "/slack/interactions",
            _payload(
                type="block_actions",
                user=USER,
                response_url=HOOK,
                actions=[{**ACTION, "action_id": "delete"}],
            ),
            "unknown action 'delete'",
        ),
        (
            "/slack/interactions",
            _payload(
                type="block_actions",
                user=USER,
                response_url=HOOK,
                actions=[{**ACTION, "value": "1; drop"}],
            ),
            "no reply id",
        ),
        (
            "/slack/interactions",
            _payload(type="block_actions", user=USER, actions=[ACTION]),
            "'response_url'",
        ),
        (
            "/slack/interactions",
            _payload(type="view_submission", user=USER, view={"callback_id": "other"}),
            "unknown view",
        ),
        (
            "/slack/interactions",
            _payload(
                type="view_submission",
                user=USER,
                view={"callback_id": EDIT_CALLBACK, "private_metadata": "{}"},
            ),
            "private_metadata",
        ),
        (
            "/slack/interactions",
            _payload(
                type="view_submission",
                user=USER,
                view={
                    "callback_id": EDIT_CALLBACK,
                    "private_metadata": '{"reply_id": 1}',
                    "state": {"values": {}},
                },
            ),
            "missing input 'text'",
        ),
    ],
)
async def test_malformed_payloads_are_400_and_change_nothing(
    h: Harness, store: Store, route: str, body: bytes, reason: str
) -> None:
    before = await snapshot(store)
    resp = await h.http.post(route, data=body, headers=signed_request(SIGNING_SECRET, body))
    assert resp.status == 400
    assert reason in (await resp.json())["detail"]
    await h.settle()
    assert await snapshot(store) == before and h.approved == []


# -- the card's buttons -------------------------------------------------------------------------


async def test_approve_button(h: Harness, store: Store) -> None:
    ws = h.world.workspace
    stale = ws.click(ws.card(1), "approve", "U0DANA")  # a second click, from another screen
    await h.click(1, "approve", "U0DANA")
    r = await reply(store, 1)
    assert (r.status, r.decided_by) == ("approved", "dana")
    assert h.approved == [1]
    await h.settle()
    assert h.responses() == [f"Reply #1 approved by dana. {UNSENT}"]
    assert h.world.workspace.responses[0]["json"]["replace_original"] is False
    card = h.world.workspace.card(1)
    assert card.buttons()
    assert await h.world.cards.sync() == 1
    assert not card.buttons() and "Approved by *dana*" in card.all_text()
    # The second click, from a screen that still showed the buttons, changes nothing.
    await h.interact(*stale)
    await h.settle()
    assert "not a draft; nothing changed" in h.responses()[-1] and h.approved == [1]


async def test_edit_through_the_modal(h: Harness, store: Store) -> None:
    ws = h.world.workspace
    draft = (await reply(store, 1)).draft_text
    assert await h.interact(*ws.click(ws.card(1), "edit", "U0DANA")) == ""
    view = ws.views[-1]
    assert view["user_id"] == "U0DANA" and view["callback_id"] == EDIT_CALLBACK
    assert view["blocks"][1]["element"]["initial_value"] == draft
    assert "my order is two weeks late" in view["blocks"][0]["text"]["text"]
    assert (await reply(store, 1)).status == "draft", "opening the modal changes nothing"

    empty = await h.interact(*ws.submit(view, {"text": "   "}, "U0DANA"))
    assert json.loads(empty)["errors"]["text"] == "the new text is empty; nothing changed"
    new = "@jane We're on it & we'll DM you <3"
    assert await h.interact(*ws.submit(view, {"text": new}, "U0DANA")) == ""
    r = await reply(store, 1)
    assert (r.status, r.final_text, r.edited) == ("approved", new, True)
    assert h.approved == [1]
    edit = next(a for a in await audit(store) if a.action == "reply.edit")
    assert edit.detail == {"before": draft, "after": new}
    assert (edit.actor, edit.via) == ("dana", "slack")
    await h.world.cards.sync()
    text = ws.card(1).all_text()
    assert "We're on it &amp; we'll DM you &lt;3" in text
    assert "Edited and approved by *dana*" in text
    # views.open, chat.postMessage and chat.update, as Slack's spec describes them.
    assert {m for m, _ in ws.calls} >= {"views.open", "chat.postMessage", "chat.update"}
    problems = slack_spec.exchange_problems(ws.calls, ws.answers)
    assert problems == [], "\n".join(problems)


async def test_reject_through_the_modal(h: Harness, store: Store) -> None:
    ws = h.world.workspace
    await h.click(2, "reject", "U0ANN")
    view = ws.views[-1]
    assert [b["type"] for b in view["blocks"]] == ["section", "input"]
    assert await h.interact(*ws.submit(view, {"reason": "a troll <again>"}, "U0ANN")) == ""
    r = await reply(store, 2)
    assert (r.status, r.rejected_reason, r.decided_by) == ("rejected", "a troll <again>", "ann")
    assert h.approved == []
    await h.world.cards.sync()
    assert "Rejected by *ann*: a troll &lt;again&gt;" in ws.card(2).all_text()


async def test_a_decided_reply_gets_no_modal(h: Harness, store: Store) -> None:
    await h.slash("approve 1", "U0DANA")
    await h.click(1, "edit", "U0DANA")
    await h.settle()
    assert h.responses() == ["reply #1 is approved, not a draft; nothing changed"]
    assert h.world.workspace.views == []


async def test_an_expired_trigger_is_explained(h: Harness, store: Store) -> None:
    ws = h.world.workspace
    body, headers = ws.click(ws.card(1), "edit", "U0DANA")
    ws.clock = lambda: time.time() + 10  # the click reached us after the trigger expired
    await h.interact(body, headers)
    await h.settle()
    assert "could not be opened (expired_trigger_id)" in h.responses()[0]
    assert (await reply(store, 1)).status == "draft"
    problems = slack_spec.exchange_problems(ws.calls, ws.answers)
    assert problems == [], "\n".join(problems)


# -- Slack's 3-second deadline ------------------------------------------------------------------


async def test_a_slow_command_is_acknowledged_in_time_and_answered_later(
    h: Harness, store: Store
) -> None:
    ws = h.world.workspace
    body, headers = ws.slash("approve 1", "U0DANA")
    loop = asyncio.get_running_loop()
    async with store.session() as s:
        # Someone else holds the reply (on SQLite: the database) for a while.
        await s.get(Reply, 1, with_for_update=True)
        started = loop.time()
        resp = await h.http.post("/slack/commands", data=body, headers=headers)
        took = loop.time() - started
        answer = await resp.json()
        assert resp.status == 200 and took < 2.9, took
        assert answer == {
            "response_type": "ephemeral",
            "text": "Working on it… the answer will follow here in a moment.",
        }
        assert (await reply(store, 1)).status == "draft"
    late = await ws.wait_for(lambda: ws.responses)
    assert late[0]["json"]["text"] == f"Reply #1 approved by dana. {UNSENT}"
    assert late[0]["url"] == urllib.parse.parse_qs(body.decode())["response_url"][0]
    assert (await reply(store, 1)).status == "approved"
    assert h.approved == [1]


async def test_a_slow_click_is_acknowledged_in_time(h: Harness, store: Store) -> None:
    ws = h.world.workspace
    body, headers = ws.click(ws.card(2), "approve", "U0DANA")
    loop = asyncio.get_running_loop()
    async with store.session() as s:
        await s.get(Reply, 2, with_for_update=True)
        started = loop.time()
        resp = await h.http.post("/slack/interactions", data=body, headers=headers)
        assert resp.status == 200 and loop.time() - started < 2.9
    await ws.wait_for(lambda: ws.responses)
    assert h.responses() == [f"Reply #2 approved by dana. {UNSENT}"]
    assert h.approved == [2]
    assert NASTY not in h.responses()[0]


@pytest.mark.parametrize(
    "stamp", ["\u00b2", "\u0663", "\u0661\u0667\u0667\u0662\u0664\u0664\u0662\u0660\u0660\u0660"]
)
async def test_a_timestamp_in_other_digits_is_refused(h: Harness, store: Store, stamp: str) -> None:
    # str.isdigit() takes "²" (int() then raised: HTTP 500) and "٣" (int() read it).
    body, headers = h.world.workspace.slash("approve 1", "U0DANA")
    before = await snapshot(store)
    resp = await h.http.post(
        "/slack/commands", data=body, headers={**headers, "X-Slack-Request-Timestamp": stamp}
    )
    assert resp.status == 401 and (await resp.json())["detail"] == "bad timestamp"
    assert await snapshot(store) == before and h.approved == []


# -- replays across restarts, and buttons on the wrong card -------------------------------------


async def _second_daemon(h: Harness) -> TestClient[web.Request, web.Application]:
    """The same Slack routes in a fresh app on the same database: a restart, or a peer."""
    app = web.Application()
    add_slack_routes(app, Commands(h.world.config, h.store), h.world.config, cards=h.world.cards)
    return TestClient(TestServer(app, host="127.0.0.1"))


async def test_a_request_replayed_after_a_restart_is_refused(h: Harness, store: Store) -> None:
    # The seen requests lived in the adapter's memory: a restart forgot them, and a request
    # replayed inside its 5 minutes approved again (here: assigned a ticket again).
    body, headers = h.world.workspace.slash("approve 2", "U0DANA")
    assert (await h.http.post("/slack/commands", data=body, headers=headers)).status == 200
    await h.settle()
    before = await snapshot(store)
    async with await _second_daemon(h) as other:
        again = await other.post("/slack/commands", data=body, headers=headers)
        assert again.status == 401 and (await again.json())["detail"] == "replayed request"
    assert await snapshot(store) == before and h.approved == [2]


async def test_two_daemons_let_the_same_request_in_once(h: Harness, store: Store) -> None:
    if not store.url.startswith("postgresql"):
        pytest.skip("several daemons share a PostgreSQL store; one SQLite file serves one")
    body, headers = h.world.workspace.slash("queue", "U0VAL")
    async with await _second_daemon(h) as other:
        answers = await asyncio.gather(
            h.http.post("/slack/commands", data=body, headers=headers),
            other.post("/slack/commands", data=body, headers=headers),
        )
        assert sorted(r.status for r in answers) == [200, 401]


async def test_seen_requests_are_forgotten_after_their_window(store: Store) -> None:
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from socialcrm.models import SeenRequest
    from socialcrm.replay import first_sighting, request_key

    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    key = request_key("slack", "1796558400", "v0=abc")
    until = now + timedelta(minutes=5)
    assert await first_sighting(store, key, expires_at=until, now=now)
    assert not await first_sighting(store, key, expires_at=until, now=now + timedelta(minutes=4))
    other = request_key("slack", "1796558999", "v0=def")
    later = now + timedelta(minutes=6)
    assert await first_sighting(store, other, expires_at=later + timedelta(minutes=5), now=later)
    async with store.reader() as s:
        keys = (await s.execute(sa.select(SeenRequest.key))).scalars().all()
    assert keys == [other]


def _with_value(body: bytes, value: Any) -> tuple[bytes, dict[str, str]]:
    """A click's body with another value on its button, signed anew (as Slack would sign it)."""
    form = dict(urllib.parse.parse_qsl(body.decode()))
    payload = json.loads(form["payload"])
    payload["actions"][0]["value"] = value
    new = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    return new, signed_request(SIGNING_SECRET, new)


@pytest.mark.parametrize("value", ["2", "\u0663", "\u00b2"])
async def test_a_button_acts_only_on_the_reply_of_its_card(
    h: Harness, store: Store, value: str
) -> None:
    # A click on reply 1's card that carried reply 2's id approved reply 2; "٣" approved 3.
    ws = h.world.workspace
    body, _ = ws.click(ws.card(1), "approve", "U0DANA")
    before = await snapshot(store)
    data, headers = _with_value(body, value)
    resp = await h.http.post("/slack/interactions", data=data, headers=headers)
    assert resp.status == 400
    await h.settle()
    assert await snapshot(store) == before and h.approved == []
    # The same click with its own id goes through.
    await h.click(1, "approve", "U0DANA")
    assert (await reply(store, 1)).status == "approved" and h.approved == [1]
