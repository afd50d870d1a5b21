"""The memory figures /metrics shows, read from the C libraries themselves."""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
import subprocess
import sys
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


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_trim_gives_freed_memory_back() -> None:
    if memory.malloc_bytes() is None:
        need("glibc", "the C library is not glibc (no malloc_trim)")
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 80 MB in small blocks, all freed but the last: the heap cannot shrink from its top, so
    # the freed pages stay resident until trimmed.
    blocks = [libc.malloc(4000) for _ in range(20_000)]
    for b in blocks:
        ctypes.memset(b, 1, 4000)
    for b in blocks[:-1]:
        libc.free(b)
    held = _rss_mib()
    assert memory.trim()
    assert held - _rss_mib() > 40
    libc.free(blocks[-1])


def test_the_daemon_limits_the_allocators_arenas() -> None:
    if memory.malloc_bytes() is None:
        need("glibc", "the C library is not glibc (no mallopt)")
    # In a child process: the setting is process-wide.
    code = (
        "from socialcrm import runtime, memory; assert memory.limit_arenas(runtime.MALLOC_ARENAS)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
