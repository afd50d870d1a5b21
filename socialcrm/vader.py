"""VADER's scores, number for number, in about half its time.

``vaderSentiment``'s analyzer lowercases the whole sentence again for every sentiment word
it checks for negation or idioms (``_negation_check``, ``_special_idioms_check``), and copies
each text character by character to replace emoji. On a tweet that is most of its time.

:class:`Analyzer` keeps the library's lexicon, rules and code path and changes only that:

- the lowercased sentence is made once per sentence and shared by both checks;
- a text with no emoji VADER knows skips the character-by-character copy (it would come out
  the same), and a text with emoji goes through the library's own code.

The scores are the library's: ``tests/test_vader.py`` compares them with the stock analyzer
on every rule the checks cover and on thousands of random sentences.

The overridden methods follow vaderSentiment's own code (C.J. Hutto, MIT licence) step for
step; on an upgrade of that library, its tests here say whether they still agree.
"""

from __future__ import annotations

from typing import Any

from vaderSentiment.vaderSentiment import (
    BOOSTER_DICT,
    N_SCALAR,
    NEGATE,
    SPECIAL_CASES,
    SentimentIntensityAnalyzer,
    SentiText,
)

_NEGATE = frozenset(NEGATE)


def _negates(low: str) -> bool:
    """The library's ``negated([word])`` for one lowercased word."""
    return low in _NEGATE or "n't" in low


class Analyzer(SentimentIntensityAnalyzer):  # type: ignore[misc]
    """``SentimentIntensityAnalyzer`` with the repeated lowercasing taken out."""

    def __init__(self) -> None:
        super().__init__()
        # Only single characters can match: the library tests ``chr in self.emojis``.
        self._emoji_chars = frozenset(k for k in self.emojis if len(k) == 1)
        # (sentence, its words lowercased), replaced as one: threads may share an analyzer.
        self._lowered_memo: tuple[list[str] | None, list[str]] = (None, [])

    def drop_emoji(self, chars: str) -> None:
        """Read these emoji as no sentiment word (they stay in the text, as a word VADER does
        not know) rather than as their names."""
        for c in chars:
            self.emojis.pop(c, None)
        self._emoji_chars = frozenset(k for k in self.emojis if len(k) == 1)

    def _lowered(self, words: list[str]) -> list[str]:
        """``words`` lowercased, made once per sentence (the list is not changed while it is
        scored; holding it keeps its identity from being reused)."""
        of, lowered = self._lowered_memo
        if of is not words:
            lowered = [str(w).lower() for w in words]
            self._lowered_memo = (words, lowered)
        return lowered

    def polarity_scores(self, text: str) -> dict[str, float]:
        if not self._emoji_chars.isdisjoint(text):
            return super().polarity_scores(text)  # type: ignore[no-any-return]
        # From here on the library's own steps, as in SentimentIntensityAnalyzer.
        text = text.strip()
        sentitext = SentiText(text)
        sentiments: list[Any] = []
        words_and_emoticons = sentitext.words_and_emoticons
        last = len(words_and_emoticons) - 1
        for i, item in enumerate(words_and_emoticons):
            lowered = item.lower()
            if lowered in BOOSTER_DICT or (
                i < last and lowered == "kind" and words_and_emoticons[i + 1].lower() == "of"
            ):
                sentiments.append(0)
                continue
            sentiments = self.sentiment_valence(0, sentitext, item, i, sentiments)
        sentiments = self._but_check(words_and_emoticons, sentiments)
        return self.score_valence(sentiments, text)  # type: ignore[no-any-return]

    def _negation_check(
        self, valence: float, words_and_emoticons: list[str], start_i: int, i: int
    ) -> float:
        low = self._lowered(words_and_emoticons)
        before = low[i - (start_i + 1)]
        if start_i == 0 and _negates(before):
            valence = valence * N_SCALAR
        if start_i == 1:
            if low[i - 2] == "never" and low[i - 1] in ("so", "this"):
                valence = valence * 1.25
            elif low[i - 2] == "without" and low[i - 1] == "doubt":
                pass
            elif _negates(before):
                valence = valence * N_SCALAR
        if start_i == 2:
            # As in the library: "so" or "this" just before the word boosts it even
            # without "never" ((never and so/this) or so/this).
            if (low[i - 3] == "never" and low[i - 2] in ("so", "this")) or low[i - 1] in (
                "so",
                "this",
            ):
                valence = valence * 1.25
            elif low[i - 3] == "without" and "doubt" in (low[i - 2], low[i - 1]):
                pass
            elif _negates(before):
                valence = valence * N_SCALAR
        return valence

    def _special_idioms_check(
        self, valence: float, words_and_emoticons: list[str], i: int
    ) -> float:
        low = self._lowered(words_and_emoticons)
        # Negative positions wrap around to the sentence's end, as in the library.
        onezero = f"{low[i - 1]} {low[i]}"
        twoonezero = f"{low[i - 2]} {low[i - 1]} {low[i]}"
        twoone = f"{low[i - 2]} {low[i - 1]}"
        threetwoone = f"{low[i - 3]} {low[i - 2]} {low[i - 1]}"
        threetwo = f"{low[i - 3]} {low[i - 2]}"
        for seq in (onezero, twoonezero, twoone, threetwoone, threetwo):
            if seq in SPECIAL_CASES:
                valence = SPECIAL_CASES[seq]
                break
        if len(low) - 1 > i:
            zeroone = f"{low[i]} {low[i + 1]}"
            if zeroone in SPECIAL_CASES:
                valence = SPECIAL_CASES[zeroone]
        if len(low) - 1 > i + 1:
            zeroonetwo = f"{low[i]} {low[i + 1]} {low[i + 2]}"
            if zeroonetwo in SPECIAL_CASES:
                valence = SPECIAL_CASES[zeroonetwo]
        for n_gram in (threetwoone, threetwo, twoone):
            if n_gram in BOOSTER_DICT:
                valence = valence + BOOSTER_DICT[n_gram]
        return valence
