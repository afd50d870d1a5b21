"""``socialcrm queue`` reads the approval queue through the plain driver (sqlite3, asyncpg).

Its answer must be the chat-ops ``queue`` command's, line for line, on SQLite and PostgreSQL,
and it must answer without loading SQLAlchemy (what keeps it quick to start).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm import priority
from socialcrm.chatops.commands import Actor, Commands
from socialcrm.config import Config
from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.db import Store
from socialcrm.models import Message, Reply, Ticket
from socialcrm.pipeline import Pipeline

VIEWER = Actor("val", "viewer", "slack")
#: Modules the plain-driver path must not load.
HEAVY = ("sqlalchemy", "sqlmodel", "socialcrm.models", "socialcrm.db")

COMPLAINTS = [
    ("x", "jane", "@acme my order is two weeks late, terrible"),
    ("x", "bob", "@acme the app crashes all the time, useless"),
    ("mastodon", "kim@mastodon.social", "@acme billing charged me twice, awful service"),
    ("email", "ann@example.com", "My delivery never arrived.\nThis is terrible, I want a refund."),
    ("x", "lee", "@acme still no refund after three weeks, worst support ever"),
    ("reddit", "rob_r", "Acme broke my kettle and support ignores me, horrible"),
]
PRAISE = [
    ("x", "sue", "@acme thank you, the new app is great and support was lovely!"),
    ("mastodon", "tom@fosstodon.org", "@acme love the new release, great work, thanks!"),
    ("x", "max", "@acme amazing service today, thank you so much!"),
    ("email", None, "Thanks a lot, your team was wonderful and fast."),
    ("x", "zoe", "@acme great support, thanks for the quick fix!"),
]


def inbound(i: int, channel: str, handle: str | None, text: str) -> InboundMessage:
    return InboundMessage(
        channel=channel,
        external_id=f"m{i}",
        text=text,
        author=Author(user_id=f"u{i}", handle=handle),
    )


async def replies_with_message_and_ticket(s: AsyncSession) -> list[Any]:
    """Every reply with its message and its ticket (None without one), oldest reply first."""
    q = (
        sa.select(Reply, Message, Ticket)
        .join(Message, Message.id == Reply.message_id)
        .outerjoin(Ticket, Ticket.id == Reply.ticket_id)
        .order_by(Reply.id)
    )
    return list((await s.execute(q)).all())


async def drafts_of_every_kind(pipeline: Pipeline, store: Store) -> None:
    """Drafts from the real pipeline, then given every priority label with and without a
    ticket (and no label), ties of score and time, an edit, an error and a decided one."""
    messages = [inbound(i, *m) for i, m in enumerate(COMPLAINTS + PRAISE)]
    await pipeline.ingest(Batch(messages=messages), "test")
    async with store.session() as s:
        rows = await replies_with_message_and_ticket(s)
        with_ticket = [(r, m, t) for r, m, t in rows if t is not None]
        without = [(r, m) for r, m, t in rows if t is None]
        assert len(with_ticket) >= len(priority.LABELS) + 1, "the pipeline opened fewer tickets"
        assert len(without) >= len(priority.LABELS) + 1, "the pipeline drafted fewer thanks"
        first_time = rows[0][0].created_at
        for i, (r, m, t) in enumerate(with_ticket):
            t.priority = priority.LABELS[i % len(priority.LABELS)]
            m.priority = priority.LABELS[(i + 1) % len(priority.LABELS)]  # the ticket's wins
            r.priority_score = 40.0  # the same score: oldest, then lowest id, first
            r.created_at = first_time
        for i, (r, m) in enumerate(without):
            labels = (*priority.LABELS, None)
            m.priority = labels[i % len(labels)]
            r.priority_score = 10.0 * i
        with_ticket[0][0].final_text = "Edited:\nwe are on it."
        without[0][0].last_error = "too long for x (300 > 280)"
        with_ticket[-1][0].status = "approved"  # decided: not in the queue


def cli_queue(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``socialcrm queue`` in a fresh process, with ``-X importtime`` on stderr."""
    config = tmp_path / "config.yaml"
    config.write_text(f"database: {url}\n", encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "socialcrm", "-c", str(config), "queue", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def imported(importtime: str) -> set[str]:
    """The modules an ``-X importtime`` report names."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize("limit", [None, "3", "500"])
async def test_cli_queue_is_the_chat_command_answer(
    pipeline: Pipeline, store: Store, config: Config, tmp_path: Path, limit: str | None
) -> None:
    await drafts_of_every_kind(pipeline, store)
    line = "queue" if limit is None else f"queue {limit}"
    chat = await Commands(config, store).run(VIEWER, line)
    done = cli_queue(tmp_path, store.url, *([] if limit is None else [limit]))
    assert done.stdout == chat + "\n"
    loaded = imported(done.stderr)
    assert "socialcrm.approvals" in loaded  # the plain-driver path answered
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}
    # Every label, ticket or none, is in the answer; the decided draft is not.
    shown = chat if limit != "3" else await Commands(config, store).run(VIEWER, "queue 200")
    for label in priority.LABELS:
        assert f"  {label.upper()}  " in shown
    assert "needs an edit: too long for x" in shown and "draft: Edited: we are on it." in shown
    assert shown.count("\n  #") == len(COMPLAINTS) + len(PRAISE) - 1


async def test_queue_order_ranks_labels_then_score_then_age(
    pipeline: Pipeline, store: Store, config: Config
) -> None:
    """The order the one SQL text gives: the label shown (a ticket's over its message's),
    then the highest score, then the oldest, then the lowest id."""
    await drafts_of_every_kind(pipeline, store)
    out = await Commands(config, store).run(VIEWER, "queue 200")
    shown = [int(line.split()[0][1:]) for line in out.splitlines() if line.startswith("  #")]
    async with store.reader() as s:
        rows = [row for row in await replies_with_message_and_ticket(s) if row[0].status == "draft"]

    def key(row: tuple[Reply, Message, Ticket | None]) -> tuple[int, float, object, int]:
        r, m, t = row
        label = t.priority if t is not None else m.priority
        return (-priority.RANK.get(label or "normal", 1), -r.priority_score, r.created_at, r.id)

    assert shown == [r.id for r, _m, _t in sorted(rows, key=key)]


def test_cli_queue_on_a_missing_database_says_so_and_makes_none(tmp_path: Path) -> None:
    """No database yet: the plain driver leaves it to the store, which does not create one
    for a command that only reads; once the schema is made, the plain driver answers."""
    path = tmp_path / "new.db"
    with pytest.raises(subprocess.CalledProcessError) as refused:
        cli_queue(tmp_path, f"sqlite:///{path}")
    assert refused.value.returncode == 2
    assert refused.value.stderr.strip().endswith(
        f"socialcrm: no database at {path}: `socialcrm db upgrade` creates it"
    )
    assert not path.exists()
    subprocess.run(
        [sys.executable, "-m", "socialcrm", "-c", str(tmp_path / "config.yaml"), "db", "upgrade"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    done = cli_queue(tmp_path, f"sqlite:///{path}")  # at the code's schema now
    assert done.stdout.strip() == "The approval queue is empty."
    assert "sqlalchemy" not in imported(done.stderr)


def test_cli_queue_refuses_a_bad_limit_as_the_command_does(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"database: sqlite:///{tmp_path / 'q.db'}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "socialcrm", "-c", str(config)]
    subprocess.run([*cmd, "db", "upgrade"], check=True, capture_output=True, timeout=60)
    done = subprocess.run(
        [*cmd, "queue", "many"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "socialcrm: limit must be a number, got 'many'"
