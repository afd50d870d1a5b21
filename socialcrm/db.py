"""The store: engines, sessions, SQLite pragmas, PostgreSQL, and schema upgrades."""

from __future__ import annotations

import hashlib
import logging
import operator
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from socialcrm.migrations import MIGRATIONS_DIR, code_head

log = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock that serialises schema upgrades between daemons.
_UPGRADE_LOCK_KEY = 0x50C1A1C8
#: Key of the advisory lock between batch ingestion (shared: batches run side by side) and
#: the commands that must see no batch land (exclusive, e.g. ``db rebuild-rollups``).
INGEST_LOCK_KEY = 0x50C1A1C9


def key_id(key: str) -> int:
    """A stable signed 64-bit advisory lock id for a key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), signed=True)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def keys_in(
    dialect: str,
    columns: Sequence[sa.ColumnElement[Any]],
    values: Sequence[Sequence[Any]] | Sequence[Any],
) -> sa.ColumnElement[bool]:
    """``columns IN values`` with the values as one parameter, however many there are.

    A plain IN list becomes one bound parameter per value, which SQLAlchemy renders anew for
    every statement; a JSON array (SQLite) or arrays (PostgreSQL) is a single parameter.
    """
    if len(columns) == 1:
        col = columns[0]
        if dialect == "postgresql":
            return col == sa.func.any(sa.bindparam(None, list(values), type_=ARRAY(col.type)))
        sub = sa.text("SELECT value FROM json_each(:v)").bindparams(
            sa.bindparam("v", _json_dumps(list(values)), unique=True)
        )
        return col.in_(sub)
    if dialect == "postgresql":
        arrays = [
            sa.bindparam(None, [v[i] for v in values], type_=ARRAY(c.type))
            for i, c in enumerate(columns)
        ]
        names = [f"c{i}" for i in range(len(columns))]
        unnest = sa.select(sa.func.unnest(*arrays).table_valued(*names).render_derived())
        return sa.tuple_(*columns).in_(unnest)
    parts = ", ".join(f"value ->> {i}" for i in range(len(columns)))
    sub = sa.text(f"SELECT {parts} FROM json_each(:v)").bindparams(
        sa.bindparam("v", _json_dumps([list(v) for v in values]), unique=True)
    )
    return sa.tuple_(*columns).in_(sub)


# Alembic loads only to migrate or inspect: a database already at the code's schema is
# recognised with one query (see ``Store.ensure_schema``).
if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory


class StoreError(RuntimeError):
    """The database cannot be used as configured; the message says why in one line."""


def alembic_config(url: str | None = None) -> AlembicConfig:
    """An Alembic config pointing at the shipped migrations."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def _sqlite_pragmas(engine: AsyncEngine, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (the driver's implicit BEGIN is deferred and can fail
        # with "database is locked" when a reader later wants to write).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        # 64 MiB of page cache (the default is 2 MiB): batch inserts touch many index pages.
        cur.execute("PRAGMA cache_size=-65536")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Store:
    """Engines and sessions for one database URL.

    On SQLite, writes go through an engine whose transactions start with ``BEGIN IMMEDIATE``
    so that two writers queue on the busy timeout instead of failing; reads use plain BEGIN
    and never wait for a writer (WAL).
    """

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {
            "echo": echo,
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
        }
        if self.is_sqlite:
            self.engine = create_async_engine(url, **kwargs)
            _sqlite_pragmas(self.engine, immediate=True)
            self.read_engine = create_async_engine(url, **kwargs)
            _sqlite_pragmas(self.read_engine, immediate=False)
        else:
            self.engine = create_async_engine(url, pool_pre_ping=True, **kwargs)
            self.read_engine = self.engine

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A write session in one transaction: committed on success, rolled back on error."""
        async with AsyncSession(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        """A read-only session that never waits for a writer."""
        async with AsyncSession(self.read_engine, expire_on_commit=False) as s, s.begin():
            yield s

    async def lock_ingest(self, session: AsyncSession) -> None:
        """Keep every batch out until this transaction ends (on PostgreSQL)."""
        if not self.is_sqlite:
            await session.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": INGEST_LOCK_KEY}
            )

    async def lock_keys(self, session: AsyncSession, keys: Iterable[str]) -> None:
        """Take a transaction-level advisory lock on each key (PostgreSQL), in one order for
        every writer so that two cannot deadlock on them, beside a shared hold on the ingest
        lock. Writers whose keys differ run side by side; SQLite has one writer anyway."""
        if self.is_sqlite:
            return
        ids = sorted({key_id(k) for k in keys})
        await session.execute(
            sa.text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": INGEST_LOCK_KEY}
        )
        if ids:
            # unnest yields the array in its order, so the locks are taken in sorted order.
            await session.execute(
                sa.text(
                    "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:ids AS bigint[])) k"
                ),
                {"ids": ids},
            )

    async def current_revision(self) -> str | None:
        """The schema revision the database is at (None for an empty database)."""
        from alembic.runtime.migration import MigrationContext

        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )

    async def _recorded_revision(self) -> str | None:
        """The revision in ``alembic_version`` by a plain query (None: no table, or no row)."""
        async with self.engine.connect() as conn:
            has_table = await conn.run_sync(lambda c: sa.inspect(c).has_table("alembic_version"))
            if not has_table:
                return None
            rows = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
        return str(rows[0][0]) if len(rows) == 1 else None

    async def upgrade(self, revision: str = "head") -> None:
        """Bring the schema up to ``revision``; safe when several daemons start at once."""
        try:
            async with self.engine.begin() as conn:
                await self._lock_upgrade(conn)
                await conn.run_sync(_run_upgrade, revision)
        except (OSError, sa.exc.DBAPIError) as err:  # unreachable, refused, no such database
            raise StoreError(f"cannot open the database {self.safe_url()}: {_short(err)}") from err

    async def downgrade(self, revision: str) -> None:
        """Take the schema back to ``revision`` ("base" drops every table)."""
        async with self.engine.begin() as conn:
            await self._lock_upgrade(conn)
            await conn.run_sync(_run_downgrade, revision)

    async def ensure_schema(self) -> None:
        """Upgrade the database if it is behind the code; refuse one that is ahead of it."""
        self._check_sqlite_file()
        try:
            recorded = await self._recorded_revision()
        except (OSError, sa.exc.DBAPIError) as err:  # unreachable, refused, no such database
            raise StoreError(f"cannot open the database {self.safe_url()}: {_short(err)}") from err
        if recorded is not None and recorded == code_head():
            return
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(alembic_config())
        head = script.get_current_head()
        try:
            current = await self.current_revision()
        except (OSError, sa.exc.DBAPIError) as err:
            raise StoreError(f"cannot open the database {self.safe_url()}: {_short(err)}") from err
        if current == head:
            return
        if current is not None and not _known_revision(script, current):
            raise StoreError(
                f"the database is at schema {current}, which this version of socialcrm "
                "does not know (is a newer version running against it?)"
            )
        log.info("upgrading database schema %s -> %s", current or "(empty)", head)
        await self.upgrade()

    def _check_sqlite_file(self) -> None:
        """Open a SQLite file once in this thread before the driver's own thread does.

        A connection that fails inside aiosqlite's worker thread answers the event loop from
        that thread, and if the loop has closed by then (the command ended with its one-line
        error) the thread prints a traceback of its own.
        """
        database = sa.engine.make_url(self.url).database
        if not self.is_sqlite or not database or database == ":memory:":
            return
        try:
            sqlite3.connect(database).close()
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the database {self.safe_url()}: {err}") from err

    async def _lock_upgrade(self, conn: AsyncConnection) -> None:
        if not self.is_sqlite:
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK_KEY}
            )

    def safe_url(self) -> str:
        """The URL with any password hidden."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)


async def executemany(session: AsyncSession, stmt: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Run one statement for many rows in a single driver call.

    SQLAlchemy's executemany builds each row's parameters through several layers; here the
    statement is compiled once and each value goes through just its column type's own bind
    processor, which is several times faster for the thousands of rows of a batch.
    """
    if not rows:
        return
    conn = await session.connection()
    compiled = _compiled(stmt, conn.dialect, tuple(rows[0]))
    order = compiled.positiontup
    if order is None:  # a named-parameter driver: let SQLAlchemy do it
        await session.execute(stmt, list(rows))
        return
    procs = compiled._bind_processors  # private, but the very processors execute() would use
    missing = {name for name in order if name not in rows[0]}
    if missing:  # columns with a default the rows leave out
        defaults = {name: _column_default(stmt.table.c[name]) for name in missing}
        rows = [{**defaults, **r} for r in rows]
    get = operator.itemgetter(*order)
    convert = [(i, procs[name]) for i, name in enumerate(order) if procs.get(name)]
    if len(order) == 1:
        params: list[tuple[Any, ...]] = [(get(r),) for r in rows]
    else:
        params = list(map(get, rows))
    if convert:
        # Column by column: one comprehension per converted column costs less than a loop
        # over the converted values of each row.
        # (A moment repeated across rows is converted once: SQLite's processor remembers
        # the text of recent ones, see utctime.to_sqlite_column.)
        columns: list[Sequence[Any]] = list(zip(*params, strict=True))
        for i, proc in convert:
            columns[i] = [None if v is None else proc(v) for v in columns[i]]
        params = list(zip(*columns, strict=True))
    await conn.exec_driver_sql(compiled.string, params)


#: Compiled forms of the statements executemany has run, by statement shape, dialect and
#: the rows' keys: compiling costs more than hashing the shape, and a batch runs the same
#: few statements every time.
_COMPILED: dict[tuple[Any, ...], Any] = {}
_MAX_COMPILED = 256


def _compiled(stmt: Any, dialect: sa.Dialect, keys: tuple[str, ...]) -> Any:
    """``stmt`` compiled for ``dialect`` with the row keys as its parameters.

    Only the compiled SQL and its parameter order and types are used, never the statement's
    own bound values, so statements of one shape (one cache key) share their compiled form.
    """
    shape = stmt._generate_cache_key()  # what SQLAlchemy's own statement cache keys on
    if shape is None:  # a statement SQLAlchemy cannot cache either
        return stmt.compile(dialect=dialect, column_keys=list(keys))
    key = (shape.key, dialect, keys)
    compiled = _COMPILED.get(key)
    if compiled is None:
        if len(_COMPILED) >= _MAX_COMPILED:
            _COMPILED.clear()
        compiled = _COMPILED[key] = stmt.compile(dialect=dialect, column_keys=list(keys))
    return compiled


def _column_default(column: sa.Column[Any]) -> Any:
    default = column.default
    if default is None or not getattr(default, "is_scalar", False):
        raise ValueError(f"no value for column {column.name} and no plain default")
    return default.arg  # type: ignore[attr-defined]


def _known_revision(script: ScriptDirectory, revision: str) -> bool:
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        return script.get_revision(revision) is not None
    except (RevisionError, CommandError):
        return False


def _run_upgrade(conn: sa.Connection, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def _run_downgrade(conn: sa.Connection, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.downgrade(cfg, revision)


def _short(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return text[0] if text else type(err).__name__


async def open_store(url: str) -> Store:
    """A Store whose schema is up to date."""
    store = Store(url)
    try:
        await store.ensure_schema()
    except BaseException:
        await store.dispose()
        raise
    return store
