"""The ``socialcrm`` command line: set-up, ingestion, customers, tickets and the approval queue."""

from __future__ import annotations

import codecs
import functools
import getpass
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from socialcrm.config import STARTER_CONFIG, Config, ConfigError, load_config
from socialcrm.connector import CHANNELS

# Only what every command needs is imported here: a command imports the rest itself, so
# `socialcrm queue` does not load the pipeline, the sentiment model or the HTTP clients.
# Nor does it load SQLAlchemy: `socialcrm queue` reads through the plain database driver.
if TYPE_CHECKING:
    from socialcrm.chatops.commands import Actor
    from socialcrm.connector import Batch, InboundMessage, Quarantined
    from socialcrm.db import Store
    from socialcrm.pipeline import IngestResult
    from socialcrm.responder import Responder
    from socialcrm.rules import RuleSet
    from socialcrm.scoring import ScoringPool

log = logging.getLogger("socialcrm")
T = TypeVar("T")
#: Messages handed to the pipeline at a time when ingesting a file.
FILE_BATCH = 1000
DEFAULT_CONFIG = "config.yaml"


#: The exit status of a command that did its work but left some input out (lines quarantined
#: or skipped, each named): a script can tell a partial import from a whole one (0) and from
#: a failure (1, or 2 for bad arguments and configuration).
PARTIAL = 3


def _partial(ctx: click.Context, left_out: int) -> None:
    """End the command with ``PARTIAL`` where it left input out."""
    if left_out:
        ctx.exit(PARTIAL)


class CliError(click.ClickException):
    """A one-line error for the person at the terminal; exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"socialcrm: {self.message}", err=True)


def _load(ctx: click.Context, *, secrets: bool = False) -> Config:
    """The config; platform secrets (``${ENV}`` of sources, sinks, chat) are resolved only for
    commands that talk to the platforms (``secrets=True``): the others need only the database."""
    obj = ctx.ensure_object(dict)
    if "config" not in obj:
        path: Path | None = obj.get("config_path")
        try:
            if path is not None:
                obj["config"] = load_config(path, secrets=secrets)
            elif Path(DEFAULT_CONFIG).exists():
                obj["config"] = load_config(Path(DEFAULT_CONFIG), secrets=secrets)
            else:
                obj["config"] = Config()
        except ConfigError as err:
            raise CliError(f"bad configuration:\n{err}") from err
        from socialcrm import logs

        logs.add_secrets(obj["config"])
    config: Config = obj["config"]
    return config


def async_command(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async click command, turning our known errors into one clear line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import asyncio  # here: `socialcrm queue` mostly runs without an event loop

        try:
            return asyncio.run(fn(*args, **kwargs))
        except Exception as err:
            from socialcrm.chatops.commands import CommandError
            from socialcrm.customers import CsvImportError
            from socialcrm.db import StoreError
            from socialcrm.rules import RuleError
            from socialcrm.yamldoc import YamlError

            if isinstance(err, StoreError | RuleError | YamlError | CommandError):
                raise CliError(str(err)) from err
            if isinstance(err, CsvImportError):
                raise CliError("nothing imported:\n" + "\n".join(err.problems)) from err
            raise

    return wrapper


@asynccontextmanager
async def _store(config: Config, *, create: bool = False) -> AsyncIterator[Store]:
    """The configured store. Only a command that stores what it is given (``create``) makes
    a SQLite database that is not there: one that reads or acts on what is stored says so
    instead of leaving an empty ``socialcrm.db`` behind (a typo in ``--config``, or a folder
    without its config)."""
    from socialcrm.db import open_store

    if not create:
        _need_database(config)
    store = await open_store(config.database_url())
    try:
        yield store
    finally:
        await store.dispose()


def _need_database(config: Config) -> None:
    """Refuse, saying how to make it, where the configured SQLite database is not there."""
    path = config.sqlite_path()
    if path is None or path.exists():
        return
    ctx = click.get_current_context(silent=True)
    named = ctx is not None and (ctx.find_root().obj or {}).get("config_path") is not None
    if named or Path(DEFAULT_CONFIG).exists():
        raise CliError(f"no database at {path}: `socialcrm db upgrade` creates it")
    raise CliError(
        f"no database at {path}, and no {DEFAULT_CONFIG} here: `socialcrm init` makes "
        "both, or `--config FILE` names yours"
    )


def _actor() -> Actor:
    from socialcrm.chatops.commands import Actor

    # Whoever can run the CLI can open the database itself: the CLI acts as an admin.
    return Actor(
        name=os.environ.get("SOCIALCRM_USER") or getpass.getuser(), role="admin", via="cli"
    )


def load_rules(config: Config) -> RuleSet:
    """The configured rules, loaded and checked (their reply templates are not: see
    ``_check_rules_and_templates``)."""
    from socialcrm.rules import RuleSet

    return RuleSet.load(config.rule_paths())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SOCIALCRM_CONFIG",
    help=f"Config file (default: ./{DEFAULT_CONFIG} if present, else built-in defaults).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text or as one JSON object each.",
)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, verbose: int, log_format: str) -> None:
    """socialcrm: hear every customer who talks about you, and answer well and fast."""
    from socialcrm import logs

    # The daemon says what it does at INFO; a one-shot command only warns unless asked.
    quiet = ctx.invoked_subcommand not in ("run", "demo")
    level = (logging.WARNING if quiet else logging.INFO) - 10 * verbose
    logs.configure(max(level, logging.DEBUG), "json" if log_format == "json" else "text")
    ctx.ensure_object(dict)["config_path"] = config_path


# -- set-up -----------------------------------------------------------------------------------


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default=".")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@async_command
async def init(directory: Path, force: bool) -> None:
    """Write a starter config.yaml and create its database."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DEFAULT_CONFIG
    if path.exists() and not force:
        raise CliError(f"{path} exists; use --force to overwrite it")
    path.write_text(STARTER_CONFIG, encoding="utf-8")
    config = load_config(path)
    async with _store(config, create=True) as store:
        click.echo(f"wrote {path}; database ready at {store.safe_url()}")


@main.group("config")
def config_group() -> None:
    """Check the configuration."""


@config_group.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the config file and the rule files it names."""
    from socialcrm.db import Store

    config = _load(ctx, secrets=True)
    _check_sources(ctx, config)
    rules, _ = _check_rules_and_templates(config)
    click.echo(
        f"config OK: {len(config.sources)} source(s), {len(rules.rules)} rule(s), "
        f"database {Store(config.database_url()).safe_url()}"
    )


def _check_sources(ctx: click.Context, config: Config) -> None:
    """The sources' types and settings, checked as ``run`` builds them, with file:line."""
    from socialcrm.sources import check_sources

    problems = check_sources([s for s in config.sources if s.enabled])
    if not problems:
        return
    path: Path | None = ctx.ensure_object(dict).get("config_path")
    path = path or (Path(DEFAULT_CONFIG) if Path(DEFAULT_CONFIG).exists() else None)
    where = _yaml_positions(path)
    from socialcrm.yamldoc import format_loc

    lines = [f"{where(loc)}{format_loc(loc)}: {msg}" for loc, msg in problems]
    raise CliError("bad source settings:\n" + "\n".join(lines))


def _yaml_positions(path: Path | None) -> Callable[[tuple[str | int, ...]], str]:
    from socialcrm import yamldoc

    if path is None:
        return lambda loc: ""
    doc = yamldoc.load(path)
    return lambda loc: f"{doc.where(loc)}: "


def _check_rules_and_templates(config: Config) -> tuple[RuleSet, Responder]:
    """The rules load, every reply template compiles, and every template a rule names exists;
    the rules, and the responder whose templates were compiled so (a command that drafts
    uses it rather than compile them again)."""
    from socialcrm.responder import ReplyTemplateError, load_checked
    from socialcrm.rules import RuleError

    try:
        return load_checked(config)
    except ReplyTemplateError as err:
        raise CliError(f"reply templates that cannot be used:\n{err}") from err
    except RuleError as err:
        raise CliError(f"bad rules:\n{err}") from err


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.pass_context
@async_command
async def db_upgrade(ctx: click.Context) -> None:
    """Upgrade the database schema to this version (the daemon and CLI do this on start)."""
    from socialcrm.db import Store

    config = _load(ctx)
    store = Store(config.database_url())
    try:
        await store.upgrade()
        click.echo(f"database at schema {await store.current_revision()}")
    finally:
        await store.dispose()


@db_group.command("rebuild-rollups")
@click.pass_context
@async_command
async def db_rebuild_rollups(ctx: click.Context) -> None:
    """Count every stored message into the report's rollups anew (after messages were
    imported, corrected or deleted in SQL rather than by socialcrm)."""
    import sqlalchemy as sa

    from socialcrm import rollups
    from socialcrm.db import open_store

    config = _load(ctx)
    store = await open_store(config.database_url())
    try:
        async with store.session() as session:
            await store.lock_ingest(session)  # no batch lands while the counts are redone
            await rollups.rebuild(session)
            rows = await session.execute(sa.text("SELECT count(*), sum(n) FROM message_rollup"))
            slots, messages = rows.one()
        click.echo(f"rollups rebuilt: {messages or 0} messages in {slots} rollup rows")
    finally:
        await store.dispose()


# -- the daemon -------------------------------------------------------------------------------


@main.command("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address for HTTP.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--name",
    default=None,
    help="This daemon's name among the daemons on one database (default: hostname-pid).",
)
@click.pass_context
@async_command
async def run_daemon(ctx: click.Context, host: str, port: int, name: str | None) -> None:
    """Run the monitoring daemon: poll every source, serve /healthz, /metrics and webhooks."""
    from socialcrm import daemon
    from socialcrm.sources import SourceSetupError

    _check_port(port)
    config = _load(ctx, secrets=True)
    _check_sources(ctx, config)
    rules, responder = _check_rules_and_templates(config)
    try:
        await daemon.run(config, host, port, name, rules, responder)
    except SourceSetupError as err:
        raise CliError(f"bad source settings:\n{err}") from err
    except OSError as err:
        raise CliError(f"cannot listen on {host}:{port}: {err.strerror}") from err


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise CliError(f"--port: {port} is not a TCP port (0 to 65535)")


@main.command("cluster")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.pass_context
@async_command
async def cluster_cmd(ctx: click.Context, as_json: bool) -> None:
    """The daemons on this database: which are up, since when, and what each holds."""
    from socialcrm.cluster import describe

    async with _store(_load(ctx)) as store:
        views = await describe(store)
    if as_json:
        click.echo(json.dumps([v.as_dict() for v in views], indent=2))
        return
    if not views:
        click.echo("no daemon has run on this database")
    for v in views:
        state = "up" if v.up else "down"
        click.echo(
            f"{v.name}  {state}  {v.host} pid {v.pid}  since {v.started_at:%Y-%m-%d %H:%M:%S} UTC"
            f"  heartbeat {v.heartbeat_at:%H:%M:%S}"
        )
        if v.up:
            click.echo(f"  sources: {', '.join(v.sources) or '-'}")
            click.echo(f"  jobs:    {', '.join(v.jobs) or '-'}")


# -- ingestion --------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as f:
        # Notepad and Excel save UTF-8 with a byte-order mark: no part of the first line.
        if f.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
            f.seek(0)
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace").strip()
                yield n, "\x00" + line  # flagged: not UTF-8
                continue
            if line:
                yield n, line


def parse_line(n: int, line: str) -> InboundMessage | Quarantined:
    """One JSON Lines record as a message, or as a quarantined payload with its error."""
    from pydantic import ValidationError

    from socialcrm.connector import InboundMessage, Quarantined

    if line.startswith("\x00"):
        return Quarantined(error=f"line {n}: not UTF-8", raw=line[1:])
    try:
        return InboundMessage.model_validate_json(line)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(record)"
        return Quarantined(error=f"line {n}: {where}: {first['msg']}", raw=line[:100_000])


@main.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--source", default=None, help="Source name to record (default: file:NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--backfill",
    is_flag=True,
    help="Old messages: store, score, link and count them, but make no drafts and no "
    "alerts of their own (messages older than backfill_before are treated so anyway).",
)
@click.pass_context
@async_command
async def ingest(
    ctx: click.Context, file: Path, source: str | None, as_json: bool, backfill: bool
) -> None:
    """Ingest a JSON Lines file of messages (one InboundMessage per line)."""
    from socialcrm.pipeline import Pipeline
    from socialcrm.runtime import tune_gc

    config = _load(ctx)
    source = source or f"file:{file.name}"[:128]
    size = file.stat().st_size
    show_bar = size > 1_000_000 and sys.stderr.isatty()
    # As the daemon starts: rules and reply templates checked before anything is stored.
    rules, responder = _check_rules_and_templates(config)
    async with _store(config, create=True) as store, _scoring(config, rules) as scoring:
        pipeline = Pipeline(config, store, rules=rules, responder=responder, scoring=scoring)
        tune_gc()
        with (
            click.progressbar(length=size, label="ingesting", file=sys.stderr, show_pos=False)
            if show_bar
            else _no_bar()
        ) as bar:
            total = await pipeline.ingest_stream(
                _file_batches(file, bar.update), source, save_cursor=False, backfill=backfill
            )
    if as_json:
        click.echo(json.dumps(asdict(total)))
    else:
        click.echo(_summary(total))
    _partial(ctx, total.quarantined)


async def _file_batches(file: Path, progress: Callable[[int], None]) -> AsyncIterator[Batch]:
    """The lines of a JSON Lines file as batches; bad lines ride along as quarantined."""
    from socialcrm.connector import Batch, InboundMessage

    batch = Batch()
    done = 0
    for n, line in _read_jsonl(file):
        item = parse_line(n, line)
        if isinstance(item, InboundMessage):
            batch.messages.append(item)
        else:
            batch.quarantined.append(item)
        done += len(line) + 1
        if len(batch.messages) + len(batch.quarantined) >= FILE_BATCH:
            yield batch
            progress(done)
            done = 0
            batch = Batch()
    if batch.messages or batch.quarantined:
        yield batch
        progress(done)


@asynccontextmanager
async def _scoring(config: Config, rules: RuleSet) -> AsyncIterator[ScoringPool]:
    from socialcrm.scoring import ScoringPool

    pool = ScoringPool.for_config(config, rules)
    try:
        yield pool
    finally:
        pool.close()


class _no_bar:
    def __enter__(self) -> _no_bar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _summary(r: IngestResult) -> str:
    return (
        f"{r.stored} stored, {r.duplicates} already there, {r.quarantined} quarantined, "
        f"{r.ignored} ignored as noise\n"
        f"{r.new_customers} new customers; tickets: {r.tickets_opened} opened, "
        f"{r.tickets_threaded} updated, {r.tickets_reopened} reopened\n"
        f"{r.drafts} drafts awaiting approval"
        + (f" ({r.draft_problems} need an edit)" if r.draft_problems else "")
        + f", {r.escalations} escalations"
    )


# -- customers --------------------------------------------------------------------------------


@main.group("customers")
def customers_group() -> None:
    """Customer records."""


@customers_group.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.pass_context
@async_command
async def customers_import(ctx: click.Context, file: Path) -> None:
    """Create or update customers from a CSV file (all rows or none)."""
    from socialcrm import customers as customers_mod

    config = _load(ctx)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CliError(f"{file}: not UTF-8 text") from err
    rows = customers_mod.parse_csv(text)
    async with _store(config, create=True) as store, store.session() as s:
        actor = _actor()
        result = await customers_mod.import_customers(s, rows, actor.name, actor.via)
    click.echo(
        f"{result.created} customers created, {result.updated} updated, "
        f"{result.identities} identities added"
    )


@customers_group.command("show")
@click.argument("who")
@click.pass_context
@async_command
async def customers_show(ctx: click.Context, who: str) -> None:
    """Show a customer by id, email or handle."""
    await _run_command(ctx, f"customer {who}")


@customers_group.command("merge")
@click.argument("keep")
@click.argument("merge")
@click.pass_context
@async_command
async def customers_merge(ctx: click.Context, keep: str, merge: str) -> None:
    """Merge customer MERGE into KEEP: every identity, message and ticket moves to KEEP."""
    from socialcrm import customers as customers_mod
    from socialcrm.chatops.commands import find_customer

    config = _load(ctx)
    async with _store(config) as store, store.session() as s:
        a = await find_customer(s, keep)
        b = await find_customer(s, merge)
        if a is None or b is None:
            raise CliError(f"no customer matches {keep if a is None else merge!r}")
        assert a.id is not None and b.id is not None
        actor = _actor()
        try:
            moved = await customers_mod.merge(s, a.id, b.id, actor.name, actor.via)
        except (ValueError, LookupError) as err:
            raise CliError(str(err)) from err
    click.echo(
        f"merged customer #{b.id} into #{a.id}: "
        + ", ".join(f"{n} {table}(s)" for table, n in moved.items())
        + " moved"
    )


# -- tickets and the approval queue (the chat-ops command layer) -------------------------------


async def _run_command(ctx: click.Context, line: str) -> None:
    from socialcrm.chatops.commands import Commands

    config = _load(ctx)
    async with _store(config) as store:
        click.echo(await Commands(config, store).run(_actor(), line))


@main.group("tickets")
def tickets_group() -> None:
    """Tickets."""


@tickets_group.command("list")
@click.option(
    "--status", default="open", show_default=True, help="open, pending, resolved, closed or all"
)
@click.option("--limit", default=50, show_default=True)
@click.pass_context
@async_command
async def tickets_list(ctx: click.Context, status: str, limit: int) -> None:
    """List tickets, highest priority first."""
    await _run_command(ctx, f"tickets {status} {limit}")


@tickets_group.command("show")
@click.argument("ticket_id", type=int)
@click.pass_context
@async_command
async def tickets_show(ctx: click.Context, ticket_id: int) -> None:
    """Show one ticket with its messages and replies."""
    await _run_command(ctx, f"ticket {ticket_id}")


def _chat_command(
    name: str, *arg_names: str, rest: bool = False, optional: tuple[str, ...] = ()
) -> None:
    """Expose a chat-ops command on the CLI, with the command's own docstring as help.

    ``optional`` names the trailing arguments the command may go without (``queue [LIMIT]``).
    """

    @click.pass_context
    @async_command
    async def run(ctx: click.Context, **kwargs: Any) -> None:
        words = []
        for a in arg_names:
            v = kwargs[a]
            if v is None:
                continue
            words.append(" ".join(v) if isinstance(v, tuple) else str(v))
        await _run_command(ctx, " ".join([name, *words]))

    fn: Any = run
    for i, a in reversed(list(enumerate(arg_names))):
        last = i == len(arg_names) - 1
        fn = click.argument(a, nargs=-1 if (rest and last) else 1, required=a not in optional)(fn)
    main.command(name, cls=_ChatCommand)(fn)


class _ChatCommand(click.Command):
    """A CLI command whose help is its chat command's docstring, read only when shown (the
    command layer is not imported to run another command)."""

    @property  # type: ignore[override]
    def help(self) -> str | None:
        """The chat command's docstring."""
        from socialcrm.chatops.commands import Commands

        # A command's method is its name with "_" for "-" (needs-reply: needs_reply).
        method = (self.name or "").replace("-", "_")
        return (Commands.__dict__[method].__doc__ or "").strip()

    @help.setter
    def help(self, value: str | None) -> None:
        pass  # always the docstring


@main.command("queue", cls=_ChatCommand)
@click.argument("limit", required=False)
@click.pass_context
def queue(ctx: click.Context, limit: str | None) -> None:
    # The chat command's answer, read through the plain driver when the database allows
    # (socialcrm.approvals): the command people type most starts without SQLAlchemy.
    from socialcrm import approvals

    config = _load(ctx)
    if limit is None or (limit.isascii() and limit.isdigit()):
        found = approvals.read_direct(
            config.database_url(), approvals.DEFAULT_LIMIT if limit is None else int(limit)
        )
        if found is not None:
            from socialcrm.templating import render_chat, template_environment

            rows, total = found
            click.echo(render_chat(template_environment(None), "queue", rows=rows, total=total))
            return
    # A database to upgrade (or none yet, which the store names), or a LIMIT the command
    # layer refuses: its answer.
    async_command(_run_command)(ctx, "queue" if limit is None else f"queue {limit}")


_chat_command("show", "reply_id")
_chat_command("approve", "reply_id")
_chat_command("edit", "reply_id", "text", rest=True)
_chat_command("reject", "reply_id", "reason", rest=True)
_chat_command("assign", "ticket_id", "user")
_chat_command("close", "ticket_id")
_chat_command("resolve", "ticket_id")
_chat_command("mute", "source", "duration")
_chat_command("relabel", "message_id", "label")
_chat_command("needs-reply", "message_id", "answer")


# -- the learned triage model -----------------------------------------------------------------


@main.group("triage")
def triage_group() -> None:
    """The learned triage model: labels, training, evaluation."""


def _read_labelled(file: Path) -> tuple[list[Any], list[str]]:
    from socialcrm import triage

    items: list[triage.Labelled] = []
    problems: list[str] = []
    for n, line in _read_jsonl(file):
        if line.startswith("\x00"):
            problems.append(f"line {n}: not UTF-8")
            continue
        found = triage.parse_labelled(n, line)
        if isinstance(found, str):
            problems.append(found)
        else:
            items.append(found)
    return items, problems


def _show_problems(problems: list[str]) -> None:
    for p in problems[:20]:
        click.echo(f"skipped {p}", err=True)
    if len(problems) > 20:
        click.echo(f"... and {len(problems) - 20} more line(s) skipped", err=True)


@triage_group.command("learn")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--no-train", is_flag=True, help="Import only; the daemon or `triage train` trains later."
)
@click.pass_context
@async_command
async def triage_learn(ctx: click.Context, file: Path, no_train: bool) -> None:
    """Import labels from a JSON Lines file of messages (the `socialcrm ingest` format), each
    with `sentiment_label` (negative|neutral|positive) and/or `needs_reply` (true|false), then
    train a model version once there are `triage.min_labels` labels in all."""
    from socialcrm import triage
    from socialcrm.models import AuditEvent

    config = _load(ctx)
    items, problems = _read_labelled(file)
    _show_problems(problems)
    if not items:
        raise CliError(f"{file}: no labelled messages to learn from")
    # One word a message (the later line's), so that importing the file again changes nothing.
    items, merged = triage.merge_duplicates(items)
    actor = _actor()
    async with _store(config, create=True) as store, store.session() as s:
        counts = await triage.import_labels(s, items, actor.name, actor.via)
        s.add(
            AuditEvent(
                actor=actor.name,
                via=actor.via,
                action="triage.learn",
                object_type="file",
                object_id=file.name[:64],
                detail={"labels": counts, "skipped": len(problems), "merged": merged},
            )
        )
    same = counts.get("unchanged", 0)
    relabelled = counts.get("relabelled", 0)
    click.echo(
        f"{counts.get('sentiment', 0)} sentiment and {counts.get('needs_reply', 0)} needs-reply "
        f"label(s) imported from {len(items)} message(s) ({counts.get('linked', 0)} of them "
        f"stored here as messages), {len(problems)} line(s) skipped"
        + (f", {merged} duplicate line(s) merged" if merged else "")
        + (f", {same} label(s) already here as given" if same else "")
        + (
            f", {relabelled} label(s) imported before and relabelled since, left as relabelled"
            if relabelled
            else ""
        )
    )
    # Nothing new is nothing to train on: the same file again makes no new version.
    nothing_new = not counts.get("sentiment") and not counts.get("needs_reply")
    if no_train or not config.triage.enabled or nothing_new:
        async with _store(config) as store, store.reader() as s:
            ts = await triage.training_set(s)
        why = "" if no_train or not config.triage.enabled else "no new labels; "
        way = _train_now(ts.messages, config.triage.min_labels, triage.untrainable(ts))
        click.echo(f"not trained: {why}{way}")
    else:
        # What was learned is used at once: by `socialcrm ingest` too, with no daemon running.
        try:
            click.echo(await _train(config))
        except CliError as err:
            click.echo(f"not trained yet: {err.message}")
    _partial(ctx, len(problems))


@triage_group.command("train")
@click.option(
    "--min-labels",
    type=click.IntRange(min=1),
    default=None,
    help="Train from this many labelled messages. Default: triage.min_labels.",
)
@click.pass_context
@async_command
async def triage_train(ctx: click.Context, min_labels: int | None) -> None:
    """Train a new model version from every label now, and show its card."""

    config = _load(ctx)
    click.echo(await _train(config, min_labels))


def _train_now(labelled: int, min_labels: int, lacking: str | None) -> str:
    """How a model is trained now, with this many labelled messages; ``lacking``: what more
    the labels must show first (``triage.untrainable``), None if nothing."""
    if not labelled:
        return "`socialcrm triage learn FILE` imports labels"
    if lacking is not None:
        return f"more labels first: {lacking}"
    if labelled >= min_labels:
        return "`socialcrm triage train` trains now"
    return f"`socialcrm triage train --min-labels {labelled}` trains on these {labelled} now"


async def _train(config: Config, min_labels: int | None = None) -> str:
    """Train a new model version from every label; its card, as `triage status` shows it."""
    from socialcrm import triage
    from socialcrm.sentiment import SentimentScorer

    actor = _actor()
    async with _store(config) as store:
        try:
            await triage.retrain(
                store,
                SentimentScorer.for_brand(config.brand),
                load_rules(config),
                actor.name,
                actor.via,
                min_labels=config.triage.min_labels if min_labels is None else min_labels,
                on_start=lambda ts: click.echo(
                    f"training on {ts.messages} labelled message(s): cross-validated in 5 "
                    "folds, then fitted on all of them (well under a minute for 2,000)...",
                    err=True,
                ),
            )
        except triage.TooFewLabels as err:
            said = "triage.min_labels" if min_labels is None else "--min-labels"
            raise CliError(
                f"{err.labelled} labelled message(s); at least {err.needed} are needed ({said}): "
                + _train_now(err.labelled, err.needed, err.lacking)
            ) from err
        except triage.TriageError as err:
            raise CliError(str(err)) from err
        return await _triage_status(store, config)


@triage_group.command("status")
@click.pass_context
@async_command
async def triage_status(ctx: click.Context) -> None:
    """Show the newest model version and its card (training size, date, scores, failures)."""
    config = _load(ctx)
    async with _store(config) as store:
        click.echo(await _triage_status(store, config))


async def _triage_status(store: Store, config: Config) -> str:
    from socialcrm import triage
    from socialcrm.templating import template_environment

    async with store.reader() as s:
        row = await triage.newest(s)
        ts = await triage.training_set(s)
        new = await triage.labels_since(s, row.created_at if row is not None else None)
    cfg = config.triage
    threshold = None
    if row is not None:
        threshold = cfg.threshold(row.scores)
    text = (
        template_environment(None)
        .get_template("triage/status.j2")
        .render(
            row=row,
            labelled=ts.messages,
            new_labels=new,
            min_labels=config.triage.min_labels,
            train_now=_train_now(ts.messages, config.triage.min_labels, triage.untrainable(ts)),
            in_use=config.triage.enabled,
            starter=config.triage.use_starter,
            threshold=threshold,
            sure_at=cfg.min_confidence,
        )
    )
    return text.strip()


@triage_group.command("eval")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
@async_command
async def triage_eval(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Cross-validated precision, recall and F1 per class of the model trained on FILE's
    labels, beside VADER and the rules alone on the same messages. Nothing is stored."""
    import asyncio

    from socialcrm import triage
    from socialcrm.sentiment import SentimentScorer
    from socialcrm.templating import template_environment

    config = _load(ctx)
    items, problems = _read_labelled(file)
    _show_problems(problems)
    if not items:
        raise CliError(f"{file}: no labelled messages to evaluate on")
    items, merged = triage.merge_duplicates(items, same_text=True)
    rules = load_rules(config)
    scorer = SentimentScorer.for_brand(config.brand)
    results = await asyncio.to_thread(triage.evaluate, items, scorer, rules)
    if as_json:
        if merged:
            click.echo(f"{merged} duplicate line(s) merged", err=True)
        # What the figures stand on beside them: a script sees lines left out, as a person does.
        counts = {"messages": len(items), "skipped": len(problems), "merged": merged}
        click.echo(json.dumps({**counts, **results}))
        _partial(ctx, len(problems))
        return
    text = (
        template_environment(None)
        .get_template("triage/eval.j2")
        .render(
            results=results,
            count=len(items),
            file=file.name,
            problems=len(problems),
            merged=merged,
        )
    )
    click.echo(text.strip())
    _partial(ctx, len(problems))


@main.group("sources", invoke_without_command=True)
@click.pass_context
def sources_group(ctx: click.Context) -> None:
    """Configured sources with their state (ok, failing, paused, muted); `resume` one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(sources_list)


@sources_group.command("list")
@click.pass_context
@async_command
async def sources_list(ctx: click.Context) -> None:
    """Every configured source with its state."""
    await _run_command(ctx, "sources")


@sources_group.command("resume")
@click.argument("name")
@click.pass_context
@async_command
async def sources_resume(ctx: click.Context, name: str) -> None:
    """Poll a source paused for refused credentials again (a running daemon notices)."""
    await _run_command(ctx, f"resume {name}")


@main.command("report")
@click.option("--period", default="7d", show_default=True, help="Length, e.g. 24h, 7d, 30d.")
@click.option(
    "--end",
    default=None,
    help="Last day of the period (YYYY-MM-DD, whole days in brand.timezone) or an ISO time; "
    "default: the last whole hour (periods up to 2 days) or day in brand.timezone.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md", "json", "csv"]),
    default="md",
    show_default=True,
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write here instead of standard output.",
)
@click.pass_context
@async_command
async def report_command(
    ctx: click.Context, period: str, end: str | None, fmt: str, output: Path | None
) -> None:
    """Sentiment and service report for a period, compared with the period before it."""
    import asyncio
    from zoneinfo import ZoneInfo

    from socialcrm.models import utcnow
    from socialcrm.reports import build_report, last_complete, prepare, render
    from socialcrm.timespec import parse_period

    config = _load(ctx)
    try:
        span = parse_period(period, timedelta(days=3660))
    except ValueError as err:
        raise CliError(f"--period: {err}") from err
    tz = ZoneInfo(config.brand.timezone)
    if end is None:
        until = last_complete(utcnow(), span, config.brand.timezone)
    else:
        try:
            if len(end) == 10:  # a day: the period ends at the midnight after it
                until = datetime.combine(date.fromisoformat(end), time(), tz) + timedelta(days=1)
            else:
                until = datetime.fromisoformat(end)
                until = until if until.tzinfo else until.replace(tzinfo=tz)
        except ValueError as err:
            raise CliError(f"--end: expected YYYY-MM-DD or an ISO time, got {end!r}") from err
    templates = config.report_templates()
    # matplotlib and the templates load in a thread while the queries run.
    ready = asyncio.create_task(asyncio.to_thread(prepare, fmt, templates_dir=templates))  # type: ignore[arg-type]
    async with _store(config) as store:
        found = await build_report(
            store, period=span, end=until, brand=config.brand.name, tz=config.brand.timezone
        )
    await ready
    text = render(found, fmt, templates_dir=templates)  # type: ignore[arg-type]
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as err:
        raise CliError(f"cannot write {output}: {err.strerror}") from err
    click.echo(f"report written to {output} ({len(text.encode()):,} bytes)", err=True)


# -- quarantine -------------------------------------------------------------------------------


@main.group("quarantine")
def quarantine_group() -> None:
    """Payloads that could not be processed."""


@quarantine_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include retried and discarded ones.")
@click.pass_context
@async_command
async def quarantine_list(ctx: click.Context, show_all: bool) -> None:
    """List quarantined payloads with their errors."""
    import sqlalchemy as sa

    from socialcrm.models import Quarantine

    config = _load(ctx)
    async with _store(config) as store, store.reader() as s:
        q = sa.select(Quarantine).order_by(Quarantine.id)  # type: ignore[arg-type]
        if not show_all:
            q = q.where(Quarantine.status == "waiting")
        rows = list((await s.execute(q)).scalars())
    from socialcrm.templating import template_environment

    page = template_environment(None).get_template("chat/quarantine.j2")
    click.echo(page.render(rows=rows, show_all=show_all).strip())


@quarantine_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.pass_context
@async_command
async def quarantine_retry(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Process quarantined payloads again (all waiting ones, or the IDs given)."""
    import sqlalchemy as sa

    from socialcrm.connector import Batch, Quarantined
    from socialcrm.models import Quarantine, utcnow
    from socialcrm.pipeline import Pipeline

    config = _load(ctx)
    async with _store(config) as store:
        rules, responder = _check_rules_and_templates(config)
        pipeline = Pipeline(config, store, rules=rules, responder=responder)
        async with store.reader() as s:
            q = sa.select(Quarantine).where(Quarantine.status == "waiting")
            if ids:
                q = q.where(Quarantine.id.in_(ids))  # type: ignore[union-attr]
            rows = list((await s.execute(q.order_by(Quarantine.id))).scalars())  # type: ignore[arg-type]
        ok = failed = 0
        for row in rows:
            item = parse_line(0, row.raw)
            async with store.session() as s:
                entry = await s.get(Quarantine, row.id, with_for_update=True)
                assert entry is not None
                entry.attempts += 1
                if isinstance(item, Quarantined):
                    entry.error = item.error.replace("line 0: ", "", 1)
                    failed += 1
                    continue
            result = await pipeline.ingest(Batch(messages=[item]), row.source, save_cursor=False)
            async with store.session() as s:
                entry = await s.get(Quarantine, row.id, with_for_update=True)
                assert entry is not None
                if result.quarantined:
                    failed += 1
                else:
                    entry.status = "retried"
                    entry.retried_at = utcnow()
                    ok += 1
    click.echo(f"{ok} retried successfully, {failed} still failing")
    _partial(ctx, failed)


# -- alerts and the audit log ----------------------------------------------------------------


@main.group("alerts")
def alerts_group() -> None:
    """Alerts and their delivery."""


@alerts_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include delivered alerts.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.pass_context
@async_command
async def alerts_list(ctx: click.Context, show_all: bool, limit: int) -> None:
    """Alerts waiting for a sink or failed (with --all, delivered ones too), newest first, and
    the backlog: drafts waiting, replies sent and failed, alerts waiting and failed."""
    import sqlalchemy as sa
    from sqlmodel import col

    from socialcrm import backlog
    from socialcrm.alerts import delivery_state
    from socialcrm.models import Alert
    from socialcrm.templating import template_environment

    config = _load(ctx)
    async with _store(config) as store:
        counts = await backlog.count(store)
        async with store.reader() as s:
            q = sa.select(Alert).order_by(col(Alert.id).desc()).limit(limit)
            if not show_all:
                q = q.where(col(Alert.status) != "delivered")
            rows = list((await s.execute(q)).scalars())
    sinks = {a.id: delivery_state(a).get("sinks") or {} for a in rows}
    page = template_environment(None).get_template("chat/alerts.j2")
    click.echo(page.render(rows=rows, sinks=sinks, counts=counts, show_all=show_all).strip())


@main.command("audit")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--actor", default=None, help="Only what this person did.")
@click.option("--action", default=None, help="Only actions starting with this, e.g. reply.")
@click.pass_context
@async_command
async def audit_command(
    ctx: click.Context, limit: int, actor: str | None, action: str | None
) -> None:
    """The audit log, newest first: who did what, when, and from where."""
    import sqlalchemy as sa
    from sqlmodel import col

    from socialcrm.models import AuditEvent
    from socialcrm.templating import template_environment

    config = _load(ctx)
    async with _store(config) as store, store.reader() as s:
        q = sa.select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(limit)
        if actor:
            q = q.where(col(AuditEvent.actor) == actor)
        if action:
            q = q.where(col(AuditEvent.action).startswith(action, autoescape=True))
        rows = list((await s.execute(q)).scalars())
    page = template_environment(None).get_template("chat/audit.j2")
    click.echo(page.render(rows=rows).strip())


# -- rules ------------------------------------------------------------------------------------


@main.group("rules")
def rules_group() -> None:
    """Rule files."""


@rules_group.command("check")
@click.pass_context
def rules_check(ctx: click.Context) -> None:
    """Load every configured rule file and report problems with file:line."""
    config = _load(ctx)
    rules, _ = _check_rules_and_templates(config)
    click.echo(f"{len(rules.rules)} rules OK in {len(config.rule_paths())} file(s)")


@rules_group.command("test")
@click.pass_context
def rules_test(ctx: click.Context) -> None:
    """Run the example-based tests kept next to the rule files (x.yaml -> x.tests.yaml)."""
    from socialcrm.rules import RuleError, find_rule_tests, run_rule_tests
    from socialcrm.sentiment import SentimentScorer

    config = _load(ctx)
    try:
        rules = load_rules(config)
        scorer = SentimentScorer.for_brand(config.brand)
        results = run_rule_tests(rules, find_rule_tests(config.rule_paths()), scorer.compound)
    except RuleError as err:
        raise CliError(f"bad rules:\n{err}") from err
    failed = [r for r in results if not r.passed]
    for r in failed:
        click.echo(f"FAIL {r.name} ({r.source})")
        for p in r.problems:
            click.echo(f"    {p}")
    click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(1)


@rules_group.command("explain")
@click.argument("text", required=False)
@click.option(
    "--message",
    "message_id",
    type=int,
    default=None,
    help="A stored message instead of TEXT: read again as it came in, beside what was stored.",
)
@click.option("--public", is_flag=True, help="Found by search, not sent to us.")
@click.option("--channel", type=click.Choice(CHANNELS), default="x", show_default=True)
@click.option("--source", default=None, help="The configured source's name (default: the channel).")
@click.option("--lang", default=None, help="The platform's language tag (default: detected).")
@click.option(
    "--at",
    "at",
    type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]),
    default=None,
    help="When it arrived, in the brand's time zone (default: now).",
)
@click.option("--ticket-open", is_flag=True, help="The customer already has an open ticket.")
@click.option(
    "--no-model", is_flag=True, help="Leave the team's triage model out: the rules alone."
)
@click.option("--all", "every_rule", is_flag=True, help="List every rule, not only those involved.")
@click.pass_context
@async_command
async def rules_explain(
    ctx: click.Context,
    text: str | None,
    message_id: int | None,
    public: bool,
    channel: str,
    source: str | None,
    lang: str | None,
    at: datetime | None,
    ticket_open: bool,
    no_model: bool,
    every_rule: bool,
) -> None:
    """explain TEXT | --message ID — why the rules (and the team's model) decide what they do
    for a message: each rule's outcome, the conditions on the text that hold, by file and line,
    and what they found."""
    from zoneinfo import ZoneInfo

    from socialcrm.explain import Message, explain, stored_message, team_model

    if (text is None) == (message_id is None):
        raise CliError("give a TEXT or --message ID (one of them)")
    if message_id is not None:
        # A stored message is read as it came in: what-if options would be silently ignored.
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("public", "channel", "source", "lang", "at", "ticket_open")
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise CliError(
                f"{', '.join(given)}: for a TEXT; --message reads the stored message as it came in"
            )
    config = _load(ctx)
    rules, _ = _check_rules_and_templates(config)
    if message_id is not None:
        _need_database(config)  # where the message would be, and how to make it
        found = await stored_message(config, message_id)
        if isinstance(found, str):
            raise CliError(found)
        message = found
    else:
        assert text is not None
        if at is not None:
            at = at.replace(tzinfo=ZoneInfo(config.brand.timezone))
        message = Message(text, not public, channel, source or channel, lang, at, ticket_open)
    team = "left out (--no-model): the rules decide alone" if no_model else await team_model(config)
    click.echo("\n".join(explain(config, rules, message, team, every_rule=every_rule)))


# -- the demo and the sandbox ----------------------------------------------------------------


@main.command()
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default="demo"
)
@click.option("--messages", default=500, show_default=True, help="Mentions to generate.")
@async_command
async def demo(directory: Path, messages: int) -> None:
    """Run the sandbox and the daemon against it, then show what came in (data in ./demo)."""
    from socialcrm.demo import run_demo

    await run_demo(directory, messages)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--messages", default=5000, show_default=True, help="Mentions to generate.")
@click.option("--rate", default=2.0, show_default=True, help="Mentions released per second.")
@click.option("--faults", default=0.0, show_default=True, help="Share of requests that misbehave.")
@async_command
async def sandbox(
    host: str, port: int, seed: int, messages: int, rate: float, faults: float
) -> None:
    """Serve local stand-ins for X, Mastodon, Reddit and Slack (to try socialcrm without
    accounts)."""
    import asyncio

    from socialcrm.models import utcnow
    from socialcrm.sandbox.server import Sandbox, serve, start_ending_before

    _check_port(port)
    box = Sandbox(
        seed,
        messages=messages,
        # Dated up to now, so a fresh daemon does not find months of overdue tickets.
        start=start_ending_before(utcnow(), seed, messages),
        release_per_s=rate,
        faults=fault_mix(seed, faults) if faults else None,
    )
    try:
        runner = await serve(box, host, port)
    except OSError as err:
        raise CliError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    from socialcrm.sandbox.server import SLACK_APPROVER, SLACK_CHANNEL
    from socialcrm.sandbox.x import BRAND_USER_ID
    from socialcrm.templating import template_environment

    page = template_environment(None).get_template("chat/sandbox.j2")
    click.echo(
        page.render(
            base=f"http://{host}:{port}",
            rate=rate,
            faults=faults,
            creds=box.credentials,
            brand_handle=box.brand_handle,
            slack_channel=SLACK_CHANNEL,
            slack_approver=SLACK_APPROVER,
            slack=box.slack,
            x_user_id=BRAND_USER_ID,
        ).strip()
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def fault_mix(seed: int, share: float) -> Any:
    """A typical mix of faults, scaled so that ``share`` of requests misbehave."""
    import dataclasses

    from socialcrm.sandbox.faults import REQUEST_FAULTS, Faults

    typical = Faults.typical(seed)
    total = sum(getattr(typical, k) for k in REQUEST_FAULTS)
    scale = share / total
    return dataclasses.replace(
        typical,
        **{k: getattr(typical, k) * scale for k in REQUEST_FAULTS},
        bad_item=typical.bad_item * scale,
    )


if __name__ == "__main__":
    main()
