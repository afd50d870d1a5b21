"""Customer records: importing them from CSV, and merging two records of one person."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm.identity import handle_key
from socialcrm.models import AuditEvent, Customer, Identity, Message, Reply, Ticket, utcnow

TIERS = ("standard", "gold", "vip")
STAGES = ("prospect", "customer", "advocate")
CSV_COLUMNS = (
    "name",
    "email",
    "tier",
    "segment",
    "lifetime_value",
    "tags",
    "x_handle",
    "mastodon_handle",
    "reddit_handle",
    "do_not_contact",
    "lifecycle_stage",
)
_HANDLE_COLUMNS = {"x_handle": "x", "mastodon_handle": "mastodon", "reddit_handle": "reddit"}
_TRUE = {"1", "true", "yes", "y", "x"}
_FALSE = {"", "0", "false", "no", "n"}


class CsvImportError(ValueError):
    """A CSV file that cannot be imported; ``problems`` has one ``line N: ...`` per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class ImportResult:
    """What an import did."""

    created: int = 0
    updated: int = 0
    identities: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def parse_csv(text: str) -> list[dict[str, Any]]:
    """Validate every row of a customers CSV; raises CsvImportError listing all mistakes."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise CsvImportError(["the file is empty"])
    header = [h.strip().lower() for h in reader.fieldnames]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise CsvImportError(
            [f"line 1: unknown column(s) {', '.join(unknown)}; known: {', '.join(CSV_COLUMNS)}"]
        )
    if "email" not in header and not any(h in header for h in _HANDLE_COLUMNS):
        raise CsvImportError(["line 1: need an email column or a handle column to match customers"])
    reader.fieldnames = header
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for raw in reader:
        line = reader.line_num
        if None in raw:
            problems.append(f"line {line}: more fields than columns")
            continue
        r = {k: (v or "").strip() for k, v in raw.items()}
        row: dict[str, Any] = {"line": line, "name": r.get("name") or None}
        email = (r.get("email") or "").lower() or None
        if email and ("@" not in email or " " in email):
            problems.append(f"line {line}: email {email!r} is not an address")
        row["email"] = email
        tier = (r.get("tier") or "standard").lower()
        if tier not in TIERS:
            problems.append(f"line {line}: tier must be one of {', '.join(TIERS)}, got {tier!r}")
        row["tier"] = tier
        row["segment"] = r.get("segment") or None
        try:
            ltv = Decimal(r.get("lifetime_value") or "0")
            if not ltv.is_finite() or ltv < 0 or ltv >= Decimal("1e12"):
                raise InvalidOperation
        except InvalidOperation:
            problems.append(
                f"line {line}: lifetime_value must be a number >= 0, "
                f"got {r.get('lifetime_value')!r}"
            )
            ltv = Decimal(0)
        row["lifetime_value"] = ltv.quantize(Decimal("0.01"))
        row["tags"] = sorted({t.strip() for t in (r.get("tags") or "").split(";") if t.strip()})
        dnc = (r.get("do_not_contact") or "").lower()
        if dnc not in _TRUE | _FALSE:
            problems.append(f"line {line}: do_not_contact must be yes or no, got {dnc!r}")
        row["do_not_contact"] = dnc in _TRUE
        stage = (r.get("lifecycle_stage") or "customer").lower()
        if stage not in STAGES:
            problems.append(
                f"line {line}: lifecycle_stage must be one of {', '.join(STAGES)}, got {stage!r}"
            )
        row["lifecycle_stage"] = stage
        row["handles"] = {
            ch: h.lstrip("@") for col, ch in _HANDLE_COLUMNS.items() if (h := r.get(col) or "")
        }
        if not email and not row["handles"]:
            problems.append(f"line {line}: needs an email or a handle to match the customer")
        rows.append(row)
    if problems:
        raise CsvImportError(problems)
    return rows


async def import_customers(
    session: AsyncSession, rows: list[dict[str, Any]], actor: str, via: str
) -> ImportResult:
    """Create or update customers from validated CSV rows, matched by email then handle."""
    result = ImportResult()
    now = utcnow()
    for row in rows:
        cust = await _match(session, row)
        values = {
            "tier": row["tier"],
            "segment": row["segment"],
            "lifetime_value": row["lifetime_value"],
            "tags": row["tags"],
            "do_not_contact": row["do_not_contact"],
            "lifecycle_stage": row["lifecycle_stage"],
            "updated_at": now,
        }
        if cust is None:
            cust = Customer(name=row["name"], email=row["email"], created_at=now, **values)
            session.add(cust)
            await session.flush()
            result.created += 1
        else:
            for k, v in values.items():
                setattr(cust, k, v)
            cust.name = row["name"] or cust.name
            cust.email = cust.email or row["email"]
            result.updated += 1
        assert cust.id is not None
        wanted = [("email", None, row["email"])] if row["email"] else []
        wanted += [(ch, h, None) for ch, h in row["handles"].items()]
        for channel, handle, email in wanted:
            if not await _has_identity(session, cust.id, channel, handle, email):
                session.add(
                    Identity(
                        customer_id=cust.id,
                        channel=channel,
                        handle=handle,
                        handle_key=handle_key(handle),
                        email=email,
                    )
                )
                result.identities += 1
    session.add(
        AuditEvent(
            actor=actor,
            via=via,
            action="customers.import",
            object_type="customer",
            detail={"created": result.created, "updated": result.updated},
        )
    )
    return result


async def _match(session: AsyncSession, row: dict[str, Any]) -> Customer | None:
    ids: list[int] = []
    if row["email"]:
        q = sa.select(Identity.customer_id).where(Identity.email == row["email"])
        ids += [r[0] for r in (await session.execute(q)).all()]
        q2 = sa.select(Customer.id).where(
            Customer.email == row["email"],
            Customer.merged_into_id.is_(None),  # type: ignore[union-attr]
        )
        ids += [r[0] for r in (await session.execute(q2)).all()]
    for channel, handle in row["handles"].items():
        q3 = sa.select(Identity.customer_id).where(
            Identity.channel == channel, Identity.handle_key == handle_key(handle)
        )
        ids += [r[0] for r in (await session.execute(q3)).all()]
    for cid in ids:
        cust = await session.get(Customer, cid)
        while cust is not None and cust.merged_into_id is not None:
            cust = await session.get(Customer, cust.merged_into_id)
        if cust is not None:
            return cust
    return None


async def _has_identity(
    session: AsyncSession, customer_id: int, channel: str, handle: str | None, email: str | None
) -> bool:
    q = sa.select(Identity.id).where(
        Identity.customer_id == customer_id, Identity.channel == channel
    )
    if handle:
        q = q.where(Identity.handle_key == handle_key(handle))
    if email:
        q = q.where(Identity.email == email)
    return (await session.execute(q.limit(1))).first() is not None


async def merge(
    session: AsyncSession, keep_id: int, merge_id: int, actor: str, via: str
) -> dict[str, int]:
    """Move every identity, message, ticket and reply of ``merge_id`` onto ``keep_id``."""
    if keep_id == merge_id:
        raise ValueError("cannot merge a customer into itself")
    keep = await session.get(Customer, keep_id)
    gone = await session.get(Customer, merge_id)
    if keep is None or gone is None:
        raise LookupError(f"no customer {merge_id if keep else keep_id}")
    if keep.merged_into_id is not None or gone.merged_into_id is not None:
        raise ValueError("one of these customers was already merged into another")
    # Keep the merged record's address findable, as an identity of the kept customer.
    if (
        gone.email
        and gone.email != keep.email
        and not await _has_identity(session, merge_id, "email", None, gone.email)
    ):
        session.add(Identity(customer_id=merge_id, channel="email", email=gone.email))
        await session.flush()
    moved: dict[str, int] = {}
    for table in (Identity, Message, Ticket, Reply):
        res = await session.execute(
            sa.update(table).where(table.customer_id == merge_id).values(customer_id=keep_id)  # type: ignore[attr-defined]
        )
        moved[table.__tablename__] = int(res.rowcount)  # type: ignore[attr-defined]
    keep.tags = sorted(set(keep.tags) | set(gone.tags))
    keep.lifetime_value = Decimal(keep.lifetime_value) + Decimal(gone.lifetime_value)
    keep.reach = max(keep.reach, gone.reach)
    keep.do_not_contact = keep.do_not_contact or gone.do_not_contact
    keep.email = keep.email or gone.email
    keep.name = keep.name or gone.name
    if gone.first_seen_at and (not keep.first_seen_at or gone.first_seen_at < keep.first_seen_at):
        keep.first_seen_at = gone.first_seen_at
    if gone.last_seen_at and (not keep.last_seen_at or gone.last_seen_at > keep.last_seen_at):
        keep.last_seen_at = gone.last_seen_at
    stages = ["prospect", "customer", "advocate"]
    if stages.index(gone.lifecycle_stage) > stages.index(keep.lifecycle_stage):
        keep.lifecycle_stage = gone.lifecycle_stage
    keep.updated_at = utcnow()
    gone.merged_into_id = keep_id
    gone.updated_at = utcnow()
    session.add(
        AuditEvent(
            actor=actor,
            via=via,
            action="customer.merge",
            object_type="customer",
            object_id=str(keep_id),
            detail={"merged": merge_id, "moved": moved},
        )
    )
    return moved
