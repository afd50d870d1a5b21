"""Where the daemon's memory goes, for /metrics: enough to tell a leak from a cache or an
allocator that keeps freed memory; and the two settings the daemon applies to glibc's
allocator so that memory freed is memory given back: fewer arenas (``limit_arenas``, at start)
and ``trim`` every few minutes.

- Resident memory of the whole process (prometheus_client's process collector).
- Memory blocks the Python interpreter has allocated (``sys.getallocatedblocks``): objects
  that pile up make it climb.
- Memory the C allocator has handed out and still counts as in use, and memory it holds that
  is free (glibc's ``mallinfo2``); a leak in C code (a driver, a parser) grows the first, and
  fragmentation the second.
- Memory SQLite holds in this process (page caches, prepared statements).

The C allocator's and SQLite's figures are read from the shared C libraries with ctypes;
where a library is not there (another C library, a statically linked SQLite) the figure is
left out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        )
    ]


@functools.cache
def _library(name: str, symbol: str, restype: Any) -> Any | None:
    path = ctypes.util.find_library(name)
    if path is None:
        return None
    try:
        fn = getattr(ctypes.CDLL(path), symbol)
    except (OSError, AttributeError):
        return None
    fn.restype = restype
    return fn


def sqlite_bytes() -> int | None:
    """Bytes SQLite holds in this process now, or None when it cannot be read."""
    fn = _library("sqlite3", "sqlite3_memory_used", ctypes.c_int64)
    return None if fn is None else int(fn())


def malloc_bytes() -> tuple[int, int] | None:
    """(in use, held but free) bytes of the C allocator, or None when it is not glibc's."""
    fn = _library("c", "mallinfo2", _MallInfo2)
    if fn is None:
        return None
    info = fn()
    return info.uordblks + info.hblkhd, info.fordblks


def trim() -> bool:
    """Hand the C allocator's free memory back to the system; False when it cannot.

    glibc keeps memory that threads (the database drivers' among them) have freed, in one
    arena per thread, for reuse; over hours that shows as resident memory creeping up with
    nothing in use. ``malloc_trim`` returns the free pages of every arena.
    """
    fn = _library("c", "malloc_trim", ctypes.c_int)
    if fn is None:
        return False
    fn(ctypes.c_size_t(0))
    return True


#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def limit_arenas(arenas: int) -> bool:
    """Let the C allocator keep at most ``arenas`` arenas; False when it cannot.

    glibc gives each thread that allocates concurrently an arena of its own (up to eight per
    core), and memory freed in one arena is only reused by that arena: with a thread per
    database connection, freed memory piles up across arenas. Called before those threads
    start, like setting ``MALLOC_ARENA_MAX`` in the environment.
    """
    fn = _library("c", "mallopt", ctypes.c_int)
    return fn is not None and bool(fn(_M_ARENA_MAX, arenas))


def register(registry: CollectorRegistry, sqlite: bool) -> None:
    """Add the memory gauges to ``registry`` (SQLite's only when the store is SQLite)."""
    ProcessCollector(registry=registry)
    Gauge(
        "socialcrm_python_allocated_blocks",
        "Memory blocks the Python interpreter has allocated",
        registry=registry,
    ).set_function(sys.getallocatedblocks)
    if malloc_bytes() is not None:
        Gauge(
            "socialcrm_malloc_in_use_bytes",
            "Memory the C allocator has handed out and not had back",
            registry=registry,
        ).set_function(lambda: (malloc_bytes() or (0, 0))[0])
        Gauge(
            "socialcrm_malloc_free_bytes",
            "Memory the C allocator holds that is free (kept for reuse, or fragments)",
            registry=registry,
        ).set_function(lambda: (malloc_bytes() or (0, 0))[1])
    if sqlite and sqlite_bytes() is not None:
        Gauge(
            "socialcrm_sqlite_memory_bytes",
            "Memory SQLite holds in this process (page caches, statements)",
            registry=registry,
        ).set_function(lambda: sqlite_bytes() or 0)
