"""The starter sentiment reading: a triage model shipped with the package, read until the team
has trained its own.

VADER's lexicon scores words; people read whole messages. The starter model is the triage
model's own features and regression (``socialcrm.triage``), trained once on the 4,200 tweets
that VADER's authors had rated by ten people each (Hutto & Gilbert, ICWSM 2014; published
under the MIT License in the ``vaderSentiment`` 3.3.2 source package on PyPI, the release the
project asks for at least). A tweet whose raters leaned at least half a point either way on their
-4 .. +4 scale is positive or negative, the rest neutral.

It gives each English message a sentiment class and a confidence, stored as the message's
triage class, which the reports count. It decides no ticket and no draft, and the rules' model
conditions (``triage:``, ``needs_reply:``, ``triage_confidence:``) do not see it: all that stays
with the rules until the team's model, trained on the team's own labels, takes over.
``tools/train_starter.py`` rebuilds the file from the source package.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from socialcrm.sentiment import Score, SentimentScorer
from socialcrm.triage import Model, Settings, TriageError, sample

log = logging.getLogger(__name__)

#: Where the trained starter model lies in the package.
PATH = Path(__file__).parent / "data" / "starter_sentiment.npz"
#: The version a starter reading is stored with: one no team model can have (stored models
#: are numbered from 1, and a model not yet stored has 0).
VERSION = -1
#: The raters' mean rating (-4 .. +4) from which a tweet counts as leaning one way.
LEAN = 0.5


def label_of(mean_rating: float) -> str:
    """The sentiment class of a rated text: which way its raters leaned, if they did."""
    if mean_rating >= LEAN:
        return "positive"
    if mean_rating <= -LEAN:
        return "negative"
    return "neutral"


def ratings(lines: Iterable[str]) -> list[tuple[float, str]]:
    """(mean rating, text) of each line of a VADER ground-truth file (id, mean, text; tabs)."""
    out = []
    for n, line in enumerate(lines, 1):
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < 3 or not parts[2].strip():
            raise ValueError(f"line {n}: expected id, mean rating and text separated by tabs")
        try:
            mean = float(parts[1])
        except ValueError:
            raise ValueError(f"line {n}: the mean rating {parts[1]!r} is not a number") from None
        if not -4.0 <= mean <= 4.0:
            raise ValueError(f"line {n}: the mean rating {mean} is outside -4 .. 4")
        out.append((mean, "\t".join(parts[2:])))
    return out


def train(rated: Sequence[tuple[float, str]], scorer: SentimentScorer | None = None) -> Model:
    """The starter model: the triage model's sentiment head, trained on rated texts."""
    scorer = scorer or SentimentScorer()
    xs = [sample(text, scorer.score(text, "en")) for _mean, text in rated]
    labels = [label_of(mean) for mean, _text in rated]
    # It reads no rules: the team's rules are not the ones it was trained beside.
    model = Model.fit(Settings(), {"sentiment": (xs, labels)})
    model.version = VERSION
    return model


@functools.cache
def model() -> Model | None:
    """The shipped starter model (loaded once per process), or None if it cannot be read."""
    try:
        return Model.load(PATH.read_bytes(), version=VERSION)
    except (OSError, TriageError):
        log.exception("the starter sentiment model %s cannot be read; VADER's class is used", PATH)
        return None


def reads(score: Score) -> bool:
    """Whether the starter reads a text so scored: one VADER scored and known to be English
    (not one too short to tell); it knows no other language."""
    return score.compound is not None and score.lang == "en"


def is_starter(version: int | None) -> bool:
    """Whether a reading (by its model version) is the starter's, which steers nothing."""
    return version == VERSION
