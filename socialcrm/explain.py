"""``socialcrm rules explain``: why the rules (and the team's model) decide what they do for a text.

A message is read as the pipeline reads it (the language gate, VADER on the cleaned text, the
rules' text conditions, the team's triage model where one is stored) and each rule is shown
with its outcome and the conditions on the text that hold in it, by file and line, with the
words they found. Tuning a rule pack on real messages starts here: "why was this thanked?",
"why did this open a ticket?".
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm import triage
from socialcrm.config import Config, shipped_rules_dir
from socialcrm.models import TriageModelVersion
from socialcrm.rules import Explanation, Held, RuleSet, text_context
from socialcrm.scoring import analyse_batch
from socialcrm.sentiment import Score, SentimentScorer, straight_quotes


@dataclass(frozen=True, slots=True)
class Message:
    """The message to explain, and what the rules may look at besides its text."""

    text: str
    direct: bool = True
    channel: str = "x"
    #: The configured source it came from (``source:`` conditions).
    source: str = "x"
    #: The platform's language tag; None: detected, as for a platform that gives none.
    lang: str | None = None
    #: When it arrived; None: now. Shown and tested in the brand's time zone.
    at: datetime | None = None
    ticket_open: bool = False
    #: Its author's customer record, as the rules' ``customer:`` and ``followers`` see it
    #: (none given: a first message from no known customer).
    tier: str | None = None
    segment: str | None = None
    lifetime_value: float = 0.0
    customer_tags: frozenset[str] = frozenset()
    customer_is_new: bool = False
    followers: int = 0
    #: What the pipeline stored for it, when it is a stored message (one line).
    stored: str | None = None


class TeamModel(NamedTuple):
    """The team's model in use, and the chance from which it keeps a ticket."""

    model: triage.Model
    ticket_at: float


#: Why no model reads the message when triage is off.
TRIAGE_OFF = "triage is off in the config: the rules decide alone"


class _Unreadable(Exception):
    """Why the database is not read (the message says it in words)."""


@asynccontextmanager
async def _reading(config: Config) -> AsyncIterator[AsyncSession]:
    """A session on the configured database, only read: none is made, and one on another
    schema version is not upgraded (``_Unreadable`` says so)."""
    if not _database_exists(config.database_url()):
        raise _Unreadable("no database yet")
    import sqlalchemy as sa

    from socialcrm.db import Store
    from socialcrm.migrations import code_head

    store = Store(config.database_url())
    try:
        try:
            at = await store.current_revision()
            if at != code_head():
                raise _Unreadable(
                    f"the database is at schema {at or '(empty)'}, not this version's {code_head()}"
                )
            async with store.reader() as s:
                yield s
        except (OSError, sa.exc.SQLAlchemyError) as err:  # unreachable, refused
            raise _Unreadable(f"the database cannot be read ({type(err).__name__})") from err
    finally:
        await store.dispose()


async def team_model(config: Config) -> TeamModel | str:
    """The newest stored team model, or why none is used (the rules then decide alone)."""
    if not config.triage.enabled:
        return TRIAGE_OFF
    try:
        async with _reading(config) as s:
            row = await triage.newest(s)
    except _Unreadable as why:
        return f"{why}: the rules decide alone"
    return await team_model_of(config, row)


async def team_model_of(config: Config, row: TriageModelVersion | None) -> TeamModel | str:
    """A stored model as the pipeline uses it, or why none is used."""
    if row is None:
        return "no team model trained yet: the rules decide alone"
    try:
        model = await asyncio.to_thread(triage.load_row, row)
    except triage.TriageError as err:
        return f"model #{row.id} cannot be read ({err}): the rules decide alone"
    return TeamModel(model, config.triage.threshold(row.scores).at)


async def stored_message(config: Config, message_id: int) -> Message | str:
    """A stored inbound message as the rules saw it, with its customer's record as it stands
    now, and what the pipeline stored for it; or why it cannot be read."""
    try:
        async with _reading(config) as s:
            return await stored_message_in(s, message_id)
    except _Unreadable as why:
        return str(why)


async def stored_message_in(s: AsyncSession, message_id: int) -> Message | str:
    """``stored_message`` read in a session on a database of this version."""
    import sqlalchemy as sa
    from sqlmodel import col

    from socialcrm.models import Customer, Reply, Ticket
    from socialcrm.models import Message as Stored

    row = await s.get(Stored, message_id)
    if row is None or row.direction != "inbound":
        return f"no inbound message #{message_id}"
    customer = await s.get(Customer, row.customer_id) if row.customer_id else None
    ticket = await s.get(Ticket, row.ticket_id) if row.ticket_id else None
    drafts = (
        await s.execute(sa.select(col(Reply.template)).where(col(Reply.message_id) == message_id))
    ).scalars()
    templates = [t for t in drafts if t]
    # The ticket it joined was open when it came in if an earlier message was on it.
    joined = (
        ticket is not None
        and (
            await s.execute(
                sa.select(sa.func.count())
                .select_from(Stored)
                .where(col(Stored.ticket_id) == ticket.id, col(Stored.id) < message_id)
            )
        ).scalar_one()
        > 0
    )
    said = [
        f"message #{message_id}: rules {', '.join(row.rules_matched) or 'none'}",
        f"intent {row.intent or '-'}",
        f"ticket #{ticket.id}" if ticket is not None else "no ticket",
        f"draft {', '.join(templates) or '-'}",
    ]
    if row.triage_version is not None and row.triage_version > 0:
        said.append(f"read by team model #{row.triage_version}")
    elif row.triage_version == 0:
        said.append(f"relabelled {row.triage_class} by a person")
    return Message(
        text=row.text,
        direct=row.direct,
        channel=row.channel,
        source=row.source,
        lang=row.lang,
        at=row.created_at,
        ticket_open=joined,
        tier=customer.tier if customer else None,
        segment=customer.segment if customer else None,
        lifetime_value=float(customer.lifetime_value) if customer else 0.0,
        customer_tags=frozenset(customer.tags) if customer else frozenset(),
        customer_is_new=customer is not None
        and customer.first_seen_at is not None
        and customer.first_seen_at >= row.created_at,
        followers=row.followers,
        stored=" · ".join(said),
    )


def _database_exists(database_url: str) -> bool:
    """False for an SQLite file not made yet; a server's database is asked."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return True
    return url.database is not None and Path(url.database).exists()


def explain(
    config: Config,
    rules: RuleSet,
    message: Message,
    team: TeamModel | str = "no team model in use: the rules decide alone",
    *,
    every_rule: bool = False,
    all_hint: str = "--all lists them",
) -> list[str]:
    """The explanation, as lines of text; ``team``: the team's model, as the pipeline uses
    it (it may close or open what the rules decided); ``every_rule``: also the rules that
    neither matched nor found anything in the text (``all_hint`` says how to ask for them)."""
    scorer = SentimentScorer.for_brand(config.brand)
    model = team.model if isinstance(team, TeamModel) else None
    [(score, facts, verdict)] = analyse_batch(scorer, rules, [(message.text, message.lang)], model)
    if isinstance(score, str):  # the scorer failed on this text: the pipeline stores it so
        score = Score(None, None, None, None, None)
    tz = ZoneInfo(config.brand.timezone)
    at = (message.at or datetime.now(tz)).astimezone(tz)
    ctx = replace(
        text_context(message.text),
        channel=message.channel,
        source=message.source,
        sentiment=score.compound,
        lang=score.lang,
        has_open_ticket=message.ticket_open,
        customer_tier=message.tier,
        customer_segment=message.segment,
        lifetime_value=message.lifetime_value,
        customer_tags=message.customer_tags,
        customer_is_new=message.customer_is_new,
        followers=message.followers,
        local_time=at,
        direct=message.direct,
        text_facts=facts,
        **triage.reading(verdict),
    )
    found = rules.explain(ctx)
    d = found.decision
    steered_from = len(d.trail)
    if verdict is not None and isinstance(team, TeamModel):
        triage.steer(d, verdict, config.triage.min_confidence, team.ticket_at)
    lines = [
        f"Message:   {'sent to us' if message.direct else 'found by search'}, "
        f"channel {message.channel}, source {message.source}, "
        f"arrived {at:%a %Y-%m-%d %H:%M} ({tz.key})",
        "Sentiment: " + _sentiment(scorer, score, message.text),
        "Model:     " + _model(team, verdict),
        "",
        "Rules, in order, each with the conditions on its text that hold and what they found",
        "(`not`: written under a `not`, it counts against the rule):",
        *_rules(found, every_rule, all_hint),
        "",
        "Decision:  " + _decision(found),
        *(f"  {line}" for line in d.trail[steered_from:]),
    ]
    if message.stored is not None:
        lines.append("Stored:    " + message.stored)
    return lines


def _sentiment(scorer: SentimentScorer, score: Score, text: str) -> str:
    if score.compound is None:
        lang = score.lang or "unknown"
        return f"not scored: the language is {lang}, and VADER reads English"
    read = " ".join(scorer.clean(straight_quotes(text)).split())
    return f"{score.compound:+.3f}, language {score.lang or 'unknown'}; VADER read: {read!r}"


def _model(team: TeamModel | str, verdict: triage.Verdict | None) -> str:
    if isinstance(team, str):
        return team
    if verdict is None:
        return f"team model #{team.model.version} gave no reading: the rules decide alone"
    said = [f"team model #{team.model.version}"]
    if verdict.sentiment is not None:
        said.append(f"reads {verdict.sentiment} ({verdict.confidence or 0:.2f})")
    if verdict.needs_reply is not None:
        yes = "yes" if verdict.needs_reply else "no"
        said.append(f"needs a reply: {yes} ({verdict.reply_confidence or 0:.2f})")
    said.append(
        f"chance it needs us {triage.risk_of(verdict):.2f} (a ticket from {team.ticket_at:.2f})"
    )
    return ", ".join(said)


def _rules(found: Explanation, every_rule: bool, all_hint: str) -> Iterator[str]:
    quiet = 0
    for r in found.rules:
        if not every_rule and r.outcome != "matched" and not r.held:
            quiet += 1
            continue
        mark = {"matched": "MATCH", "not matched": "no   ", "not reached": "--   "}[r.outcome]
        head = f"  {mark} {r.rule.name}  ({_short(r.rule.source)})"
        if r.outcome == "matched":
            head += "  " + r.rule.summary.split(": ", 1)[-1]
        elif r.outcome == "not reached":
            head += "  not reached: an earlier rule stopped the rules"
        yield head
        for h in sorted(r.held, key=lambda h: (h.site.negated, _line(h))):
            yield "          " + _held(h)
    if quiet:
        yield f"  ({quiet} more did not match and found nothing in the text; {all_hint})"


def _held(h: Held) -> str:
    kind = ("not " if h.site.negated else "") + h.site.kind
    return f"line {_line(h):<5} {kind:13} {', '.join(map(repr, h.found))}"


def _line(h: Held) -> int:
    """The line of a condition (its rule's file is on the rule's line)."""
    tail = h.site.where.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def _decision(found: Explanation) -> str:
    d = found.decision
    if d.ignore:
        return "ignored: stored, with no ticket and no draft"
    parts = [
        "ticket" + (f" for {d.team}" if d.team else "") if d.open_ticket else "no ticket",
        f"intent {d.intent or '-'}",
        f"draft {d.draft_template or '-'}",
    ]
    if d.priority:
        parts.append(f"priority {d.priority}")
    if d.tags:
        parts.append("tags " + ", ".join(d.tags))
    if d.escalations:
        parts.append("escalated: " + "; ".join(d.escalations))
    return " · ".join(parts)


def _short(where: str) -> str:
    """``file:line`` with the file as the README names it: the shipped pack as
    ``rules/default.yaml`` wherever the package is installed, another file relative to the
    working folder where it is inside it."""
    path, sep, line = where.rpartition(":")
    if not sep or not line.isdigit():
        path, line = where, ""
    resolved, shipped = Path(path).resolve(), shipped_rules_dir().resolve()
    try:
        shown = os.path.relpath(path)
        if resolved.is_relative_to(shipped):
            shown = f"rules/{resolved.relative_to(shipped).as_posix()}"
    except ValueError:  # another drive
        shown = path
    if shown.startswith(".."):
        shown = path
    return f"{shown}:{line}" if line else shown
