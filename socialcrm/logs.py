"""Logging: one set-up for the daemon and the CLI, with timestamps, an optional JSON format,
and secrets redacted from every record whatever logger wrote it.

Libraries log what they send: tweepy's debug line carries the request headers, bearer token
included. Redaction therefore happens twice: a record factory cleans each record's message
as it is made (every logger, every handler), and the formatter cleans the finished line
(tracebacks and anything a handler adds). Two things are hidden: every secret value the
configuration holds (registered with :func:`add_secrets`), and whatever follows the usual
names of credentials in headers, query strings, JSON and reprs (``Authorization``,
``access_token=``, ``"password": ...``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

MASK = "[redacted]"
#: Shorter values are not redacted on their own (they would blank out ordinary words).
MIN_SECRET_CHARS = 6
LogFormat = Literal["text", "json"]

#: Names whose value is a credential, in headers, query strings, JSON and Python reprs.
_SECRET_NAMES = (
    r"authorization|proxy-authorization|x-api-key|api[_-]?key|apikey|"
    r"(?:access|refresh|bearer|id|auth|bot|app|user(?:_access)?)?[_-]?token(?:_secret)?|"
    r"client[_-]?secret|consumer[_-]?(?:key|secret)|signing[_-]?secret|secret|password|passwd|"
    r"oauth_signature|oauth_token|cookie|set-cookie|x-slack-signature"
)
_PATTERNS = (
    # "Authorization: Bearer abc", 'Authorization': 'Bearer abc', password=abc, "token": "abc"
    re.compile(
        rf"""(?ix)
        (?P<name>["']?\b(?:{_SECRET_NAMES})\b["']?)
        (?P<sep>\s*[:=]\s*)
        (?P<quote>["']?)
        (?P<value>(?:bearer\s+|basic\s+|oauth\s+|token\s+)?
            (?(quote)[^"'\n]+|[^\s&,;"'}}\])]+))
        """
    ),
)


class Redactor:
    """Hides secrets in text: registered values, and values of credential-named fields."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self._values_re: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        """Remember secret values to hide wherever they appear."""
        with self._lock:
            known = set(self._values)
            known.update(v for v in values if len(v) >= MIN_SECRET_CHARS)
            self._values = tuple(sorted(known, key=len, reverse=True))
            self._values_re = (
                re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None
            )

    def clear(self) -> None:
        """Forget every registered value."""
        with self._lock:
            self._values = ()
            self._values_re = None

    def __call__(self, text: str) -> str:
        """The text with every secret replaced by ``[redacted]``."""
        found = self._values_re
        if found is not None:
            text = found.sub(MASK, text)
        for pattern in _PATTERNS:
            text = pattern.sub(_mask_value, text)
        return text


def _mask_value(m: re.Match[str]) -> str:
    if m.group("value") == MASK:
        return m.group(0)
    return f"{m.group('name')}{m.group('sep')}{m.group('quote')}{MASK}"


#: The process's one redactor, fed by :func:`add_secrets`.
redact = Redactor()


def secret_values(obj: Any) -> list[str]:
    """Every ``SecretStr`` value inside a pydantic model (nested models, lists and dicts)."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name, None))
            for extra in (value.model_extra or {}).values():
                walk(extra)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(obj)
    return out


def add_secrets(*models: Any) -> None:
    """Hide every ``SecretStr`` value of these models (a config, a connector's settings)."""
    for model in models:
        redact.add(secret_values(model))


class _Formatter(logging.Formatter):
    """Text lines with a UTC timestamp, or one JSON object a line; secrets redacted."""

    def __init__(self, fmt: LogFormat) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.kind = fmt

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """ISO 8601 in UTC, to the millisecond."""
        at = datetime.fromtimestamp(record.created, UTC)
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        """The record as a line of text or JSON."""
        if self.kind == "text":
            return redact(super().format(record))
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(data, ensure_ascii=False, default=str))


_TRACEBACKS = logging.Formatter()


def _install_record_factory() -> None:
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: the handler reports it as usual
            return record
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[0] is not None:
            # Formatters use a record's cached traceback text: every handler gets it cleaned.
            record.exc_text = redact(_TRACEBACKS.formatException(record.exc_info))
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def configure(level: int = logging.WARNING, fmt: LogFormat = "text") -> None:
    """Log to standard error at ``level``: timestamps, text or JSON, secrets redacted."""
    _install_record_factory()
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(fmt))
    handler.set_name("socialcrm")
    for old in list(root.handlers):
        if old.get_name() == "socialcrm":  # ours from an earlier call; others' stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Alembic narrates every migration step at INFO; socialcrm says the one line that matters.
    logging.getLogger("alembic").setLevel(logging.WARNING if level > logging.DEBUG else level)
