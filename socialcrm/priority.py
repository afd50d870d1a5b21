"""Priority: strategically significant customers first.

A negative message from a high-value or high-reach customer outranks the same text from an
unknown account. The score is a sum of weighted parts, and the ticket keeps the parts in
words so a person can see why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from socialcrm.config import PriorityConfig

LABELS = ("low", "normal", "high", "urgent")
RANK = {label: i for i, label in enumerate(LABELS)}


@dataclass(frozen=True, slots=True)
class Priority:
    """A score, its label, and the parts it is made of."""

    score: float
    label: str
    #: Each part's points, and its words as a format string and the value it shows: most
    #: messages' reasons are never read, so the words are only formatted when they are.
    terms: tuple[tuple[float, str, object], ...]

    @property
    def parts(self) -> tuple[tuple[float, str], ...]:
        """Each part's points and its words: ``(19.0, "negative (-0.62)")``."""
        return tuple((points, words.format(value)) for points, words, value in self.terms)

    @property
    def reason(self) -> str:
        """Why, in words: ``score 74: negative (-0.62) +19, vip tier +25``."""
        shown = [f"{text} +{points:.0f}" for points, text in self.parts if points > 0]
        head = f"score {self.score:.0f}"
        return f"{head}: " + ", ".join(shown) if shown else head


def rank_sql(label: str) -> str:
    """A priority label (an SQL expression) as its rank in SQL: urgent highest, no label (or
    an unknown one) counted as normal. The one ranking every ordered list of drafts and
    tickets uses, on SQLite and PostgreSQL alike."""
    whens = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in RANK.items())
    return f"CASE {label} {whens} ELSE {RANK['normal']} END"


def higher(a: str | None, b: str | None) -> str | None:
    """The higher of two priority labels."""
    if a is None:
        return b
    if b is None:
        return a
    return a if RANK[a] >= RANK[b] else b


class PriorityModel:
    """Turns what we know of a message and its author into a priority."""

    def __init__(self, config: PriorityConfig) -> None:
        self.w = config.weights
        self.thresholds = sorted(config.thresholds.items(), key=lambda kv: -kv[1])

    def score(
        self,
        *,
        sentiment: float | None,
        lifetime_value: Decimal,
        tier: str,
        followers: int,
        rule_priority: str | None,
        escalated: bool,
    ) -> Priority:
        """Score one message; the label is at least what the rules asked for."""
        w = self.w
        parts: list[tuple[float, str, object]] = []
        if rule_priority is not None:
            parts.append((w.rule_priority.get(rule_priority, 0.0), "rules said {}", rule_priority))
        if sentiment is not None and sentiment < 0:
            parts.append((w.negative * -sentiment, "negative ({:+.2f})", sentiment))
        ltv = float(lifetime_value)
        if ltv > 0:
            parts.append(
                (
                    min(w.lifetime_value_cap, w.lifetime_value_per_1000 * ltv / 1000),
                    "value {:,.0f}",
                    ltv,
                )
            )
        if tier in w.tier:
            parts.append((w.tier[tier], "{} tier", tier))
        if followers > 100:
            reach = min(w.reach_cap, w.reach_per_decade * math.log10(followers / 100))
            parts.append((reach, "reach {:,} followers", followers))
        if escalated:
            parts.append((w.escalation, "escalated", None))
        total = round(sum(p for p, _, _ in parts), 1)
        # Normal unless the score says more; only the rules can say a message matters less.
        label = "low" if rule_priority == "low" else "normal"
        for name, threshold in self.thresholds:
            if total >= threshold:
                label = higher(label, name) or label
                break
        label = higher(label, rule_priority) or label
        return Priority(total, label, tuple(parts))
