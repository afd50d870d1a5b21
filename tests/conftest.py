"""Shared fixtures: a store on SQLite and on PostgreSQL, and a ready pipeline."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from socialcrm.config import Config
from socialcrm.db import Store
from socialcrm.pipeline import Pipeline
from socialcrm.rules import RuleSet
from socialcrm.sentiment import SentimentScorer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get(
    "SOCIALCRM_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto``: one more than the cores, since most tests spend their time
    waiting on a server, a daemon process or a timer (PYTEST_XDIST_AUTO_NUM_WORKERS wins)."""
    named = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if named:
        return int(named)
    return min((os.cpu_count() or 1) + 1, 8)


def need(what: str, reason: str) -> None:
    """Skip on a laptop that lacks a server; in CI a missing server is a failure."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI: {reason}")
    pytest.skip(f"{what} not available: {reason}")


async def _pg_create(name: str) -> None:
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    store = Store(_pg_url(name))
    await store.upgrade()
    await store.dispose()


async def _pg_drop(name: str) -> None:
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def _run(coro: Any) -> Any:
    """Run a coroutine to the end on its own loop, even from inside a running one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _pg_url(name: str) -> str:
    return sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | Exception]:
    """A PostgreSQL database for this test run, migrated to head; dropped at the end."""
    name = f"socialcrm_test_{uuid.uuid4().hex[:10]}"
    try:
        _run(_pg_create(name))
    except (OSError, sa.exc.SQLAlchemyError) as err:
        yield err
        return
    yield _pg_url(name)
    _run(_pg_drop(name))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (migrating once is faster)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    _run(store.upgrade())
    _run(store.dispose())
    return path


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> AsyncIterator[Store]:
    """An empty, migrated store, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "socialcrm.db"
        shutil.copy(sqlite_template, path)
        s = Store(f"sqlite+aiosqlite:///{path}")
    else:
        pg = request.getfixturevalue("pg_database")
        if isinstance(pg, Exception):
            need("PostgreSQL", f"{PG_ADMIN_URL}: {pg}")
        assert isinstance(pg, str)
        s = Store(pg)
        tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
        async with s.engine.begin() as conn:
            await conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    try:
        yield s
    finally:
        await s.dispose()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The default configuration, with a brand lexicon."""
    return Config.model_validate(
        {
            "brand": {"name": "Acme", "handles": ["acme"], "lexicon": {"delayed": -1.8}},
            # Tests date their messages in March 2026 on purpose; treating old messages as
            # history is tested on its own (tests/test_backfill.py).
            "backfill_before": None,
            "base_dir": tmp_path,
        }
    )


@pytest.fixture(scope="session")
def scorer() -> SentimentScorer:
    """One scorer for the run (VADER's lexicon takes a moment to load)."""
    return SentimentScorer({"delayed": -1.8})


@pytest.fixture
def pipeline(config: Config, store: Store, scorer: SentimentScorer) -> Pipeline:
    """A pipeline with the shipped rules."""
    return Pipeline(config, store, rules=RuleSet.load(config.rule_paths()), scorer=scorer)
