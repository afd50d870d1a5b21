"""The learned triage model, cross-validated on labelled public corpora.

    python bench/triage_learned.py --corpus ../shared/data/triage [--size 2000] [--seed 7]

Trains with exactly the production code (``socialcrm.triage.train``: the same features,
regressions and 5-fold cross-validation ``socialcrm triage train`` runs) on ``--size``
labelled examples drawn from each corpus, and prints:

- complaints.csv: the complaint task's F1, macro-averaged over complaint and not complaint
  (the measure the corpus's authors report: about 0.79 in 2019 with a linear model, the
  target here 0.80), the complaint class's own F1, precision and recall beside it, and the
  same for "needs a reply" where the labels allow (the "needs a reply" head, the only binary
  head, learns complaint);
- TweetEval sentiment (test + validation pool): macro-F1 and macro-recall of the class;
- the predict cost of the model trained on both corpora: CPU microseconds per message of
  ``Model.predict`` over generated traffic in batches of 1,000, as the scoring worker reads
  a batch (median of ``--rounds``; VADER's scoring is not included). It is the process's CPU
  time, not wall time, so that busy neighbours on a shared machine do not inflate it.

The model reads the shipped rule pack's text conditions, as a daemon's model trained beside
it does (``--no-facts``: as before it could). Targets: complaint macro-F1 >= 0.80; TweetEval
macro-F1 >= 0.62. Measured (seed 7, 2,000 each): complaint macro-F1 0.825 (0.821 and 0.808 on
seeds 8 and 9; without the rules' conditions 0.803), complaint-class F1 0.777 (precision 0.777,
recall 0.777; no linear model tried reaches 0.80 on the class alone, ``bench/triage_variants.py``),
trained in 8-26 s; TweetEval macro-F1 0.651 (0.628, 0.635); predict 28-64 CPU us per message,
by how busy the machine is (about 160 with character 2-5-grams and each text normalised
twice).
The corpora are third-party research data (read the folder's SOURCES.md): never used
by the tests, never shipped.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from socialcrm.config import Config
from socialcrm.rules import RuleSet
from socialcrm.sandbox.traffic import TrafficGenerator
from socialcrm.sentiment import SentimentScorer
from socialcrm.triage import LEARNED, Model, Sample, Settings, read, train

TWEETEVAL = {"0": "negative", "1": "neutral", "2": "positive"}


def learned_figures(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    head: str = "sentiment",
    settings: Settings | None = None,
    scorer: SentimentScorer | None = None,
    rules: RuleSet | None = None,
    folds: int = 5,
) -> dict[str, Any]:
    """Cross-validated figures of one head trained on these texts and labels."""
    scorer = scorer or SentimentScorer()
    xs: list[Sample] = read([(t, None) for t in texts], scorer, rules)
    start = time.perf_counter()
    trained = train({head: (xs, list(labels))}, settings, folds=folds)
    out = dict(trained.scores[head])
    out["train_s"] = round(time.perf_counter() - start, 1)
    out["payload_bytes"] = len(trained.model.dump())
    return out


def predict_us(
    model: Model,
    scorer: SentimentScorer,
    rules: RuleSet | None,
    *,
    count: int = 5000,
    batch: int = 1000,
    rounds: int = 5,
) -> float:
    """Median CPU microseconds per message of ``model.predict`` over generated traffic."""
    messages = TrafficGenerator(7).messages(count)
    xs = read([(m.text, m.lang) for m in messages], scorer, rules)
    model.predict(xs[:batch])  # warm up
    per_round = []
    for _ in range(rounds):
        start = time.process_time()
        for i in range(0, len(xs), batch):
            model.predict(xs[i : i + batch])
        per_round.append((time.process_time() - start) / len(xs) * 1e6)
    return statistics.median(per_round)


def _complaints(corpus: Path) -> list[tuple[str, str, str]]:
    with (corpus / "complaints.csv").open(encoding="utf-8", newline="") as f:
        return [(r["text"], r["complaint"], r["domain"]) for r in csv.DictReader(f)]


def _tweeteval(corpus: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for part in ("test", "val"):
        texts = (corpus / f"tweeteval_sentiment_{part}_text.txt").read_text("utf-8").splitlines()
        labels = (corpus / f"tweeteval_sentiment_{part}_labels.txt").read_text().splitlines()
        rows += [(t, TWEETEVAL[y.strip()]) for t, y in zip(texts, labels, strict=True)]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the learned figures on both corpora."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=5, help="predict timing rounds (median)")
    ap.add_argument(
        "--no-facts",
        action="store_true",
        help="train as before the model read the rules' text conditions",
    )
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    scorer = SentimentScorer()
    # The shipped rule pack, as a daemon with the example config reads it.
    rules = None if args.no_facts else RuleSet.load(Config().rule_paths())
    settings = Settings() if args.no_facts else LEARNED

    rows = _complaints(args.corpus)
    picked = rng.sample(rows, min(args.size, len(rows)))
    texts = [t for t, _y, _d in picked]
    reply = ["yes" if y == "1" else "no" for _t, y, _d in picked]
    f = learned_figures(
        texts, reply, head="needs_reply", settings=settings, scorer=scorer, rules=rules
    )
    complaint_xs = read([(t, None) for t in texts], scorer, rules)
    c = f["per_class"]["yes"]
    print(f"complaints.csv, {len(picked)} labelled, {f['folds']}-fold cross-validated:")
    print(
        f"  complaint macro-F1 {f['macro_f1']:.3f} (over complaint and not, as the corpus's "
        f"authors report it); target >= 0.80"
    )
    print(
        f"  the complaint class alone: F1 {c['f1']:.3f} (precision {c['precision']:.3f}, "
        f"recall {c['recall']:.3f})"
    )
    print(f"  trained in {f['train_s']} s, model {f['payload_bytes'] / 1e6:.1f} MB")
    # Only the support-account rows say anything about replies: random tweets need none.
    support = [(t, y) for t, y, d in picked if d not in ("random_tweet", "random_reply")]
    print(
        f"  needs-reply: no reply labels in this corpus; complaint stands in for it "
        f"({len(support)} of the rows were written to support accounts)"
    )

    pool = _tweeteval(args.corpus)
    picked2 = rng.sample(pool, min(args.size, len(pool)))
    g = learned_figures(
        [t for t, _ in picked2],
        [y for _, y in picked2],
        settings=settings,
        scorer=scorer,
        rules=rules,
    )
    print(f"TweetEval sentiment, {len(picked2)} labelled, {g['folds']}-fold cross-validated:")
    print(
        f"  macro-F1 {g['macro_f1']:.3f}, macro-recall {g['macro_recall']:.3f}; "
        f"target macro-F1 >= 0.62"
    )
    for cls, v in g["per_class"].items():
        print(f"    {cls:8s} P {v['precision']:.3f} R {v['recall']:.3f} F1 {v['f1']:.3f}")
    print(f"  trained in {g['train_s']} s")

    # Both heads, as a store's labels train them, on the two corpora's examples.
    model = Model.fit(
        settings,
        {
            "needs_reply": (complaint_xs, reply),
            "sentiment": (
                read([(t, None) for t, _ in picked2], scorer, rules),
                [y for _, y in picked2],
            ),
        },
    )
    us = predict_us(model, scorer, rules, rounds=args.rounds)
    print(
        f"predict (both heads): {us:.0f} CPU us per message on generated traffic, batches of 1,000"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
