"""The scoring worker's batch: each message's score, text facts and reading, in order."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from socialcrm.config import Config
from socialcrm.rules import RuleSet
from socialcrm.runtime import GC_GEN0_THRESHOLD
from socialcrm.scoring import PARENT_CHECK_S, ScoringPool, analyse_batch
from socialcrm.sentiment import Score, SentimentScorer


def test_a_bad_text_is_reported_and_the_batch_goes_on() -> None:
    scorer = SentimentScorer()
    rules = RuleSet.load(Config().rule_paths())
    bad: Any = 5  # not a text: scoring and the rules' text matching both fail on it
    items = [("where is my refund??", "en"), (bad, None), ("thanks, sorted!", "en")]
    out = analyse_batch(scorer, rules, items)
    assert len(out) == 3
    (s1, f1, v1), (s2, f2, v2), (s3, f3, v3) = out
    assert s1 == scorer.score("where is my refund??", "en") and f1 == rules.text_facts(items[0][0])
    assert isinstance(s2, str) and s2.startswith("sentiment failed: TypeError")
    assert f2 is None
    assert s3 == scorer.score("thanks, sorted!", "en") and f3 == rules.text_facts(items[2][0])
    assert isinstance(s1, Score) and f1 != f3
    assert v1 is v2 is v3 is None  # no model
    assert [f for _, f, _ in analyse_batch(scorer, None, items)] == [None, None, None]


async def test_the_pool_tells_the_cpu_time_its_worker_used() -> None:
    pool = ScoringPool()
    try:
        before = await pool.cpu_s()
        await pool.analyse(
            [(f"my order {i} never arrived, still waiting", "en") for i in range(300)]
        )
        after = await pool.cpu_s()
    finally:
        pool.close()
    assert 0 < before < after


def test_a_worker_collects_garbage_as_the_daemon_does() -> None:
    # What a worker loaded at start (lexicon, rules, model) is frozen out of the collector's
    # walks, and a batch's short-lived objects do not set off a collection every 700.
    pool = ScoringPool(rules=RuleSet.load(Config().rule_paths()))
    try:
        threshold = pool._pool.submit(gc.get_threshold).result(timeout=60)
        frozen = pool._pool.submit(gc.get_freeze_count).result(timeout=60)
    finally:
        pool.close()
    assert threshold[0] == GC_GEN0_THRESHOLD
    assert frozen > 10_000  # VADER's lexicon alone is thousands of objects


_KILLED_PARENT = """
import asyncio, multiprocessing, time
from socialcrm.scoring import ScoringPool

async def main():
    pool = ScoringPool()
    await pool.analyse([("hello there, friend", "en")])
    print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(120)

if __name__ == "__main__":
    asyncio.run(main())
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; whoever adopted it has not reaped it yet


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_ends_when_its_daemon_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(_KILLED_PARENT)
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            workers = [int(p) for p in parent.stdout.readline().split()]
            assert workers and all(_running(w) for w in workers)
        finally:
            parent.kill()  # SIGKILL: the pool cannot stop its workers
    deadline = time.monotonic() + 10 * PARENT_CHECK_S
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(w) for w in workers), "a worker outlived its killed parent"
