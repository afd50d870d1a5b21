"""The store: migrations on both databases, schema checks, concurrent writers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from socialcrm.db import Store, StoreError, open_store
from socialcrm.models import Customer, SourceState, UTCDateTime, utcnow


async def test_empty_database_is_upgraded_on_open(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'new.db'}")
    try:
        assert await store.current_revision() is not None
        async with store.reader() as s:
            assert (
                await s.execute(sa.select(sa.func.count()).select_from(Customer))
            ).scalar_one() == 0
    finally:
        await store.dispose()


async def test_migrations_match_the_models(store: Store) -> None:
    async with store.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"compare_type": False}), SQLModel.metadata
            )
        )
    assert diff == []


async def test_downgrade_and_upgrade_again(store: Store) -> None:
    await store.downgrade("base")
    assert await store.current_revision() is None
    await store.upgrade("head")
    assert await store.current_revision() == "0017"


async def test_a_failing_source_starts_its_streak_at_its_last_error(store: Store) -> None:
    await store.downgrade("0004")
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    async with store.session() as s:
        for name, health, failures in (("down", "failing", 3), ("fine", "ok", 0)):
            await s.execute(
                sa.text(
                    "INSERT INTO sourcestate (source, health, paused, consecutive_failures, "
                    "last_error_at, messages_total, updated_at) "
                    "VALUES (:n, :h, false, :f, :at, 0, :at)"
                ).bindparams(sa.bindparam("at", type_=UTCDateTime)),
                {"n": name, "h": health, "f": failures, "at": at},
            )
    await store.upgrade("head")
    async with store.reader() as s:
        down = await s.get(SourceState, "down")
        fine = await s.get(SourceState, "fine")
    assert down is not None and down.failing_since == at
    assert fine is not None and fine.failing_since is None


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        async with store.reader() as s:
            assert (await s.execute(sa.text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await s.execute(sa.text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await store.dispose()


async def test_concurrent_writers_queue_instead_of_failing(store: Store) -> None:
    async def writer(n: int) -> None:
        for i in range(10):
            async with store.session() as s:
                s.add(Customer(name=f"w{n}-{i}"))
                await s.flush()
                await asyncio.sleep(0)

    await asyncio.gather(*(writer(n) for n in range(5)))
    async with store.reader() as s:
        assert (
            await s.execute(sa.select(sa.func.count()).select_from(Customer))
        ).scalar_one() == 50


async def test_utc_times_round_trip(store: Store) -> None:
    now = utcnow()
    async with store.session() as s:
        s.add(Customer(name="t", created_at=now, updated_at=now, first_seen_at=now))
    async with store.reader() as s:
        c = (await s.execute(sa.select(Customer))).scalar_one()
    assert c.first_seen_at == now and c.first_seen_at.tzinfo is not None


async def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'n.db'}"
    store = await open_store(url)
    async with store.session() as s:
        await s.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    await store.dispose()
    with pytest.raises(StoreError, match="does not know"):
        await open_store(url)


async def test_unreachable_database_is_one_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot open the database"):
        await open_store("postgresql+asyncpg://nobody@127.0.0.1:1/none")
