"""Intents: how serious each reading of a message is, for tickets and reports."""

from __future__ import annotations

#: Intents from the most serious down: a ticket keeps the gravest reading of its messages,
#: so a "thanks" after a legal threat leaves the ticket a legal one. Unknown intents (a
#: custom rule's) rank with a question: above praise, below every named problem.
INTENT_GRAVITY = (
    "legal",
    "churn",
    "refund",
    "billing",
    "technical",
    "delivery",
    "complaint",
    "question",
    "praise",
)
#: Intents that say something is wrong (every one above a question).
PROBLEM_INTENTS = INTENT_GRAVITY[: INTENT_GRAVITY.index("question")]
_GRAVITY = {name: len(INTENT_GRAVITY) - i for i, name in enumerate(INTENT_GRAVITY)}
_UNKNOWN_GRAVITY = _GRAVITY["question"]


def graver_intent(a: str | None, b: str | None) -> str | None:
    """The more serious of two intents; the first on a tie."""
    if a is None or b is None:
        return a if b is None else b
    ga = _GRAVITY.get(a, _UNKNOWN_GRAVITY)
    gb = _GRAVITY.get(b, _UNKNOWN_GRAVITY)
    return a if ga >= gb else b
