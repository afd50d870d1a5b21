"""Kill test: the daemon is SIGKILLed at random moments while the sandbox feeds it (X, Mastodon
and Reddit); after a restart every message the sandbox served is stored exactly once.

This is the short version run by the test suite; ``bench/kill_loop.py`` runs many more kills.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from socialcrm.db import Store
from socialcrm.models import Quarantine
from tests.daemon_process import kill_loop


@pytest.mark.timeout(300)
async def test_sigkill_loses_and_duplicates_nothing(store: Store, tmp_path: Path) -> None:
    r = await kill_loop(tmp_path, store.url, kills=4, seed=42)
    assert r["served_while_killing"] > 0, "the daemon never polled: see daemon.log"
    assert r["duplicates"] == 0, "a message was stored twice"
    assert r["lost"] == 0, f"served messages were lost: {r}"
    assert r["stored"] == r["served"]
    assert r["exit_status"] == 0, "SIGTERM is a clean exit"
    async with store.reader() as s:
        assert (
            await s.execute(sa.select(sa.func.count()).select_from(Quarantine))
        ).scalar_one() == 0
