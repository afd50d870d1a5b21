"""The learned triage model: training, the stored model, labels, commands, pipeline and rules."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import pickle
import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from socialcrm import rollups, starter, triage
from socialcrm.chatops.commands import Actor, CommandError, Commands
from socialcrm.cli import main
from socialcrm.config import Config
from socialcrm.connector import Author, Batch, InboundMessage
from socialcrm.db import Store
from socialcrm.models import AuditEvent, Message, Reply, Ticket, TriageLabel
from socialcrm.pipeline import Pipeline
from socialcrm.rules import Decision, RuleContext, RuleError, RuleSet
from socialcrm.scoring import ScoringPool
from socialcrm.sentiment import SentimentScorer

#: Small feature spaces keep the tests quick; the layout is the production one.
SMALL = triage.Settings(word_bits=12, char_bits=12)

_NEG = [
    "my order never arrived and nobody answers",
    "still waiting on a refund after three weeks",
    "the app crashes every time I log in",
    "charged twice and support hung up on me",
    "stuck on hold for an hour, awful service",
    "worst delivery experience, the box was smashed",
    "you cancelled my booking without telling me",
    "the replacement is broken too, fed up",
]
_NEU = [
    "what time does the store open on sunday",
    "is the blue model available in size 10",
    "do you ship to canada",
    "how do I change the email on my account",
    "which plan includes the extra storage",
    "where can I find the invoice for march",
    "does the warranty cover the battery",
    "can I pick up the order in person",
]
_POS = [
    "love the new update, works great",
    "the support team sorted it in minutes, thank you",
    "best customer service I have had all year",
    "delivery came a day early, brilliant",
    "really happy with my new headphones",
    "great job on the redesign, looks lovely",
    "the staff at the downtown shop were so kind",
    "five stars, will order again",
]
_OPENERS = ["", "hey @acme ", "@acme_help ", "so ", "honestly ", "just saying: "]
_CLOSERS = ["", "!", ".", " #acme", " https://t.co/abc", " today", " again"]


def labelled_set(per_class: int = 30, seed: int = 1) -> list[tuple[str, str]]:
    """Made-up labelled messages: each base text with varied openings and endings."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for label, bases in (("negative", _NEG), ("neutral", _NEU), ("positive", _POS)):
        combos = list(itertools.product(bases, _OPENERS, _CLOSERS))
        rng.shuffle(combos)
        out += [(f"{o}{b}{c}", label) for b, o, c in combos[:per_class]]
    rng.shuffle(out)
    return out


def reply_of(label: str) -> str:
    return "no" if label == "positive" else "yes"


@pytest.fixture(scope="module")
def trained() -> triage.Trained:
    scorer = SentimentScorer()
    rows = labelled_set()
    xs = [triage.sample(t, scorer.score(t)) for t, _ in rows]
    data = {
        "sentiment": (xs, [y for _, y in rows]),
        "needs_reply": (xs, [reply_of(y) for _, y in rows]),
    }
    return triage.train(data, SMALL)


# -- training and the stored model ----------------------------------------------------------


def test_training_on_a_small_labelled_set_generalises(trained: triage.Trained) -> None:
    scorer = SentimentScorer()
    unseen = [
        ("my parcel never arrived and support hung up", "negative", True),
        ("does the store ship to canada on sunday", "neutral", True),
        ("thank you, the new headphones are brilliant", "positive", False),
    ]
    got = trained.model.predict([triage.sample(t, scorer.score(t)) for t, _, _ in unseen])
    assert [v.sentiment for v in got] == [c for _, c, _ in unseen]
    assert [v.needs_reply for v in got] == [r for _, _, r in unseen]
    for v in got:
        assert v.confidence is not None and 1 / 3 < v.confidence <= 1.0
        assert v.reply_confidence is not None and 0.5 <= v.reply_confidence <= 1.0
    # The figures are cross-validated and the card says what the model is and where it fails.
    s = trained.scores["sentiment"]
    assert s["folds"] == 5 and s["n"] == 90
    assert s["macro_f1"] > 0.8
    assert set(s["per_class"]) == {"negative", "neutral", "positive"}
    assert trained.card["training_size"] == {"sentiment": 90, "needs_reply": 90}
    assert any("not English" in line for line in trained.card["fails"])
    # 90 labels of texts written alike score 0.8 and more: the card says not to trust that.
    assert (
        "sentiment: validated on 90 labels only: figures from a small set, or from texts "
        "written alike, are better than the model will do on new messages"
    ) in trained.card["fails"]
    figures = {**trained.scores["sentiment"], "confusions": []}
    many = {"negative": 300, "neutral": 300, "positive": 300}
    big = triage.model_card({"sentiment": many}, {"sentiment": figures}, datetime.now(UTC), SMALL)
    assert "sentiment: not trained" not in " ".join(big["fails"])
    assert not [line for line in big["fails"] if "validated on" in line]


@pytest.mark.parametrize("labels", ["sentiment", "needs_reply"])
def test_fitting_on_the_used_columns_finds_the_model_a_full_fit_finds(labels: str) -> None:
    """Training solves only for the columns the labelled messages touch: the same model as
    the plain regression over every column, zero where no message has a feature."""
    from sklearn.linear_model import LogisticRegression

    from socialcrm.compact_fit import CompactLogisticRegression

    rows = labelled_set(10)
    xs = [triage.sample(t, SentimentScorer().score(t)) for t, _ in rows]
    y = np.array([y if labels == "sentiment" else reply_of(y) for _, y in rows])
    matrix = triage.features(SMALL).fit_transform(xs)
    unused = np.setdiff1d(np.arange(matrix.shape[1]), np.unique(matrix.indices))
    assert len(unused) > matrix.shape[1] // 2  # a small set leaves most columns untouched
    settings = {"C": SMALL.c, "max_iter": 500, "tol": 1e-3, "class_weight": "balanced"}
    full = LogisticRegression(**settings).fit(matrix, y)
    compact = CompactLogisticRegression(**settings).fit(matrix, y)
    assert compact.coef_.shape == full.coef_.shape and compact.n_features_in_ == matrix.shape[1]
    assert np.abs(compact.coef_ - full.coef_).max() < 1e-8
    assert np.abs(compact.intercept_ - full.intercept_).max() < 1e-8
    assert not compact.coef_[:, unused].any() and compact.coef_.any()
    assert np.abs(compact.predict_proba(matrix) - full.predict_proba(matrix)).max() < 1e-8
    assert (compact.classes_ == full.classes_).all()
    # Rows with nothing in them fit as the plain regression fits them: on the intercept alone.
    empty = matrix[:, :0].tocsr()
    empty.resize(matrix.shape)
    plain = LogisticRegression(**settings).fit(empty, y)
    alone = CompactLogisticRegression(**settings).fit(empty, y)
    assert not alone.coef_.any() and alone.coef_.shape == plain.coef_.shape
    assert np.abs(alone.predict_proba(matrix) - plain.predict_proba(matrix)).max() < 1e-8
    # A warm start goes on from the full-width coefficients of a fit before: the plain fit.
    warm = CompactLogisticRegression(**settings, warm_start=True).fit(matrix, y).fit(matrix, y)
    assert warm.coef_.shape == full.coef_.shape
    assert np.abs(warm.predict_proba(matrix) - full.predict_proba(matrix)).max() < 1e-3


#: SMALL with the team model's n-gram weighting.
SCALED = SMALL.model_copy(update={"scaling": "log_count_ratio", "fact_bits": 10})


@pytest.mark.parametrize("labels", ["sentiment", "needs_reply"])
def test_log_count_ratio_scaling_weights_each_gram_by_the_class_it_belongs_to(labels: str) -> None:
    """Each regression reads the n-grams a message has, weighted by their log-count ratio and
    brought to unit length; the margins computed without that matrix are the same."""
    import scipy.sparse as sp

    from socialcrm.scaled_fit import ScaledLogisticRegression

    rows = labelled_set(10)
    xs = [triage.sample(t, SentimentScorer().score(t), (3, 7)) for t, _ in rows]
    y = np.array([y if labels == "sentiment" else reply_of(y) for _, y in rows])
    matrix = triage.features(SCALED).fit_transform(xs)
    grams = matrix[:, : SCALED.n_grams]
    assert set(grams.data) == {1.0}  # present or not, however often
    clf = triage._classifier(SCALED).fit(matrix, y)
    assert isinstance(clf, ScaledLogisticRegression)
    regressions = 1 if labels == "needs_reply" else 3
    assert clf.ratio_.shape == (regressions, SCALED.n_grams)
    assert clf.coef_.shape == (regressions, SCALED.n_features)
    # A gram found only in one class's messages weighs for that class; one found only in the
    # others' weighs against it.
    for k, c in enumerate(clf.classes_[1:] if regressions == 1 else clf.classes_):
        mine = np.asarray(grams[y == c].sum(axis=0)).ravel() > 0
        theirs = np.asarray(grams[y != c].sum(axis=0)).ravel() > 0
        assert (mine & ~theirs).any() and (theirs & ~mine).any()
        assert (clf.ratio_[k][mine & ~theirs] > 0).all()
        assert (clf.ratio_[k][theirs & ~mine] < 0).all()
    # The margins are those of the weighted, unit-length matrix.
    for k in range(regressions):
        weighted = grams @ sp.diags(clf.ratio_[k])
        norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
        z = sp.hstack([sp.diags(1 / norms) @ weighted, matrix[:, SCALED.n_grams :]]).tocsr()
        explicit = z @ clf.coef_[k] + clf.intercept_[k]
        assert np.abs(explicit - clf.decision_function(matrix)[:, k]).max() < 1e-9
    proba = clf.predict_proba(matrix)
    assert np.allclose(proba.sum(axis=1), 1.0) and (proba > 0).all()
    assert (clf.predict(matrix) == y).mean() > 0.9  # it learned its own training set
    # A text with nothing to read has no n-gram: its margins are the other columns' alone.
    blank = triage.features(SCALED).fit_transform([triage.sample("", None)])
    assert np.isfinite(clf.predict_proba(blank)).all()


def test_a_scaled_model_is_stored_with_its_ratios_and_checked_on_load() -> None:
    scorer = SentimentScorer()
    rows = labelled_set(10)
    xs = [triage.sample(t, scorer.score(t)) for t, _ in rows]
    model = triage.Model.fit(SCALED, {"sentiment": (xs, [y for _, y in rows])})
    payload = model.dump()
    again = triage.Model.load(payload)
    assert again.settings == SCALED
    assert again.predict(xs) == model.predict(xs)
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    assert arrays["sentiment.ratio"].shape == (3, SCALED.n_grams)
    for change, said in (
        ({"sentiment.ratio": arrays["sentiment.ratio"][:, :10]}, "ratio"),
        ({"sentiment.ratio": np.full((3, SCALED.n_grams), np.inf, np.float32)}, "finite"),
        ({"sentiment.ratio": np.zeros((3, SCALED.n_grams), np.int32)}, "ratio"),
    ):
        with pytest.raises(triage.TriageError, match=said):
            triage.Model.load(_npz(**{**arrays, **change}))
    without = {k: v for k, v in arrays.items() if k != "sentiment.ratio"}
    with pytest.raises(triage.TriageError, match="unexpected arrays"):
        triage.Model.load(_npz(**without))


def test_a_head_without_two_kinds_of_label_is_not_trained() -> None:
    xs = [triage.sample(t, None) for t, _ in labelled_set(5)]
    with pytest.raises(triage.TriageError, match="no head"):
        triage.Model.fit(SMALL, {"needs_reply": (xs, ["yes"] * len(xs))})
    model = triage.Model.fit(
        SMALL,
        {
            "sentiment": (xs, [y for _, y in labelled_set(5)]),
            "needs_reply": (xs, ["yes"] * len(xs)),
        },
    )
    (v,) = model.predict(xs[:1])
    assert v.sentiment is not None and v.needs_reply is None and v.reply_confidence is None
    # No message labelled negative: the model could not say which messages need us (it read
    # every batch in vain, failing to find the class), so that head is not trained.
    rows = [(t, y) for t, y in labelled_set(10) if y != "negative"]
    happy = [triage.sample(t, None) for t, _ in rows]
    assert not triage.trainable([y for _, y in rows], "sentiment")
    assert triage.trainable([y for _, y in rows])  # two kinds, each seen often enough
    with pytest.raises(triage.TriageError, match="no head"):
        triage.Model.fit(SMALL, {"sentiment": (happy, [y for _, y in rows])})
    with pytest.raises(triage.TriageError, match="one of them 'negative'"):
        triage.cross_validate("sentiment", happy, [y for _, y in rows], SMALL)


def test_the_stored_model_round_trips(trained: triage.Trained) -> None:
    payload = trained.model.dump()
    assert len(payload) < 5_000_000
    again = triage.Model.load(payload, hashlib.sha256(payload).hexdigest(), 7)
    texts = [t for t, _ in labelled_set(10, seed=9)]
    xs = [triage.sample(t, None) for t in texts]
    before = trained.model.predict(xs)
    after = again.predict(xs)
    assert [(v.sentiment, v.needs_reply) for v in before] == [
        (v.sentiment, v.needs_reply) for v in after
    ]
    for a, b in zip(before, after, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
    assert {v.version for v in after} == {7}
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        assert all(archive[k].dtype != object for k in archive.files)


def test_a_class_only_model_reads_negative_against_positive() -> None:
    """A team's model that learned only the class weighs negative against positive: a
    message's neutral share does not dilute its chance of needing us. Its validation notes
    the same reading, and a model stored before reads the plain chance of negative still."""
    scorer = SentimentScorer()
    rows = labelled_set(20)
    xs = [triage.sample(t, scorer.score(t)) for t, _ in rows]
    data = {"sentiment": (xs, [y for _, y in rows])}
    assert triage.LEARNED.sentiment_risk == "negative_vs_positive"
    against = SMALL.model_copy(update={"sentiment_risk": "negative_vs_positive"})
    trained = triage.train(data, against, folds=2)
    model = triage.Model.load(trained.model.dump())
    assert model.settings.sentiment_risk == "negative_vs_positive"
    unseen = [triage.sample(t, scorer.score(t)) for t, _ in labelled_set(8, seed=9)]
    clf = model.heads["sentiment"]
    proba = clf.predict_proba(triage.features(against).fit_transform(unseen))
    neg, pos = (list(clf.classes_).index(c) for c in ("negative", "positive"))
    expected = proba[:, neg] / (proba[:, neg] + proba[:, pos])
    got = [v.risk for v in model.predict(unseen)]
    assert got == pytest.approx(expected.tolist(), abs=1e-4)
    assert not np.allclose(expected, proba[:, neg], atol=1e-3)  # a reading of its own
    # The threshold's curve was noted on the same reading, held out as validation holds out.
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = np.array(data["sentiment"][1])
    held_out = cross_val_predict(
        triage.estimator(against),
        xs,
        labels,
        cv=StratifiedKFold(n_splits=2, shuffle=True, random_state=0),
        method="predict_proba",
    )
    classes = sorted(set(labels.tolist()))
    for reading in (against, SMALL):
        noted = triage.train(data, reading, folds=2).scores["sentiment"]["risk_at_recall"]
        at_risk = triage.risks("sentiment", classes, held_out, reading)[labels == "negative"]
        assert noted == triage.risk_at_recall(at_risk)
    assert trained.scores["sentiment"]["risk_at_recall"] != triage.risk_at_recall(
        held_out[labels == "negative", classes.index("negative")]
    )
    # Stored before, with no word on it in its header: it reads the chance of negative, as it
    # was validated on.
    plain = triage.train(data, SMALL, folds=2)
    with np.load(io.BytesIO(plain.model.dump()), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(arrays["header"].tobytes())
    del header["settings"]["sentiment_risk"]
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    older = triage.Model.load(buf.getvalue())
    assert older.settings.sentiment_risk == "negative"
    clf = older.heads["sentiment"]
    proba = clf.predict_proba(triage.features(SMALL).fit_transform(unseen))
    assert [v.risk for v in older.predict(unseen)] == pytest.approx(
        proba[:, list(clf.classes_).index("negative")].tolist(), abs=1e-4
    )


def test_a_model_stored_with_older_feature_settings_reads_with_its_own() -> None:
    # New models read character 3-5-grams; one stored when 2-5-grams were the default keeps
    # its settings in its header, so it loads and reads exactly as before.
    scorer = SentimentScorer()
    rows = labelled_set(10)
    xs = [triage.sample(t, scorer.score(t)) for t, _ in rows]
    data = {"sentiment": (xs, [y for _, y in rows])}
    older = triage.Settings(word_bits=12, char_bits=12, char_min_n=2)
    old = triage.train(data, older, folds=2)
    new = triage.train(data, SMALL, folds=2)
    assert (SMALL.char_min_n, SMALL.char_max_n) == (3, 5)
    assert "character 3-5-grams" in new.card["features"]
    assert "character 2-5-grams" in old.card["features"]
    again = triage.Model.load(old.model.dump())
    assert again.settings == older
    unseen = [triage.sample(t, None) for t, _ in labelled_set(5, seed=9)]
    before, after = old.model.predict(unseen), again.predict(unseen)
    assert [v.sentiment for v in after] == [v.sentiment for v in before]
    for a, b in zip(before, after, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
    # The two feature layouts are not the same model.
    assert not np.array_equal(
        again.heads["sentiment"].coef_, triage.Model.load(new.model.dump()).heads["sentiment"].coef_
    )


DAMAGE = """
rules:
  - name: damaged
    when: {keywords: [broken, smashed, faulty, cracked, dented, chipped]}
    then: [open_ticket]
"""


def _damage_set() -> tuple[list[tuple[str, str]], list[str]]:
    """Texts alike but for one word: a word of the rules' damage list needs a reply."""
    rows = []
    for opener, closer in itertools.product(_OPENERS, _CLOSERS):
        for word in ("broken", "smashed", "faulty"):
            rows.append((f"{opener}the lid came {word}{closer}", "yes"))
        for word in ("blue", "early", "wrapped"):
            rows.append((f"{opener}the lid came {word}{closer}", "no"))
    return rows, ["the lid came cracked", "@acme the lid came dented", "the lid came chipped!"]


def test_a_model_trained_beside_the_rules_reads_their_text_conditions() -> None:
    # The rules know words of complaint that no label has shown the model: trained beside
    # them, it reads an unseen word of a condition as that condition's other words.
    rules = RuleSet.from_text(DAMAGE)
    scorer = SentimentScorer()
    rows, unseen = _damage_set()
    texts = [(t, None) for t, _ in rows]
    labels = [y for _, y in rows]
    beside = triage.Settings(word_bits=12, char_bits=12, fact_bits=8)
    with_facts = triage.Model.fit(
        beside, {"needs_reply": (triage.read(texts, scorer, rules), labels)}
    )
    without = triage.Model.fit(SMALL, {"needs_reply": (triage.read(texts, scorer, None), labels)})
    read = with_facts.predict(triage.read([(t, None) for t in unseen], scorer, rules))
    alone = without.predict(triage.read([(t, None) for t in unseen], scorer, None))
    assert [v.needs_reply for v in read] == [True] * 3
    for a, b in zip(read, alone, strict=True):
        assert a.risk is not None and b.risk is not None and a.risk > b.risk + 0.2
    # Stored and loaded, it reads the same; without the facts it reads as the model alone.
    again = triage.Model.load(with_facts.dump())
    assert again.settings.fact_bits == 8
    assert [
        v.risk for v in again.predict(triage.read([(t, None) for t in unseen], scorer, rules))
    ] == [v.risk for v in read]
    blind = again.predict(triage.read([(t, None) for t in unseen], scorer, None))
    assert all(v.needs_reply is False for v in blind)
    # The card says what it reads.
    trained = triage.train({"needs_reply": (triage.read(texts, scorer, rules), labels)}, beside)
    assert "the rules' text conditions" in trained.card["features"]


def test_each_condition_of_the_shipped_pack_has_a_column_of_its_own(config: Config) -> None:
    pack = RuleSet.load(config.rule_paths())
    keys = pack.condition_keys
    assert len(keys) > 50
    mask = (1 << triage.LEARNED.fact_bits) - 1
    assert len({k & mask for k in keys}) == len(keys)


async def test_the_pipeline_reading_texts_itself_gives_the_model_the_facts(
    config: Config, store: Store
) -> None:
    # Without a scoring worker, the pipeline reads texts in a thread of its own: the model
    # gets the rules' text facts there too.
    rules = RuleSet.from_text(DAMAGE)
    scorer = SentimentScorer()
    rows, unseen = _damage_set()
    xs = triage.read([(t, None) for t, _ in rows], scorer, rules)
    trained = triage.train(
        {"needs_reply": (xs, [y for _, y in rows])},
        triage.Settings(word_bits=12, char_bits=12, fact_bits=8),
        folds=2,
    )
    pipeline = Pipeline(config, store, rules=rules, scorer=scorer)
    await _store_trained(store, trained)
    await pipeline.refresh_triage(force=True)
    await pipeline.ingest(Batch(messages=[msg(str(i), t) for i, t in enumerate(unseen)]), "t")
    async with store.reader() as s:
        got = [m.needs_reply for m in (await s.execute(sa.select(Message))).scalars()]
    assert got == [True, True, True]


def test_a_model_stored_before_rule_facts_loads_and_reads_none() -> None:
    # A payload written before models could read the rules has no fact_bits in its header.
    xs = [triage.sample(t, None) for t, _ in labelled_set(5)]
    model = triage.Model.fit(SMALL, {"sentiment": (xs, [y for _, y in labelled_set(5)])})
    with np.load(io.BytesIO(model.dump()), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(arrays["header"].tobytes())
    del header["settings"]["fact_bits"]
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    old = triage.Model.load(_npz(**arrays))
    assert old.settings == SMALL and old.settings.fact_bits == 0
    assert old.settings.n_features == (1 << 12) * 2 + 4
    assert [v.sentiment for v in old.predict(xs)] == [v.sentiment for v in model.predict(xs)]


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (Path(_Boom.target), "pwned"))

    target = ""


def test_a_tampered_or_unknown_payload_is_refused(trained: triage.Trained, tmp_path: Path) -> None:
    payload = trained.model.dump()
    digest = hashlib.sha256(payload).hexdigest()
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(triage.TriageError, match="digest"):
        triage.Model.load(bytes(flipped), digest)
    # A pickle never runs, even with no digest to check.
    _Boom.target = str(tmp_path / "ran")
    with pytest.raises(triage.TriageError):
        triage.Model.load(pickle.dumps(_Boom()))
    with pytest.raises(triage.TriageError):
        triage.Model.load(_npz(header=np.array([_Boom()], dtype=object)))
    assert not (tmp_path / "ran").exists()
    # The layout is checked: the format, the arrays, their indices and classes.
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(arrays["header"].tobytes())

    def with_header(**change: Any) -> bytes:
        h = {**header, **change}
        return _npz(**{**arrays, "header": np.frombuffer(json.dumps(h).encode(), np.uint8)})

    with pytest.raises(triage.TriageError, match="format"):
        triage.Model.load(with_header(format="socialcrm-triage/99"))
    with pytest.raises(triage.TriageError):
        triage.Model.load(with_header(heads={"sentiment": ["negative", "evil"]}))
    with pytest.raises(triage.TriageError):
        triage.Model.load(_npz(**arrays, extra=np.zeros(3)))
    bad_cols = dict(arrays)
    bad_cols["sentiment.cols"] = np.array([10**9], dtype=np.int32)
    bad_cols["sentiment.rows"] = np.array([0], dtype=np.int32)
    bad_cols["sentiment.values"] = np.array([1.0], dtype=np.float32)
    with pytest.raises(triage.TriageError, match="out of range"):
        triage.Model.load(_npz(**bad_cols))
    with pytest.raises(triage.TriageError):
        triage.Model.load(b"not a model at all")


# -- labels, commands and their signals ------------------------------------------------------


def msg(ext: str, text: str, handle: str = "jane") -> InboundMessage:
    return InboundMessage(
        channel="x",
        external_id=ext,
        text=text,
        author=Author(user_id=f"u-{handle}", handle=handle),
        created_at=datetime(2026, 12, 1, 10, tzinfo=UTC),
    )


async def labels(store: Store) -> list[tuple[int | None, str, str, str, str]]:
    async with store.reader() as s:
        rows = await s.execute(
            sa.select(
                TriageLabel.message_id,
                TriageLabel.kind,
                TriageLabel.value,
                TriageLabel.reason,
                TriageLabel.actor,
            ).order_by(TriageLabel.id)  # type: ignore[arg-type]
        )
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def test_relabel_and_needs_reply_commands(
    config: Config, store: Store, pipeline: Pipeline
) -> None:
    await pipeline.ingest(Batch(messages=[msg("1", "what time do you open tomorrow?")]), "t")
    async with store.reader() as s:
        mid = (await s.execute(sa.select(Message.id))).scalar_one()
    cmds = Commands(config, store)
    agent = Actor("ana", "agent", "slack")
    out = await cmds.run(agent, f"relabel {mid} Negative")
    assert f"#{mid}" in out and "negative" in out
    out = await cmds.run(agent, f"needs-reply #{mid} no")
    assert "needed no reply" in out
    with pytest.raises(CommandError, match="one of negative, neutral, positive"):
        await cmds.run(agent, f"relabel {mid} angry")
    with pytest.raises(CommandError, match="yes or no"):
        await cmds.run(agent, f"needs-reply {mid} maybe")
    with pytest.raises(CommandError, match="no message #999"):
        await cmds.run(agent, "relabel 999 negative")
    with pytest.raises(CommandError, match="needs the agent role"):
        await cmds.run(Actor("vic", "viewer", "slack"), f"relabel {mid} positive")
    assert await labels(store) == [
        (mid, "sentiment", "negative", "relabel", "ana"),
        (mid, "needs_reply", "no", "relabel", "ana"),
    ]
    async with store.reader() as s:
        actions = list(
            (await s.execute(sa.select(AuditEvent.action).order_by(AuditEvent.id))).scalars()  # type: ignore[arg-type]
        )
    assert actions.count("triage.relabel") == 1 and actions.count("triage.needs_reply") == 1
    assert "command.refused" in actions
    # The same word again, by anyone, adds no label (it would count as new for retraining).
    again = await cmds.run(Actor("bo", "agent", "cli"), f"relabel {mid} negative")
    assert again == f"Message #{mid} is labelled negative already; nothing changed."
    assert "labelled so already" in await cmds.run(agent, f"needs-reply {mid} no")
    assert len(await labels(store)) == 2
    # A later word on the same message replaces the earlier one in the training set.
    await cmds.run(agent, f"relabel {mid} neutral")
    async with store.reader() as s:
        ts = await triage.training_set(s)
    assert ts.labels == {"sentiment": ["neutral"], "needs_reply": ["no"]}
    # ... and the first word, said again after it, is new again.
    await cmds.run(agent, f"relabel {mid} negative")
    assert [v for _m, k, v, _r, _a in await labels(store) if k == "sentiment"] == [
        "negative",
        "neutral",
        "negative",
    ]


async def test_a_message_said_to_need_a_reply_gets_a_ticket_when_it_has_none(
    config: Config, store: Store, pipeline: Pipeline
) -> None:
    # Read as nothing to answer ("the app is fine" to the rules), but the team knows better.
    await pipeline.ingest(Batch(messages=[msg("1", "so the new app update is out")]), "t")
    async with store.reader() as s:
        first = (await s.execute(sa.select(Message))).scalar_one()
    assert first.ticket_id is None
    cmds = Commands(config, store)
    agent = Actor("ana", "agent", "slack")
    out = await cmds.run(agent, f"needs-reply {first.id} yes")
    assert out.endswith("It had no ticket: ticket #1 is open for it.")
    async with store.reader() as s:
        ticket = await s.get(Ticket, 1)
        stored = await s.get(Message, first.id)
        opened = (
            await s.execute(sa.select(AuditEvent).where(AuditEvent.action == "ticket.open"))
        ).scalar_one()
    assert ticket is not None and stored is not None and stored.ticket_id == 1
    assert (ticket.status, ticket.customer_id, ticket.channel) == ("open", first.customer_id, "x")
    assert "opened by ana (slack)" in ticket.priority_reason and opened.actor == "ana"
    assert ticket.first_response_due_at is not None  # the SLA counts from now
    # Said again, or "no": no second ticket; "no" leaves closing the open one to a person.
    again = await cmds.run(agent, f"needs-reply {first.id} yes")
    assert "ticket #" not in again
    no = await cmds.run(agent, f"needs-reply {first.id} no")
    assert no.endswith("Its ticket #1 is open: `close 1` closes it.")
    # The customer's answer in that conversation threads into it.
    follow = msg("2", "hello? anyone?")
    follow = follow.model_copy(update={"in_reply_to": "1"})
    await pipeline.ingest(Batch(messages=[follow]), "t")
    async with store.reader() as s:
        n = (await s.execute(sa.select(sa.func.count()).select_from(Ticket))).scalar_one()
        second = (
            await s.execute(sa.select(Message).where(Message.external_id == "2"))
        ).scalar_one()
    assert n == 1 and second.ticket_id == 1


async def test_a_message_needing_a_reply_after_its_ticket_was_done_with_goes_to_a_person(
    config: Config, store: Store, pipeline: Pipeline
) -> None:
    texts = {"1": "my order never arrived", "2": "the app is broken again"}
    await pipeline.ingest(Batch(messages=[msg(k, t, f"h{k}") for k, t in texts.items()]), "t")
    async with store.reader() as s:
        stored = {m.external_id: m for m in (await s.execute(sa.select(Message))).scalars()}
    resolved, closed = stored["1"], stored["2"]
    assert resolved.ticket_id is not None and closed.ticket_id is not None
    cmds = Commands(config, store)
    agent = Actor("ana", "agent", "slack")
    await cmds.run(agent, f"resolve {resolved.ticket_id}")
    await cmds.run(agent, f"close {closed.ticket_id}")
    # A resolved ticket opens again.
    out = await cmds.run(agent, f"needs-reply {resolved.id} yes")
    assert f"Its ticket #{resolved.ticket_id} was resolved: it is open again." in out, out
    # A closed one stays closed (closing is final): the message gets a ticket of its own.
    out = await cmds.run(agent, f"needs-reply {closed.id} yes")
    assert f"Its ticket #{closed.ticket_id} is closed. Ticket #" in out, out
    async with store.reader() as s:
        again = await s.get(Ticket, resolved.ticket_id)
        old = await s.get(Ticket, closed.ticket_id)
        moved = await s.get(Message, closed.id)
        assert moved is not None and moved.ticket_id not in (None, closed.ticket_id)
        new = await s.get(Ticket, moved.ticket_id)
    assert again is not None and again.status == "open"
    assert old is not None and old.status == "closed"
    assert new is not None and new.status == "open" and new.customer_id == closed.customer_id
    assert f"Ticket #{new.id} is open for it." in out
    # Said again: it is in front of a person already.
    assert "ticket #" not in (await cmds.run(agent, f"needs-reply {closed.id} yes")).lower()


async def test_explain_from_chat_reads_a_stored_message_with_the_rules_and_model_in_use(
    config: Config,
    store: Store,
    pipeline: Pipeline,
    trained: triage.Trained,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A daemon runs in its own folder: the shipped pack is named as the README names it, not
    # by where the package is installed.
    monkeypatch.chdir(tmp_path)
    text = "three weeks and my refund never arrived, terrible service"
    await pipeline.ingest(Batch(messages=[msg("1", text)]), "t")
    async with store.reader() as s:
        mid = (await s.execute(sa.select(Message.id))).scalar_one()
    cmds = Commands(config, store)
    viewer = Actor("vic", "viewer", "slack")
    out = await cmds.run(viewer, f"explain #{mid}")
    lines = out.splitlines()
    assert "Model:     no team model trained yet: the rules decide alone" in lines
    # Each rule that matched, with the words its conditions found, by file and line.
    assert [ln for ln in lines if ln.startswith("  MATCH ") and "(rules/default.yaml:" in ln]
    assert any("'terrible'" in ln for ln in lines)
    decision = next(ln for ln in lines if ln.startswith("Decision:  "))
    stored = next(ln for ln in lines if ln.startswith("Stored:    "))
    assert "ticket" in decision and f"message #{mid}: rules " in stored
    hint = next(ln for ln in lines if "more did not match" in ln)
    assert f"`explain {mid} all` lists them" in hint
    every = (await cmds.run(viewer, f"explain {mid} all")).splitlines()
    assert len(every) > len(lines) and not [ln for ln in every if "more did not match" in ln]
    assert "explain MESSAGE_ID [ALL]" in await cmds.run(viewer, "help explain")
    with pytest.raises(CommandError, match="usage: explain MESSAGE"):
        await cmds.run(viewer, f"explain {mid} everything")
    with pytest.raises(CommandError, match="no inbound message #999"):
        await cmds.run(viewer, "explain 999")
    with pytest.raises(CommandError, match="needs the viewer role"):
        await cmds.run(Actor("who", "", "slack"), f"explain {mid}")

    # With a team model stored: read with it, and kept for the next question.
    version = await _store_trained(store, trained)
    out = await cmds.run(viewer, f"explain {mid}")
    assert f"Model:     team model #{version}, reads " in out and "chance it needs us" in out
    kept = cmds._team
    assert kept is not None and kept.model.version == version
    await cmds.run(viewer, f"explain {mid}")
    assert cmds._team is kept, "the same model is not read again for every question"

    # Rules reloaded (SIGHUP) are the ones it reads with from then on.
    pack = tmp_path / "other.yaml"
    pack.write_text(
        "rules:\n  - name: refund-watch\n    when: {keywords: [refund]}\n"
        "    then: [{intent: refund}, open_ticket]\n",
        encoding="utf-8",
    )
    other = RuleSet.load([pack])
    cmds.use_rules(other, cmds.responder)
    out = await cmds.run(viewer, f"explain {mid}")
    assert "MATCH refund-watch" in out and "'refund'" in out
    assert "default.yaml" not in out.split("Decision:")[0]


async def _drafts(store: Store) -> list[Reply]:
    async with store.reader() as s:
        return list((await s.execute(sa.select(Reply).order_by(Reply.id))).scalars())  # type: ignore[arg-type]


async def test_approve_edit_reject_and_close_teach_the_model(
    config: Config, store: Store, pipeline: Pipeline
) -> None:
    texts = [
        "@acme my order never arrived, where is it?",
        "@acme can you tell me where my refund is?",
        "@acme why was I charged twice for my order?",
        "@acme is my parcel lost? tracking says nothing",
    ]
    await pipeline.ingest(
        Batch(messages=[msg(str(i), t, f"c{i}") for i, t in enumerate(texts)]), "t"
    )
    drafts = await _drafts(store)
    assert len(drafts) == 4, "the shipped rules draft an answer to each question"
    cmds = Commands(config, store)
    approver = Actor("amy", "approver", "mattermost")
    await cmds.run(approver, f"approve {drafts[0].id}")
    await cmds.run(approver, f"edit {drafts[1].id} We are looking into it now.")
    await cmds.run(approver, f"reject {drafts[2].id} No reply needed - they sorted it out.")
    await cmds.run(approver, f"reject {drafts[3].id} wrong template")
    # What an approval taught, said again by a person, adds no label (the list below).
    again = await cmds.run(approver, f"needs-reply {drafts[0].message_id} yes")
    assert again.endswith("needed a reply; it was labelled so already.")
    got = await labels(store)
    assert got == [
        (drafts[0].message_id, "needs_reply", "yes", "approve", "amy"),
        (drafts[1].message_id, "needs_reply", "yes", "edit", "amy"),
        (drafts[2].message_id, "needs_reply", "no", "reject-no-reply", "amy"),
    ]
    # Closing a ticket nobody answered: its messages needed no reply; one answered: nothing.
    async with store.reader() as s:
        t3 = (await s.get(Reply, drafts[3].id)).ticket_id  # type: ignore[union-attr]
        t0 = (await s.get(Reply, drafts[0].id)).ticket_id  # type: ignore[union-attr]
    assert t3 is not None and t0 is not None
    await cmds.run(approver, f"close {t3}")
    await cmds.run(approver, f"close {t0}")
    await cmds.run(approver, f"close {t3}")  # closing again adds nothing
    got = await labels(store)
    assert got[3:] == [(drafts[3].message_id, "needs_reply", "no", "closed-without-reply", "amy")]


@pytest.mark.parametrize(
    ("reason", "no_reply"),
    [
        ("no reply needed", True),
        ("No reply needed!", True),
        ("not needed, just a fan", True),
        ("no need to reply", True),
        ("Doesn't need a reply", True),
        ("wrong tone", False),
        ("reply needed but not this one", False),
        ("", False),
    ],
)
def test_which_reject_reasons_say_no_reply_was_needed(reason: str, no_reply: bool) -> None:
    assert triage.says_no_reply(reason) is no_reply


@pytest.mark.parametrize(
    ("given", "sentiment", "reply"),
    [
        ('"sentiment_label": "Negative"', "negative", None),
        ('"sentiment_label": " neutral "', "neutral", None),
        ('"needs_reply": true', None, "yes"),
        ('"needs_reply": "No"', None, "no"),
        ('"needs_reply": "y"', None, "yes"),
        ('"needs_reply": 0', None, "no"),
        ('"sentiment_label": "POSITIVE", "needs_reply": false', "positive", "no"),
    ],
)
def test_labels_are_read_as_people_write_them(
    given: str, sentiment: str | None, reply: str | None
) -> None:
    line = f'{{"channel": "x", "external_id": "1", "text": "hi", "author": {{}}, {given}}}'
    got = triage.parse_labelled(3, line)
    assert isinstance(got, triage.Labelled), got
    assert (got.sentiment, got.needs_reply) == (sentiment, reply)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ('"sentiment_label": "angry"', "line 3: sentiment: one of negative, neutral, positive"),
        ('"needs_reply": "maybe"', "line 3: needs a reply: say yes or no, got 'maybe'"),
        ('"needs_reply": 2', "line 3: needs a reply: say yes or no, got '2'"),
    ],
)
def test_a_label_nobody_would_write_is_refused_with_its_line(given: str, said: str) -> None:
    line = f'{{"channel": "x", "external_id": "1", "text": "hi", "author": {{}}, {given}}}'
    got = triage.parse_labelled(3, line)
    assert isinstance(got, str) and got.startswith(said), got


@pytest.mark.parametrize("text", ["", "   ", "\\n\\t "])
def test_a_label_on_no_text_is_refused_with_its_line(text: str) -> None:
    line = f'{{"channel": "x", "external_id": "1", "text": "{text}", "author": {{}}, '
    got = triage.parse_labelled(3, line + '"sentiment_label": "negative"}')
    assert got == "line 3: text is empty"


# -- the pipeline -----------------------------------------------------------------------------


async def _store_trained(store: Store, trained: triage.Trained) -> int:
    async with store.session() as s:
        row = await triage.store_model(s, trained, "tester")
    assert row.id is not None
    return row.id


async def test_pipeline_stores_the_class_and_confidence(
    config: Config, store: Store, scorer: SentimentScorer, trained: triage.Trained
) -> None:
    pipeline = Pipeline(config, store, rules=RuleSet.load(config.rule_paths()), scorer=scorer)
    await pipeline.ingest(Batch(messages=[msg("0", "before any model")]), "t")
    version = await _store_trained(store, trained)
    await pipeline.refresh_triage(force=True)
    await pipeline.ingest(
        Batch(messages=[msg("1", "my parcel never arrived and support hung up on me")]), "t"
    )
    async with store.reader() as s:
        rows = {m.external_id: m for m in (await s.execute(sa.select(Message))).scalars()}
    # Before the team's model, the starter model gives the class alone.
    assert rows["0"].triage_version == starter.VERSION and rows["0"].needs_reply is None
    m = rows["1"]
    assert (m.triage_class, m.needs_reply, m.triage_version) == ("negative", True, version)
    assert m.triage_confidence is not None and 0.34 < m.triage_confidence <= 1
    assert m.needs_reply_confidence is not None and 0.5 <= m.needs_reply_confidence <= 1
    # Reports count the model's class where it gave one; a rebuild counts the same way.
    async with store.session() as s:
        m.sentiment = 0.9  # words that VADER would call positive
        await s.merge(m)
        await rollups.rebuild(s)
        got = (
            await s.execute(sa.text("SELECT sentiment, n FROM message_rollup ORDER BY sentiment"))
        ).all()
    assert (-1, 1) in [tuple(r) for r in got]
    assert rollups.sentiment_class(0.9, False, "negative") == -1
    assert rollups.sentiment_class(0.9, False, None) == 1


async def test_a_mention_with_nothing_to_read_is_left_to_the_rules(
    config: Config, store: Store, pipeline: Pipeline, trained: triage.Trained
) -> None:
    # Nothing but handles and links: the model would read only its bias, which opened a
    # ticket for "@acme" ("needs a reply (0.73)"). An emoji is something to read.
    await _store_trained(store, trained)
    await pipeline.refresh_triage(force=True)
    texts = {"empty": "", "handle": "@acme", "link": "@acme https://example.com/x"}
    texts["emoji"] = "@acme 😡"
    await pipeline.ingest(Batch(messages=[msg(k, t, k) for k, t in texts.items()]), "t")
    async with store.reader() as s:
        rows = {m.external_id: m for m in (await s.execute(sa.select(Message))).scalars()}
    for key in ("empty", "handle", "link"):
        assert rows[key].triage_version is None and rows[key].ticket_id is None, key
    assert rows["emoji"].triage_version is not None and rows["emoji"].ticket_id is not None


async def test_the_scoring_worker_reads_with_the_newest_model(
    config: Config, store: Store, trained: triage.Trained
) -> None:
    rules = RuleSet.load(config.rule_paths())
    pool = ScoringPool(config.brand.lexicon, rules)
    try:
        pipeline = Pipeline(config, store, rules=rules, scoring=pool)
        first = await _store_trained(store, trained)
        await pipeline.ingest(
            Batch(messages=[msg("1", "really happy with my new headphones")]), "t"
        )
        assert pool.model_version == first
        second = await _store_trained(store, trained)
        await pipeline.refresh_triage(force=True)
        assert pool.model_version == second
        await pipeline.ingest(Batch(messages=[msg("2", "stuck on hold for an hour, awful")]), "t")
    finally:
        pool.close()
    async with store.reader() as s:
        rows = {m.external_id: m for m in (await s.execute(sa.select(Message))).scalars()}
    assert (rows["1"].triage_class, rows["1"].triage_version) == ("positive", first)
    assert (rows["2"].triage_class, rows["2"].triage_version) == ("negative", second)


async def test_a_model_stored_before_an_ingest_reads_every_chunk_of_it(
    config: Config, store: Store, trained: triage.Trained
) -> None:
    # `triage learn`, then `socialcrm ingest`: the batch is cut into chunks, the next one
    # prepared while the first is taken up; it waits for the new model, and is not read by
    # the starter model that the worker started with.
    rules = RuleSet.load(config.rule_paths())
    pool = ScoringPool.for_config(config, rules)
    try:
        version = await _store_trained(store, trained)
        pipeline = Pipeline(config, store, rules=rules, scoring=pool)
        texts = ["my parcel never arrived and nobody answers", "love the new app, thank you"]
        msgs = [msg(str(i), f"{texts[i % 2]} #{i}", f"h{i}") for i in range(1300)]
        result = await pipeline.ingest(Batch(messages=msgs), "t")
        assert result.stored == 1300
    finally:
        pool.close()
    async with store.reader() as s:
        got = (
            await s.execute(
                sa.select(Message.triage_version, sa.func.count()).group_by(Message.triage_version)
            )
        ).all()
    assert [tuple(r) for r in got] == [(version, 1300)]


async def test_the_scoring_worker_gives_the_model_the_rules_text_facts(config: Config) -> None:
    # The worker reads the rules' text conditions anyway; a model trained beside the rules
    # gets them there, as training gave them, with no second reading of the text.
    rules = RuleSet.from_text(DAMAGE)
    scorer = SentimentScorer()
    rows, unseen = _damage_set()
    xs = triage.read([(t, None) for t, _ in rows], scorer, rules)
    model = triage.Model.fit(
        triage.Settings(word_bits=12, char_bits=12, fact_bits=8),
        {"needs_reply": (xs, [y for _, y in rows])},
    )
    path = config.base_dir / "damage.yaml"
    path.write_text(DAMAGE)
    on_file = RuleSet.load([path])
    pool = ScoringPool(config.brand.lexicon, on_file)
    payload = model.dump()
    try:
        pool.use_model(payload, hashlib.sha256(payload).hexdigest(), 3)
        found = await pool.analyse([(t, "en") for t in unseen])
        # The file edited under a running daemon (a rule renamed): workers started now read
        # other rules than the parent's. Their facts no longer go to the parent's rules, but
        # the model still reads them: it knows each condition by what it looks for.
        path.write_text(DAMAGE.replace("name: damaged", "name: harmed"))
        pool.use_model(payload, hashlib.sha256(payload).hexdigest(), 4)
        edited = await pool.analyse([(t, "en") for t in unseen])
    finally:
        pool.close()
    expected = model.predict(triage.read([(t, "en") for t in unseen], SentimentScorer(), rules))
    assert [a[2].risk if a[2] else None for a in found] == [v.risk for v in expected]
    assert all(a[2] is not None and a[2].needs_reply for a in found)
    assert all(a[1] is not None for a in found)
    assert [a[1] for a in edited] == [None] * 3
    assert [a[2].risk if a[2] else None for a in edited] == [v.risk for v in expected]


IGNORE_ALL = """
rules:
  - name: drop_everything
    when: {not: {keywords: [zzzz]}}
    then: [ignore]
"""


async def test_a_low_confidence_message_goes_to_a_person(
    config: Config, store: Store, scorer: SentimentScorer, trained: triage.Trained
) -> None:
    await _store_trained(store, trained)
    rules = RuleSet.from_text(IGNORE_ALL)
    sure = Pipeline(config, store, rules=rules, scorer=scorer)
    r = await sure.ingest(Batch(messages=[msg("1", "love the new update, works great")]), "t")
    assert (r.ignored, r.tickets_opened) == (1, 0), "confident: the rules decide"
    unsure_cfg = config.model_copy(
        update={"triage": config.triage.model_copy(update={"min_confidence": 0.999})}
    )
    unsure = Pipeline(unsure_cfg, store, rules=rules, scorer=scorer)
    r = await unsure.ingest(Batch(messages=[msg("2", "hmm ok the thing", "bob")]), "t")
    assert (r.ignored, r.tickets_opened, r.drafts) == (0, 1, 0)
    async with store.reader() as s:
        m = (await s.execute(sa.select(Message).where(Message.external_id == "2"))).scalar_one()
        t = await s.get(Ticket, m.ticket_id)
    assert triage.NEEDS_TRIAGE in m.tags and not m.ignored and t is not None


def _decided(**kw: Any) -> Decision:
    return Decision(**kw)


PRAISE = {"intent": "praise", "draft_template": "thanks"}
COMPLAINT = {"intent": "complaint", "open_ticket": True, "draft_template": "apology"}


@pytest.mark.parametrize(
    ("rules", "verdict", "ticket", "draft", "person"),
    [
        # The reply head, sure: the team's word wins over the words, both ways.
        ({}, triage.Verdict(None, None, True, 0.9), True, None, False),
        (PRAISE, triage.Verdict("negative", 0.8, True, 0.9), True, None, False),
        (COMPLAINT, triage.Verdict(None, None, False, 0.9), False, None, False),
        # ... but never over an escalation, and never over a rule's ignore.
        (
            {**COMPLAINT, "escalations": ["legal"]},
            triage.Verdict(None, None, False, 0.9),
            True,
            "apology",
            False,
        ),
        ({"ignore": True}, triage.Verdict(None, None, True, 0.9), False, None, False),
        # Unsure whether to answer: a person looks, whatever the rules said.
        ({}, triage.Verdict(None, None, False, 0.55), True, None, True),
        ({"ignore": True}, triage.Verdict(None, None, True, 0.55), True, None, True),
        # Only the class: a sure negative gets a ticket and is never thanked.
        (PRAISE, triage.Verdict("negative", 0.7, None, None), True, None, False),
        # A sure positive opens none and keeps its thanks; one that asks us something keeps
        # its drafted answer, which a person reads in the approval queue, as small talk's.
        (
            {**PRAISE, "open_ticket": True},
            triage.Verdict("positive", 0.8, None, None),
            False,
            "thanks",
            False,
        ),
        (COMPLAINT, triage.Verdict("positive", 0.8, None, None), False, None, False),
        (
            {"intent": "question", "open_ticket": True, "draft_template": "answer_question"},
            triage.Verdict("positive", 0.8, None, None),
            False,
            "answer_question",
            False,
        ),
        # ... but a question with nothing drafted, or read as positive without being sure,
        # keeps its ticket: a question to us is answered.
        (
            {"intent": "question", "open_ticket": True},
            triage.Verdict("positive", 0.8, None, None),
            True,
            None,
            False,
        ),
        (
            {"intent": "question", "open_ticket": True, "draft_template": "answer_question"},
            triage.Verdict("positive", 0.5, None, None, risk=0.1),
            True,
            "answer_question",
            False,
        ),
        # Unsure: a possible complaint goes to a person; a happier reading stays with the rules.
        ({}, triage.Verdict("negative", 0.45, None, None), True, None, True),
        ({}, triage.Verdict("positive", 0.45, None, None, risk=0.1), False, None, False),
        # Read as positive with a complaint unlikely: closed, however sure of the class; but
        # thanked only where the model is sure it is happy (sarcasm reads as thanks).
        (
            {**PRAISE, "open_ticket": True},
            triage.Verdict("positive", 0.45, None, None, risk=0.1),
            False,
            None,
            False,
        ),
        (PRAISE, triage.Verdict("positive", 0.7, None, None, risk=0.1), False, "thanks", False),
        (PRAISE, triage.Verdict("neutral", 0.9, None, None, risk=0.05), False, None, False),
        # In between: the rules' ticket stands (or a person's), and no one is thanked.
        (
            {**PRAISE, "open_ticket": True},
            triage.Verdict("positive", 0.5, None, None, risk=0.3),
            True,
            None,
            False,
        ),
        (PRAISE, triage.Verdict(None, None, False, 0.7), True, None, True),
        # Read as neutral, leaning negative against positive (3% to 2%): which way it leans
        # is not sureness: a person looks rather than a ticket "whatever the rules said".
        ({}, triage.Verdict("neutral", 0.95, None, None, risk=0.6), True, None, True),
        ({}, triage.Verdict("neutral", 0.95, None, None, risk=0.9), True, None, True),
        # The reply head, sure no: closed even when the model's class is not sure.
        (COMPLAINT, triage.Verdict("neutral", 0.4, False, 0.8), False, None, False),
        (COMPLAINT, triage.Verdict("neutral", 0.9, None, None), True, "apology", False),
    ],
)
def test_the_teams_model_steers_tickets_where_it_is_sure(
    rules: dict[str, Any],
    verdict: triage.Verdict,
    ticket: bool,
    draft: str | None,
    person: bool,
) -> None:
    d = _decided(**rules)
    triage.steer(d, verdict, 0.6, 0.25)
    assert (d.open_ticket, d.draft_template) == (ticket, draft)
    assert (triage.NEEDS_TRIAGE in d.tags) is person
    assert d.intent != "praise" or verdict.sentiment != "negative", "a complaint is never thanked"


OPEN_ALL = """
rules:
  - name: ticket_everything
    when: {not: {keywords: [zzzz]}}
    then: [open_ticket, {draft: apology}]
"""

NO_RULES = """
rules:
  - name: tag_only
    when: {not: {keywords: [zzzz]}}
    then: [{tag: seen}]
"""


async def test_a_sure_reading_opens_or_closes_the_ticket_through_the_pipeline(
    config: Config, store: Store, scorer: SentimentScorer, trained: triage.Trained
) -> None:
    await _store_trained(store, trained)
    happy, angry = "love the new update, works great", "charged twice and support hung up on me"
    rules_open = Pipeline(config, store, rules=RuleSet.from_text(OPEN_ALL), scorer=scorer)
    r = await rules_open.ingest(Batch(messages=[msg("1", happy)]), "t")
    assert (r.tickets_opened, r.drafts) == (0, 0), "the team's model: no reply needed"
    rules_quiet = Pipeline(config, store, rules=RuleSet.from_text(NO_RULES), scorer=scorer)
    r = await rules_quiet.ingest(Batch(messages=[msg("2", angry, "bob")]), "t")
    assert r.tickets_opened == 1, "the team's model: a reply is needed"
    async with store.reader() as s:
        rows = {m.external_id: m for m in (await s.execute(sa.select(Message))).scalars()}
    assert (rows["1"].needs_reply, rows["1"].ticket_id) == (False, None)
    assert rows["2"].needs_reply is True and rows["2"].ticket_id is not None
    assert triage.NEEDS_TRIAGE not in rows["2"].tags, "a sure reading, not a person's triage"
    async with store.reader() as s:
        opened = await s.get(Ticket, rows["2"].ticket_id)
    assert opened is not None and "the team's model says this needs a reply" in (
        opened.priority_reason
    ), "the ticket says why it was opened"


# -- rules --------------------------------------------------------------------------------------


def ctx(**kw: Any) -> RuleContext:
    base: dict[str, Any] = {
        "text": "hello",
        "channel": "x",
        "source": "t",
        "sentiment": 0.0,
        "lang": "en",
        "customer_tier": None,
        "customer_segment": None,
        "lifetime_value": 0.0,
        "customer_tags": frozenset(),
        "customer_is_new": False,
        "followers": 0,
        "has_open_ticket": False,
        "local_time": datetime(2026, 12, 1, 10, tzinfo=UTC),
    }
    return RuleContext(**{**base, **kw})


TRIAGE_RULES = """
rules:
  - name: learned_complaint
    when: {triage: negative, needs_reply: true}
    then: [open_ticket, {tag: learned}]
  - name: unsure
    when: {triage_confidence: {below: 0.6}}
    then: [{tag: unsure}]
  - name: friendly
    when: {triage: [positive, neutral], needs_reply: false}
    then: [{tag: friendly}]
"""


def test_rules_test_the_models_class_reply_and_confidence() -> None:
    rules = RuleSet.from_text(TRIAGE_RULES)
    d = rules.evaluate(ctx(triage="negative", triage_confidence=0.9, needs_reply=True))
    assert d.open_ticket and d.tags == ["learned"]
    d = rules.evaluate(ctx(triage="negative", triage_confidence=0.4, needs_reply=False))
    assert not d.open_ticket and d.tags == ["unsure"]
    d = rules.evaluate(ctx(triage="neutral", triage_confidence=0.7, needs_reply=False))
    assert d.tags == ["friendly"]
    d = rules.evaluate(ctx())  # no model: none of them match
    assert d.matched == []


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ("{triage: angry}", "triage: one of negative, neutral, positive"),
        ("{needs_reply: perhaps}", "needs_reply"),
        ("{triage_confidence: {below: 0.2, at_least: 0.5}}", "never matches"),
        ("{triage_confidance: {below: 0.5}}", "did you mean 'triage_confidence'"),
    ],
)
def test_bad_triage_conditions_are_reported(when: str, problem: str) -> None:
    with pytest.raises(RuleError, match=problem):
        RuleSet.from_text(f"rules:\n  - name: r\n    when: {when}\n    then: [open_ticket]\n")


# -- the command line -------------------------------------------------------------------------


def _labelled_file(path: Path, rows: list[tuple[str, str]], extra: list[str]) -> Path:
    lines = []
    for i, (text, label) in enumerate(rows):
        record = json.loads(msg(f"L{i}", text, f"h{i}").model_dump_json())
        record["sentiment_label"] = label
        record["needs_reply"] = reply_of(label) == "yes"
        lines.append(json.dumps(record))
    path.write_text("\n".join([*lines, *extra]) + "\n", encoding="utf-8")
    return path


def _cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`socialcrm` in a fresh folder, initialised: run(*args, code=0) gives its output."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOCIALCRM_USER", "tester")
    cli = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = cli.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    run("init")
    return run


@pytest.mark.timeout(400)  # each command loads VADER and the language model anew
def test_learn_train_status_and_eval_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _cli(tmp_path, monkeypatch)
    out = run("triage", "status")
    assert "No triage model yet" in out and "the starter model gives each English message" in out
    bad = [
        '{"channel": "x", "external_id": "b1", "text": "no label", "author": {}}',
        '{"channel": "x", "external_id": "b2", "text": "x", "author": {}, '
        '"sentiment_label": "meh"}',
        "not json",
    ]
    file = _labelled_file(tmp_path / "labels.jsonl", labelled_set(12), bad)
    out = run("triage", "learn", str(file), code=3)  # done, with lines left out
    assert "36 sentiment and 36 needs-reply label(s) imported" in out
    assert "3 line(s) skipped" in out
    assert "line 37: no sentiment_label or needs_reply" in out
    assert "line 38: sentiment: one of negative, neutral, positive, got 'meh'" in out
    assert "not trained yet: 36 labelled message(s); at least 200 are needed" in out
    out = run("triage", "train", code=2)
    assert "36 labelled message(s); at least 200 are needed" in out
    out = run("triage", "train", "--min-labels", "30")
    assert "Triage model #1" in out and "sentiment: trained on 36 labels" in out
    assert "training on 36 labelled message(s): cross-validated in 5 folds" in out
    assert "cross-validated (5-fold)" in out and "Where it fails:" in out
    # `rules explain` reads a message with the model in use, as the pipeline does.
    out = run("rules", "explain", "my order never arrived and nobody answers")
    assert "Model:     team model #1, reads " in out and "chance it needs us" in out
    assert "left out (--no-model)" in run("rules", "explain", "hello", "--no-model")
    # One thing a line: the card's lines are not run together.
    lines = run("triage", "status").splitlines()
    assert lines[0].startswith("Triage model #1") and lines[0].endswith("(in use)")
    assert [line for line in lines if line.startswith("sentiment: trained on 36 labels")]
    assert "Where it fails:" in lines and lines[-1].startswith("Features: ")
    out = run("triage", "eval", str(file), code=3)
    lines = out.splitlines()
    assert "Sentiment class:" in lines and "Needs a reply:" in lines
    assert "VADER alone" in out and "VADER and rules alone" in out
    # The class is compared with the starter model too: what the reports count until now.
    assert "starter model" in out
    negative = [line.split() for line in lines if line.split()[:1] == ["negative"]]
    assert len(negative) == 1 and len(negative[0]) == 1 + 9 + 1  # three readings, support
    assert [line for line in lines if line.split()[:1] == ["negative"]]
    assert [line for line in lines if line.split()[:1] == ["macro"]]
    figures = json.loads(run("triage", "eval", str(file), "--json", code=3).splitlines()[-1])
    # The lines it skipped are counted beside the figures (the exit status says some were).
    assert (figures["messages"], figures["skipped"], figures["merged"]) == (36, 3, 0)
    assert (
        figures["sentiment"]["learned"]["macro_f1"] > figures["sentiment"]["baseline"]["macro_f1"]
    )
    assert set(figures["needs_reply"]["learned"]["per_class"]) == {"no", "yes"}
    assert set(figures["sentiment"]["starter"]["per_class"]) == {"negative", "neutral", "positive"}
    assert "starter" not in figures["needs_reply"]
    # Relabelling works from the command line too (the same command layer as chat).
    run("ingest", str(file), code=3)
    # Imported as positive: the same word again changes nothing; another one is a label.
    assert "labelled positive already; nothing changed" in run("relabel", "1", "positive")
    out = run("relabel", "1", "negative")
    assert "Message #1 is labelled negative; the triage model learns from it." in out
    out = run("needs-reply", "1", "yes")
    assert "Message #1 needed a reply" in out
    assert "relabel MESSAGE" in run("relabel", "--help")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    assert "no labelled messages" in run("triage", "learn", str(empty), code=2)
    # Once there are `min_labels` labels, learning trains a version at once (so that
    # `socialcrm ingest` reads with it, no daemon running); --no-train only imports.
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text() + "triage:\n  min_labels: 30\n")
    again = run("triage", "learn", str(file), "--no-train", code=3)
    assert "not trained: `socialcrm triage train`" in again
    # The same file again adds no label: not the words already here, which the status would
    # count and the daemon would train again for, nor what it said of message #1 before it was
    # relabelled (said to need a reply above): a person's later word stands.
    assert "0 sentiment and 0 needs-reply label(s) imported from 36 message(s)" in again
    assert "70 label(s) already here as given" in again
    assert "2 label(s) imported before and relabelled since, left as relabelled" in again
    status = run("triage", "status")
    # Message #1's relabels replace its imported labels: one message, not two.
    assert "36 message(s) labelled now; 2 since this model" in status
    # A file with a new label trains at once.
    more = tmp_path / "more.jsonl"
    record = json.loads(msg("N1", "the parcel never came, again", "h99").model_dump_json())
    more.write_text(json.dumps({**record, "sentiment_label": "negative"}) + "\n", encoding="utf-8")
    out = run("triage", "learn", str(more))
    assert "Triage model #2" in out and "Tickets: from a chance of" in out


def test_labelled_lines_merge_by_message_and_the_later_line_wins() -> None:
    def line(ext: str, text: str, labels: str) -> triage.Labelled:
        record = f'"channel": "x", "external_id": "{ext}", "text": "{text}", "author": {{}}'
        got = triage.parse_labelled(1, f"{{{record}, {labels}}}")
        assert isinstance(got, triage.Labelled), got
        return got

    items = [
        line("1", "late again", '"sentiment_label": "neutral", "needs_reply": true'),
        line("2", "late again", '"sentiment_label": "negative"'),
        line("1", "late again!", '"sentiment_label": "negative"'),
        line("3", "late again", '"sentiment_label": "negative"'),
        line("4", "late again", '"sentiment_label": "negative", "needs_reply": false'),
    ]
    kept, merged = triage.merge_duplicates(items)
    assert merged == 1
    assert [(i.message.external_id, i.message.text, i.sentiment, i.needs_reply) for i in kept] == [
        ("1", "late again!", "negative", "yes"),
        ("2", "late again", "negative", None),
        ("3", "late again", "negative", None),
        ("4", "late again", "negative", "no"),
    ]
    kept, merged = triage.merge_duplicates(items, same_text=True)
    assert merged == 2 and [i.message.external_id for i in kept] == ["1", "2", "4"]


@pytest.mark.timeout(200)
def test_eval_counts_a_message_repeated_in_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _cli(tmp_path, monkeypatch)
    once = _labelled_file(tmp_path / "once.jsonl", labelled_set(12), [])
    lines = once.read_text(encoding="utf-8").splitlines()
    # The file twice over, and a third time under other ids: the same texts, the same labels.
    other_ids = [line.replace('"external_id": "L', '"external_id": "M') for line in lines]
    assert other_ids != lines
    thrice = tmp_path / "thrice.jsonl"
    thrice.write_text("\n".join(lines + lines + other_ids) + "\n", encoding="utf-8")
    out = run("triage", "eval", str(thrice))
    assert "36 labelled message(s) from thrice.jsonl (72 duplicate line(s) merged)." in out
    # Scored as the file once: no copy of a message on both sides of a fold.
    alone = json.loads(run("triage", "eval", str(once), "--json").splitlines()[-1])
    merged = json.loads(run("triage", "eval", str(thrice), "--json").splitlines()[-1])
    assert (alone["messages"], alone["merged"], merged["messages"], merged["merged"]) == (
        36, 0, 36, 72,
    )  # fmt: skip
    assert {k: v for k, v in merged.items() if k != "merged"} == {
        k: v for k, v in alone.items() if k != "merged"
    }
    assert merged["sentiment"]["learned"]["macro_f1"] < 1


@pytest.mark.timeout(200)
def test_too_few_labels_to_train_say_how_to_train_on_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _cli(tmp_path, monkeypatch)
    out = run("triage", "status")
    assert "(`socialcrm triage learn FILE` imports labels)" in out
    file = _labelled_file(tmp_path / "labels.jsonl", labelled_set(12), [])
    out = run("triage", "learn", str(file), "--no-train")
    way = "`socialcrm triage train --min-labels 36` trains on these 36 now"
    assert f"not trained: {way}" in out
    assert f"the daemon trains a model from 200 ({way})." in run("triage", "status")
    out = run("triage", "train", code=2)
    assert f"36 labelled message(s); at least 200 are needed (triage.min_labels): {way}" in out
    out = run("triage", "train", "--min-labels", "37", code=2)
    assert "at least 37 are needed (--min-labels): `socialcrm triage train --min-labels 36`" in out
    # The way out it names works.
    assert "Triage model #1" in run("triage", "train", "--min-labels", "36")
    for bad in ("0", "-5"):
        out = run("triage", "train", "--min-labels", bad, code=2)
        assert f"Invalid value for '--min-labels': {bad} is not in the range x>=1" in out


@pytest.mark.timeout(200)
def test_labels_of_too_few_kinds_say_what_to_add_not_a_train_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _cli(tmp_path, monkeypatch)
    rows = [("never arrived, useless", "negative"), ("ok", "neutral"), ("love it", "positive")]
    file = _labelled_file(tmp_path / "three.jsonl", rows, [])
    out = run("triage", "learn", str(file), "--no-train")
    lacking = "two kinds of message, 2 of each at least, one of them needing us"
    assert "not trained: more labels first: the labels do not yet show " + lacking in out, out
    assert "--min-labels 3" not in out
    assert lacking in run("triage", "status")
    out = run("triage", "train", "--min-labels", "5", code=2)
    assert "3 labelled message(s); at least 5 are needed" in out and lacking in out, out
    assert "--min-labels 3" not in out
    out = run("triage", "train", "--min-labels", "3", code=2)
    assert "sentiment: 1 negative, 1 neutral, 1 positive" in out and lacking in out, out


@pytest.mark.timeout(200)
def test_learning_the_same_file_again_trains_no_new_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _cli(tmp_path, monkeypatch)
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text() + "triage:\n  min_labels: 30\n")
    file = _labelled_file(tmp_path / "labels.jsonl", labelled_set(12), [])
    assert "Triage model #1" in run("triage", "learn", str(file))
    out = run("triage", "learn", str(file))
    assert "0 sentiment and 0 needs-reply label(s) imported" in out
    assert "72 label(s) already here as given" in out
    assert "not trained: no new labels; `socialcrm triage train` trains now" in out
    assert "Triage model" not in out
    status = run("triage", "status")
    assert status.startswith("Triage model #1") and "labelled now; 0 since this model" in status


@pytest.mark.timeout(200)
def test_importing_a_file_again_leaves_a_later_relabel_standing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _cli(tmp_path, monkeypatch)
    rows = labelled_set(4)
    file = _labelled_file(tmp_path / "labels.jsonl", rows, [])
    lines = file.read_text(encoding="utf-8").splitlines()
    # A message twice, said otherwise on its later line: that line's word is the file's.
    first = json.loads(lines[0])
    other = next(label for label in triage.SENTIMENT if label != first["sentiment_label"])
    file.write_text(
        "\n".join([*lines, json.dumps({**first, "sentiment_label": other})]) + "\n",
        encoding="utf-8",
    )
    out = run("triage", "learn", str(file), "--no-train")
    assert "12 sentiment and 12 needs-reply label(s) imported from 12 message(s)" in out
    assert "1 duplicate line(s) merged" in out
    run("ingest", str(file))
    # Message #1 is the file's first line: a person says otherwise on both questions.
    said = (first["sentiment_label"], other)
    person = next(label for label in triage.SENTIMENT if label not in said)
    run("relabel", "1", person)
    run("needs-reply", "1", "no" if first["needs_reply"] else "yes")

    def stored() -> list[tuple[str, str, str, str]]:
        with sqlite3.connect(tmp_path / "socialcrm.db") as db:
            return db.execute(
                "SELECT external_id, kind, value, reason FROM triage_label ORDER BY id"
            ).fetchall()

    before = stored()
    assert before[-2:] == [
        ("L0", "sentiment", person, "relabel"),
        ("L0", "needs_reply", "no" if first["needs_reply"] else "yes", "relabel"),
    ]
    out = run("triage", "learn", str(file), "--no-train")
    assert "0 sentiment and 0 needs-reply label(s) imported from 12 message(s)" in out
    assert "22 label(s) already here as given" in out
    assert "2 label(s) imported before and relabelled since, left as relabelled" in out
    assert stored() == before


def test_a_labelled_file_saved_with_a_byte_order_mark_loses_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _cli(tmp_path, monkeypatch)
    file = _labelled_file(tmp_path / "labels.jsonl", labelled_set(4), [])
    file.write_text(file.read_text(encoding="utf-8"), encoding="utf-8-sig")
    out = run("triage", "eval", str(file))
    assert out.startswith("12 labelled message(s) from labels.jsonl.\n")
    out = run("triage", "learn", str(file), "--no-train")
    assert "12 sentiment and 12 needs-reply label(s) imported from 12 message(s)" in out
    assert ", 0 line(s) skipped" in out


async def test_labels_of_one_kind_say_so_in_words(store: Store) -> None:
    async with store.session() as s:
        for i in range(3):
            triage.add_label(s, "sentiment", "negative", "import", "t", "cli", text=f"bad {i}")
    started: list[triage.TrainingSet] = []
    with pytest.raises(triage.TriageError) as err:
        await triage.retrain(
            store, SentimentScorer(), None, "t", "cli", min_labels=1, on_start=started.append
        )
    assert str(err.value).endswith("(labels so far: sentiment: 3 negative)")
    assert not started, "nothing is trained, and nobody is told it is"


async def test_the_daemon_retrains_when_labels_came_in(
    config: Config, store: Store, tmp_path: Path
) -> None:
    from socialcrm.daemon import Daemon

    cfg = config.model_copy(update={"triage": config.triage.model_copy(update={"min_labels": 20})})
    daemon = Daemon(cfg, store)
    assert await daemon.retrain_triage() is None, "no labels: nothing to train"
    async with store.session() as s:
        for text, label in labelled_set(10):
            triage.add_label(s, "sentiment", label, "import", "t", "cli", text=text)
    version = await daemon.retrain_triage()
    assert version == 1 and daemon.pipeline.triage_model is not None
    assert daemon.pipeline.triage_model.version == 1
    assert await daemon.retrain_triage() is None, "no new labels since: not retrained"
    # The model reads the rules' text conditions: when they change, it is trained again; the
    # same conditions in other rules, in another order, are no change.
    pack = daemon.pipeline.rules
    assert daemon.pipeline.triage_model.settings.fact_bits > 0
    daemon.pipeline.rules = RuleSet.from_text(DAMAGE)
    assert await daemon.retrain_triage() == 2
    async with store.reader() as s:
        row = await triage.newest(s)
    assert row is not None and row.card["rules"] == daemon.pipeline.rules.conditions_key
    assert row.card["rules"] != pack.conditions_key
    assert await daemon.retrain_triage() is None
    daemon.pipeline.rules = RuleSet.from_text(DAMAGE.replace("name: damaged", "name: harmed"))
    assert await daemon.retrain_triage() is None, "the same conditions: not retrained"
    # Trained beside the damage rule, the model learned from it ("broken", "smashed" in the
    # labelled texts): the columns of the rules' facts carry weight.
    model = daemon.pipeline.triage_model
    assert model is not None and model.version == 2
    s_ = model.settings
    start = (1 << s_.word_bits) + (1 << s_.char_bits) + 4
    assert np.abs(model.heads["sentiment"].coef_[:, start:]).max() > 0.1
    # A model stored before models read the rules (no hash in its card) is trained again.
    async with store.session() as s:
        row = await triage.newest(s)
        assert row is not None
        row.card = {k: v for k, v in row.card.items() if k != "rules"}
    assert await daemon.retrain_triage() == 3


@pytest.mark.parametrize(
    ("verdict", "risk"),
    [
        (triage.Verdict("negative", 0.4, True, 0.9, risk=0.9), 0.9),  # as the model gave it
        (triage.Verdict("negative", 0.9, True, 0.52), 0.52),  # the reply head: exact
        (triage.Verdict("negative", 0.9, False, 0.7), pytest.approx(0.3)),
        (triage.Verdict("negative", 0.45, None, None), 0.45),  # only the class
        (triage.Verdict("positive", 0.8, None, None), pytest.approx(0.2)),  # at most
    ],
)
def test_the_chance_a_message_needs_us(verdict: triage.Verdict, risk: float) -> None:
    assert triage.risk_of(verdict) == risk


def test_a_ticket_threshold_above_the_sure_one_is_refused() -> None:
    with pytest.raises(ValueError, match="ticket_at"):
        Config.model_validate({"triage": {"min_confidence": 0.5, "ticket_at": 0.7}})


# -- the ticket threshold each model sets itself ----------------------------------------------


def test_risk_at_recall_is_the_highest_threshold_that_keeps_each_share() -> None:
    rng = random.Random(3)
    risks = np.array([rng.random() for _ in range(137)])
    curve = triage.risk_at_recall(risks)
    assert len(curve) == len(triage.RECALLS) == 50
    assert curve == sorted(curve, reverse=True)
    for share, cut in zip(triage.RECALLS, curve, strict=True):
        kept = (risks >= cut - 1e-4).mean()
        assert kept >= share, (share, cut)
        # Any higher threshold keeps less than the share.
        above = risks[risks > cut + 1e-4]
        assert len(above) / len(risks) < share
    assert triage.risk_at_recall(np.array([])) == []


def _scores(
    curve: list[float], support: int, head: str = "needs_reply", n: int = 2000
) -> dict[str, Any]:
    risky = triage.RISKY[head]
    return {head: {"risk_at_recall": curve, "per_class": {risky: {"support": support}}, "n": n}}


def test_the_ticket_threshold_is_the_models_own_unless_the_config_sets_one() -> None:
    curve = [round(0.9 - i / 100, 2) for i in range(50)]  # recall 50% at 0.9 ... 99% at 0.41
    own = triage.ticket_threshold(_scores(curve, 200), fixed=None, recall=0.9, ceiling=0.6)
    assert own.at == pytest.approx(0.5) and "kept 90% of the 200 messages labelled 'yes'" in own.why
    # The reply head steers where it was trained; the class head's curve where it alone was.
    both = {**_scores([0.1] * 50, 200, "sentiment"), **_scores(curve, 200)}
    assert triage.ticket_threshold(both, fixed=None, recall=0.9, ceiling=0.6).at == 0.5
    alone = _scores(curve, 200, "sentiment")
    assert (
        "'negative' (sentiment)"
        in triage.ticket_threshold(alone, fixed=None, recall=0.9, ceiling=0.6).why
    )
    # A share between two noted ones takes the higher: 90.5% is not rounded down to 90%.
    between = triage.ticket_threshold(_scores(curve, 200), fixed=None, recall=0.905, ceiling=0.6)
    assert between.at == pytest.approx(0.49) and "kept 91%" in between.why
    # Never above the sure threshold, never below the lowest.
    assert (
        triage.ticket_threshold(_scores(curve, 200), fixed=None, recall=0.6, ceiling=0.6).at == 0.6
    )
    low = _scores([0.01] * 50, 200)
    floored = triage.ticket_threshold(low, fixed=None, recall=0.9, ceiling=0.6)
    assert floored.at == triage.LOWEST_TICKET_AT and "held within 0.05-0.60" in floored.why
    # Too few labelled to trust, or a model trained before models noted one: the default.
    for scores in (_scores(curve, 29), {"needs_reply": {"per_class": {}}}, {}):
        fallback = triage.ticket_threshold(scores, fixed=None, recall=0.9, ceiling=0.6)
        assert fallback.at == triage.FALLBACK_TICKET_AT and "the default" in fallback.why
    fixed = triage.ticket_threshold(_scores(curve, 200), fixed=0.33, recall=0.9, ceiling=0.6)
    assert fixed == triage.Threshold(0.33, "set in the config (triage.ticket_at)")
    # Validated on a small set, whose figures flatter it: never less careful than the default.
    small = triage.ticket_threshold(_scores(curve, 200, n=499), fixed=None, recall=0.9, ceiling=0.6)
    assert small.at == triage.FALLBACK_TICKET_AT
    assert "held within 0.05-0.20 (validated on 499 labels, fewer than 500)" in small.why
    low_small = triage.ticket_threshold(
        _scores([0.1] * 50, 200, n=300), fixed=None, recall=0.9, ceiling=0.6
    )
    assert low_small.at == 0.1 and "held" not in low_small.why
    floored_small = triage.ticket_threshold(
        _scores([0.01] * 50, 200, n=300), fixed=None, recall=0.9, ceiling=0.6
    )
    assert floored_small.at == triage.LOWEST_TICKET_AT and "validated on" not in floored_small.why


async def test_the_pipeline_keeps_tickets_from_the_threshold_of_the_model_in_use(
    config: Config, store: Store, scorer: SentimentScorer
) -> None:
    # Enough labels for the model's own threshold to stand (a smaller set's is held at the
    # default's).
    rows = labelled_set(triage.SMALL_SET // 3 + 1)
    xs = [triage.sample(t, scorer.score(t)) for t, _ in rows]
    trained = triage.train(
        {
            "sentiment": (xs, [y for _, y in rows]),
            "needs_reply": (xs, [reply_of(y) for _, y in rows]),
        },
        SMALL,
    )
    curve = trained.scores["needs_reply"]["risk_at_recall"]
    assert len(curve) == 50 and curve == sorted(curve, reverse=True)
    await _store_trained(store, trained)
    pipeline = Pipeline(config, store, rules=RuleSet.from_text(OPEN_ALL), scorer=scorer)
    await pipeline.refresh_triage(force=True)
    own = config.triage.threshold(trained.scores)
    assert "cross-validation" in own.why and pipeline.triage_ticket_at == own.at
    # A message the model is unsure of, with a chance between the default threshold and the
    # model's own: the rules ticket everything, the model closes it; pinned at the default,
    # the rules' ticket stands.
    mixed = [
        "love it but the app crashes sometimes",
        "thanks, still waiting though",
        "the parcel came late, but the staff were lovely",
        "my order arrived but the box was a bit dented, otherwise fine",
    ]
    model = pipeline.triage_model
    assert model is not None
    read = model.predict(triage.read([(t, None) for t in mixed], scorer, None))
    mid = [t for t, v in zip(mixed, read, strict=True) if 0.2 <= triage.risk_of(v) < own.at]
    assert mid, "no message between the default and the model's own threshold"
    await pipeline.ingest(Batch(messages=[msg("own", mid[0])]), "t")
    fixed = config.model_copy(
        update={"triage": config.triage.model_copy(update={"ticket_at": 0.2})}
    )
    pinned = Pipeline(fixed, store, rules=RuleSet.from_text(OPEN_ALL), scorer=scorer)
    await pinned.refresh_triage(force=True)
    assert pinned.triage_ticket_at == 0.2
    await pinned.ingest(Batch(messages=[msg("pinned", mid[0], "bob")]), "t")
    async with store.reader() as s:
        rows = {m.external_id: m for m in (await s.execute(sa.select(Message))).scalars()}
    assert rows["own"].ticket_id is None and rows["pinned"].ticket_id is not None
