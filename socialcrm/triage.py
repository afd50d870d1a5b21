"""The learned triage model: features, training, versions in the store, and the team's labels.

A scikit-learn ``Pipeline``: hashed word and character n-grams of the message (handles and
links folded to placeholders) beside VADER's four scores and the rules' text conditions, into
logistic regression for two heads: the sentiment class (negative | neutral | positive) and
whether a message needs a reply. A team's model weights the n-grams by their log-count ratio,
a regression per class (``socialcrm.scaled_fit``); the starter reads unit-length counts. Each
answer comes with a confidence (the predicted probability of the chosen class).

Hashing keeps the features free of a vocabulary, so a trained model is its settings, its
coefficients and, where the n-grams are scaled, their ratios. That is all that is stored: an
.npz archive of plain numeric arrays and one JSON header, read with ``allow_pickle=False``,
checked against its SHA-256 and against the layout below before any estimator is rebuilt
from it. Loading a model never runs code that is not in this module or ``scaled_fit``.

Labels are rows of their own (``TriageLabel``): a person's ``relabel`` or ``needs-reply``, a
draft approved or edited (a reply was needed), a draft rejected as needing no reply or a
ticket closed without one (none was), and imports. The newest label of a message wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from socialcrm import rollups
from socialcrm.connector import InboundMessage
from socialcrm.db import Store
from socialcrm.models import (
    AuditEvent,
    Message,
    Reply,
    Ticket,
    TriageLabel,
    TriageModelVersion,
    utcnow,
)
from socialcrm.ngrams import RememberingUnion
from socialcrm.rules import Decision, RuleSet, text_context
from socialcrm.sentiment import Score, SentimentScorer

if TYPE_CHECKING:
    # scikit-learn takes most of a second to import: the commands that only read the queue
    # never need it, so it is imported where a model is built, trained or evaluated.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from socialcrm.scaled_fit import ScaledLogisticRegression

    #: A trained head: a logistic regression over the features as they come, or one over
    #: n-grams scaled by their log-count ratio (``Settings.scaling``).
    Head: TypeAlias = LogisticRegression | ScaledLogisticRegression

SENTIMENT = ("negative", "neutral", "positive")
REPLY = ("no", "yes")
#: The class of each head that means a customer needs us.
RISKY = {"sentiment": "negative", "needs_reply": "yes"}
#: The heads of the model and the labels each learns.
HEADS: dict[str, tuple[str, ...]] = {"sentiment": SENTIMENT, "needs_reply": REPLY}
#: Why a label was given.
REASONS = ("relabel", "approve", "edit", "reject-no-reply", "closed-without-reply", "import")
#: The layout of a stored payload; anything else is refused.
FORMAT = "socialcrm-triage/1"
#: A reject reason that says the message needed no reply starts with one of these (case and
#: punctuation aside): "no reply needed", "No reply needed - just a fan", "not needed".
NO_REPLY_REASONS = (
    "no reply needed",
    "no reply necessary",
    "no response needed",
    "no need to reply",
    "needs no reply",
    "does not need a reply",
    "doesn't need a reply",
    "nothing to reply",
    "not needed",
)
#: Smallest number of examples of a class for a head to be trained.
MIN_PER_CLASS = 2
#: Recall of the messages that need us, from 50% to 99% by 1%, at which a head's
#: cross-validation notes the chance it gave them (``HeadFigures.risk_at_recall``).
RECALLS = tuple(r / 100 for r in range(50, 100))
#: Below this many labelled messages that need us, the cross-validated chances are too few to
#: set the ticket threshold from: ``FALLBACK_TICKET_AT`` is used.
MIN_RISKY_FOR_THRESHOLD = 30
#: Below this many labels a head's validated figures are flagged as uncertain on its card, and
#: its ticket threshold is held at ``FALLBACK_TICKET_AT`` at most.
SMALL_SET = 500
#: The ticket threshold of a model whose cross-validation set none (trained before, or on too
#: few labels): low on purpose, a customer left unheard costs more than a ticket closed with
#: no reply.
FALLBACK_TICKET_AT = 0.2
#: A learned threshold is never below this: a model that gives those who need us a chance this
#: low is no model to close tickets with.
LOWEST_TICKET_AT = 0.05
#: Largest payload read back (a model is a few MB).
MAX_PAYLOAD = 64 * 1024 * 1024

_URL_RE = re.compile(r"https?://\S+|www\.\S+")
_HANDLE_RE = re.compile(r"(?<!\w)@\w[\w.]*")
_NUMBER_RE = re.compile(r"\d+")
_SPACE_RE = re.compile(r"\s+")
_PUNCT_RE = re.compile(r"[^\w\s']+")


class TriageError(ValueError):
    """Triage cannot do what was asked: too few labels, a bad payload, a bad label."""


class Settings(BaseModel):
    """The feature settings a model was trained with; stored in its payload's header."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    word_bits: int = Field(default=16, ge=10, le=22)
    char_bits: int = Field(default=16, ge=10, le=22)
    word_max_n: int = Field(default=2, ge=1, le=3)
    #: With unit-length counts, character 3-5-grams read the corpora in
    #: bench/triage_learned.py as well as 2-5-grams did (complaint F1 0.752 against 0.749,
    #: TweetEval macro-F1 0.648 both) for about a quarter less predict time. Scaled by their
    #: log-count ratio, as present or not, two-letter grams do say something: the team's
    #: model reads 2-5 (``LEARNED``), which ranked better on both corpora.
    char_min_n: int = Field(default=3, ge=1, le=5)
    char_max_n: int = Field(default=5, ge=1, le=6)
    #: Weight of VADER's four scores beside the unit-length n-gram vectors.
    vader_weight: float = Field(default=3.0, ge=0.0, le=10.0)
    #: Inverse regularisation strength of the regressions.
    c: float = Field(default=4.0, gt=0.0, le=1000.0)
    #: Columns (as a power of two) for the rules' text conditions that hold in a message, by
    #: what each looks for (``RuleSet.fact_keys``); 0: the model reads no rule (the starter,
    #: and models stored before it could). The complaint words, phrases and patterns of the
    #: rule pack carry what 2,000 labels cannot teach a model about words it never saw.
    fact_bits: int = Field(default=0, ge=0, le=16)
    #: How a model that learned only the class reads the chance that a message needs us:
    #: ``negative``, its chance of being negative (the starter, and models stored before);
    #: ``negative_vs_positive``, that chance against the chance of being positive, so that
    #: the neutral share, which says nothing of which way a message leans, does not dilute it.
    #: A ticket at this chance alone, at the threshold that keeps 90% of negative tweets,
    #: opened 22.0% and 16.3% of the positive ones against 27.8% and 18.3% for the plain
    #: chance of negative (bench/triage_tickets.py, TweetEval, seeds 7 and 9).
    sentiment_risk: Literal["negative", "negative_vs_positive"] = "negative"
    #: How the n-grams are weighted: ``unit``, their counts brought to unit length for words
    #: and characters apart (the starter, and models stored before); ``log_count_ratio``,
    #: which n-grams a message has, each weighted by how much likelier it is in one class
    #: than in the rest, a regression per class (``socialcrm.scaled_fit``). The latter ranked
    #: what needs us better on both corpora and both draws of bench/triage_variants.py.
    scaling: Literal["unit", "log_count_ratio"] = "unit"

    @property
    def n_grams(self) -> int:
        """Columns of the n-grams, which come first in the feature matrix."""
        return (1 << self.word_bits) + (1 << self.char_bits)

    @property
    def n_features(self) -> int:
        """Columns of the feature matrix."""
        facts = (1 << self.fact_bits) if self.fact_bits else 0
        return self.n_grams + 4 + facts


#: The settings a team's model is trained with: the defaults, and the rules' text facts.
#: 14 bits: the shipped pack's 90 distinct text conditions each have a column of their own
#: (10 bits put 7 of them, praise words and sarcasm markers among them, on 3 columns).
LEARNED = Settings(
    char_min_n=2, fact_bits=14, sentiment_risk="negative_vs_positive", scaling="log_count_ratio"
)


class Sample(NamedTuple):
    """One message as the model sees it: its text, VADER's scores of it, and the rules' text
    conditions that hold in it (``RuleSet.fact_keys``; none where the rules did not read it)."""

    text: str
    compound: float
    pos: float
    neu: float
    neg: float
    facts: tuple[int, ...] = ()


class Verdict(NamedTuple):
    """The model's reading of one message; None where a head was not trained."""

    sentiment: str | None
    confidence: float | None
    needs_reply: bool | None
    reply_confidence: float | None
    version: int = 0
    #: The model's chance that the message needs us: that it needs a reply where that head
    #: is trained, else that it is negative (``Settings.sentiment_risk``).
    risk: float | None = None


def reading(verdict: Verdict | None) -> dict[str, Any]:
    """The model's reading as the rules' context takes it (``RuleContext``'s triage fields)."""
    if verdict is None:
        return {}
    return {
        "triage": verdict.sentiment,
        "triage_confidence": verdict.confidence,
        "needs_reply": verdict.needs_reply,
        "needs_reply_confidence": verdict.reply_confidence,
    }


def sample(text: str, score: Score | None, facts: tuple[int, ...] = ()) -> Sample:
    """A message, its VADER score and its rule facts as a sample (an unscored text has zero
    scores)."""
    if score is None or score.compound is None:
        return Sample(text, 0.0, 0.0, 0.0, 0.0, facts)
    return Sample(text, score.compound, score.pos or 0.0, score.neu or 0.0, score.neg or 0.0, facts)


def read(
    texts: Sequence[tuple[str, str | None]], scorer: SentimentScorer, rules: RuleSet | None
) -> list[Sample]:
    """Samples of (text, language) pairs, scored and read by the rules as the pipeline reads
    them: the one way training, evaluation and the benches make samples."""
    if rules is None:
        return [sample(t, scorer.score(t, lang)) for t, lang in texts]
    return [
        sample(t, scorer.score(t, lang), rules.fact_keys(rules.text_facts(t))) for t, lang in texts
    ]


def has_words(text: str) -> bool:
    """Whether a text holds anything for the model to read besides links and @handles (an
    emoji counts): an empty mention gives it only its bias, which says nothing of the text."""
    if "@" in text:
        text = _HANDLE_RE.sub(" ", text)
    if "http" in text or "www." in text:
        text = _URL_RE.sub(" ", text)
    return not text.isspace() and text != ""


def normalise(text: str) -> str:
    """The text the n-grams are taken from: links and handles folded, digits as 0."""
    # Each pass only where it can match: most texts have no link, many no handle.
    if "http" in text or "www." in text:
        text = _URL_RE.sub(" http ", text)
    if "@" in text:
        text = _HANDLE_RE.sub(" @user ", text)
    text = _NUMBER_RE.sub("0", text)
    # split() and a regex's \s know the same whitespace: runs become one space.
    return " ".join(text.split()).lower()


def _normalised(xs: Sequence[Sample]) -> list[Sample]:
    """Each sample with its text normalised, once for both n-gram branches."""
    # Built field by field: half the time of _replace(text=...), the same sample.
    return [Sample(normalise(x.text), x.compound, x.pos, x.neu, x.neg, x.facts) for x in xs]


def _texts(xs: Sequence[Sample]) -> list[str]:
    return [x.text for x in xs]


def _vader(weight: float) -> FunctionTransformer:
    from sklearn.preprocessing import FunctionTransformer

    def scores(xs: Sequence[Sample]) -> NDArray[np.float64]:
        arr = np.array([x[1:5] for x in xs], dtype=np.float64).reshape(len(xs), 4)
        return arr * weight

    return FunctionTransformer(scores, accept_sparse=False, validate=False)


def _facts(bits: int) -> FunctionTransformer:
    """The rule facts of each sample as 0/1 columns, each fact's number folded into ``bits``."""
    from scipy.sparse import csr_matrix
    from sklearn.preprocessing import FunctionTransformer

    mask = (1 << bits) - 1

    def columns(xs: Sequence[Sample]) -> csr_matrix:
        cols: list[int] = []
        indptr = [0]
        for x in xs:
            # Sorted and once each, as a CSR matrix keeps them.
            cols.extend(sorted({k & mask for k in x.facts}))
            indptr.append(len(cols))
        data = np.ones(len(cols), dtype=np.float64)
        return csr_matrix(
            (data, np.asarray(cols, dtype=np.int32), np.asarray(indptr, dtype=np.int32)),
            shape=(len(xs), 1 << bits),
        )

    return FunctionTransformer(columns, accept_sparse=True, validate=False)


def features(settings: Settings) -> Pipeline:
    """The feature extraction: stateless, so a model needs no stored vocabulary."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    # Scaled by their log-count ratio, the n-grams are read as present or not; the regression
    # weights and normalises them.
    present = settings.scaling == "log_count_ratio"
    words = HashingVectorizer(
        analyzer="word",
        ngram_range=(1, settings.word_max_n),
        token_pattern=r"(?u)[#@]?\w+|[!?]+",
        n_features=2**settings.word_bits,
        alternate_sign=False,
        lowercase=False,
        binary=present,
        norm=None if present else "l2",
        dtype=np.float64,
    )
    chars = HashingVectorizer(
        analyzer="char_wb",
        ngram_range=(settings.char_min_n, settings.char_max_n),
        n_features=2**settings.char_bits,
        alternate_sign=False,
        lowercase=False,
        binary=present,
        norm=None if present else "l2",
        dtype=np.float64,
    )
    parts = [
        ("words", make_pipeline(FunctionTransformer(_texts, validate=False), words)),
        ("chars", make_pipeline(FunctionTransformer(_texts, validate=False), chars)),
        ("vader", _vader(settings.vader_weight)),
    ]
    if settings.fact_bits:
        parts.append(("facts", _facts(settings.fact_bits)))
    union = FeatureUnion(parts)
    # Normalising a text costs about half as much as hashing its word n-grams: done once.
    return make_pipeline(FunctionTransformer(_normalised, validate=False), union)


def _classifier(settings: Settings) -> Head:
    from socialcrm.compact_fit import CompactLogisticRegression

    if settings.scaling == "log_count_ratio":
        from socialcrm.scaled_fit import ScaledLogisticRegression

        return ScaledLogisticRegression(settings.n_grams, C=settings.c, max_iter=500, tol=1e-3)
    # tol 1e-3: the figures are the same to two decimals as at the default 1e-4, in half the
    # time (bench/triage_learned.py on 2,000 labelled tweets).
    return CompactLogisticRegression(C=settings.c, max_iter=500, tol=1e-3, class_weight="balanced")


def estimator(settings: Settings) -> Pipeline:
    """One head: the features and a logistic regression, as trained."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("features", features(settings)), ("model", _classifier(settings))])


@dataclass(slots=True)
class HeadFigures:
    """Cross-validated figures of one head: per class and macro-averaged."""

    per_class: dict[str, dict[str, float]]
    macro_f1: float
    macro_recall: float
    n: int
    folds: int
    #: Most frequent mistakes: (true, predicted, count).
    confusions: list[tuple[str, str, int]] = field(default_factory=list)
    #: For each of ``RECALLS``, the highest chance of needing us (``RISKY``'s probability) at
    #: which that share of the labelled messages that need us were read, held out: the ticket
    #: threshold that keeps that share ticketed (``ticket_threshold``).
    risk_at_recall: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the store and JSON."""
        return {
            "per_class": self.per_class,
            "macro_f1": self.macro_f1,
            "macro_recall": self.macro_recall,
            "n": self.n,
            "folds": self.folds,
            "confusions": [list(c) for c in self.confusions],
            "risk_at_recall": self.risk_at_recall,
        }


def figures(classes: Sequence[str], truth: Sequence[str], predicted: Sequence[str]) -> HeadFigures:
    """Precision, recall and F1 per class of predictions against the truth."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(classes)
    p, r, f, s = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0.0)
    per = {
        c: {
            "precision": round(float(p[i]), 4),
            "recall": round(float(r[i]), 4),
            "f1": round(float(f[i]), 4),
            "support": int(s[i]),
        }
        for i, c in enumerate(labels)
    }
    present = [i for i, c in enumerate(labels) if s[i] > 0]
    wrong = Counter((t, q) for t, q in zip(truth, predicted, strict=True) if t != q)
    return HeadFigures(
        per_class=per,
        macro_f1=round(float(np.mean([f[i] for i in present])) if present else 0.0, 4),
        macro_recall=round(float(np.mean([r[i] for i in present])) if present else 0.0, 4),
        n=len(truth),
        folds=0,
        confusions=[(t, q, n) for (t, q), n in wrong.most_common(3)],
    )


def trainable(labels: Sequence[str], head: str | None = None) -> bool:
    """Whether a head can learn from these labels: two classes, each seen a few times, one of
    them (for ``head``) the class that needs us: a model that never saw a negative message
    cannot say which ones need us, and would read every batch in vain."""
    counts = Counter(labels)
    if head is not None and RISKY[head] not in counts:
        return False
    return len(counts) >= 2 and min(counts.values()) >= MIN_PER_CLASS


def matrices(
    settings: Settings, data: Mapping[str, tuple[Sequence[Sample], Sequence[str]]]
) -> dict[str, Any]:
    """The feature matrix of each head's samples, made once for heads that share them: the
    features are stateless (hashed, each row on its own), so the rows of a fold are the
    same whether the matrix is made for the fold or for all of it."""
    transform = RememberingUnion(features(settings)).transform
    made: dict[int, Any] = {}
    out = {}
    for head, (xs, _labels) in data.items():
        if id(xs) not in made:
            made[id(xs)] = transform(list(xs))
        out[head] = made[id(xs)]
    return out


def cross_validate(
    head: str,
    xs: Sequence[Sample],
    labels: Sequence[str],
    settings: Settings,
    folds: int = 5,
    matrix: Any = None,
) -> HeadFigures:
    """Figures of one head by stratified k-fold cross-validation (fewer folds on tiny sets);
    ``matrix``: the samples' features where they were made already (``matrices``)."""
    if not trainable(labels, head):
        raise TriageError(
            f"{head}: need two classes with {MIN_PER_CLASS} examples each, one of them "
            f"'{RISKY[head]}'"
        )
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    k = max(2, min(folds, *Counter(labels).values()))
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=0)
    truth = np.array(labels)
    if matrix is None:
        matrix = matrices(settings, {head: (xs, labels)})[head]
    # The features once, not once a fold: the same figures as ``estimator`` fold by fold.
    proba = cross_val_predict(
        _classifier(settings), matrix, truth, cv=split, method="predict_proba"
    )
    classes = sorted(set(labels))  # the columns' order: the classifier's sorted classes
    out = figures(HEADS[head], labels, [classes[i] for i in proba.argmax(axis=1).tolist()])
    out.folds = k
    # Trainable labels hold the class that needs us: the curve of the chances it was given.
    out.risk_at_recall = risk_at_recall(risks(head, classes, proba, settings)[truth == RISKY[head]])
    return out


def risks(
    head: str, classes: Sequence[str], proba: NDArray[Any], settings: Settings
) -> NDArray[np.float64]:
    """Each message's chance of needing us, from a head's class probabilities (columns in
    ``classes`` order): the risky class's, or for the class head read as
    ``negative_vs_positive``, negative's share of negative and positive together."""
    risky = np.asarray(proba[:, classes.index(RISKY[head])], dtype=np.float64)
    against = head == "sentiment" and settings.sentiment_risk == "negative_vs_positive"
    if not against or "positive" not in classes:
        return risky
    either = risky + proba[:, classes.index("positive")]
    out: NDArray[np.float64] = np.divide(risky, either, out=np.zeros_like(risky), where=either > 0)
    return out


def risk_at_recall(risks: NDArray[Any]) -> list[float]:
    """For each of ``RECALLS``, the highest threshold on ``risks`` (the chances a model gave
    messages that do need us) that keeps that share of them at or above it."""
    ranked = np.sort(np.asarray(risks, dtype=np.float64))[::-1]
    if not len(ranked):
        return []
    at = [min(len(ranked), max(1, math.ceil(r * len(ranked) - 1e-9))) - 1 for r in RECALLS]
    return [round(float(ranked[i]), 4) for i in at]


class Threshold(NamedTuple):
    """The chance of needing us from which a model's reading keeps a message ticketed, and
    where it comes from, in words."""

    at: float
    why: str


def ticket_threshold(
    scores: Mapping[str, Any], *, fixed: float | None, recall: float, ceiling: float
) -> Threshold:
    """``steer``'s ``ticket_at`` for a model: ``fixed`` where the config sets one; else the
    chance at which the model, in its cross-validation (``scores``, as stored with it), kept
    ``recall`` of the labelled messages that need us, between ``LOWEST_TICKET_AT`` and
    ``ceiling`` (``min_confidence``); ``FALLBACK_TICKET_AT`` where it noted none."""
    if fixed is not None:
        return Threshold(fixed, "set in the config (triage.ticket_at)")
    # The chance that steers is the reply head's where it was trained (``Model.predict``).
    name = "needs_reply" if "needs_reply" in scores else "sentiment"
    head = scores.get(name) or {}
    curve = head.get("risk_at_recall") or []
    support = (head.get("per_class") or {}).get(RISKY[name], {}).get("support", 0)
    if len(curve) != len(RECALLS) or support < MIN_RISKY_FOR_THRESHOLD:
        return Threshold(
            min(FALLBACK_TICKET_AT, ceiling),
            f"the default: the model's validation gave no threshold (fewer than "
            f"{MIN_RISKY_FOR_THRESHOLD} labelled '{RISKY[name]}', or trained before it did)",
        )
    # The first noted share at least ``recall``: a recall between two notes is not rounded down.
    i = min(len(RECALLS) - 1, max(0, math.ceil((recall - RECALLS[0]) * 100 - 1e-9)))
    own = float(curve[i])
    # A small set's cross-validation flatters the model (templated texts scored 1.000): its
    # threshold is never less careful than the default's.
    validated = int(head.get("n") or 0)
    top = ceiling if validated >= SMALL_SET else min(ceiling, FALLBACK_TICKET_AT)
    at = min(max(own, LOWEST_TICKET_AT), top)
    why = (
        f"the model kept {RECALLS[i]:.0%} of the {support} messages labelled '{RISKY[name]}' "
        f"({name}) at or above {own:.2f} in cross-validation"
    )
    if at != own:
        why += f", held within {LOWEST_TICKET_AT:.2f}-{top:.2f}"
        if own > top < ceiling:
            why += f" (validated on {validated} labels, fewer than {SMALL_SET})"
    return Threshold(at, why)


class Model:
    """A trained triage model: the shared features and the trained heads."""

    def __init__(self, settings: Settings, heads: dict[str, Head], version: int = 0) -> None:
        self.settings = settings
        self.heads = heads
        self.version = version
        self._features = features(settings)
        # The same matrix as self._features.transform, with each word's hashing remembered.
        self._transform = RememberingUnion(self._features).transform

    @classmethod
    def fit(
        cls,
        settings: Settings,
        data: Mapping[str, tuple[Sequence[Sample], Sequence[str]]],
        made: Mapping[str, Any] | None = None,
    ) -> Model:
        """Train each head that has enough labels on all of them; ``made``: each head's
        feature matrix where it was made already (``matrices``)."""
        data = {h: (xs, labels) for h, (xs, labels) in data.items() if trainable(labels, h)}
        if made is None:
            made = matrices(settings, data)
        heads: dict[str, Head] = {}
        for head, (_xs, labels) in data.items():
            heads[head] = _classifier(settings).fit(made[head], np.array(labels))
        if not heads:
            raise TriageError("no head has enough labels to learn from")
        return cls(settings, heads)

    def predict(self, xs: Sequence[Sample]) -> list[Verdict]:
        """The model's reading of each sample, in order."""
        if not xs:
            return []
        matrix = self._transform(list(xs))
        found: dict[str, tuple[list[str], list[float], list[float]]] = {}
        for head, clf in self.heads.items():
            proba = clf.predict_proba(matrix)
            best = proba.argmax(axis=1)
            classes = [str(c) for c in clf.classes_]
            # tolist() gives the same Python floats as float() of each element, in one call.
            found[head] = (
                [classes[i] for i in best.tolist()],
                proba[np.arange(len(best)), best].tolist(),
                risks(head, classes, proba, self.settings).tolist(),
            )
        out = []
        sent = found.get("sentiment")
        rep = found.get("needs_reply")
        risk = (rep or sent or ([], [], []))[2]
        for j in range(len(xs)):
            out.append(
                Verdict(
                    sent[0][j] if sent else None,
                    round(sent[1][j], 4) if sent else None,
                    (rep[0][j] == "yes") if rep else None,
                    round(rep[1][j], 4) if rep else None,
                    self.version,
                    round(risk[j], 4),
                )
            )
        return out

    # -- stored as data --------------------------------------------------------------------

    def dump(self) -> bytes:
        """The model as an .npz archive of plain arrays (sparse coefficients, a JSON header)."""
        header = {
            "format": FORMAT,
            "settings": self.settings.model_dump(),
            "heads": {h: [str(c) for c in clf.classes_] for h, clf in self.heads.items()},
        }
        arrays: dict[str, NDArray[Any]] = {
            "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
        }
        for head, clf in self.heads.items():
            coef = np.asarray(clf.coef_, dtype=np.float64)
            rows, cols = np.nonzero(coef)
            arrays[f"{head}.rows"] = rows.astype(np.int32)
            arrays[f"{head}.cols"] = cols.astype(np.int32)
            arrays[f"{head}.values"] = coef[rows, cols].astype(np.float32)
            arrays[f"{head}.intercept"] = np.asarray(clf.intercept_, dtype=np.float64)
            if self.settings.scaling == "log_count_ratio":
                arrays[f"{head}.ratio"] = np.asarray(clf.ratio_, dtype=np.float32)
        buf = io.BytesIO()
        np.savez_compressed(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    @classmethod
    def load(cls, payload: bytes, digest: str | None = None, version: int = 0) -> Model:
        """Rebuild a model from its payload; anything not in the expected layout is refused."""
        if len(payload) > MAX_PAYLOAD:
            raise TriageError("model payload too large")
        if digest is not None and hashlib.sha256(payload).hexdigest() != digest:
            raise TriageError("model payload does not match its digest; refused")
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except Exception as err:  # any unreadable archive is refused the same way
            raise TriageError(f"model payload is not a triage model archive: {err}") from err
        try:
            raw = arrays.pop("header")
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise TriageError("header is not text")
            header = json.loads(raw.tobytes().decode("utf-8"))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise TriageError(f"unknown model format {header.get('format')!r}")
            if set(header) != {"format", "settings", "heads"}:
                raise TriageError("unexpected header fields")
            settings = Settings.model_validate(header["settings"])
            heads_meta = header["heads"]
            if not isinstance(heads_meta, dict) or not heads_meta:
                raise TriageError("no heads")
            parts = ["rows", "cols", "values", "intercept"]
            if settings.scaling == "log_count_ratio":
                parts.append("ratio")
            expected = {f"{h}.{p}" for h in heads_meta for p in parts}
            if set(arrays) != expected:
                raise TriageError("unexpected arrays in the payload")
            heads = {}
            for head, classes in heads_meta.items():
                heads[head] = _rebuild(head, classes, arrays, settings)
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as err:
            if isinstance(err, TriageError):
                raise
            raise TriageError(f"model payload refused: {err}") from err
        return cls(settings, heads, version)


def _rebuild(head: str, classes: Any, arrays: dict[str, NDArray[Any]], settings: Settings) -> Head:
    """A head's regression from checked arrays."""
    if head not in HEADS or not isinstance(classes, list) or not set(classes) <= set(HEADS[head]):
        raise TriageError(f"unknown head or classes: {head} {classes!r}")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise TriageError(f"{head}: bad classes {classes!r}")
    n_rows = 1 if len(classes) == 2 else len(classes)
    rows, cols = arrays[f"{head}.rows"], arrays[f"{head}.cols"]
    values, intercept = arrays[f"{head}.values"], arrays[f"{head}.intercept"]
    for name, arr, kind in (
        ("rows", rows, "i"),
        ("cols", cols, "i"),
        ("values", values, "f"),
        ("intercept", intercept, "f"),
    ):
        if arr.dtype.kind != kind or arr.ndim != 1:
            raise TriageError(f"{head}.{name}: wrong type")
    if not (len(rows) == len(cols) == len(values)) or intercept.shape != (n_rows,):
        raise TriageError(f"{head}: arrays of mismatched sizes")
    n = settings.n_features
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows or cols.min() < 0 or cols.max() >= n):
        raise TriageError(f"{head}: coefficient index out of range")
    if not (np.isfinite(values).all() and np.isfinite(intercept).all()):
        raise TriageError(f"{head}: coefficients are not finite")
    coef = np.zeros((n_rows, n), dtype=np.float64)
    coef[rows, cols] = values
    clf = _classifier(settings)
    if settings.scaling == "log_count_ratio":
        ratio = arrays[f"{head}.ratio"]
        if ratio.dtype.kind != "f" or ratio.shape != (n_rows, settings.n_grams):
            raise TriageError(f"{head}.ratio: wrong type or size")
        if not np.isfinite(ratio).all():
            raise TriageError(f"{head}.ratio: not finite")
        clf.ratio_ = ratio.astype(np.float64)
    clf.classes_ = np.array(classes)
    clf.coef_ = coef
    clf.intercept_ = intercept.astype(np.float64)
    clf.n_features_in_ = n
    clf.n_iter_ = np.zeros(1, dtype=np.int32)
    return clf


# -- labels ---------------------------------------------------------------------------------


def reply_label(value: str) -> str:
    """``yes``/``no`` from the ways people say it (yes, no, true, false)."""
    v = value.strip().lower()
    if v in ("yes", "y", "true", "1"):
        return "yes"
    if v in ("no", "n", "false", "0"):
        return "no"
    raise TriageError(f"needs a reply: say yes or no, got {value!r}")


def sentiment_label(value: str) -> str:
    """A sentiment class, checked."""
    v = value.strip().lower()
    if v not in SENTIMENT:
        raise TriageError(f"sentiment: one of {', '.join(SENTIMENT)}, got {value!r}")
    return v


def says_no_reply(reason: str) -> bool:
    """Whether a reject reason says the message needed no reply."""
    words = _SPACE_RE.sub(" ", _PUNCT_RE.sub(" ", reason.lower())).strip()
    return any(words.startswith(p) for p in NO_REPLY_REASONS)


class Recorded(NamedTuple):
    """A message's label: the row, and whether it is new (False: the message's newest label
    on that head said the same already, and nothing was added)."""

    row: TriageLabel
    added: bool


async def label_message(
    session: AsyncSession,
    message_id: int,
    kind: str,
    value: str,
    reason: str,
    actor: str,
    via: str,
) -> Recorded:
    """Record a label on a stored message (its text goes with the label), unless its newest
    label on that head says the same. A sentiment label is the message's class from then on
    (``take_class``)."""
    # Locked: two people relabelling one message at once each move its count in the rollups.
    msg = await session.get(Message, message_id, with_for_update=kind == "sentiment")
    if msg is None:
        raise TriageError(f"no message #{message_id}")
    if msg.direction != "inbound":
        raise TriageError(f"message #{message_id} is one of ours, not a customer's")
    # The message's newest word on this head, by its id or its platform id (as the training
    # set keys it): the same word again teaches nothing and would count as a new label.
    same = col(TriageLabel.message_id) == msg.id
    if msg.external_id:
        same = sa.or_(
            same,
            sa.and_(
                col(TriageLabel.channel) == msg.channel,
                col(TriageLabel.external_id) == msg.external_id,
            ),
        )
    last = (
        await session.execute(
            sa.select(TriageLabel)
            .where(TriageLabel.kind == kind, same)
            .order_by(col(TriageLabel.id).desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if kind == "sentiment" and (msg.triage_class, msg.triage_version) != (value, BY_PERSON):
        # Also where the word is said again: a label imported, or given before this version,
        # did not change the message's class.
        await take_class(session, msg, value)
    if last is not None and last.value == value:
        return Recorded(last, added=False)
    return Recorded(
        add_label(
            session,
            kind,
            value,
            reason,
            actor,
            via,
            text=msg.text,
            lang=msg.lang,
            message_id=msg.id,
            channel=msg.channel,
            external_id=msg.external_id,
        ),
        added=True,
    )


#: ``Message.triage_version`` of a message whose class a person gave.
BY_PERSON = 0


async def take_class(session: AsyncSession, msg: Message, value: str) -> None:
    """A person's sentiment class becomes the stored message's, in place of the model's
    reading: the reports count it (their rollups too) and list the message by it ("most
    positive" no longer shows a message the team called negative)."""
    old = rollups.sentiment_class(msg.sentiment, msg.ignored, msg.triage_class)
    msg.triage_class, msg.triage_confidence, msg.triage_version = value, None, BY_PERSON
    new = rollups.sentiment_class(msg.sentiment, msg.ignored, value)
    await rollups.move(
        session,
        created_at=msg.created_at,
        channel=msg.channel,
        source=msg.source,
        ignored=msg.ignored,
        old=old,
        new=new,
    )


def add_label(
    session: AsyncSession,
    kind: str,
    value: str,
    reason: str,
    actor: str,
    via: str,
    *,
    text: str,
    lang: str | None = None,
    message_id: int | None = None,
    channel: str | None = None,
    external_id: str | None = None,
) -> TriageLabel:
    """Add one label row, checked."""
    if kind not in HEADS or value not in HEADS[kind]:
        raise TriageError(f"bad label {kind}={value!r}")
    if reason not in REASONS:
        raise TriageError(f"bad label reason {reason!r}")
    row = TriageLabel(
        message_id=message_id,
        channel=channel,
        external_id=external_id[:998] if external_id else None,
        text=text,
        lang=lang,
        kind=kind,
        value=value,
        reason=reason,
        actor=actor[:128],
        via=via[:32],
    )
    session.add(row)
    return row


async def label_ticket_closed(session: AsyncSession, ticket: Ticket, actor: str, via: str) -> int:
    """A ticket closed without a reply: its customer messages needed none. How many labelled."""
    sent = (
        await session.execute(
            sa.select(sa.func.count())
            .select_from(Reply)
            .where(
                Reply.ticket_id == ticket.id,
                Reply.status.in_(("approved", "sending", "sent", "needs_check")),  # type: ignore[attr-defined]
            )
        )
    ).scalar_one()
    if sent or ticket.first_response_at is not None:
        return 0
    msgs = (
        await session.execute(
            sa.select(Message.id).where(
                Message.ticket_id == ticket.id, Message.direction == "inbound"
            )
        )
    ).all()
    for (mid,) in msgs:
        await label_message(session, mid, "needs_reply", "no", "closed-without-reply", actor, via)
    return len(msgs)


@dataclass(slots=True)
class TrainingSet:
    """The newest label of each labelled message, per head."""

    texts: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)
    #: The labelled messages (a stored message, else a platform's id, else a text).
    keys: set[Any] = field(default_factory=set)

    def counts(self) -> dict[str, dict[str, int]]:
        """Labels per head and class."""
        return {h: dict(sorted(Counter(v).items())) for h, v in self.labels.items()}

    @property
    def messages(self) -> int:
        """Labelled messages (one labelled for both heads counts once), as imported."""
        return len(self.keys)


async def training_set(session: AsyncSession) -> TrainingSet:
    """Every message's newest label per head, as texts and labels."""
    rows = (
        await session.execute(
            sa.select(
                TriageLabel.message_id,
                TriageLabel.channel,
                TriageLabel.external_id,
                TriageLabel.text,
                TriageLabel.lang,
                TriageLabel.kind,
                TriageLabel.value,
            ).order_by(TriageLabel.id)  # type: ignore[arg-type]
        )
    ).all()
    newest: dict[tuple[Any, str], tuple[str, str | None, str]] = {}
    for mid, channel, ext, text, lang, kind, value in rows:
        # A message by its platform id first: a label imported before the message was stored
        # and a relabel of it once stored are about one message, and the newer one counts.
        key: Any = ("x", channel, ext) if ext else ("m", mid) if mid is not None else ("t", text)
        newest[(key, kind)] = (text, lang, value)
    out = TrainingSet()
    for (key, kind), (text, lang, value) in newest.items():
        out.keys.add(key)
        out.texts.setdefault(kind, []).append((text, lang))
        out.labels.setdefault(kind, []).append(value)
    return out


# -- versions in the store ------------------------------------------------------------------


@dataclass(slots=True)
class Trained:
    """A model fresh from training, with its figures, ready to store."""

    model: Model
    counts: dict[str, dict[str, int]]
    scores: dict[str, dict[str, Any]]
    card: dict[str, Any]


def train(
    data: Mapping[str, tuple[Sequence[Sample], Sequence[str]]],
    settings: Settings | None = None,
    now: datetime | None = None,
    folds: int = 5,
) -> Trained:
    """Cross-validate each head, then fit it on every label: the one training routine. By
    default a model reads the rules' text facts where the samples carry them."""
    if settings is None:
        reads_rules = any(x.facts for xs, _labels in data.values() for x in xs)
        settings = LEARNED if reads_rules else Settings()
    scores: dict[str, dict[str, Any]] = {}
    # Each head's features once, for its validation and its fit alike.
    made = matrices(settings, {h: d for h, d in data.items() if trainable(d[1], h)})
    for head, (xs, labels) in data.items():
        if head in made:
            scores[head] = cross_validate(head, xs, labels, settings, folds, made[head]).as_dict()
    model = Model.fit(settings, data, made)
    counts = {h: dict(sorted(Counter(labels).items())) for h, (_xs, labels) in data.items()}
    card = model_card(counts, scores, now or utcnow(), settings)
    return Trained(model, counts, scores, card)


def model_card(
    counts: dict[str, dict[str, int]],
    scores: dict[str, dict[str, Any]],
    at: datetime,
    settings: Settings,
) -> dict[str, Any]:
    """What the model was trained on, how well it did, and where it fails."""
    fails: list[str] = []
    for head, s in scores.items():
        for cls, f in s["per_class"].items():
            if f["support"] and f["recall"] < 0.6:
                fails.append(
                    f"{head}: finds only {f['recall']:.0%} of '{cls}' messages "
                    f"({f['support']} labelled)"
                )
        for t, q, n in s["confusions"]:
            fails.append(
                f"{head}: takes '{t}' for '{q}' most often "
                f"({n} time{'' if n == 1 else 's'} in validation)"
            )
    for head, labels in HEADS.items():
        if head not in scores:
            fails.append(
                f"{head}: not trained (too few labels of each kind, or none "
                f"'{RISKY[head]}'); rules decide alone"
            )
        else:
            n = sum(counts.get(head, {}).values())
            if n < SMALL_SET:
                fails.append(
                    f"{head}: validated on {n} labels only: figures from a small set, or from "
                    "texts written alike, are better than the model will do on new messages"
                )
            for cls in labels:
                if counts.get(head, {}).get(cls, 0) < 20:
                    fails.append(f"{head}: few '{cls}' examples; its figures are uncertain")
    fails.append(
        "texts VADER does not score (not English) get n-gram features only; short texts "
        "(a few words) and sarcasm are read least reliably"
    )
    return {
        "trained_at": at.isoformat(),
        "training_size": {h: sum(c.values()) for h, c in counts.items()},
        "labels": counts,
        "validation": "stratified 5-fold cross-validation on the training labels",
        "scores": {
            h: {"macro_f1": s["macro_f1"], "macro_recall": s["macro_recall"]}
            for h, s in scores.items()
        },
        "fails": fails,
        "features": (
            f"hashed word 1-{settings.word_max_n}-grams and character "
            f"{settings.char_min_n}-{settings.char_max_n}-grams, VADER's four scores"
            + (", the rules' text conditions that hold" if settings.fact_bits else "")
        ),
    }


async def store_model(session: AsyncSession, trained: Trained, actor: str) -> TriageModelVersion:
    """Save a trained model as the newest version."""
    payload = trained.model.dump()
    row = TriageModelVersion(
        created_by=actor[:128],
        label_counts=trained.counts,
        scores=trained.scores,
        card=trained.card,
        format=FORMAT,
        digest=hashlib.sha256(payload).hexdigest(),
        payload=payload,
    )
    session.add(row)
    await session.flush()
    assert row.id is not None
    trained.model.version = row.id
    return row


async def newest_version(session: AsyncSession) -> int | None:
    """The id of the newest stored model, if any."""
    found: int | None = (
        await session.execute(sa.select(sa.func.max(TriageModelVersion.id)))
    ).scalar_one()
    return found


async def newest(session: AsyncSession) -> TriageModelVersion | None:
    """The newest stored model row."""
    return (
        await session.execute(
            sa.select(TriageModelVersion).order_by(TriageModelVersion.id.desc()).limit(1)  # type: ignore[union-attr]
        )
    ).scalar()


def load_row(row: TriageModelVersion) -> Model:
    """The model of a stored version, checked."""
    if row.format != FORMAT:
        raise TriageError(f"model #{row.id} has unknown format {row.format!r}; refused")
    assert row.id is not None
    return Model.load(row.payload, row.digest, row.id)


def read_other_rules(row: TriageModelVersion | None, rules: RuleSet) -> bool:
    """Whether the stored model was trained beside rules whose text conditions differ from
    these, or (stored before models could) beside no rules at all."""
    if row is None:
        return False
    card = row.card if isinstance(row.card, dict) else {}
    return bool(card.get("rules") != rules.conditions_key)


async def labels_since(session: AsyncSession, since: datetime | None) -> int:
    """Labels added after a moment (all of them with None)."""
    q = sa.select(sa.func.count()).select_from(TriageLabel)
    if since is not None:
        q = q.where(TriageLabel.created_at > since)
    n: int = (await session.execute(q)).scalar_one()
    return n


def train_set(
    ts: TrainingSet,
    scorer: SentimentScorer,
    rules: RuleSet | None,
    settings: Settings | None = None,
) -> Trained:
    """Train on a training set read from the store (CPU work: run it off the event loop)."""
    data = {h: (read(ts.texts[h], scorer, rules), ts.labels[h]) for h in ts.labels}
    return train(data, settings)


class TooFewLabels(TriageError):
    """Fewer labelled messages than a model is trained from; ``lacking``: what more the
    labels must show before any number of them trains (``untrainable``), None if nothing."""

    def __init__(self, labelled: int, needed: int, lacking: str | None = None) -> None:
        super().__init__(
            f"{labelled} labelled message(s); at least {needed} are needed (triage.min_labels)"
        )
        self.labelled = labelled
        self.needed = needed
        self.lacking = lacking


def untrainable(ts: TrainingSet) -> str | None:
    """Why no head can learn from these labels yet, in words; None when one can."""
    if any(trainable(v, head) for head, v in ts.labels.items()):
        return None
    so_far = "; ".join(
        f"{head}: " + ", ".join(f"{n} {label}" for label, n in counts.items())
        for head, counts in ts.counts().items()
    )
    return (
        f"the labels do not yet show two kinds of message, {MIN_PER_CLASS} of each at least, "
        "one of them needing us (negative, or needs a reply), for either question "
        f"(labels so far: {so_far or 'none'})"
    )


async def retrain(
    store: Store,
    scorer: SentimentScorer,
    rules: RuleSet | None,
    actor: str,
    via: str,
    *,
    min_labels: int,
    settings: Settings | None = None,
    on_start: Callable[[TrainingSet], None] | None = None,
) -> TriageModelVersion:
    """Train a new version from every label in the store and save it as the newest;
    ``on_start`` is told what it trains on once the labels are found enough."""
    async with store.reader() as s:
        ts = await training_set(s)
    lacking = untrainable(ts)
    if ts.messages < min_labels:
        raise TooFewLabels(ts.messages, min_labels, lacking)
    if lacking is not None:
        raise TriageError(lacking)
    if on_start is not None:
        on_start(ts)
    trained = await asyncio.to_thread(train_set, ts, scorer, rules, settings)
    if rules is not None:
        # The rules it was trained beside: when their conditions change, the daemon trains it
        # again (also where none of them held in a labelled message, and it reads none).
        trained.card["rules"] = rules.conditions_key
    async with store.session() as s:
        row = await store_model(s, trained, actor)
        s.add(
            AuditEvent(
                actor=actor[:128],
                via=via[:32],
                action="triage.train",
                object_type="triage_model",
                object_id=str(row.id),
                detail={"labels": trained.counts, "scores": trained.card["scores"]},
            )
        )
    return row


# -- in the pipeline ------------------------------------------------------------------------

#: The tag of a message the model was unsure of; it gets a ticket so a person decides.
NEEDS_TRIAGE = "needs-triage"


def route_to_person(d: Decision) -> None:
    """Send a message the model is unsure of to a person: a ticket, tagged, never ignored."""
    if NEEDS_TRIAGE not in d.tags:
        d.tags.append(NEEDS_TRIAGE)
    if d.ignore:
        d.ignore = False
        d.draft_template = None  # a rule meant to drop it: nothing is drafted, a person looks
    d.open_ticket = True
    d.trail.append(f"triage: the model is unsure of this message; tagged {NEEDS_TRIAGE}")


#: Intents that ask something of us: a happy reading alone does not close them.
ASKING = frozenset({"question"})


def risk_of(verdict: Verdict) -> float:
    """The model's chance that a message needs us (from its reading where it was not given:
    exact for the reply head, an upper bound from the class otherwise)."""
    if verdict.risk is not None:
        return verdict.risk
    if verdict.needs_reply is not None and verdict.reply_confidence is not None:
        c = verdict.reply_confidence
        return c if verdict.needs_reply else 1.0 - c
    c = verdict.confidence or 0.0
    return c if verdict.sentiment == "negative" else 1.0 - c


def steer(d: Decision, verdict: Verdict, min_confidence: float, ticket_at: float) -> None:
    """Let the team's model decide what the rules' words leave open, once one is trained.

    ``risk`` is the model's chance that the message needs us (needs a reply where that head
    is trained, else is negative, as ``Settings.sentiment_risk`` reads it). The model
    learned from the team, so where it is sure it wins over the shipped word lists, both
    ways; in between, the rules' ticket stands and a person looks at what they would leave
    alone:

    - sure it needs us (the reply head's chance at least ``min_confidence``, or with only the
      class, read as negative with at least ``min_confidence``: a share of negative against
      positive says which way a message leans, not that the model is sure of it): a ticket,
      never a thank-you;
    - risk from ``ticket_at`` up: the rules' ticket, or one for a person (``needs-triage``);
      never a thank-you;
    - risk below ``ticket_at``: with the reply head, no ticket and no draft; with only the
      class, a message read as positive opens no ticket unless it asks us something (its
      thank-you stays), anything else is left to the rules. A thank-you stays only where
      the model reads the message as positive with at least ``min_confidence``.

    Escalations (legal, safety, angry VIPs) are never undone, and a rule's ``ignore`` only by
    a person's look.
    """
    risk = risk_of(verdict)
    if verdict.needs_reply is not None:
        sure, said = risk >= min_confidence, f"needs a reply ({risk:.2f})"
    else:
        c = verdict.confidence or 0.0
        sure = verdict.sentiment == "negative" and c >= min_confidence
        said = f"reads as negative ({c:.2f})"
    if sure:
        if not d.ignore:
            _open(d, verdict, said)
    elif risk >= ticket_at:
        if not d.open_ticket or d.ignore:
            route_to_person(d)
        _not_thanked(d, verdict)
    elif d.escalations or d.ignore:
        return
    elif verdict.needs_reply is not None:
        _close(d, f"needs no reply ({1 - risk:.2f})", keep_thanks=False)
    elif verdict.sentiment == "positive":
        c = verdict.confidence or 0.0
        if d.intent not in ASKING:
            _close(d, f"reads as positive ({c:.2f})", keep_thanks=True)
        elif c >= min_confidence and d.draft_template is not None:
            # A happy question ("love the app! does it work on iPad?"): its answer waits in
            # the approval queue, where a person reads it, as small talk's does; no ticket.
            _close(
                d, f"reads as a happy question ({c:.2f}); its answer is drafted", keep_draft=True
            )
    if d.intent == "praise" and d.draft_template is not None:
        sure = verdict.sentiment == "positive" and (verdict.confidence or 0.0) >= min_confidence
        if not sure:
            # Sarcasm reads as thanks to the words ("thanks for nothing"): a thank-you is
            # drafted only when the team's model, too, is sure the message is happy.
            d.draft_template = None
            d.trail.append("triage: the team's model is not sure this is praise; no thank-you")


def _open(d: Decision, verdict: Verdict, why: str) -> None:
    if not d.open_ticket:
        d.open_ticket = True
        d.trail.append(f"triage: the team's model says this {why}; ticket opened")
    _not_thanked(d, verdict)


def _not_thanked(d: Decision, verdict: Verdict) -> None:
    if d.intent == "praise":
        # Never thank someone who needs help: the person on the ticket writes the reply.
        d.intent = "complaint" if verdict.sentiment == "negative" else None
        d.draft_template = None
        d.trail.append("triage: not thanked")


def _close(d: Decision, why: str, *, keep_thanks: bool = False, keep_draft: bool = False) -> None:
    if d.open_ticket:
        d.open_ticket = False
        d.trail.append(f"triage: the team's model says this {why}; no ticket")
    if keep_draft:
        return
    if d.draft_template is not None and not (keep_thanks and d.intent == "praise"):
        d.draft_template = None
        d.trail.append("triage: no draft")


# -- labelled files (``socialcrm triage learn`` and ``eval``) --------------------------------


class Labelled(NamedTuple):
    """One line of a labelled file: the message and its labels (None where not given)."""

    message: InboundMessage
    sentiment: str | None
    needs_reply: str | None


def parse_labelled(n: int, line: str) -> Labelled | str:
    """One JSON Lines record of ``socialcrm ingest`` with ``sentiment_label`` and/or
    ``needs_reply``; a string says what is wrong with it."""
    try:
        record = json.loads(line)
    except ValueError as err:
        return f"line {n}: not JSON: {err}"
    if not isinstance(record, dict):
        return f"line {n}: expected a JSON object"
    sent = record.pop("sentiment_label", None)
    reply = record.pop("needs_reply", None)
    if sent is None and reply is None:
        return f"line {n}: no sentiment_label or needs_reply to learn from"
    try:
        sent_value = sentiment_label(str(sent)) if sent is not None else None
        if isinstance(reply, bool):
            reply_value: str | None = "yes" if reply else "no"
        else:
            reply_value = reply_label(str(reply)) if reply is not None else None
    except TriageError as err:
        return f"line {n}: {err}"
    try:
        msg = InboundMessage.model_validate(record)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(record)"
        return f"line {n}: {where}: {first['msg']}"
    if not msg.text.strip():
        return f"line {n}: text is empty"  # a label on no words teaches nothing
    return Labelled(msg, sent_value, reply_value)


def merge_duplicates(
    items: Sequence[Labelled], *, same_text: bool = False
) -> tuple[list[Labelled], int]:
    """A labelled file's lines, one a message: the lines for one message (its channel and
    ``external_id``) merge, a later line's labels winning; with ``same_text``, a text repeated
    with the same labels under another id goes too. The lines kept, and how many merged."""
    by_id: dict[tuple[str, str], Labelled] = {}
    for item in items:
        key = (item.message.channel, item.message.external_id)
        before = by_id.get(key)
        by_id[key] = (
            item
            if before is None
            else Labelled(
                item.message,
                item.sentiment if item.sentiment is not None else before.sentiment,
                item.needs_reply if item.needs_reply is not None else before.needs_reply,
            )
        )
    kept = list(by_id.values())
    if same_text:
        # Copies of one text in a cross-validation would land on both sides of a fold, and
        # the model would be scored on what it was trained on.
        seen: set[tuple[str, str | None, str | None]] = set()
        unique = []
        for item in kept:
            said = (item.message.text, item.sentiment, item.needs_reply)
            if said not in seen:
                seen.add(said)
                unique.append(item)
        kept = unique
    return kept, len(items) - len(kept)


async def import_labels(
    session: AsyncSession, items: Sequence[Labelled], actor: str, via: str
) -> dict[str, int]:
    """Store the labels of a labelled file, tied to the stored message where there is one."""
    keys = [(i.message.channel, i.message.external_id) for i in items]
    stored: dict[tuple[str, str], int] = {}
    # The newest label of each of these messages already here: the same word again (a
    # file imported twice) is not a new label, and does not make the model train again.
    newest: dict[tuple[str | None, str | None, str], str] = {}
    # And the newest an import gave: what a file said before is not new either, where a
    # person relabelled the message since.
    imported: dict[tuple[str | None, str | None, str], str] = {}
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        rows = await session.execute(
            sa.select(Message.channel, Message.external_id, Message.id).where(
                sa.tuple_(Message.channel, Message.external_id).in_(part)
            )
        )
        stored.update({(c, e): i for c, e, i in rows.all()})
        labelled = await session.execute(
            sa.select(
                TriageLabel.channel,
                TriageLabel.external_id,
                TriageLabel.kind,
                TriageLabel.value,
                TriageLabel.reason,
            )
            .where(sa.tuple_(TriageLabel.channel, TriageLabel.external_id).in_(part))
            .order_by(TriageLabel.id)  # type: ignore[arg-type]
        )
        for c, e, k, v, reason in labelled.all():
            newest[(c, e, k)] = v
            if reason == "import":
                imported[(c, e, k)] = v
    counts: Counter[str] = Counter()
    for item in items:
        m = item.message
        for kind, value in (("sentiment", item.sentiment), ("needs_reply", item.needs_reply)):
            if value is None:
                continue
            key = (m.channel, m.external_id[:998], kind)
            if newest.get(key) == value:
                counts["unchanged"] += 1
                continue
            if imported.get(key) == value:
                counts["relabelled"] += 1
                continue
            newest[key] = imported[key] = value
            add_label(
                session,
                kind,
                value,
                "import",
                actor,
                via,
                text=m.text,
                lang=m.lang,
                message_id=stored.get((m.channel, m.external_id)),
                channel=m.channel,
                external_id=m.external_id,
            )
            counts[kind] += 1
    counts["linked"] = sum(1 for k in keys if k in stored)
    return dict(counts)


def vader_class(score: Score) -> str:
    """VADER's class of a score, by its usual cut-offs (unscored texts are neutral)."""
    if score.compound is None:
        return "neutral"
    if score.compound >= 0.05:
        return "positive"
    if score.compound <= -0.05:
        return "negative"
    return "neutral"


def rules_need_reply(rules: RuleSet, text: str, score: Score) -> str:
    """Whether the rules alone would have a person answer: a ticket or a draft, not ignored."""
    d = rules.evaluate(replace(text_context(text), sentiment=score.compound, lang=score.lang))
    return "yes" if (d.open_ticket or d.draft_template) and not d.ignore else "no"


def evaluate(
    items: Sequence[Labelled], scorer: SentimentScorer, rules: RuleSet, folds: int = 5
) -> dict[str, dict[str, Any]]:
    """Per head: the learned model's cross-validated figures beside VADER-and-rules alone, and
    for the class beside the starter model too (what the reports count until a model is
    trained: the starter's class for English, VADER's for the rest)."""
    from socialcrm import starter

    scores = [scorer.score(i.message.text, i.message.lang) for i in items]
    out: dict[str, dict[str, Any]] = {}
    for head, classes in HEADS.items():
        rows = [
            (i, s)
            for i, s in zip(items, scores, strict=True)
            if (i.sentiment if head == "sentiment" else i.needs_reply) is not None
        ]
        if not rows:
            continue
        truth = [str(i.sentiment if head == "sentiment" else i.needs_reply) for i, _ in rows]
        if head == "sentiment":
            base = [vader_class(s) for _, s in rows]
        else:
            base = [rules_need_reply(rules, i.message.text, s) for i, s in rows]
        entry: dict[str, Any] = {"baseline": figures(classes, truth, base).as_dict()}
        shipped = starter.model() if head == "sentiment" else None
        if shipped is not None:
            english = [j for j, (_, s) in enumerate(rows) if starter.reads(s)]
            read = shipped.predict([sample(rows[j][0].message.text, rows[j][1]) for j in english])
            by_starter = list(base)
            for j, v in zip(english, read, strict=True):
                by_starter[j] = str(v.sentiment)
            entry["starter"] = figures(classes, truth, by_starter).as_dict()
        if trainable(truth, head):
            xs = [
                sample(i.message.text, s, rules.fact_keys(rules.text_facts(i.message.text)))
                for i, s in rows
            ]
            entry["learned"] = cross_validate(head, xs, truth, LEARNED, folds).as_dict()
        out[head] = entry
    return out
