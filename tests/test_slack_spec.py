"""Our Slack requests and the Slack stand-in's answers, checked against Slack's own spec.

The spec is the vendored subset of slackapi/slack-api-specs (tests/specs/slack/); the checker
(tests/slack_spec.py) turns each method into JSON Schemas. The cards, the Slack alert sink and
the stand-in run for real over HTTP; every call the stand-in saw and every answer it gave must
fit the spec, refusals included.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError

from socialcrm import responder
from socialcrm.alerts import AlertRenderer, SinkError, SlackSink, SlackSinkConfig, view_of
from socialcrm.db import Store
from socialcrm.models import Alert
from socialcrm.sandbox.slack import SlackWorkspace, make_slack_app
from tests.slack_spec import (
    SPEC_FILE,
    exchange_problems,
    request_problems,
    response_problems,
    spec,
)
from tests.test_cards import CHANNEL, SlackWorld, world

__all__ = ["world"]


def test_the_vendored_spec_is_swagger_and_says_where_it_came_from() -> None:
    document = json.loads(SPEC_FILE.read_text())
    # Slack's file is not strictly valid Swagger 2.0 (it has tuple-form ``items``), so
    # openapi-spec-validator refuses it; its schemas are checked here with jsonschema.
    assert document["swagger"] == "2.0"
    for path in document["paths"].values():
        for op in path.values():
            assert op["parameters"] and {"200", "default"} <= set(op["responses"])
    source = document["info"]["x-vendored-from"]
    assert source.startswith("https://github.com/slackapi/slack-api-specs/blob/")
    assert {
        "/chat.postMessage",
        "/chat.update",
        "/auth.test",
        "/conversations.history",
    } <= set(spec()["paths"])


async def test_cards_and_their_refusals_fit_slacks_spec(world: SlackWorld, store: Store) -> None:
    ws = world.workspace
    assert await world.cards.sync() == 3  # chat.postMessage
    async with store.session() as s:
        await responder.approve(s, 1, "dana", "cli")
    assert await world.cards.sync() == 1  # chat.update
    ws.fail_next("chat.update", "ratelimited", retry_after_s=5)
    async with store.session() as s:
        await responder.approve(s, 2, "dana", "cli")
    await world.cards.sync()
    for broken in ("archived", "outside", "revoked", "scope"):
        world.clock.now += 4000
        if broken == "archived":
            ws.archived.add("C0APPROVALS")
        elif broken == "outside":
            ws.outside.add("C0APPROVALS")
        elif broken == "revoked":
            ws.revoked = True
        else:
            ws.scopes.discard("chat:write")
        await world.cards.sync()
        ws.archived.clear()
        ws.outside.clear()
        ws.revoked = False
        ws.scopes.add("chat:write")
    errors = {body.get("error") for _, _, body in ws.answers}
    assert {
        "ratelimited",
        "is_archived",
        "not_in_channel",
        "token_revoked",
        "missing_scope",
    } <= errors
    assert {m for m, _ in ws.calls} == {"chat.postMessage", "chat.update"}
    problems = exchange_problems(ws.calls, ws.answers)
    assert problems == [], "\n".join(problems)


async def test_the_slack_alert_sink_fits_slacks_spec() -> None:
    ws = SlackWorkspace(bot_token="xoxb-alerts", channels={"C0ALERTS01": "alerts"})
    async with (
        TestServer(make_slack_app(ws), host="127.0.0.1") as server,
        aiohttp.ClientSession() as http,
    ):
        config = SlackSinkConfig(
            type="slack",
            name="ops",
            token=SecretStr("xoxb-alerts"),
            channel="C0ALERTS01",
            api_base=str(server.make_url("/api/")),
        )
        sink = SlackSink(config, http, AlertRenderer())
        alert = Alert(
            id=7,
            kind="escalation",
            dedupe_key="escalation:7",
            severity="critical",
            title="Legal threat on X",
            detail={"text": "I will sue"},
            created_at=datetime(2026, 12, 6, tzinfo=UTC),
        )
        await sink.send(view_of(alert))
        ws.archived.add("C0ALERTS01")
        with pytest.raises(SinkError) as refused:
            await sink.send(view_of(alert))
        assert refused.value.permanent
    assert len(ws.messages) == 1
    problems = exchange_problems(ws.calls, ws.answers)
    assert problems == [], "\n".join(problems)


async def test_the_checker_catches_a_wrong_field_name(world: SlackWorld) -> None:
    # A request with a misspelt argument, as Slack would answer invalid_arg_name.
    problems = request_problems("chat.postMessage", {"chanel": "C0APPROVALS", "text": "hi"})
    assert any("'chanel'" in p for p in problems)
    assert any("'channel' is a required property" in p for p in problems)
    # A stand-in answer with a misspelt field: take a real one and rename a field.
    assert await world.cards.sync() == 3
    method, _, body = world.workspace.answers[0]
    assert response_problems(method, body) == []
    wrong = {("channel_id" if k == "channel" else k): v for k, v in body.items()}
    problems = response_problems(method, wrong)
    assert any("'channel_id' was unexpected" in p for p in problems)
    assert any("'channel' is a required property" in p for p in problems)
    # An error code Slack does not have.
    assert response_problems("chat.update", {"ok": False, "error": "no_such_thing"})


async def test_channel_history_pages_and_metadata_fit_slacks_spec(
    world: SlackWorld, store: Store
) -> None:
    """conversations.history as the stand-in serves it: newest first, ``oldest`` exclusive,
    ``limit`` per page with a cursor, metadata only with include_all_metadata; refusals too."""
    ws = world.workspace
    assert await world.cards.sync() == 3
    client = world.client
    first = await client.conversations_history(channel=CHANNEL)
    assert [m["ts"] for m in first["messages"]] == [m.ts for m in reversed(ws.messages)]
    assert first["has_more"] is False and "response_metadata" not in first.data
    assert all("metadata" not in m for m in first["messages"]), "only when asked for"
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await client.conversations_history(
            channel=CHANNEL, limit=2, include_all_metadata=True, cursor=cursor
        )
        assert len(page["messages"]) <= 2
        seen += page["messages"]
        cursor = (page.get("response_metadata") or {}).get("next_cursor")
        if not page["has_more"]:
            break
        assert cursor
    assert [m["ts"] for m in seen] == [m["ts"] for m in first["messages"]]
    assert [m["metadata"] for m in seen] == [m.metadata for m in reversed(ws.messages)]
    after_first = await client.conversations_history(channel=CHANNEL, oldest=ws.messages[0].ts)
    assert [m["ts"] for m in after_first["messages"]] == [m.ts for m in ws.messages[:0:-1]]
    inclusive = await client.conversations_history(
        channel=CHANNEL, oldest=ws.messages[0].ts, inclusive=True
    )
    assert len(inclusive["messages"]) == 3
    for bad, error in (
        ({"channel": "C0NOWHERE1"}, "channel_not_found"),
        ({"channel": CHANNEL, "oldest": "yesterday"}, "invalid_ts_oldest"),
        ({"channel": CHANNEL, "cursor": "not-a-cursor"}, "invalid_cursor"),
    ):
        with pytest.raises(SlackApiError) as refused:
            await client.conversations_history(**bad)
        assert refused.value.response["error"] == error
    ws.scopes.discard("channels:history")
    with pytest.raises(SlackApiError) as refused:
        await client.conversations_history(channel=CHANNEL)
    assert refused.value.response["needed"] == "channels:history"
    problems = exchange_problems(ws.calls, ws.answers)
    # Only the deliberately bad ``oldest``, which the spec (like Slack) does not take.
    assert problems == [
        "conversations.history request: 'yesterday' is not valid under any of the given schemas"
    ], "\n".join(problems)
    # The checker knows the method: a misspelt argument or answer field is caught.
    assert request_problems("conversations.history", {"channel": CHANNEL, "olderst": "1"})
    answer = next(body for method, _, body in ws.answers if method == "conversations.history")
    assert response_problems("conversations.history", {**answer, "next_cursor": "x"})
