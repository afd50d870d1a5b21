"""The quicker VADER gives the library's scores, number for number."""

from __future__ import annotations

import random

import pytest
from vaderSentiment.vaderSentiment import (
    BOOSTER_DICT,
    NEGATE,
    SPECIAL_CASES,
    SentimentIntensityAnalyzer,
)

from socialcrm.vader import Analyzer

# Words each of VADER's checks looks at: negations ("never so", "without doubt", "no ... or"),
# "least", "kind of", "but", boosters, idioms, and words of both valences.
_RULE_WORDS = [
    *NEGATE,
    *BOOSTER_DICT,
    *" ".join(SPECIAL_CASES).split(),
    *"never so this without doubt no or nor least at very kind of but isn't can't".split(),
    # "n't" words the library's list lacks, negations all the same
    "couldn't've",
    "mightn't've",
    "y'all'dn't",
]
_FEELING_WORDS = (
    "good bad love hate great terrible awful happy sad worst best fine angry thanks "
    "stuck broken wonderful horrible ok help please"
).split()
_OTHER = "the my order flight bag is was it to and I we you :) :( :-D <3 lol ?".split()
_EMOJI = ["😀", "😡", "👍", "💔", "🙏"]
_PUNCTUATION = ["", "", "", "!", "!!", "?", "??", "...", ",", "."]


def _word(rng: random.Random) -> str:
    pool = rng.choice((_RULE_WORDS, _FEELING_WORDS, _OTHER, _EMOJI))
    word = rng.choice(pool)
    shape = rng.random()
    if shape < 0.15:
        word = word.upper()
    elif shape < 0.25:
        word = word.capitalize()
    return word + rng.choice(_PUNCTUATION)


def _texts(count: int) -> list[str]:
    rng = random.Random(20261206)
    return [
        " ".join(_word(rng) for _ in range(rng.randint(0, 30)))
        + rng.choice(("", " ", "!", "?!", "  "))
        for _ in range(count)
    ]


HAND_WRITTEN = [
    "",
    "   ",
    "not good",
    "NOT GOOD at all",
    "never so happy",
    "without doubt the best",
    "no love or care",
    "least helpful ever",
    "at least it works",
    "kind of bad but the staff were great",
    "the shit",
    "yeah right, great service",
    "isn't bad, isn't good",
    "I hate it 😡 but 👍 for trying",
    "GREAT",
    "kiss of death",
    "bad ass",
    "good ;)",
]


@pytest.fixture(scope="module")
def pair() -> tuple[SentimentIntensityAnalyzer, Analyzer]:
    return SentimentIntensityAnalyzer(), Analyzer()


@pytest.mark.parametrize("text", HAND_WRITTEN)
def test_scores_match_the_library_on_each_rule(
    pair: tuple[SentimentIntensityAnalyzer, Analyzer], text: str
) -> None:
    stock, quick = pair
    assert quick.polarity_scores(text) == stock.polarity_scores(text)


def test_scores_match_the_library_on_random_sentences(
    pair: tuple[SentimentIntensityAnalyzer, Analyzer],
) -> None:
    stock, quick = pair
    texts = _texts(4000)
    differ = [t for t in texts if quick.polarity_scores(t) != stock.polarity_scores(t)]
    assert differ == []
    # The sentences exercise the checks: most have a non-zero score of each sign.
    compounds = [stock.polarity_scores(t)["compound"] for t in texts]
    assert sum(c > 0 for c in compounds) > 1000
    assert sum(c < 0 for c in compounds) > 1000


def test_lexicon_changes_count_as_in_the_library() -> None:
    stock, quick = SentimentIntensityAnalyzer(), Analyzer()
    for analyzer in (stock, quick):
        analyzer.lexicon.pop("please", None)
        analyzer.lexicon.update({"delayed": -1.8, "sick": -1.5})
    for text in ("sick of waiting, flight delayed", "please help, NOT delayed"):
        assert quick.polarity_scores(text) == stock.polarity_scores(text)
