"""Approval cards in Slack: one Block Kit message per draft, kept in step with the reply.

:class:`CardNotifier` posts a card for every draft that has none and updates a card whenever
the reply's state differs from what the card last showed (``Reply.chat_shown``). The store is
the only queue: a card that Slack refused is simply tried again by a later
:meth:`CardNotifier.sync`, so running it every second, after every approval, or from two places
at once in one process loses nothing and posts nothing twice.

How soon "later" is depends on what Slack said (:mod:`socialcrm.slackapi`): a rate limit waits
its ``Retry-After``; a 5xx, a network failure or Slack's own trouble backs off exponentially; a
permanent refusal (token revoked, bot not in the channel, channel archived, a missing scope)
stops the cards, raises one ``slack_failing`` alert and shows in ``/healthz`` (:meth:`health`),
and is tried again only every ``STOPPED_RETRY_S`` until someone fixes it.

Exactly one card per draft, even when the poster dies (SIGKILL, power cut) between Slack's
answer to ``chat.postMessage`` and storing the card's ts: before posting, a unique marker is
claimed on the reply (``Reply.chat_claim``, committed first) and sent in the card's message
metadata. A reply claimed but without a ts is a card that may be in the channel already: the
next round looks for it with ``conversations.history`` (``include_all_metadata``, from the
claim's time on) and adopts its ts; only if the channel has no such card does it post one.

The wording is in ``templates/chat/card.j2``; this module only arranges it into blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Self

import aiohttp
import jinja2
import sqlalchemy as sa
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from socialcrm import responder
from socialcrm.alerts import raise_alert
from socialcrm.config import Config
from socialcrm.db import Store
from socialcrm.models import Customer, Message, Reply, Ticket, utcnow
from socialcrm.slackapi import SlackFailure, sort_failure
from socialcrm.templating import template_environment

log = logging.getLogger(__name__)

#: Button action ids on a card; the button's ``value`` is the reply id.
ACTIONS: Final = ("approve", "edit", "reject")
#: ``callback_id`` of the two modals, and the block/action id of their one input.
EDIT_CALLBACK: Final = "socialcrm_edit"
REJECT_CALLBACK: Final = "socialcrm_reject"
TEXT_INPUT: Final = "text"
REASON_INPUT: Final = "reason"
#: Message metadata ``event_type`` of a card (its payload carries the reply id).
CARD_EVENT: Final = "socialcrm_reply"
#: Reply states that can still change; a reply in any other state is settled.
UNSETTLED: Final = ("draft", "approved", "sending")
#: Cards posted or updated per round at most (Slack allows about one message a second).
BATCH: Final = 50
#: Every so often the whole reply table is checked, not only the unsettled part.
SWEEP_S: Final = 60.0
TICK_S: Final = 1.0
#: Slack's limits: a section's text, and a plain-text input's value.
SECTION_LIMIT: Final = 3000
INPUT_LIMIT: Final = 3000
#: Slack errors that concern one card only; any other error stops the round.
_CARD_ERRORS: Final = frozenset(
    {
        "invalid_blocks",
        "invalid_blocks_format",
        "msg_too_long",
        "no_text",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
        "message_not_found",
        "cant_update_message",
        "edit_window_closed",
    }
)
_GONE: Final = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
#: After a permanent refusal the cards are tried again this rarely (a person must act).
STOPPED_RETRY_S: Final = 3600.0
#: Backoff after 5xx and network failures: first wait, longest wait.
BACKOFF_BASE_S: Final = 2.0
BACKOFF_MAX_S: Final = 300.0
#: Kind and dedupe key of the alert raised when Slack refuses the cards for good.
FAILING_KIND: Final = "slack_failing"
#: How long one Web API call may take; a claim older than ``CLAIM_GRACE_S`` is no longer in
#: flight anywhere, so a card that is not in the channel by then was never posted.
CALL_TIMEOUT_S: Final = 10
CLAIM_GRACE_S: Final = 15.0
#: The channel is searched from this long before the claim (clocks of hosts and Slack differ).
CLAIM_SKEW_S: Final = 120.0
#: conversations.history page size, and the most pages read looking for one card.
HISTORY_PAGE: Final = 200
HISTORY_PAGES: Final = 20

#: Short labels of the card and its modals (the prose is in card.j2).
LABELS: Final = {
    "approve": "Approve",
    "edit": "Edit",
    "reject": "Reject",
    "edit_title": "Edit reply #{id}",
    "edit_submit": "Approve",
    "edit_label": "Reply text",
    "edit_hint": "Approving sends this text instead of the draft; the audit keeps both.",
    "reject_title": "Reject reply #{id}",
    "reject_submit": "Reject",
    "reject_label": "Why is it rejected?",
    "cancel": "Cancel",
}


def escape_mrkdwn(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` as Slack's mrkdwn requires for text it must not parse."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _finalize(value: Any) -> Any:
    return escape_mrkdwn(value) if isinstance(value, str) else value


def _environment() -> jinja2.Environment:
    env = template_environment(None)
    # Every {{ value }} is escaped on output; the template's own text is mrkdwn as written.
    env.finalize = _finalize
    return env


_ENV: Final = _environment()


def _macros() -> Any:
    return _ENV.get_template("chat/card.j2").module


def clamp(text: str, limit: int) -> str:
    """Cut escaped mrkdwn to ``limit`` characters without splitting an ``&amp;``-style entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 5))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def _safe_link(url: str | None) -> str | None:
    # A link's URL sits inside <...|...>: only a plain web address may go there.
    if not url or not url.startswith(("https://", "http://")):
        return None
    if any(ch in url for ch in "|<> \t\r\n") or len(url) > 2000:
        return None
    return url


@dataclass(frozen=True, slots=True)
class Card:
    """What an approval card shows: the reply, the message it answers, the ticket, the customer."""

    reply: Reply
    msg: Message
    ticket: Ticket | None
    customer: Customer | None

    @property
    def reply_id(self) -> int:
        """The reply's id."""
        assert self.reply.id is not None
        return self.reply.id


def _select() -> Any:
    return (
        sa.select(Reply, Message, Ticket, Customer)
        .join(Message, Message.id == Reply.message_id)
        .outerjoin(Ticket, Ticket.id == Reply.ticket_id)
        .outerjoin(Customer, Customer.id == Reply.customer_id)
    )


async def load_card(store: Store, reply_id: int) -> Card | None:
    """The card of one reply, read fresh from the store."""
    async with store.reader() as s:
        row = (await s.execute(_select().where(Reply.id == reply_id))).first()
    return Card(*row) if row is not None else None


def message_mrkdwn(card: Card) -> str:
    """The customer's message as a mrkdwn quote (escaped), with a link to it if it has one."""
    return clamp(_macros().message(card.msg, _safe_link(card.msg.url)).strip(), SECTION_LIMIT)


def card_text(card: Card) -> str:
    """The card's plain notification text."""
    return str(_macros().fallback(card.reply, card.msg)).strip()[:3000]


def card_blocks(card: Card) -> list[dict[str, Any]]:
    """The Block Kit blocks of a card: buttons while it is a draft, the outcome afterwards."""
    m = _macros()
    rid = card.reply_id

    def section(block_id: str, text: str) -> dict[str, Any]:
        return {
            "type": "section",
            "block_id": block_id,
            "text": {"type": "mrkdwn", "text": clamp(text.strip(), SECTION_LIMIT)},
        }

    blocks = [
        section("head", m.head(card.reply, card.msg, card.ticket)),
        section("message", message_mrkdwn(card)),
        {
            "type": "context",
            "block_id": "customer",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": clamp(m.customer(card.customer, card.ticket).strip(), SECTION_LIMIT),
                }
            ],
        },
        section("draft", m.draft(card.reply)),
    ]
    if card.reply.status == "draft":
        blocks.append(
            {
                "type": "actions",
                "block_id": "decide",
                "elements": [
                    _button("approve", rid, style="primary"),
                    _button("edit", rid),
                    _button("reject", rid, style="danger"),
                ],
            }
        )
    else:
        blocks.append(section("outcome", m.outcome(card.reply)))
    return blocks


def _button(action: str, reply_id: int, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action,
        "text": {"type": "plain_text", "text": LABELS[action]},
        "value": str(reply_id),
    }
    if style:
        button["style"] = style
    return button


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def _metadata(card: Card, channel: str, ts: str) -> str:
    return json.dumps({"reply_id": card.reply_id, "channel": channel, "ts": ts})


def edit_modal(card: Card, channel: str, ts: str) -> dict[str, Any]:
    """The Edit modal: the customer's message, and the draft to change and approve."""
    text = card.reply.final_text or card.reply.draft_text
    return {
        "type": "modal",
        "callback_id": EDIT_CALLBACK,
        "private_metadata": _metadata(card, channel, ts),
        "title": _plain(LABELS["edit_title"].format(id=card.reply_id)),
        "submit": _plain(LABELS["edit_submit"]),
        "close": _plain(LABELS["cancel"]),
        "blocks": [
            {
                "type": "section",
                "block_id": "message",
                "text": {"type": "mrkdwn", "text": message_mrkdwn(card)},
            },
            {
                "type": "input",
                "block_id": TEXT_INPUT,
                "label": _plain(LABELS["edit_label"]),
                "hint": _plain(LABELS["edit_hint"]),
                "element": {
                    "type": "plain_text_input",
                    "action_id": TEXT_INPUT,
                    "multiline": True,
                    "initial_value": text,
                    "max_length": INPUT_LIMIT,
                },
            },
        ],
    }


def reject_modal(card: Card, channel: str, ts: str) -> dict[str, Any]:
    """The Reject modal: one line for the reason."""
    return {
        "type": "modal",
        "callback_id": REJECT_CALLBACK,
        "private_metadata": _metadata(card, channel, ts),
        "title": _plain(LABELS["reject_title"].format(id=card.reply_id)),
        "submit": _plain(LABELS["reject_submit"]),
        "close": _plain(LABELS["cancel"]),
        "blocks": [
            {
                "type": "section",
                "block_id": "message",
                "text": {"type": "mrkdwn", "text": message_mrkdwn(card)},
            },
            {
                "type": "input",
                "block_id": REASON_INPUT,
                "label": _plain(LABELS["reject_label"]),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "max_length": 500,
                },
            },
        ],
    }


def _card_metadata(reply_id: int, marker: str | None) -> dict[str, Any]:
    """A card's message metadata (docs.slack.dev/messaging/message-metadata)."""
    payload: dict[str, Any] = {"reply_id": reply_id}
    if marker is not None:
        payload["marker"] = marker
    return {"event_type": CARD_EVENT, "event_payload": payload}


class _StopRound(Exception):
    """Slack refused in a way that concerns every card (rate limit, channel, token, network)."""

    def __init__(self, *, refused: bool = False) -> None:
        super().__init__()
        #: Slack surely did nothing (a rate limit, a permanent refusal), as opposed to a
        #: timeout or a 5xx after which the call may or may not have been done.
        self.refused = refused


class CardNotifier:
    """Posts and updates approval cards in one Slack channel, from the state of the store."""

    def __init__(
        self,
        store: Store,
        client: AsyncWebClient,
        channel: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.client = client
        self.channel = channel
        self.clock = clock
        self.wall_clock = wall_clock
        #: Failed rounds in a row (5xx, network), for the backoff.
        self._failures = 0
        #: Slack refused the cards for good: what it said, and since when.
        self.stopped: SlackFailure | None = None
        self.stopped_since: datetime | None = None
        self._alerted = False
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Replies below this id were settled, with their card in step, at the last round.
        self._floor = 0
        self._next_sweep = 0.0
        self._paused_until = 0.0
        self._problem: str | None = None
        #: Claims of this notifier whose post ended without an answer (a timeout, a 5xx): no
        #: longer in flight, so looked for at once rather than after ``CLAIM_GRACE_S``.
        self._ended: set[str] = set()
        #: Asked before each round: with several daemons, only the one holding the cards
        #: lease posts and updates cards (see ``socialcrm.cluster``).
        self.may_run: Callable[[], bool] = lambda: True

    @classmethod
    def from_config(cls, store: Store, config: Config, session: aiohttp.ClientSession) -> Self:
        """A notifier for ``config.slack``, talking to ``api_base`` through ``session``."""
        if config.slack is None:
            raise ValueError("Slack is not configured (no slack: section)")
        client = AsyncWebClient(
            token=config.slack.bot_token.get_secret_value(),
            base_url=config.slack.api_base,
            session=session,
            timeout=CALL_TIMEOUT_S,
        )
        return cls(store, client, config.slack.channel)

    # -- the loop --------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A round is running (a lease is not given back in the middle of one)."""
        return self._lock.locked()

    def wake(self) -> None:
        """Something changed: sync now rather than at the next tick."""
        self._wake.set()

    def changed(self, reply_id: int) -> None:
        """A reply changed state (the hook for ``Sender.on_change``)."""
        self.wake()

    def start(self, tick_s: float = TICK_S) -> None:
        """Run :meth:`sync` in the background every ``tick_s`` and whenever woken."""
        self._task = asyncio.create_task(self._loop(tick_s), name="socialcrm-cards")

    async def stop(self) -> None:
        """Stop the loop (a card in flight is finished or retried on the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self, tick_s: float) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # the loop must outlive one bad round; it logs and goes on
                log.exception("approval card round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick_s)
            self._wake.clear()

    # -- one round -------------------------------------------------------------------------

    async def sync(self) -> int:
        """Post missing cards and update changed ones; returns how many Slack accepted."""
        async with self._lock:
            now = self.clock()
            if now < self._paused_until or not self.may_run():
                return 0
            if now >= self._next_sweep:
                self._floor = 0
                self._next_sweep = now + SWEEP_S
            done = 0
            try:
                done += await self._post_missing()
                done += await self._update_changed()
            except _StopRound:
                return done
            if self._problem is not None or self.stopped is not None:
                log.warning("Slack approval cards work again")
                self._problem = None
            self._failures = 0
            self.stopped = self.stopped_since = None
            self._alerted = False
            return done

    def health(self) -> dict[str, Any]:
        """The cards' state for ``/healthz``: ok, waiting (a passing failure) or stopped."""
        if self.stopped is not None:
            return {
                "state": "stopped",
                "error": self.stopped.describe(),
                "since": self.stopped_since.isoformat() if self.stopped_since else None,
                "retry_in_s": round(max(0.0, self._paused_until - self.clock()), 1),
            }
        if self._problem is not None:
            return {
                "state": "waiting",
                "error": self._problem,
                "retry_in_s": round(max(0.0, self._paused_until - self.clock()), 1),
            }
        return {"state": "ok"}

    async def missing(self) -> int:
        """Drafts that have no card yet."""
        async with self.store.reader() as s:
            q = sa.select(sa.func.count()).where(Reply.status == "draft", Reply.chat_ts.is_(None))
            return int((await s.execute(q)).scalar_one())

    async def _post_missing(self) -> int:
        posted = await self._recover_claims()
        async with self.store.reader() as s:
            rows = (
                await s.execute(
                    _select()
                    .where(
                        Reply.status == "draft",
                        Reply.chat_ts.is_(None),
                        Reply.chat_claim.is_(None),
                    )
                    .order_by(*responder.queue_order())
                    .limit(BATCH)
                )
            ).all()
        for row in rows:
            card = Card(*row)
            marker = uuid.uuid4().hex
            async with self.store.session() as s:
                # Committed before Slack is asked: whoever comes next knows a card may exist.
                claimed = await s.execute(
                    sa.update(Reply)
                    .where(
                        Reply.id == card.reply_id,
                        Reply.chat_ts.is_(None),
                        Reply.chat_claim.is_(None),
                    )
                    .values(chat_claim=marker, chat_claimed_at=self.wall_clock())
                )
            if claimed.rowcount == 0:
                continue  # another round claimed it meanwhile
            if await self._post(card, marker):
                posted += 1
        return posted

    async def _post(self, card: Card, marker: str) -> bool:
        """Post a claimed card and store its ts; a card Slack refused gives its claim back."""
        try:
            answer = await self._call(
                card,
                "chat.postMessage",
                channel=self.channel,
                text=card_text(card),
                blocks=card_blocks(card),
                metadata=_card_metadata(card.reply_id, marker),
                unfurl_links=False,
                unfurl_media=False,
            )
        except _StopRound as stop:
            # After a timeout or a 5xx the card may be posted: the claim stays, and a later
            # round looks for the card before posting again.
            if stop.refused:
                await self._unclaim(card.reply_id, marker)
            else:
                self._ended.add(marker)
            raise
        if answer is None:
            await self._unclaim(card.reply_id, marker)
            return False
        await self._store_card(card.reply_id, marker, answer["channel"], answer["ts"], "draft")
        return True

    async def _unclaim(self, reply_id: int, marker: str) -> None:
        """Slack refused the post: no card exists, the next round posts one afresh."""
        async with self.store.session() as s:
            await s.execute(
                sa.update(Reply)
                .where(Reply.id == reply_id, Reply.chat_claim == marker, Reply.chat_ts.is_(None))
                .values(chat_claim=None, chat_claimed_at=None)
            )

    async def _store_card(
        self, reply_id: int, marker: str, channel: str, ts: str, shown: str | None
    ) -> None:
        async with self.store.session() as s:
            stored = await s.execute(
                sa.update(Reply)
                .where(Reply.id == reply_id, Reply.chat_ts.is_(None), Reply.chat_claim == marker)
                .values(chat_channel=channel, chat_ts=ts, chat_shown=shown)
            )
        if stored.rowcount == 0:
            log.warning("reply %s: its approval card %s was stored by another round", reply_id, ts)

    async def _recover_claims(self) -> int:
        """Replies claimed but without a card ts: adopt the card found in the channel, or post.

        The poster died (or lost Slack's answer) after claiming; the card is looked for by its
        marker from the claim's time on. A claim younger than ``CLAIM_GRACE_S`` may still be
        in flight elsewhere and is left alone until then.
        """
        now = self.wall_clock()
        async with self.store.reader() as s:
            rows = (
                await s.execute(
                    _select()
                    .where(
                        Reply.chat_ts.is_(None),
                        Reply.chat_claim.is_not(None),
                        sa.or_(
                            Reply.chat_claimed_at <= now - timedelta(seconds=CLAIM_GRACE_S),
                            Reply.chat_claim.in_(sorted(self._ended)),
                        ),
                    )
                    .order_by(Reply.chat_claimed_at)
                    .limit(BATCH)
                )
            ).all()
        if not rows:
            return 0
        cards = {Card(*row).reply_id: Card(*row) for row in rows}
        oldest = min(c.reply.chat_claimed_at for c in cards.values() if c.reply.chat_claimed_at)
        found = await self._find_cards(oldest - timedelta(seconds=CLAIM_SKEW_S), cards)
        done = 0
        for rid, card in cards.items():
            marker = card.reply.chat_claim
            assert marker is not None
            self._ended.discard(marker)
            ts = found.get((rid, marker))
            if ts is not None:
                log.info("reply %s: adopting its approval card %s found in Slack", rid, ts)
                # What the card shows now is unknown: the update round redraws it.
                await self._store_card(rid, marker, self.channel, ts, None)
                done += 1
            elif card.reply.status == "draft":
                if await self._post(card, marker):
                    done += 1
            else:
                # Decided before any card was posted: none is needed any more.
                await self._unclaim(rid, marker)
        return done

    async def _find_cards(
        self, since: datetime, wanted: dict[int, Card]
    ) -> dict[tuple[int, str], str]:
        """The ts of claimed cards in the channel posted since ``since``: {(reply, marker): ts}."""
        markers = {(rid, c.reply.chat_claim) for rid, c in wanted.items()}
        found: dict[tuple[int, str], str] = {}
        cursor: str | None = None
        for _ in range(HISTORY_PAGES):
            page = await self._history(f"{since.timestamp():.6f}", cursor)
            for msg in page.get("messages") or []:
                meta = msg.get("metadata") or {}
                payload = meta.get("event_payload") or {}
                key = (payload.get("reply_id"), payload.get("marker"))
                if meta.get("event_type") == CARD_EVENT and key in markers:
                    found.setdefault((int(key[0]), str(key[1])), str(msg["ts"]))
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if len(found) == len(markers) or not page.get("has_more") or not cursor:
                break
        return found

    async def _history(self, oldest: str, cursor: str | None) -> dict[str, Any]:
        """One page of the channel's messages with their metadata (any failure stops the round)."""
        try:
            response = await self.client.conversations_history(
                channel=self.channel,
                oldest=oldest,
                limit=HISTORY_PAGE,
                include_all_metadata=True,
                **({"cursor": cursor} if cursor else {}),
            )
        except SlackApiError as err:
            failure = sort_failure(err, frozenset())
            if failure.verdict == "rate_limited":
                wait_s = failure.retry_after_s or 1.0
                self._paused_until = self.clock() + wait_s
                self._report(f"rate limited by Slack; cards wait {wait_s:g}s")
            elif failure.verdict == "permanent":
                await self._stop("conversations.history", failure)
            else:
                self._back_off(f"Slack refused conversations.history: {failure.code}")
            raise _StopRound from err
        except (aiohttp.ClientError, TimeoutError) as err:
            self._back_off(f"cannot reach Slack: {err!r}")
            raise _StopRound from err
        return dict(response.data) if isinstance(response.data, dict) else {}

    async def _update_changed(self) -> int:
        async with self.store.reader() as s:
            unsettled = (
                await s.execute(sa.select(sa.func.min(Reply.id)).where(Reply.status.in_(UNSETTLED)))
            ).scalar()
            top = (await s.execute(sa.select(sa.func.max(Reply.id)))).scalar() or 0
            rows = (
                await s.execute(
                    _select()
                    .where(
                        Reply.id >= self._floor,
                        Reply.chat_ts.is_not(None),
                        sa.or_(Reply.chat_shown.is_(None), Reply.chat_shown != Reply.status),
                    )
                    .order_by(Reply.id)
                    .limit(BATCH)
                )
            ).all()
        # Replies settled now (and not listed below) cannot change again: the next rounds
        # start at the first reply that still can.
        floor = min(unsettled if unsettled is not None else top + 1, top + 1)
        if len(rows) == BATCH:
            floor = min(floor, rows[-1][0].id + 1)
        updated = 0
        for row in rows:  # a _StopRound leaves the floor where it was
            card = Card(*row)
            if await self._update(card):
                updated += 1
            else:
                floor = min(floor, card.reply_id)
        self._floor = floor
        return updated

    async def _update(self, card: Card) -> bool:
        reply = card.reply
        answer = await self._call(
            card,
            "chat.update",
            channel=reply.chat_channel,
            ts=reply.chat_ts,
            text=card_text(card),
            blocks=card_blocks(card),
            metadata=_card_metadata(card.reply_id, reply.chat_claim),
        )
        if answer is None:
            return False
        async with self.store.session() as s:
            # Only if the reply is still as shown: a newer state is shown by the next round.
            await s.execute(
                sa.update(Reply)
                .where(
                    Reply.id == card.reply_id,
                    Reply.chat_ts == reply.chat_ts,
                    Reply.status == reply.status,
                )
                .values(chat_shown=reply.status)
            )
        return True

    async def _call(self, card: Card, method: str, **args: Any) -> dict[str, Any] | None:
        """One Web API call for a card: its answer, or None if only this card failed."""
        try:
            if method == "chat.postMessage":
                response = await self.client.chat_postMessage(**args)
            else:
                response = await self.client.chat_update(**args)
        except SlackApiError as err:
            failure = sort_failure(err, _CARD_ERRORS)
            if failure.verdict == "rate_limited":
                wait_s = failure.retry_after_s or 1.0
                self._paused_until = self.clock() + wait_s
                self._report(f"rate limited by Slack; cards wait {wait_s:g}s")
                raise _StopRound(refused=True) from err
            if failure.verdict == "permanent":
                await self._stop(method, failure)
                raise _StopRound(refused=True) from err
            if failure.code in _GONE:
                await self._card_gone(card, failure.code)
                return None
            if failure.verdict == "message":
                self._report(f"Slack refused the card of reply #{card.reply_id}: {failure.code}")
                return None
            self._back_off(f"Slack refused {method}: {failure.code}")
            raise _StopRound from err
        except (aiohttp.ClientError, TimeoutError) as err:
            self._back_off(f"cannot reach Slack: {err!r}")
            raise _StopRound from err
        return dict(response.data) if isinstance(response.data, dict) else None

    def _back_off(self, problem: str) -> None:
        """A passing failure (5xx, network, Slack's own trouble): wait longer each time."""
        self._failures += 1
        wait_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (self._failures - 1))
        self._paused_until = self.clock() + wait_s
        self._report(f"{problem}; cards wait {wait_s:g}s")

    async def _stop(self, method: str, failure: SlackFailure) -> None:
        """Slack refused for good: stop, alert once, and try again only rarely."""
        self._paused_until = self.clock() + STOPPED_RETRY_S
        if self.stopped is None:
            self.stopped_since = self.wall_clock()
        self.stopped = failure
        self._report(
            f"Slack refused {method} for good: {failure.describe()}; approval cards are stopped "
            f"and tried again in {STOPPED_RETRY_S:g}s"
        )
        if self._alerted:
            return
        async with self.store.session() as s:
            alert = await raise_alert(
                s,
                FAILING_KIND,
                f"{FAILING_KIND}:cards:{self.channel}",
                f"Slack refuses the approval cards in {self.channel}: {failure.describe()}. "
                "Drafts wait in the queue (the CLI still works) until this is fixed.",
                {
                    "error": failure.describe(),
                    "channel": self.channel,
                    "method": method,
                    "since": self.stopped_since.isoformat() if self.stopped_since else None,
                },
                "critical",
                now=self.wall_clock(),
            )
        self._alerted = True
        if alert is not None:
            log.error("approval cards stopped (%s): alert %s raised", failure.code, alert.id)

    async def _card_gone(self, card: Card, error: str) -> None:
        """The card was deleted in Slack: a draft gets a new one, a decided reply none."""
        reply = card.reply
        log.warning("the card of reply %s cannot be updated (%s)", card.reply_id, error)
        async with self.store.session() as s:
            stmt = sa.update(Reply).where(Reply.id == card.reply_id, Reply.chat_ts == reply.chat_ts)
            if reply.status == "draft":
                await s.execute(
                    stmt.values(
                        chat_channel=None,
                        chat_ts=None,
                        chat_shown=None,
                        chat_claim=None,
                        chat_claimed_at=None,
                    )
                )
            else:
                await s.execute(
                    stmt.where(Reply.status == reply.status).values(chat_shown=reply.status)
                )

    def _report(self, problem: str) -> None:
        # Once when it starts failing (or fails differently), not every second.
        if problem != self._problem:
            log.warning("%s", problem)
            self._problem = problem
