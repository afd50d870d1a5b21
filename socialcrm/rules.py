"""The rules engine: YAML rules that turn an inbound message into tags, tickets, drafts and alerts.

A rule file holds a ``rules:`` list. Each rule has a ``name`` (unique across every loaded file),
an optional ``description``, a ``when`` condition and a ``then`` list of actions. Rules are
checked in file order; every rule that matches adds its actions, until a rule with ``stop``
matches and the rest are skipped.

A condition is a mapping; when it has several keys, all of them must hold::

    keywords: [refund, "#fail", "@acme"]     any of these whole words (case-insensitive)
    phrases: ["cancel my account"]           any of these phrases, any whitespace between words
    regex: 'order #?\\d{6}'                   Python regex (or a list of them), case-insensitive
    sentiment: {below: -0.5, above: -0.9}    or {unscored: true}
    channel: [x, mastodon]                   also source: [...] and lang: [en, de]
    customer: {tier: [vip], segment: [...], lifetime_value: {at_least: 1000, below: 5000},
               tags: {any: [...], all: [...]}, new: true}
    followers: {at_least: 10000}
    ticket_open: true                        also direct: false
    time: {between: ["18:00", "08:00"], days: [sat, sun]}
    triage: [negative]                       the learned model's class (negative|neutral|positive)
    needs_reply: true                        the learned model's word on whether to answer
    triage_confidence: {below: 0.6}          its confidence in the class (also at_least); these
                                             three never match while no model is in use
    all: [...]    any: [...]    not: {...}

Names (tier, segment, customer tags, source, lang) compare case-insensitively; ``lang: [en]``
also matches ``en-GB``. ``below`` and ``above`` are strict, ``at_least`` includes its value.
A time window includes its start and excludes its end, and runs across midnight when the start
is later than the end; ``days`` is the day of the message's local time.

Actions, one per list item: ``tag`` (a string or a list), ``intent``, ``priority``
(low < normal < high < urgent; the highest wins), ``open_ticket`` (bare or ``{team, queue}``),
``assign``, ``draft`` (a reply template name), ``escalate`` (a reason; bare uses the rule's
description), ``ignore`` (store the message, no ticket or draft) and ``stop``.

Everything is compiled when the files load, so that evaluating a message does no parsing: the
message is folded and split into words once, keyword lists are frozensets looked up in those
words, and phrase regexes run only where a phrase's first word occurs.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import re
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from socialcrm import yamldoc
from socialcrm.connector import CHANNELS
from socialcrm.yamldoc import Loc, YamlDoc, YamlError, format_loc

PRIORITIES = ("low", "normal", "high", "urgent")
#: The learned triage model's classes (``socialcrm.triage.SENTIMENT``).
TRIAGE_CLASSES = ("negative", "neutral", "positive")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_CONDITIONS = (
    "keywords",
    "phrases",
    "regex",
    "sentiment",
    "channel",
    "source",
    "lang",
    "customer",
    "followers",
    "ticket_open",
    "direct",
    "time",
    "triage",
    "needs_reply",
    "triage_confidence",
    "all",
    "any",
    "not",
)
_ACTIONS = (
    "tag",
    "intent",
    "priority",
    "open_ticket",
    "assign",
    "draft",
    "escalate",
    "ignore",
    "stop",
)
_BARE_ACTIONS = ("open_ticket", "escalate", "ignore", "stop")
_RULE_KEYS = ("name", "description", "when", "then")

_WORD = re.compile(r"\w+")
# On ASCII text, str.translate runs in C with a per-character cache and is about twice as fast
# as findall(r"\w+"); mapping every non-word character to a space gives the same words.
_ASCII_WORDS_ONLY = "".join(c if c.isalnum() or c == "_" else " " for c in map(chr, range(128)))
# A hashtag or mention starts a word: "bob@acme.com" holds the word "acme", not "@acme". The
# lookbehind sits after the first character so that re can skip straight to a # or @.
_MARKED_WORD = re.compile(r"[#@](?<!\w[#@])\w+")
_PLAIN_WORD = re.compile(r"[#@]?\w+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_TEMPLATE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What the rules may look at for one inbound message."""

    text: str
    channel: str
    source: str
    sentiment: float | None
    lang: str | None
    customer_tier: str | None
    customer_segment: str | None
    lifetime_value: float
    customer_tags: frozenset[str]
    customer_is_new: bool
    followers: int
    has_open_ticket: bool
    local_time: datetime
    direct: bool = True
    #: Which text conditions hold, from ``RuleSet.text_facts`` (worked out in another process
    #: while this one waits for the database); None makes the rules read the text themselves.
    text_facts: int | None = None
    #: The learned triage model's reading; None while no model is in use.
    triage: str | None = None
    triage_confidence: float | None = None
    needs_reply: bool | None = None
    needs_reply_confidence: float | None = None


@dataclass(slots=True)
class Decision:
    """What the matching rules decided; ``ignore`` wins over ``open_ticket`` and the draft."""

    matched: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    intent: str | None = None
    priority: str | None = None
    open_ticket: bool = False
    team: str | None = None
    queue: str | None = None
    assignee: str | None = None
    draft_template: str | None = None
    escalations: list[str] = field(default_factory=list)
    ignore: bool = False
    #: One line per matched rule: its name and its actions in words.
    trail: list[str] = field(default_factory=list)

    def explain(self) -> str:
        """Short human text: which rules fired and what they did."""
        if not self.matched and not self.trail:
            return "No rule matched."
        lines = self.trail or [f"matched: {', '.join(self.matched)}"]
        if self.ignore:
            lines = [*lines, "Ignored: the message is stored, with no ticket and no draft."]
        return "\n".join(lines)


class TextSite(NamedTuple):
    """Where a condition on the text is written: its rule, ``file:line`` and kind."""

    rule: str
    where: str
    #: keywords, phrases or regex.
    kind: str
    #: Under a `not` (an odd number of them): holding keeps its rule from matching.
    negated: bool


class Held(NamedTuple):
    """A text condition that holds in a message, and what it found there."""

    site: TextSite
    #: The words, phrases or regex matches it found, as they stand in the (folded) text.
    found: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleReading:
    """One rule's part in a decision, for ``RuleSet.explain``."""

    rule: Rule
    #: "matched", "not matched", or "not reached" (an earlier matching rule stopped there).
    outcome: str
    #: Its text conditions that hold in the message.
    held: tuple[Held, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why the rules decided what they did for one message (``socialcrm rules explain``)."""

    decision: Decision
    rules: tuple[RuleReading, ...]


class RuleError(ValueError):
    """Rule or rule-test files that cannot be used; one ``file:line: path: problem`` per line."""

    def __init__(self, problems: Sequence[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def _text_only(text: str) -> RuleContext:
    """A context that carries just a text (for answering text conditions on their own)."""
    return RuleContext(
        text=text,
        channel="",
        source="",
        sentiment=None,
        lang=None,
        customer_tier=None,
        customer_segment=None,
        lifetime_value=0.0,
        customer_tags=frozenset(),
        customer_is_new=False,
        followers=0,
        has_open_ticket=False,
        local_time=datetime.min,
    )


#: The context of text facts: text conditions read nothing else.
_NO_MESSAGE = _text_only("")


def text_context(text: str) -> RuleContext:
    """A context for a text on its own, as a message with no customer, channel or time."""
    return _text_only(text)


class _Msg:
    """One message under evaluation, with its folded text and its set of words."""

    __slots__ = ("ctx", "facts", "raw", "text", "words")

    def __init__(self, ctx: RuleContext, text: str | None = None) -> None:
        self.ctx = ctx
        self.raw = ctx.text if text is None else text
        self.facts = ctx.text_facts
        if self.facts is not None:
            # The text conditions were answered already: no need to read the text.
            self.text = ""
            self.words = set()
            return
        # Worked out up front: nearly every rule pack looks at the words, and plain attributes
        # are cheaper to reach from each check than lazy methods.
        text = _fold(self.raw)
        if text.isascii():
            words = set(text.translate(_ASCII_WORDS_ONLY).split())
        else:
            words = set(_WORD.findall(text))
        if "#" in text or "@" in text:
            words.update(_MARKED_WORD.findall(text))
        self.text = text
        self.words = words


Check = Callable[[_Msg], bool]


def _never(_m: _Msg) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: its condition and the combined effect of its actions."""

    name: str
    description: str | None
    source: str
    #: "name: action; action; ..." as shown by ``Decision.explain``.
    summary: str
    tags: tuple[str, ...] = ()
    intent: str | None = None
    priority: str | None = None
    open_ticket: bool = False
    team: str | None = None
    queue: str | None = None
    assignee: str | None = None
    draft: str | None = None
    escalations: tuple[str, ...] = ()
    ignore: bool = False
    stop: bool = False
    check: Check = field(default=_never, repr=False, compare=False)

    def matches(self, ctx: RuleContext) -> bool:
        """Whether this rule's condition holds for ``ctx``."""
        return self.check(_Msg(ctx))


class RuleSet:
    """Rules from one or more files, in order, ready to evaluate messages."""

    def __init__(
        self,
        rules: Sequence[Rule],
        text_checks: Sequence[Check] = (),
        paths: Sequence[Path] = (),
        fingerprint: str = "",
        text_sites: Sequence[TextSite] = (),
    ) -> None:
        self.rules: list[Rule] = list(rules)
        self._text_checks = tuple(text_checks)
        self._text_sites = tuple(text_sites)
        # Keyword and phrase conditions are answered from one pass over the message's words:
        # a word sets the bits of the conditions that hold it; a term (a phrase, a keyword with
        # punctuation) is searched for only when the message has every word of it. The other
        # text conditions (regexes) run their own check.
        self._word_bits: dict[str, int] = {}
        # The same term or regex in several conditions is searched for once: each search is
        # kept with the bits of every condition it answers.
        terms: dict[str, dict[tuple[frozenset[str], Search], int]] = {}
        wordless: dict[Search, int] = {}
        others: dict[Hashable, tuple[int, Check]] = {}
        for i, read in enumerate(self._text_checks):
            index = getattr(read, "index", None)
            if not isinstance(index, _TextIndex):
                same = getattr(read, "same", None)
                key = read if same is None else same
                bits, first = others.get(key, (0, read))
                others[key] = (bits | 1 << i, first)
                continue
            for w in index.words:
                self._word_bits[w] = self._word_bits.get(w, 0) | 1 << i
            for need, search in index.terms:
                if need:
                    # Filed under its longest word, the one least likely to be in a message.
                    anchor = max(sorted(need), key=len)
                    filed = terms.setdefault(anchor, {})
                    filed[need, search] = filed.get((need, search), 0) | 1 << i
                else:
                    wordless[search] = wordless.get(search, 0) | 1 << i
        # Under its anchor, a term is filed again under its next longest word: a message's
        # words pick the terms it can hold with one intersection, not a test per term.
        self._terms: dict[str, tuple[list[tuple[int, Search]], _Seconds]] = {}
        for anchor, filed in terms.items():
            alone: list[tuple[int, Search]] = []
            seconds: _Seconds = {}
            for (need, search), bits in filed.items():
                rest = need - {anchor}
                if not rest:
                    alone.append((bits, search))
                else:
                    second = max(sorted(rest), key=len)
                    seconds.setdefault(second, []).append((bits, need, search))
            self._terms[anchor] = (alone, seconds)
        self._wordless_terms: list[tuple[int, Search]] = [(b, s) for s, b in wordless.items()]
        self._other_checks: list[tuple[int, Check]] = list(others.values())
        self._anchors = frozenset(self._terms)
        self._indexed_words = frozenset(self._word_bits)
        #: Per condition, a number for what it looks for (see ``fact_keys``).
        self._fact_keys = tuple(_fact_key(read) for read in self._text_checks)
        #: The files the rules came from, and a hash of their contents: two rule sets with the
        #: same fingerprint number their text conditions alike.
        self.paths = tuple(paths)
        self.fingerprint = fingerprint

    def text_facts(self, text: str) -> int:
        """Which of the rules' text conditions hold for ``text``, as bits (see RuleContext)."""
        m = _Msg(_NO_MESSAGE, text)  # text conditions read the text alone
        words = m.words
        folded = m.text
        facts = 0
        bits = self._word_bits
        # Only the message's words some condition holds: the intersection is taken in C,
        # and most of a message's words are in no condition.
        for w in self._indexed_words.intersection(words):
            facts |= bits[w]
        for w in self._anchors.intersection(words):
            alone, seconds = self._terms[w]
            for held, search in alone:
                if facts & held != held and search(folded) is not None:
                    facts |= held
            for second in seconds.keys() & words:
                for held, need, search in seconds[second]:
                    if facts & held != held and need <= words and search(folded) is not None:
                        facts |= held
        for held, search in self._wordless_terms:
            if facts & held != held and search(folded) is not None:
                facts |= held
        for held, read in self._other_checks:
            if read(m):
                facts |= held
        return facts

    @property
    def condition_keys(self) -> frozenset[int]:
        """The number of each distinct text condition (see ``fact_keys``)."""
        return frozenset(self._fact_keys)

    @property
    def conditions_key(self) -> str:
        """A hash of what the text conditions look for, whatever their order, file or rule:
        a model that reads them (``fact_keys``) was trained beside rules with this key."""
        keys = ",".join(map(str, sorted(self.condition_keys)))
        return hashlib.sha256(keys.encode()).hexdigest()[:16]

    def fact_keys(self, facts: int) -> tuple[int, ...]:
        """A number for each text condition that holds in ``facts``, taken from what the
        condition looks for (its words, phrases or regexes), not from where it stands: the
        same condition has the same number in any rule, in any version of the rule files.
        A triage model learns from these, so an edit to the rules changes what it reads of
        the edited conditions alone."""
        keys = self._fact_keys
        out = []
        while facts:
            low = facts & -facts
            out.append(keys[low.bit_length() - 1])
            facts ^= low
        # A condition in several rules holds once.
        return tuple(dict.fromkeys(out))

    @classmethod
    def load(cls, paths: Sequence[Path]) -> RuleSet:
        """Load rule files in order; raise RuleError listing every problem found."""
        problems: list[str] = []
        seen: dict[str, str] = {}
        rules: list[Rule] = []
        text_checks: list[Check] = []
        sites: list[TextSite] = []
        digest = hashlib.sha256()
        for path in paths:
            try:
                doc = yamldoc.load(path)
            except YamlError as err:
                problems.append(str(err))
                continue
            digest.update(f"{path}\0{doc.text}\0".encode())
            rules.extend(_Compiler(doc, problems, text_checks, sites).rule_file(seen))
        if problems:
            raise RuleError(problems)
        return cls(rules, text_checks, paths, digest.hexdigest(), sites)

    @classmethod
    def from_text(cls, text: str, source: str = "<rules>") -> RuleSet:
        """Load rules from YAML text; ``source`` names it in errors."""
        try:
            doc = yamldoc.loads(text, source)
        except YamlError as err:
            raise RuleError(str(err)) from err
        problems: list[str] = []
        text_checks: list[Check] = []
        sites: list[TextSite] = []
        rules = _Compiler(doc, problems, text_checks, sites).rule_file({})
        if problems:
            raise RuleError(problems)
        return cls(rules, text_checks, (), hashlib.sha256(text.encode()).hexdigest(), sites)

    def evaluate(self, ctx: RuleContext) -> Decision:
        """Run every rule against one message and combine what the matching ones do."""
        m = _Msg(ctx)
        d = Decision()
        rank = -1
        for rule in self.rules:
            if not rule.check(m):
                continue
            d.matched.append(rule.name)
            d.trail.append(rule.summary)
            for tag in rule.tags:
                if tag not in d.tags:
                    d.tags.append(tag)
            if rule.intent is not None:
                d.intent = rule.intent
            if rule.priority is not None and PRIORITIES.index(rule.priority) > rank:
                rank = PRIORITIES.index(rule.priority)
                d.priority = rule.priority
            if rule.open_ticket:
                d.open_ticket = True
                if rule.team is not None:
                    d.team = rule.team
                if rule.queue is not None:
                    d.queue = rule.queue
            if rule.assignee is not None:
                d.assignee = rule.assignee
            if rule.draft is not None:
                d.draft_template = rule.draft
            if rule.escalations:
                d.escalations.extend(rule.escalations)
            if rule.ignore:
                d.ignore = True
            if rule.stop:
                break
        if d.ignore:
            d.open_ticket = False
            d.draft_template = None
        return d

    def explain(self, ctx: RuleContext) -> Explanation:
        """What ``evaluate`` decides for ``ctx``, with each rule's outcome and the conditions on
        the text that hold in it (those written under a `not` hold against the rule)."""
        decision = self.evaluate(ctx)
        m = _Msg(replace(ctx, text_facts=None))
        by_rule: dict[str, dict[TextSite, Held]] = {}
        facts = ctx.text_facts if ctx.text_facts is not None else self.text_facts(ctx.text)
        for i, site in enumerate(self._text_sites):
            if not facts >> i & 1:
                continue
            by_rule.setdefault(site.rule, {}).setdefault(
                site, Held(site, _found(self._text_checks[i], m))
            )
        readings = []
        reached = True
        for rule in self.rules:
            matched = reached and rule.name in decision.matched
            outcome = "matched" if matched else "not matched" if reached else "not reached"
            held = tuple(by_rule.get(rule.name, {}).values())
            readings.append(RuleReading(rule, outcome, held))
            if matched and rule.stop:
                reached = False
        return Explanation(decision, tuple(readings))

    def template_names(self) -> set[str]:
        """Every reply template the rules draft with, so the caller can check they exist."""
        return {rule.draft for rule in self.rules if rule.draft is not None}


# --- compiling -----------------------------------------------------------------------------


class _Cond(NamedTuple):
    check: Check
    # Rough relative cost, so that `all`/`any` try cheap checks before text searches.
    cost: int
    #: For a condition on the text alone: its answer as a Python expression over ``f``, a
    #: message's text facts (None: the condition reads more than the text).
    facts: str | None = None


def _on_facts(expr: str, read: Check) -> Check:
    """A check of a condition on the text alone: from the message's text facts with one
    compiled expression where they were answered already (instead of a call per condition
    of the tree), else by ``read``, which reads the text."""
    # The expression is made here of bit numbers, operators and parentheses only.
    try:
        answer: Callable[[int], bool] = eval(f"lambda f: bool({expr})", {"bool": bool})
    except (SyntaxError, RecursionError, MemoryError):
        # Nested past what Python compiles in one expression: the tree answers, condition
        # by condition, from the same facts.
        return read

    def check(m: _Msg) -> bool:
        facts = m.facts
        return read(m) if facts is None else answer(facts)

    return check


Search = Callable[[str], re.Match[str] | None]
#: Terms filed by a word they need: (the conditions' bits, every word it needs, its search).
_Seconds = dict[str, list[tuple[int, frozenset[str], Search]]]


class _TextIndex(NamedTuple):
    """What a keyword or phrase condition looks for, so that ``RuleSet.text_facts`` can
    answer it from the message's words: whole words, and terms (phrases, keywords with
    punctuation) each with the words it cannot match without."""

    words: frozenset[str]
    terms: tuple[tuple[frozenset[str], Search], ...] = ()
    #: The terms as written (folded), sorted: what the condition looks for, with ``words``.
    written: tuple[str, ...] = ()


def _regexes(read: Check) -> tuple[tuple[str, int], ...] | None:
    """The (pattern, flags) of a regex condition's check; None for any other check."""
    same = getattr(read, "same", None)
    return same[1:] if isinstance(same, tuple) and same[:1] == ("regex",) else None


def _fact_key(read: Check) -> int:
    """A stable number for what a text condition looks for: the CRC-32 of a plain description
    (its words and terms, or its regexes), each list sorted, so that neither the order they
    are written in nor the Python version that reads them changes it."""
    index = getattr(read, "index", None)
    if isinstance(index, _TextIndex):
        what = "text\x1f" + "\x1e".join(sorted(index.words)) + "\x1f" + "\x1e".join(index.written)
    elif (regexes := _regexes(read)) is not None:
        what = "regex\x1f" + "\x1e".join(sorted(f"{flags}:{p}" for p, flags in regexes))
    else:
        raise TypeError(f"a text condition that says not what it looks for: {read!r}")
    return zlib.crc32(what.encode("utf-8", "surrogatepass"))


def _found(read: Check, m: _Msg) -> tuple[str, ...]:
    """What a text condition that holds found in ``m``: its words and terms as they stand in
    the folded text, or its regexes' matches in the raw text."""
    index = getattr(read, "index", None)
    if isinstance(index, _TextIndex):
        found = sorted(index.words & m.words)
        for _need, search in index.terms:
            if (hit := search(m.text)) is not None:
                found.append(hit[0])
        return tuple(dict.fromkeys(found))
    hits = (re.search(p, m.raw, flags) for p, flags in _regexes(read) or ())
    return tuple(dict.fromkeys(h[0] for h in hits if h is not None))


def _indexed(check: Check, words: frozenset[str], terms: Sequence[str] = ()) -> Check:
    """Attach to a check what it looks for (folded words, and folded terms)."""
    found = tuple((frozenset(_WORD.findall(t)), re.compile(_term_pattern(t)).search) for t in terms)
    check.index = _TextIndex(words, found, tuple(sorted(terms)))  # type: ignore[attr-defined]
    return check


def _any_word(wordset: frozenset[str]) -> Check:
    def check(m: _Msg) -> bool:
        return not wordset.isdisjoint(m.words)

    return _indexed(check, wordset)


def _fold(text: str) -> str:
    # Phones type a curly apostrophe; rule authors type a straight one.
    return text.casefold().replace("\u2019", "'")


def _got(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


def _term_pattern(term: str) -> str:
    """Regex for a folded term (words split by single spaces) standing as whole words."""
    head, rest = _term_parts(term)
    return head + rest


def _term_parts(term: str) -> tuple[str, str]:
    """A term's regex in two: its leading word characters with their boundary, and the rest."""
    body = r"\s+".join(re.escape(word) for word in term.split(" "))
    if _WORD.match(term[-1]):
        body += r"(?!\w)"
    # Whole words: no word character may touch an edge that is itself a word character. An
    # edge such as "?" or "#" gets no boundary, or "where is it?" could never match "?".
    lead = _WORD.match(term)
    if lead is None:
        return "", body
    # The left boundary is checked after the leading word characters, so the pattern starts
    # with a literal that re jumps to; a leading lookbehind is ten times slower.
    n = len(lead[0])
    return f"{body[:n]}(?<!\\w{body[:n]})", body[n:]


def _first_chars(pattern: re.Pattern[str]) -> frozenset[str] | None:
    """The characters one of which starts every match of ``pattern``, when they are few and
    have no case (so that IGNORECASE matches them only as themselves); else None."""
    # re's own parser (what re.compile reads a pattern with); anything it does not say
    # plainly below gets no shortcut.
    parser: Any = importlib.import_module("re._parser")
    c: Any = importlib.import_module("re._constants")
    try:
        parsed = parser.parse(pattern.pattern, pattern.flags)
    except Exception:
        return None

    def first(items: Any) -> set[str] | None:
        for op, arg in items:
            if op in (c.AT, c.ASSERT, c.ASSERT_NOT):  # zero-width: the match starts after
                continue
            if op is c.LITERAL:
                return {chr(arg)}
            if op is c.IN:
                found: set[str] = set()
                for kind, value in arg:
                    if kind is c.LITERAL:
                        found.add(chr(value))
                    elif kind is c.RANGE and value[1] - value[0] < 32:
                        found.update(map(chr, range(value[0], value[1] + 1)))
                    else:  # a negated set, a category, a wide range
                        return None
                return found
            if op is c.BRANCH:
                union: set[str] = set()
                for branch in arg[1]:
                    got = first(branch)
                    if got is None:
                        return None
                    union |= got
                return union
            if op is c.SUBPATTERN:
                _group, add_flags, del_flags, sub = arg
                return first(sub) if not add_flags and not del_flags else None
            if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and arg[0] >= 1:
                return first(arg[2])
            return None
        return None

    chars = first(parsed.data)
    if not chars or len(chars) > 16:
        return None
    if any(ch.lower() != ch or ch.upper() != ch or ch.casefold() != ch for ch in chars):
        return None
    return frozenset(chars)


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (expected one of: {', '.join(known)})"


def _all_of(conds: list[_Cond]) -> _Cond:
    conds = _text_together(conds, _all_of)
    conds = sorted(conds, key=lambda c: c.cost)
    cost = sum(c.cost for c in conds)
    checks = tuple(c.check for c in conds)
    if len(checks) == 1:
        return conds[0]
    check: Check
    if len(checks) == 2:
        a, b = checks
        check = lambda m: a(m) and b(m)  # noqa: E731
    else:

        def check(m: _Msg) -> bool:
            # A plain loop: all() over a generator costs more than the checks on this hot path.
            for c in checks:  # noqa: SIM110
                if not c(m):
                    return False
            return True

    return _text_alone(check, cost, conds, " and ")


def _any_of(conds: list[_Cond]) -> _Cond:
    conds = _text_together(conds, _any_of)
    conds = sorted(conds, key=lambda c: c.cost)
    cost = sum(c.cost for c in conds)
    checks = tuple(c.check for c in conds)
    if len(checks) == 1:
        return conds[0]
    check: Check
    if len(checks) == 2:
        a, b = checks
        check = lambda m: a(m) or b(m)  # noqa: E731
    else:

        def check(m: _Msg) -> bool:
            for c in checks:  # noqa: SIM110
                if c(m):
                    return True
            return False

    return _text_alone(check, cost, conds, " or ")


def _text_together(conds: list[_Cond], combine: Callable[[list[_Cond]], _Cond]) -> list[_Cond]:
    """The conditions on the text alone among ``conds`` as one (answered by one expression
    from the text facts), beside the others; the same answer, conditions having no effects."""
    text = [c for c in conds if c.facts is not None]
    if len(text) < 2 or len(text) == len(conds):
        return conds
    return [*(c for c in conds if c.facts is None), combine(text)]


def _not(cond: _Cond) -> _Cond:
    check = cond.check
    negated: Check = lambda m: not check(m)  # noqa: E731
    if cond.facts is None:
        return _Cond(negated, cond.cost)
    expr = f"(not {cond.facts})"
    return _Cond(_on_facts(expr, negated), cond.cost, expr)


def _text_alone(check: Check, cost: int, conds: Sequence[_Cond], op: str) -> _Cond:
    """``check`` combining ``conds``; when they all read the text alone, so does it, and it
    answers from the text facts in one expression."""
    if any(c.facts is None for c in conds):
        return _Cond(check, cost)
    expr = f"({op.join(c.facts for c in conds if c.facts is not None)})"
    return _Cond(_on_facts(expr, check), cost, expr)


def _phrases_after(searches: Mapping[str, Callable[[str], re.Match[str] | None]]) -> Check:
    leads = frozenset(searches)

    def check(m: _Msg) -> bool:
        if leads.isdisjoint(m.words):
            return False
        return any(searches[lead](m.text) is not None for lead in leads & m.words)

    return check


def _minute_of_day(m: _Msg) -> int:
    t = m.ctx.local_time
    return t.hour * 60 + t.minute


def _tier(m: _Msg) -> str | None:
    return m.ctx.customer_tier


def _segment(m: _Msg) -> str | None:
    return m.ctx.customer_segment


def _lifetime_value(m: _Msg) -> float:
    return m.ctx.lifetime_value


def _in_names(wanted: frozenset[str], get: Callable[[_Msg], str | None]) -> Check:
    def check(m: _Msg) -> bool:
        value = get(m)
        return value is not None and value.casefold() in wanted

    return check


def _sentiment_within(above: float | None, below: float | None) -> Check:
    lo = -2.0 if above is None else above
    hi = 2.0 if below is None else below

    def check(m: _Msg) -> bool:
        s = m.ctx.sentiment
        return s is not None and lo < s < hi

    return check


def _within(get: Callable[[_Msg], float], at_least: float | None, below: float | None) -> Check:
    lo = float("-inf") if at_least is None else at_least
    hi = float("inf") if below is None else below
    return lambda m: lo <= get(m) < hi


def _triage_confidence(m: _Msg) -> float:
    c = m.ctx.triage_confidence
    return float("nan") if c is None else c  # NaN: no bound holds without a model


def _is_new(want: bool) -> Check:
    return lambda m: m.ctx.customer_is_new is want


def _any_tag(wanted: frozenset[str]) -> Check:
    return lambda m: any(t.casefold() in wanted for t in m.ctx.customer_tags)


def _all_tags(wanted: frozenset[str]) -> Check:
    return lambda m: wanted <= {t.casefold() for t in m.ctx.customer_tags}


@dataclass
class _Effect:
    """What a rule's actions add up to, while they are read."""

    said: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    intent: str | None = None
    priority: str | None = None
    open_ticket: bool = False
    team: str | None = None
    queue: str | None = None
    assignee: str | None = None
    draft: str | None = None
    escalations: list[str] = field(default_factory=list)
    ignore: bool = False
    stop: bool = False


class _Compiler:
    """Turns parsed YAML into checks, collecting every problem rather than stopping at one."""

    def __init__(
        self,
        doc: YamlDoc,
        problems: list[str],
        text_checks: list[Check] | None = None,
        text_sites: list[TextSite] | None = None,
    ) -> None:
        self.doc = doc
        self.problems = problems
        #: Every condition on the text, numbered: bit i of a message's text facts is check i.
        self.text_checks = text_checks if text_checks is not None else []
        #: Where each of them is written, in the same order (for ``RuleSet.explain``).
        self.text_sites = text_sites if text_sites is not None else []
        #: The rule being compiled.
        self.rule_name = ""

    def text_cond(self, cond: _Cond, loc: Loc) -> _Cond:
        """Number a text condition so its answer can come precomputed in ``text_facts``."""
        bit = 1 << len(self.text_checks)
        read = cond.check
        self.text_checks.append(read)
        self.text_sites.append(
            # Under an odd number of `not`s the condition holding keeps its rule from matching.
            TextSite(self.rule_name, self.doc.where(loc), str(loc[-1]), loc.count("not") % 2 == 1)
        )

        def check(m: _Msg) -> bool:
            facts = m.facts
            return read(m) if facts is None else bool(facts & bit)

        return _Cond(check, cond.cost, f"(f & {bit})")

    def problem(self, loc: Loc, message: str) -> None:
        self.problems.append(f"{self.doc.where(loc)}: {format_loc(loc)}: {message}")

    # -- plain values

    def string(self, value: Any, loc: Loc, what: str = "a string") -> str | None:
        if isinstance(value, str) and value.strip():
            return value.strip()
        self.problem(loc, f"expected {what}, got {_got(value)}")
        return None

    def strings(self, value: Any, loc: Loc) -> list[tuple[Loc, str]] | None:
        """A string or a non-empty list of strings, each with where it stood."""
        if isinstance(value, str):
            items: list[tuple[Loc, Any]] = [(loc, value)]
        elif isinstance(value, list) and value:
            items = [((*loc, i), v) for i, v in enumerate(value)]
        else:
            what = "an empty list" if value == [] else _got(value)
            self.problem(loc, f"expected a string or a list of strings, got {what}")
            return None
        out = []
        for item_loc, v in items:
            s = self.string(v, item_loc, "a non-empty string")
            if s is not None:
                out.append((item_loc, s))
        return out if len(out) == len(items) else None

    def boolean(self, value: Any, loc: Loc) -> bool | None:
        if isinstance(value, bool):
            return value
        self.problem(loc, f"expected true or false, got {_got(value)}")
        return None

    def number(
        self, value: Any, loc: Loc, lo: float | None = None, hi: float | None = None
    ) -> float | None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if lo is not None and hi is not None and not lo <= value <= hi:
                self.problem(loc, f"must be between {lo:g} and {hi:g}, got {value!r}")
                return None
            if lo is not None and value < lo:
                self.problem(loc, f"must be at least {lo:g}, got {value!r}")
                return None
            return float(value)
        self.problem(loc, f"expected a number, got {_got(value)}")
        return None

    def mapping(self, value: Any, loc: Loc, keys: Sequence[str], what: str) -> dict[str, Any]:
        """The known keys of a mapping; unknown keys and non-mappings are problems."""
        if not isinstance(value, dict):
            self.problem(loc, f"{what} must be a mapping with {', '.join(keys)}; got {_got(value)}")
            return {}
        if not value:
            self.problem(loc, f"empty {what}: give at least one of {', '.join(keys)}")
        out = {}
        for key, v in value.items():
            if key in keys:
                out[key] = v
            else:
                self.problem(
                    (*loc, str(key)), f"unknown {what} setting {key!r}{_suggest(str(key), keys)}"
                )
        return out

    # -- conditions

    def condition(self, value: Any, loc: Loc) -> _Cond | None:
        if not isinstance(value, dict):
            self.problem(
                loc, f"a condition must be a mapping such as {{channel: [x]}}, got {_got(value)}"
            )
            return None
        if not value:
            self.problem(loc, "empty condition: give at least one condition")
            return None
        parts: list[_Cond] = []
        ok = True
        for key, v in value.items():
            sub = self.condition_key(str(key), v, (*loc, str(key)))
            if sub is None:
                ok = False
            else:
                parts.append(sub)
        return _all_of(parts) if ok else None

    def condition_key(self, key: str, value: Any, loc: Loc) -> _Cond | None:
        match key:
            case "keywords":
                return self.keywords(value, loc)
            case "phrases":
                return self.phrases(value, loc)
            case "regex":
                return self.regex(value, loc)
            case "sentiment":
                return self.sentiment(value, loc)
            case "channel":
                return self.channel(value, loc)
            case "source":
                wanted = self.names(value, loc)
                return (
                    None
                    if wanted is None
                    else _Cond(lambda m: m.ctx.source.casefold() in wanted, 1)
                )
            case "lang":
                return self.lang(value, loc)
            case "customer":
                return self.customer(value, loc)
            case "followers":
                return self.bounds(value, loc, "followers", lambda m: m.ctx.followers)
            case "ticket_open":
                want = self.boolean(value, loc)
                return None if want is None else _Cond(lambda m: m.ctx.has_open_ticket is want, 1)
            case "direct":
                want = self.boolean(value, loc)
                return None if want is None else _Cond(lambda m: m.ctx.direct is want, 1)
            case "time":
                return self.time(value, loc)
            case "triage":
                return self.triage(value, loc)
            case "needs_reply":
                want = self.boolean(value, loc)
                return None if want is None else _Cond(lambda m: m.ctx.needs_reply is want, 1)
            case "triage_confidence":
                return self.bounds(value, loc, "triage_confidence", _triage_confidence)
            case "all" | "any":
                return self.combine(key, value, loc)
            case "not":
                inner = self.condition(value, loc)
                return None if inner is None else _not(inner)
        self.problem(loc, f"unknown condition {key!r}{_suggest(key, _CONDITIONS)}")
        return None

    def combine(self, key: str, value: Any, loc: Loc) -> _Cond | None:
        if not isinstance(value, list) or not value:
            what = "an empty list" if value == [] else _got(value)
            self.problem(loc, f"`{key}` takes a non-empty list of conditions, got {what}")
            return None
        parts = [self.condition(v, (*loc, i)) for i, v in enumerate(value)]
        good = [p for p in parts if p is not None]
        if len(good) != len(parts):
            return None
        return _all_of(good) if key == "all" else _any_of(good)

    def names(self, value: Any, loc: Loc) -> frozenset[str] | None:
        items = self.strings(value, loc)
        return None if items is None else frozenset(s.casefold() for _, s in items)

    def keywords(self, value: Any, loc: Loc) -> _Cond | None:
        items = self.strings(value, loc)
        if items is None:
            return None
        words: set[str] = set()
        terms: list[str] = []
        ok = True
        for item_loc, raw in items:
            kw = _fold(raw)
            if any(ch.isspace() for ch in kw):
                self.problem(item_loc, f"keywords are single words; put {raw!r} under `phrases`")
                ok = False
            elif _PLAIN_WORD.fullmatch(kw):
                words.add(kw)
            else:
                terms.append(kw)
        if not ok:
            return None
        wordset = frozenset(words)
        if not terms:
            return self.text_cond(_Cond(_any_word(wordset), 2), loc)
        search = re.compile("|".join(map(_term_pattern, terms))).search
        if not wordset:
            check: Check = lambda m: search(m.text) is not None  # noqa: E731
            return self.text_cond(_Cond(_indexed(check, wordset, terms), 3), loc)
        check = lambda m: not wordset.isdisjoint(m.words) or search(m.text) is not None  # noqa: E731
        return self.text_cond(_Cond(_indexed(check, wordset, terms), 4), loc)

    def phrases(self, value: Any, loc: Loc) -> _Cond | None:
        items = self.strings(value, loc)
        if items is None:
            return None
        # Phrases are grouped by the run of word characters they start with ("where" for
        # "where's my order"). A phrase can only match where that run is a whole word of the
        # message, so most messages need no regex at all; the rest run one regex per group,
        # which starts with the lead as a literal that re can jump to.
        by_lead: dict[str, list[str]] = {}
        others: list[str] = []
        phrases: list[str] = []
        for _, raw in items:
            phrase = " ".join(_fold(raw).split())
            phrases.append(phrase)
            lead = _WORD.match(phrase)
            if lead is None:
                others.append(_term_pattern(phrase))
            else:
                head, rest = _term_parts(phrase)
                by_lead.setdefault(lead[0], [head]).append(rest)
        searches = {
            lead: re.compile(f"{head}(?:{'|'.join(rests)})").search
            for lead, (head, *rests) in by_lead.items()
        }
        lead_check = _phrases_after(searches)
        if not others:
            return self.text_cond(_Cond(_indexed(lead_check, frozenset(), phrases), 3), loc)
        search = re.compile("|".join(others)).search
        check: Check = lambda m: lead_check(m) or search(m.text) is not None  # noqa: E731
        return self.text_cond(_Cond(_indexed(check, frozenset(), phrases), 4), loc)

    def regex(self, value: Any, loc: Loc) -> _Cond | None:
        items = self.strings(value, loc)
        if items is None:
            return None
        compiled = []
        for item_loc, raw in items:
            try:
                compiled.append(re.compile(raw, re.IGNORECASE))
            except re.error as err:
                self.problem(item_loc, f"invalid regex {raw!r}: {err.msg} at position {err.pos}")
        if len(compiled) != len(items):
            return None
        if len(compiled) == 1:
            search = compiled[0].search
            check: Check = lambda m: search(m.raw) is not None  # noqa: E731
        else:
            searches = tuple(p.search for p in compiled)
            check = lambda m: any(s(m.raw) is not None for s in searches)  # noqa: E731
        firsts = [_first_chars(p) for p in compiled]
        if all(f is not None for f in firsts):
            # Every match starts with one of a few characters: a text with none of them is
            # passed over with a find per character, not a scan by the regex engine.
            starts = tuple(sorted(frozenset().union(*(f for f in firsts if f is not None))))
            read = check
            check = lambda m: any(c in m.raw for c in starts) and read(m)  # noqa: E731
        # Conditions with the same regexes hold together (``RuleSet.text_facts`` reads once).
        check.same = ("regex", *((p.pattern, p.flags) for p in compiled))  # type: ignore[attr-defined]
        return self.text_cond(_Cond(check, 3), loc)

    def sentiment(self, value: Any, loc: Loc) -> _Cond | None:
        spec = self.mapping(value, loc, ("below", "above", "unscored"), "sentiment")
        if not spec:
            return None
        below = above = None
        if "below" in spec:
            below = self.number(spec["below"], (*loc, "below"), -1, 1)
        if "above" in spec:
            above = self.number(spec["above"], (*loc, "above"), -1, 1)
        if "unscored" in spec:
            unscored = self.boolean(spec["unscored"], (*loc, "unscored"))
            if unscored is None:
                return None
            if "below" in spec or "above" in spec:
                self.problem(
                    (*loc, "unscored"), "`unscored` cannot be combined with `below` or `above`"
                )
                return None
            return _Cond(lambda m: (m.ctx.sentiment is None) is unscored, 1)
        if ("below" in spec and below is None) or ("above" in spec and above is None):
            return None
        if below is not None and above is not None and below <= above:
            self.problem(loc, f"never matches: below {below:g} is not above {above:g}")
            return None
        return _Cond(_sentiment_within(above, below), 1)

    def channel(self, value: Any, loc: Loc) -> _Cond | None:
        items = self.strings(value, loc)
        if items is None:
            return None
        ok = True
        for item_loc, name in items:
            if name not in CHANNELS:
                self.problem(item_loc, f"unknown channel {name!r}{_suggest(name, CHANNELS)}")
                ok = False
        wanted = frozenset(name for _, name in items)
        return _Cond(lambda m: m.ctx.channel in wanted, 1) if ok else None

    def lang(self, value: Any, loc: Loc) -> _Cond | None:
        wanted = self.names(value, loc)
        if wanted is None:
            return None

        def check(m: _Msg) -> bool:
            lang = m.ctx.lang
            if lang is None:
                return False
            lang = lang.casefold()
            return lang in wanted or lang.split("-", 1)[0] in wanted

        return _Cond(check, 1)

    def bounds(self, value: Any, loc: Loc, what: str, get: Callable[[_Msg], float]) -> _Cond | None:
        spec = self.mapping(value, loc, ("at_least", "below"), what)
        if not spec:
            return None
        lo = hi = None
        if "at_least" in spec:
            lo = self.number(spec["at_least"], (*loc, "at_least"))
        if "below" in spec:
            hi = self.number(spec["below"], (*loc, "below"))
        if ("at_least" in spec and lo is None) or ("below" in spec and hi is None):
            return None
        if lo is not None and hi is not None and hi <= lo:
            self.problem(loc, f"never matches: below {hi:g} is not above at_least {lo:g}")
            return None
        return _Cond(_within(get, lo, hi), 1)

    def triage(self, value: Any, loc: Loc) -> _Cond | None:
        items = self.strings(value, loc)
        if items is None:
            return None
        wanted = set()
        for where, name in items:
            if name.lower() not in TRIAGE_CLASSES:
                self.problem(where, f"triage: one of {', '.join(TRIAGE_CLASSES)}, got {name!r}")
                return None
            wanted.add(name.lower())
        found = frozenset(wanted)
        return _Cond(lambda m: m.ctx.triage in found, 1)

    def customer(self, value: Any, loc: Loc) -> _Cond | None:
        keys = ("tier", "segment", "lifetime_value", "tags", "new")
        spec = self.mapping(value, loc, keys, "customer")
        if not spec:
            return None
        parts: list[_Cond | None] = []
        for key, v in spec.items():
            sub_loc = (*loc, key)
            if key == "tier":
                tiers = self.names(v, sub_loc)
                parts.append(None if tiers is None else _Cond(_in_names(tiers, _tier), 1))
            elif key == "segment":
                segments = self.names(v, sub_loc)
                parts.append(None if segments is None else _Cond(_in_names(segments, _segment), 1))
            elif key == "lifetime_value":
                parts.append(self.bounds(v, sub_loc, "lifetime_value", _lifetime_value))
            elif key == "tags":
                parts.append(self.customer_tags(v, sub_loc))
            else:
                want = self.boolean(v, sub_loc)
                parts.append(None if want is None else _Cond(_is_new(want), 1))
        good = [p for p in parts if p is not None]
        return _all_of(good) if len(good) == len(parts) else None

    def customer_tags(self, value: Any, loc: Loc) -> _Cond | None:
        spec = self.mapping(value, loc, ("any", "all"), "customer tags")
        if not spec:
            return None
        parts: list[_Cond | None] = []
        for key, v in spec.items():
            wanted = self.names(v, (*loc, key))
            if wanted is None:
                parts.append(None)
            elif key == "any":
                parts.append(_Cond(_any_tag(wanted), 1))
            else:
                parts.append(_Cond(_all_tags(wanted), 1))
        good = [p for p in parts if p is not None]
        return _all_of(good) if len(good) == len(parts) else None

    def time(self, value: Any, loc: Loc) -> _Cond | None:
        spec = self.mapping(value, loc, ("between", "days"), "time")
        if not spec:
            return None
        parts: list[_Cond | None] = []
        if "between" in spec:
            parts.append(self.between(spec["between"], (*loc, "between")))
        if "days" in spec:
            parts.append(self.days(spec["days"], (*loc, "days")))
        good = [p for p in parts if p is not None]
        return _all_of(good) if len(good) == len(parts) else None

    def between(self, value: Any, loc: Loc) -> _Cond | None:
        if not isinstance(value, list) or len(value) != 2:
            self.problem(loc, f'expected two times like ["18:00", "08:00"], got {_got(value)}')
            return None
        start, end = (self.clock(v, (*loc, i)) for i, v in enumerate(value))
        if start is None or end is None:
            return None
        if start == end:
            self.problem(loc, "start and end are the same time; leave `between` out for all day")
            return None
        if start < end:
            return _Cond(lambda m: start <= _minute_of_day(m) < end, 1)
        # Start after end: the window runs across midnight.
        return _Cond(lambda m: not end <= _minute_of_day(m) < start, 1)

    def clock(self, value: Any, loc: Loc) -> int | None:
        """Minutes since midnight of an "HH:MM" string."""
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML 1.1 reads an unquoted 18:00 as the base-60 number 1080.
            read = f" (YAML read {value // 60}:{value % 60:02d} as the number {value})"
            self.problem(loc, f'write times as quoted strings like "18:00"{read * (value >= 60)}')
            return None
        match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
        if match is None or int(match[1]) > 23 or int(match[2]) > 59:
            self.problem(loc, f'expected a time of day "HH:MM" (00:00 to 23:59), got {_got(value)}')
            return None
        return int(match[1]) * 60 + int(match[2])

    def days(self, value: Any, loc: Loc) -> _Cond | None:
        items = self.strings(value, loc)
        if items is None:
            return None
        wanted = set()
        ok = True
        for item_loc, name in items:
            day = name.casefold()
            if day in DAYS:
                wanted.add(DAYS.index(day))
            elif day in _DAY_NAMES:
                wanted.add(_DAY_NAMES.index(day))
            else:
                self.problem(item_loc, f"unknown day {name!r} (expected {', '.join(DAYS)})")
                ok = False
        if not ok:
            return None
        weekdays = frozenset(wanted)
        return _Cond(lambda m: m.ctx.local_time.weekday() in weekdays, 1)

    # -- rules and actions

    def rule(self, value: Any, loc: Loc, seen: dict[str, str]) -> Rule | None:
        if not isinstance(value, dict):
            self.problem(
                loc, f"a rule must be a mapping with name, when and then; got {_got(value)}"
            )
            return None
        ok = True
        for key in value:
            if key not in _RULE_KEYS:
                self.problem(
                    (*loc, str(key)),
                    f"unknown rule setting {key!r}{_suggest(str(key), _RULE_KEYS)}",
                )
                ok = False
        name = None
        if "name" not in value:
            self.problem(loc, "missing `name`")
        else:
            name = self.string(value["name"], (*loc, "name"), "a rule name")
            if name is not None and not _NAME.fullmatch(name):
                self.problem(
                    (*loc, "name"),
                    f"rule names use letters, digits and - _ . : (no spaces), got {name!r}",
                )
                name = None
            elif name is not None and name in seen:
                self.problem(
                    (*loc, "name"), f"duplicate rule name {name!r} (first defined at {seen[name]})"
                )
                name = None
            elif name is not None:
                seen[name] = self.doc.where(loc)
        self.rule_name = name or ""
        description = None
        if value.get("description") is not None:
            description = self.string(value["description"], (*loc, "description"))
        cond = None
        if "when" not in value:
            self.problem(loc, "missing `when`")
        elif value["when"] is None or value["when"] == {}:
            self.problem((*loc, "when"), "empty `when`: give at least one condition")
        else:
            cond = self.condition(value["when"], (*loc, "when"))
        effect = None
        if "then" not in value or value["then"] is None:
            self.problem(loc if "then" not in value else (*loc, "then"), "missing `then` actions")
        else:
            effect = self.actions(value["then"], (*loc, "then"), description or name or "")
        if not ok or name is None or cond is None or effect is None:
            return None
        return Rule(
            name=name,
            description=description,
            source=self.doc.where(loc),
            summary=f"{name}: {'; '.join(effect.said)}",
            tags=tuple(dict.fromkeys(effect.tags)),
            intent=effect.intent,
            priority=effect.priority,
            open_ticket=effect.open_ticket,
            team=effect.team,
            queue=effect.queue,
            assignee=effect.assignee,
            draft=effect.draft,
            escalations=tuple(effect.escalations),
            ignore=effect.ignore,
            stop=effect.stop,
            check=cond.check,
        )

    def actions(self, value: Any, loc: Loc, default_reason: str) -> _Effect | None:
        if not isinstance(value, list) or not value:
            what = "an empty list" if value == [] else _got(value)
            self.problem(loc, f"`then` takes a non-empty list of actions, got {what}")
            return None
        effect = _Effect()
        ok = True
        for i, item in enumerate(value):
            item_loc = (*loc, i)
            if isinstance(item, str):
                if item not in _BARE_ACTIONS:
                    hint = (
                        f"`{item}` needs a value, e.g. `- {item}: ...`"
                        if item in _ACTIONS
                        else f"unknown action {item!r}{_suggest(item, _ACTIONS)}"
                    )
                    self.problem(item_loc, hint)
                    ok = False
                    continue
                key, arg, arg_loc = item, None, item_loc
            elif isinstance(item, dict) and len(item) == 1:
                key, arg = next(iter(item.items()))
                key = str(key)
                arg_loc = (*item_loc, key)
            elif isinstance(item, dict) and len(item) > 1:
                keys = ", ".join(map(str, item))
                self.problem(
                    item_loc, f"one action per list item (give each of {keys} its own `-`)"
                )
                ok = False
                continue
            else:
                self.problem(item_loc, f"an action is a name or `name: value`, got {_got(item)}")
                ok = False
                continue
            if not self.action(key, arg, arg_loc, effect, default_reason):
                ok = False
        if effect.ignore and (effect.open_ticket or effect.draft):
            self.problem(loc, "`ignore` contradicts `open_ticket` and `draft` in the same rule")
            ok = False
        return effect if ok else None

    def action(self, key: str, arg: Any, loc: Loc, effect: _Effect, default_reason: str) -> bool:
        """Fold one action into ``effect``; False when it is not valid."""
        if key in ("stop", "ignore"):
            if arg is not None and arg is not True:
                self.problem(loc, f"`{key}` takes no value; write `- {key}`")
                return False
            if key == "stop":
                effect.stop = True
            else:
                effect.ignore = True
            effect.said.append(key)
        elif key == "open_ticket":
            spec = {}
            if arg is not None and arg is not True:
                spec = self.mapping(arg, loc, ("team", "queue"), "open_ticket")
                if not spec:
                    return False
            team = queue = None
            if "team" in spec:
                team = self.string(spec["team"], (*loc, "team"), "a team name")
            if "queue" in spec:
                queue = self.string(spec["queue"], (*loc, "queue"), "a queue name")
            if ("team" in spec and team is None) or ("queue" in spec and queue is None):
                return False
            effect.open_ticket = True
            effect.team = team or effect.team
            effect.queue = queue or effect.queue
            where = [f"{part} {name}" for part, name in (("team", team), ("queue", queue)) if name]
            effect.said.append(f"open ticket ({', '.join(where)})" if where else "open ticket")
        elif key == "escalate":
            reason = default_reason if arg is None else self.string(arg, loc, "a reason")
            if reason is None:
                return False
            effect.escalations.append(reason)
            effect.said.append(f"escalate {reason!r}")
        elif key == "tag":
            items = self.strings(arg, loc)
            if items is None:
                return False
            effect.tags.extend(tag for _, tag in items)
            effect.said.append(f"tag {', '.join(tag for _, tag in items)}")
        elif key == "priority":
            if arg not in PRIORITIES:
                self.problem(
                    loc, f"priority must be one of {', '.join(PRIORITIES)}, got {_got(arg)}"
                )
                return False
            if effect.priority is None or PRIORITIES.index(arg) > PRIORITIES.index(effect.priority):
                effect.priority = arg
            effect.said.append(f"priority {arg}")
        elif key == "draft":
            template = self.string(arg, loc, "a template name")
            if template is None:
                return False
            if not _TEMPLATE.fullmatch(template):
                self.problem(loc, f"template names use letters, digits, - and _, got {template!r}")
                return False
            effect.draft = template
            effect.said.append(f"draft {template}")
        elif key == "intent":
            intent = self.string(arg, loc, "an intent name")
            if intent is None:
                return False
            effect.intent = intent
            effect.said.append(f"intent {intent}")
        elif key == "assign":
            assignee = self.string(arg, loc, "an assignee")
            if assignee is None:
                return False
            effect.assignee = assignee
            effect.said.append(f"assign {assignee}")
        else:
            self.problem(loc, f"unknown action {key!r}{_suggest(key, _ACTIONS)}")
            return False
        return True

    def rule_file(self, seen: dict[str, str]) -> list[Rule]:
        data = self.doc.data
        if not isinstance(data, dict) or "rules" not in data:
            hint = ""
            if isinstance(data, dict) and "tests" in data:
                hint = " (this looks like a rule tests file; those run with `run_rule_tests`)"
            elif data is None:
                hint = " (the file is empty)"
            self.problem((), f"a rule file must have a top-level `rules:` list{hint}")
            return []
        for key in data:
            if key != "rules":
                self.problem((str(key),), "unknown top-level key; a rule file holds only `rules:`")
        if not isinstance(data["rules"], list):
            self.problem(("rules",), f"`rules` must be a list of rules, got {_got(data['rules'])}")
            return []
        out = []
        for i, item in enumerate(data["rules"]):
            rule = self.rule(item, ("rules", i), seen)
            if rule is not None:
                out.append(rule)
        return out


# --- example-based rule tests ---------------------------------------------------------------

#: The moment a rule test's message arrives unless it gives ``local_time``: a Wednesday morning,
#: inside business hours, so that time rules stay quiet by default.
DEFAULT_TEST_TIME = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)

_TEST_KEYS = ("name", "message", "customer", "sentiment", "ticket_open", "local_time", "expect")
_MESSAGE_KEYS = ("text", "channel", "source", "lang", "direct", "followers")
_CUSTOMER_KEYS = ("tier", "segment", "lifetime_value", "tags", "new")
_EXPECT_KEYS = (
    "matched",
    "not_matched",
    "tags",
    "not_tags",
    "intent",
    "priority",
    "open_ticket",
    "team",
    "queue",
    "assignee",
    "draft",
    "escalate",
    "ignore",
)


@dataclass
class RuleTestResult:
    """The outcome of one example from a ``*.tests.yaml`` file."""

    name: str
    source: str
    passed: bool
    problems: list[str] = field(default_factory=list)


class _Expect(NamedTuple):
    where: str
    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class _RuleTest:
    name: str
    source: str
    ctx: RuleContext
    # False: work the sentiment out with the caller's scorer, as the pipeline would.
    sentiment_given: bool
    expectations: tuple[_Expect, ...]


class _TestCompiler(_Compiler):
    """Reads a rule tests file into runnable examples, collecting every problem."""

    def test_file(self, rule_names: set[str]) -> list[_RuleTest]:
        data = self.doc.data
        if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
            self.problem((), "a rule tests file must have a top-level `tests:` list")
            return []
        for key in data:
            if key != "tests":
                self.problem((str(key),), "unknown top-level key; a tests file holds only `tests:`")
        out = []
        seen: dict[str, str] = {}
        for i, item in enumerate(data["tests"]):
            test = self.test(item, ("tests", i), rule_names)
            if test is None:
                continue
            if test.name in seen:
                self.problem(
                    ("tests", i, "name"),
                    f"duplicate test name {test.name!r} (first at {seen[test.name]})",
                )
            seen[test.name] = test.source
            out.append(test)
        return out

    def test(self, value: Any, loc: Loc, rule_names: set[str]) -> _RuleTest | None:
        before = len(self.problems)
        spec = self.mapping(value, loc, _TEST_KEYS, "test")
        for key in ("name", "message", "expect"):
            if isinstance(value, dict) and key not in value:
                self.problem(loc, f"missing `{key}`")
        name = (
            self.string(spec.get("name"), (*loc, "name"), "a test name") if "name" in spec else ""
        )
        ctx = self.test_context(spec, loc)
        expectations: tuple[_Expect, ...] = ()
        if "expect" in spec:
            expectations = self.expectations(spec["expect"], (*loc, "expect"), rule_names)
        if len(self.problems) != before or name is None or ctx is None:
            return None
        return _RuleTest(name, self.doc.where(loc), ctx, "sentiment" in spec, expectations)

    def test_context(self, spec: dict[str, Any], loc: Loc) -> RuleContext | None:
        """The message a test describes; the sentiment stays None unless the test gives it."""
        before = len(self.problems)
        m_loc = (*loc, "message")
        message: dict[str, Any] = {}
        if "message" in spec:
            message = self.mapping(spec["message"], m_loc, _MESSAGE_KEYS, "message")
        text = message.get("text")
        if "message" in spec and "text" not in message:
            self.problem(m_loc, "missing `text`")
        elif "text" in message and not isinstance(text, str):
            self.problem((*m_loc, "text"), f"expected a string, got {_got(text)}")
        channel = message.get("channel")
        if "message" in spec and "channel" not in message:
            self.problem(m_loc, f"missing `channel` (one of: {', '.join(CHANNELS)})")
        elif "channel" in message and channel not in CHANNELS:
            self.problem(
                (*m_loc, "channel"),
                f"unknown channel {_got(channel)} (expected one of: {', '.join(CHANNELS)})",
            )
        source = self.optional_string(message, "source", m_loc) or str(channel)
        lang = self.optional_string(message, "lang", m_loc, "en")
        direct = self.boolean(message.get("direct", True), (*m_loc, "direct"))
        followers = self.number(message.get("followers", 0), (*m_loc, "followers"), 0)

        c_loc = (*loc, "customer")
        customer: dict[str, Any] = {}
        if "customer" in spec:
            customer = self.mapping(spec["customer"], c_loc, _CUSTOMER_KEYS, "customer")
        tier = self.optional_string(customer, "tier", c_loc)
        segment = self.optional_string(customer, "segment", c_loc)
        ltv = self.number(customer.get("lifetime_value", 0), (*c_loc, "lifetime_value"), 0)
        tags: list[tuple[Loc, str]] = []
        if "tags" in customer:
            tags = self.strings(customer["tags"], (*c_loc, "tags")) or []
        is_new = self.boolean(customer.get("new", False), (*c_loc, "new"))

        sentiment = None
        if spec.get("sentiment") is not None:
            sentiment = self.number(spec["sentiment"], (*loc, "sentiment"), -1, 1)
        ticket_open = self.boolean(spec.get("ticket_open", False), (*loc, "ticket_open"))
        local_time = self.local_time(spec.get("local_time"), (*loc, "local_time"))
        if len(self.problems) != before or not isinstance(text, str) or local_time is None:
            return None
        return RuleContext(
            text=text,
            channel=str(channel),
            source=source,
            sentiment=sentiment,
            lang=lang,
            customer_tier=tier,
            customer_segment=segment,
            lifetime_value=ltv or 0.0,
            customer_tags=frozenset(tag for _, tag in tags),
            customer_is_new=bool(is_new),
            followers=int(followers or 0),
            has_open_ticket=bool(ticket_open),
            local_time=local_time,
            direct=bool(direct),
        )

    def optional_string(
        self, spec: dict[str, Any], key: str, loc: Loc, default: str | None = None
    ) -> str | None:
        if spec.get(key) is None:
            return default if key not in spec else None
        return self.string(spec[key], (*loc, key))

    def local_time(self, value: Any, loc: Loc) -> datetime | None:
        if value is None:
            return DEFAULT_TEST_TIME
        when = value
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                when = None
        if not isinstance(when, datetime):
            self.problem(
                loc, f'expected a date and time like "2026-03-02T22:00", got {_got(value)}'
            )
            return None
        # Rules look at the wall clock only; a time without a zone is read as the brand's.
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)

    def expectations(self, value: Any, loc: Loc, rule_names: set[str]) -> tuple[_Expect, ...]:
        out = []
        for key, want in self.mapping(value, loc, _EXPECT_KEYS, "expect").items():
            key_loc = (*loc, key)
            before = len(self.problems)
            expected = self.expectation(key, want, key_loc, rule_names)
            if len(self.problems) == before:
                out.append(
                    _Expect(f"{self.doc.where(key_loc)}: {format_loc(key_loc)}", key, expected)
                )
        return tuple(out)

    def expectation(self, key: str, want: Any, loc: Loc, rule_names: set[str]) -> object:
        """The expected value in the form the runner compares; problems go to the list."""
        if key in ("matched", "not_matched", "tags", "not_tags"):
            items = self.strings(want, loc) or []
            if key.endswith("matched"):
                for item_loc, name in items:
                    if name not in rule_names:
                        self.problem(item_loc, f"no rule is named {name!r}")
            return tuple(s for _, s in items)
        if key in ("open_ticket", "ignore"):
            return self.boolean(want, loc)
        if key == "escalate":
            if isinstance(want, bool):
                return want
            return self.string(want, loc, "true, false or part of the reason")
        if want is None:
            return None
        if key == "priority" and want not in PRIORITIES:
            self.problem(loc, f"priority must be one of {', '.join(PRIORITIES)}, got {_got(want)}")
            return None
        return self.string(want, loc)


def run_rule_tests(
    ruleset: RuleSet, test_paths: Sequence[Path], score: Callable[[str], float | None]
) -> list[RuleTestResult]:
    """Run example-based rule tests; raise RuleError listing every problem in the test files."""
    problems: list[str] = []
    tests: list[_RuleTest] = []
    names = {rule.name for rule in ruleset.rules}
    for path in test_paths:
        try:
            doc = yamldoc.load(path)
        except YamlError as err:
            problems.append(str(err))
            continue
        tests.extend(_TestCompiler(doc, problems).test_file(names))
    if problems:
        raise RuleError(problems)
    results = []
    for test in tests:
        ctx = test.ctx
        if not test.sentiment_given:
            ctx = replace(ctx, sentiment=score(ctx.text))
        decision = ruleset.evaluate(ctx)
        found = [p for e in test.expectations if (p := _unmet(e, decision)) is not None]
        results.append(RuleTestResult(test.name, test.source, not found, found))
    return results


def _unmet(e: _Expect, d: Decision) -> str | None:
    """What is wrong with ``d`` against one expectation, or None when it holds."""
    want = e.value
    if e.key in ("matched", "not_matched"):
        wrong = [name for name in want if (name in d.matched) is (e.key == "not_matched")]
        if not wrong:
            return None
        problem = f"expected {', '.join(wrong)} {'not ' if e.key == 'not_matched' else ''}to match"
    elif e.key in ("tags", "not_tags"):
        wrong = [tag for tag in want if (tag in d.tags) is (e.key == "not_tags")]
        if not wrong:
            return None
        if e.key == "not_tags":
            problem = f"unexpected tags {', '.join(wrong)}"
        else:
            problem = f"missing tags {', '.join(wrong)} (tags: {', '.join(d.tags) or 'none'})"
    elif e.key == "escalate":
        got = "; ".join(d.escalations) or "none"
        if isinstance(want, bool):
            if bool(d.escalations) is want:
                return None
            problem = f"expected {'an' if want else 'no'} escalation, got {got}"
        elif any(want.casefold() in reason.casefold() for reason in d.escalations):
            return None
        else:
            problem = f"expected an escalation mentioning {want!r}, got {got}"
    else:
        value = {
            "intent": d.intent,
            "priority": d.priority,
            "open_ticket": d.open_ticket,
            "team": d.team,
            "queue": d.queue,
            "assignee": d.assignee,
            "draft": d.draft_template,
            "ignore": d.ignore,
        }[e.key]
        if value == want:
            return None
        problem = f"expected {_show(want)}, got {_show(value)}"
    return f"{e.where}: {problem} (rules matched: {', '.join(d.matched) or 'none'})"


def _show(value: object) -> str:
    """A value as it would be written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def find_rule_tests(rule_paths: Sequence[Path]) -> list[Path]:
    """The ``x.tests.yaml`` kept beside each rule file ``x.yaml``, where there is one."""
    found = []
    for path in rule_paths:
        if path.name.endswith(".tests" + path.suffix):
            continue
        candidate = path.with_name(f"{path.stem}.tests{path.suffix}")
        if candidate.is_file():
            found.append(candidate)
    return found
