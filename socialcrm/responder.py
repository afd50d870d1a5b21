"""Replies: drafts from templates, the channel's constraints on them, and the approval state
machine.

A reply is drafted from a jinja2 template in the sandboxed environment (what a customer wrote
is data, never template code), checked against its channel's constraints (the connector's
``check_reply``: length as the platform counts it, visibility, reply permission; the configured
length limit for a connector without one), and waits for a person with the approver role. A
blocking constraint stops the approval. Nothing here sends anything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from socialcrm.approvals import REPLY_ORDER
from socialcrm.config import Config, ResponderConfig, SourceConfig
from socialcrm.connector import (
    Connector,
    InboundMessage,
    OutboundReply,
    ReplyIssue,
    load_connector,
)
from socialcrm.models import AuditEvent, Identity, Message, Reply, Ticket, utcnow
from socialcrm.rules import RuleError, RuleSet
from socialcrm.sender import outbound_reply
from socialcrm.templating import template_environment, template_position

#: draft -> approved | rejected; approved -> sending -> sent | failed | needs_check
REPLY_STATUSES = ("draft", "approved", "rejected", "sending", "sent", "failed", "needs_check")


class ReplyError(ValueError):
    """A reply operation that is not allowed; the message says why, for the person who asked."""


@dataclass(frozen=True, slots=True)
class Draft:
    """A rendered reply, and what is wrong with it if anything."""

    text: str
    template: str
    problem: str | None = None


def compile_all(env: jinja2.Environment, prefix: str = "replies/") -> list[str]:
    """Compile every template under ``prefix``; one ``file:line: message`` per broken one."""
    problems = []
    for name in env.list_templates(filter_func=lambda n: n.startswith(prefix)):
        try:
            env.get_template(name)
        except jinja2.TemplateSyntaxError as err:
            problems.append(f"{template_position(err)}: {err.message}")
        except (jinja2.TemplateError, OSError, UnicodeDecodeError) as err:  # unreadable
            problems.append(f"{name}: cannot be read: {err}")
    return problems


def reply_problems(responder: Responder, template_names: set[str]) -> list[str]:
    """What keeps the reply templates from serving rules that draft with ``template_names``:
    templates that do not compile, and names no template has."""
    problems = compile_all(responder.env)
    if problems:  # a name is looked up by compiling its template
        return problems
    missing = sorted(t for t in template_names if not responder.known(t))
    return (
        [f"rules name reply templates that do not exist: {', '.join(missing)}"] if missing else []
    )


class ReplyTemplateError(RuleError):
    """Reply templates that cannot serve the rules; one problem per line (``reply_problems``)."""


def load_checked(config: Config) -> tuple[RuleSet, Responder]:
    """The configured rules and reply templates, checked together, as the daemon starts and
    reloads with them: RuleError for rule files that do not load, ReplyTemplateError for
    templates that do not compile or that a rule names and none has."""
    rules = RuleSet.load(config.rule_paths())
    responder = Responder(config.responder, config.brand.name, config.base_dir)
    problems = reply_problems(responder, rules.template_names())
    if problems:
        raise ReplyTemplateError(problems)
    return rules, responder


def reply_length(channel: str, text: str, to_handle: str | None) -> int:
    """Characters the platform counts: on X and Mastodon the @handle prefix counts too."""
    if channel in ("x", "mastodon") and to_handle and not text.startswith(f"@{to_handle}"):
        return len(text) + len(to_handle) + 2
    return len(text)


class Responder:
    """Drafts replies from templates, per channel, within each channel's limits."""

    def __init__(self, config: ResponderConfig, brand: str, base_dir: Path | None = None) -> None:
        extra = config.templates_dir
        if extra is not None and not extra.is_absolute() and base_dir is not None:
            extra = base_dir / extra
        self.env = template_environment(extra)
        #: The team's own folder, whose templates win over the shipped ones.
        self.own_dir = extra
        self.limits = config.channel_limits
        self.signature = config.signature.replace("{brand}", brand)
        self.brand = brand
        self._cache: dict[tuple[str, str], jinja2.Template] = {}

    def known(self, template: str) -> bool:
        """True when a reply template of that name exists."""
        try:
            self._template(template, "email")
        except jinja2.TemplateNotFound:
            return False
        return True

    def _template(self, name: str, channel: str) -> jinja2.Template:
        key = (name, channel)
        tpl = self._cache.get(key)
        if tpl is None:
            # A channel's own variant (short for X) wins over the general one, and the team's
            # folder over the shipped one: their `apology.j2` serves X too rather than the
            # shipped `apology.x.j2` (their `apology.x.j2`, if they wrote one, serves X).
            names = [f"replies/{name}.{channel}.j2", f"replies/{name}.j2"]
            own = self.own_dir
            if own is not None:
                names = [n for n in names if (own / n).is_file()] + names
            tpl = self.env.select_template(names)
            self._cache[key] = tpl
        return tpl

    def draft(self, template: str, channel: str, context: dict[str, Any]) -> Draft:
        """Render a draft; a draft over the channel limit comes back with its problem named."""
        try:
            text = self._template(template, channel).render(
                brand=self.brand, signature=self.signature, channel=channel, **context
            )
        except jinja2.TemplateNotFound:
            return Draft("", template, f"no reply template named {template!r}")
        except (jinja2.TemplateError, jinja2.exceptions.SecurityError) as err:
            return Draft(
                "",
                template,
                f"template {template!r} failed at {template_position(err)}: {err}; "
                "write this reply yourself",
            )
        text = text.strip()
        problem = self.check(channel, text, context.get("handle"))
        return Draft(text, template, problem)

    def check(self, channel: str, text: str, to_handle: str | None) -> str | None:
        """What is wrong with a reply text for this channel, or None."""
        if not text.strip():
            return "the reply is empty"
        limit = self.limits.get(channel)
        if limit == 0:
            return f"{channel} does not take replies"
        if limit is not None:
            n = reply_length(channel, text, to_handle)
            if n > limit:
                return f"too long for {channel}: {n} characters, the limit is {limit}"
        return None


class ReplyChecker:
    """Each source's constraints on a reply, from its connector's ``check_reply``.

    The connector class is found by entry point and given the source's validated settings;
    nothing is built or opened (no session, no I/O). A connector without ``check_reply`` gets
    the configured length limit (:meth:`Responder.check`).
    """

    def __init__(self, sources: Sequence[SourceConfig], responder: Responder) -> None:
        self.sources = {source.name: source for source in sources}
        self.responder = responder
        #: Each source asked about: its connector class and validated settings, or None.
        self._found: dict[str, tuple[type[Connector], Any] | None] = {}

    def _configured(self, source: str) -> tuple[type[Connector], Any] | None:
        """A configured source's connector class and its validated settings, found once;
        None for a source not configured, not installed or with bad settings (the source
        itself reports those when it starts)."""
        if source in self._found:
            return self._found[source]
        found = None
        cfg = self.sources.get(source)
        if cfg is not None:
            try:
                cls = load_connector(cfg.type)
                found = (cls, cls.Config.model_validate(cfg.settings()))
            except (LookupError, ValidationError):
                found = None
        self._found[source] = found
        return found

    def sends(self, source: str) -> bool:
        """Whether this config has ``source``, enabled, with a connector that sends replies
        with these settings (its ``sends_with``, where it has one). The daemon that sends
        reads its own config: this is what this one says of it."""
        found = self._configured(source)
        if found is None or not self.sources[source].enabled:
            return False
        cls, settings = found
        if not callable(getattr(cls, "send", None)):
            return False
        hook = getattr(cls, "sends_with", None)
        return hook is None or bool(hook(settings))

    def _check_of(self, source: str) -> Callable[[OutboundReply], list[ReplyIssue]] | None:
        found = self._configured(source)
        hook = getattr(found[0], "check_reply", None) if found is not None else None
        return None if found is None or hook is None else functools.partial(hook, found[1])

    def issues(self, source: str, reply: OutboundReply) -> list[ReplyIssue]:
        """What the channel says about ``reply``, sent through ``source``."""
        if not reply.text.strip():
            return [ReplyIssue(reason="the reply is empty", blocking=True)]
        check = self._check_of(source)
        if check is None:
            problem = self.responder.check(reply.channel, reply.text, reply.to_handle)
            return [ReplyIssue(reason=problem, blocking=True)] if problem else []
        return list(check(reply))

    def draft_issues(self, source: str, msg: InboundMessage, text: str) -> list[ReplyIssue]:
        """The issues of a new draft answering ``msg`` (not stored yet: no reply id)."""
        outbound = OutboundReply(
            reply_id=0,
            channel=msg.channel,
            text=text,
            in_reply_to=msg.external_id,
            to_handle=msg.author.handle,
            to_email=msg.author.email,
            original=msg.raw,
        )
        return self.issues(source, outbound)

    async def issues_of(self, session: AsyncSession, reply: Reply, text: str) -> list[ReplyIssue]:
        """The issues of a stored reply if its text were ``text``."""
        msg = await session.get(Message, reply.message_id)
        if msg is None:
            return []
        ticket = await session.get(Ticket, reply.ticket_id) if reply.ticket_id else None
        ident = await session.get(Identity, msg.identity_id) if msg.identity_id else None
        outbound = outbound_reply(reply, msg, ticket, ident).model_copy(update={"text": text})
        return self.issues(reply.source, outbound)


def stored_issues(issues: Sequence[ReplyIssue]) -> list[dict[str, Any]]:
    """Issues as ``Reply.issues`` keeps them."""
    return [issue.model_dump() for issue in issues]


def blocking_reason(issues: Sequence[ReplyIssue]) -> str | None:
    """Why a reply cannot be approved as it stands, or None."""
    reasons = [issue.reason for issue in issues if issue.blocking]
    return "; ".join(reasons) if reasons else None


async def _load(session: AsyncSession, reply_id: int) -> Reply:
    reply = await session.get(Reply, reply_id, with_for_update=True)
    if reply is None:
        raise ReplyError(f"no reply #{reply_id}")
    return reply


def _audit(reply: Reply, actor: str, via: str, action: str, **detail: Any) -> AuditEvent:
    return AuditEvent(
        actor=actor,
        via=via,
        action=action,
        object_type="reply",
        object_id=str(reply.id),
        detail=detail,
    )


async def approve(
    session: AsyncSession,
    reply_id: int,
    actor: str,
    via: str,
    *,
    responder: Responder | None = None,
    to_handle: str | None = None,
    checker: ReplyChecker | None = None,
    now: datetime | None = None,
) -> Reply:
    """Approve a draft as it stands. Only drafts can be approved; a blocking constraint of
    its channel (``checker``) refuses it with the reason."""
    reply = await _load(session, reply_id)
    if reply.status != "draft":
        raise ReplyError(f"reply #{reply_id} is {reply.status}, not a draft; nothing changed")
    text = reply.final_text or reply.draft_text
    if checker is not None:
        issues = await checker.issues_of(session, reply, text)
        if problem := blocking_reason(issues):
            raise ReplyError(f"reply #{reply_id} cannot be approved: {problem}; edit it first")
        reply.issues = stored_issues(issues)
    elif responder is not None and (problem := responder.check(reply.channel, text, to_handle)):
        raise ReplyError(f"reply #{reply_id} cannot be approved: {problem}; edit it first")
    reply.status = "approved"
    reply.final_text = text
    reply.decided_by = actor
    reply.decided_at = now or utcnow()
    session.add(_audit(reply, actor, via, "reply.approve", text=text))
    return reply


async def edit(
    session: AsyncSession,
    reply_id: int,
    text: str,
    actor: str,
    via: str,
    *,
    responder: Responder | None = None,
    to_handle: str | None = None,
    checker: ReplyChecker | None = None,
    now: datetime | None = None,
) -> Reply:
    """Change a draft's text and approve it; the audit keeps both texts. A blocking
    constraint of its channel (``checker``) on the new text changes nothing."""
    text = text.strip()
    reply = await _load(session, reply_id)
    if reply.status != "draft":
        raise ReplyError(f"reply #{reply_id} is {reply.status}, not a draft; nothing changed")
    if not text:
        raise ReplyError("the new text is empty; nothing changed")
    if checker is not None:
        issues = await checker.issues_of(session, reply, text)
        if problem := blocking_reason(issues):
            raise ReplyError(f"reply #{reply_id} not changed: {problem}")
        reply.issues = stored_issues(issues)
    elif responder is not None and (problem := responder.check(reply.channel, text, to_handle)):
        raise ReplyError(f"reply #{reply_id} not changed: {problem}")
    before = reply.final_text or reply.draft_text
    reply.final_text = text
    reply.edited = True
    reply.status = "approved"
    reply.decided_by = actor
    reply.decided_at = now or utcnow()
    session.add(_audit(reply, actor, via, "reply.edit", before=before, after=text))
    return reply


async def reject(
    session: AsyncSession,
    reply_id: int,
    reason: str,
    actor: str,
    via: str,
    now: datetime | None = None,
) -> Reply:
    """Reject a draft with a reason; it will never be sent."""
    reason = reason.strip()
    if not reason:
        raise ReplyError("say why the reply is rejected")
    reply = await _load(session, reply_id)
    if reply.status != "draft":
        raise ReplyError(f"reply #{reply_id} is {reply.status}, not a draft; nothing changed")
    reply.status = "rejected"
    reply.rejected_reason = reason
    reply.decided_by = actor
    reply.decided_at = now or utcnow()
    session.add(_audit(reply, actor, via, "reply.reject", reason=reason))
    return reply


def queue_order() -> list[Any]:
    """Order of drafts in the approval queue within a priority label: highest score first,
    then oldest first (``approvals.REPLY_ORDER``)."""
    return [sa.text(REPLY_ORDER)]
