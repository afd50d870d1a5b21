"""Soak, short: half a minute of sandbox traffic with 20% of requests misbehaving.

The daemon must stay up, store every served message exactly once, and exit cleanly;
``bench/soak.py`` runs it for ten minutes and reports memory. Fault delays are shortened here
(a hung request still outlives the connectors' timeouts) so the catch-up stays short.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from socialcrm.db import Store
from tests.daemon_process import soak


@pytest.mark.timeout(300)
async def test_short_soak_with_faults(store: Store, tmp_path: Path) -> None:
    r = await soak(
        tmp_path,
        store.url,
        minutes=0.5,
        faults=0.2,
        rate=15.0,
        warmup_s=3.0,
        timeout_delay_s=8.0,
        rate_limit_reset_s=5.0,
        catch_up_limit_s=180.0,
    )
    assert r["faults_injected"] > 20, "the sandbox misbehaved as asked"
    # 15 mentions/s from the daemon's first request for about half a minute, of which the
    # share on X, Mastodon and Reddit (about two thirds) is served: some 300 on an idle machine.
    assert r["served"] > 200
    assert r["duplicates"] == 0, "a message was stored twice"
    assert r["lost"] == 0, f"served messages were lost: {r}"
    assert r["exit_status"] == 0
    # Memory: the daemon does not grow without bound in the short run either.
    assert r["rss_end_mib"] < 2 * r["rss_start_mib"]
