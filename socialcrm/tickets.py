"""Tickets: open one, or thread a message into the customer's open ticket; the status lifecycle.

Threading, strongest evidence first: the reply chain (in-reply-to, email References, platform
conversation id), a ``[#123]`` ticket tag in the subject or text, then the same customer on
the same channel within the thread window. A message on a recently resolved ticket reopens it.

Who may join: anyone replying inside the ticket's conversation (the reply chain or the
platform's conversation id). A ticket tag joins only a sender who is the ticket's customer or
has written in the ticket before; anyone else gets a new ticket that points at the tagged one
(``related_ticket_id``). The window joins only the ticket's own customer, and only while the
ticket has had no answer: once we answered, a new top-level message is a new topic and opens
a new ticket; replies to the answer still thread by the chain.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm.config import TicketConfig
from socialcrm.connector import InboundMessage
from socialcrm.db import executemany, keys_in
from socialcrm.identity import insert_returning_ids
from socialcrm.intents import graver_intent
from socialcrm.models import AuditEvent, Message, Ticket, utcnow
from socialcrm.priority import higher
from socialcrm.sla import SlaPolicy

STATUSES = ("open", "pending", "resolved", "closed")
#: Columns every TicketView carries; they are written back as they stand.
_CORE = (
    "status",
    "priority",
    "priority_score",
    "last_message_at",
    "resolved_at",
    "conversation_id",
)
#: Columns the pipeline only ever sets (never clears) on a stored ticket.
_SET_ONLY = (
    "priority_reason",
    "intent",
    "team",
    "queue",
    "assignee",
    "first_response_due_at",
    "resolution_due_at",
)
#: Statuses a new message can thread into (resolved ones are reopened).
_THREADABLE = ("open", "pending", "resolved")
TICKET_TAG_RE = re.compile(r"\[#(\d{1,12})\]")
_MESSAGE: sa.Table = Message.__table__  # type: ignore[attr-defined]
_TICKET: sa.Table = Ticket.__table__  # type: ignore[attr-defined]


def ticket_tags(m: InboundMessage) -> list[int]:
    """The ticket numbers a message names in its subject or text ("[#123]")."""
    if "[#" not in m.text and not (m.subject and "[#" in m.subject):  # most name none
        return []
    return [int(t) for t in TICKET_TAG_RE.findall(f"{m.subject or ''} {m.text[:2000]}")]


class TicketError(ValueError):
    """A ticket operation that is not allowed; the message says why."""


def ticket_tag(ticket_id: int) -> str:
    """The tag that threads replies back to a ticket, e.g. ``[#123]``."""
    return f"[#{ticket_id}]"


@dataclass(slots=True)
class TicketView:
    """A ticket as loaded or opened in this batch."""

    id: int | None
    customer_id: int | None
    channel: str
    source: str
    status: str
    priority: str
    priority_score: float
    last_message_at: datetime
    resolved_at: datetime | None
    conversation_id: str | None
    #: When the ticket opened (its SLA clock starts then); None for one not loaded with it.
    opened_at: datetime | None = None
    #: We have answered it (a reply was sent): a new top-level message no longer joins it.
    answered: bool = False
    #: The gravest intent of its messages so far.
    intent: str | None = None
    #: Customer object of a ticket opened in this batch (its id is known only after flush).
    customer_ref: Any = None
    new: bool = False
    #: Messages added and reopenings in this batch, written as increments at flush.
    added: int = 0
    reopened: int = 0
    #: Other columns set in this batch (kept for the insert, or written back if not null).
    fields: dict[str, Any] = field(default_factory=dict)
    changed: bool = False

    def set(self, **values: Any) -> None:
        """Change fields of the ticket, to be written at flush."""
        for k, v in values.items():
            if k in _CORE:
                setattr(self, k, v)
            else:
                self.fields[k] = v
        self.changed = True


class Threader:
    """Finds or opens the ticket of each message in a batch, with a few queries in all."""

    def __init__(
        self, session: AsyncSession, config: TicketConfig, sla: SlaPolicy | None = None
    ) -> None:
        self.session = session
        self.config = config
        #: Due times are stamped on tickets when they open and when their priority changes.
        self.sla = sla
        self._by_id: dict[int, TicketView] = {}
        self._by_customer: dict[int, list[TicketView]] = {}
        self._by_conversation: dict[tuple[str, str], TicketView] = {}
        #: (channel, external_id) -> ticket, for messages stored earlier or in this batch.
        self._by_message: dict[tuple[str, str], TicketView | None] = {}
        self._new: list[TicketView] = []
        #: Customers who wrote in each tagged ticket: who may join it by its tag.
        self._participants: dict[int, set[int]] = {}
        #: (channel, external_id) -> the tagged ticket a message could not join.
        self._related: dict[tuple[str, str], int] = {}
        #: Tickets opened in this batch for customers that are new in it, by id() of the view.
        self._by_new_customer: dict[int, list[TicketView]] = {}

    async def load(self, messages: Sequence[InboundMessage], customer_ids: set[int]) -> None:
        """Load the tickets and earlier messages this batch could thread into."""
        refs: set[tuple[str, str]] = set()
        convs: set[tuple[str, str]] = set()
        tagged: set[int] = set()
        for m in messages:
            if m.in_reply_to:
                refs.add((m.channel, m.in_reply_to))
            refs.update((m.channel, r) for r in m.references)
            if m.conversation_id:
                convs.add((m.channel, m.conversation_id))
                refs.add((m.channel, m.conversation_id))
            tagged.update(ticket_tags(m))
        dialect = self.session.get_bind().dialect.name
        # Plain columns: these selects run on the Core path, cheaper than the ORM's.
        mc, tc = _MESSAGE.c, _TICKET.c
        msg_ticket: dict[tuple[str, str], int | None] = {}
        if refs:
            q = sa.select(mc.channel, mc.external_id, mc.ticket_id).where(
                keys_in(dialect, [mc.channel, mc.external_id], list(refs))
            )
            for r in (await self.session.execute(q)).all():
                msg_ticket[(r.channel, r.external_id)] = r.ticket_id
        wanted: list[sa.ColumnElement[bool]] = []
        ids = tagged | {t for t in msg_ticket.values() if t is not None}
        if ids:
            wanted.append(keys_in(dialect, [tc.id], list(ids)))
        if customer_ids:
            wanted.append(
                sa.and_(
                    keys_in(dialect, [tc.customer_id], list(customer_ids)),
                    tc.status.in_(_THREADABLE),
                )
            )
        if convs:
            wanted.append(
                sa.and_(
                    keys_in(dialect, [tc.channel, tc.conversation_id], list(convs)),
                    tc.status != "closed",
                )
            )
        if wanted:
            q2 = sa.select(
                tc.id,
                tc.customer_id,
                tc.channel,
                tc.source,
                tc.status,
                tc.priority,
                tc.priority_score,
                tc.last_message_at,
                tc.resolved_at,
                tc.conversation_id,
                tc.opened_at,
                tc.first_response_at,
                tc.intent,
            ).where(sa.or_(*wanted))
            for t in (await self.session.execute(q2)).all():
                self._add(
                    TicketView(
                        id=t.id,
                        customer_id=t.customer_id,
                        channel=t.channel,
                        source=t.source,
                        status=t.status,
                        priority=t.priority,
                        priority_score=t.priority_score,
                        last_message_at=t.last_message_at,
                        resolved_at=t.resolved_at,
                        conversation_id=t.conversation_id,
                        opened_at=t.opened_at,
                        answered=t.first_response_at is not None,
                        intent=t.intent,
                    )
                )
        for key, tid in msg_ticket.items():
            self._by_message[key] = self._by_id.get(tid) if tid is not None else None
        if tagged:
            q3 = (
                sa.select(mc.ticket_id, mc.customer_id)
                .where(keys_in(dialect, [mc.ticket_id], list(tagged)), mc.customer_id.is_not(None))
                .distinct()
            )
            for p in (await self.session.execute(q3)).all():
                self._participants.setdefault(p.ticket_id, set()).add(p.customer_id)

    def _add(self, t: TicketView) -> None:
        if t.id is not None:
            self._by_id[t.id] = t
        if t.customer_id is not None:
            self._by_customer.setdefault(t.customer_id, []).append(t)
        if t.conversation_id and t.status != "closed":
            self._by_conversation.setdefault((t.channel, t.conversation_id), t)

    def find(
        self, m: InboundMessage, customer_id: int | None, customer_ref: Any
    ) -> TicketView | None:
        """The ticket this message belongs to, if any (without changing anything)."""
        chain = (
            [m.in_reply_to, *reversed(m.references)]
            if m.in_reply_to
            else list(reversed(m.references))
        )
        for ref in chain:
            t = self._by_message.get((m.channel, ref)) if ref else None
            if t is not None and t.status != "closed":
                return t
        if m.conversation_id:
            t = self._by_conversation.get((m.channel, m.conversation_id)) or self._by_message.get(
                (m.channel, m.conversation_id)
            )
            if t is not None and t.status != "closed":
                return t
        for tag in ticket_tags(m):
            t = self._by_id.get(tag)
            if t is None or t.status == "closed":
                continue
            # Ticket numbers are sequential: a tag alone proves nothing about the sender.
            if customer_id is not None and (
                t.customer_id == customer_id
                or (t.id is not None and customer_id in self._participants.get(t.id, ()))
            ):
                return t
            if t.id is not None:
                self._related.setdefault((m.channel, m.external_id), t.id)
        candidates = (
            self._by_customer.get(customer_id, [])
            if customer_id is not None
            else self._by_new_customer.get(id(customer_ref), [])
        )
        best: TicketView | None = None
        for t in candidates:
            if t.channel != m.channel or t.status == "closed" or t.answered:
                continue
            if t.status == "resolved":
                if (
                    t.resolved_at is None
                    or m.created_at - t.resolved_at > self.config.reopen_window
                ):
                    continue
            elif m.created_at - t.last_message_at > self.config.thread_window:
                continue
            if best is None or t.last_message_at > best.last_message_at:
                best = t
        return best

    def note_message(self, m: InboundMessage, ticket: TicketView | None) -> None:
        """Remember where a message of this batch went, so later ones can thread to it."""
        self._by_message[(m.channel, m.external_id)] = ticket
        if ticket is not None and m.conversation_id and not ticket.conversation_id:
            ticket.set(conversation_id=m.conversation_id)
            self._by_conversation.setdefault((m.channel, m.conversation_id), ticket)

    def open(
        self, m: InboundMessage, source: str, customer_id: int | None, customer_ref: Any
    ) -> TicketView:
        """Open a new ticket for this message."""
        subject = m.subject or _subject_from_text(m.text)
        t = TicketView(
            id=None,
            customer_id=customer_id,
            channel=m.channel,
            source=source,
            status="open",
            priority="normal",
            priority_score=0.0,
            last_message_at=m.created_at,
            resolved_at=None,
            conversation_id=_conversation(m.channel, m.conversation_id, m.external_id),
            customer_ref=customer_ref,
            new=True,
            opened_at=m.created_at,
        )
        t.fields.update(subject=subject[:500], opened_at=m.created_at)
        related = self._related.get((m.channel, m.external_id))
        if related is not None:
            t.fields["related_ticket_id"] = related
        self._new.append(t)
        if customer_id is None:
            self._by_new_customer.setdefault(id(customer_ref), []).append(t)
        if customer_id is not None:
            self._by_customer.setdefault(customer_id, []).append(t)
        if t.conversation_id:
            self._by_conversation.setdefault((m.channel, t.conversation_id), t)
        return t

    def touch(
        self,
        t: TicketView,
        m: InboundMessage,
        *,
        priority: str | None,
        score: float,
        reason: Callable[[], str],
        updates: dict[str, Any],
        intent: str | None = None,
    ) -> bool:
        """Add a message: reopen if resolved, raise priority and intent; True if reopened."""
        reopened = t.status == "resolved"
        if t.status in ("resolved", "pending"):
            t.set(status="open", resolved_at=None)
        if m.created_at > t.last_message_at:
            t.set(last_message_at=m.created_at)
        if priority is not None:
            label = priority if t.new and t.added == 0 else higher(priority, t.priority)
            if label != t.priority:
                t.set(priority=label)
                if not t.new:
                    self._stamp_due(t)
        if score > t.priority_score or (t.new and t.added == 0):
            t.set(priority_score=score, priority_reason=reason())
        if updates:
            t.set(**updates)
        gravest = graver_intent(t.intent, intent)
        if gravest != t.intent:
            t.intent = gravest
            t.set(intent=gravest)
        if reopened and self.sla is not None:
            # A reopened ticket gets a new resolution target, counted from the new message.
            target = self.sla.target(t.priority).resolution
            t.set(resolution_due_at=self.sla.add(m.created_at, target, t.priority))
        t.added += 1
        t.reopened += int(reopened)
        return reopened

    def _stamp_due(self, t: TicketView) -> None:
        """Due times for the ticket's priority, counted from when it opened (not from now)."""
        if self.sla is not None and t.opened_at is not None:
            first, resolution = self.sla.due(t.opened_at, t.priority)
            t.set(first_response_due_at=first, resolution_due_at=resolution)

    async def flush(self, now: datetime) -> None:
        """Insert new tickets and write back changed ones."""
        for t in self._new:
            self._stamp_due(t)
        if self._new:
            rows = [
                {
                    "customer_id": t.customer_id
                    if t.customer_id is not None
                    else t.customer_ref.id,
                    "channel": t.channel,
                    "source": t.source,
                    "status": t.status,
                    "priority": t.priority,
                    "priority_score": t.priority_score,
                    "priority_reason": "",
                    "conversation_id": t.conversation_id,
                    "last_message_at": t.last_message_at,
                    "updated_at": now,
                    "tags": [],
                    "intent": None,
                    "team": None,
                    "queue": None,
                    "assignee": None,
                    "message_count": t.added,
                    **t.fields,
                }
                for t in self._new
            ]
            # executemany wants one statement shape: give every row every key.
            keys = set().union(*rows)
            ids = await insert_returning_ids(
                self.session, Ticket, [{k: r.get(k) for k in keys} for r in rows]
            )
            for t, row, tid in zip(self._new, rows, ids, strict=True):
                t.id, t.customer_id, t.new, t.added = tid, row["customer_id"], False, 0
                t.changed = False
                t.fields.clear()
                self._by_id[tid] = t
            self._new.clear()
            self._by_new_customer.clear()
        touched = [t for t in self._by_id.values() if t.changed or t.added]
        if touched:
            # One statement shape for every ticket, so this is one executemany.
            tc = _TICKET.c
            values: dict[str, Any] = {c: sa.bindparam(f"_{c}") for c in _CORE}
            values |= {c: sa.func.coalesce(sa.bindparam(f"_{c}"), tc[c]) for c in _SET_ONLY}
            values |= {
                "updated_at": sa.bindparam("_now"),
                "message_count": tc.message_count + sa.bindparam("_n"),
                "reopened_count": tc.reopened_count + sa.bindparam("_r"),
            }
            await executemany(
                self.session,
                sa.update(_TICKET).where(tc.id == sa.bindparam("_id")).values(values),
                [
                    {
                        "_id": v.id,
                        "_now": now,
                        "_n": v.added,
                        "_r": v.reopened,
                        **{f"_{c}": getattr(v, c) for c in _CORE},
                        **{f"_{c}": v.fields.get(c) for c in _SET_ONLY},
                    }
                    for v in touched
                ],
            )
        for v in self._by_id.values():
            v.fields.clear()
            v.changed = False
            v.added = v.reopened = 0


def _conversation(channel: str, conversation_id: str | None, external_id: str) -> str | None:
    """The conversation a ticket opened by a message threads: the platform's, else the
    message itself (replies name it), but for e-mail, which threads by its references."""
    return conversation_id or (external_id if channel != "email" else None)


def _subject_from_text(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 80 else line[:77].rstrip() + "..."


async def open_for_message(
    session: AsyncSession,
    message: Message,
    actor: str,
    via: str,
    sla: SlaPolicy | None,
    now: datetime | None = None,
) -> Ticket:
    """Open a ticket for a stored customer message that has none: a person says it needs a
    reply that the rules (and the model) did not see. Its targets count from now."""
    now = now or utcnow()
    if message.ticket_id is not None:
        raise TicketError(f"message #{message.id} is on ticket #{message.ticket_id} already")
    if message.direction != "inbound" or message.customer_id is None:
        raise TicketError(f"message #{message.id} is not a customer's")
    priority = message.priority or "normal"
    ticket = Ticket(
        customer_id=message.customer_id,
        channel=message.channel,
        source=message.source,
        subject=_subject_from_text(message.subject or message.text)[:500],
        priority=priority,
        priority_reason=f"opened by {actor} ({via}): the message needs a reply",
        intent=message.intent,
        conversation_id=_conversation(
            message.channel, message.conversation_id, message.external_id
        ),
        opened_at=now,
        last_message_at=message.created_at,
        message_count=1,
        updated_at=now,
    )
    if sla is not None:
        ticket.first_response_due_at, ticket.resolution_due_at = sla.due(now, priority)
    session.add(ticket)
    await session.flush()
    message.ticket_id = ticket.id
    session.add(message)
    session.add(
        AuditEvent(
            at=now,
            actor=actor,
            via=via,
            action="ticket.open",
            object_type="ticket",
            object_id=str(ticket.id),
            detail={"message": message.id, "why": "needs a reply"},
        )
    )
    return ticket


_TRANSITIONS = {
    "open": {"pending", "resolved", "closed"},
    "pending": {"open", "resolved", "closed"},
    "resolved": {"open", "closed"},
    "closed": set(),
}


async def set_status(
    session: AsyncSession,
    ticket_id: int,
    status: str,
    actor: str,
    via: str,
    now: datetime | None = None,
) -> Ticket:
    """Move a ticket along open -> pending -> resolved -> closed, with an audit entry."""
    now = now or utcnow()
    ticket = await session.get(Ticket, ticket_id, with_for_update=True)
    if ticket is None:
        raise TicketError(f"no ticket #{ticket_id}")
    if status not in STATUSES:
        raise TicketError(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
    if status == ticket.status:
        return ticket
    if status not in _TRANSITIONS[ticket.status]:
        raise TicketError(f"ticket #{ticket_id} is {ticket.status}; it cannot become {status}")
    before = ticket.status
    ticket.status = status
    if status == "resolved":
        ticket.resolved_at = now
    if status == "closed":
        ticket.closed_at = now
        ticket.resolved_at = ticket.resolved_at or now
    if status == "open":
        ticket.resolved_at = None
    ticket.updated_at = now
    session.add(
        AuditEvent(
            at=now,
            actor=actor,
            via=via,
            action="ticket.status",
            object_type="ticket",
            object_id=str(ticket_id),
            detail={"from": before, "to": status},
        )
    )
    return ticket


async def assign(
    session: AsyncSession, ticket_id: int, assignee: str, actor: str, via: str
) -> Ticket:
    """Give a ticket to a person."""
    ticket = await session.get(Ticket, ticket_id, with_for_update=True)
    if ticket is None:
        raise TicketError(f"no ticket #{ticket_id}")
    before = ticket.assignee
    ticket.assignee = assignee
    ticket.updated_at = utcnow()
    session.add(
        AuditEvent(
            actor=actor,
            via=via,
            action="ticket.assign",
            object_type="ticket",
            object_id=str(ticket_id),
            detail={"from": before, "to": assignee},
        )
    )
    return ticket
