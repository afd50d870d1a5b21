"""A few thousand realistic mentions through the whole pipeline, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa

from socialcrm import customers
from socialcrm.connector import Batch
from socialcrm.db import Store
from socialcrm.models import Customer, Identity, Message, Reply, Ticket
from socialcrm.pipeline import Pipeline
from socialcrm.sandbox.traffic import TrafficGenerator

COUNT = 3000


async def table_counts(store: Store) -> dict[str, int]:
    out = {}
    async with store.reader() as s:
        for model in (Message, Ticket, Reply, Customer, Identity):
            q = sa.select(sa.func.count()).select_from(model)
            out[model.__name__] = int((await s.execute(q)).scalar_one())
    return out


async def test_generated_traffic(pipeline: Pipeline, store: Store) -> None:
    gen = TrafficGenerator(seed=11)
    mentions = list(gen.mentions(COUNT))
    async with store.session() as s:
        rows = customers.parse_csv(_csv(gen.customers(30, among=COUNT)))
        await customers.import_customers(s, rows, "test", "cli")
    batches = [mentions[i : i + 700] for i in range(0, COUNT, 700)]
    for part in batches:
        await pipeline.ingest(Batch(messages=[m.message for m in part]), "generated")

    async with store.reader() as s:
        stored = {
            (r.channel, r.external_id): r
            for r in (
                await s.execute(
                    sa.select(
                        Message.channel,
                        Message.external_id,
                        Message.ticket_id,
                        Message.customer_id,
                        Message.intent,
                        Message.ignored,
                    )
                )
            ).all()
        }
        drafted = {r[0] for r in (await s.execute(sa.select(Reply.message_id))).all()}
        ids = {
            (r.channel, r.external_id): r.id
            for r in (
                await s.execute(sa.select(Message.id, Message.channel, Message.external_id))
            ).all()
        }
    assert len(stored) == COUNT

    def ticketed(kind: str) -> float:
        ms = [m for m in mentions if m.kind == kind and m.lang == "en" and m.message.direct]
        hit = sum(1 for m in ms if stored[(m.message.channel, m.message.external_id)].ticket_id)
        return hit / len(ms)

    # Complaints and questions get tickets; spam never does.
    assert ticketed("complaint") >= 0.9
    assert ticketed("question") >= 0.85
    spam = [m for m in mentions if m.kind == "spam"]
    spam_ticketed = sum(
        1 for m in spam if stored[(m.message.channel, m.message.external_id)].ticket_id
    )
    assert spam_ticketed <= 0.05 * len(spam)

    # Drafts exist where the rules asked, and praise gets a thank-you without a ticket
    # (praise that joins a conversation with a draft already waiting is shown with that one).
    assert len(drafted) > COUNT * 0.15
    praise = [
        m
        for m in mentions
        if m.kind == "praise"
        and m.lang == "en"
        and m.message.channel == "x"
        and stored[(m.message.channel, m.message.external_id)].ticket_id is None
    ]
    thanked = sum(1 for m in praise if ids[(m.message.channel, m.message.external_id)] in drafted)
    assert len(praise) > 50 and thanked >= 0.8 * len(praise)

    # A repeat author is one customer: per account on a channel, and across channels where
    # the same person writes with the same email address (email and webhook forms).
    customers_of: dict[tuple[str, str], set[int]] = defaultdict(set)
    messages_of: dict[tuple[str, str], int] = defaultdict(int)
    for m in mentions:
        a, ch = m.message.author, m.message.channel
        if ch == "rss":  # review sites give a display name only: not an identity
            continue
        key = (ch, a.user_id) if a.user_id else ("email", a.email or "")
        customers_of[key].add(stored[(ch, m.message.external_id)].customer_id)
        messages_of[key] += 1
    repeat = [k for k, n in messages_of.items() if n > 1]
    assert len(repeat) > 50
    split = [k for k in repeat if len(customers_of[k]) != 1]
    assert not split, f"authors split over several customers: {split[:5]}"

    # The same traffic again adds nothing.
    before = await table_counts(store)
    for part in batches:
        again = await pipeline.ingest(Batch(messages=[m.message for m in part]), "generated")
        assert again.stored == 0
    assert await table_counts(store) == before


def _csv(rows: list[dict[str, str]]) -> str:
    cols = list(customers.CSV_COLUMNS)
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(str(r.get(c, "")).replace(",", " ") for c in cols))
    return "\n".join(lines) + "\n"
