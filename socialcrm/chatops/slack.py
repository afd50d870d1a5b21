"""Slack adapter: slash commands, card buttons and modals, all through the one command layer.

Every request is verified before anything else: the v0 signature of the raw body with the
app's signing secret (``slack_sdk.signature.SignatureVerifier``), a timestamp no older than
``slack.max_age_s``, and no replay of a timestamp+signature already seen in that window.
Refusals are 401 and change nothing; malformed payloads are 400 and change nothing.

Slack waits 3 seconds for an answer. A command that is done within :data:`INLINE_S` is
answered inline; otherwise the request is acknowledged at once and the answer is POSTed to
the request's ``response_url`` (or, after a modal, sent as an ephemeral message) when ready.

The helpers that turn a chat user into an :class:`Actor` and run a line for them
(:func:`chat_answer`) are shared with the Mattermost adapter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import aiohttp
import sqlalchemy as sa
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from socialcrm.chatops.cards import (
    EDIT_CALLBACK,
    INPUT_LIMIT,
    REASON_INPUT,
    REJECT_CALLBACK,
    TEXT_INPUT,
    CardNotifier,
    edit_modal,
    escape_mrkdwn,
    load_card,
    reject_modal,
)
from socialcrm.chatops.commands import (
    ROLES,
    Actor,
    CommandError,
    Commands,
    error_reference,
    said,
)
from socialcrm.config import Config
from socialcrm.models import AuditEvent, Reply
from socialcrm.replay import ReplayGuard, request_key
from socialcrm.responder import ReplyError
from socialcrm.templating import template_environment
from socialcrm.tickets import TicketError

log = logging.getLogger(__name__)

#: Answer inline when the work is done by then; Slack gives up on an answer after 3 s.
INLINE_S: Final = 2.0
#: How long a POST to a response_url may take.
RESPONSE_TIMEOUT_S: Final = 10.0
#: How long a stop waits for answers still being worked on.
DRAIN_S: Final = 10.0
#: Slack's limit on a message's text.
MESSAGE_LIMIT: Final = 39000

SLACK_ADAPTER: Final[web.AppKey[SlackAdapter]] = web.AppKey("socialcrm_slack_adapter")
Platform = Literal["slack", "mattermost"]
T = TypeVar("T")

_TEMPLATES: Final = template_environment(None)
_APPROVING: Final = ("approve", "edit")


def render(template: str, **context: Any) -> str:
    """Render a chat answer from ``templates/chat``."""
    return _TEMPLATES.get_template(f"chat/{template}.j2").render(**context).strip()


# -- shared with the Mattermost adapter --------------------------------------------------------


def chat_actor(config: Config, platform: Platform, user_id: str) -> Actor | None:
    """The staff member behind a chat user id, as an Actor; None for a stranger."""
    member = config.staff_by_chat_id(platform, user_id)
    return Actor(member.name, member.role, platform) if member is not None else None


def _command_name(line: str) -> str:
    words = line.split()
    return words[0].lower()[:64] if words else "help"


async def refuse_stranger(
    commands: Commands, platform: Platform, user_id: str, user_name: str | None, line: str
) -> str:
    """Audit an attempt by someone who is not staff, and say so politely."""
    async with commands.store.session() as s:
        s.add(
            AuditEvent(
                actor=f"{platform}:{user_id}"[:128],
                via=platform,
                action="command.refused",
                object_type="command",
                object_id=_command_name(line),
                detail={
                    "line": line[:500],
                    "user_id": user_id,
                    "user_name": (user_name or "")[:128],
                    "reason": "not staff",
                },
            )
        )
    return render("not_staff", platform=platform, user_id=user_id)


async def check_role(commands: Commands, actor: Actor, name: str, line: str) -> None:
    """Refuse (audited, in the command layer's words) when ``actor`` may not run ``name``."""
    _fn, role = commands.table[name]
    rank = ROLES.index(actor.role) if actor.role in ROLES else -1
    if rank < ROLES.index(role):
        async with commands.store.session() as s:
            s.add(
                AuditEvent(
                    actor=actor.name,
                    via=actor.via,
                    action="command.refused",
                    object_type="command",
                    object_id=name,
                    detail={"line": line[:500]},
                )
            )
        raise CommandError(
            f"sorry, {name} needs the {role} role and you are {actor.role or 'not staff'}"
        )


async def invoke(commands: Commands, actor: Actor, name: str, *args: Any) -> str:
    """Run one command with arguments already parsed (a button or a modal, not typed text)."""
    await check_role(commands, actor, name, " ".join([name, *map(str, args)]))
    fn, _role = commands.table[name]
    try:
        answer: str = await fn(actor, *args)
    except (ReplyError, TicketError, LookupError, ValueError) as err:
        raise CommandError(said(err)) from err
    return answer


def _notify_approved(on_approved: Callable[[int], None] | None, reply_id: int) -> None:
    if on_approved is None:
        return
    try:
        on_approved(reply_id)
    except Exception:  # a broken hook must not turn a done approval into an error
        log.exception("on_approved hook failed for reply %s", reply_id)


def _failure(what: str) -> str:
    ref = error_reference()
    log.exception("%s failed (reference %s)", what, ref)
    return render("failed", ref=ref)


async def _guarded(work: Awaitable[T], what: str) -> T | str:
    try:
        return await work
    except Exception:  # anything unexpected: a short answer, the details in the log
        return _failure(what)


async def chat_answer(
    commands: Commands,
    config: Config,
    platform: Platform,
    user_id: str,
    user_name: str | None,
    line: str,
    on_approved: Callable[[int], None] | None = None,
) -> str:
    """Run a typed command line for a chat user; the answer is text, refusals included."""
    actor = chat_actor(config, platform, user_id)
    if actor is None:
        return await _guarded(
            refuse_stranger(commands, platform, user_id, user_name, line), "refusing a stranger"
        )
    try:
        answer = await commands.run(actor, line)
    except CommandError as err:
        return str(err)
    except Exception:  # anything else: a short answer, the details in the log
        return _failure(f"{platform} command {_command_name(line)!r}")
    words = line.split()
    number = words[1].lstrip("#") if len(words) > 1 else ""
    if number.isascii() and number.isdigit() and words[0].lower() in _APPROVING:
        _notify_approved(on_approved, int(number))
    return answer


# -- Slack -------------------------------------------------------------------------------------


class BadRequest(Exception):
    """A request Slack would never send; answered 400 with the reason."""


def _form(body: bytes) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)
        )
    except (UnicodeDecodeError, ValueError) as err:
        raise BadRequest("the body is not a form") from err
    return dict(pairs)


def _need(data: dict[str, Any], key: str, kind: type = str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise BadRequest(f"missing or bad field {key!r}")
    return value


def _unescape(text: str) -> str:
    # Slack sends a slash command's text with &, < and > escaped.
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response({"status": status, "detail": detail}, status=status)


class Replayed(Exception):
    """A signed request that was let in before (answered 401 when there is still time)."""


@dataclass(frozen=True, slots=True)
class _Seen:
    """A verified request, to be remembered until its window has passed."""

    key: str
    expires_at: datetime
    now: datetime


def _replayed() -> web.Response:
    log.warning("refused a Slack request: replayed request")
    return _problem(401, "replayed request")


class SlackAdapter:
    """The Slack endpoints, with their replay window and the answers still being worked on."""

    def __init__(
        self,
        commands: Commands,
        config: Config,
        *,
        on_approved: Callable[[int], None] | None = None,
        cards: CardNotifier | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if config.slack is None:
            raise ValueError("Slack is not configured (no slack: section)")
        self.commands = commands
        self.config = config
        self.on_approved = on_approved
        self.cards = cards
        self.session = session or (cards.client.session if cards is not None else None)
        if self.session is None:
            raise ValueError(
                "the Slack adapter needs an aiohttp session for response_url answers "
                "(session=, or a CardNotifier whose client has one)"
            )
        self.verifier = SignatureVerifier(config.slack.signing_secret.get_secret_value())
        self.max_age_s = config.slack.max_age_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self.replays = ReplayGuard(commands.store)

    # -- verification ----------------------------------------------------------------------

    def _refusal(self, request: web.Request, body: bytes) -> str | _Seen:
        """Why a request is refused (bad or missing signature, too old), or what to remember."""
        ts = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        if not ts or not signature:
            return "missing signature"
        # ASCII digits only: str.isdigit() also takes '²' and '٣', which int() refuses or reads.
        if not (ts.isascii() and ts.isdigit()):
            return "bad timestamp"
        now = time.time()
        if abs(now - int(ts)) > self.max_age_s:
            return "request too old"
        try:
            valid = self.verifier.is_valid(body=body, timestamp=ts, signature=signature)
        except UnicodeDecodeError:  # Slack signs UTF-8 text; anything else is not from Slack
            valid = False
        if not valid:
            return "bad signature"
        return _Seen(
            request_key("slack", ts, signature),
            datetime.fromtimestamp(int(ts) + self.max_age_s, UTC),
            datetime.fromtimestamp(now, UTC),
        )

    async def _verified(self, request: web.Request) -> tuple[bytes, _Seen] | web.Response:
        body = await request.read()
        refusal = self._refusal(request, body)
        if isinstance(refusal, str):
            log.warning("refused a Slack request to %s: %s", request.path, refusal)
            return _problem(401, refusal)
        return body, refusal

    async def _once(self, seen: _Seen, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` unless the request was let in before (``Replayed``).

        The requests seen are kept in the store (``socialcrm.replay``), so a restart or another
        daemon on the same database still knows them until their window has passed. Asked
        inside the answer's deadline: a slow database delays the answer, it does not fail it.
        """
        try:
            first = await self.replays.admit(seen.key, expires_at=seen.expires_at, now=seen.now)
        except BaseException:
            work.close()
            raise
        if not first:
            work.close()
            raise Replayed
        return await work

    # -- answers now or later ----------------------------------------------------------------

    def _later(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a Slack answer could not be delivered", exc_info=task.exception())

    async def _within_deadline(
        self,
        seen: _Seen,
        work: Coroutine[Any, Any, T],
        deliver: Callable[[T], Awaitable[None]],
    ) -> tuple[bool, T | None]:
        """``(True, result)`` if the work is done within INLINE_S; else it goes on, delivered.

        Raises ``Replayed`` (within the deadline) for a request let in before.
        """
        task = asyncio.create_task(self._once(seen, work))

        async def deliver_when_done() -> None:
            try:
                result = await task
            except Replayed:
                log.warning("refused a Slack request: replayed request")
                return
            await deliver(result)

        try:
            done, _ = await asyncio.wait({task}, timeout=INLINE_S)
        except asyncio.CancelledError:
            self._later(deliver_when_done())
            raise
        if task in done:
            return True, task.result()
        self._later(deliver_when_done())
        return False, None

    async def _respond(self, response_url: str, text: str | None) -> None:
        """An ephemeral answer to the person, through the request's response_url."""
        if not text:
            return
        assert self.session is not None
        body = {
            "response_type": "ephemeral",
            "replace_original": False,
            "text": escape_mrkdwn(text)[:MESSAGE_LIMIT],
        }
        try:
            async with self.session.post(
                response_url, json=body, timeout=aiohttp.ClientTimeout(total=RESPONSE_TIMEOUT_S)
            ) as resp:
                if resp.status >= 300:
                    log.warning("Slack refused an answer to a response_url: HTTP %s", resp.status)
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("cannot deliver an answer to Slack: %r", err)

    async def _tell(self, channel: str | None, user_id: str, text: str | None) -> None:
        """An ephemeral message to one person in a channel (after a modal has closed)."""
        if not text or not channel or self.cards is None:
            return
        try:
            await self.cards.client.chat_postEphemeral(
                channel=channel, user=user_id, text=escape_mrkdwn(text)[:MESSAGE_LIMIT]
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as err:
            log.warning("cannot tell %s the outcome in Slack: %r", user_id, err)

    async def drain(self, timeout_s: float = DRAIN_S) -> None:
        """Wait for answers still being worked on; cancel what is left after ``timeout_s``."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.replays.flush()

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.drain()

    # -- slash commands ------------------------------------------------------------------------

    async def slash_command(self, request: web.Request) -> web.Response:
        """``POST /slack/commands``: run the text as a command for the person who typed it."""
        verified = await self._verified(request)
        if isinstance(verified, web.Response):
            return verified
        body, seen = verified
        try:
            form = _form(body)
            user_id = _need(form, "user_id")
            _need(form, "command")
            text = _unescape(_need(form, "text"))
            response_url = _need(form, "response_url")
        except BadRequest as err:
            return _problem(400, str(err))
        if not user_id:
            return _problem(400, "missing or bad field 'user_id'")
        work = chat_answer(
            self.commands,
            self.config,
            "slack",
            user_id,
            form.get("user_name"),
            text,
            self._approved,
        )
        try:
            done, answer = await self._within_deadline(
                seen, work, lambda text: self._respond(response_url, text)
            )
        except Replayed:
            return _replayed()
        if not done:
            answer = render("working")
        return web.json_response(
            {"response_type": "ephemeral", "text": escape_mrkdwn(answer or "")[:MESSAGE_LIMIT]}
        )

    def _approved(self, reply_id: int) -> None:
        _notify_approved(self.on_approved, reply_id)
        if self.cards is not None:
            self.cards.wake()

    # -- buttons and modals ----------------------------------------------------------------------

    async def interaction(self, request: web.Request) -> web.Response:
        """``POST /slack/interactions``: a card's buttons (block_actions) and modals."""
        verified = await self._verified(request)
        if isinstance(verified, web.Response):
            return verified
        body, seen = verified
        try:
            form = _form(body)
            try:
                payload = json.loads(_need(form, "payload"))
            except ValueError as err:
                raise BadRequest("the payload is not JSON") from err
            if not isinstance(payload, dict):
                raise BadRequest("the payload is not a JSON object")
            user = _need(payload, "user", dict)
            user_id = _need(user, "id")
            kind = payload.get("type")
            if kind == "block_actions":
                return await self._block_action(payload, user_id, user, seen)
            if kind == "view_submission":
                return await self._view_submission(payload, user_id, user, seen)
            raise BadRequest(f"unsupported interaction type {kind!r}")
        except BadRequest as err:
            return _problem(400, str(err))
        except Replayed:
            return _replayed()

    async def _block_action(
        self, payload: dict[str, Any], user_id: str, user: dict[str, Any], seen: _Seen
    ) -> web.Response:
        actions = payload.get("actions")
        if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
            raise BadRequest("missing actions")
        action = actions[0]
        name = action.get("action_id")
        if name not in ("approve", "edit", "reject"):
            raise BadRequest(f"unknown action {name!r}")
        value = action.get("value")
        if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
            raise BadRequest("the button carries no reply id")
        reply_id = int(value)
        response_url = _need(payload, "response_url")
        container = payload.get("container") if isinstance(payload.get("container"), dict) else {}
        channel = str(container.get("channel_id") or "")
        ts = str(container.get("message_ts") or "")
        if not await self._on_its_card(reply_id, channel, ts):
            log.warning("refused a Slack %s of reply %s from another message", name, reply_id)
            raise BadRequest(f"this button is not on the card of reply #{reply_id}")
        trigger_id = payload.get("trigger_id")
        if name != "approve" and not isinstance(trigger_id, str):
            raise BadRequest("missing field 'trigger_id'")

        actor = chat_actor(self.config, "slack", user_id)
        work: Coroutine[Any, Any, str | None]
        if actor is None:
            work = refuse_stranger(
                self.commands, "slack", user_id, user.get("username"), f"{name} {reply_id}"
            )
        elif name == "approve":
            work = self._decide(actor, "approve", reply_id)
        else:
            work = self._open_modal(actor, name, reply_id, str(trigger_id), channel, ts)
        done, answer = await self._within_deadline(
            seen,
            _guarded(work, f"Slack {name} button"),
            lambda text: self._respond(response_url, text),
        )
        if done and answer:
            self._later(self._respond(response_url, answer))
        return web.Response(status=200)

    async def _on_its_card(self, reply_id: int, channel: str, ts: str) -> bool:
        """Whether a button naming ``reply_id`` sits on that reply's card (channel and ts)."""
        if not channel or not ts:
            return False
        async with self.commands.store.reader() as s:
            row = (
                await s.execute(
                    sa.select(Reply.chat_channel, Reply.chat_ts).where(Reply.id == reply_id)
                )
            ).first()
        return row is not None and (row.chat_channel, row.chat_ts) == (channel, ts)

    async def _decide(self, actor: Actor, name: str, reply_id: int, *args: str) -> str:
        """Run approve/edit/reject for a card; the answer for the person."""
        return (await self._decide_ok(actor, name, reply_id, *args))[1]

    async def _decide_ok(
        self, actor: Actor, name: str, reply_id: int, *args: str
    ) -> tuple[bool, str]:
        try:
            answer = await invoke(self.commands, actor, name, reply_id, *args)
        except CommandError as err:
            return False, str(err)
        except Exception:  # anything else: a short answer, the details in the log
            return False, _failure(f"Slack {name} of reply {reply_id}")
        if name in _APPROVING:
            _notify_approved(self.on_approved, reply_id)
        if self.cards is not None:
            self.cards.wake()
        return True, answer

    async def _open_modal(
        self, actor: Actor, name: str, reply_id: int, trigger_id: str, channel: str, ts: str
    ) -> str | None:
        """Open the Edit or Reject modal for a draft; an answer only if it cannot be opened."""
        try:
            await check_role(self.commands, actor, name, f"{name} {reply_id}")
        except CommandError as err:
            return str(err)
        card = await load_card(self.commands.store, reply_id)
        if card is None:
            return f"no reply #{reply_id}"
        if card.reply.status != "draft":
            return f"reply #{reply_id} is {card.reply.status}, not a draft; nothing changed"
        if self.cards is None:
            return render("dialog_failed", reply_id=reply_id, reason="Slack is not set up for it")
        text = card.reply.final_text or card.reply.draft_text
        if name == "edit" and len(text) > INPUT_LIMIT:
            return render(
                "dialog_failed",
                reply_id=reply_id,
                reason="too_long",
                length=len(text),
                limit=INPUT_LIMIT,
            )
        view = (edit_modal if name == "edit" else reject_modal)(card, channel, ts)
        try:
            await self.cards.client.views_open(trigger_id=trigger_id, view=view)
        except SlackApiError as err:
            error = str(err.response.get("error") or err.response.status_code)
            return render("dialog_failed", reply_id=reply_id, reason=error)
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("cannot open a Slack modal: %r", err)
            return render("dialog_failed", reply_id=reply_id, reason="Slack cannot be reached")
        return None

    async def _view_submission(
        self, payload: dict[str, Any], user_id: str, user: dict[str, Any], seen: _Seen
    ) -> web.Response:
        view = _need(payload, "view", dict)
        callback = view.get("callback_id")
        if callback == EDIT_CALLBACK:
            name, block = "edit", TEXT_INPUT
        elif callback == REJECT_CALLBACK:
            name, block = "reject", REASON_INPUT
        else:
            raise BadRequest(f"unknown view {callback!r}")
        try:
            meta = json.loads(_need(view, "private_metadata"))
        except ValueError as err:
            raise BadRequest("bad private_metadata") from err
        if not isinstance(meta, dict) or not isinstance(meta.get("reply_id"), int):
            raise BadRequest("bad private_metadata")
        reply_id: int = meta["reply_id"]
        try:
            field = view["state"]["values"][block][block]
        except (KeyError, TypeError) as err:
            raise BadRequest(f"missing input {block!r}") from err
        if not isinstance(field, dict):
            raise BadRequest(f"missing input {block!r}")
        value = field.get("value") or ""
        if not isinstance(value, str):
            raise BadRequest(f"bad input {block!r}")

        actor = chat_actor(self.config, "slack", user_id)
        if actor is None:
            text = await self._once(
                seen,
                _guarded(
                    refuse_stranger(
                        self.commands, "slack", user_id, user.get("username"), f"{name} {reply_id}"
                    ),
                    "refusing a stranger",
                ),
            )
            return web.json_response({"response_action": "errors", "errors": {block: text}})
        channel = meta.get("channel") if isinstance(meta.get("channel"), str) else None

        async def tell(result: tuple[bool, str]) -> None:
            await self._tell(channel, user_id, result[1])

        done, result = await self._within_deadline(
            seen, self._decide_ok(actor, name, reply_id, value), tell
        )
        if done and result is not None and not result[0]:
            return web.json_response(
                {"response_action": "errors", "errors": {block: result[1][:2000]}}
            )
        return web.Response(status=200)


def add_slack_routes(
    app: web.Application,
    commands: Commands,
    config: Config,
    *,
    on_approved: Callable[[int], None] | None = None,
    cards: CardNotifier | None = None,
    session: aiohttp.ClientSession | None = None,
) -> SlackAdapter:
    """Add ``POST /slack/commands`` and ``POST /slack/interactions`` to the daemon's app.

    ``on_approved(reply_id)`` is called after an approve or edit from Slack (wire it to
    ``Sender.wake``); ``cards`` opens the modals and is woken after every decision; answers
    that miss Slack's deadline go to the response_url through ``session`` (default: the
    cards client's session).
    """
    adapter = SlackAdapter(commands, config, on_approved=on_approved, cards=cards, session=session)
    app[SLACK_ADAPTER] = adapter
    app.router.add_post("/slack/commands", adapter.slash_command)
    app.router.add_post("/slack/interactions", adapter.interaction)
    app.on_shutdown.append(adapter._on_shutdown)
    return adapter
