"""Process-wide settings for the long-running commands (daemon, ingest)."""

from __future__ import annotations

import gc

#: Young-generation threshold: ingestion allocates many short-lived objects per batch, and
#: the default (700) makes the collector walk the heap hundreds of times per batch.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze what start-up loaded (lexicons, rules, templates) and collect less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
