"""The command layer shared by chat and the CLI: parsing, roles, audit, answers."""

from __future__ import annotations

import inspect

import pytest
import sqlalchemy as sa

from socialcrm.chatops.commands import Actor, CommandError, Commands
from socialcrm.config import Config, SourceConfig
from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.db import Store
from socialcrm.models import AuditEvent, Reply, SourceState
from socialcrm.pipeline import Pipeline

VIEWER = Actor("val", "viewer", "slack")
AGENT = Actor("ann", "agent", "slack")
APPROVER = Actor("dana", "approver", "mattermost")
STRANGER = Actor("who", "", "slack")


@pytest.fixture
async def loaded(pipeline: Pipeline, config: Config, store: Store) -> Commands:
    msgs = [
        InboundMessage(
            channel="x",
            external_id="1",
            text="@acme my order is two weeks late, terrible",
            author=Author(user_id="1", handle="jane"),
        ),
        InboundMessage(
            channel="x",
            external_id="2",
            text="@acme the app crashes all the time, useless",
            author=Author(user_id="2", handle="bob"),
        ),
    ]
    await pipeline.ingest(Batch(messages=msgs), "test")
    return Commands(config, store)


async def audit(store: Store) -> list[AuditEvent]:
    async with store.reader() as s:
        return list((await s.execute(sa.select(AuditEvent).order_by(AuditEvent.id))).scalars())  # type: ignore[arg-type]


async def reply(store: Store, rid: int) -> Reply:
    async with store.reader() as s:
        r = await s.get(Reply, rid)
        assert r is not None
        return r


async def test_help_comes_from_docstrings(loaded: Commands) -> None:
    out = await loaded.run(VIEWER, "help")
    for name, (fn, role) in loaded.table.items():
        first = inspect.cleandoc(fn.__doc__ or "").splitlines()[0].split(" — ", 1)[1]
        assert (first in out) == (role in ("viewer",)), name
    assert "approve REPLY_ID" in await loaded.run(APPROVER, "help")
    one = await loaded.run(VIEWER, "help edit")
    assert "edit REPLY_ID TEXT" in one and "approver" in one


async def test_every_command_is_documented(loaded: Commands) -> None:
    for name, (fn, _role) in loaded.table.items():
        doc = inspect.cleandoc(fn.__doc__ or "")
        assert doc.startswith(name) and " — " in doc, name


async def test_queue_orders_by_priority(loaded: Commands) -> None:
    out = await loaded.run(VIEWER, "queue")
    assert "2 drafts awaiting approval" in out
    assert out.index("#") < out.index("Approve with")


async def test_viewer_cannot_approve_and_nothing_changes(loaded: Commands, store: Store) -> None:
    with pytest.raises(CommandError, match="approve needs the approver role and you are viewer"):
        await loaded.run(VIEWER, "approve 1")
    with pytest.raises(CommandError, match="not staff"):
        await loaded.run(STRANGER, "queue")
    assert (await reply(store, 1)).status == "draft"
    refused = [a for a in await audit(store) if a.action == "command.refused"]
    assert [(a.actor, a.object_id) for a in refused] == [("val", "approve"), ("who", "queue")]


async def test_approve_edit_reject_are_audited(loaded: Commands, store: Store) -> None:
    assert "approved by dana" in await loaded.run(APPROVER, "approve 1")
    assert "edited and approved" in await loaded.run(
        APPROVER, "edit #2 @bob   We are fixing it now."
    )
    r2 = await reply(store, 2)
    assert r2.final_text == "@bob   We are fixing it now." and r2.edited and r2.status == "approved"
    events = {a.action: a for a in await audit(store)}
    assert events["reply.approve"].actor == "dana" and events["reply.approve"].via == "mattermost"
    assert events["reply.edit"].detail["after"] == "@bob   We are fixing it now."
    assert events["reply.edit"].detail["before"] != events["reply.edit"].detail["after"]
    with pytest.raises(CommandError, match="not a draft"):
        await loaded.run(AGENT, "reject 1 too late")


async def test_agent_rejects_with_a_reason(loaded: Commands, store: Store) -> None:
    with pytest.raises(CommandError, match="usage: reject REPLY_ID REASON"):
        await loaded.run(AGENT, "reject 1")
    await loaded.run(AGENT, "reject 1 wrong customer")
    r = await reply(store, 1)
    assert r.status == "rejected" and r.rejected_reason == "wrong customer"


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("frobnicate", "unknown command 'frobnicate'"),
        ("approve abc", "reply id must be a number, got 'abc'"),
        ("approve", "usage: approve REPLY_ID"),
        ("approve 1 2", "too many words"),
        ("show 999", "no reply #999"),
        ("ticket 999", "no ticket #999"),
        ("tickets weird", "unknown status 'weird'"),
        ("customer nobody@nowhere.example", "no customer matches"),
        # A value quoted at the end keeps its closing quote.
        ("relabel 1 angry", r"one of negative, neutral, positive, got 'angry'$"),
        ("needs-reply 1 maybe", r"got 'maybe'$"),
        # Usage as `help` shows it, whichever mistake it answers.
        ("explain", r"^usage: explain MESSAGE_ID \[ALL\]$"),
        ("explain 1 al", r"^usage: explain MESSAGE_ID \[ALL\] \(the last word can only be"),
        ("explain 1 all more", r"can only be 'all', got 'all more'\)$"),
        ("show 1 2", r"^too many words for show; usage: show REPLY_ID$"),
    ],
)
async def test_mistakes_get_a_clear_answer(loaded: Commands, line: str, error: str) -> None:
    with pytest.raises(CommandError, match=error):
        await loaded.run(Actor("root", "admin", "cli"), line)


async def test_tickets_customer_assign_close(loaded: Commands, store: Store) -> None:
    assert "@acme my order" in await loaded.run(VIEWER, "tickets")
    assert "jane" in await loaded.run(VIEWER, "customer @jane")
    assert "assigned to sam" in await loaded.run(AGENT, "assign 1 sam")
    assert "is closed" in await loaded.run(AGENT, "close 1")
    with pytest.raises(CommandError, match="cannot become"):
        await loaded.run(AGENT, "resolve 1")
    assert "closed" in await loaded.run(VIEWER, "ticket 1")


async def test_mute_a_source(config: Config, store: Store) -> None:
    cfg = Config.model_validate(
        {"sources": [{"name": "x-main", "type": "x"}], "base_dir": config.base_dir}
    )
    commands = Commands(cfg, store)
    with pytest.raises(CommandError, match="mute needs the agent role"):
        await commands.run(VIEWER, "mute x-main 2h")
    assert "muted until" in await commands.run(AGENT, "mute x-main 2h")
    async with store.reader() as s:
        state = await s.get(SourceState, "x-main")
    assert state is not None and state.muted_until is not None
    assert "polled again" in await commands.run(AGENT, "mute x-main 0")
    with pytest.raises(CommandError, match="no source named 'nope'"):
        await commands.run(AGENT, "mute nope 1h")
    with pytest.raises(CommandError, match="expected a duration"):
        await commands.run(AGENT, "mute x-main soon")


async def test_edit_takes_the_text_as_typed(loaded: Commands, store: Store) -> None:
    await loaded.run(APPROVER, "edit 1 We're on it, Jane — a new one ships today.")
    assert (await reply(store, 1)).final_text == "We're on it, Jane — a new one ships today."
    await loaded.run(APPROVER, 'edit 2 "Quoted as a whole"')
    assert (await reply(store, 2)).final_text == "Quoted as a whole"


async def test_report_summarises_the_last_period(loaded: Commands, pipeline: Pipeline) -> None:
    # A report ends at the last whole hour (up to 2 days) or midnight: the fixture's messages,
    # written just now, are in neither; two complaints an hour before midnight are in both.
    from datetime import UTC, datetime, time, timedelta

    midnight = datetime.combine(datetime.now(UTC).date(), time(), UTC)
    msgs = [
        InboundMessage(
            channel="x",
            external_id=f"late-{n}",
            text="@acme my order is two weeks late, terrible",
            author=Author(user_id=f"9{n}", handle=f"late{n}"),
            created_at=midnight - timedelta(hours=1),
        )
        for n in range(2)
    ]
    await pipeline.ingest(Batch(messages=msgs), "test")
    out = await loaded.run(VIEWER, "report 24h")
    assert out.startswith("Acme, ")
    assert "Messages: 2 (" in out
    assert "negative 100.0%" in out
    assert "Tickets: 2 opened, 0 resolved, 2 open at the end" in out
    assert "Messages: 2 (" in await loaded.run(VIEWER, "report")  # 7d unless said


async def test_the_report_summary_is_plain_text(loaded: Commands, config: Config) -> None:
    """Chat answers are escaped by each chat's adapter: the summary carries no Markdown
    escapes that would show there as backslashes or doubled entities."""
    brand = config.brand.model_copy(update={"name": "Acme_Co & <Partners>"})
    commands = Commands(config.model_copy(update={"brand": brand}), loaded.store)
    out = await commands.run(VIEWER, "report 24h")
    assert out.startswith("Acme_Co & <Partners>, ") and "\\" not in out and "&lt;" not in out


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("report soon", "expected a duration like \"60s\", got 'soon'"),
        ("report 5m", "a report covers between 1h and 366d"),
        ("report 7 days", "expected a duration like \"60s\", got '7 days'"),
    ],
)
async def test_report_refuses_bad_periods(loaded: Commands, line: str, problem: str) -> None:
    with pytest.raises(CommandError, match=problem):
        await loaded.run(VIEWER, line)


async def test_an_approval_says_whether_a_configured_source_will_send_it(
    loaded: Commands, config: Config, store: Store
) -> None:
    """The drafts came through source "test", which this config does not have: approving one
    says it will not be sent from here (the daemon would fail it), not that it will be. With
    an X source of that name configured, it will be sent."""
    out = await loaded.run(APPROVER, "approve 1")
    assert "It will be sent" not in out
    assert "This config has no enabled source test that sends replies" in out
    # It is still approved: a daemon whose config has the source sends it (no "answer it
    # yourself", which would answer the customer twice).
    assert (await reply(store, 1)).status == "approved"
    x = {"name": "test", "type": "x", "bearer_token": "t", "user_id": "1"}
    sends = Commands(config.model_copy(update={"sources": [SourceConfig(**x)]}), store)
    out = await sends.run(APPROVER, "edit 2 Sorry about that, we are on it.")
    assert out == "Reply #2 edited and approved by dana. It will be sent on x."
    # A source of that name whose connector only reads (an RSS feed), or one switched off,
    # sends nothing either.
    rss = {"name": "test", "type": "rss", "url": "http://127.0.0.1:9/feed"}
    reads = Commands(config.model_copy(update={"sources": [SourceConfig(**rss)]}), store)
    off = {**x, "enabled": False}
    idle = Commands(config.model_copy(update={"sources": [SourceConfig(**off)]}), store)
    assert not reads.checker.sends("test") and not idle.checker.sends("test")
    assert sends.checker.sends("test")
    # A connector that sends, with settings that leave it unable to: a webhook without its
    # callback URL, a read-only Reddit app.
    hook = {"name": "test", "type": "webhook", "secret": "s" * 32}
    reddit = {"name": "test", "type": "reddit", "client_id": "c", "client_secret": "s",
              "query": "acme", "user_agent": "python:test:1 (by /u/acme)"}  # fmt: skip
    account = {**reddit, "username": "acme", "password": "p"}

    def able(settings: dict[str, str]) -> bool:
        return Commands(
            config.model_copy(update={"sources": [SourceConfig(**settings)]}), store
        ).checker.sends("test")

    assert not able(hook) and able({**hook, "reply_url": "http://127.0.0.1:9/r"})
    assert not able(reddit) and able(account)
