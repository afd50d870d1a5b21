"""Times as people write them in config and chat: durations (``"90s"``, ``"5m"``, ``"1h30m"``,
``"7d"``) and time zones (``"Europe/Berlin"``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator

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


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError('expected a duration longer than 0s like "30m" (null: never)')
    return value


#: A :data:`Duration` longer than zero (for settings where null means "never").
PositiveDuration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive)]


def known_time_zone(name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows; a ValueError that says so if not."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f'expected a time zone like "Europe/Berlin", got "{name}"') from err
    return name


#: A pydantic field type for an IANA time zone name.
TimeZoneName = Annotated[str, AfterValidator(known_time_zone)]


def parse_period(text: str, longest: timedelta) -> timedelta:
    """A report period as typed (``"24h"``, ``"7d"``): between an hour and ``longest``."""
    try:
        span = parse_duration(text)
    except ValueError as err:
        raise ValueError(f"{err}, got {text!r}") from err
    if not timedelta(hours=1) <= span <= longest:
        raise ValueError(f"a report covers between 1h and {longest.days}d")
    return span
