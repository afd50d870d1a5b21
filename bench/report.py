"""Report speed: build_report + render("html") over a store of a million messages.

    python bench/report.py [--count 1000000] [--seed 7] [--database URL] [--keep FILE]

Fills a database with ``--count`` generated mentions spread over 60 days (with the customers
who wrote them, the tickets they opened and some outbound replies, and the rollups the
report reads, written with each chunk as the pipeline writes them), refreshes the planner's
statistics, then times ``build_report`` followed by ``render(report, "html")`` for a 7-day
and a 30-day period ending at the last midnight of the data, then the weekly report as a
person gets it: ``socialcrm report --format html`` in a new process (imports included).
Prints the seconds of each (median of ``--rounds``).

Target: under 2 s for the weekly report (7 days, the CLI's default period, compared with the
week before) over 1,000,000 stored messages, on SQLite and on PostgreSQL; the exit status is 1
when it is missed. The 30-day report, whose two periods hold every stored message, is timed
and printed too.

The default database is a fresh SQLite file in a temporary folder; ``--keep FILE`` keeps the
SQLite file and reuses it on the next run when it already holds the data. ``--database URL``
(``postgresql+asyncpg://...``) fills an EMPTY PostgreSQL database (it refuses one that has
messages unless ``--reuse`` says to time the data already there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

try:
    from socialcrm.db import Store, executemany, open_store
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from socialcrm.db import Store, executemany, open_store

from socialcrm import rollups
from socialcrm.models import Customer, Message, Ticket
from socialcrm.reports import build_report, render
from socialcrm.sandbox.traffic import Mention, TrafficGenerator

#: Days of stored data; the report judged against the target, and the target in seconds.
DAYS = 60
TARGET_DAYS = 7
TARGET_S = 2.0
CHUNK = 20_000
#: Where each channel's messages come from (the review feed is named by the raw "feed").
SOURCES = {
    "x": "x",
    "mastodon": "mastodon",
    "reddit": "reddit",
    "email": "support-inbox",
    "webhook": "contact-form",
}
TEAMS = {
    "delivery": "logistics",
    "billing": "billing",
    "bug": "tech",
    "staff": "support",
    "legal": "legal",
    "churn": "retention",
}
DUE = {"urgent": timedelta(hours=1), "high": timedelta(hours=4), "normal": timedelta(hours=24)}


def _intent(m: Mention) -> str | None:
    if m.kind == "complaint":
        return m.topic if m.topic in ("delivery", "billing") else "complaint"
    if m.kind in ("churn", "sarcasm"):
        return "complaint"
    if m.kind in ("praise", "question", "legal"):
        return m.kind
    if m.kind == "foreign":
        return m.topic
    return None


def _tags(m: Mention, first: bool) -> list[str]:
    tags = []
    if first:
        tags.append("first-contact")
    if m.kind == "spam":
        tags.append("spam")
    elif m.sentiment == "negative":
        tags.append("negative")
        if m.message.channel in ("x", "mastodon", "reddit"):
            tags.append("public")
    elif m.kind == "praise":
        tags.append("praise")
    if m.message.channel == "rss":
        tags.append("review")
    if m.topic == "delivery":
        tags.append("delivery")
    if m.kind == "legal":
        tags.append("legal-risk")
    if m.kind == "foreign":
        tags.append("needs-translation")
    if m.vip:
        tags.append("vip")
    return tags


def _score(rng: random.Random, m: Mention) -> tuple[float | None, ...]:
    if m.lang != "en":
        return (None, None, None, None)
    if m.sentiment == "positive":
        compound = round(0.05 + 0.94 * rng.betavariate(2, 1.5), 4)
    elif m.sentiment == "negative":
        compound = round(-0.05 - 0.94 * rng.betavariate(2, 1.5), 4)
    else:
        compound = round(rng.uniform(-0.3, 0.3) if rng.random() < 0.2 else 0.0, 4)
    pos = round(max(compound, 0.0) * 0.6, 3)
    neg = round(max(-compound, 0.0) * 0.6, 3)
    return (compound, pos, round(1 - pos - neg, 3), neg)


class Filler:
    """Turns generated mentions into customer, ticket and message rows, in chunks."""

    def __init__(self, seed: int, end: datetime) -> None:
        self.rng = random.Random(f"{seed}/report-bench")
        self.end = end
        self.customers: dict[int, int] = {}
        self.ticket_id = 0
        self.message_id = 0

    def rows(
        self, chunk: list[Mention]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """(customers, tickets, messages) rows for one chunk of mentions."""
        rng = self.rng
        customers: list[dict[str, Any]] = []
        tickets: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        for m in chunk:
            msg = m.message
            at = msg.created_at
            first = m.author_id not in self.customers
            if first:
                cid = self.customers[m.author_id] = len(self.customers) + 1
                value = rng.uniform(3_000, 25_000) if m.vip else rng.lognormvariate(5.5, 1.3)
                stage = "prospect" if rng.random() < 0.4 else "customer"
                customers.append(
                    {
                        "id": cid,
                        "name": msg.author.name or msg.author.handle,
                        "email": msg.author.email,
                        "tier": "vip" if m.vip else ("gold" if value > 1500 else "standard"),
                        "lifetime_value": round(0.0 if stage == "prospect" else value, 2),
                        "lifecycle_stage": stage,
                        "reach": msg.author.followers or 0,
                        "tags": ["key_account"] if m.vip else [],
                        "do_not_contact": False,
                        "created_at": at,
                        "updated_at": at,
                        "first_seen_at": at,
                        "last_seen_at": at,
                        "segment": None,
                        "notes": None,
                        "merged_into_id": None,
                    }
                )
            cid = self.customers[m.author_id]
            ticket_id = None
            wants_ticket = m.kind in ("complaint", "churn", "legal", "question")
            if wants_ticket and msg.in_reply_to is None and not msg.references:
                self.ticket_id += 1
                ticket_id = self.ticket_id
                tickets.append(self.ticket(ticket_id, cid, m))
            compound, pos, neu, neg = _score(rng, m)
            self.message_id += 1
            messages.append(
                {
                    "id": self.message_id,
                    "channel": msg.channel,
                    "source": SOURCES.get(msg.channel) or str(msg.raw.get("feed", msg.channel)),
                    "external_id": msg.external_id,
                    "direction": "inbound",
                    "customer_id": cid,
                    "ticket_id": ticket_id,
                    "author_handle": msg.author.handle or msg.author.email,
                    "author_name": msg.author.name,
                    "followers": msg.author.followers or 0,
                    "text": msg.text,
                    "subject": msg.subject,
                    "lang": m.lang,
                    "scored": compound is not None,
                    "sentiment": compound,
                    "sentiment_pos": pos,
                    "sentiment_neu": neu,
                    "sentiment_neg": neg,
                    "intent": _intent(m),
                    "tags": _tags(m, first),
                    "ignored": m.kind == "spam",
                    "url": msg.url,
                    "created_at": at,
                    "received_at": at + timedelta(seconds=rng.uniform(1, 90)),
                    "raw": msg.raw,
                    "identity_id": None,
                    "priority": None,
                    "rules_matched": [],
                    "direct": msg.direct,
                    "conversation_id": msg.conversation_id,
                    "in_reply_to": msg.in_reply_to,
                    "references": msg.references,
                    "truncated": False,
                }
            )
            if ticket_id is not None and rng.random() < 0.3:
                self.message_id += 1
                reply_at = tickets[-1]["first_response_at"] or at + timedelta(hours=1)
                messages.append(
                    {
                        **messages[-1],
                        "id": self.message_id,
                        "external_id": f"reply-{self.message_id}",
                        "direction": "outbound",
                        "author_handle": "acme",
                        "author_name": "Acme",
                        "followers": 0,
                        "text": "Thanks for telling us; we are on it.",
                        "subject": None,
                        "scored": False,
                        "sentiment": None,
                        "sentiment_pos": None,
                        "sentiment_neu": None,
                        "sentiment_neg": None,
                        "intent": None,
                        "tags": [],
                        "url": None,
                        "created_at": reply_at,
                        "received_at": reply_at,
                        "raw": {},
                    }
                )
        return customers, tickets, messages

    def ticket(self, ticket_id: int, cid: int, m: Mention) -> dict[str, Any]:
        """A ticket opened by ``m``, worked at a realistic pace (or not yet, near the end)."""
        rng = self.rng
        msg = m.message
        opened = msg.created_at
        key = m.kind if m.kind in ("legal", "churn") else (m.topic or "")
        team = TEAMS.get(key) if rng.random() < 0.9 else None
        priority = "urgent" if m.kind == "legal" else ("high" if m.vip else "normal")
        first = opened + timedelta(minutes=rng.lognormvariate(math.log(120), 1.1))
        resolved: datetime | None = first + timedelta(hours=rng.lognormvariate(math.log(20), 1.0))
        if first > self.end:
            first = resolved = None
        elif resolved is not None and (resolved > self.end or rng.random() < 0.03):
            resolved = None
        return {
            "id": ticket_id,
            "customer_id": cid,
            "channel": msg.channel,
            "source": SOURCES.get(msg.channel) or str(msg.raw.get("feed", msg.channel)),
            "subject": (msg.subject or msg.text)[:80],
            "status": "resolved" if resolved else ("pending" if first else "open"),
            "priority": priority,
            "intent": _intent(m),
            "team": team,
            "tags": [],
            "opened_at": opened,
            "last_message_at": opened,
            "first_response_due_at": opened + DUE[priority],
            "resolution_due_at": opened + timedelta(days=3),
            "first_response_at": first,
            "resolved_at": resolved,
            "message_count": 1,
            "updated_at": resolved or first or opened,
            "priority_score": 0.0,
            "priority_reason": "",
            "queue": None,
            "assignee": None,
            "conversation_id": msg.conversation_id,
            "closed_at": None,
            "reopened_count": 0,
        }


def _chunks(mentions: Iterator[Mention], size: int) -> Iterator[list[Mention]]:
    chunk: list[Mention] = []
    for m in mentions:
        chunk.append(m)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def fill(store: Store, count: int, seed: int, start: datetime, end: datetime) -> None:
    """Insert ``count`` generated mentions spread over ``start``..``end``, in bulk."""
    gap_s = (end - start).total_seconds() / count
    traffic = TrafficGenerator(seed, start=start, mean_gap_s=gap_s)
    filler = Filler(seed, end)
    inserts = (
        sa.insert(Customer.__table__),
        sa.insert(Ticket.__table__),
        sa.insert(Message.__table__),
    )  # type: ignore[arg-type]

    async def insert(tables: tuple[list[dict[str, Any]], ...]) -> None:
        async with store.session() as session:
            for stmt, rows in zip(inserts, tables, strict=True):
                await executemany(session, stmt, rows)
            await rollups.add(session, tables[2])  # as the pipeline does with each batch

    began = time.perf_counter()
    done = 0
    # The driver writes one chunk in its thread while this one generates the next.
    pending: asyncio.Task[None] | None = None
    chunks = _chunks(traffic.mentions(count), CHUNK)
    while chunk := await asyncio.to_thread(next, chunks, []):
        tables = filler.rows(chunk)
        if pending is not None:
            await pending
        pending = asyncio.create_task(insert(tables))
        done += len(chunk)
        rate = done / (time.perf_counter() - began)
        print(f"\r  {done:,} messages ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
    if pending is not None:
        await pending
    print(file=sys.stderr)
    if not store.is_sqlite:
        async with store.session() as session:
            for table in ("customer", "ticket", "message"):
                await session.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )


async def refresh_statistics(store: Store) -> None:
    """Fresh planner statistics (the report's indexes come with the migrations)."""
    if store.is_sqlite:
        async with store.engine.connect() as conn:
            await conn.exec_driver_sql("ANALYZE")
            await conn.commit()
    else:
        async with store.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")


async def count_messages(store: Store) -> int:
    """Messages already stored."""
    async with store.reader() as session:
        return int((await session.execute(sa.text("SELECT count(*) FROM message"))).scalar_one())


async def time_reports(store: Store, end: datetime, rounds: int) -> dict[int, float]:
    """Median seconds of build_report + render('html') per period length in days."""
    results: dict[int, float] = {}
    # One untimed run: imports (matplotlib), template compilation, warm caches.
    render(await build_report(store, period=timedelta(days=7), end=end, brand="Acme"), "html")
    for days in (7, 30):
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            report = await build_report(store, period=timedelta(days=days), end=end, brand="Acme")
            html = render(report, "html")
            times.append(time.perf_counter() - began)
        results[days] = statistics.median(times)
        print(
            f"{days:2d}-day report: {results[days]:.2f} s "
            f"(rounds: {', '.join(f'{t:.2f}' for t in times)}; {len(html):,} bytes of html; "
            f"{report.overall.current.total:,} messages in the period)"
        )
    return results


def time_cli(url: str, end: datetime, rounds: int, folder: Path) -> float:
    """Median seconds of ``socialcrm report --period 7d --format html`` in a new process each
    time: what a person at the terminal waits for, imports and all."""
    config = folder / "report-bench.yaml"
    config.write_text(f"brand: {{name: Acme}}\ndatabase: {json.dumps(url)}\n", encoding="utf-8")
    out = folder / "report.html"
    day = (end - timedelta(days=1)).date().isoformat()  # the period ends at the midnight after
    command = [sys.executable, "-m", "socialcrm", "-c", str(config), "report", "--period"]
    command += [f"{TARGET_DAYS}d", "--end", day, "--format", "html", "-o", str(out)]
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    median = statistics.median(times)
    print(
        f"{TARGET_DAYS:2d}-day report from the command line: {median:.2f} s "
        f"(rounds: {', '.join(f'{t:.2f}' for t in times)}; a new process each)"
    )
    return median


async def run(args: argparse.Namespace) -> int:
    end = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=DAYS)
    start = end - timedelta(days=DAYS)
    with tempfile.TemporaryDirectory() as tmp:
        if args.database:
            url = args.database
        else:
            path = Path(args.keep) if args.keep else Path(tmp) / "report-bench.db"
            url = f"sqlite+aiosqlite:///{path}"
        store = await open_store(url)
        try:
            have = await count_messages(store)
            if have and not (args.reuse or args.keep):
                print(f"{store.safe_url()} already has {have:,} messages; pass --reuse")
                return 2
            if not have:
                print(f"filling {store.safe_url()} with {args.count:,} messages over {DAYS} days")
                began = time.perf_counter()
                await fill(store, args.count, args.seed, start, end)
                print(f"  filled in {time.perf_counter() - began:.0f} s")
            began = time.perf_counter()
            await refresh_statistics(store)
            print(f"  statistics in {time.perf_counter() - began:.0f} s")
            print(f"{await count_messages(store):,} stored messages; report ends {end:%Y-%m-%d}")
            results = await time_reports(store, end, args.rounds)
        finally:
            await store.dispose()
        time_cli(store.url, end, args.rounds, Path(tmp))
    met = results[TARGET_DAYS] < TARGET_S
    print(
        f"target: the {TARGET_DAYS}-day report under {TARGET_S:.0f} s: {'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="generated mentions")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per period; median shown")
    ap.add_argument("--database", default=None, help="URL (default: a fresh SQLite file)")
    ap.add_argument("--keep", default=None, help="SQLite file to fill once and reuse")
    ap.add_argument("--reuse", action="store_true", help="time the messages already stored")
    sys.exit(asyncio.run(run(ap.parse_args())))


if __name__ == "__main__":
    main()
