"""The text work of a batch, done in a worker process: sentiment, the rules' text conditions
and the learned triage model's reading.

VADER and the rules' keyword and phrase matching are pure Python. In a thread they would
hold the GIL against the event loop and the database work; in a process they run beside
them, on another core, while the previous batch is being written.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from socialcrm import starter
from socialcrm.rules import RuleError, RuleSet
from socialcrm.runtime import tune_gc
from socialcrm.sentiment import Score, SentimentScorer, brand_terms
from socialcrm.triage import Model, TriageError, Verdict, has_words, sample

if TYPE_CHECKING:
    from socialcrm.config import Config

log = logging.getLogger(__name__)

#: What the text work says of one message: its score (or why scoring failed), and which of
#: the rules' text conditions hold (None when the rules read the text themselves), and the
#: triage model's reading (None without a model).
Analysis = tuple[Score | str, int | None, Verdict | None]


def analyse_batch(
    scorer: SentimentScorer,
    rules: RuleSet | None,
    items: Sequence[tuple[str, str | None]],
    model: Model | None = None,
) -> list[Analysis]:
    """Score each (text, language hint), answer the rules' text conditions, read it with the
    triage model (the starter model reads only texts known to be English: it knows no other)."""
    # One pass per kind of work rather than all of it per message: each pass keeps its own
    # tables (VADER's lexicon, the rules' index) in the CPU's caches.
    scores: list[Score | str] = []
    for text, lang in items:
        try:
            scores.append(scorer.score(text, lang))
        except Exception as err:  # one bad text is reported, not fatal for the batch
            scores.append(f"sentiment failed: {err!r}")
    facts: list[int | None] = [None] * len(items)
    if rules is not None:
        for i, (text, _lang) in enumerate(items):
            try:
                facts[i] = rules.text_facts(text)
            except Exception:  # the rules will read the text themselves
                log.exception("text conditions failed; the rules read this text themselves")
    out: list[Analysis] = [(s, f, None) for s, f in zip(scores, facts, strict=True)]
    if model is not None:
        # A model trained beside the rules reads which of their text conditions hold.
        keys = rules.fact_keys if rules is not None and model.settings.fact_bits else None
        try:
            verdicts: list[Verdict | None] = list(
                model.predict(
                    [
                        sample(
                            text,
                            a[0] if isinstance(a[0], Score) else None,
                            keys(a[1]) if keys is not None and a[1] is not None else (),
                        )
                        for (text, _), a in zip(items, out, strict=True)
                    ]
                )
            )
            if starter.is_starter(model.version):  # it reads no language but English
                verdicts = [
                    v if isinstance(a[0], Score) and starter.reads(a[0]) else None
                    for a, v in zip(out, verdicts, strict=True)
                ]
            # A mention with nothing in it but handles and links: the rules decide alone.
            verdicts = [
                v if has_words(text) else None for (text, _), v in zip(items, verdicts, strict=True)
            ]
            out = [(a[0], a[1], v) for a, v in zip(out, verdicts, strict=True)]
        except Exception:  # the model's failure leaves the rules to decide alone
            log.exception("triage model failed on a batch; the rules decide alone")
    return out


class _Worker:
    """What one worker process holds: its scorer and its copy of the rules."""

    scorer: SentimentScorer | None = None
    rules: RuleSet | None = None
    #: Whether its rules are the parent's (the same fingerprint): only then are their text
    #: facts, numbered by their place in the files, handed to the parent's rules. The model
    #: reads the facts by what each condition looks for, so it reads them either way.
    same_rules: bool = False
    model: Model | None = None


#: How often a worker looks whether the process that started it is still there.
PARENT_CHECK_S = 1.0


def _exit_with(parent: int) -> None:
    """End this worker once its parent is gone. A daemon killed with SIGKILL cannot stop its
    pool, and a worker waits on its queue for ever: each restart would leave one behind,
    holding the models' memory."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _start_worker(
    lexicon: dict[str, float],
    rule_paths: list[str],
    fingerprint: str,
    brand: list[str],
    model: tuple[bytes, str, int] | None = None,
    use_starter: bool = False,
    parent: int | None = None,
) -> None:
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _Worker.scorer = SentimentScorer(lexicon, brand)
    if model is not None:
        try:
            _Worker.model = Model.load(*model)
        except TriageError:
            log.exception("triage model %s refused; the rules decide alone", model[2])
    elif use_starter:
        _Worker.model = starter.model()
    if rule_paths:
        try:
            _Worker.rules = RuleSet.load([Path(p) for p in rule_paths])
        except RuleError:
            log.warning("the rule files no longer load; the parent's rules read every text")
        # Rule files edited since the parent loaded them number their conditions otherwise.
        _Worker.same_rules = _Worker.rules is not None and _Worker.rules.fingerprint == fingerprint
        reads_facts = _Worker.model is not None and _Worker.model.settings.fact_bits > 0
        if not (_Worker.same_rules or reads_facts):
            _Worker.rules = None  # nobody would read their facts: the texts are not read twice
    if _Worker.model is not None and _Worker.model.settings.fact_bits and _Worker.rules is None:
        log.warning(
            "triage model %s reads the rules' text conditions, but no rules could be loaded: "
            "it reads the texts alone",
            _Worker.model.version,
        )
    # As the daemon's own process: what was just loaded (the lexicon, the rules, the model) is
    # frozen out of the collector's walks, and a batch's many short-lived objects no longer
    # set off a collection every few hundred allocations.
    tune_gc()


#: An analysis as it crosses from the worker: the named tuples as plain tuples, which pickle
#: several times faster (a named tuple pickles as a call of its class).
_Plain = tuple[tuple[float | str | None, ...] | str, int | None, tuple[Any, ...] | None]


def _analyse_in_worker(items: list[tuple[str, str | None]]) -> list[_Plain]:
    assert _Worker.scorer is not None
    found = analyse_batch(_Worker.scorer, _Worker.rules, items, _Worker.model)
    same = _Worker.same_rules
    return [
        (
            s if isinstance(s, str) else tuple(s),
            f if same else None,
            None if v is None else tuple(v),
        )
        for s, f, v in found
    ]


def _rebuilt(found: list[_Plain]) -> list[Analysis]:
    """The worker's analyses with their named tuples again."""
    score, verdict = Score._make, Verdict._make
    return [
        (s if isinstance(s, str) else score(s), f, None if v is None else verdict(v))
        for s, f, v in found
    ]


class ScoringPool:
    """Worker processes for the text work of batches."""

    def __init__(
        self,
        lexicon: Mapping[str, float] | None = None,
        rules: RuleSet | None = None,
        workers: int = 1,
        brand: Sequence[str] = (),
        use_starter: bool = False,
    ) -> None:
        #: Text facts are only used by a pipeline whose rules have this fingerprint.
        self.fingerprint = rules.fingerprint if rules is not None else ""
        self._lexicon = dict(lexicon or {})
        self._brand = list(brand)
        self._paths = [str(p) for p in rules.paths] if rules is not None else []
        self._workers = workers
        self._use_starter = use_starter
        #: The triage model version the workers hold (None: no model).
        self.model_version: int | None = None
        self._model: tuple[bytes, str, int] | None = None
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a threaded process
            initializer=_start_worker,
            initargs=(
                self._lexicon,
                self._paths,
                self.fingerprint,
                self._brand,
                self._model,
                self._use_starter,
                os.getpid(),
            ),
        )

    @classmethod
    def for_config(cls, config: Config, rules: RuleSet) -> ScoringPool:
        """The pool a daemon or a command runs with ``config``: its lexicon, brand names and
        rules, and the starter model where the config uses it."""
        return cls(
            config.brand.lexicon,
            rules,
            brand=brand_terms(config.brand.name, config.brand.handles),
            use_starter=config.triage.use_starter,
        )

    def use_model(self, payload: bytes, digest: str, version: int) -> None:
        """Hand the workers a new triage model: new workers start with it, the old ones finish
        the batch in hand and stop."""
        self._model = (payload, digest, version)
        self.model_version = version
        self._restart()

    def use_rules(self, rules: RuleSet) -> None:
        """Hand the workers new rules (``socialcrm run`` reloading its rule files): new
        workers start with them and the model in use, the old ones finish the batch in hand
        (their text facts are for the old rules) and stop."""
        self._paths = [str(p) for p in rules.paths]
        self.fingerprint = rules.fingerprint
        self._restart()

    def _restart(self) -> None:
        old, self._pool = self._pool, self._start()
        old.shutdown(wait=False)

    async def analyse(self, items: list[tuple[str, str | None]]) -> list[Analysis]:
        """The analysis of each (text, language hint), in order."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        return _rebuilt(await loop.run_in_executor(self._pool, _analyse_in_worker, items))

    async def cpu_s(self) -> float:
        """CPU seconds a worker process has used so far (the one worker, by default): what
        the text work costs, on a machine busy with other work too."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, time.process_time)

    def close(self) -> None:
        """Stop the worker processes."""
        self._pool.shutdown(wait=True, cancel_futures=True)
