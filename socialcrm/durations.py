"""Durations as people write them in config and chat: ``"90s"``, ``"5m"``, ``"1h30m"``, ``"7d"``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*)+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """``"90s"``, ``"5m"``, ``"1h30m"``, ``"7d"`` or a number of seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError('expected a duration like "60s"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError('expected a duration like "60s" (not negative)')
        return timedelta(seconds=value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", value):
        return timedelta(seconds=float(value))  # a bare number is seconds
    if isinstance(value, str) and _DURATION_RE.match(value):
        total = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(value))
        return timedelta(seconds=total)
    raise ValueError('expected a duration like "60s"')


#: A pydantic field type that takes any of the forms :func:`parse_duration` reads.
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
