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
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm import rollups, starter, triage
from socialcrm.alerts import raise_alert
from socialcrm.config import Config
from socialcrm.connector import Batch, Cursor, InboundMessage, Quarantined, clean_text
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
from socialcrm.responder import ReplyChecker, Responder, blocking_reason, stored_issues
from socialcrm.rules import Decision, RuleContext, RuleSet
from socialcrm.scoring import Analysis, ScoringPool, analyse_batch
from socialcrm.sentiment import Score, SentimentScorer
from socialcrm.sla import SlaPolicy
from socialcrm.tickets import Threader, TicketView, ticket_tag
from socialcrm.triage import Verdict

log = logging.getLogger(__name__)

#: Largest number of messages stored in one transaction; bigger batches are split.
MAX_BATCH = 1000
#: The first chunk of a stream is this small: its scoring is all the writer waits for before
#: it starts, and while it is written the worker scores the next, full-sized chunk.
FIRST_CHUNK = 200


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
    #: The learned triage model's reading (None: no model in use).
    verdict: Verdict | None = None
    #: The rules whose conditions ``facts`` answers (rules reloaded meanwhile read the text).
    rules: RuleSet | None = None


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


#: Set while a backfill is ingested (``ingest --backfill``, a source's first poll).
_BACKFILL: ContextVar[bool] = ContextVar("socialcrm_backfill", default=False)


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
        self.scorer = scorer or SentimentScorer.for_brand(config.brand)
        #: Worker processes for sentiment; without them scoring runs in a thread.
        self.scoring = scoring
        self.responder = responder or Responder(
            config.responder, config.brand.name, config.base_dir
        )
        self.checker = ReplyChecker(config.sources, self.responder)
        self.priority = PriorityModel(config.priority)
        self.sla = SlaPolicy(config.sla) if config.sla.enabled else None
        self.tz = ZoneInfo(config.brand.timezone)
        self.clock = clock
        self.brand_handles = {h.lower().lstrip("@") for h in config.brand.handles}
        #: The triage model used when scoring runs in a thread (the worker holds its own).
        self.triage_model: triage.Model | None = None
        #: The chance of needing us from which a model keeps a ticket (``steer``), by model
        #: version: a chunk read by the previous model while a new one was taken up is
        #: steered with the threshold of the model that read it.
        self._ticket_at: dict[int, float] = {}
        self._triage_checked_at: datetime | None = None
        #: One look for a new model at a time: the next chunk, prepared while this one is
        #: taken up, waits for it rather than being read with the model it replaces.
        self._triage_lock = asyncio.Lock()

    @property
    def triage_ticket_at(self) -> float:
        """The chance of needing us from which the model in use keeps a ticket."""
        model = self.triage_model
        if model is None:
            return triage.FALLBACK_TICKET_AT
        return self._ticket_at.get(model.version, triage.FALLBACK_TICKET_AT)

    def use_rules(self, rules: RuleSet, responder: Responder) -> None:
        """Rules and reply templates loaded anew (``socialcrm run`` on SIGHUP): from the next
        message planned on; a chunk whose text facts were worked out for the old rules has
        its texts read by the new ones."""
        self.rules = rules
        self.responder = responder
        self.checker = ReplyChecker(self.config.sources, responder)

    async def refresh_triage(self, force: bool = False) -> int | None:
        """Take up the newest stored triage model (asked at most every ``check_every``)."""
        async with self._triage_lock:
            return await self._refresh_triage(force)

    async def _refresh_triage(self, force: bool) -> int | None:
        cfg = self.config.triage
        now = self.clock()
        if not cfg.enabled:
            return None
        if (
            not force
            and self._triage_checked_at is not None
            and now - self._triage_checked_at < cfg.check_every
        ):
            return self._triage_version()
        self._triage_checked_at = now
        async with self.store.reader() as s:
            newest = await triage.newest_version(s)
            if newest is None or newest == self._triage_version():
                return newest
            row = await triage.newest(s)
        if row is None:
            return None
        try:
            model = await asyncio.to_thread(triage.load_row, row)
        except triage.TriageError:
            log.exception("triage model %s refused; the rules decide alone", row.id)
            return self._triage_version()
        assert row.id is not None
        if self.scoring is not None:
            self.scoring.use_model(row.payload, row.digest, row.id)
        self.triage_model = model
        # Newest first, and the few before it, for chunks they read while this one came in.
        kept = {row.id: cfg.threshold(row.scores).at}
        kept.update(list(self._ticket_at.items())[:3])
        self._ticket_at = kept
        log.info(
            "triage model %s in use; it keeps a ticket from a chance of %.2f that a message "
            "needs us",
            row.id,
            self.triage_ticket_at,
        )
        return row.id

    def _analyse_here(self, items: list[tuple[str, str | None]], rules: RuleSet) -> list[Analysis]:
        """The text work in this process (run in a thread: loading the starter takes time)."""
        model = self.triage_model
        if model is None and self.config.triage.use_starter:
            model = starter.model()
        return analyse_batch(self.scorer, rules, items, model)

    def _triage_version(self) -> int | None:
        return self.triage_model.version if self.triage_model is not None else None

    async def ingest(
        self, batch: Batch, source: str, *, save_cursor: bool = True, backfill: bool = False
    ) -> IngestResult:
        """Store one batch (and its cursor); a large batch is stored in several transactions.

        ``backfill``: every message is history (no drafts, no alerts of its own), whatever its
        age; without it only messages older than ``backfill_before`` are.
        """
        return await self.ingest_stream(
            _one(batch), source, save_cursor=save_cursor, backfill=backfill
        )

    async def ingest_stream(
        self,
        batches: AsyncIterator[Batch],
        source: str,
        *,
        save_cursor: bool = True,
        backfill: bool = False,
    ) -> IngestResult:
        """Store batches in order, scoring the next one while the current one is written."""
        token = _BACKFILL.set(backfill)
        try:
            return await self._ingest_stream(batches, source, save_cursor)
        finally:
            _BACKFILL.reset(token)

    async def _ingest_stream(
        self, batches: AsyncIterator[Batch], source: str, save_cursor: bool
    ) -> IngestResult:
        result = IngestResult()
        pending: asyncio.Task[_Prepared] | None = None
        chunks = _chunked(batches, save_cursor)
        try:
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except Exception:
                    # The stream failed (a file that cannot be read on): what it gave is
                    # stored before the error is raised.
                    if pending is not None:
                        await self._commit(await pending, source)
                        pending = None
                    raise
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
        if self.config.triage.enabled:
            await self.refresh_triage()
        # The rules the facts are for, taken before the work is handed out: rules reloaded
        # while it runs number their conditions otherwise.
        rules = self.rules
        if self.scoring is not None:
            fingerprint = self.scoring.fingerprint
            found = await self.scoring.analyse(items)
            same_rules = fingerprint == rules.fingerprint
        else:
            found = await asyncio.to_thread(self._analyse_here, items, rules)
            same_rules = True
        use_starter = self.config.triage.use_starter
        for m, (score, facts, read) in zip(new, found, strict=True):
            # A worker started with the starter model, but this config does without it.
            verdict = (
                None
                if read is not None and starter.is_starter(read.version) and not use_starter
                else read
            )
            if isinstance(score, Score):
                prep.scored.append(_Scored(m, score, facts if same_rules else None, verdict, rules))
            else:
                log.error("cannot score %s %s: %s", m.channel, m.external_id, score)
                prep.bad.append(Quarantined(external_id=m.external_id, error=score, raw=_dump(m)))
        return prep

    async def _commit(self, prep: _Prepared, source: str) -> IngestResult:
        """Write one prepared chunk in one transaction; a row the database refuses is isolated."""
        result = IngestResult(received=prep.received, duplicates=prep.duplicates)
        try:
            async with self.store.session() as session:
                await self.store.lock_keys(session, _ingest_keys(s.msg for s in prep.scored))
                await self._store(session, prep.scored, prep.bad, source, prep.cursor, result)
            return result
        except Exception as err:  # whatever refused the batch, isolate the message it was
            if isinstance(err, sa.exc.OperationalError) or not prep.scored:
                raise
            log.warning(
                "batch from %s refused (%s); storing messages one by one", source, _why(err)
            )
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
            except Exception as row_err:  # this message alone: quarantined, the rest goes on
                if isinstance(row_err, sa.exc.OperationalError):
                    raise
                log.warning("cannot store %s from %s: %s", item.msg.external_id, source, row_err)
                async with self.store.session() as session:
                    refused = f"database refused it: {_why(row_err)}"
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
        scored, repeats = await _distinct(session, scored)
        result.duplicates += len(repeats)
        await _revise(session, [s.msg for s in repeats])
        # A deletion of a message never stored has nothing to mark.
        scored = [s for s in scored if not _is_deletion(s.msg)]
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
        # One reading of the rules and the templates they draft with, for the whole chunk: a
        # reload between planning and drafting does not draft old decisions with new templates.
        rules, responder, checker = self.rules, self.responder, self.checker
        for (m, score, facts, verdict, facts_for), ident in zip(scored, idents, strict=True):
            # Facts worked out for rules reloaded since: the rules read the text themselves.
            known = facts if facts_for is rules else None
            try:
                planned.append(
                    self._plan(now, m, score, known, ident, threader, source, result, verdict)
                )
            except Exception as err:  # one message's failure is quarantined, not fatal
                log.exception("cannot process %s %s", m.channel, m.external_id)
                bad = [
                    *bad,
                    Quarantined(external_id=m.external_id, error=repr(err), raw=_dump(m)),
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
        await self._drafts_and_alerts(
            session, planned, ids, source, now, result, responder, checker
        )

        if bad:
            # Counted either way (it is in quarantine), kept once.
            fresh = await _not_quarantined(session, source, bad)
            session.add_all(_quarantine_row(source, q, q.error) for q in fresh)
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
        verdict: Verdict | None = None,
    ) -> _Planned:
        cust = ident.customer
        ticket = threader.find(m, cust.id, cust)
        followers = max(m.author.followers or 0, ident.followers)
        # The team's model's reading: the rules may test it and it steers. The starter's
        # reading is only stored, for the reports.
        team = None if verdict is None or starter.is_starter(verdict.version) else verdict
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
            **triage.reading(team),
        )
        d = self.rules.evaluate(ctx)
        if team is not None:
            # The team's model, where it is sure, decides what the words left open; what it
            # is unsure of goes to a person rather than nowhere.
            cfg = self.config.triage
            ticket_at = self._ticket_at.get(team.version)
            if ticket_at is None:  # read by a model taken up long ago: the one in use now
                ticket_at = self.triage_ticket_at
            triage.steer(d, team, cfg.min_confidence, ticket_at)
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
            for key, value in (("team", d.team), ("queue", d.queue), ("assignee", d.assignee)):
                if value and (ticket.new or key in ("team", "queue")):
                    updates[key] = value

            def reason() -> str:
                # The first line is the score; the rule trace follows, one rule a line.
                text = f"{prio.reason}\n{d.explain()}" if d.trail else prio.reason
                return text[:2000]

            if threader.touch(
                ticket,
                m,
                priority=prio.label,
                score=prio.score,
                reason=reason,
                updates=updates,
                intent=d.intent,
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
            "triage_class": verdict.sentiment if verdict else None,
            "triage_confidence": verdict.confidence if verdict else None,
            "needs_reply": verdict.needs_reply if verdict else None,
            "needs_reply_confidence": verdict.reply_confidence if verdict else None,
            "triage_version": verdict.version if verdict else None,
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
        responder: Responder,
        checker: ReplyChecker,
    ) -> None:
        replies: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        old_alerts: list[dict[str, Any]] = []
        # History (a backfill, or older than backfill_before) is stored and counted but asks
        # nothing of anyone: no draft, no approval card, no alert of its own.
        horizon = self.config.backfill_before
        backfill = _BACKFILL.get()
        old_before = now - horizon if horizon is not None else None
        # One draft waits per ticket: a follow-up is shown with it, not drafted again.
        waiting = await _tickets_with_drafts(
            session, {p.ticket.id for p in planned if p.ticket is not None and p.ticket.id}
        )
        for p, msg_id in zip(planned, ids, strict=True):
            d, cust = p.decision, p.ident.customer
            if d.ignore:
                continue
            tid = p.ticket.id if p.ticket is not None else None
            old = backfill or (old_before is not None and p.msg.created_at < old_before)
            if (
                not old
                and d.draft_template
                and not cust.do_not_contact
                and self._can_reply(p.msg)
                and (tid is None or tid not in waiting)
            ):
                if tid is not None:
                    waiting.add(tid)
                draft = responder.draft(d.draft_template, p.msg.channel, _draft_context(p, cust))
                issues = checker.draft_issues(source, p.msg, draft.text)
                problem = draft.problem if not draft.text else blocking_reason(issues)
                # A template that failed still leaves an (empty) draft, flagged for a person.
                if draft.text or draft.problem:
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
                            "last_error": problem,
                            "issues": stored_issues(issues),
                            "attempts": 0,
                            "edited": False,
                        }
                    )
                    result.drafts += 1
                if problem:
                    result.draft_problems += 1
                    log.warning("draft for message %s: %s", msg_id, problem)
            for reason in d.escalations:
                target = f"ticket:{p.ticket.id}" if p.ticket else f"message:{msg_id}"
                (old_alerts if old else alerts).append(
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
        group_over = self.config.alerts.group_over
        if old_alerts:
            await self._group(session, old_alerts, source, now, history=True)
        if alerts and group_over is not None and len(alerts) > group_over:
            await self._group(session, alerts, source, now, history=False)
        if alerts or old_alerts:
            await executemany(session, sa.insert(Alert.__table__), [*alerts, *old_alerts])

    async def _group(
        self,
        session: AsyncSession,
        rows: list[dict[str, Any]],
        source: str,
        now: datetime,
        *,
        history: bool,
    ) -> None:
        """Escalations that come as one alert listing them (past ``alerts.group_over`` in one
        batch, or from history: at most one such alert per source within the cooldown); each
        row is kept ``grouped``, never sent itself."""
        n = len(rows)
        if history:
            key = f"escalation:history:{source}"
            title = f"{n} escalation(s) in old messages from {source}: kept, not sent one by one"
            cooldown = self.config.alerts.cooldown_for("escalation")
        else:
            key = f"escalation:group:{source}:{now.isoformat()}"
            title = f"{n} escalations at once from {source}"
            cooldown = None
        reasons = sorted({r["title"] for r in rows})
        group = await raise_alert(
            session,
            "escalation",
            key,
            title,
            {
                "text": "; ".join(reasons)[:1000],
                "channel": rows[0]["detail"].get("channel"),
                "count": n,
                "tickets": sorted({r["ticket_id"] for r in rows if r["ticket_id"]})[:50],
                "rules": sorted({rule for r in rows for rule in r["detail"].get("rules", [])}),
                "history": history,
            },
            "critical" if any(r["severity"] == "critical" for r in rows) else "warning",
            cooldown=cooldown,
            now=now,
        )
        for r in rows:
            r["status"] = "grouped"
            if group is not None:
                r["detail"] = {**r["detail"], "grouped_in": group.id}

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
    """Split batches into chunks of at most MAX_BATCH, the stream's first at most FIRST_CHUNK;
    a batch's cursor rides on its last chunk."""
    first = True
    async for batch in batches:
        msgs = batch.messages
        head = FIRST_CHUNK if first and len(msgs) > 2 * FIRST_CHUNK else 0
        first = False
        parts = [msgs[:head]] if head else []
        parts += [msgs[i : i + MAX_BATCH] for i in range(head, len(msgs), MAX_BATCH)]
        parts = parts or [[]]
        for i, part in enumerate(parts):
            yield (
                part,
                batch.quarantined if i == 0 else [],
                batch.cursor if (i == len(parts) - 1 and save_cursor) else None,
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
    """Drop repeats within a batch (same id and, where known, same content); the first wins."""
    seen: set[tuple[str, str, str | None]] = set()
    out = []
    for m in messages:
        key = (m.channel, m.external_id, _digest(m))
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


async def _tickets_with_drafts(session: AsyncSession, ticket_ids: set[int]) -> set[int]:
    if not ticket_ids:
        return set()
    dialect = session.get_bind().dialect.name
    # Plain columns: the select runs on the Core path, cheaper than the ORM's.
    r = Reply.__table__.c  # type: ignore[attr-defined]
    q = sa.select(r.ticket_id).where(
        r.status == "draft", keys_in(dialect, [r.ticket_id], list(ticket_ids))
    )
    return {r[0] for r in (await session.execute(q)).all()}


async def _revise(session: AsyncSession, msgs: Sequence[InboundMessage]) -> None:
    """Edits and deletions of stored messages: a connector sends the message again with the
    same id, marked ``edited`` (X) or with a new ``raw["edited_at"]`` (Mastodon) and the new
    text, or with ``raw["deleted"]``. The stored message follows; no second message, ticket or
    draft is made."""
    for m in msgs:
        if not (m.edited or m.raw.get("edited_at") or _is_deletion(m)):
            continue
        row = (
            await session.execute(
                sa.select(Message).where(
                    Message.channel == m.channel, Message.external_id == m.external_id
                )
            )
        ).scalar_one()
        if _is_deletion(m):
            if not row.raw.get("deleted"):
                row.raw = {**row.raw, "deleted": True}  # the words stay on record
        elif row.text != m.text or row.raw.get("edited_at") != m.raw.get("edited_at"):
            row.text, row.raw = m.text, m.raw


def _is_deletion(m: InboundMessage) -> bool:
    """A connector's word that a message was deleted: no text, ``raw["deleted"]`` true."""
    return m.raw.get("deleted") is True and not m.text


async def _not_quarantined(
    session: AsyncSession, source: str, bad: Sequence[Quarantined]
) -> list[Quarantined]:
    """The payloads not already in this source's quarantine (a mailbox read again after a
    UIDVALIDITY change hands over the same broken mails)."""
    fresh: list[Quarantined] = []
    seen: set[str] = set()
    for q in bad:
        if q.raw in seen:
            continue
        seen.add(q.raw)
        found = await session.execute(
            sa.select(Quarantine.id)
            .where(Quarantine.source == source, Quarantine.raw == q.raw)  # type: ignore[arg-type]
            .limit(1)
        )
        if found.first() is None:
            fresh.append(q)
    return fresh


def _digest(m: InboundMessage) -> str | None:
    """The content digest a connector put in the raw payload (e-mail), if any."""
    found = m.raw.get("content_digest")
    return found if isinstance(found, str) and found else None


def _alternate_id(m: InboundMessage, digest: str) -> str:
    """The id of a message whose platform id was already taken by different content."""
    return f"{m.external_id}#{digest[:16]}"


async def _distinct(
    session: AsyncSession, scored: Sequence[_Scored]
) -> tuple[list[_Scored], list[_Scored]]:
    """The messages that are not stored yet, and the repeats (an edit comes as a repeat).

    Same id, same content (or a content unknown on either side): a repeat. Same id, other
    content (mailers and forwarders that reuse a Message-ID): a different message, stored
    under its id plus a piece of its content digest.
    """
    keys: list[tuple[str, str]] = []
    for s in scored:
        keys.append((s.msg.channel, s.msg.external_id))
        if (d := _digest(s.msg)) is not None:
            keys.append((s.msg.channel, _alternate_id(s.msg, d)))
    taken = await _stored_keys(session, keys)
    out: list[_Scored] = []
    repeats: list[_Scored] = []
    for item in scored:
        m, d = item.msg, _digest(item.msg)
        key = (m.channel, m.external_id)
        if key in taken:
            known = taken[key]
            if d is None or known is None or known == d:
                repeats.append(item)
                continue
            key = (m.channel, _alternate_id(m, d))
            if key in taken:
                repeats.append(item)
                continue
            m = m.model_copy(update={"external_id": key[1]})
        taken[key] = d
        out.append(item._replace(msg=m))
    return out, repeats


async def _stored_keys(
    session: AsyncSession, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str | None]:
    """Which of these (channel, external_id) pairs are stored, with their content digests."""
    if not keys:
        return {}
    dialect = session.get_bind().dialect.name
    # Plain columns: the select runs on the Core path, cheaper than the ORM's.
    m = Message.__table__.c  # type: ignore[attr-defined]
    q = sa.select(m.channel, m.external_id, m.raw["content_digest"].as_string()).where(
        keys_in(dialect, [m.channel, m.external_id], list(dict.fromkeys(keys)))
    )
    return {(r[0], r[1]): r[2] for r in (await session.execute(q)).all()}


def _dump(m: InboundMessage) -> str:
    """A message as JSON for the quarantine, even one built around the contract's checks."""
    try:
        return m.model_dump_json()
    except ValueError:  # a string JSON cannot encode (a lone surrogate): keep what we can
        return clean_text(repr(m.model_dump()))


def _why(err: BaseException) -> str:
    """The database's own words for a refused statement, else the error itself."""
    return str(err.orig) if isinstance(err, sa.exc.DBAPIError) else repr(err)


def _quarantine_row(source: str, item: Quarantined | InboundMessage, error: str) -> Quarantine:
    if isinstance(item, InboundMessage):
        return Quarantine(
            source=source,
            channel=item.channel,
            external_id=clean_text(item.external_id),
            error=clean_text(error),
            raw=_dump(item),
        )
    return Quarantine(
        source=source,
        external_id=item.external_id,
        error=clean_text(error),
        raw=clean_text(item.raw),
    )


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
