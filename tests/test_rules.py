"""Tests for the rules engine, its rule tests runner and the shipped rule pack."""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from socialcrm import yamldoc
from socialcrm.rules import (
    Decision,
    RuleContext,
    RuleError,
    RuleSet,
    RuleTestResult,
    find_rule_tests,
    run_rule_tests,
)
from socialcrm.sentiment import SentimentScorer

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "rules" / "default.yaml"
DATA = Path(__file__).resolve().parent / "data" / "rules"
WEDNESDAY = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)
PACK_TEMPLATES = {
    "apology",
    "apology_vip",
    "answer_question",
    "thanks",
    "refund",
    "delivery_delay",
    "outage",
    "legal_holding",
}

Scorer = Callable[[str], float | None]


def make_ctx(**overrides: Any) -> RuleContext:
    """A plain message from a known, ordinary customer on a Wednesday morning."""
    fields: dict[str, Any] = {
        "text": "hello there",
        "channel": "x",
        "source": "x-main",
        "sentiment": 0.0,
        "lang": "en",
        "customer_tier": None,
        "customer_segment": None,
        "lifetime_value": 0.0,
        "customer_tags": frozenset(),
        "customer_is_new": False,
        "followers": 100,
        "has_open_ticket": False,
        "local_time": WEDNESDAY,
        "direct": True,
    }
    fields.update(overrides)
    return RuleContext(**fields)


def at(day: int, hh_mm: str) -> datetime:
    """March 2026: day 2 is a Monday, 7 a Saturday."""
    hour, minute = map(int, hh_mm.split(":"))
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def one_rule(when: str, then: str = "[{tag: hit}]") -> RuleSet:
    return RuleSet.from_text(f"rules:\n  - name: r\n    when: {when}\n    then: {then}\n", "t.yaml")


@pytest.fixture(scope="module")
def vader() -> Scorer:
    analyzer = SentimentIntensityAnalyzer()

    def score(text: str) -> float | None:
        return float(analyzer.polarity_scores(text)["compound"])

    return score


# --- conditions --------------------------------------------------------------------------

CONDITIONS: list[tuple[str, dict[str, Any], bool]] = [
    # keywords: whole words, case-insensitive, unicode-aware
    ("{keywords: [refund]}", {"text": "I want a REFUND now"}, True),
    ("{keywords: [refund]}", {"text": "refunded already"}, False),
    ("{keywords: [refund]}", {"text": "prerefund"}, False),
    ("{keywords: [refund, money]}", {"text": "where is my money?"}, True),
    ("{keywords: [größe]}", {"text": "Die GRÖSSE passt nicht"}, True),
    ("{keywords: [café]}", {"text": "Le Café était froid"}, True),
    ("{keywords: [café]}", {"text": "trois cafés"}, False),
    ("{keywords: [zamówienie]}", {"text": "Gdzie jest moje zamówienie?"}, True),
    ("{keywords: ['#fail']}", {"text": "Worst day ever #FAIL"}, True),
    ("{keywords: ['#fail']}", {"text": "we did not fail"}, False),
    ("{keywords: ['#fail']}", {"text": "a#fail"}, False),
    ("{keywords: [fail]}", {"text": "#fail again"}, True),
    ("{keywords: ['@acme']}", {"text": "hey @Acme help"}, True),
    ("{keywords: ['@acme']}", {"text": "mail bob@acme.com"}, False),
    ("{keywords: ['@acme']}", {"text": "hola @acme, ¿dónde está?"}, True),
    ("{keywords: ['?']}", {"text": "where is it?"}, True),
    ("{keywords: ['?']}", {"text": "where is it"}, False),
    ("{keywords: [can't]}", {"text": "I can\u2019t log in"}, True),
    ("{keywords: [can't]}", {"text": "I cant log in"}, False),
    ("{keywords: [wi-fi]}", {"text": "wi-fi down"}, True),
    ("{keywords: [wi-fi]}", {"text": "the Wi-Fi is down"}, True),
    ("{keywords: [wi-fi]}", {"text": "hawi-fi"}, False),
    ("{keywords: [wi-fi]}", {"text": "wi-fis"}, False),
    ("{keywords: [refund, '?']}", {"text": "ok?"}, True),
    ("{keywords: [refund, '?']}", {"text": "Refund."}, True),
    ("{keywords: [refund, '?']}", {"text": "ok."}, False),
    # phrases: case-insensitive, any whitespace between the words, whole words at the ends
    ("{phrases: [cancel my account]}", {"text": "Please CANCEL   my\naccount today"}, True),
    ("{phrases: [cancel my account]}", {"text": "cancel my account"}, True),
    ("{phrases: [cancel my account]}", {"text": "cancel my accounts"}, False),
    ("{phrases: [cancel my account]}", {"text": "precancel my account"}, False),
    ("{phrases: [cancel my account]}", {"text": "cancel, my account"}, False),
    ("{phrases: [cancel my account]}", {"text": "cancel my order, then my account"}, False),
    ("{phrases: [cancel my account, switching to]}", {"text": "I'm Switching to globex"}, True),
    ('{phrases: ["where\'s my order"]}', {"text": "Where\u2019s my order??"}, True),
    ('{phrases: ["where\'s my order"]}', {"text": "nowhere's my order"}, False),
    ("{phrases: ['#fail again']}", {"text": "what a #FAIL  again"}, True),
    ("{phrases: ['#fail again', cancel my account]}", {"text": "cancel my account"}, True),
    ("{phrases: ['#fail again', cancel my account]}", {"text": "#fail  AGAIN"}, True),
    ("{phrases: ['#fail again', cancel my account]}", {"text": "fail again"}, False),
    ("{phrases: [speak to a human, a supervisor]}", {"text": "get me a supervisor"}, True),
    ("{phrases: [speak to a human, a supervisor]}", {"text": "a a a supervisors"}, False),
    ("{phrases: [qué desastre]}", {"text": "¡Qué desastre!"}, True),
    ("{phrases: [qué desastre]}", {"text": "que desastre"}, False),
    # regex: compiled at load, searched case-insensitively in the original text
    (r"{regex: 'order #?\d{6}'}", {"text": "ORDER #123456 is late"}, True),
    (r"{regex: 'order #?\d{6}'}", {"text": "order 12345"}, False),
    ("{regex: ['^hi', 'bye$']}", {"text": "ok bye"}, True),
    ("{regex: ['^hi', 'bye$']}", {"text": "ok bye now"}, False),
    # sentiment
    ("{sentiment: {below: -0.5}}", {"sentiment": -0.6}, True),
    ("{sentiment: {below: -0.5}}", {"sentiment": -0.5}, False),
    ("{sentiment: {below: -0.5}}", {"sentiment": None}, False),
    ("{sentiment: {above: 0.5}}", {"sentiment": 0.7}, True),
    ("{sentiment: {above: 0.5}}", {"sentiment": None}, False),
    ("{sentiment: {below: 0, above: -0.5}}", {"sentiment": -0.2}, True),
    ("{sentiment: {below: 0, above: -0.5}}", {"sentiment": -0.7}, False),
    ("{sentiment: {unscored: true}}", {"sentiment": None}, True),
    ("{sentiment: {unscored: true}}", {"sentiment": 0.0}, False),
    ("{sentiment: {unscored: false}}", {"sentiment": 0.0}, True),
    ("{sentiment: {unscored: false}}", {"sentiment": None}, False),
    # channel, source, lang
    ("{channel: [x, email]}", {"channel": "email"}, True),
    ("{channel: [x, email]}", {"channel": "reddit"}, False),
    ("{channel: rss}", {"channel": "rss"}, True),
    ("{source: [Main-X]}", {"source": "main-x"}, True),
    ("{source: [Main-X]}", {"source": "support-mail"}, False),
    ("{lang: [en]}", {"lang": "en-GB"}, True),
    ("{lang: [en]}", {"lang": "EN"}, True),
    ("{lang: [en]}", {"lang": "de"}, False),
    ("{lang: [en]}", {"lang": None}, False),
    # customer
    ("{customer: {tier: [vip, gold]}}", {"customer_tier": "Gold"}, True),
    ("{customer: {tier: [vip, gold]}}", {"customer_tier": "standard"}, False),
    ("{customer: {tier: [vip, gold]}}", {"customer_tier": None}, False),
    ("{customer: {segment: [smb]}}", {"customer_segment": "smb"}, True),
    ("{customer: {segment: [smb]}}", {"customer_segment": None}, False),
    ("{customer: {lifetime_value: {at_least: 1000, below: 5000}}}", {"lifetime_value": 1000}, True),
    ("{customer: {lifetime_value: {at_least: 1000, below: 5000}}}", {"lifetime_value": 4999}, True),
    (
        "{customer: {lifetime_value: {at_least: 1000, below: 5000}}}",
        {"lifetime_value": 5000},
        False,
    ),
    ("{customer: {lifetime_value: {at_least: 1000, below: 5000}}}", {"lifetime_value": 999}, False),
    (
        "{customer: {tags: {any: [wholesale, press]}}}",
        {"customer_tags": frozenset({"Press"})},
        True,
    ),
    ("{customer: {tags: {any: [wholesale, press]}}}", {"customer_tags": frozenset()}, False),
    (
        "{customer: {tags: {all: [wholesale, eu]}}}",
        {"customer_tags": frozenset({"wholesale", "eu", "b2b"})},
        True,
    ),
    (
        "{customer: {tags: {all: [wholesale, eu]}}}",
        {"customer_tags": frozenset({"wholesale"})},
        False,
    ),
    ("{customer: {new: true}}", {"customer_is_new": True}, True),
    ("{customer: {new: true}}", {"customer_is_new": False}, False),
    ("{customer: {new: false, tier: [vip]}}", {"customer_tier": "vip"}, True),
    (
        "{customer: {new: false, tier: [vip]}}",
        {"customer_tier": "vip", "customer_is_new": True},
        False,
    ),
    # followers, ticket, direct
    ("{followers: {at_least: 10000}}", {"followers": 10000}, True),
    ("{followers: {at_least: 10000}}", {"followers": 9999}, False),
    ("{followers: {below: 100}}", {"followers": 99}, True),
    ("{followers: {below: 100}}", {"followers": 100}, False),
    ("{ticket_open: true}", {"has_open_ticket": True}, True),
    ("{ticket_open: true}", {"has_open_ticket": False}, False),
    ("{ticket_open: false}", {"has_open_ticket": False}, True),
    ("{direct: false}", {"direct": False}, True),
    ("{direct: false}", {"direct": True}, False),
    # time: start inclusive, end exclusive; a window may run across midnight
    ('{time: {between: ["09:00", "17:00"]}}', {"local_time": at(4, "09:00")}, True),
    ('{time: {between: ["09:00", "17:00"]}}', {"local_time": at(4, "16:59")}, True),
    ('{time: {between: ["09:00", "17:00"]}}', {"local_time": at(4, "17:00")}, False),
    ('{time: {between: ["09:00", "17:00"]}}', {"local_time": at(4, "08:59")}, False),
    ('{time: {between: ["18:00", "08:00"]}}', {"local_time": at(4, "18:00")}, True),
    ('{time: {between: ["18:00", "08:00"]}}', {"local_time": at(4, "23:59")}, True),
    ('{time: {between: ["18:00", "08:00"]}}', {"local_time": at(4, "00:00")}, True),
    ('{time: {between: ["18:00", "08:00"]}}', {"local_time": at(4, "07:59")}, True),
    ('{time: {between: ["18:00", "08:00"]}}', {"local_time": at(4, "08:00")}, False),
    ('{time: {between: ["18:00", "08:00"]}}', {"local_time": at(4, "12:00")}, False),
    ('{time: {between: ["18:00", "00:00"]}}', {"local_time": at(4, "23:30")}, True),
    ('{time: {between: ["18:00", "00:00"]}}', {"local_time": at(4, "00:30")}, False),
    ("{time: {days: [sat, sun]}}", {"local_time": at(7, "11:00")}, True),
    ("{time: {days: [sat, sun]}}", {"local_time": at(4, "11:00")}, False),
    ("{time: {days: [Saturday]}}", {"local_time": at(7, "11:00")}, True),
    ('{time: {between: ["09:00", "17:00"], days: [mon, tue, wed, thu, fri]}}', {}, True),
    (
        '{time: {between: ["09:00", "17:00"], days: [mon, tue, wed, thu, fri]}}',
        {"local_time": at(7, "11:00")},
        False,
    ),
    (
        '{time: {between: ["09:00", "17:00"], days: [mon, tue, wed, thu, fri]}}',
        {"local_time": at(4, "20:00")},
        False,
    ),
    # combinators, and several keys in one mapping meaning all of them
    ("{all: [{channel: [x]}, {keywords: [refund]}]}", {"text": "refund"}, True),
    (
        "{all: [{channel: [x]}, {keywords: [refund]}]}",
        {"text": "refund", "channel": "email"},
        False,
    ),
    ("{any: [{channel: [email]}, {keywords: [refund]}]}", {"text": "refund"}, True),
    ("{any: [{channel: [email]}, {keywords: [refund]}]}", {"text": "hello"}, False),
    ("{not: {channel: [x]}}", {"channel": "email"}, True),
    ("{not: {channel: [x]}}", {}, False),
    ("{channel: [x], keywords: [refund]}", {"text": "refund"}, True),
    ("{channel: [x], keywords: [refund]}", {"text": "refund", "channel": "email"}, False),
    (
        "{channel: [x], keywords: [refund], direct: true}",
        {"text": "a refund", "direct": False},
        False,
    ),
    ("{all: [{direct: true}, {channel: [x]}, {sentiment: {below: 0}}]}", {"sentiment": -0.1}, True),
    ("{any: [{direct: false}, {channel: [rss]}, {sentiment: {below: 0}}]}", {}, False),
]

NESTED = (
    "{any: [{all: [{channel: [x]}, {not: {keywords: [thanks]}}]},"
    " {not: {any: [{direct: true}, {followers: {at_least: 10}}]}}]}"
)


@pytest.mark.parametrize(("when", "ctx", "expected"), CONDITIONS)
def test_condition(when: str, ctx: dict[str, Any], expected: bool) -> None:
    ruleset = one_rule(when)
    assert ruleset.rules[0].matches(make_ctx(**ctx)) is expected
    assert (ruleset.evaluate(make_ctx(**ctx)).matched == ["r"]) is expected
    # The same answer from the text facts worked out apart (as the scoring process does).
    facts = ruleset.text_facts(make_ctx(**ctx).text)
    assert (ruleset.evaluate(make_ctx(**ctx, text_facts=facts)).matched == ["r"]) is expected


@pytest.mark.parametrize(
    ("ctx", "expected"),
    [
        ({"text": "hi"}, True),
        ({"text": "thanks"}, False),
        ({"text": "thanks", "channel": "email", "direct": False, "followers": 3}, True),
        ({"text": "thanks", "channel": "email", "direct": False, "followers": 30}, False),
        ({"channel": "email"}, False),
    ],
)
def test_combinators_nest_to_any_depth(ctx: dict[str, Any], expected: bool) -> None:
    assert one_rule(NESTED).rules[0].matches(make_ctx(**ctx)) is expected


# --- actions -----------------------------------------------------------------------------

ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("[{tag: vip}]", {"tags": ["vip"]}),
    ("[{tag: [a, b, a]}, {tag: c}]", {"tags": ["a", "b", "c"]}),
    ("[{intent: complaint}]", {"intent": "complaint"}),
    ("[{priority: high}]", {"priority": "high"}),
    ("[{priority: urgent}, {priority: low}]", {"priority": "urgent"}),
    ("[open_ticket]", {"open_ticket": True, "team": None, "queue": None}),
    ("[{open_ticket: {team: billing, queue: refunds}}]", {"team": "billing", "queue": "refunds"}),
    ("[{open_ticket: {queue: priority}}]", {"open_ticket": True, "queue": "priority"}),
    ("[{assign: dana}]", {"assignee": "dana"}),
    ("[{draft: apology}]", {"draft_template": "apology"}),
    ("[{draft: apology}, {draft: thanks}]", {"draft_template": "thanks"}),
    ("[{escalate: Angry VIP}]", {"escalations": ["Angry VIP"]}),
    ("[escalate]", {"escalations": ["Say what is wrong"]}),
    ("[ignore]", {"ignore": True, "open_ticket": False}),
    ("[{tag: x}, stop]", {"matched": ["r"], "tags": ["x"]}),
]


@pytest.mark.parametrize(("then", "expected"), ACTIONS)
def test_action(then: str, expected: dict[str, Any]) -> None:
    text = (
        "rules:\n  - name: r\n    description: Say what is wrong\n"
        f"    when: {{direct: true}}\n    then: {then}\n"
    )
    decision = RuleSet.from_text(text).evaluate(make_ctx())
    assert decision.matched == ["r"]
    for field, value in expected.items():
        assert getattr(decision, field) == value, field


CHAIN = """
rules:
  - name: a
    when: {direct: true}
    then:
      - tag: [one, two]
      - intent: question
      - priority: urgent
      - open_ticket: {team: support, queue: general}
      - assign: sam
      - draft: answer_question
      - escalate: first
  - name: b
    when: {keywords: [refund]}
    then:
      - tag: [two, three]
      - intent: refund
      - priority: low
      - open_ticket
      - draft: refund
      - escalate: second
  - name: c
    when: {channel: [x]}
    then:
      - open_ticket: {team: billing}
      - assign: dana
      - stop
  - name: d
    when: {direct: true}
    then:
      - tag: never
"""


def test_rules_combine_in_file_order_until_stop() -> None:
    decision = RuleSet.from_text(CHAIN).evaluate(make_ctx(text="refund please"))
    assert decision.matched == ["a", "b", "c"]
    assert decision.tags == ["one", "two", "three"]
    assert decision.intent == "refund"
    assert decision.priority == "urgent"
    assert decision.open_ticket is True
    # A bare open_ticket keeps the team an earlier rule chose; a later team replaces it.
    assert (decision.team, decision.queue) == ("billing", "general")
    assert decision.assignee == "dana"
    assert decision.draft_template == "refund"
    assert decision.escalations == ["first", "second"]
    assert decision.ignore is False


def test_stop_only_counts_when_its_rule_matches() -> None:
    decision = RuleSet.from_text(CHAIN).evaluate(make_ctx(text="refund", channel="email"))
    assert decision.matched == ["a", "b", "d"]
    assert decision.tags[-1] == "never"


@pytest.mark.parametrize("order", [("low", "urgent", "normal"), ("urgent", "low", "high")])
def test_highest_priority_wins(order: tuple[str, str, str]) -> None:
    text = "rules:\n" + "".join(
        f"  - name: r{i}\n    when: {{direct: true}}\n    then: [{{priority: {p}}}]\n"
        for i, p in enumerate(order)
    )
    assert RuleSet.from_text(text).evaluate(make_ctx()).priority == "urgent"


def test_ignore_wins_over_ticket_and_draft_but_keeps_the_rest() -> None:
    text = """
rules:
  - name: help
    when: {direct: true}
    then: [open_ticket, {draft: thanks}, {tag: seen}, {escalate: look}]
  - name: bot
    when: {customer: {new: true}}
    then: [ignore, {tag: spam}]
"""
    decision = RuleSet.from_text(text).evaluate(make_ctx(customer_is_new=True))
    assert decision.ignore is True
    assert decision.open_ticket is False
    assert decision.draft_template is None
    assert decision.tags == ["seen", "spam"]
    assert decision.escalations == ["look"]
    assert "Ignored" in decision.explain()


def test_no_match_gives_an_empty_decision() -> None:
    decision = one_rule("{channel: [rss]}").evaluate(make_ctx())
    assert decision == Decision()
    assert decision.explain() == "No rule matched."


def test_explain_names_each_rule_and_what_it_did() -> None:
    explanation = RuleSet.from_text(CHAIN).evaluate(make_ctx(text="refund")).explain()
    lines = explanation.splitlines()
    assert [line.split(":")[0] for line in lines] == ["a", "b", "c"]
    assert "priority urgent" in lines[0]
    assert "open ticket (team support, queue general)" in lines[0]
    assert "escalate 'first'" in lines[0]
    assert "draft refund" in lines[1]
    assert lines[2].endswith("stop")


def test_rules_know_where_they_came_from_and_template_names() -> None:
    ruleset = RuleSet.from_text(CHAIN, "chain.yaml")
    assert [r.source for r in ruleset.rules] == [
        "chain.yaml:3",
        "chain.yaml:13",
        "chain.yaml:22",
        "chain.yaml:28",
    ]
    assert ruleset.template_names() == {"answer_question", "refund"}


# --- load errors -------------------------------------------------------------------------

LOAD_ERRORS: list[tuple[str, str, int, str, str]] = [
    # (when, then, line, path, message)
    ("{keyword: [x]}", "[stop]", 3, "rules[0].when.keyword", "did you mean 'keywords'?"),
    (
        "{customer: {tire: [vip]}}",
        "[stop]",
        3,
        "rules[0].when.customer.tire",
        "did you mean 'tier'",
    ),
    ("{direct: true}", "[{tagg: x}]", 4, "rules[0].then[0].tagg", "unknown action 'tagg'"),
    ("{direct: true}", "[close]", 4, "rules[0].then[0]", "unknown action 'close'"),
    ("{direct: true}", "[tag]", 4, "rules[0].then[0]", "`tag` needs a value"),
    ("{direct: true}", "[{stop: 3}]", 4, "rules[0].then[0].stop", "takes no value"),
    (
        "{channel: 5}",
        "[stop]",
        3,
        "rules[0].when.channel",
        "expected a string or a list of strings, got 5",
    ),
    ("{channel: [x, 5]}", "[stop]", 3, "rules[0].when.channel[1]", "got 5"),
    ("{channel: [twitter]}", "[stop]", 3, "rules[0].when.channel[0]", "unknown channel 'twitter'"),
    ("{direct: yes please}", "[stop]", 3, "rules[0].when.direct", "expected true or false"),
    (
        "{direct: true}",
        "[{priority: critical}]",
        4,
        "rules[0].then[0].priority",
        "one of low, normal",
    ),
    ("{direct: true}", "[{tag: [a, '']}]", 4, "rules[0].then[0].tag[1]", "non-empty string"),
    ("{direct: true}", "[{draft: ../etc/passwd}]", 4, "rules[0].then[0].draft", "template names"),
    (
        "{direct: true}",
        "[{open_ticket: {teem: a}}]",
        4,
        "rules[0].then[0].open_ticket.teem",
        "'team'",
    ),
    ("{direct: true}", "[ignore, open_ticket]", 4, "rules[0].then", "`ignore` contradicts"),
    ("{direct: true}", "{tag: x}", 4, "rules[0].then", "non-empty list of actions"),
    ("{direct: true}", "[]", 4, "rules[0].then", "non-empty list of actions"),
    ("{regex: 'order (\\d+'}", "[stop]", 3, "rules[0].when.regex", "invalid regex"),
    ("{regex: [ok, '(bad']}", "[stop]", 3, "rules[0].when.regex[1]", "missing )"),
    ("{keywords: [cancel order]}", "[stop]", 3, "rules[0].when.keywords[0]", "under `phrases`"),
    ("{keywords: []}", "[stop]", 3, "rules[0].when.keywords", "got an empty list"),
    (
        '{time: {between: ["25:00", "08:00"]}}',
        "[stop]",
        3,
        "rules[0].when.time.between[0]",
        "'25:00'",
    ),
    (
        '{time: {between: ["8am", "17:00"]}}',
        "[stop]",
        3,
        "rules[0].when.time.between[0]",
        '"HH:MM"',
    ),
    ('{time: {between: [18:00, "08:00"]}}', "[stop]", 3, "rules[0].when.time.between[0]", "quoted"),
    ('{time: {between: ["18:00"]}}', "[stop]", 3, "rules[0].when.time.between", "two times"),
    (
        '{time: {between: ["08:00", "08:00"]}}',
        "[stop]",
        3,
        "rules[0].when.time.between",
        "same time",
    ),
    ("{time: {days: [funday]}}", "[stop]", 3, "rules[0].when.time.days[0]", "unknown day 'funday'"),
    ("{time: {}}", "[stop]", 3, "rules[0].when.time", "empty time"),
    ("{sentiment: {below: -2}}", "[stop]", 3, "rules[0].when.sentiment.below", "between -1 and 1"),
    (
        "{sentiment: {below: high}}",
        "[stop]",
        3,
        "rules[0].when.sentiment.below",
        "expected a number",
    ),
    (
        "{sentiment: {below: -0.5, above: 0.5}}",
        "[stop]",
        3,
        "rules[0].when.sentiment",
        "never matches",
    ),
    (
        "{sentiment: {below: 0, unscored: true}}",
        "[stop]",
        3,
        "rules[0].when.sentiment.unscored",
        "cannot",
    ),
    ("{sentiment: -0.5}", "[stop]", 3, "rules[0].when.sentiment", "must be a mapping"),
    (
        "{followers: {at_least: 10, below: 5}}",
        "[stop]",
        3,
        "rules[0].when.followers",
        "never matches",
    ),
    ("{followers: {most: 10}}", "[stop]", 3, "rules[0].when.followers.most", "unknown followers"),
    ("{customer: {tags: [vip]}}", "[stop]", 3, "rules[0].when.customer.tags", "must be a mapping"),
    ("{not: [{channel: [x]}]}", "[stop]", 3, "rules[0].when.not", "must be a mapping"),
    ("{all: []}", "[stop]", 3, "rules[0].when.all", "non-empty list of conditions"),
    ("{any: [{}]}", "[stop]", 3, "rules[0].when.any[0]", "empty condition"),
    ("{}", "[stop]", 3, "rules[0].when", "empty `when`"),
    ("", "[stop]", 3, "rules[0].when", "empty `when`"),
    (
        "{any: [{all: [{not: {channel: [fax]}}]}]}",
        "[stop]",
        3,
        "rules[0].when.any[0].all[0].not.channel[0]",
        "unknown channel 'fax'",
    ),
]


@pytest.mark.parametrize(("when", "then", "line", "path", "message"), LOAD_ERRORS)
def test_load_error_names_file_line_and_path(
    when: str, then: str, line: int, path: str, message: str
) -> None:
    text = f"rules:\n  - name: r\n    when: {when}\n    then: {then}\n"
    with pytest.raises(RuleError) as caught:
        RuleSet.from_text(text, "t.yaml")
    assert len(caught.value.problems) == 1, caught.value.problems
    problem = caught.value.problems[0]
    assert problem.startswith(f"t.yaml:{line}: {path}: "), problem
    assert message in problem
    assert str(caught.value) == problem


RULE_SHAPE_ERRORS: list[tuple[str, int, str, str]] = [
    ("rules:\n  - when: {direct: true}\n    then: [stop]\n", 2, "rules[0]", "missing `name`"),
    ("rules:\n  - name: r\n    then: [stop]\n", 2, "rules[0]", "missing `when`"),
    ("rules:\n  - name: r\n    when: {direct: true}\n", 2, "rules[0]", "missing `then`"),
    (
        "rules:\n  - name: r\n    when: {direct: true}\n    then:\n",
        4,
        "rules[0].then",
        "missing `then`",
    ),
    (
        "rules:\n  - name: a b\n    when: {direct: true}\n    then: [stop]\n",
        2,
        "rules[0].name",
        "no spaces",
    ),
    (
        "rules:\n  - name: r\n    descripton: x\n    when: {direct: true}\n    then: [stop]\n",
        3,
        "rules[0].descripton",
        "did you mean 'description'?",
    ),
    (
        "rules:\n  - name: r\n    when: {direct: true}\n    then:\n"
        "      - tag: a\n        priority: high\n",
        5,
        "rules[0].then[0]",
        "one action per list item",
    ),
    ("rules:\n  - just a string\n", 2, "rules[0]", "a rule must be a mapping"),
    ("- name: r\n  when: {direct: true}\n", 1, "(top level)", "top-level `rules:` list"),
    ("rules: {name: r}\n", 1, "rules", "must be a list of rules"),
    ("rules: []\nsettings: {}\n", 2, "settings", "unknown top-level key"),
    ("", 0, "(top level)", "the file is empty"),
    ("tests: []\n", 1, "(top level)", "rule tests file"),
]


@pytest.mark.parametrize(("text", "line", "path", "message"), RULE_SHAPE_ERRORS)
def test_rule_and_file_shape_errors(text: str, line: int, path: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        RuleSet.from_text(text, "t.yaml")
    where = f"t.yaml:{line}" if line else "t.yaml"
    assert any(
        p.startswith(f"{where}: {path}: ") and message in p for p in caught.value.problems
    ), caught.value.problems


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(RuleError, match=r"^t\.yaml:4: invalid YAML"):
        RuleSet.from_text(
            "rules:\n  - name: r\n    when: {channel: [x]\n    then: [stop]\n", "t.yaml"
        )


def test_load_reports_every_problem_in_a_file() -> None:
    path = DATA / "bad_many.yaml"
    with pytest.raises(RuleError) as caught:
        RuleSet.load([path])
    found = [re.match(r"(.*?):(\d+): (\S+): ", p) for p in caught.value.problems]
    assert [(m[1], int(m[2]), m[3]) for m in found if m] == [
        (str(path), 4, "rules[0].when.keyword"),
        (str(path), 6, "rules[0].then[0].priority"),
        (str(path), 11, "rules[1].when.all[0].regex"),
        (str(path), 13, "rules[1].when.all[1].time.between[0]"),
        (str(path), 15, "rules[1].then[0].tagg"),
        (str(path), 18, "rules[2].when"),
        (str(path), 17, "rules[2]"),
        (str(path), 20, "rules[3].name"),
        (str(path), 23, "rules[3].when.channel[0]"),
    ]
    assert f"first defined at {path}:2" in caught.value.problems[7]


def test_load_reports_problems_across_files() -> None:
    good, dup = DATA / "good.yaml", DATA / "duplicate.yaml"
    with pytest.raises(RuleError) as caught:
        RuleSet.load(
            [good, dup, DATA / "bad_syntax.yaml", DATA / "not_rules.yaml", DATA / "nope.yaml"]
        )
    problems = caught.value.problems
    assert problems[0] == (
        f"{dup}:8: rules[1].name: duplicate rule name 'vip' (first defined at {good}:2)"
    )
    assert problems[1].startswith(f"{DATA / 'bad_syntax.yaml'}:4: invalid YAML")
    assert problems[2].startswith(f"{DATA / 'not_rules.yaml'}:1: (top level): ")
    assert problems[3] == f"{DATA / 'nope.yaml'}: file not found"
    assert len(problems) == 4


def test_load_keeps_file_order() -> None:
    ruleset = RuleSet.load([DATA / "sample.yaml", DATA / "good.yaml"])
    assert [r.name for r in ruleset.rules] == ["refund", "angry", "vip"]
    assert ruleset.rules[2].source == f"{DATA / 'good.yaml'}:2"


# --- rule tests --------------------------------------------------------------------------


def test_rule_tests_report_passes_and_each_failed_expectation() -> None:
    ruleset = RuleSet.load([DATA / "sample.yaml"])
    scored: list[str] = []

    def score(text: str) -> float:
        scored.append(text)
        return -0.9 if "hate" in text else 0.0

    path = DATA / "sample.tests.yaml"
    results = run_rule_tests(ruleset, [path], score)
    assert [(r.name, r.source, r.passed) for r in results] == [
        ("refund passes", f"{path}:2", True),
        ("angry uses the scorer", f"{path}:11", True),
        ("everything wrong", f"{path}:17", False),
    ]
    # Only the test without a sentiment of its own is scored.
    assert scored == ["I hate this"]
    assert results[0] == RuleTestResult("refund passes", f"{path}:2", True, [])
    problems = results[2].problems
    expected = [
        (21, "intent", "expected 'complaint', got 'refund'"),
        (22, "priority", "expected 'urgent', got 'high'"),
        (23, "tags", "missing tags vip (tags: billing)"),
        (24, "not_tags", "unexpected tags billing"),
        (25, "matched", "expected angry to match"),
        (26, "not_matched", "expected refund not to match"),
        (27, "escalate", "expected an escalation, got none"),
        (28, "open_ticket", "expected false, got true"),
        (29, "team", "expected null, got 'billing'"),
        (30, "draft", "expected 'apology', got 'refund'"),
        (31, "ignore", "expected true, got false"),
    ]
    assert len(problems) == len(expected)
    for problem, (line, key, text) in zip(problems, expected, strict=True):
        assert problem == f"{path}:{line}: tests[2].expect.{key}: {text} (rules matched: refund)"


def test_bad_rule_tests_file_lists_every_problem() -> None:
    ruleset = RuleSet.load([DATA / "sample.yaml"])
    path = DATA / "bad.tests.yaml"
    with pytest.raises(RuleError) as caught:
        run_rule_tests(ruleset, [path, DATA / "missing.tests.yaml"], lambda _: 0.0)
    heads = [p.split(": ")[:2] for p in caught.value.problems]
    assert heads == [
        [f"{path}:5", "tests[0].expect.intnet"],
        [f"{path}:10", "tests[1].expect.matched[1]"],
        [f"{path}:13", "tests[2].message.text"],
        [f"{path}:13", "tests[2].message.channel"],
        [f"{path}:14", "tests[2].local_time"],
        [f"{path}:16", "tests[2].expect.priority"],
        [f"{path}:18", "tests[3]"],
        [f"{path}:18", "tests[3].message"],
        [f"{path}:20", "tests[3].expect.ignore"],
        [f"{DATA / 'missing.tests.yaml'}", "file not found"],
    ]
    assert "no rule is named 'refunds'" in caught.value.problems[1]


def test_rule_test_context_defaults_and_options(tmp_path: Path) -> None:
    rules = """
rules:
  - name: night
    when: {time: {between: ["22:00", "06:00"]}}
    then: [{tag: night}]
  - name: unscored
    when: {sentiment: {unscored: true}, lang: [es], source: [shop-feed], direct: false}
    then: [{tag: es}]
  - name: known
    when:
      customer: {tier: [vip], segment: [retail], tags: {all: [eu]}, new: false}
      ticket_open: true
      followers: {at_least: 5}
    then: [{tag: known}]
"""
    tests = """
tests:
  - name: night, unscored, known
    message: {text: hola, channel: rss, source: shop-feed, lang: es, direct: false, followers: 9}
    customer: {tier: vip, segment: retail, tags: [eu], new: false, lifetime_value: 10}
    sentiment: null
    ticket_open: true
    local_time: "2026-03-02T23:15:00+01:00"
    expect: {tags: [night, es, known]}
  - name: defaults are a daytime, scored, direct message
    message: {text: hola, channel: rss}
    expect: {not_tags: [night, es, known], not_matched: [night, unscored, known]}
"""
    (tmp_path / "r.yaml").write_text(rules)
    (tmp_path / "r.tests.yaml").write_text(tests)
    ruleset = RuleSet.load([tmp_path / "r.yaml"])
    results = run_rule_tests(ruleset, find_rule_tests([tmp_path / "r.yaml"]), lambda _: 0.1)
    assert [(r.passed, r.problems) for r in results] == [(True, []), (True, [])]


def test_find_rule_tests_pairs_each_file_with_its_tests() -> None:
    found = find_rule_tests(
        [DATA / "sample.yaml", DATA / "good.yaml", DATA / "sample.tests.yaml", PACK]
    )
    assert found == [DATA / "sample.tests.yaml", PACK.with_name("default.tests.yaml")]


# --- the shipped pack --------------------------------------------------------------------


def test_shipped_pack_loads_and_evaluates() -> None:
    ruleset = RuleSet.load([PACK])
    assert 15 <= len(ruleset.rules) <= 25
    assert ruleset.template_names() == PACK_TEMPLATES
    decision = ruleset.evaluate(
        make_ctx(text="@acme my order never arrived, this is a joke", sentiment=-0.6)
    )
    assert decision.open_ticket is True
    assert decision.intent == "delivery"
    assert decision.draft_template == "delivery_delay"
    assert "delivery-problem" in decision.explain()


def test_shipped_pack_passes_its_own_tests() -> None:
    """Scored as the pipeline and `socialcrm rules test` score: handles and links left out."""
    ruleset = RuleSet.load([PACK])
    tests = find_rule_tests([PACK])
    results = run_rule_tests(ruleset, tests, SentimentScorer().compound)
    assert len(results) >= 20
    failures = [p for r in results for p in r.problems]
    assert not failures, "\n".join(failures)


def test_shipped_pack_tests_cover_every_rule() -> None:
    ruleset = RuleSet.load([PACK])
    doc = yamldoc.load(PACK.with_name("default.tests.yaml"))
    shown = {name for test in doc.data["tests"] for name in test["expect"].get("matched", [])}
    assert shown == {rule.name for rule in ruleset.rules}


def test_text_facts_agree_with_each_condition_on_near_misses() -> None:
    # Conditions that share words, and texts holding those words in and out of order: the
    # text facts (one pass over the words) must say what each condition says on its own.
    pack = """
rules:
  - {name: a, when: {phrases: [my order, where is my order, order is late]}, then: [{tag: a}]}
  - {name: b, when: {phrases: ["where's my refund", refund please]}, then: [{tag: b}]}
  - {name: c, when: {keywords: [refund, "wi-fi", "?"]}, then: [{tag: c}]}
  - {name: d, when: {keywords: ["#late", "@acme"]}, then: [{tag: d}]}
  - {name: e, when: {phrases: ["is it late?", "!!!", "#late again"]}, then: [{tag: e}]}
  - {name: f, when: {any: [{phrases: [my wi-fi]}, {regex: 'order\\s+#?\\d+'}]}, then: [{tag: f}]}
  - {name: g, when: {not: {phrases: [order is]}}, then: [{tag: g}]}
"""
    rules = RuleSet.from_text(pack, "t.yaml")
    words = (
        "my order where is where's late refund please wi-fi #late @acme again it ? !!! #12".split()
    )
    rng = random.Random(4)
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 7))) for _ in range(3000)]
    texts += [
        "Where\u2019s   my REFUND",
        "is it late?",
        "order 123",
        "my wi-fis",
        "my order's late",
    ]
    for text in texts:
        ctx = make_ctx(text=text)
        facts = rules.text_facts(text)
        assert rules.evaluate(make_ctx(text=text, text_facts=facts)) == rules.evaluate(ctx), text


def test_a_conditions_fact_key_is_what_it_looks_for_not_where_it_stands() -> None:
    # A triage model learns from these keys: the same condition keeps its key when rules are
    # added, reordered or renamed, and an edited condition gets a key of its own.
    first = RuleSet.from_text(
        """
rules:
  - {name: late, when: {keywords: [late, delayed]}, then: [{tag: late}]}
  - {name: where, when: {phrases: [where is my order]}, then: [{tag: where}]}
  - {name: number, when: {regex: 'order\\s+#?\\d+'}, then: [{tag: n}]}
""",
        "a.yaml",
    )
    second = RuleSet.from_text(
        """
rules:
  - {name: new, when: {keywords: [refund]}, then: [{tag: r}]}
  - {name: n2, when: {regex: 'order\\s+#?\\d+'}, then: [{tag: n}]}
  - {name: lateness, when: {keywords: [delayed, late]}, then: [{tag: late}]}
  - {name: twice, when: {all: [{keywords: [late, delayed]}, {keywords: [refund]}]}, then: [stop]}
  - {name: where, when: {phrases: [where is my parcel]}, then: [{tag: where}]}
""",
        "b.yaml",
    )
    text = "where is my order 123? it is late"
    a = first.fact_keys(first.text_facts(text))
    b = second.fact_keys(second.text_facts(text))
    assert len(a) == 3 and len(set(a)) == 3
    # "late" and the order number hold in both: the same keys, though numbered otherwise and
    # (for "late") in two rules of the second set; the edited phrase holds in the first only.
    assert len(b) == 2 and set(b) < set(a)
    assert first.fact_keys(0) == ()
    refund = second.fact_keys(second.text_facts("refund"))
    assert len(refund) == 1 and refund[0] not in a
    # The edited phrase is a condition of its own; regexes in another order are the same.
    parcel = second.fact_keys(second.text_facts("where is my parcel"))
    order = first.fact_keys(first.text_facts("where is my order"))
    assert len(parcel) == len(order) == 1 and parcel != order
    one = RuleSet.from_text(
        "rules:\n  - {name: r, when: {regex: ['a+b', 'c\\d']}, then: [stop]}\n"
    ).fact_keys(1)
    two = RuleSet.from_text(
        "rules:\n  - {name: s, when: {regex: ['c\\d', 'a+b']}, then: [stop]}\n"
    ).fact_keys(1)
    assert one == two
    # The same number in every process and Python: a stored model reads it years later.
    late = RuleSet.from_text("rules:\n  - {name: r, when: {keywords: [late]}, then: [stop]}\n")
    assert late.fact_keys(late.text_facts("late")) == (zlib.crc32(b"text\x1flate\x1f"),)


def _nested(depth: int) -> str:
    cond = "{any: [{keywords: [refund]}, {phrases: [never arrived]}]}"
    for i in range(depth):
        cond = "{not: " + cond + "}" if i % 2 else "{any: [" + cond + ", {keywords: [zzz]}]}"
    return f"rules:\n  - name: deep\n    when: {cond}\n    then: [open_ticket]\n"


@pytest.mark.parametrize("depth", [10, 300])
def test_deeply_nested_conditions_answer_alike_from_text_and_facts(depth: int) -> None:
    # Past a depth Python will not compile as one expression, the tree answers instead.
    rules = RuleSet.from_text(_nested(depth))
    for text in ("where is my refund", "it never arrived", "thanks!"):
        facts = rules.text_facts(text)
        ctx = make_ctx(text=text)
        assert rules.evaluate(make_ctx(text=text, text_facts=facts)) == rules.evaluate(ctx)
    assert rules.evaluate(make_ctx(text="where is my refund")).open_ticket is (depth // 2 % 2 == 0)


def test_a_rule_file_nested_past_reading_is_a_clear_error() -> None:
    with pytest.raises(RuleError, match="nested too deeply"):
        RuleSet.from_text(_nested(900))


# -- explaining a decision ----------------------------------------------------------------------

EXPLAINED = r"""rules:
  - name: stop-spam
    when: {regex: 'win \d+ prizes'}
    then: [ignore, stop]
  - name: praise
    when:
      all:
        - keywords: &happy [thanks, love]
        - not:
            any: &problem
              - phrases: [still waiting, never arrived]
              - regex: '#\w*fail'
    then: [{intent: praise}]
  - name: complaint
    when:
      any:
        - any: *problem
        - sentiment: {below: -0.5}
    then: [open_ticket]
  - name: vip
    when: {customer: {tier: [vip]}}
    then: [{tag: vip}]
"""


def test_explain_names_each_rules_outcome_and_what_its_text_conditions_found() -> None:
    rules = RuleSet.from_text(EXPLAINED, "pack.yaml")
    found = rules.explain(make_ctx(text="Thanks, the parcel still  waiting since May #EpicFail"))
    assert found.decision.matched == ["complaint"] and found.decision.open_ticket
    by = {r.rule.name: r for r in found.rules}
    assert [r.outcome for r in found.rules] == [
        "not matched",
        "not matched",
        "matched",
        "not matched",
    ]
    # The keyword found, and the conditions that kept `praise` from matching, under a `not`,
    # at the line of the anchor they were written at.
    praise = {(h.site.kind, h.site.negated, h.site.where): h.found for h in by["praise"].held}
    assert praise == {
        ("keywords", False, "pack.yaml:8"): ("thanks",),
        ("phrases", True, "pack.yaml:11"): ("still  waiting",),
        ("regex", True, "pack.yaml:12"): ("#EpicFail",),
    }
    # The same conditions, by alias, count for `complaint`, at the lines the anchor wrote them.
    complaint = {(h.site.kind, h.site.negated, h.site.where, h.found) for h in by["complaint"].held}
    assert complaint == {
        ("phrases", False, "pack.yaml:11", ("still  waiting",)),
        ("regex", False, "pack.yaml:12", ("#EpicFail",)),
    }
    assert by["vip"].held == ()


def test_explain_marks_the_rules_a_stop_kept_from_running() -> None:
    rules = RuleSet.from_text(EXPLAINED, "pack.yaml")
    found = rules.explain(make_ctx(text="WIN 3 PRIZES, thanks"))
    assert found.decision.ignore and found.decision.matched == ["stop-spam"]
    assert [r.outcome for r in found.rules] == ["matched", *["not reached"] * 3]
    assert found.rules[0].held[0].found == ("WIN 3 PRIZES",)
    # A rule not reached still shows what its conditions found in the text.
    assert found.rules[1].held[0].found == ("thanks",)
    # Explaining decides as evaluating does.
    assert rules.evaluate(make_ctx(text="WIN 3 PRIZES, thanks")) == found.decision
