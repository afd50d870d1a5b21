"""The memory figures /metrics shows, read from the C libraries themselves."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from socialcrm import memory
from tests.conftest import need


def test_malloc_in_use_follows_an_allocation() -> None:
    before = memory.malloc_bytes()
    if before is None:
        need("glibc", "the C library is not glibc (no mallinfo2)")
    assert before is not None
    block = bytearray(64 * 2**20)  # large: straight from the C allocator
    during = memory.malloc_bytes()
    assert during is not None
    assert during[0] - before[0] >= 60 * 2**20
    del block
    after = memory.malloc_bytes()
    assert after is not None and after[0] - before[0] < 8 * 2**20


def test_sqlite_memory_follows_its_page_cache(tmp_path: Path) -> None:
    before = memory.sqlite_bytes()
    if before is None:
        need("a shared SQLite library", "Python's sqlite3 links SQLite statically here")
    assert before is not None
    conn = sqlite3.connect(tmp_path / "m.db")
    try:
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 200,)] * 100_000)
        conn.commit()
        grown = memory.sqlite_bytes()
        assert grown is not None and grown - before > 10 * 2**20  # about 20 MB of pages
    finally:
        conn.close()
    after = memory.sqlite_bytes()
    assert after is not None and after - before < 2 * 2**20


def test_gauges_in_the_registry() -> None:
    r = CollectorRegistry()
    memory.register(r, sqlite=True)
    text = generate_latest(r).decode()
    assert "process_resident_memory_bytes" in text
    blocks = r.get_sample_value("socialcrm_python_allocated_blocks")
    assert blocks is not None and blocks > 1000
    if memory.malloc_bytes() is not None:
        in_use = r.get_sample_value("socialcrm_malloc_in_use_bytes")
        assert in_use is not None and in_use > 2**20
    if memory.sqlite_bytes() is not None:
        assert r.get_sample_value("socialcrm_sqlite_memory_bytes") is not None
    other = CollectorRegistry()
    memory.register(other, sqlite=False)
    assert other.get_sample_value("socialcrm_sqlite_memory_bytes") is None
