"""Several daemons on one PostgreSQL database: who is up, which daemon polls which source, and
which daemon runs each cluster-wide job.

Leases are PostgreSQL *session-level advisory locks* held on one connection per daemon that
is opened for nothing else. A daemon that dies (SIGKILL, power cut) closes its socket and its
session ends, so its locks go with it at once; a daemon cut off from the database has its
session ended by the server (``idle_session_timeout`` and TCP keepalives, set on that
connection) and stops polling itself when a heartbeat fails. Lease rows with an expiry would
need a renewal timer, a clock shared by every machine, and a wait of one expiry before any
takeover; the lock needs none of these, and an operator sees it in ``pg_locks``.

* Membership: each daemon holds a lock keyed by its name; the daemons up are the ones whose
  lock is held (read from ``pg_locks``), and the ``daemon`` table says since when and what each
  holds, for ``socialcrm cluster`` and ``/healthz``.
* Sources and jobs are spread by rendezvous hashing over the daemons up (with bounded loads,
  see :func:`assign`): every daemon computes the same owner for each item. Every tick each
  daemon takes the locks of the items that are its own and gives back the ones that now
  belong to another (a daemon joining takes its share without waiting for a failure); an
  item's poll or job runs only while its lock is held, so one source is never polled by two
  daemons at once.

SQLite is for one daemon: :class:`SqliteClaim` holds an exclusive lock on a file beside the
database, and a second daemon refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

import sqlalchemy as sa
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from socialcrm.db import Store, StoreError
from socialcrm.models import Daemon, utcnow

log = logging.getLogger(__name__)

#: Advisory lock namespaces (the first of the two int4 keys; pg_locks.classid).
MEMBER_NS: Final = 0x5C10
SOURCE_NS: Final = 0x5C11
JOB_NS: Final = 0x5C12
#: How often leases are checked and the heartbeat written.
TICK_S: Final = 1.0
#: The server ends the lease session when it has been idle this long (a hung or cut-off
#: daemon), which frees its leases for the others.
IDLE_SESSION_TIMEOUT_S: Final = 15


class ClusterError(StoreError):
    """This daemon cannot join: the message says why in one line."""


def default_name() -> str:
    """``hostname-pid``: unique enough when ``--name`` is not given."""
    return f"{socket.gethostname()}-{os.getpid()}"


def lock_key(name: str) -> int:
    """A stable non-negative int4 for a name (the second advisory lock key)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest()) & 0x7FFFFFFF


def _weight(member: str, item: str) -> bytes:
    return hashlib.blake2b(f"{member}\0{item}".encode(), digest_size=8).digest()


def owner(item: str, members: Sequence[str]) -> str | None:
    """The member an item belongs to by plain rendezvous hashing (None if nobody is up)."""
    if not members:
        return None
    return max(members, key=lambda m: (_weight(m, item), m))


def assign(items: Sequence[str], members: Sequence[str]) -> dict[str, str]:
    """Items spread over members by rendezvous hashing with bounded loads: each item goes to
    the first member in its own hash order that has fewer than its fair share (the ceiling
    of items / members). Every daemon computes the same answer from the same lists; a member
    joining or leaving moves about its share and little else, and a handful of sources is
    never piled on one daemon by an unlucky hash."""
    if not members:
        return {}
    cap = -(-len(items) // len(members))
    load: dict[str, int] = dict.fromkeys(members, 0)
    out: dict[str, str] = {}
    for item in sorted(items):
        for m in sorted(members, key=lambda m: (_weight(m, item), m), reverse=True):
            if load[m] < cap:
                out[item] = m
                load[m] += 1
                break
    return out


@dataclass
class DaemonView:
    """One daemon as an operator sees it."""

    name: str
    up: bool
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    sources: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "up": self.up,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "sources": self.sources,
            "jobs": self.jobs,
        }


_HELD_SQL = sa.text(
    "SELECT classid::bigint AS ns, objid::bigint AS k, pid FROM pg_locks "
    "WHERE locktype = 'advisory' AND objsubid = 2 AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid::bigint IN (:m, :s, :j)"
).bindparams(m=MEMBER_NS, s=SOURCE_NS, j=JOB_NS)


async def describe(store: Store) -> list[DaemonView]:
    """Every daemon that has run on this database, up ones first; ``up`` is PostgreSQL's word
    (its membership lock is held), the rest is what each daemon last wrote."""
    async with store.reader() as s:
        rows = (await s.execute(sa.select(Daemon))).scalars().all()
        members: set[int] = set()
        if not store.is_sqlite:
            members = {int(r.k) for r in (await s.execute(_HELD_SQL)).all() if r.ns == MEMBER_NS}
    views = [
        DaemonView(
            name=r.name,
            up=store.is_sqlite or lock_key(r.name) in members,
            host=r.host,
            pid=r.pid,
            started_at=r.started_at,
            heartbeat_at=r.heartbeat_at,
            sources=list(r.sources) if lock_key(r.name) in members else [],
            jobs=list(r.jobs) if lock_key(r.name) in members else [],
        )
        for r in rows
    ]
    return sorted(views, key=lambda v: (not v.up, v.name))


class Cluster:
    """This daemon's membership and leases, on a connection of their own."""

    def __init__(
        self,
        store: Store,
        name: str,
        *,
        sources: Sequence[str],
        jobs: Sequence[str],
        busy: Callable[[str], bool] = lambda _item: False,
        tick_s: float = TICK_S,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if store.is_sqlite:
            raise ValueError("a cluster needs PostgreSQL")
        self.store = store
        self.name = name
        self.sources = list(sources)
        self.jobs = list(jobs)
        self.busy = busy
        self.tick_s = tick_s
        self.clock = clock
        self.held_sources: set[str] = set()
        self.held_jobs: set[str] = set()
        #: The daemons up at the last tick (this one included), by name.
        self.members: list[str] = []
        #: Every daemon as seen at the last tick, for /healthz.
        self.view: list[DaemonView] = []
        self.started_at = clock()
        #: Called with (source, True) when a source's lease is taken and (source, False) when
        #: it is given back or lost; likewise for jobs.
        self.on_source: Callable[[str, bool], None] | None = None
        self.on_job: Callable[[str, bool], None] | None = None
        self._engine: AsyncEngine = create_async_engine(
            store.url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "server_settings": {
                    "application_name": f"socialcrm lease {name}"[:63],
                    "idle_session_timeout": str(IDLE_SESSION_TIMEOUT_S * 1000),
                    "tcp_keepalives_idle": "5",
                    "tcp_keepalives_interval": "2",
                    "tcp_keepalives_count": "3",
                }
            },
        )
        self._conn: AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost_logged = False

    # -- life cycle ------------------------------------------------------------------------

    async def join(self) -> None:
        """Open the lease connection, take the membership lock, write this daemon's row and
        take this daemon's share of the sources and jobs."""
        await self._connect()
        await self.tick()

    async def _connect(self) -> None:
        conn = await self._engine.connect()
        try:
            got = (
                await conn.execute(
                    sa.text("SELECT pg_try_advisory_lock(:ns, :k)"),
                    {"ns": MEMBER_NS, "k": lock_key(self.name)},
                )
            ).scalar_one()
            if not got:
                raise ClusterError(
                    f"a daemon named {self.name!r} is already running on this database; "
                    "give each daemon its own --name"
                )
            backend = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            now = self.clock()
            self.started_at = now
            async with self.store.session() as s:
                row = await s.get(Daemon, self.name, with_for_update=True)
                if row is None:
                    row = Daemon(name=self.name, host="", pid=0, started_at=now, heartbeat_at=now)
                    s.add(row)
                row.host = socket.gethostname()[:255]
                row.pid = os.getpid()
                row.backend_pid = int(backend)
                row.started_at = now
                row.heartbeat_at = now
                row.sources = []
                row.jobs = []
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._lost_logged = False
        log.info("joined the cluster as %s", self.name)

    def start(self) -> None:
        """Tick in the background."""
        self._task = asyncio.create_task(self._loop(), name="socialcrm-cluster")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick()
            except Exception:  # the loop must outlive one bad round; it logs and goes on
                log.exception("cluster tick failed")

    async def leave(self) -> None:
        """Give every lease back and close the lease connection (a clean stop)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        self._drop_all()
        await self._engine.dispose()

    # -- what this daemon holds ------------------------------------------------------------

    def holds(self, source: str) -> bool:
        """This daemon holds the source's lease: it may poll it."""
        return source in self.held_sources

    def leads(self, job: str) -> bool:
        """This daemon holds the job's lease: it may run it."""
        return job in self.held_jobs

    # -- one tick --------------------------------------------------------------------------

    async def tick(self) -> None:
        """Heartbeat, read who is up, take this daemon's items and give back the others'."""
        if self._conn is None:
            try:
                await self._connect()
            except ClusterError as err:  # our own old session has not ended yet
                log.debug("cannot rejoin yet: %s", err)
                return
            except (OSError, sa.exc.DBAPIError) as err:
                log.debug("cannot reach the database: %s", err)
                return
        try:
            await asyncio.wait_for(self._tick(), max(5.0, 5 * self.tick_s))
        except (OSError, TimeoutError, sa.exc.DBAPIError) as err:
            self._lost(err)

    async def _tick(self) -> None:
        conn = self._conn
        assert conn is not None
        now = self.clock()
        held = (await conn.execute(_HELD_SQL)).all()
        members_up = {int(r.k) for r in held if r.ns == MEMBER_NS}
        if lock_key(self.name) not in members_up:
            raise OSError("this daemon's membership lock is gone")
        async with self.store.session() as s:
            rows = (await s.execute(sa.select(Daemon))).scalars().all()
        names = {r.name for r in rows if lock_key(r.name) in members_up} | {self.name}
        self.members = sorted(names)
        sources = assign(self.sources, self.members)
        for item in self.sources:
            mine = sources.get(item) == self.name
            await self._settle(conn, SOURCE_NS, item, mine, self.held_sources, self.on_source)
        jobs = assign(self.jobs, self.members)
        for item in self.jobs:
            mine = jobs.get(item) == self.name
            await self._settle(conn, JOB_NS, item, mine, self.held_jobs, self.on_job)
        async with self.store.session() as s:
            await s.execute(
                sa.update(Daemon)
                .where(Daemon.name == self.name)  # type: ignore[arg-type]
                .values(
                    heartbeat_at=now,
                    sources=sorted(self.held_sources),
                    jobs=sorted(self.held_jobs),
                )
            )
        self.view = [
            DaemonView(
                name=r.name,
                up=r.name in names,
                host=r.host,
                pid=r.pid,
                started_at=self.started_at if r.name == self.name else r.started_at,
                heartbeat_at=now if r.name == self.name else r.heartbeat_at,
                sources=sorted(self.held_sources) if r.name == self.name else list(r.sources),
                jobs=sorted(self.held_jobs) if r.name == self.name else list(r.jobs),
            )
            for r in rows
            if r.name in names
        ]

    async def _settle(
        self,
        conn: AsyncConnection,
        ns: int,
        item: str,
        mine: bool,
        held: set[str],
        notify: Callable[[str, bool], None] | None,
    ) -> None:
        key = {"ns": ns, "k": lock_key(item)}
        if mine and item not in held:
            got = (
                await conn.execute(sa.text("SELECT pg_try_advisory_lock(:ns, :k)"), key)
            ).scalar_one()
            if got:
                held.add(item)
                log.info("%s took %s", self.name, item)
                if notify is not None:
                    notify(item, True)
        elif not mine and item in held and not self.busy(item):
            # Marked given back before the unlock: nothing starts on it from here on.
            held.discard(item)
            if notify is not None:
                notify(item, False)
            await conn.execute(sa.text("SELECT pg_advisory_unlock(:ns, :k)"), key)
            log.info("%s gave %s back", self.name, item)

    def _lost(self, err: BaseException) -> None:
        """The lease connection failed: every lease may be gone, so stop at once and rejoin
        on a later tick."""
        if not self._lost_logged:
            log.error(
                "lost the database lease connection (%s): polling stops until it is back", err
            )
            self._lost_logged = True
        self._drop_all()
        conn, self._conn = self._conn, None
        if conn is not None:
            asyncio.get_running_loop().create_task(_close_quietly(conn))

    def _drop_all(self) -> None:
        for item in sorted(self.held_sources):
            self.held_sources.discard(item)
            if self.on_source is not None:
                self.on_source(item, False)
        for item in sorted(self.held_jobs):
            self.held_jobs.discard(item)
            if self.on_job is not None:
                self.on_job(item, False)

    def health(self) -> dict[str, Any]:
        """For ``/healthz``: this daemon, and every daemon up with what it holds."""
        return {
            "name": self.name,
            "connected": self._conn is not None,
            "daemons": [v.as_dict() for v in self.view],
        }


async def _close_quietly(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()


class SqliteClaim:
    """An exclusive lock on ``<database>.daemon.lock``: one daemon per SQLite database."""

    def __init__(self, url: str) -> None:
        database = sa.engine.make_url(url).database
        if not database or database == ":memory:":
            raise ValueError("an in-memory SQLite database needs no claim")
        self.database = database
        self.path = Path(database).with_name(Path(database).name + ".daemon.lock")
        self._file: TextIO | None = None

    def acquire(self) -> None:
        """Take the claim, or raise :class:`ClusterError` naming the daemon that has it."""
        f = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ClusterError(
                f"another socialcrm daemon ({holder}) is running on the SQLite database "
                f"{self.database}; SQLite serves one daemon, "
                "use PostgreSQL to run several"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        """Give the claim back (the lock also dies with the process)."""
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class DaemonLabel(Collector):
    """A registry's metrics with a ``daemon`` label added to every ``socialcrm_`` sample."""

    def __init__(self, registry: CollectorRegistry, name: str) -> None:
        self.registry = registry
        self.name = name

    def collect(self) -> Any:
        """The registry's metrics, relabelled."""
        for metric in self.registry.collect():
            if not metric.name.startswith("socialcrm_"):
                yield metric
                continue
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            for s in metric.samples:
                out.add_sample(
                    s.name, {**s.labels, "daemon": self.name}, s.value, s.timestamp, s.exemplar
                )
            yield out
