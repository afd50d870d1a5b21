"""The one command layer behind chat (Slack, Mattermost) and the CLI.

A command is a method decorated with ``@command``; its docstring is its help text, its
signature its arguments (the last ``str`` argument takes the rest of the line), and its role
the least a person needs to run it. ``CommandError`` goes back to the person word for word.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import jinja2
import sqlalchemy as sa

from socialcrm import approvals, priority, responder, tickets, triage
from socialcrm import explain as explaining
from socialcrm.config import Config
from socialcrm.db import Store
from socialcrm.models import (
    AuditEvent,
    Customer,
    Identity,
    Message,
    Reply,
    SourceState,
    Ticket,
    utcnow,
)
from socialcrm.responder import ReplyChecker, ReplyError, Responder
from socialcrm.rules import RuleSet
from socialcrm.sla import SlaPolicy
from socialcrm.templating import render_chat, template_environment
from socialcrm.tickets import TicketError
from socialcrm.timespec import parse_duration, parse_period

log = logging.getLogger(__name__)

ROLES = ("viewer", "agent", "approver", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}


class CommandError(Exception):
    """A refusal or a mistake, said to the person as it is."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who runs a command, with which role, and from where (cli, slack, mattermost)."""

    name: str
    role: str
    via: str


F = TypeVar("F", bound=Callable[..., Awaitable[str]])


def command(role: str = "viewer", name: str | None = None) -> Callable[[F], F]:
    """Mark a method of ``Commands`` as a command that needs at least ``role``."""

    def mark(fn: F) -> F:
        fn.__command__ = (name or fn.__name__.rstrip("_"), role)  # type: ignore[attr-defined]
        return fn

    return mark


class Commands:
    """Every command a person can run, the same from chat and from the CLI."""

    def __init__(
        self,
        config: Config,
        store: Store,
        responder_: Responder | None = None,
        rules: RuleSet | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.responder = responder_ or Responder(
            config.responder, config.brand.name, config.base_dir
        )
        #: The rules ``explain`` reads with: the daemon's own; loaded on first use without one.
        self._rules = rules
        #: The team model ``explain`` read last, kept for the next one while it is the newest.
        self._team: explaining.TeamModel | None = None
        self.checker = ReplyChecker(config.sources, self.responder)
        self.sla = SlaPolicy(config.sla) if config.sla.enabled else None
        self.templates: jinja2.Environment = template_environment(None)
        self.table: dict[str, tuple[Callable[..., Awaitable[str]], str]] = {}
        for attr in dir(self):
            fn = getattr(self, attr)
            meta = getattr(fn, "__command__", None)
            if meta:
                self.table[meta[0]] = (fn, meta[1])

    def use_rules(self, rules: RuleSet, responder: Responder) -> None:
        """Rules and reply templates loaded anew (``socialcrm run`` on SIGHUP)."""
        self._rules = rules
        self.responder = responder
        self.checker = ReplyChecker(self.config.sources, responder)

    @property
    def rules(self) -> RuleSet:
        """The rules in use (loaded from the config on first use where none were given)."""
        if self._rules is None:
            self._rules = RuleSet.load(self.config.rule_paths())
        return self._rules

    def render(self, template: str, **context: Any) -> str:
        """Render a chat/CLI answer from ``templates/chat``."""
        return render_chat(self.templates, template, **context)

    async def run(self, actor: Actor, line: str) -> str:
        """Parse and run one command line; the answer is text for the person."""
        # Plain words, not shell quoting: "We're on it" is a reply text, not a syntax error.
        words = line.split()
        if not words:
            return await self.help(actor)
        name, rest = words[0].lower(), line.strip()[len(words[0]) :].strip()
        entry = self.table.get(name)
        if entry is None:
            raise CommandError(f"unknown command {name!r}; try `help`")
        fn, role = entry
        if _RANK.get(actor.role, -1) < _RANK[role]:
            await self._audit(actor, "command.refused", "command", name, {"line": line[:500]})
            raise CommandError(
                f"sorry, {name} needs the {role} role and you are {actor.role or 'not staff'}"
            )
        args = _bind(fn, name, rest)
        try:
            return await fn(actor, *args)
        except (ReplyError, TicketError, LookupError, ValueError) as err:
            raise CommandError(said(err)) from err

    def usage(self, name: str) -> str:
        """One-line usage of a command, from its signature."""
        return _usage(self.table[name][0], name)

    async def _audit(
        self,
        actor: Actor,
        action: str,
        object_type: str,
        object_id: str | None,
        detail: dict[str, Any],
    ) -> None:
        async with self.store.session() as s:
            s.add(
                AuditEvent(
                    actor=actor.name,
                    via=actor.via,
                    action=action,
                    object_type=object_type,
                    object_id=object_id,
                    detail=detail,
                )
            )

    # -- commands ---------------------------------------------------------------------------

    @command("viewer")
    async def help(self, actor: Actor, name: str = "") -> str:
        """help [COMMAND] — list the commands, or explain one."""
        if name:
            entry = self.table.get(name.lower())
            if entry is None:
                raise CommandError(f"unknown command {name!r}")
            fn, role = entry
            return self.render("help_one", usage=self.usage(name.lower()), doc=_doc(fn), role=role)
        rows = [
            (self.usage(n), _doc(fn).splitlines()[0].split(" — ", 1)[-1], role)
            for n, (fn, role) in sorted(self.table.items())
            if _RANK.get(actor.role, -1) >= _RANK[role]
        ]
        return self.render("help", rows=rows)

    @command("viewer")
    async def queue(self, actor: Actor, limit: int = approvals.DEFAULT_LIMIT) -> str:
        """queue [LIMIT] — drafts awaiting approval, highest priority and oldest first."""
        async with self.store.reader() as s:
            found = await s.execute(sa.text(approvals.QUEUE_SQL), {"limit": approvals.clamp(limit)})
            rows = approvals.rows_of(found.all())
            total = (await s.execute(sa.text(approvals.COUNT_SQL))).scalar_one()
        return self.render("queue", rows=rows, total=total)

    @command("viewer")
    async def show(self, actor: Actor, reply_id: int) -> str:
        """show ID — a draft with the original message, the customer and the ticket history."""
        async with self.store.reader() as s:
            reply = await s.get(Reply, reply_id)
            if reply is None:
                raise CommandError(f"no reply #{reply_id}")
            msg = await s.get(Message, reply.message_id)
            cust = await s.get(Customer, reply.customer_id) if reply.customer_id else None
            ticket = await s.get(Ticket, reply.ticket_id) if reply.ticket_id else None
            history = []
            if ticket is not None:
                history = list(
                    (
                        await s.execute(
                            sa.select(Message)
                            .where(Message.ticket_id == ticket.id)
                            .order_by(Message.created_at.desc())  # type: ignore[attr-defined]
                            .limit(10)
                        )
                    ).scalars()
                )
        return self.render(
            "show", reply=reply, msg=msg, customer=cust, ticket=ticket, history=history
        )

    @command("approver")
    async def approve(self, actor: Actor, reply_id: int) -> str:
        """approve ID — approve a draft as written; it is then sent on its channel."""
        reply = await self._approve(actor, reply_id)
        return self.render(
            "decided", reply=reply, verb="approved", sends=self.checker.sends(reply.source)
        )

    @command("approver")
    async def edit(self, actor: Actor, reply_id: int, text: str) -> str:
        """edit ID TEXT — replace a draft's text and approve it (the audit keeps both)."""
        reply = await self._approve(actor, reply_id, text)
        return self.render(
            "decided",
            reply=reply,
            verb="edited and approved",
            sends=self.checker.sends(reply.source),
        )

    async def _approve(self, actor: Actor, reply_id: int, text: str | None = None) -> Reply:
        """Approve a draft, edited to ``text`` first if given. Either way the message needed a
        reply, and the triage model learns so."""
        async with self.store.session() as s:
            handle = await _reply_handle(s, reply_id)
            if text is None:
                reply = await responder.approve(
                    s,
                    reply_id,
                    actor.name,
                    actor.via,
                    responder=self.responder,
                    to_handle=handle,
                    checker=self.checker,
                )
            else:
                reply = await responder.edit(
                    s,
                    reply_id,
                    text,
                    actor.name,
                    actor.via,
                    responder=self.responder,
                    to_handle=handle,
                    checker=self.checker,
                )
            source = "approve" if text is None else "edit"
            await triage.label_message(
                s, reply.message_id, "needs_reply", "yes", source, actor.name, actor.via
            )
        return reply

    @command("agent")
    async def reject(self, actor: Actor, reply_id: int, reason: str) -> str:
        """reject ID REASON — reject a draft; it will never be sent.

        A reason starting "no reply needed" (or "not needed", "no need to reply") also
        teaches the triage model that such messages need no reply.
        """
        async with self.store.session() as s:
            reply = await responder.reject(s, reply_id, reason, actor.name, actor.via)
            if triage.says_no_reply(reason):
                await triage.label_message(
                    s,
                    reply.message_id,
                    "needs_reply",
                    "no",
                    "reject-no-reply",
                    actor.name,
                    actor.via,
                )
        return self.render("decided", reply=reply, verb="rejected")

    @command("viewer")
    async def tickets(self, actor: Actor, status: str = "open", limit: int = 20) -> str:
        """tickets [STATUS] [LIMIT] — tickets by status (open, pending, resolved, closed, all)."""
        async with self.store.reader() as s:
            q = sa.select(Ticket, Customer).join(Customer, Customer.id == Ticket.customer_id)  # type: ignore[arg-type]
            if status != "all":
                if status not in tickets.STATUSES:
                    raise CommandError(
                        f"unknown status {status!r}; one of {', '.join(tickets.STATUSES)}, all"
                    )
                q = q.where(Ticket.status == status)
            q = q.order_by(
                sa.text(priority.rank_sql("ticket.priority") + " DESC"),
                Ticket.priority_score.desc(),  # type: ignore[attr-defined]
                Ticket.last_message_at.desc(),  # type: ignore[attr-defined]
            ).limit(max(1, min(limit, 500)))
            rows = (await s.execute(q)).all()
        return self.render("tickets", rows=rows, status=status)

    @command("viewer")
    async def ticket(self, actor: Actor, ticket_id: int) -> str:
        """ticket ID — one ticket with its messages and replies."""
        async with self.store.reader() as s:
            t = await s.get(Ticket, ticket_id)
            if t is None:
                raise CommandError(f"no ticket #{ticket_id}")
            cust = await s.get(Customer, t.customer_id)
            msgs = list(
                (
                    await s.execute(
                        sa.select(Message)
                        .where(Message.ticket_id == ticket_id)
                        .order_by(Message.created_at)  # type: ignore[arg-type]
                    )
                ).scalars()
            )
            replies = list(
                (
                    await s.execute(
                        sa.select(Reply).where(Reply.ticket_id == ticket_id).order_by(Reply.id)
                    )
                ).scalars()  # type: ignore[arg-type]
            )
        return self.render("ticket", t=t, customer=cust, messages=msgs, replies=replies)

    @command("agent")
    async def assign(self, actor: Actor, ticket_id: int, user: str) -> str:
        """assign TICKET USER — give a ticket to a person."""
        async with self.store.session() as s:
            t = await tickets.assign(s, ticket_id, user, actor.name, actor.via)
        return f"Ticket #{t.id} is now assigned to {user}."

    @command("agent")
    async def close(self, actor: Actor, ticket_id: int) -> str:
        """close TICKET — close a ticket."""
        async with self.store.session() as s:
            prior = await s.get(Ticket, ticket_id)
            was = prior.status if prior is not None else None
            t = await tickets.set_status(s, ticket_id, "closed", actor.name, actor.via)
            if was != "closed":
                # Closed with no reply sent: its messages needed none.
                await triage.label_ticket_closed(s, t, actor.name, actor.via)
        return f"Ticket #{t.id} is closed."

    @command("agent")
    async def resolve(self, actor: Actor, ticket_id: int) -> str:
        """resolve TICKET — mark a ticket resolved (a new message from the customer reopens it)."""
        async with self.store.session() as s:
            t = await tickets.set_status(s, ticket_id, "resolved", actor.name, actor.via)
        return f"Ticket #{t.id} is resolved."

    @command("agent")
    async def mute(self, actor: Actor, source: str, duration: str) -> str:
        """mute SOURCE DURATION — stop polling a source for a while (e.g. 2h; 0 unmutes)."""
        try:
            span = parse_duration(duration)
        except ValueError as err:
            raise CommandError(f"{err}, got {duration!r}") from err
        if span > timedelta(days=30):
            raise CommandError("a source can be muted for 30 days at most")
        names = {s.name for s in self.config.sources}
        if source not in names:
            raise CommandError(
                f"no source named {source!r}; sources: {', '.join(sorted(names)) or 'none'}"
            )
        until = utcnow() + span if span else None
        async with self.store.session() as s:
            state = await s.get(SourceState, source, with_for_update=True)
            if state is None:
                state = SourceState(source=source)
                s.add(state)
            state.muted_until = until
            s.add(
                AuditEvent(
                    actor=actor.name,
                    via=actor.via,
                    action="source.mute",
                    object_type="source",
                    object_id=source,
                    detail={"until": until.isoformat() if until else None},
                )
            )
        if until is None:
            if state.paused:
                return (
                    f"Source {source} is unmuted, but it is paused for refused credentials: "
                    f"fix them, then `resume {source}`."
                )
            return f"Source {source} is polled again."
        return f"Source {source} is muted until {until:%Y-%m-%d %H:%M} UTC."

    @command("agent")
    async def relabel(self, actor: Actor, message_id: int, label: str) -> str:
        """relabel MESSAGE negative|neutral|positive — correct a message's sentiment class.

        The triage model learns from it at its next training (`triage` in the config).
        """
        value = triage.sentiment_label(label)
        async with self.store.session() as s:
            row, added = await triage.label_message(
                s, message_id, "sentiment", value, "relabel", actor.name, actor.via
            )
            if not added:
                return f"Message #{message_id} is labelled {value} already; nothing changed."
            await s.flush()
            s.add(_label_audit(actor, "triage.relabel", message_id, value, row.id))
        return f"Message #{message_id} is labelled {value}; the triage model learns from it."

    @command("agent", name="needs-reply")
    async def needs_reply(self, actor: Actor, message_id: int, answer: str) -> str:
        """needs-reply MESSAGE yes|no — say whether a message needed a reply.

        The triage model learns from it at its next training. A message that needed a reply
        and has no ticket gets one, open, for a person to answer.
        """
        value = triage.reply_label(answer)
        opened: Ticket | None = None
        done: str | None = None  # what became of a ticket it was on and that was done with
        async with self.store.session() as s:
            row, added = await triage.label_message(
                s, message_id, "needs_reply", value, "relabel", actor.name, actor.via
            )
            if added:
                await s.flush()
                s.add(_label_audit(actor, "triage.needs_reply", message_id, value, row.id))
            msg = await s.get(Message, message_id)
            if value == "yes" and msg is not None and msg.customer_id:
                # Nobody would answer it otherwise: a ticket puts it in front of a person. A
                # resolved ticket opens again; a closed one stays closed (closing is final),
                # and the message gets a ticket of its own.
                await self.store.lock_keys(s, [f"customer:{msg.customer_id}"])
                old = await s.get(Ticket, msg.ticket_id) if msg.ticket_id is not None else None
                if old is not None and old.status == "resolved":
                    await tickets.set_status(s, old.id, "open", actor.name, actor.via)
                    done = f" Its ticket #{old.id} was resolved: it is open again."
                elif old is None or old.status == "closed":
                    if old is not None:
                        done = f" Its ticket #{old.id} is closed."
                        msg.ticket_id = None
                    opened = await tickets.open_for_message(s, msg, actor.name, actor.via, self.sla)
            waiting = None
            if value == "no" and msg is not None and msg.ticket_id is not None:
                # Closing is a person's own step (the ticket may hold other messages).
                ticket = await s.get(Ticket, msg.ticket_id)
                if ticket is not None and ticket.status in ("open", "pending"):
                    waiting = (ticket.id, ticket.status)
        said = "needed a reply" if value == "yes" else "needed no reply"
        answer = f"Message #{message_id} {said}; " + (
            "the triage model learns from it." if added else "it was labelled so already."
        )
        if done is not None:
            answer += done
        if opened is not None:
            had = "Ticket" if done else "It had no ticket: ticket"
            answer += f" {had} #{opened.id} is open for it."
        if waiting is not None:
            answer += f" Its ticket #{waiting[0]} is {waiting[1]}: `close {waiting[0]}` closes it."
        return answer

    @command("viewer")
    async def explain(self, actor: Actor, message_id: int, all_: str = "") -> str:
        """explain MESSAGE_ID [ALL] — why a stored message got its ticket, draft or neither.

        Read again with the rules and the team's model in use now: its sentiment, the model's
        reading, each rule involved with the conditions that hold and the words they found
        (by file and line), and the decision. `all` lists every rule, also those that neither
        matched nor found anything.
        """
        if all_.lower() not in ("", "all"):
            raise CommandError(
                f"usage: {self.usage('explain')} (the last word can only be 'all', got {all_!r})"
            )
        team: explaining.TeamModel | str = explaining.TRIAGE_OFF
        newer, row = False, None
        async with self.store.reader() as s:
            found = await explaining.stored_message_in(s, message_id)
            if self.config.triage.enabled:
                kept = self._team
                # The model's payload is read only when a newer one has been stored.
                if kept is not None and kept.model.version == await triage.newest_version(s):
                    team = kept
                else:
                    newer, row = True, await triage.newest(s)
        if isinstance(found, str):
            raise CommandError(found)
        if newer:
            team = await explaining.team_model_of(self.config, row)
            if isinstance(team, explaining.TeamModel):
                self._team = team
        rules = self.rules
        lines = await asyncio.to_thread(
            explaining.explain,
            self.config,
            rules,
            found,
            team,
            every_rule=bool(all_),
            all_hint=f"`explain {message_id} all` lists them",
        )
        return "\n".join(lines)

    @command("viewer")
    async def sources(self, actor: Actor) -> str:
        """sources — every configured source with its state (ok, failing, paused, muted)."""
        async with self.store.reader() as s:
            rows = {r.source: r for r in (await s.execute(sa.select(SourceState))).scalars()}
        return self.render("sources", sources=self.config.sources, states=rows, now=utcnow())

    @command("admin")
    async def resume(self, actor: Actor, source: str) -> str:
        """resume SOURCE — poll a source paused for refused credentials again (fix them first)."""
        self._known_source(source)
        async with self.store.session() as s:
            state = await s.get(SourceState, source, with_for_update=True)
            if state is None or not state.paused:
                raise CommandError(f"source {source} is not paused; nothing changed")
            reason = state.paused_reason
            state.paused = False
            state.paused_reason = None
            state.health = "ok"
            state.consecutive_failures = 0
            state.failing_since = None
            state.updated_at = utcnow()
            s.add(
                AuditEvent(
                    actor=actor.name,
                    via=actor.via,
                    action="source.resume",
                    object_type="source",
                    object_id=source,
                    detail={"was": reason},
                )
            )
        return (
            f"Source {source} is resumed: the daemon polls it again at its next interval "
            "(a refusal pauses it again)."
        )

    def _known_source(self, source: str) -> None:
        names = {s.name for s in self.config.sources}
        if source not in names:
            raise CommandError(
                f"no source named {source!r}; sources: {', '.join(sorted(names)) or 'none'}"
            )

    @command("viewer")
    async def report(self, actor: Actor, period: str = "7d") -> str:
        """report [PERIOD] — how customers felt and how the service did, e.g. report 24h.

        PERIOD (7d unless given; 1h to 366d) ends at the last whole hour (up to 2d) or day in
        the brand's time zone and is compared with the one before it.
        The whole report, with charts, is `socialcrm report` on the command line.
        """
        from socialcrm.reports import build_report, last_complete, summary

        try:
            span = parse_period(period, timedelta(days=366))
        except ValueError as err:
            raise CommandError(str(err)) from err
        found = await build_report(
            self.store,
            period=span,
            end=last_complete(utcnow(), span, self.config.brand.timezone),
            brand=self.config.brand.name,
            tz=self.config.brand.timezone,
        )
        return summary(found, templates_dir=self.config.report_templates())

    @command("viewer")
    async def customer(self, actor: Actor, who: str) -> str:
        """customer HANDLE|EMAIL|ID — a customer's record, identities and recent tickets."""
        async with self.store.reader() as s:
            cust = await find_customer(s, who)
            if cust is None:
                raise CommandError(f"no customer matches {who!r}")
            idents = list(
                (
                    await s.execute(sa.select(Identity).where(Identity.customer_id == cust.id))
                ).scalars()
            )
            recent = list(
                (
                    await s.execute(
                        sa.select(Ticket)
                        .where(Ticket.customer_id == cust.id)
                        .order_by(Ticket.opened_at.desc())  # type: ignore[attr-defined]
                        .limit(10)
                    )
                ).scalars()
            )
            stats = (
                await s.execute(
                    sa.select(sa.func.count(), sa.func.avg(Message.sentiment)).where(
                        Message.customer_id == cust.id
                    )
                )
            ).one()
        return self.render(
            "customer", c=cust, identities=idents, tickets=recent, count=stats[0], mood=stats[1]
        )


async def find_customer(s: Any, who: str) -> Customer | None:
    """A customer by id, email or handle (with or without @), following merges."""
    who = who.strip()
    cust: Customer | None = None
    if who.isascii() and who.isdigit():
        cust = await s.get(Customer, int(who))
    elif "@" in who.strip("@"):
        key = who.lower()
        ident = (
            await s.execute(sa.select(Identity).where(Identity.email == key).limit(1))
        ).scalar()
        if ident is not None:
            cust = await s.get(Customer, ident.customer_id)
        else:
            cust = (
                await s.execute(sa.select(Customer).where(Customer.email == key).limit(1))
            ).scalar()
        if cust is None:  # a Mastodon handle looks like an address
            cust = await _by_handle(s, who)
    else:
        cust = await _by_handle(s, who)
    while cust is not None and cust.merged_into_id is not None:
        cust = await s.get(Customer, cust.merged_into_id)
    return cust


async def _by_handle(s: Any, who: str) -> Customer | None:
    key = who.strip().lstrip("@").lower()
    ident = (
        await s.execute(sa.select(Identity).where(Identity.handle_key == key).limit(1))
    ).scalar()
    return await s.get(Customer, ident.customer_id) if ident is not None else None


async def _reply_handle(s: Any, reply_id: int) -> str | None:
    row = (
        await s.execute(
            sa.select(Message.author_handle)
            .join(Reply, Reply.message_id == Message.id)
            .where(Reply.id == reply_id)
        )
    ).first()
    return row[0] if row else None


def _label_audit(
    actor: Actor, action: str, message_id: int, value: str, label_id: int | None
) -> AuditEvent:
    return AuditEvent(
        actor=actor.name,
        via=actor.via,
        action=action,
        object_type="message",
        object_id=str(message_id),
        detail={"value": value, "label": label_id},
    )


def said(err: Exception) -> str:
    """What an error says, for a person: a KeyError's message without the quotes its str()
    adds (others as they are: "got 'angry'" keeps its closing quote)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err)


def _usage(fn: Callable[..., Any], name: str) -> str:
    """``name`` and its arguments, from the signature (optional ones in brackets)."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    shown = " ".join(
        f"[{p.name.rstrip('_').upper()}]"
        if p.default is not inspect.Parameter.empty
        else p.name.rstrip("_").upper()
        for p in params
    )
    return f"{name} {shown}".strip()


def _doc(fn: Callable[..., Any]) -> str:
    return inspect.cleandoc(fn.__doc__ or "")


def _bind(fn: Callable[..., Any], name: str, rest: str) -> list[Any]:
    params = list(inspect.signature(fn).parameters.values())[1:]
    words = rest.split()
    out: list[Any] = []
    for i, p in enumerate(params):
        last = i == len(params) - 1
        if not words:
            if p.default is inspect.Parameter.empty:
                raise CommandError(f"usage: {_usage(fn, name)}")
            break
        if last and p.annotation in ("str", str):
            # The last text argument takes the rest of the line as typed (outer quotes dropped).
            value: Any = rest.split(None, i)[i] if i else rest
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            words = []
        else:
            value = words.pop(0)
        if p.annotation in ("int", int):
            value = value.lstrip("#")
            if not (value.isascii() and value.isdigit()):
                raise CommandError(f"{p.name.replace('_', ' ')} must be a number, got {value!r}")
            value = int(value)
        out.append(value)
    if words:
        raise CommandError(f"too many words for {name}; usage: {_usage(fn, name)}")
    return out


def error_reference() -> str:
    """A short reference to find an unexpected error in the log."""
    return uuid.uuid4().hex[:8]
