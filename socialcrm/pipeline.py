"""Ingestion: one batch in, one transaction out.

dedupe -> sentiment -> identity -> rules -> ticket -> draft -> alerts -> cursor, all in the
transaction that stores the batch, so a crash loses nothing and duplicates nothing. Database
work is done in bulk: a handful of statements per batch, not one round trip per message.
A message that cannot be processed is quarantined with its error; the rest of the batch lands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm import rollups
from socialcrm.config import Config
from socialcrm.connector import Batch, Cursor, InboundMessage, Quarantined
from socialcrm.db import Store, executemany, keys_in
from socialcrm.identity import (
    CustomerView,
    IdentityView,
    Resolver,
    handle_key,
    insert_returning_ids,
)
from socialcrm.models import Alert, Message, Quarantine, Reply, SourceState, utcnow
from socialcrm.priority import PriorityModel
from socialcrm.responder import Responder
from socialcrm.rules import Decision, RuleContext, RuleSet
from socialcrm.scoring import ScoringPool, analyse_batch
from socialcrm.sentiment import Score, SentimentScorer
from socialcrm.sla import SlaPolicy
from socialcrm.tickets import Threader, TicketView, ticket_tag

log = logging.getLogger(__name__)

#: Largest number of messages stored in one transaction; bigger batches are split.
MAX_BATCH = 1000


@dataclass(slots=True)
class IngestResult:
    """What one call to ``ingest`` did."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    ignored: int = 0
    tickets_opened: int = 0
    tickets_threaded: int = 0
    tickets_reopened: int = 0
    drafts: int = 0
    draft_problems: int = 0
    escalations: int = 0
    new_customers: int = 0

    def add(self, other: IngestResult) -> None:
        """Add another result's counts to this one."""
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _Scored(NamedTuple):
    msg: InboundMessage
    score: Score
    #: The rules' text conditions, answered by the scoring process (None: not answered).
    facts: int | None


@dataclass(slots=True)
class _Prepared:
    """A chunk of a batch, deduped and scored, waiting for its transaction."""

    received: int
    duplicates: int
    cursor: Cursor | None
    scored: list[_Scored] = field(default_factory=list)
    bad: list[Quarantined] = field(default_factory=list)


@dataclass(slots=True)
class _Planned:
    """One message on its way through the batch."""

    msg: InboundMessage
    score: Score
    ident: IdentityView
    decision: Decision
    ticket: TicketView | None
    priority: str
    priority_score: float
    row: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Turns batches of inbound messages into stored messages, tickets, drafts and alerts."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        rules: RuleSet,
        scorer: SentimentScorer | None = None,
        responder: Responder | None = None,
        scoring: ScoringPool | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.store = store
        self.rules = rules
        self.scorer = scorer or SentimentScorer(config.brand.lexicon)
        #: Worker processes for sentiment; without them scoring runs in a thread.
        self.scoring = scoring
        self.responder = responder or Responder(
            config.responder, config.brand.name, config.base_dir
        )
        self.priority = PriorityModel(config.priority)
        self.sla = SlaPolicy(config.sla) if config.sla.enabled else None
        self.tz = ZoneInfo(config.brand.timezone)
        self.clock = clock
        self.brand_handles = {h.lower().lstrip("@") for h in config.brand.handles}

    async def ingest(self, batch: Batch, source: str, *, save_cursor: bool = True) -> IngestResult:
        """Store one batch (and its cursor); a large batch is stored in several transactions."""
        return await self.ingest_stream(_one(batch), source, save_cursor=save_cursor)

    async def ingest_stream(
        self, batches: AsyncIterator[Batch], source: str, *, save_cursor: bool = True
    ) -> IngestResult:
        """Store batches in order, scoring the next one while the current one is written."""
        result = IngestResult()
        pending: asyncio.Task[_Prepared] | None = None
        chunks = _chunked(batches, save_cursor)
        try:
            async for chunk in chunks:
                nxt = asyncio.create_task(self._prepare(*chunk))
                if pending is not None:
                    result.add(await self._commit(await pending, source))
                pending = nxt
            if pending is not None:
                result.add(await self._commit(await pending, source))
                pending = None
        finally:
            if pending is not None:
                pending.cancel()
        return result

    async def _prepare(
        self,
        messages: Sequence[InboundMessage],
        quarantined: Sequence[Quarantined],
        cursor: Cursor | None,
    ) -> _Prepared:
        """The work that needs no write lock: in-batch dedupe and sentiment.

        Whether a message is stored already is asked once, in the write transaction: asking
        here too would cost the event loop a query per chunk to save the scoring process
        work on repeats, which are rare outside a file ingested twice.
        """
        new = _unique(messages)
        prep = _Prepared(received=len(messages), duplicates=len(messages) - len(new), cursor=cursor)
        prep.bad.extend(quarantined)
        items = [(m.text, m.lang) for m in new]
        if self.scoring is not None:
            found = await self.scoring.analyse(items)
            same_rules = self.scoring.fingerprint == self.rules.fingerprint
        else:
            found = await asyncio.to_thread(analyse_batch, self.scorer, None, items)
            same_rules = False
        for m, (score, facts) in zip(new, found, strict=True):
            if isinstance(score, Score):
                prep.scored.append(_Scored(m, score, facts if same_rules else None))
            else:
                log.error("cannot score %s %s: %s", m.channel, m.external_id, score)
                prep.bad.append(
                    Quarantined(external_id=m.external_id, error=score, raw=m.model_dump_json())
                )
        return prep

    async def _commit(self, prep: _Prepared, source: str) -> IngestResult:
        """Write one prepared chunk in one transaction; a row the database refuses is isolated."""
        result = IngestResult(received=prep.received, duplicates=prep.duplicates)
        try:
            async with self.store.session() as session:
                await self.store.lock_keys(session, _ingest_keys(s.msg for s in prep.scored))
                await self._store(session, prep.scored, prep.bad, source, prep.cursor, result)
            return result
        except sa.exc.DBAPIError as err:
            if isinstance(err, sa.exc.OperationalError) or len(prep.scored) <= 1:
                raise
            log.warning("batch from %s refused (%s); storing messages one by one", source, err.orig)
        result = IngestResult(received=prep.received, duplicates=prep.duplicates)
        for j, item in enumerate(prep.scored):
            first, last = j == 0, j == len(prep.scored) - 1
            bad = prep.bad if first else []
            cursor = prep.cursor if last else None
            one = IngestResult()
            try:
                async with self.store.session() as session:
                    await self.store.lock_keys(session, _ingest_keys([item.msg]))
                    await self._store(session, [item], bad, source, cursor, one)
            except sa.exc.DBAPIError as row_err:
                if isinstance(row_err, sa.exc.OperationalError):
                    raise
                async with self.store.session() as session:
                    refused = f"database refused it: {row_err.orig}"
                    session.add_all(_quarantine_row(source, q, q.error) for q in bad)
                    session.add(_quarantine_row(source, item.msg, refused))
                    if cursor is not None:
                        await _save_cursor(session, source, cursor, 0, self.clock())
                one = IngestResult(quarantined=1 + len(bad))
            result.add(one)
        return result

    async def _store(
        self,
        session: AsyncSession,
        scored: Sequence[_Scored],
        bad: Sequence[Quarantined],
        source: str,
        cursor: Cursor | None,
        result: IngestResult,
    ) -> None:
        now = self.clock()
        # Under the keys' locks, so no other writer can store the same message in between.
        existing = await _stored_keys(session, [s.msg for s in scored])
        if existing:
            result.duplicates += len(existing)
            scored = [s for s in scored if (s.msg.channel, s.msg.external_id) not in existing]
        msgs = [s.msg for s in scored]

        resolver = Resolver(session, now)
        await resolver.load(msgs)
        idents = [resolver.resolve(m) for m in msgs]
        known_ids = {i.customer.id for i in idents if i.customer.id is not None}
        # Their tickets and drafts: a batch on another daemon for the same customers waits.
        await self.store.lock_keys(session, (f"customer:{c}" for c in known_ids))
        threader = Threader(session, self.config.tickets, self.sla)
        await threader.load(msgs, known_ids)

        planned: list[_Planned] = []
        for (m, score, facts), ident in zip(scored, idents, strict=True):
            try:
                planned.append(self._plan(now, m, score, facts, ident, threader, source, result))
            except Exception as err:  # one message's failure is quarantined, not fatal
                log.exception("cannot process %s %s", m.channel, m.external_id)
                bad = [
                    *bad,
                    Quarantined(
                        external_id=m.external_id, error=repr(err), raw=m.model_dump_json()
                    ),
                ]

        result.new_customers = len({id(i.customer) for i in idents if i.customer.id is None})
        await resolver.flush()
        await threader.flush(now)

        rows = []
        for p in planned:
            p.row["customer_id"] = p.ident.customer.id
            p.row["identity_id"] = p.ident.id
            p.row["ticket_id"] = p.ticket.id if p.ticket is not None else None
            rows.append(p.row)
        ids = await insert_returning_ids(session, Message, rows)
        await rollups.add(session, rows)
        await self._drafts_and_alerts(session, planned, ids, source, now, result)

        if bad:
            session.add_all(_quarantine_row(source, q, q.error) for q in bad)
            result.quarantined += len(bad)
        result.stored += len(planned)
        if cursor is not None or planned:
            await _save_cursor(session, source, cursor, len(planned), now)

    def _plan(
        self,
        now: datetime,
        m: InboundMessage,
        score: Score,
        facts: int | None,
        ident: IdentityView,
        threader: Threader,
        source: str,
        result: IngestResult,
    ) -> _Planned:
        cust = ident.customer
        ticket = threader.find(m, cust.id, cust)
        followers = max(m.author.followers or 0, ident.followers)
        ctx = RuleContext(
            text=m.text,
            channel=m.channel,
            source=source,
            sentiment=score.compound,
            lang=score.lang,
            customer_tier=cust.tier,
            customer_segment=cust.segment,
            lifetime_value=float(cust.lifetime_value),
            customer_tags=frozenset(cust.tags),
            customer_is_new=cust.is_new,
            followers=followers,
            has_open_ticket=ticket is not None and ticket.status in ("open", "pending"),
            local_time=m.created_at.astimezone(self.tz),
            direct=m.direct,
            text_facts=facts,
        )
        d = self.rules.evaluate(ctx)
        # Later messages from this customer in the same batch are no longer "new".
        cust.is_new = False
        prio = self.priority.score(
            sentiment=score.compound,
            lifetime_value=cust.lifetime_value,
            tier=cust.tier,
            followers=followers,
            rule_priority=d.priority,
            escalated=bool(d.escalations),
        )
        if d.ignore:
            result.ignored += 1
            ticket = None
        elif ticket is not None:
            result.tickets_threaded += 1
        elif d.open_ticket:
            ticket = threader.open(m, source, cust.id, cust)
            result.tickets_opened += 1
        if ticket is not None:
            updates: dict[str, Any] = {}
            if ticket.new and d.intent:
                updates["intent"] = d.intent
            for key, value in (("team", d.team), ("queue", d.queue), ("assignee", d.assignee)):
                if value and (ticket.new or key in ("team", "queue")):
                    updates[key] = value

            def reason() -> str:
                text = f"{prio.reason}; {d.explain()}" if d.matched else prio.reason
                return text[:2000]

            if threader.touch(
                ticket, m, priority=prio.label, score=prio.score, reason=reason, updates=updates
            ):
                result.tickets_reopened += 1
        threader.note_message(m, ticket)
        row = {
            "channel": m.channel,
            "source": source,
            "external_id": m.external_id,
            "direction": "inbound",
            "author_handle": m.author.handle or m.author.email,
            "author_name": m.author.name,
            "followers": followers,
            "text": m.text,
            "subject": m.subject,
            "lang": score.lang,
            "scored": score.scored,
            "sentiment": score.compound,
            "sentiment_pos": score.pos,
            "sentiment_neu": score.neu,
            "sentiment_neg": score.neg,
            "intent": d.intent,
            "priority": prio.label,
            "tags": d.tags,
            "rules_matched": d.matched,
            "ignored": d.ignore,
            "direct": m.direct,
            "conversation_id": m.conversation_id,
            "in_reply_to": m.in_reply_to,
            "references": m.references,
            "url": m.url,
            "truncated": m.truncated,
            "created_at": m.created_at,
            "received_at": now,
            "raw": m.raw,
        }
        return _Planned(m, score, ident, d, ticket, prio.label, prio.score, row)

    async def _drafts_and_alerts(
        self,
        session: AsyncSession,
        planned: Sequence[_Planned],
        ids: Sequence[int],
        source: str,
        now: datetime,
        result: IngestResult,
    ) -> None:
        replies: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        # One draft waits per ticket: a follow-up is shown with it, not drafted again.
        waiting = await _tickets_with_drafts(
            session, {p.ticket.id for p in planned if p.ticket is not None and p.ticket.id}
        )
        for p, msg_id in zip(planned, ids, strict=True):
            d, cust = p.decision, p.ident.customer
            if d.ignore:
                continue
            tid = p.ticket.id if p.ticket is not None else None
            if (
                d.draft_template
                and not cust.do_not_contact
                and self._can_reply(p.msg)
                and (tid is None or tid not in waiting)
            ):
                if tid is not None:
                    waiting.add(tid)
                draft = self.responder.draft(
                    d.draft_template, p.msg.channel, _draft_context(p, cust)
                )
                if draft.text:
                    replies.append(
                        {
                            "ticket_id": p.ticket.id if p.ticket else None,
                            "message_id": msg_id,
                            "customer_id": cust.id,
                            "channel": p.msg.channel,
                            "source": source,
                            "template": draft.template,
                            "draft_text": draft.text,
                            "status": "draft",
                            "priority_score": p.priority_score,
                            "created_at": now,
                            "last_error": draft.problem,
                            "attempts": 0,
                            "edited": False,
                        }
                    )
                    result.drafts += 1
                if draft.problem:
                    result.draft_problems += 1
                    log.warning("draft for message %s: %s", msg_id, draft.problem)
            for reason in d.escalations:
                target = f"ticket:{p.ticket.id}" if p.ticket else f"message:{msg_id}"
                alerts.append(
                    {
                        "kind": "escalation",
                        "dedupe_key": f"escalation:{target}:{reason}"[:500],
                        "severity": "critical" if p.priority == "urgent" else "warning",
                        "title": reason[:500],
                        "detail": {
                            "text": p.msg.text[:1000],
                            "channel": p.msg.channel,
                            "author": p.msg.author.handle or p.msg.author.email,
                            "url": p.msg.url,
                            "priority": p.priority,
                            "rules": d.matched,
                        },
                        "ticket_id": p.ticket.id if p.ticket else None,
                        "customer_id": cust.id,
                        "message_id": msg_id,
                        "status": "pending",
                        "attempts": 0,
                        "created_at": now,
                    }
                )
                result.escalations += 1
        if replies:
            await executemany(session, sa.insert(Reply.__table__), replies)
        if alerts:
            await executemany(session, sa.insert(Alert.__table__), alerts)

    def _can_reply(self, m: InboundMessage) -> bool:
        if self.config.responder.channel_limits.get(m.channel, 1) == 0:
            return False
        # Never draft a reply to ourselves.
        return not (m.author.handle and m.author.handle.lower() in self.brand_handles)


def _draft_context(p: _Planned, cust: CustomerView) -> dict[str, Any]:
    m = p.msg
    name = (cust.name or m.author.name or m.author.handle or "").strip()
    first = name.split()[0] if name else "there"
    if "@" in first and m.channel != "email":
        first = first.split("@", 1)[0]
    tid = p.ticket.id if p.ticket else None
    return {
        "first_name": first,
        "name": name or None,
        "handle": m.author.handle or "",
        "ticket_id": tid,
        "ticket_tag": ticket_tag(tid) if tid else "",
        "subject": m.subject or "",
        "customer_tier": cust.tier,
        "message_text": m.text,
    }


async def _one(batch: Batch) -> AsyncIterator[Batch]:
    yield batch


async def _chunked(
    batches: AsyncIterator[Batch], save_cursor: bool
) -> AsyncIterator[tuple[list[InboundMessage], list[Quarantined], Cursor | None]]:
    """Split batches into chunks of at most MAX_BATCH; a batch's cursor rides on its last chunk."""
    async for batch in batches:
        msgs = batch.messages
        parts = [msgs[i : i + MAX_BATCH] for i in range(0, len(msgs), MAX_BATCH)] or [[]]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            yield (
                part,
                batch.quarantined if i == 0 else [],
                batch.cursor if (last and save_cursor) else None,
            )


def _ingest_keys(messages: Iterable[InboundMessage]) -> Iterator[str]:
    """What a batch's transaction must have to itself, as advisory lock keys: each message
    (stored once), its author's identity keys (one new customer per person), and its thread
    (one ticket per conversation). Batches that share none of these are written side by side."""
    for m in messages:
        ch = m.channel
        yield f"message:{ch}:{m.external_id}"
        yield f"thread:{ch}:{m.external_id}"
        for ref in (m.in_reply_to, m.conversation_id, *m.references):
            if ref:
                yield f"thread:{ch}:{ref}"
        a = m.author
        if a.user_id:
            yield f"user:{ch}:{a.user_id}"
        if a.email:
            yield f"email:{a.email}"
        if (k := handle_key(a.handle)) is not None:
            yield f"handle:{ch}:{k}"


def _unique(messages: Sequence[InboundMessage]) -> list[InboundMessage]:
    """Drop repeats within a batch; the first one wins."""
    seen: set[tuple[str, str]] = set()
    out = []
    for m in messages:
        key = (m.channel, m.external_id)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


async def _tickets_with_drafts(session: AsyncSession, ticket_ids: set[int]) -> set[int]:
    if not ticket_ids:
        return set()
    dialect = session.get_bind().dialect.name
    q = sa.select(Reply.ticket_id).where(
        Reply.status == "draft",
        keys_in(dialect, [Reply.ticket_id], list(ticket_ids)),  # type: ignore[list-item]
    )
    return {r[0] for r in (await session.execute(q)).all()}


async def _stored_keys(
    session: AsyncSession, msgs: Sequence[InboundMessage]
) -> set[tuple[str, str]]:
    """The (channel, external_id) pairs of these messages that are stored already."""
    if not msgs:
        return set()
    dialect = session.get_bind().dialect.name
    keys = [(m.channel, m.external_id) for m in msgs]
    q = sa.select(Message.channel, Message.external_id).where(
        keys_in(dialect, [Message.channel, Message.external_id], keys)  # type: ignore[list-item]
    )
    return {(r[0], r[1]) for r in (await session.execute(q)).all()}


def _quarantine_row(source: str, item: Quarantined | InboundMessage, error: str) -> Quarantine:
    if isinstance(item, InboundMessage):
        return Quarantine(
            source=source,
            channel=item.channel,
            external_id=item.external_id,
            error=error,
            raw=item.model_dump_json(),
        )
    return Quarantine(source=source, external_id=item.external_id, error=error, raw=item.raw)


async def _save_cursor(
    session: AsyncSession, source: str, cursor: Cursor | None, stored: int, now: datetime
) -> None:
    state = await session.get(SourceState, source, with_for_update=True)
    if state is None:
        state = SourceState(source=source)
        session.add(state)
    if cursor is not None:
        state.cursor = cursor
    state.messages_total += stored
    state.updated_at = now
