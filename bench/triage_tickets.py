"""Tickets after learning: what the shipped pipeline does with a team's trained triage model.

    python bench/triage_tickets.py --corpus ../shared/data/triage [--size 2000] [--seed 7]
        [--ticket-recall 0.9 | --ticket-at 0.2]

``bench/triage_learned.py`` scores the model's heads; this asks what reaches people. From each
labelled corpus (see the folder's SOURCES.md) ``--size`` examples are drawn and split into five
stratified folds. For each fold a model is trained with the production code
(``socialcrm.triage.train``, as ``socialcrm triage learn`` runs it) on the other four, stored
in a fresh SQLite database, and the held-out fold goes through the real ``Pipeline`` with the
shipped rules; the same held-out messages also go through without a model (zero-shot). Every
message is read once, by a model that never saw it.

- complaints.csv, labelled complaint / not (learned as ``needs_reply`` yes / no): complaints
  ticketed, brand-directed non-complaints ticketed (for information: many of them are
  questions that want an answer), complaints thanked;
- TweetEval sentiment, labelled negative / neutral / positive (learned as the class), ingested
  as if sent to us: negative ticketed, positive ticketed, negative thanked.

Goals after learning from 2,000 labels: >= 90% of complaints and of negative messages
ticketed, <= 10% of positive ones, no complaint thanked. For TweetEval it also prints what the
model's reading allows whatever the policy: the share of positive tweets a ticket at the
model's risk alone (its chance that a message is negative rather than positive) would open,
at the threshold that tickets 85% and 90% of the negative ones.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from triage import THANKS_TEMPLATE, Outcome, run_pipeline, share
from triage_learned import _complaints as complaints
from triage_learned import _tweeteval as tweeteval

from socialcrm import triage
from socialcrm.config import Config
from socialcrm.rules import RuleSet
from socialcrm.sentiment import SentimentScorer

FOLDS = 5


@functools.cache
def shipped_rules() -> RuleSet:
    """The shipped rule pack, as ``run_pipeline`` loads it."""
    return RuleSet.load(Config().rule_paths())


#: One labelled example: key, text, sent to us, label.
Example = tuple[str, str, bool, str]


def _complaints(corpus: Path) -> list[Example]:
    return [
        (f"c{i}", text, not domain.startswith("random_"), label)
        for i, (text, label, domain) in enumerate(complaints(corpus))
    ]


def _tweeteval(corpus: Path) -> list[Example]:
    return [(f"t{i}", text, True, label) for i, (text, label) in enumerate(tweeteval(corpus))]


def _folds(examples: Sequence[Example], k: int, rng: random.Random) -> list[list[Example]]:
    """Stratified folds: each label dealt round-robin after a shuffle."""
    folds: list[list[Example]] = [[] for _ in range(k)]
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e[3], []).append(e)
    n = 0
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        for e in group:
            folds[n % k].append(e)
            n += 1
    return folds


def held_out_outcomes(
    examples: Sequence[Example],
    head: str,
    to_label: Callable[[str], str],
    scorer: SentimentScorer,
    rng: random.Random,
    settings: dict[str, Any] | None = None,
) -> tuple[dict[str, Outcome], dict[str, Outcome], dict[str, float], list[float]]:
    """Each example's outcome zero-shot and with a model trained on the other folds, that
    model's risk (its chance that the message needs us) for each, and each fold's ticket
    threshold; ``settings``: the config's ``triage`` section the learned runs use."""
    zero: dict[str, Outcome] = {}
    learned: dict[str, Outcome] = {}
    risks: dict[str, float] = {}
    thresholds: list[float] = []
    triage_config = Config.model_validate({"triage": settings or {}}).triage
    for i, fold in enumerate(folds := _folds(examples, FOLDS, rng)):
        train = [e for j, f in enumerate(folds) if j != i for e in f]
        # Read by the shipped rules, as the pipeline below reads each message.
        xs = triage.read([(t, None) for _k, t, _d, _y in train], scorer, shipped_rules())
        # Cross-validated as `socialcrm triage train` does: the ticket threshold comes from it.
        trained = triage.train({head: (xs, [to_label(y) for *_, y in train])})
        thresholds.append(triage_config.threshold(trained.scores).at)
        items = [(k, t, d) for k, t, d, _y in fold]
        learned.update(asyncio.run(run_pipeline(items, trained, settings)))
        zero.update(asyncio.run(run_pipeline(items)))
        read = trained.model.predict(
            triage.read([(t, None) for _k, t, _d in items], scorer, shipped_rules())
        )
        risks.update((k, triage.risk_of(v)) for (k, _t, _d), v in zip(items, read, strict=True))
    return zero, learned, risks, thresholds


def model_alone(risks: Sequence[float], others: Sequence[float], share: float) -> float:
    """The share of ``others`` a ticket at the model's risk alone would open, at the lowest
    risk threshold that still tickets ``share`` of ``risks``."""
    ranked = sorted(risks, reverse=True)
    cut = ranked[max(0, min(len(ranked) - 1, int(len(ranked) * share + 0.5) - 1))]
    return sum(r >= cut for r in others) / len(others) if others else 0.0


def _cuts(cuts: Sequence[float]) -> str:
    return ", ".join(f"{c:.2f}" for c in cuts)


def _row(name: str, cells: Sequence[tuple[str, float]]) -> str:
    return f"  {name:12}" + "".join(f"  {label} {v:6.1%}" for label, v in cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--ticket-at",
        type=float,
        default=None,
        help="triage.ticket_at for the learned runs (default: each model's own)",
    )
    ap.add_argument(
        "--ticket-recall",
        type=float,
        default=None,
        help="triage.ticket_recall for the learned runs (default: the config's default)",
    )
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    scorer = SentimentScorer()
    started = time.perf_counter()
    verdicts: list[tuple[str, bool]] = []

    rows = _complaints(args.corpus)
    picked = rng.sample(rows, min(args.size, len(rows)))
    settings = {
        k: v
        for k, v in (("ticket_at", args.ticket_at), ("ticket_recall", args.ticket_recall))
        if v is not None
    }
    zero, learned, _, cuts = held_out_outcomes(
        picked, "needs_reply", lambda y: "yes" if y == "1" else "no", scorer, rng, settings
    )
    print(
        f"complaints.csv, {len(picked)} labelled, {FOLDS} folds, each read by a model "
        f"trained on the others (ticket thresholds {_cuts(cuts)}):"
    )
    yes = [e for e in picked if e[3] == "1"]
    no = [e for e in picked if e[3] == "0" and e[2]]
    for name, out in (("zero-shot", zero), ("learned", learned)):
        cells = [
            ("complaints ticketed", share([out[k].ticket for k, *_ in yes])),
            ("non-complaints ticketed", share([out[k].ticket for k, *_ in no])),
            ("complaints thanked", share([out[k].template == THANKS_TEMPLATE for k, *_ in yes])),
        ]
        print(_row(name, cells))
        if name == "learned":
            verdicts += [
                ("complaints ticketed >= 90%", cells[0][1] >= 0.90),
                ("no complaint thanked", cells[2][1] == 0.0),
            ]

    pool = _tweeteval(args.corpus)
    picked2 = rng.sample(pool, min(args.size, len(pool)))
    zero, learned, risks, cuts = held_out_outcomes(picked2, "sentiment", str, scorer, rng, settings)
    print(
        f"TweetEval sentiment, {len(picked2)} labelled, as if sent to us, {FOLDS} folds "
        f"(ticket thresholds {_cuts(cuts)}):"
    )
    for name, out in (("zero-shot", zero), ("learned", learned)):
        by = {
            c: [out[k] for k, *_, y in picked2 if y == c]
            for c in ("negative", "neutral", "positive")
        }
        cells = [
            ("negative ticketed", share([o.ticket for o in by["negative"]])),
            ("neutral ticketed", share([o.ticket for o in by["neutral"]])),
            ("positive ticketed", share([o.ticket for o in by["positive"]])),
            ("negative thanked", share([o.template == THANKS_TEMPLATE for o in by["negative"]])),
        ]
        print(_row(name, cells))
        if name == "learned":
            verdicts += [
                ("negative ticketed >= 90%", cells[0][1] >= 0.90),
                ("positive ticketed <= 10%", cells[2][1] <= 0.10),
            ]
    # What the model's reading allows, whatever the policy: a ticket at its risk alone.
    neg = [risks[k] for k, *_, y in picked2 if y == "negative"]
    pos = [risks[k] for k, *_, y in picked2 if y == "positive"]
    print(
        "  the model's risk alone, as the ticket threshold: "
        + ", ".join(
            f"{share:.0%} of negatives ticketed opens {model_alone(neg, pos, share):.1%} "
            "of positives"
            for share in (0.85, 0.90)
        )
    )
    print(f"({time.perf_counter() - started:.0f}s)")
    for label, ok in verdicts:
        print(f"  {'ok  ' if ok else 'MISS'} {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
