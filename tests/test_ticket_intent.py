"""A ticket keeps the most serious reading of its messages, in one batch or across batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.db import Store
from socialcrm.intents import graver_intent
from socialcrm.models import Message, Ticket
from socialcrm.pipeline import Pipeline

T0 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)  # a Wednesday, in business hours


def msg(n: int, text: str, *, reply_to: str | None = None) -> InboundMessage:
    return InboundMessage(
        channel="x",
        external_id=f"x-{n}",
        text=text,
        author=Author(user_id="7", handle="sam"),
        created_at=T0 + timedelta(minutes=n),
        conversation_id="conv-1",
        in_reply_to=reply_to,
    )


async def tickets(store: Store) -> list[Ticket]:
    async with store.reader() as s:
        return list((await s.execute(sa.select(Ticket))).scalars())


LEGAL = "@acme your heater caught fire in my kitchen, my lawyer will be in touch"
THANKS = "@acme thank you so much for the quick reply, really appreciate it!"


async def test_thanks_after_a_legal_threat_leaves_the_ticket_legal_in_one_batch(
    pipeline: Pipeline, store: Store
) -> None:
    await pipeline.ingest(Batch(messages=[msg(1, LEGAL), msg(2, THANKS, reply_to="x-1")]), "t")
    (t,) = await tickets(store)
    assert t.intent == "legal" and t.priority == "urgent" and t.message_count == 2
    async with store.reader() as s:
        intents = dict((await s.execute(sa.select(Message.external_id, Message.intent))).all())
    # Each message keeps its own reading; the ticket keeps the gravest.
    assert intents == {"x-1": "legal", "x-2": "praise"}


async def test_thanks_after_a_legal_threat_leaves_the_ticket_legal_across_batches(
    pipeline: Pipeline, store: Store
) -> None:
    await pipeline.ingest(Batch(messages=[msg(1, LEGAL)]), "t")
    await pipeline.ingest(Batch(messages=[msg(2, THANKS, reply_to="x-1")]), "t")
    (t,) = await tickets(store)
    assert t.intent == "legal" and t.priority == "urgent" and t.message_count == 2


async def test_a_graver_message_raises_the_ticket_intent(pipeline: Pipeline, store: Store) -> None:
    await pipeline.ingest(Batch(messages=[msg(1, "@acme how do I change my address?")]), "t")
    (t,) = await tickets(store)
    assert t.intent == "question"
    await pipeline.ingest(
        Batch(messages=[msg(2, "@acme still no answer, cancel my account", reply_to="x-1")]), "t"
    )
    (t,) = await tickets(store)
    assert t.intent == "churn"


def test_gravity_order() -> None:
    assert graver_intent("praise", "legal") == "legal"
    assert graver_intent("legal", "praise") == "legal"
    assert graver_intent("question", "complaint") == "complaint"
    assert graver_intent(None, "praise") == "praise"
    assert graver_intent("refund", None) == "refund"
    # A custom rule's intent ranks with a question: above praise, below problems.
    assert graver_intent("praise", "warranty") == "warranty"
    assert graver_intent("warranty", "delivery") == "delivery"
