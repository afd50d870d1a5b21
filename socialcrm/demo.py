"""``socialcrm demo``: the whole product on one machine, with no accounts and no network.

The sandbox stands in for X, Mastodon and Reddit (and Slack, for approval cards) on a local
port; the daemon polls it into a fresh SQLite database, exactly as it would poll the real
platforms; a few hundred mentions flow through; then the demo says what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from socialcrm import customers as customers_mod
from socialcrm.chatops.cards import CardNotifier
from socialcrm.chatops.commands import Actor, Commands
from socialcrm.config import Config
from socialcrm.connector import Batch, InboundMessage
from socialcrm.daemon import Daemon
from socialcrm.db import Store, open_store
from socialcrm.models import Alert, Message, Reply, Ticket, utcnow
from socialcrm.rules import RuleSet
from socialcrm.sandbox.server import Sandbox, serve, start_ending_before
from socialcrm.sandbox.traffic import DEFAULT_START
from socialcrm.scoring import ScoringPool

#: Messages generated for the demo; those on X, Mastodon and Reddit are served by the sandbox,
#: the rest (email, reviews, web forms) come from the bundled example file.
DEMO_MESSAGES = 500


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sandbox_sources(sandbox: Sandbox, base: str, interval: str = "1s") -> list[dict[str, Any]]:
    """Source settings that point the real connectors at the sandbox."""
    from socialcrm.sandbox.x import BRAND_USER_ID, X_CLIENT_ID, X_CLIENT_SECRET, X_REFRESH_TOKEN

    c = sandbox.credentials
    return [
        {
            "name": "x-acme",
            "type": "x",
            "interval": interval,
            "jitter": 0,
            "base_url": f"{base}/x",
            "bearer_token": c.x_bearer_token,
            "user_access_token": c.x_user_token,
            # User tokens last two hours: the refresh grant renews them (X's stand-in app).
            "client_id": X_CLIENT_ID,
            "client_secret": X_CLIENT_SECRET,
            "refresh_token": X_REFRESH_TOKEN,
            "user_id": BRAND_USER_ID,
            "search_query": f"{sandbox.brand.lower()} -is:retweet",
        },
        {
            "name": "mastodon-acme",
            "type": "mastodon",
            "interval": interval,
            "jitter": 0,
            "base_url": f"{base}/mastodon",
            "access_token": c.mastodon_token,
            "hashtags": [sandbox.brand.lower()],
        },
        {
            "name": "reddit-acme",
            "type": "reddit",
            "interval": interval,
            "jitter": 0,
            "auth_url": f"{base}/reddit",
            "api_url": f"{base}/reddit",
            "client_id": c.reddit_client_id,
            "client_secret": c.reddit_client_secret,
            "username": c.reddit_username,
            "password": c.reddit_password,
            "query": sandbox.brand.lower(),
        },
    ]


def sandbox_chat(sandbox: Sandbox, base: str) -> dict[str, Any]:
    """The ``slack`` and ``staff`` settings that post approval cards to the Slack stand-in."""
    from socialcrm.sandbox.server import SLACK_APPROVER, SLACK_CHANNEL

    return {
        "slack": {
            "signing_secret": sandbox.slack.signing_secret,
            "bot_token": sandbox.slack.bot_token,
            "channel": SLACK_CHANNEL,
            "api_base": f"{base}/slack/api/",
        },
        "staff": [{"name": "dana", "role": "approver", "slack_id": SLACK_APPROVER}],
    }


async def run_demo(directory: Path, count: int = DEMO_MESSAGES) -> None:
    """Run the demo into ``directory`` and print what happened."""
    directory.mkdir(parents=True, exist_ok=True)
    db = (directory / "socialcrm.db").resolve()
    for old in directory.glob("socialcrm.db*"):
        old.unlink()
    # The traffic is the same every time, but it happened up to a moment ago (none of it in
    # the future, however many messages), so reports and SLA due times read as on a real day.
    start = start_ending_before(utcnow(), 7, count, at_least=EXAMPLES_SPAN)
    sandbox = Sandbox(7, messages=count, start=start)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = Config.model_validate(
        {
            "database": f"sqlite:///{db}",
            "brand": {"name": sandbox.brand, "handles": [sandbox.brand_handle]},
            "sources": sandbox_sources(sandbox, base),
            **sandbox_chat(sandbox, base),
            "base_dir": directory.resolve(),
        }
    )
    runner = await serve(sandbox, "127.0.0.1", port)
    store = await open_store(config.database_url())
    rules = RuleSet.load(config.rule_paths())
    scoring = ScoringPool.for_config(config, rules)
    daemon = Daemon(config, store, rules=rules, scoring=scoring)
    try:
        await _import_customers(store)
        await _ingest_other_channels(daemon, start - DEFAULT_START)
        await daemon.start("127.0.0.1", free_port())
        total = sum(len(sandbox.messages[p]) for p in ("x", "mastodon", "reddit"))
        click.echo(f"Sandbox on {base} is serving {total} mentions on X, Mastodon and Reddit;")
        click.echo("the daemon polls them every second...", nl=False)
        step = max(1, total // 10)
        while sandbox.pending():
            sandbox.release(step)
            await asyncio.sleep(0.5)
            click.echo(".", nl=False)
        await _wait_until_stored(store, sandbox)
        # Every draft is made before the last cards go out: each gets its card.
        await daemon.stop_polling()
        if daemon.cards is not None:
            await _post_cards(daemon.cards)
        click.echo(" done.\n")
    finally:
        await daemon.stop()
        scoring.close()
        await runner.cleanup()
    try:
        await _summary(config, store)
    finally:
        await store.dispose()
    cards = sum(1 for m in sandbox.slack.messages if m.channel == "C0APPROVALS")
    click.echo(
        f"\n{cards} approval cards (Approve / Edit / Reject) were posted to #approvals in the "
        "Slack stand-in."
    )
    (directory / "config.yaml").write_text(f"database: sqlite:///{db}\n", encoding="utf-8")
    click.echo(
        f"\nLook around:\n  socialcrm -c {directory}/config.yaml queue\n"
        f"  socialcrm -c {directory}/config.yaml show ID\n"
        f"  socialcrm -c {directory}/config.yaml approve ID\n"
        f"  socialcrm -c {directory}/config.yaml tickets list\n"
        f"  socialcrm -c {directory}/config.yaml customers show HANDLE\n"
        f"  socialcrm -c {directory}/config.yaml report --period 1d"
    )


async def _import_customers(store: Store) -> None:
    text = (files("socialcrm") / "examples" / "customers.csv").read_text(encoding="utf-8")
    async with store.session() as s:
        await customers_mod.import_customers(s, customers_mod.parse_csv(text), "demo", "cli")


#: How long after the traffic's start the bundled email, review and form examples reach.
EXAMPLES_SPAN = timedelta(hours=3)


async def _ingest_other_channels(daemon: Daemon, shift: timedelta) -> None:
    """Email, review and web-form examples from the bundled file (they need real servers)."""
    from socialcrm.cli import parse_line

    text = (files("socialcrm") / "examples" / "mentions.jsonl").read_text(encoding="utf-8")
    batch = Batch()
    for n, line in enumerate(text.splitlines(), 1):
        item = parse_line(n, line)
        if isinstance(item, InboundMessage) and item.channel in ("email", "rss", "webhook"):
            batch.messages.append(item.model_copy(update={"created_at": item.created_at + shift}))
    await daemon.pipeline.ingest(batch, "examples", save_cursor=False)


#: How long the demo waits for the next approval card before it gives up on the rest.
CARD_STALL_S = 30.0


async def _post_cards(cards: CardNotifier) -> None:
    """Post the approval cards still due, a batch at a time, for as long as they go out: a
    round that posts nothing (the card loop's own round in hand, a pause after a rate limit)
    is followed by the next; the demo gives up on the rest only when none has gone out for
    ``CARD_STALL_S`` (on a busy machine a fixed number of rounds left some unposted)."""
    loop = asyncio.get_running_loop()
    left, since = await cards.missing(), loop.time()
    while left and loop.time() - since < CARD_STALL_S:
        if not await cards.sync():
            await asyncio.sleep(0.5)
        now_left = await cards.missing()
        if now_left < left:
            since = loop.time()
        left = now_left


async def _wait_until_stored(store: Store, sandbox: Sandbox, timeout_s: float = 60.0) -> None:
    wanted = {i for p in ("x", "mastodon", "reddit") for i in sandbox.served_ids(p)}  # type: ignore[arg-type]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while True:
                async with store.reader() as s:
                    have = set((await s.execute(sa.select(Message.external_id))).scalars())
                if wanted <= have:
                    return
                await asyncio.sleep(0.5)


async def _summary(config: Config, store: Store) -> None:
    async with store.reader() as s:
        rows = (
            await s.execute(
                sa.select(Message.channel, Message.scored, Message.sentiment).where(
                    Message.direction == "inbound"
                )
            )
        ).all()
        tickets = (await s.execute(sa.select(sa.func.count()).select_from(Ticket))).scalar_one()
        drafts = (
            await s.execute(
                sa.select(sa.func.count()).select_from(Reply).where(Reply.status == "draft")
            )
        ).scalar_one()
        escalations = (
            await s.execute(
                sa.select(sa.func.count()).select_from(Alert).where(Alert.kind == "escalation")
            )
        ).scalar_one()
    by_channel: Counter[str] = Counter()
    mood: dict[str, Counter[str]] = {}
    for channel, scored, sentiment in rows:
        by_channel[channel] += 1
        label = (
            "unscored"
            if not scored
            else "positive"
            if sentiment >= 0.05
            else "negative"
            if sentiment <= -0.05
            else "neutral"
        )
        mood.setdefault(channel, Counter())[label] += 1
    click.echo(f"{len(rows)} messages stored:")
    for channel, n in by_channel.most_common():
        m = mood[channel]
        click.echo(
            f"  {channel:9s} {n:4d}   positive {m['positive']:3d}  neutral {m['neutral']:3d}  "
            f"negative {m['negative']:3d}  other language {m['unscored']:3d}"
        )
    click.echo(
        f"{tickets} tickets opened, {drafts} drafts waiting for approval, {escalations} escalations"
    )
    commands = Commands(config, store)
    actor = Actor("demo", "admin", "cli")
    click.echo("\n== Open tickets, highest priority first ==")
    click.echo(await commands.run(actor, "tickets open 10"))
    click.echo("\n== The approval queue ==")
    click.echo(await commands.run(actor, "queue 5"))
