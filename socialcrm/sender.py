"""Sending approved replies through the channel they answer: at most once, never blindly again.

A reply is claimed by moving it from ``approved`` to ``sending`` in its own committed
transaction *before* the platform is called. If the process dies between that and the
platform's answer, the reply stays ``sending``; it becomes ``needs_check`` for a person to look
at, and is never sent again by itself. The claim names its process (``reply.sending_by``), so
a reply whose process is no longer up (a daemon restarted, or dead while others run on the
same database) is flagged within seconds; one with no such name, or whose process cannot be
told, after a grace period.
A rate-limit refusal (the platform surely did not post it) is retried with backoff; a
refused credential or a permanent error marks the reply ``failed`` and alerts a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm.alerts import raise_alert
from socialcrm.connector import (
    AuthError,
    ConnectorError,
    OutboundReply,
    ReplyingConnector,
    RetryableError,
)
from socialcrm.db import Store
from socialcrm.models import AuditEvent, Identity, Message, Reply, Ticket, utcnow
from socialcrm.tickets import ticket_tag

log = logging.getLogger(__name__)

#: A reply still ``sending`` this long after it was claimed is flagged for a person.
SENDING_GRACE = timedelta(minutes=2)
#: A claim this old whose process is not up was interrupted: the claimer had time to be seen.
CLAIM_SETTLE = timedelta(seconds=5)
#: Rate-limited tries before a reply is marked failed.
MAX_ATTEMPTS = 8
#: How often the sender looks for approvals made by other processes.
TICK_S = 1.0


class Sender:
    """Sends approved replies with the connector of the source each one came from."""

    def __init__(
        self,
        store: Store,
        connectors: Mapping[str, Any],
        *,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        who: str | None = None,
        up: Callable[[Collection[str]], Awaitable[set[str]]] | None = None,
    ) -> None:
        self.store = store
        self.connectors = dict(connectors)
        self.clock = clock
        self.rng = rng or random.Random()
        #: This process, as its claims name it (``reply.sending_by``).
        self.who = (who or f"socialcrm/{os.getpid()}")[:128]
        #: Which of the named processes are up now; None when that cannot be told, and then
        #: only ``SENDING_GRACE`` says a send was interrupted.
        self.up = up
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Called with each reply whose state changed here (to update its chat card).
        self.on_change: Callable[[int], None] | None = None

    def wake(self, _reply_id: int | None = None) -> None:
        """Something was approved: look now rather than at the next tick."""
        self._wake.set()

    def start(self) -> None:
        """Run the send loop in the background."""
        self._task = asyncio.create_task(self._loop(), name="socialcrm-sender")

    async def stop(self) -> None:
        """Stop the loop after the send in hand."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        await self.flag_interrupted()
        while True:
            try:
                await self.send_due()
                await self.flag_interrupted()
            except Exception:  # the loop must outlive one bad round; it logs and goes on
                log.exception("sender round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()

    async def flag_interrupted(self) -> int:
        """Replies left ``sending`` by a process that stopped: a person must check them."""
        now = self.clock()
        async with self.store.session() as s:
            claimed = (
                (
                    await s.execute(
                        sa.select(Reply).where(
                            Reply.status == "sending",
                            Reply.sending_started_at < now - CLAIM_SETTLE,  # type: ignore[operator]
                        )
                    )
                )
                .scalars()
                .all()
            )
            others = {r.sending_by for r in claimed if r.sending_by and r.sending_by != self.who}
            up = await self.up(others) if self.up is not None and others else others
            stuck = [
                r
                for r in claimed
                if (r.sending_started_at is not None and r.sending_started_at < now - SENDING_GRACE)
                or (r.sending_by in others and r.sending_by not in up)
            ]
            for r in stuck:
                await _flag(
                    s,
                    r,
                    "needs_check",
                    f"the process{f' {r.sending_by}' if r.sending_by else ''} stopped while "
                    "this reply was being sent: check on the platform whether it was posted; it "
                    "will not be sent again by itself",
                    now,
                )
        for r in stuck:
            self._changed(r.id)
        return len(stuck)

    async def send_due(self) -> int:
        """Send every approved reply whose time has come; returns how many were sent."""
        now = self.clock()
        async with self.store.reader() as s:
            ids = list(
                (
                    await s.execute(
                        sa.select(Reply.id)
                        .where(
                            Reply.status == "approved",
                            sa.or_(Reply.next_attempt_at.is_(None), Reply.next_attempt_at <= now),  # type: ignore[union-attr]
                        )
                        .order_by(Reply.decided_at)  # type: ignore[arg-type]
                        .limit(100)
                    )
                ).scalars()
            )
        sent = 0
        for rid in ids:
            if await self.send_one(rid):
                sent += 1
        return sent

    async def send_one(self, reply_id: int) -> bool:
        """Claim, send and record one approved reply. True if it went out."""
        claimed = await self._claim(reply_id)
        if claimed is None:
            return False
        reply, outbound = claimed
        connector = self.connectors.get(reply.source)
        if connector is None or not isinstance(connector, ReplyingConnector):
            await self._finish_failed(
                reply,
                f"no connector that can send replies is configured for source {reply.source!r}",
            )
            return False
        try:
            receipt = await connector.send(outbound)
        except RetryableError as err:
            if err.not_sent and reply.attempts < MAX_ATTEMPTS:
                await self._retry_later(reply, err)
            elif err.not_sent:
                await self._finish_failed(reply, f"gave up after {reply.attempts} tries: {err}")
            else:
                await self._needs_check(reply, f"the platform's answer was lost: {err}")
            return False
        except AuthError as err:
            await self._finish_failed(reply, f"credentials refused: {err}")
            await self._source_auth(reply.source, err)
            return False
        except ConnectorError as err:
            await self._finish_failed(reply, str(err))
            return False
        except Exception as err:  # unknown: it may have been posted, so a person decides
            log.exception("sending reply %s failed unexpectedly", reply.id)
            await self._needs_check(reply, f"unexpected error while sending: {err!r}")
            return False
        await self._record_sent(reply, outbound, receipt.external_id, receipt.url)
        return True

    async def _claim(self, reply_id: int) -> tuple[Reply, OutboundReply] | None:
        now = self.clock()
        async with self.store.session() as s:
            # Only one process wins the claim, even with several daemons on one database.
            res = await s.execute(
                sa.update(Reply)
                .where(Reply.id == reply_id, Reply.status == "approved")  # type: ignore[arg-type]
                .values(
                    status="sending",
                    sending_started_at=now,
                    sending_by=self.who,
                    attempts=Reply.attempts + 1,
                )
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return None
            reply = await s.get(Reply, reply_id)
            assert reply is not None
            msg = await s.get(Message, reply.message_id)
            assert msg is not None
            ticket = await s.get(Ticket, reply.ticket_id) if reply.ticket_id else None
            ident = await s.get(Identity, msg.identity_id) if msg.identity_id else None
            outbound = outbound_reply(reply, msg, ticket, ident)
        self._changed(reply_id)
        return reply, outbound

    async def _record_sent(
        self, reply: Reply, outbound: OutboundReply, external_id: str, url: str | None
    ) -> None:
        now = self.clock()
        async with self.store.session() as s:
            r = await s.get(Reply, reply.id, with_for_update=True)
            assert r is not None
            r.status = "sent"
            r.sent_at = now
            r.external_id = external_id
            r.last_error = None
            s.add(
                Message(
                    channel=r.channel,
                    source=r.source,
                    external_id=external_id,
                    direction="outbound",
                    customer_id=r.customer_id,
                    ticket_id=r.ticket_id,
                    author_handle=None,
                    text=outbound.text,
                    subject=outbound.subject,
                    in_reply_to=outbound.in_reply_to,
                    references=outbound.references,
                    url=url,
                    created_at=now,
                    received_at=now,
                    raw={"reply_id": r.id},
                )
            )
            if r.ticket_id is not None:
                t = await s.get(Ticket, r.ticket_id, with_for_update=True)
                if t is not None:
                    if t.first_response_at is None:
                        t.first_response_at = now
                    if t.status == "open":
                        t.status = "pending"
                    t.updated_at = now
            s.add(_audit(r, "reply.sent", {"external_id": external_id}))
        self._changed(reply.id)

    async def _retry_later(self, reply: Reply, err: RetryableError) -> None:
        wait = err.retry_after_s
        if wait is None:
            wait = self.rng.uniform(0.5, 1.0) * min(600.0, 5.0 * 2 ** (reply.attempts - 1))
        async with self.store.session() as s:
            r = await s.get(Reply, reply.id, with_for_update=True)
            assert r is not None
            r.status = "approved"
            r.next_attempt_at = self.clock() + timedelta(seconds=wait)
            r.last_error = f"rate limited, next try in {wait:.0f}s: {err}"
        self._changed(reply.id)

    async def _source_auth(self, source: str, err: AuthError) -> None:
        """One ``source_auth`` alert per source (the key the poller uses): its credentials, or
        the renewal of its user token, were refused; every reply through it will fail."""
        async with self.store.session() as s:
            await raise_alert(
                s,
                "source_auth",
                f"source_auth:{source}",
                f"Source {source} needs new credentials; replies through it fail",
                {"source": source, "error": str(err)[:1000]},
                "critical",
                now=self.clock(),
            )

    async def _needs_check(self, reply: Reply, why: str) -> None:
        await self._conclude(reply, "needs_check", why)

    async def _finish_failed(self, reply: Reply, why: str) -> None:
        log.warning("reply %s failed: %s", reply.id, why)
        await self._conclude(reply, "failed", why)

    async def _conclude(self, reply: Reply, status: str, why: str) -> None:
        async with self.store.session() as s:
            r = await s.get(Reply, reply.id, with_for_update=True)
            assert r is not None
            await _flag(s, r, status, why, self.clock())
        self._changed(reply.id)

    def _changed(self, reply_id: int | None) -> None:
        if self.on_change is not None and reply_id is not None:
            self.on_change(reply_id)


def outbound_reply(
    reply: Reply, msg: Message, ticket: Ticket | None, ident: Identity | None
) -> OutboundReply:
    """The reply as its connector gets it, with the stored payload of what it answers."""
    assert reply.id is not None
    subject = None
    if reply.channel == "email":
        base = (msg.subject or (ticket.subject if ticket else "") or "").strip()
        if not base.lower().startswith("re:"):
            base = f"Re: {base}" if base else "Re: your message"
        tag = ticket_tag(ticket.id) if ticket is not None and ticket.id is not None else ""
        subject = base if (not tag or tag in base) else f"{base} {tag}"
    return OutboundReply(
        reply_id=reply.id,
        channel=reply.channel,  # type: ignore[arg-type]
        text=reply.final_text or reply.draft_text,
        in_reply_to=msg.external_id,
        to_handle=ident.handle if ident is not None else None,
        to_email=ident.email if ident is not None else None,
        subject=subject,
        references=_references(msg) if reply.channel == "email" else [],
        ticket_id=reply.ticket_id,
        original=dict(msg.raw or {}),
    )


def _references(msg: Message) -> list[str]:
    """The answer's References: the parent's References, or else its In-Reply-To, then the
    parent's own id (RFC 5322 §3.6.4)."""
    chain = msg.references or ([msg.in_reply_to] if msg.in_reply_to else [])
    return [*chain, msg.external_id]


_TITLES = {
    "needs_check": "Reply #{id} may or may not have been sent: check it",
    "failed": "Reply #{id} could not be sent",
}


async def _flag(session: AsyncSession, r: Reply, status: str, why: str, now: datetime) -> None:
    """Give a reply its final problem status, with an audit entry and an alert for a person.

    Both statuses are final, so the alert is raised once per reply and status."""
    r.status = status
    r.last_error = why[:2000]
    session.add(_audit(r, f"reply.{status}", {"error": why[:500]}))
    await raise_alert(
        session,
        f"reply_{status}",
        f"reply_{status}:{r.id}",
        _TITLES[status].format(id=r.id),
        {"reply_id": r.id, "error": why[:500], "approved_by": r.decided_by},
        "warning",
        ticket_id=r.ticket_id,
        cooldown=None,
        now=now,
    )


def _audit(r: Reply, action: str, detail: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        actor="socialcrm",
        via="system",
        action=action,
        object_type="reply",
        object_id=str(r.id),
        detail=detail,
    )
