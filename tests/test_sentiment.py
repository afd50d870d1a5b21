"""Sentiment: what VADER is given to read, the language gate and the starter lexicon."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from socialcrm.config import STARTER_CONFIG
from socialcrm.sentiment import SentimentScorer, brand_terms

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def plain() -> SentimentScorer:
    return SentimentScorer()


def compound(scorer: SentimentScorer, text: str) -> float:
    value = scorer.score(text, "en").compound
    assert value is not None
    return value


def test_handles_and_links_are_not_sentiment_words(plain: SentimentScorer) -> None:
    # VADER alone reads "@united" as the happy word "united" and "@SuperSupport" as "super".
    assert compound(plain, "@united my bag is in Denver and I am in Boston") == compound(
        plain, "my bag is in Denver and I am in Boston"
    )
    assert compound(plain, "@united") == 0.0
    assert compound(plain, "still no refund https://great.example/best/love") == compound(
        plain, "still no refund"
    )


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("@united my bag", "  my bag"),
        ("hi @united_help!", "hi  !"),
        ("mail bob@united.com", "mail bob@united.com"),
        ("@@united", "@@united"),
        ("é@united", "é@united"),
        ("-@united", "- "),
        ("see pic.twitter.com/abc", "see  "),
        ("epic.twitter.com/abc", "epic.twitter.com/abc"),
        ("go to www.example.com/x now", "go to   now"),
        ("http://a.example https://b.example/p?q=1", "   "),
    ],
)
def test_what_is_cleaned_out(plain: SentimentScorer, text: str, cleaned: str) -> None:
    assert plain.clean(text) == cleaned


def test_brand_names_do_not_count_as_sentiment(plain: SentimentScorer) -> None:
    brand = SentimentScorer(brand=brand_terms("United", ["@united", "UnitedAirlines"]))
    text = "United lost my bags again. #United"
    assert compound(plain, text) > compound(brand, text)
    assert compound(brand, text) == compound(plain, "lost my bags again.")
    assert compound(brand, "Best Buy support") == compound(plain, "Best Buy support")
    two_words = SentimentScorer(brand=brand_terms("Best Buy", []))
    assert compound(two_words, "best buy, worst service") == compound(plain, "worst service")


def test_emoji_capitals_and_exclamations_still_count(plain: SentimentScorer) -> None:
    assert compound(plain, "@acme great!!! 😍") > compound(plain, "@acme great")
    assert compound(plain, "@acme this is BAD") < compound(plain, "@acme this is bad")


def test_emoji_written_for_joy_as_often_as_for_sorrow_carry_no_sentiment(
    plain: SentimentScorer,
) -> None:
    # VADER reads them by their names: "loudly crying face" (-0.48 alone), "fire" (-0.34).
    assert compound(plain, "so cute 😭😭😭") == compound(plain, "so cute") > 0
    assert compound(plain, "the new update is 🔥🔥") == 0.0
    # The words beside them still decide, and other emoji still count.
    assert compound(plain, "my flight was cancelled 😭") < 0
    assert compound(plain, "the kitchen is on fire 🔥") < 0
    assert compound(plain, "the checkout page just spins 😢") < 0


def test_curly_quotes_read_as_straight_ones(plain: SentimentScorer) -> None:
    # A curly "isn't" is a negation, and a curly-quoted "bad" a word, as if typed straight.
    assert compound(plain, "the new app isn\u2019t good") == compound(
        plain, "the new app isn't good"
    )
    assert compound(plain, "the new app isn\u2019t good") < 0
    assert compound(plain, "\u201cfast\u201d delivery, \u2018great\u2019 support") == compound(
        plain, "\"fast\" delivery, 'great' support"
    )
    assert compound(plain, "that\u2019s \u2018bad\u2019") < 0
    assert compound(plain, "it isn\u02bct good") == compound(plain, "it isn't good")
    # The English word list knows "won't" and "i'm" typed either way.
    assert plain.score("I\u2019m done, won\u2019t renew").lang == "en"


def test_requests_are_not_happiness(plain: SentimentScorer) -> None:
    # "please help" came out at +0.69: a cry for help read as a happy message.
    assert compound(plain, "please help") == 0.0
    assert compound(plain, "it's been like 3 weeks, please help") <= 0.0
    # The brand lexicon can give a neutral word its valence back.
    assert compound(SentimentScorer({"help": 1.7}), "help") > 0


@pytest.mark.parametrize(
    "text",
    [
        "thanks so much!",
        "im still on hold...",
        "worst service ever",
        "thx, all sorted now",
        "Cant wait till Christmas day",
        "app doesnt load again",
    ],
)
def test_short_english_is_english(plain: SentimentScorer, text: str) -> None:
    s = plain.score(text)
    assert s.scored and s.lang in ("en", None)


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("gracias por todo amigo", "es"),
        ("danke schön für alles", "de"),
        ("Meine Bestellung ist immer noch nicht angekommen", "de"),
        ("la commande dont je parle", "fr"),
    ],
)
def test_short_texts_in_other_languages_stay_unscored(
    plain: SentimentScorer, text: str, lang: str
) -> None:
    s = plain.score(text)
    assert not s.scored and s.lang == lang


def test_starter_lexicons_hold_no_domain_traps() -> None:
    """``sick: 1.5`` made "sick of waiting" praise; ``refund: -0.5`` made questions complaints."""
    starter = yaml.safe_load(STARTER_CONFIG)["brand"]["lexicon"]
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())["brand"]["lexicon"]
    for lexicon in (starter, example):
        assert "sick" not in lexicon and "refund" not in lexicon
        scorer = SentimentScorer(lexicon)
        assert compound(scorer, "sick of waiting for my parcel") < -0.05
        # "refund: -0.5" made a plain question a complaint.
        assert compound(scorer, "How long does a refund usually take?") == 0.0
