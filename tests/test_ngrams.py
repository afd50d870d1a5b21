"""Remembered n-gram hashing: the same matrices as scikit-learn's, number for number."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import FunctionTransformer

from socialcrm import triage
from socialcrm.ngrams import RememberingUnion, RememberingVectorizer
from socialcrm.sandbox.traffic import TrafficGenerator

TRICKY = [
    "",
    "   ",
    "a",
    "ab",
    "x y z",
    "Ünïcödé  ΟΔΟΣ  straße\tand\nnewlines\u00a0nbsp",
    "Don't  STOP!!! why?? #fail @acme",
    "😀😀 emoji-only 😀 ¨diaeresis",
    "word " * 40,
    "averyveryveryverylongwordwithoutspaces" * 3,
]


def texts(n: int, seed: int = 3) -> list[str]:
    return [m.text for m in TrafficGenerator(seed).messages(n)] + TRICKY


def upper(docs: list[str]) -> list[str]:
    return [d.upper() for d in docs]


def same(a: Any, b: Any) -> None:
    a, b = a.tocsr(), b.tocsr()
    a.sort_indices()
    assert a.shape == b.shape
    assert np.array_equal(a.toarray(), b.toarray())
    assert b.has_sorted_indices


VECTORIZERS = [
    {"analyzer": "char_wb", "ngram_range": (2, 5), "lowercase": False},
    {"analyzer": "char_wb", "ngram_range": (1, 3), "strip_accents": "unicode"},
    {"analyzer": "char_wb", "ngram_range": (3, 3), "binary": True, "norm": "l1"},
    {"analyzer": "word", "ngram_range": (1, 2), "token_pattern": r"(?u)[#@]?\w+|[!?]+"},
    {"analyzer": "word", "ngram_range": (2, 3), "alternate_sign": True, "norm": None},
    {"analyzer": "word", "ngram_range": (1, 1), "stop_words": "english"},
    {"analyzer": "char", "ngram_range": (2, 4)},
]


@pytest.mark.parametrize("params", VECTORIZERS)
def test_a_vectorizer_gives_scikit_learns_matrix(params: dict[str, Any]) -> None:
    vec = HashingVectorizer(n_features=2**12, **params)
    fast = RememberingVectorizer(vec, limit=300)  # small: the memory starts afresh often
    docs = texts(400)
    for start in range(0, len(docs), 97):
        part = docs[start : start + 97]
        same(vec.transform(part), fast.transform(part))
    # Batches seen before come from memory alone and are still the same.
    same(vec.transform(docs[:50]), fast.transform(docs[:50]))


def test_the_triage_features_are_the_models_own() -> None:
    union = triage.features(triage.Settings(word_bits=12, char_bits=12))
    fast = RememberingUnion(union)
    assert fast.fast and all(p is not None for p in fast.parts[:2])
    xs = [triage.sample(t, None) for t in texts(300, seed=5)]
    xs[::3] = [x._replace(compound=0.4, pos=0.3, neu=0.7, neg=0.0) for x in xs[::3]]
    for start in range(0, len(xs), 128):
        same(union.transform(xs[start : start + 128]), fast.transform(xs[start : start + 128]))


def test_a_union_the_fast_path_does_not_know_is_its_own() -> None:
    vec = HashingVectorizer(n_features=2**10)
    weighted = FeatureUnion(
        [("a", vec), ("b", make_pipeline(FunctionTransformer(upper), vec))],
        transformer_weights={"a": 2.0, "b": 1.0},
    )
    fast = RememberingUnion(weighted)
    assert not fast.fast
    docs = texts(30)
    same(weighted.transform(docs), fast.transform(docs))
    mixed = FeatureUnion([("a", vec), ("b", FunctionTransformer(lambda d: [[len(t)] for t in d]))])
    fast = RememberingUnion(mixed)
    assert fast.parts[1] is None
    same(mixed.transform(docs), fast.transform(docs))
    # A pipeline that does not end in a union is run as it is.
    piped = make_pipeline(FunctionTransformer(upper), vec)
    fast = RememberingUnion(piped)
    assert not fast.fast
    same(piped.transform(docs), fast.transform(docs))


def test_predictions_are_the_estimators_own() -> None:
    xs = [triage.sample(t, None) for t in texts(200, seed=8)]
    labels = ["yes" if ("?" in x.text or "help" in x.text.lower()) else "no" for x in xs]
    settings = triage.Settings(word_bits=12, char_bits=12)
    model = triage.Model.fit(settings, {"needs_reply": (xs, labels)})
    clf = model.heads["needs_reply"]
    unseen = [triage.sample(t, None) for t in texts(150, seed=9)]
    proba = clf.predict_proba(triage.features(settings).transform(unseen))
    got = model.predict(unseen)
    best = proba.argmax(axis=1)
    assert [v.needs_reply for v in got] == [clf.classes_[i] == "yes" for i in best]
    assert [v.reply_confidence for v in got] == [
        round(float(proba[j, i]), 4) for j, i in enumerate(best)
    ]


def test_threads_reading_at_once_get_the_vectorizers_matrices() -> None:
    vec = HashingVectorizer(n_features=2**12, analyzer="char_wb", ngram_range=(2, 4))
    fast = RememberingVectorizer(vec, limit=500)  # starts afresh while others read
    docs = texts(600, seed=11)
    parts = [docs[i : i + 20] for i in range(0, len(docs), 20)]
    expected = [vec.transform(p) for p in parts]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can
    try:
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(fast.transform, parts * 3))
    finally:
        sys.setswitchinterval(switch)
    for want, have in zip(expected * 3, got, strict=True):
        same(want, have)
