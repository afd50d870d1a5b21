"""The text work of a batch, done in a worker process: sentiment and the rules' text conditions.

VADER and the rules' keyword and phrase matching are pure Python. In a thread they would
hold the GIL against the event loop and the database work; in a process they run beside
them, on another core, while the previous batch is being written.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from socialcrm.rules import RuleError, RuleSet
from socialcrm.sentiment import Score, SentimentScorer

log = logging.getLogger(__name__)

#: What the text work says of one message: its score (or why scoring failed), and which of
#: the rules' text conditions hold (None when the rules read the text themselves).
Analysis = tuple[Score | str, int | None]


def analyse_batch(
    scorer: SentimentScorer, rules: RuleSet | None, items: Sequence[tuple[str, str | None]]
) -> list[Analysis]:
    """Score each (text, language hint) and answer the rules' text conditions for it."""
    out: list[Analysis] = []
    for text, lang in items:
        try:
            score: Score | str = scorer.score(text, lang)
        except Exception as err:  # one bad text is reported, not fatal for the batch
            score = f"sentiment failed: {err!r}"
        try:
            facts = rules.text_facts(text) if rules is not None else None
        except Exception:  # the rules will read the text themselves
            log.exception("text conditions failed; the rules read this text themselves")
            facts = None
        out.append((score, facts))
    return out


class _Worker:
    """What one worker process holds: its scorer and its copy of the rules."""

    scorer: SentimentScorer | None = None
    rules: RuleSet | None = None


def _start_worker(
    lexicon: dict[str, float], rule_paths: list[str], fingerprint: str, brand: list[str]
) -> None:
    _Worker.scorer = SentimentScorer(lexicon, brand)
    if rule_paths:
        try:
            rules = RuleSet.load([Path(p) for p in rule_paths])
        except RuleError:
            rules = None
        # Rule files edited since the parent loaded them would number conditions otherwise.
        _Worker.rules = rules if rules is not None and rules.fingerprint == fingerprint else None


def _analyse_in_worker(items: list[tuple[str, str | None]]) -> list[Analysis]:
    assert _Worker.scorer is not None
    return analyse_batch(_Worker.scorer, _Worker.rules, items)


class ScoringPool:
    """Worker processes for the text work of batches."""

    def __init__(
        self,
        lexicon: Mapping[str, float] | None = None,
        rules: RuleSet | None = None,
        workers: int = 1,
        brand: Sequence[str] = (),
    ) -> None:
        #: Text facts are only used by a pipeline whose rules have this fingerprint.
        self.fingerprint = rules.fingerprint if rules is not None else ""
        paths = [str(p) for p in rules.paths] if rules is not None else []
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a threaded process
            initializer=_start_worker,
            initargs=(dict(lexicon or {}), paths, self.fingerprint, list(brand)),
        )

    async def analyse(self, items: list[tuple[str, str | None]]) -> list[Analysis]:
        """The analysis of each (text, language hint), in order."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _analyse_in_worker, items)

    def close(self) -> None:
        """Stop the worker processes."""
        self._pool.shutdown(wait=True, cancel_futures=True)
