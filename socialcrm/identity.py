"""Identity resolution: which customer wrote a message, across channels.

A message's author is matched by channel user id, then by email, then by handle on the same
channel; an unknown author becomes a new prospect. Work is done for a whole batch with a
few queries, not one round trip per message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm.connector import InboundMessage
from socialcrm.db import executemany, keys_in
from socialcrm.models import Customer, Identity, UTCDateTime, utcnow

#: The tables' columns: selects of plain columns run on the Core path, which costs a batch
#: less than the ORM's handling of the same statement.
_C: sa.Table = Customer.__table__  # type: ignore[attr-defined]
_I: sa.Table = Identity.__table__  # type: ignore[attr-defined]

_CUSTOMER_COLS = (
    _C.c.id,
    _C.c.name,
    _C.c.email,
    _C.c.tier,
    _C.c.segment,
    _C.c.lifetime_value,
    _C.c.tags,
    _C.c.do_not_contact,
    _C.c.lifecycle_stage,
    _C.c.reach,
    _C.c.last_seen_at,
)


@dataclass(slots=True)
class CustomerView:
    """What the pipeline needs to know of a customer."""

    id: int | None
    name: str | None
    email: str | None
    tier: str
    segment: str | None
    lifetime_value: Decimal
    tags: list[str]
    do_not_contact: bool
    lifecycle_stage: str
    reach: int
    #: True when no message from this customer was stored before this batch.
    is_new: bool
    #: True when a stored customer was seen in this batch and must be written back.
    seen: bool = False
    #: When the customer's earliest message in this batch was written (not after now):
    #: ``first_seen_at`` is when the customer first spoke, even in a backfill of old posts.
    first_at: datetime | None = None


@dataclass(slots=True)
class IdentityView:
    """An identity as loaded or created in this batch."""

    id: int | None
    customer: CustomerView
    channel: str
    external_user_id: str | None
    handle: str | None
    email: str | None
    followers: int
    #: True when a stored identity changed in this batch and must be written back.
    changed: bool = False


def handle_key(handle: str | None) -> str | None:
    """Handles compare case-insensitively and without the leading @."""
    return handle.strip().lstrip("@").lower() or None if handle else None


class Resolver:
    """Resolves the authors of one batch against the store and writes back what changed."""

    def __init__(self, session: AsyncSession, now: datetime | None = None) -> None:
        self.session = session
        self.now = now or utcnow()
        self._by_user: dict[tuple[str, str], IdentityView] = {}
        self._by_email: dict[str, IdentityView | CustomerView] = {}
        self._by_handle: dict[tuple[str, str], IdentityView] = {}
        self._customers: dict[int, CustomerView] = {}
        self._new_customers: list[CustomerView] = []
        self._new_identities: list[IdentityView] = []

    async def load(self, messages: Sequence[InboundMessage]) -> None:
        """Load every identity and customer the batch's authors could match."""
        users = {(m.channel, m.author.user_id) for m in messages if m.author.user_id}
        emails = {m.author.email for m in messages if m.author.email}
        handles = {
            (m.channel, k) for m in messages if (k := handle_key(m.author.handle)) is not None
        }
        dialect = self.session.get_bind().dialect.name
        conds: list[sa.ColumnElement[bool]] = []
        i = _I.c
        if users:
            conds.append(keys_in(dialect, [i.channel, i.external_user_id], list(users)))
        if emails:
            conds.append(keys_in(dialect, [i.email], list(emails)))
        if handles:
            conds.append(keys_in(dialect, [i.channel, i.handle_key], list(handles)))
        rows: list[Any] = []
        if conds:
            rows = list(
                (
                    await self.session.execute(
                        sa.select(
                            i.id,
                            i.customer_id,
                            i.channel,
                            i.external_user_id,
                            i.handle,
                            i.email,
                            i.followers,
                        ).where(sa.or_(*conds))
                    )
                ).all()
            )
        customer_ids = {r.customer_id for r in rows}
        cust_rows: list[Any] = []
        if customer_ids or emails:
            cconds: list[sa.ColumnElement[bool]] = []
            if customer_ids:
                cconds.append(keys_in(dialect, [_C.c.id], list(customer_ids)))
            if emails:
                cconds.append(
                    sa.and_(
                        keys_in(dialect, [_C.c.email], list(emails)),
                        _C.c.merged_into_id.is_(None),
                    )
                )
            cust_rows = list(
                (
                    await self.session.execute(sa.select(*_CUSTOMER_COLS).where(sa.or_(*cconds)))
                ).all()
            )
        for c in cust_rows:
            view = CustomerView(
                id=c.id,
                name=c.name,
                email=c.email,
                tier=c.tier,
                segment=c.segment,
                lifetime_value=Decimal(c.lifetime_value or 0),
                tags=list(c.tags or []),
                do_not_contact=c.do_not_contact,
                lifecycle_stage=c.lifecycle_stage,
                reach=c.reach,
                # Every stored message stamps last_seen_at: none yet means a new customer.
                is_new=c.last_seen_at is None,
            )
            self._customers[c.id] = view
            if c.email:
                self._by_email.setdefault(c.email, view)
        for r in rows:
            ident = IdentityView(
                id=r.id,
                customer=self._customers[r.customer_id],
                channel=r.channel,
                external_user_id=r.external_user_id,
                handle=r.handle,
                email=r.email,
                followers=r.followers,
            )
            self._index(ident)

    def _index(self, ident: IdentityView) -> None:
        if ident.external_user_id:
            self._by_user[(ident.channel, ident.external_user_id)] = ident
        if ident.email:
            # An identity's own email beats a customer record's email.
            self._by_email[ident.email] = ident
        if (k := handle_key(ident.handle)) is not None:
            self._by_handle.setdefault((ident.channel, k), ident)

    def resolve(self, msg: InboundMessage) -> IdentityView:
        """The identity (and so the customer) of one message's author; new ones are created."""
        a = msg.author
        ident: IdentityView | None = None
        if a.user_id:
            ident = self._by_user.get((msg.channel, a.user_id))
        if ident is None and a.email:
            hit = self._by_email.get(a.email)
            if isinstance(hit, IdentityView):
                ident = hit if self._same_account(hit, msg) else None
                if ident is None:
                    ident = self._new_identity(hit.customer, msg)
            elif isinstance(hit, CustomerView):
                ident = self._new_identity(hit, msg)
        if ident is None and (k := handle_key(a.handle)) is not None:
            hit_h = self._by_handle.get((msg.channel, k))
            # A handle only links when the user id does not contradict it (handles get reused).
            if hit_h is not None and (
                not a.user_id or not hit_h.external_user_id or hit_h.external_user_id == a.user_id
            ):
                ident = hit_h
        if ident is None:
            ident = self._new_identity(self._new_customer(msg), msg)
        self._update(ident, msg)
        return ident

    def _same_account(self, ident: IdentityView, msg: InboundMessage) -> bool:
        return ident.channel == msg.channel and (
            not ident.external_user_id
            or not msg.author.user_id
            or ident.external_user_id == msg.author.user_id
        )

    def _new_customer(self, msg: InboundMessage) -> CustomerView:
        a = msg.author
        view = CustomerView(
            id=None,
            name=a.name or a.handle,
            email=a.email,
            tier="standard",
            segment=None,
            lifetime_value=Decimal(0),
            tags=[],
            do_not_contact=False,
            lifecycle_stage="prospect",
            reach=a.followers or 0,
            is_new=True,
        )
        self._new_customers.append(view)
        if a.email:
            self._by_email.setdefault(a.email, view)
        return view

    def _new_identity(self, customer: CustomerView, msg: InboundMessage) -> IdentityView:
        a = msg.author
        ident = IdentityView(
            id=None,
            customer=customer,
            channel=msg.channel,
            external_user_id=a.user_id,
            handle=a.handle,
            email=a.email,
            followers=a.followers or 0,
        )
        self._new_identities.append(ident)
        self._index(ident)
        return ident

    def _update(self, ident: IdentityView, msg: InboundMessage) -> None:
        a = msg.author
        if ident.id is not None:
            if a.user_id and not ident.external_user_id:
                ident.external_user_id = a.user_id
                ident.changed = True
                self._index(ident)
            if a.handle and a.handle != ident.handle and a.user_id:
                ident.handle = a.handle
                ident.changed = True
            if a.followers is not None and a.followers != ident.followers:
                ident.followers = a.followers
                ident.changed = True
        cust = ident.customer
        if a.followers and a.followers > cust.reach:
            cust.reach = a.followers
        at = min(msg.created_at, self.now)
        if cust.first_at is None or at < cust.first_at:
            cust.first_at = at
        if cust.id is not None:
            cust.seen = True

    async def flush(self) -> None:
        """Insert new customers and identities, and write back what changed."""
        now = self.now
        if self._new_customers:
            rows: list[dict[str, Any]] = [
                {
                    "name": c.name,
                    "email": c.email,
                    "tier": c.tier,
                    "lifetime_value": c.lifetime_value,
                    "tags": [],
                    "do_not_contact": False,
                    "lifecycle_stage": c.lifecycle_stage,
                    "reach": c.reach,
                    "created_at": now,
                    "updated_at": now,
                    "first_seen_at": c.first_at or now,
                    "last_seen_at": now,
                }
                for c in self._new_customers
            ]
            ids = await insert_returning_ids(self.session, Customer, rows)
            for c, new_id in zip(self._new_customers, ids, strict=True):
                c.id = new_id
            self._new_customers.clear()
        if self._new_identities:
            rows = [
                {
                    "customer_id": i.customer.id,
                    "channel": i.channel,
                    "external_user_id": i.external_user_id,
                    "handle": i.handle,
                    "handle_key": handle_key(i.handle),
                    "email": i.email,
                    "followers": i.followers,
                    "created_at": now,
                }
                for i in self._new_identities
            ]
            ids = await insert_returning_ids(self.session, Identity, rows)
            for i, new_id in zip(self._new_identities, ids, strict=True):
                i.id = new_id
            self._new_identities.clear()
        # One statement shape per table, so each is one executemany.
        changed = [i for i in self._identities() if i.changed]
        if changed:
            t = _I
            await executemany(
                self.session,
                sa.update(t)
                .where(t.c.id == sa.bindparam("_id"))
                .values(
                    external_user_id=sa.bindparam("_user"),
                    handle=sa.bindparam("_handle"),
                    handle_key=sa.bindparam("_key"),
                    followers=sa.bindparam("_followers"),
                ),
                [
                    {
                        "_id": i.id,
                        "_user": i.external_user_id,
                        "_handle": i.handle,
                        "_key": handle_key(i.handle),
                        "_followers": i.followers,
                    }
                    for i in changed
                ],
            )
            for i in changed:
                i.changed = False
        seen = [c for c in self._customers.values() if c.seen]
        if seen:
            t = _C
            first = sa.bindparam("_first", type_=UTCDateTime)
            await executemany(
                self.session,
                sa.update(t)
                .where(t.c.id == sa.bindparam("_id"))
                .values(
                    reach=sa.bindparam("_reach"),
                    first_seen_at=sa.case(
                        (sa.or_(t.c.first_seen_at.is_(None), t.c.first_seen_at > first), first),
                        else_=t.c.first_seen_at,
                    ),
                    last_seen_at=sa.bindparam("_now"),
                    updated_at=sa.bindparam("_now"),
                ),
                [
                    {"_id": c.id, "_reach": c.reach, "_now": now, "_first": c.first_at or now}
                    for c in seen
                ],
            )
            for c in seen:
                c.seen = False
                c.first_at = None

    def _identities(self) -> list[IdentityView]:
        seen: dict[int, IdentityView] = {}
        for i in self._by_user.values():
            seen[id(i)] = i
        for i in self._by_handle.values():
            seen[id(i)] = i
        for e in self._by_email.values():
            if isinstance(e, IdentityView):
                seen[id(e)] = e
        return list(seen.values())


async def insert_returning_ids(
    session: AsyncSession, table: Any, rows: list[dict[str, Any]]
) -> list[int]:
    """Insert many rows with one executemany and return their ids, in order; each row dict
    gets its id under "id" (rather than being copied with it: a batch inserts thousands).

    Ids are taken up front (a PostgreSQL sequence, or past SQLite's largest id while this
    transaction holds SQLite's write lock) so the insert needs no RETURNING, which SQLite
    can only order row by row.
    """
    if not rows:
        return []
    t = table.__table__  # Core, not the ORM: plain executemany, no identity map
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        q = sa.text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)")
        ids = [r[0] for r in (await session.execute(q, {"t": t.name, "n": len(rows)})).all()]
    else:
        top = (await session.execute(sa.select(sa.func.max(t.c.id)))).scalar() or 0
        ids = list(range(top + 1, top + 1 + len(rows)))
    for r, i in zip(rows, ids, strict=True):
        r["id"] = i
    await executemany(session, sa.insert(t), rows)
    return ids
