"""Variants of the learned triage model's features, cross-validated beside the shipped one.

    python bench/triage_variants.py --corpus ../shared/data/triage [--size 2000] [--seed 7]
        [--variants base,late,nb,ovr,negation,starter,rules,decision,facts]

The same examples as ``bench/triage_learned.py`` (same ``--size`` and ``--seed``), the same
stratified 5-fold split as ``socialcrm.triage.cross_validate`` and the shipped regression
(C 4, balanced classes); only the features differ. Prints the complaint F1 (complaints.csv,
complaint as the binary head) and the macro-F1 (TweetEval sentiment) of each variant, and how
well its reading ranks the messages that need us: the share of the others that a ticket at
its risk alone opens at the threshold that tickets 90% of them (non-complaints at 90% of
complaints; positive tweets at 90% of negative ones, risk read as the shipped team model reads
it, negative against positive):

- ``base``: hashed word 1-2-grams and character 2-5-grams, each of unit length, VADER's four
  scores weighted 3 (the shipped features until character 3-5-grams became the default,
  which read both corpora as well: ``bench/triage_learned.py``);
- ``late``: a word model and a character model (each with VADER's scores), their
  probabilities averaged;
- ``nb``: log-count-ratio scaling of binary n-grams (Wang & Manning 2012), one-vs-rest for
  three classes, the ratios taken from the training folds only;
- ``rules``: ``base`` plus the shipped rule pack's zero-shot reading of each
  message (intent, ticket, draft, ignore, priority, and which of its text conditions hold);
- ``ovr``: ``base`` with one binary regression per class, their margins as a softmax (the
  control for ``nb``, which is one-vs-rest too);
- ``negation``: ``base`` plus the words a negation turns around, marked (``not_good``);
- ``starter``: ``base`` plus the shipped starter model's three probabilities (what 4,200
  rated tweets know, as a prior);
- ``decision`` and ``facts``: ``base`` plus one half of that reading: the rules' decision
  (intent, ticket, draft, ignore, priority), or which of their text conditions hold (the bits
  the scoring worker computes for every message already).

Measured (seed 7, 2,000 each; complaint F1 / TweetEval macro-F1): base 0.749 / 0.648, late
0.747 / 0.646, nb 0.751 / 0.654, rules 0.771 / 0.647. None is used by the package: nb is
within the spread of other draws of the complaints (0.740-0.756 for base and nb alike on seeds
8 and 9), and reading a message with the rules costs several times the model's whole predict
step.

Measured again (seeds 7 / 8 / 9; complaint F1, then TweetEval macro-F1): base 0.753 / 0.760 /
0.739 and 0.651 / 0.629 / 0.620; facts 0.769 / 0.776 / 0.754 and 0.652 / 0.625 / 0.630;
decision 0.765 and 0.642, rules 0.773 and 0.652 (seed 7). The text facts carry most of what
the rules add, +0.015 to +0.016 on every draw, and cost the model nothing to read: the worker
has them for every message before the model reads it. The package's model now reads them
(``socialcrm.triage.LEARNED``), each condition known by what it looks for rather than by its
bit here, so that rule edits leave the other conditions' columns alone; ``base`` here is the
model without them.

Measured for ranking (seeds 7 / 9; non-complaints opened at 90% of complaints, then positive
tweets opened at 90% of negative ones; lower is better): base 32.9 / 31.4% and 17.4 / 19.8%;
nb 26.4 / 31.2% and 15.4 / 16.5%; ovr as base (32.9 / 31.4%, 17.4%); negation 32.7 / 32.0%
and 19.3 / 20.2% (macro-F1 0.644 / 0.620, below base); starter 32.0 / 32.4% and 16.4 / 17.9%;
facts 29.7 / 34.3% and 17.0 / 16.9%. Only nb ranks better on both seeds of TweetEval, by 2-3
points, from its scaling rather than from one-vs-rest; on the complaints only on one draw.
With the rules' conditions beside it (as ``facts``) it ranked better on all four: 24.5 / 27.0%
of non-complaints and 14.1 / 16.0% of positive tweets, against facts' 29.7 / 34.3% and 17.0 /
16.9%, for complaint F1 0.774 / 0.755 and TweetEval macro-F1 0.658 / 0.646. The team's model
is now trained so (``socialcrm.scaled_fit``, ``triage.LEARNED``), with character 2-5-grams,
which the scaled n-grams read better than 3-5 (ranking and F1, both corpora, both seeds).
Still, no variant comes near ticketing <= 10% of positive tweets at 90% of negative ones:
on TweetEval that is beyond a linear model of 2,000 labels. Weighting VADER's scores 1 or 5,
C 2 or 8, or adding VADER's 7,900 rated texts (its sdist) to the training rows at half or full
weight moved nothing or made the ranking worse (a 2,000 / 6,000 split, seeds 7 and 9).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import normalize
from triage_learned import _complaints, _tweeteval

from socialcrm import starter
from socialcrm.config import Config
from socialcrm.rules import PRIORITIES, RuleSet, text_context
from socialcrm.sentiment import SentimentScorer
from socialcrm.triage import LEARNED, Sample, normalise, risks, sample

INTENTS = ("legal", "praise", "question", "complaint", "delivery", "technical", "billing")
INTENTS += ("refund", "churn")
Matrix = Any  # a scipy sparse matrix
#: (train rows, test rows) -> the test rows' class probabilities, columns in sorted class order.
Fold = Callable[[NDArray[np.intp], NDArray[np.intp]], NDArray[np.float64]]


def _vec(analyzer: str, binary: bool) -> HashingVectorizer:
    word = analyzer == "word"
    return HashingVectorizer(
        analyzer=analyzer,
        ngram_range=(1, 2) if word else (2, 5),
        token_pattern=r"(?u)[#@]?\w+|[!?]+",
        n_features=2**16,
        alternate_sign=False,
        lowercase=False,
        binary=binary,
        norm=None if binary else "l2",
        dtype=np.float64,
    )


def _lr() -> LogisticRegression:
    return LogisticRegression(C=4.0, max_iter=500, tol=1e-3, class_weight="balanced")


#: Columns of ``rule_reading`` that are the rules' decision; its text facts follow.
DECISION = len(INTENTS) + 4 + len(PRIORITIES)


def rule_reading(rules: RuleSet, xs: Sequence[Sample]) -> Matrix:
    """The rule pack's reading of each message as 0/1 columns."""
    rows, facts = [], []
    for x in xs:
        facts.append(rules.text_facts(x.text))
        d = rules.evaluate(replace(text_context(x.text), sentiment=x.compound))
        rows.append(
            [d.intent == i for i in INTENTS]
            + [d.open_ticket, d.draft_template is not None, d.ignore]
            + [(d.open_ticket or d.draft_template is not None) and not d.ignore]
            + [d.priority == p for p in PRIORITIES]
        )
    width = max([f.bit_length() for f in facts] + [1])
    bits = [[(f >> b) & 1 for b in range(width)] for f in facts]
    return sp.csr_matrix(np.hstack([np.array(rows, float), np.array(bits, float)]))


#: A word that turns what follows it around, up to the next punctuation ("not good at all").
_NEGATION = re.compile(
    r"\b(?:not|no|never|nothing|nobody|nowhere|neither|nor|cannot|\w+n't)\b([^.,;:!?]*)"
)


def negated_words(text: str) -> list[str]:
    """The words of a text that a negation turns around, marked (``not_good``); the marking of
    Das & Chen (2001) and Pang, Lee & Vaithyanathan (2002)."""
    return [f"not_{w}" for m in _NEGATION.finditer(text) for w in re.findall(r"\w+", m[1])]


def _softmax(margins: NDArray[np.float64]) -> NDArray[np.float64]:
    """Class probabilities from one-vs-rest margins (a row each)."""
    e = np.exp(margins - margins.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def variants(
    xs: Sequence[Sample], y: NDArray[Any], rules: RuleSet, wanted: Sequence[str]
) -> dict[str, Fold]:
    """Each wanted variant as a function (train rows, test rows) -> predicted labels."""
    texts = [normalise(x.text) for x in xs]
    vader = sp.csr_matrix(np.array([x[1:5] for x in xs]) * 3.0)
    words, chars = _vec("word", False).transform(texts), _vec("char_wb", False).transform(texts)
    base = sp.hstack([words, chars, vader]).tocsr()

    def fit_predict(x: Matrix) -> Fold:
        return lambda tr, te: np.asarray(_lr().fit(x[tr], y[tr]).predict_proba(x[te]))

    def late(tr: NDArray[np.intp], te: NDArray[np.intp]) -> NDArray[np.float64]:
        parts = [sp.hstack([m, vader]).tocsr() for m in (words, chars)]
        fits = [_lr().fit(p[tr], y[tr]) for p in parts]
        both = [f.predict_proba(p[te]) for f, p in zip(fits, parts, strict=True)]
        return np.asarray(np.mean(both, axis=0), dtype=np.float64)

    def nb(tr: NDArray[np.intp], te: NDArray[np.intp]) -> NDArray[np.float64]:
        binary = sp.hstack(
            [_vec("word", True).transform(texts), _vec("char_wb", True).transform(texts)]
        ).tocsr()
        classes = np.unique(y[tr])
        ones = classes[1:] if len(classes) == 2 else classes
        margins = []
        for c in ones:
            pos = y[tr] == c
            p = 1.0 + np.asarray(binary[tr][pos].sum(axis=0)).ravel()
            q = 1.0 + np.asarray(binary[tr][~pos].sum(axis=0)).ravel()
            ratio = np.log((p / p.sum()) / (q / q.sum()))
            z = sp.hstack([normalize(binary @ sp.diags(ratio)), vader]).tocsr()
            margins.append(_lr().fit(z[tr], pos).decision_function(z[te]))
        m = np.vstack(margins).T
        if len(classes) == 2:
            m = np.hstack([np.zeros_like(m), m])  # the first class's margin is the reference
        return _softmax(m)

    def ovr(tr: NDArray[np.intp], te: NDArray[np.intp]) -> NDArray[np.float64]:
        classes = np.unique(y[tr])
        if len(classes) == 2:
            return fit_predict(base)(tr, te)
        fits = [_lr().fit(base[tr], y[tr] == c) for c in classes]
        return _softmax(np.vstack([f.decision_function(base[te]) for f in fits]).T)

    out: dict[str, Fold] = {"base": fit_predict(base), "late": late, "nb": nb, "ovr": ovr}
    if "negation" in wanted:
        negated = _vec("word", False).transform([" ".join(negated_words(t)) for t in texts])
        out["negation"] = fit_predict(sp.hstack([base, negated]).tocsr())
    if "starter" in wanted and (shipped := starter.model()) is not None:
        head = shipped.heads["sentiment"]
        out["starter"] = fit_predict(
            sp.hstack([base, head.predict_proba(shipped._transform(list(xs)))]).tocsr()
        )
    if {"rules", "facts", "decision"} & set(wanted):
        reading = rule_reading(rules, xs)
        out["rules"] = fit_predict(sp.hstack([base, reading]).tocsr())
        # The two halves of the reading apart: the rules' decision, and their text facts.
        out["decision"] = fit_predict(sp.hstack([base, reading[:, :DECISION]]).tocsr())
        out["facts"] = fit_predict(sp.hstack([base, reading[:, DECISION:]]).tocsr())
    return {k: v for k, v in out.items() if k in wanted}


def main(argv: list[str] | None = None) -> int:
    """Print each variant's cross-validated figure on both corpora."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--variants", default="base,late,nb,rules")
    args = ap.parse_args(argv)
    wanted = args.variants.split(",")
    rng = random.Random(args.seed)
    scorer = SentimentScorer()
    rules = RuleSet.load(Config().rule_paths())

    rows = _complaints(args.corpus)
    picked = rng.sample(rows, min(args.size, len(rows)))
    pool = _tweeteval(args.corpus)
    picked2 = rng.sample(pool, min(args.size, len(pool)))
    corpora = {
        "complaint F1": (
            [t for t, _, _ in picked],
            ["yes" if c == "1" else "no" for _, c, _ in picked],
        ),
        "TweetEval macro-F1": ([t for t, _ in picked2], [y for _, y in picked2]),
    }
    for name, (texts, labels) in corpora.items():
        xs = [sample(t, scorer.score(t)) for t in texts]
        y = np.array(labels)
        split = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
        folds = list(split.split(np.zeros(len(y)), y))
        classes = sorted(set(labels))
        head, risky, other = (
            ("needs_reply", "yes", "no")
            if name.startswith("complaint")
            else ("sentiment", "negative", "positive")
        )
        for variant, run in variants(xs, y, rules, wanted).items():
            start = time.perf_counter()
            proba = np.zeros((len(y), len(classes)))
            for tr, te in folds:
                proba[te] = run(tr, te)
            predicted = np.array(classes)[proba.argmax(axis=1)]
            if name.startswith("complaint"):
                value = f1_score(y, predicted, pos_label="yes")
            else:
                value = f1_score(y, predicted, average="macro")
            # How well the reading ranks: what a ticket at its risk alone opens, as shipped.
            risk = risks(head, classes, proba, LEARNED)
            ranked = np.sort(risk[y == risky])[::-1]
            cut = ranked[int(0.9 * len(ranked) + 0.5) - 1]
            opened = float(np.mean(risk[y == other] >= cut))
            took = time.perf_counter() - start
            print(
                f"{name:20s} {variant:8s} {value:.3f}  at 90% of {risky}, {opened:5.1%} of "
                f"{other}  ({took:.0f} s for 5 folds)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
