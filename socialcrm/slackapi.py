"""How Slack's Web API says no, sorted where it enters: wait, try later, or stop.

Slack answers most failures with HTTP 200 and ``{"ok": false, "error": "<code>"}``
(docs.slack.dev/apis/web-api, "Evaluating responses"); a rate limit is HTTP 429 with
``Retry-After`` (docs.slack.dev/apis/web-api/rate-limits). Some codes can never succeed until a
person acts (the token was revoked, the bot was removed from the channel, the channel was
archived): retrying those every second, as a loop would, only fills the log. Both the approval
cards and the Slack alert sink sort Slack's answers with :func:`sort_failure`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from slack_sdk.errors import SlackApiError

#: Errors no retry fixes: the token, the app's scopes or the channel must change first.
PERMANENT: Final = frozenset(
    {
        "not_in_channel",
        "is_archived",
        "channel_not_found",
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "missing_scope",
        "no_permission",
        "not_allowed_token_type",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "team_access_not_granted",
        "ekm_access_denied",
        "org_login_required",
        "access_denied",
        "team_not_found",
        "enterprise_is_restricted",
        "invalid_token",
        "app_missing_action_url",
    }
)

#: What to do about one failure: wait ``retry_after_s`` (rate limit), try again later with a
#: backoff (5xx, transport, Slack's own trouble), or stop until a person fixes it.
Verdict = Literal["rate_limited", "passing", "permanent", "message"]


@dataclass(frozen=True, slots=True)
class SlackFailure:
    """One refused Web API call, sorted."""

    verdict: Verdict
    #: Slack's error code, or ``HTTP <status>``.
    code: str
    retry_after_s: float | None = None
    #: For ``missing_scope``: the scope Slack said is needed.
    needed: str | None = None

    def describe(self) -> str:
        """The code, with the scope that is missing when Slack named it."""
        return f"{self.code} (needs {self.needed})" if self.needed else self.code


def sort_failure(err: SlackApiError, message_errors: frozenset[str] = frozenset()) -> SlackFailure:
    """Sort a :class:`SlackApiError`: ``message_errors`` are codes about one message only."""
    resp = err.response
    status = int(getattr(resp, "status_code", 0) or 0)
    data: Any = getattr(resp, "data", None)
    code = str(data.get("error") or "") if isinstance(data, dict) else ""
    headers: Mapping[str, Any] = getattr(resp, "headers", None) or {}
    if status == 429 or code == "ratelimited":
        return SlackFailure("rate_limited", code or "ratelimited", _retry_after(headers))
    if code in PERMANENT:
        needed = data.get("needed") if isinstance(data, dict) else None
        return SlackFailure("permanent", code, needed=str(needed) if needed else None)
    if code in message_errors:
        return SlackFailure("message", code)
    return SlackFailure("passing", code or f"HTTP {status}")


def _retry_after(headers: Mapping[str, Any]) -> float:
    value = None
    for key, v in headers.items():
        if str(key).lower() == "retry-after":
            value = v
    with contextlib.suppress(TypeError, ValueError):
        return max(1.0, float(value)) if value is not None else 1.0
    return 1.0
