"""The ingestion pipeline end to end, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from socialcrm import customers, tickets
from socialcrm import pipeline as pipeline_mod
from socialcrm.chatops.commands import Actor, Commands
from socialcrm.config import Config
from socialcrm.connector import Author, Batch, InboundMessage, Quarantined
from socialcrm.db import Store
from socialcrm.models import (
    Alert,
    Customer,
    Identity,
    Message,
    Quarantine,
    Reply,
    SourceState,
    Ticket,
    utcnow,
)
from socialcrm.pipeline import Pipeline
from socialcrm.rules import RuleContext, RuleSet
from socialcrm.sandbox.traffic import TrafficGenerator
from socialcrm.scoring import ScoringPool
from socialcrm.sentiment import SentimentScorer

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, in business hours
_seq = iter(range(1, 10**9))


def msg(
    text: str,
    channel: str = "x",
    *,
    user: str | None = "u1",
    handle: str | None = "jane",
    email: str | None = None,
    at: datetime = T0,
    ext: str | None = None,
    **kw: Any,
) -> InboundMessage:
    """A message with sensible defaults; a fresh external id unless given."""
    return InboundMessage(
        channel=channel,  # type: ignore[arg-type]
        external_id=ext or f"{channel}-{next(_seq)}",
        text=text,
        author=Author(user_id=user, handle=handle, email=email, followers=kw.pop("followers", 10)),
        created_at=at,
        **kw,
    )


async def ingest(pipeline: Pipeline, *messages: InboundMessage, source: str = "test") -> Any:
    return await pipeline.ingest(Batch(messages=list(messages)), source)


async def rows(store: Store, model: Any, *where: Any) -> list[Any]:
    async with store.reader() as s:
        q = (
            sa.select(model)
            .where(*where)
            .order_by(model.id if hasattr(model, "id") else sa.text("1"))
        )
        return list((await s.execute(q)).scalars())


async def count(store: Store, model: Any, *where: Any) -> int:
    async with store.reader() as s:
        return int(
            (
                await s.execute(sa.select(sa.func.count()).select_from(model).where(*where))
            ).scalar_one()
        )


# -- dedupe ---------------------------------------------------------------------------------


async def test_same_batch_twice_adds_nothing(pipeline: Pipeline, store: Store) -> None:
    batch = [
        msg("@acme my order is late, this is terrible"),
        msg("@acme how do I change my address?", user="u2", handle="bob"),
        msg(
            "Where is my parcel?",
            "email",
            user=None,
            handle=None,
            email="c@example.com",
            ext="<m1@x>",
        ),
    ]
    first = await ingest(pipeline, *batch)
    assert first.stored == 3
    before = {m: await count(store, m) for m in (Message, Ticket, Reply, Customer, Identity, Alert)}
    second = await ingest(pipeline, *batch)
    assert second.stored == 0 and second.duplicates == 3
    after = {m: await count(store, m) for m in (Message, Ticket, Reply, Customer, Identity, Alert)}
    assert after == before


async def test_repeats_inside_one_batch_are_stored_once(pipeline: Pipeline, store: Store) -> None:
    m = msg("@acme hello", ext="x-dup")
    r = await ingest(pipeline, m, m.model_copy(update={"text": "changed"}))
    assert (r.stored, r.duplicates) == (1, 1)
    stored = await rows(store, Message)
    assert [x.text for x in stored] == ["@acme hello"]


# -- sentiment ------------------------------------------------------------------------------


async def test_sentiment_scores_are_kept(pipeline: Pipeline, store: Store) -> None:
    await ingest(pipeline, msg("@acme I love you guys, best support ever!"))
    (m,) = await rows(store, Message)
    assert m.scored and m.sentiment is not None and m.sentiment > 0.5
    assert m.sentiment_pos and m.sentiment_neu is not None and m.sentiment_neg is not None
    assert abs(m.sentiment_pos + m.sentiment_neu + m.sentiment_neg - 1) < 0.01


def test_brand_lexicon_overrides_vader() -> None:
    plain, brand = SentimentScorer(), SentimentScorer({"backordered": -2.5, "sick": 1.5})
    text = "my parcel is backordered"
    assert plain.score(text).compound == 0.0
    assert (brand.score(text).compound or 0) < -0.3
    assert (plain.score("these trainers are sick").compound or 0) < 0
    assert (brand.score("these trainers are sick").compound or 0) > 0


@pytest.mark.parametrize(
    ("text", "lang", "scored", "want_lang"),
    [
        (
            "Mi pedido no ha llegado y nadie me contesta, qué desastre de servicio",
            None,
            False,
            "es",
        ),
        ("Ma commande n'est jamais arrivée, c'est inadmissible", None, False, "fr"),
        ("Meine Bestellung ist immer noch nicht angekommen", None, False, "de"),
        ("great", "es", False, "es"),  # the platform's tag wins
        ("My order never arrived and support ignores me", None, True, "en"),
        ("😍😍😍", "und", True, None),  # no language: VADER reads emoji
        ("ok", None, True, None),  # too short to tell: scored
    ],
)
def test_languages_vader_cannot_score_are_unscored(
    scorer: SentimentScorer, text: str, lang: str | None, scored: bool, want_lang: str | None
) -> None:
    s = scorer.score(text, lang)
    assert s.scored is scored
    assert s.lang == want_lang
    if not scored:
        assert (s.compound, s.pos, s.neu, s.neg) == (None, None, None, None)


async def test_unscored_message_is_stored_as_null_not_zero(
    pipeline: Pipeline, store: Store
) -> None:
    await ingest(pipeline, msg("Mi pedido no ha llegado todavía, qué desastre", lang="es"))
    (m,) = await rows(store, Message)
    assert m.scored is False and m.sentiment is None and m.lang == "es"
    assert "needs-translation" in m.tags


# -- identity -------------------------------------------------------------------------------


async def test_repeat_author_is_one_customer(pipeline: Pipeline, store: Store) -> None:
    await ingest(pipeline, msg("@acme hi", user="42", handle="jane"))
    await ingest(pipeline, msg("@acme hello again", user="42", handle="jane_new"))
    assert await count(store, Customer) == 1
    (ident,) = await rows(store, Identity)
    assert ident.handle == "jane_new"  # handles change; the user id does not


async def test_email_links_across_channels(pipeline: Pipeline, store: Store) -> None:
    await ingest(
        pipeline, msg("Help please", "email", user=None, handle=None, email="Jane@Example.com")
    )
    await ingest(
        pipeline, msg("Any news?", "webhook", user=None, handle=None, email="jane@example.com")
    )
    assert await count(store, Customer) == 1
    idents = await rows(store, Identity)
    assert sorted(i.channel for i in idents) == ["email", "webhook"]


async def test_handle_links_an_imported_customer_and_fills_the_user_id(
    pipeline: Pipeline, store: Store
) -> None:
    async with store.session() as s:
        parsed = customers.parse_csv(
            "name,email,tier,x_handle\nJane Doe,jane@example.com,vip,@JaneD\n"
        )
        await customers.import_customers(s, parsed, "t", "cli")
    await ingest(pipeline, msg("@acme my order is late", user="999", handle="janed"))
    assert await count(store, Customer) == 1
    x = [i for i in await rows(store, Identity) if i.channel == "x"]
    assert x[0].external_user_id == "999"
    (m,) = await rows(store, Message)
    (c,) = await rows(store, Customer)
    assert m.customer_id == c.id and c.tier == "vip"


async def test_reused_handle_with_another_user_id_is_a_new_customer(
    pipeline: Pipeline, store: Store
) -> None:
    await ingest(pipeline, msg("@acme hi", user="1", handle="sam"))
    await ingest(pipeline, msg("@acme hi", user="2", handle="sam"))
    assert await count(store, Customer) == 2


async def test_unknown_author_becomes_a_prospect(pipeline: Pipeline, store: Store) -> None:
    await ingest(pipeline, msg("@acme hello", user="7", handle="newbie", followers=1234))
    (c,) = await rows(store, Customer)
    assert c.lifecycle_stage == "prospect" and c.reach == 1234 and c.name == "newbie"


async def test_merge_moves_everything(pipeline: Pipeline, store: Store) -> None:
    await ingest(pipeline, msg("@acme my order is late, awful", user="1", handle="jane"))
    await ingest(
        pipeline,
        msg("My order is late, awful", "email", user=None, handle=None, email="j@example.com"),
    )
    a, b = await rows(store, Customer)
    async with store.session() as s:
        moved = await customers.merge(s, a.id, b.id, "tester", "cli")
    assert moved["identity"] == 1 and moved["message"] == 1 and moved["ticket"] == 1
    assert await count(store, Message, Message.customer_id == b.id) == 0
    assert await count(store, Identity, Identity.customer_id == a.id) == 2
    merged = (await rows(store, Customer, Customer.id == b.id))[0]
    assert merged.merged_into_id == a.id
    # New mail from the merged address now lands on the kept customer.
    await ingest(
        pipeline, msg("Still late", "email", user=None, handle=None, email="j@example.com")
    )
    assert await count(store, Message, Message.customer_id == a.id) == 3
    async with store.session() as s:
        with pytest.raises(ValueError, match="already merged"):
            await customers.merge(s, a.id, b.id, "tester", "cli")


# -- tickets and threading ------------------------------------------------------------------


async def test_complaint_opens_a_ticket_with_a_draft(pipeline: Pipeline, store: Store) -> None:
    r = await ingest(pipeline, msg("@acme my order is two weeks late and nobody answers, awful"))
    assert r.tickets_opened == 1 and r.drafts == 1
    (t,) = await rows(store, Ticket)
    assert t.status == "open" and t.intent in ("complaint", "delivery") and t.message_count == 1
    (reply,) = await rows(store, Reply)
    assert reply.status == "draft" and reply.ticket_id == t.id
    assert reply.draft_text.startswith("@jane ") and f"[#{t.id}]" in reply.draft_text


@pytest.mark.parametrize(
    ("channel", "link"),
    [
        ("x", "in_reply_to"),
        ("mastodon", "in_reply_to"),
        ("reddit", "conversation_id"),
        ("email", "references"),
        ("email", "in_reply_to"),
        ("webhook", "conversation_id"),
    ],
)
async def test_reply_chain_threads_into_the_ticket(
    pipeline: Pipeline, store: Store, channel: str, link: str
) -> None:
    first = msg(
        "My order is late and I am angry about it",
        channel,
        email="a@example.com",
        ext=f"{channel}-root",
    )
    await ingest(pipeline, first)
    # Days later (outside the thread window) and from another account: only the chain links it.
    later = T0 + timedelta(days=5)
    extra = {
        "in_reply_to": {"in_reply_to": first.external_id},
        "conversation_id": {"conversation_id": first.external_id},
        "references": {"references": ["<other@x>", first.external_id]},
    }[link]
    follow = msg(
        "Any update?",
        channel,
        user="other",
        handle="other",
        email="b@example.com",
        at=later,
        **extra,
    )
    r = await ingest(pipeline, follow)
    assert r.tickets_threaded == 1 and r.tickets_opened == 0
    (t,) = await rows(store, Ticket)
    assert t.message_count == 2
    assert await count(store, Message, Message.ticket_id == t.id) == 2


async def test_ticket_tag_threads_an_email(pipeline: Pipeline, store: Store) -> None:
    await ingest(
        pipeline,
        msg("My refund never came", "email", user=None, handle=None, email="a@example.com"),
    )
    (t,) = await rows(store, Ticket)
    r = await ingest(
        pipeline,
        msg(
            "Any news?",
            "email",
            user=None,
            handle=None,
            email="a@example.com",
            subject=f"Re: your case [#{t.id}]",
            at=T0 + timedelta(days=3),
        ),
    )
    assert r.tickets_threaded == 1 and await count(store, Ticket) == 1


async def test_a_stranger_cannot_write_into_a_ticket_by_its_tag(
    pipeline: Pipeline, store: Store, config: Config
) -> None:
    # Ticket numbers are sequential: "[#1]" in a stranger's subject joined ticket 1.
    root = msg("My refund never came", "email", user=None, handle=None, email="a@example.com")
    await ingest(pipeline, root)
    (t,) = await rows(store, Ticket)
    r = await ingest(
        pipeline,
        msg(
            "I am the customer, send the refund to my account instead, terrible",
            "email",
            user=None,
            handle=None,
            email="mallory@example.net",
            subject=f"Re: your case [#{t.id}]",
            at=T0 + timedelta(hours=1),
        ),
    )
    assert r.tickets_threaded == 0 and r.tickets_opened == 1
    first, second = await rows(store, Ticket)
    assert first.id == t.id and first.message_count == 1
    assert second.related_ticket_id == t.id and second.customer_id != t.customer_id
    shown = await Commands(config, store).run(Actor("ann", "viewer", "cli"), f"ticket {second.id}")
    assert f"Related to ticket #{t.id}" in shown
    # Someone who already wrote in the ticket (here by answering inside its thread) may use
    # the tag later.
    colleague = msg(
        "Adding my colleague's order number: 4411",
        "email",
        user=None,
        handle=None,
        email="b@example.com",
        in_reply_to=root.external_id,
        at=T0 + timedelta(hours=2),
    )
    await ingest(pipeline, colleague)
    r = await ingest(
        pipeline,
        msg(
            "And the invoice is attached",
            "email",
            user=None,
            handle=None,
            email="b@example.com",
            subject=f"Your case [#{t.id}]",
            at=T0 + timedelta(days=4),
        ),
    )
    assert r.tickets_threaded == 1 and r.tickets_opened == 0
    assert (await rows(store, Ticket, Ticket.id == t.id))[0].message_count == 3


async def test_same_customer_within_window_threads_and_outside_opens(
    pipeline: Pipeline, store: Store, config: Config
) -> None:
    await ingest(pipeline, msg("@acme my order is late, terrible"))
    r1 = await ingest(pipeline, msg("@acme still waiting, awful", at=T0 + timedelta(hours=5)))
    assert r1.tickets_threaded == 1
    r2 = await ingest(
        pipeline,
        msg(
            "@acme now my refund failed, terrible",
            at=T0 + config.tickets.thread_window + timedelta(days=1),
        ),
    )
    assert r2.tickets_opened == 1
    assert await count(store, Ticket) == 2


async def test_other_channel_does_not_join_by_window(pipeline: Pipeline, store: Store) -> None:
    await ingest(pipeline, msg("@acme my order is late, terrible", email="j@example.com"))
    await ingest(
        pipeline,
        msg("My order is late, terrible", "webhook", user=None, handle=None, email="j@example.com"),
    )
    assert await count(store, Ticket) == 2


async def test_new_message_reopens_a_resolved_ticket(pipeline: Pipeline, store: Store) -> None:
    root = msg("@acme my order is late, terrible")
    await ingest(pipeline, root)
    (t,) = await rows(store, Ticket)
    async with store.session() as s:
        await tickets.set_status(s, t.id, "resolved", "agent", "cli", now=T0 + timedelta(hours=1))
    r = await ingest(
        pipeline,
        msg("@acme it broke again", at=T0 + timedelta(days=2), in_reply_to=root.external_id),
    )
    assert r.tickets_reopened == 1
    (t,) = await rows(store, Ticket)
    assert t.status == "open" and t.reopened_count == 1 and t.resolved_at is None


async def test_closed_ticket_is_never_reopened(pipeline: Pipeline, store: Store) -> None:
    root = msg("@acme my order is late, terrible")
    await ingest(pipeline, root)
    (t,) = await rows(store, Ticket)
    async with store.session() as s:
        await tickets.set_status(s, t.id, "closed", "agent", "cli")
    await ingest(
        pipeline,
        msg("@acme still broken, awful", at=T0 + timedelta(hours=2), in_reply_to=root.external_id),
    )
    statuses = sorted(x.status for x in await rows(store, Ticket))
    assert statuses == ["closed", "open"]


async def test_threading_inside_one_batch(pipeline: Pipeline, store: Store) -> None:
    a = msg("@acme my order is late, terrible", user="9", handle="zed")
    b = msg(
        "@acme hello??",
        user="9",
        handle="zed",
        in_reply_to=a.external_id,
        at=T0 + timedelta(minutes=3),
    )
    r = await ingest(pipeline, a, b)
    assert (r.tickets_opened, r.tickets_threaded) == (1, 1)
    (t,) = await rows(store, Ticket)
    assert t.message_count == 2
    assert await count(store, Reply) == 1  # one draft waits per ticket


@pytest.mark.parametrize(
    ("start", "to", "ok"),
    [
        ("open", "pending", True),
        ("pending", "resolved", True),
        ("resolved", "closed", True),
        ("resolved", "open", True),
        ("closed", "open", False),
        ("open", "bogus", False),
    ],
)
async def test_status_lifecycle(
    pipeline: Pipeline, store: Store, start: str, to: str, ok: bool
) -> None:
    await ingest(pipeline, msg("@acme my order is late, terrible"))
    (t,) = await rows(store, Ticket)
    path = {"open": [], "pending": ["pending"], "resolved": ["resolved"], "closed": ["closed"]}[
        start
    ]
    async with store.session() as s:
        for step in path:
            await tickets.set_status(s, t.id, step, "a", "cli")
    async with store.session() as s:
        if ok:
            assert (await tickets.set_status(s, t.id, to, "a", "cli")).status == to
        else:
            with pytest.raises(tickets.TicketError):
                await tickets.set_status(s, t.id, to, "a", "cli")


# -- priority -------------------------------------------------------------------------------


async def test_vip_and_reach_outrank_unknown_account(pipeline: Pipeline, store: Store) -> None:
    async with store.session() as s:
        parsed = customers.parse_csv(
            "name,email,tier,lifetime_value,x_handle\nVera,vera@example.com,vip,25000,vera\n"
        )
        await customers.import_customers(s, parsed, "t", "cli")
    text = "@acme the app keeps crashing and support is useless"
    await ingest(
        pipeline,
        msg(text, user="1", handle="vera", followers=20),
        msg(text, user="2", handle="nobody", followers=20),
        msg(text, user="3", handle="famous", followers=250_000),
    )
    by_handle = {}
    for t in await rows(store, Ticket):
        m = (await rows(store, Message, Message.ticket_id == t.id))[0]
        by_handle[m.author_handle] = t
    assert by_handle["vera"].priority_score > by_handle["nobody"].priority_score
    assert by_handle["famous"].priority_score > by_handle["nobody"].priority_score
    assert "vip tier" in by_handle["vera"].priority_reason
    assert "reach 250,000" in by_handle["famous"].priority_reason
    assert by_handle["vera"].priority in ("high", "urgent")


# -- drafts ---------------------------------------------------------------------------------


async def test_no_draft_for_do_not_contact(pipeline: Pipeline, store: Store) -> None:
    async with store.session() as s:
        parsed = customers.parse_csv(
            "name,email,x_handle,do_not_contact\nDan,d@example.com,dan,yes\n"
        )
        await customers.import_customers(s, parsed, "t", "cli")
    r = await ingest(pipeline, msg("@acme my order is late, terrible", user="5", handle="dan"))
    assert r.tickets_opened == 1 and r.drafts == 0
    assert await count(store, Reply) == 0


def test_the_teams_own_template_serves_every_channel_unless_they_wrote_one_for_it(
    config: Config,
) -> None:
    from socialcrm.responder import Responder

    tpl = config.base_dir / "tpl" / "replies"
    tpl.mkdir(parents=True)
    (tpl / "thanks.j2").write_text("Ours, {{ first_name }}.")
    (tpl / "apology.j2").write_text("Our apology, {{ first_name }}.")
    (tpl / "apology.mastodon.j2").write_text("Our toot, {{ first_name }}.")
    cfg = config.responder.model_copy(update={"templates_dir": Path("tpl")})
    responder = Responder(cfg, "Acme", config.base_dir)
    shipped = Responder(config.responder, "Acme", config.base_dir)
    ctx = {"first_name": "Pat", "handle": "pat", "name": "Pat"}

    def text(r: Responder, name: str, channel: str) -> str:
        return r.draft(name, channel, dict(ctx)).text

    # Their general template wins over the shipped channel variants (X, Mastodon) too.
    for channel in ("x", "mastodon", "email", "reddit"):
        assert text(responder, "thanks", channel) == "Ours, Pat."
    assert text(shipped, "thanks", "x") != "Ours, Pat."
    # Their channel variant wins on its channel; their general one elsewhere.
    assert text(responder, "apology", "mastodon") == "Our toot, Pat."
    assert text(responder, "apology", "x") == "Our apology, Pat."
    # What they did not write stays the shipped one, channel variant included.
    assert text(responder, "refund", "x") == text(shipped, "refund", "x")


async def test_draft_over_the_x_limit_is_flagged(
    config: Config, store: Store, scorer: SentimentScorer
) -> None:
    tpl = config.base_dir / "tpl" / "replies"
    tpl.mkdir(parents=True)
    for name in ("apology", "delivery_delay"):
        (tpl / f"{name}.x.j2").write_text("@{{ handle }} " + "sorry " * 60)
    cfg = config.model_copy(
        update={"responder": config.responder.model_copy(update={"templates_dir": tpl.parent})}
    )
    pipeline = Pipeline(cfg, store, rules=RuleSet.load(cfg.rule_paths()), scorer=scorer)
    r = await ingest(pipeline, msg("@acme my order is late, terrible and rude staff"))
    assert r.draft_problems == 1
    (reply,) = await rows(store, Reply)
    assert reply.last_error and "too long for x" in reply.last_error


async def test_customer_text_is_never_run_as_a_template(pipeline: Pipeline, store: Store) -> None:
    hostile = "@acme {{ 7*7 }} {% for x in range(3) %}boom{% endfor %} my order is late, terrible"
    await ingest(pipeline, msg(hostile, user="h", handle="{{config}}"))
    (reply,) = await rows(store, Reply)
    assert "49" not in reply.draft_text and "boom" not in reply.draft_text


# -- escalations, ignore, quarantine ---------------------------------------------------------


async def test_legal_words_escalate_once_per_reason(pipeline: Pipeline, store: Store) -> None:
    r = await ingest(
        pipeline, msg("@acme my lawyer will hear about this, I had an allergic reaction")
    )
    assert r.escalations >= 1
    alerts = await rows(store, Alert)
    assert all(a.kind == "escalation" and a.status == "pending" for a in alerts)
    assert len({a.dedupe_key for a in alerts}) == len(alerts)
    (t,) = await rows(store, Ticket)
    assert t.priority == "urgent"


async def test_a_churn_threat_escalates_with_its_reason(pipeline: Pipeline, store: Store) -> None:
    r = await ingest(pipeline, msg("@acme third late order, I'm cancelling my subscription"))
    assert r.escalations == 1
    (alert,) = await rows(store, Alert)
    assert alert.kind == "escalation" and "Churn threat" in alert.title + str(alert.detail)
    (t,) = await rows(store, Ticket)
    assert t.intent == "churn" and t.priority == "high"


async def test_first_seen_is_when_the_customer_first_wrote(
    pipeline: Pipeline, store: Store
) -> None:
    """A backfill of old posts does not make old customers look new in reports."""
    now = utcnow()
    old = now - timedelta(days=3)
    await ingest(pipeline, msg("@acme hello", at=old + timedelta(hours=2)), msg("@acme hi", at=old))
    (c,) = await rows(store, Customer)
    assert c.first_seen_at == old
    # A later batch with an even older post moves it back; a newer one does not move it.
    await ingest(pipeline, msg("@acme years ago", at=old - timedelta(days=400)))
    await ingest(pipeline, msg("@acme today", at=now))
    (c,) = await rows(store, Customer)
    assert c.first_seen_at == old - timedelta(days=400)
    # A post dated in the future (a wrong clock) counts from when it was stored.
    await ingest(
        pipeline, msg("@acme from the future", user="u2", handle="kim", at=now + timedelta(days=30))
    )
    (kim,) = await rows(store, Customer, Customer.id != c.id)
    assert now <= kim.first_seen_at <= utcnow()


async def test_spam_is_stored_but_ignored(pipeline: Pipeline, store: Store) -> None:
    r = await ingest(
        pipeline,
        msg("FREE CRYPTO giveaway!!! claim your free BTC at https://scam.example", user="bot"),
    )
    assert r.ignored == 1 and r.tickets_opened == 0
    (m,) = await rows(store, Message)
    assert m.ignored and "spam" in m.tags
    assert await count(store, Reply) == 0


async def test_quarantined_payloads_are_kept_and_the_rest_lands(
    pipeline: Pipeline, store: Store
) -> None:
    batch = Batch(
        messages=[
            msg("@acme fine thanks"),
            msg("@acme order late, terrible", user="2", handle="b"),
        ],
        quarantined=[Quarantined(external_id="bad-1", error="missing text", raw='{"id": "bad-1"}')],
        cursor={"since_id": "42"},
    )
    r = await pipeline.ingest(batch, "src")
    assert (r.stored, r.quarantined) == (2, 1)
    (q,) = await rows(store, Quarantine)
    assert q.raw == '{"id": "bad-1"}' and q.error == "missing text" and q.source == "src"
    (state,) = await rows(store, SourceState)
    assert state.cursor == {"since_id": "42"} and state.messages_total == 2


async def test_strings_no_database_can_store_are_cleaned_at_the_contract(
    pipeline: Pipeline, store: Store
) -> None:
    # PostgreSQL refuses NUL in text and jsonb; neither database can encode a lone surrogate.
    # Both arrive in real payloads (JSON "\\u0000", "\\ud800"): cleaned, the message is kept.
    poison = InboundMessage(
        channel="webhook",
        external_id="w-\u0000-1",
        text="@acme my order \ud800 is late\u0000",
        author={"name": "Eve\u0000", "email": "eve@example.com", "handle": "e\udc80"},
        subject="Order\u0000",
        raw={"note\u0000": ["bad \u0000 byte", {"deep": "\udfff"}]},
    )
    good = [msg(f"@acme message {i}", user=f"g{i}", handle=f"g{i}") for i in range(3)]
    r = await pipeline.ingest(Batch(messages=[good[0], poison, *good[1:]], cursor={"n": 1}), "src")
    assert (r.stored, r.quarantined) == (4, 0)
    (m,) = await rows(store, Message, Message.channel == "webhook")
    assert (m.external_id, m.text, m.author_name, m.subject) == (
        "w--1",
        "@acme my order \ufffd is late",
        "Eve",
        "Order",
    )
    assert m.raw == {"note": ["bad  byte", {"deep": "\ufffd"}]}
    (state,) = await rows(store, SourceState)
    assert state.cursor == {"n": 1}


async def test_a_row_the_database_refuses_is_isolated(pipeline: Pipeline, store: Store) -> None:
    # A message built around the contract's checks (model_construct skips them) that neither
    # database can store: on SQLite the batch [good, bad] lost both, on PostgreSQL the caller
    # got the error. Now the bad one is quarantined and the rest lands.
    good = [msg(f"@acme message {i}", user=f"g{i}", handle=f"g{i}") for i in range(3)]
    ok = msg("@acme hello", user="p", handle="p")
    bad = InboundMessage.model_construct(**{**dict(ok), "subject": "lone \ud800 surrogate"})
    for batch in ([good[0], bad], [bad]):
        r = await pipeline.ingest(Batch(messages=batch, cursor={"n": len(batch)}), "src")
        assert r.stored + r.quarantined == len(batch)
    assert await count(store, Message) == 1
    qs = await rows(store, Quarantine)
    assert len(qs) == 2 and all(q.external_id == ok.external_id for q in qs)
    assert all("refused" in q.error for q in qs)
    (state,) = await rows(store, SourceState)
    assert state.cursor == {"n": 1}


async def test_huge_and_empty_texts(pipeline: Pipeline, store: Store) -> None:
    huge = msg("terrible service " * 10_000)
    empty = msg("", user="e", handle="e")
    r = await ingest(pipeline, huge, empty)
    assert r.stored == 2
    texts = sorted(len(m.text) for m in await rows(store, Message))
    assert texts[0] == 0 and texts[1] == 40_000
    assert any(m.truncated for m in await rows(store, Message))


async def test_big_batch_is_split_and_all_stored(pipeline: Pipeline, store: Store) -> None:
    many = [
        msg(f"@acme hi number {i}", user=f"u{i % 50}", handle=f"h{i % 50}") for i in range(2100)
    ]
    r = await ingest(pipeline, *many)
    assert r.stored == 2100
    assert await count(store, Customer) == 50


def _intents(ms: Sequence[Message]) -> set[str | None]:
    return {m.intent for m in ms}


# -- the scoring process --------------------------------------------------------------------


def test_text_facts_give_the_same_decisions(config: Config) -> None:
    rules = RuleSet.load(config.rule_paths())
    for m in TrafficGenerator(3).messages(600):
        for sentiment in (-0.7, 0.0, 0.8, None):
            ctx = RuleContext(
                text=m.text,
                channel=m.channel,
                source="s",
                sentiment=sentiment,
                lang="en",
                customer_tier="vip",
                customer_segment=None,
                lifetime_value=9000.0,
                customer_tags=frozenset(),
                customer_is_new=True,
                followers=m.author.followers or 0,
                has_open_ticket=False,
                local_time=T0,
                direct=m.direct,
            )
            with_facts = RuleContext(**{**_fields(ctx), "text_facts": rules.text_facts(m.text)})
            assert rules.evaluate(with_facts) == rules.evaluate(ctx), m.text


def _fields(ctx: Any) -> dict[str, Any]:
    return {name: getattr(ctx, name) for name in ctx.__dataclass_fields__}


async def test_scoring_process_gives_the_same_result(
    config: Config, store: Store, scorer: SentimentScorer
) -> None:
    messages = list(TrafficGenerator(5).messages(400))
    rules = RuleSet.load(config.rule_paths())
    pool = ScoringPool(config.brand.lexicon, rules)
    try:
        pipeline = Pipeline(config, store, rules=rules, scoring=pool)

        async def batches() -> Any:
            for i in range(0, len(messages), 150):
                yield Batch(messages=messages[i : i + 150])

        r = await pipeline.ingest_stream(batches(), "pooled")
    finally:
        pool.close()
    assert r.stored == 400
    async with store.reader() as s:
        pooled = {
            row.external_id: (row.sentiment, row.intent, tuple(row.rules_matched))
            for row in (await s.execute(sa.select(Message))).scalars()
        }
    inline = Pipeline(config, store, rules=rules, scorer=scorer)
    for m in messages:
        s = inline.scorer.score(m.text, m.lang)
        assert pooled[m.external_id][0] == s.compound
    assert len({v[1] for v in pooled.values()}) > 3  # intents came out of the rules


async def test_a_stream_that_fails_keeps_what_it_gave(
    config: Config, store: Store, scorer: SentimentScorer
) -> None:
    # A file that cannot be read on: every message of the batches before is stored, the
    # last chunk (prepared while the stream was asked for more) included; the error is told.
    messages = list(TrafficGenerator(6).messages(pipeline_mod.MAX_BATCH + 50))

    async def batches() -> Any:
        yield Batch(messages=messages)
        raise OSError("disk gone")

    pipeline = Pipeline(config, store, rules=RuleSet.load(config.rule_paths()), scorer=scorer)
    with pytest.raises(OSError, match="disk gone"):
        await pipeline.ingest_stream(batches(), "file:broken.jsonl", save_cursor=False)
    assert len(await rows(store, Message)) == len(messages)


# -- what the rules decide lands on the ticket ----------------------------------------------


async def test_rule_team_queue_and_assignee_land_on_the_ticket(
    config: Config, store: Store, scorer: SentimentScorer, tmp_path: Any
) -> None:
    pack = tmp_path / "routing.yaml"
    pack.write_text(
        """
rules:
  - name: billing
    when: {keywords: [invoice, refund]}
    then:
      - intent: billing
      - open_ticket: {team: billing, queue: refunds}
      - assign: dana
  - name: everything-else
    when: {direct: true}
    then:
      - open_ticket
""",
        encoding="utf-8",
    )
    cfg = config.model_copy(update={"rules": [pack], "default_rules": False})
    pipeline = Pipeline(cfg, store, rules=RuleSet.load(cfg.rule_paths()), scorer=scorer)
    await ingest(
        pipeline,
        msg("@acme where is my refund for invoice 7?", user="1", handle="ann"),
        msg("@acme the app is slow today", user="2", handle="bob"),
    )
    by_handle = {}
    for t in await rows(store, Ticket):
        m = (await rows(store, Message, Message.ticket_id == t.id))[0]
        by_handle[m.author_handle] = t
    billing, other = by_handle["ann"], by_handle["bob"]
    assert (billing.team, billing.queue, billing.assignee, billing.intent) == (
        "billing",
        "refunds",
        "dana",
        "billing",
    )
    assert (other.team, other.queue, other.assignee) == (None, None, None)


async def test_priority_weights_come_from_the_config(
    config: Config, store: Store, scorer: SentimentScorer
) -> None:
    text = "@acme the app keeps crashing and support is useless"
    scores = []
    for weight in (30.0, 90.0):
        cfg = Config.model_validate(
            {
                **config.model_dump(exclude={"base_dir"}),
                "base_dir": config.base_dir,
                "priority": {"weights": {"negative": weight}},
            }
        )
        pipeline = Pipeline(cfg, store, rules=RuleSet.load(cfg.rule_paths()), scorer=scorer)
        await ingest(pipeline, msg(text, user=f"w{weight}", handle=f"w{int(weight)}"))
        (t,) = await rows(store, Ticket, Ticket.id == await count(store, Ticket))
        scores.append(t.priority_score)
        assert "negative" in t.priority_reason
    # Tripling the weight of negativity raises the score by twice the first negative part.
    compound = (await rows(store, Message))[0].sentiment
    assert compound is not None and compound < 0
    assert scores[1] - scores[0] == pytest.approx(60.0 * -compound, abs=0.5)


async def test_ticket_tag_in_the_text_threads_across_channels(
    pipeline: Pipeline, store: Store
) -> None:
    await ingest(
        pipeline, msg("@acme my order is late, terrible service", email="jane@example.com")
    )
    (t,) = await rows(store, Ticket)
    r = await ingest(
        pipeline,
        msg(
            f"About ticket [#{t.id}]: still nothing arrived",
            "email",
            user=None,
            handle=None,
            email="jane@example.com",
            at=T0 + timedelta(days=2),
        ),
    )
    assert r.tickets_threaded == 1 and r.tickets_opened == 0
    assert await count(store, Ticket) == 1
    assert await count(store, Message, Message.ticket_id == t.id) == 2


async def test_a_new_topic_after_an_answer_opens_a_new_ticket(
    pipeline: Pipeline, store: Store
) -> None:
    # Every later message of a customer joined their ticket for as long as each came within
    # the window: one ticket grew with everything they ever said.
    root = msg("@acme my order is late, terrible")
    await ingest(pipeline, root)
    (t,) = await rows(store, Ticket)
    # Before any answer, a follow-up joins by the window.
    r = await ingest(pipeline, msg("@acme hello?? awful", at=T0 + timedelta(hours=1)))
    assert r.tickets_threaded == 1
    # We answer; the ticket waits for the customer.
    async with store.session() as s:
        ticket = await s.get(Ticket, t.id)
        assert ticket is not None
        ticket.first_response_at = T0 + timedelta(hours=2)
        await tickets.set_status(s, t.id, "pending", "agent", "cli", now=T0 + timedelta(hours=2))
    # A new top-level message, inside the window, about something else: a new ticket.
    r = await ingest(
        pipeline,
        msg("@acme my refund for another order failed, terrible", at=T0 + timedelta(hours=5)),
    )
    assert (r.tickets_opened, r.tickets_threaded) == (1, 0)
    # A reply to our thread still joins the first ticket.
    r = await ingest(
        pipeline,
        msg("@acme still late, awful", at=T0 + timedelta(hours=6), in_reply_to=root.external_id),
    )
    assert (r.tickets_opened, r.tickets_threaded) == (0, 1)
    first, second = await rows(store, Ticket)
    assert (first.message_count, second.message_count) == (3, 1)


async def test_a_stream_is_written_in_chunks_the_first_of_them_small() -> None:
    # The writer starts once the small first chunk is scored; every message is stored once,
    # in order, and a batch's cursor is saved with its last chunk only.
    messages = list(TrafficGenerator(9).messages(2 * pipeline_mod.MAX_BATCH + 300))
    bad = Quarantined(external_id="x", error="not JSON", raw="{")
    split = len(messages) - 300

    async def batches() -> Any:
        yield Batch(messages=messages[:split], quarantined=[bad], cursor={"page": 1})
        yield Batch(messages=messages[split:], cursor={"page": 2})

    chunks = [c async for c in pipeline_mod._chunked(batches(), save_cursor=True)]
    sizes = [len(part) for part, _, _ in chunks]
    assert sizes[0] == pipeline_mod.FIRST_CHUNK
    assert max(sizes) <= pipeline_mod.MAX_BATCH
    assert [m for part, _, _ in chunks for m in part] == messages
    assert [c for _, _, c in chunks] == [None] * (len(chunks) - 2) + [{"page": 1}, {"page": 2}]
    assert [q for _, q, _ in chunks] == [[bad]] + [[]] * (len(chunks) - 1)
    # A small batch stays whole; an empty one still carries its cursor.

    async def small() -> Any:
        yield Batch(messages=messages[:50], cursor={"page": 3})
        yield Batch(cursor={"page": 4})

    assert [(len(p), c) async for p, _, c in pipeline_mod._chunked(small(), save_cursor=True)] == [
        (50, {"page": 3}),
        (0, {"page": 4}),
    ]
