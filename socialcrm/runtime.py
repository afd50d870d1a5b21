"""Process-wide settings for the long-running commands (daemon, ingest)."""

from __future__ import annotations

import gc

#: The C allocator's arenas in a long-running process (see ``memory.limit_arenas``).
MALLOC_ARENAS = 2

#: Young-generation threshold: ingestion allocates many short-lived objects per batch, and
#: the default (700) makes the collector walk the heap hundreds of times per batch.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze what start-up loaded (lexicons, rules, templates) and collect less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def tune_allocator() -> None:
    """Fewer C allocator arenas, before the database driver's threads start: a daemon's
    resident memory then follows what it uses instead of creeping up for hours."""
    # Here, not at the top: the scoring worker tunes its collector too, and has no use for
    # the metrics library the memory module brings (tens of milliseconds at every start).
    from socialcrm import memory

    memory.limit_arenas(MALLOC_ARENAS)
