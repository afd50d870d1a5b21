"""Deterministic misbehaviour for the sandbox's stand-ins: which request fails, and how.

Every decision comes from the seed, the platform and the request's number on that platform
(``random.Random(f"{seed}/{platform}/{n}")``), never from the wall clock, so the same seed and
the same sequence of requests give the same faults. A bad item is chosen by its id, so an item
that is broken is broken every time it is served, like a real payload a parser chokes on.

Tests can also force a fault on the next request(s) with :meth:`FaultPlan.inject`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Final, Literal, get_args

FaultKind = Literal[
    "rate_limit",  # 429 with the platform's rate-limit headers, in a burst of requests
    "server_error",  # 500/502/503 with the platform's error page
    "timeout",  # the answer comes later than any sane client waits
    "slow",  # the answer comes late, but in time
    "truncated",  # a good JSON answer cut in half
    "html",  # a 200 with an HTML page where JSON belongs (a proxy, a maintenance page)
    "bad_envelope",  # valid JSON, but not the documented shape (the list or "data" is missing)
    "bad_item",  # one item inside a good page is broken; the rest is fine
]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
#: Faults that take a whole request, in the order their shares are stacked.
REQUEST_FAULTS: Final[tuple[FaultKind, ...]] = (
    "rate_limit",
    "server_error",
    "timeout",
    "slow",
    "truncated",
    "html",
    "bad_envelope",
)


@dataclass(frozen=True)
class Faults:
    """How often the stand-ins misbehave: shares of requests (``bad_item``: of items), 0..1."""

    seed: int = 0
    rate_limit: float = 0.0
    #: Requests answered 429 in a row once a rate-limit fault starts, at most: the burst ends
    #: when its reset time has come, as a real window would (a client that waits gets one 429).
    rate_limit_burst: int = 3
    #: The reset header of a fault-made 429 lies this far in the future.
    rate_limit_reset_s: float = 30.0
    server_error: float = 0.0
    timeout: float = 0.0
    #: Longer than any client timeout the connectors are configured with.
    timeout_delay_s: float = 90.0
    slow: float = 0.0
    slow_delay_s: float = 0.5
    truncated: float = 0.0
    html: float = 0.0
    bad_envelope: float = 0.0
    bad_item: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in FAULT_KINDS and not 0.0 <= value <= 1.0:
                raise ValueError(f"faults.{f.name} must be between 0 and 1, not {value!r}")
        if sum(getattr(self, kind) for kind in REQUEST_FAULTS) > 1.0:
            raise ValueError("the request fault shares add up to more than 1")
        if self.rate_limit_burst < 1:
            raise ValueError("faults.rate_limit_burst must be at least 1")

    @classmethod
    def typical(cls, seed: int = 0) -> Faults:
        """A realistic bad day: a few percent of requests fail in each way (demo and soak)."""
        return cls(
            seed=seed,
            rate_limit=0.02,
            server_error=0.03,
            timeout=0.005,
            timeout_delay_s=90.0,
            slow=0.05,
            truncated=0.01,
            html=0.01,
            bad_envelope=0.01,
            bad_item=0.005,
        )


@dataclass(frozen=True)
class FaultEvent:
    """One fault the sandbox served, for tests and for the soak's report."""

    platform: str
    #: The request's number on its platform (1 for the first request).
    request_no: int
    kind: FaultKind
    method: str
    path: str
    #: Headers sent with the faulty answer (rate-limit headers for a 429).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: External id of the broken item, for ``bad_item``.
    item_id: str | None = None


@dataclass
class _Forced:
    kind: FaultKind
    path_prefix: str | None


class FaultPlan:
    """Decides, request by request, which fault (if any) a platform serves."""

    def __init__(self, faults: Faults) -> None:
        self.config = faults
        self.events: list[FaultEvent] = []
        self._requests: dict[str, int] = {}
        self._burst_left: dict[str, int] = {}
        #: When the running burst's window resets (epoch seconds), per platform.
        self._burst_until: dict[str, float] = {}
        self._forced: dict[str, deque[_Forced]] = {}
        self._forced_items: dict[str, int] = {}
        self._bad_items: dict[tuple[str, str], bool] = {}

    def requests(self, platform: str) -> int:
        """How many requests the platform has answered (or is answering)."""
        return self._requests.get(platform, 0)

    def inject(
        self, platform: str, kind: FaultKind, count: int = 1, *, path_prefix: str | None = None
    ) -> None:
        """Make the next ``count`` requests to ``platform`` (under ``path_prefix``) misbehave.

        ``bad_item`` breaks one item in each of the next ``count`` non-empty pages instead, and
        that item stays broken wherever it is served again.
        ``path_prefix`` is the path inside the platform (``/2/tweets``, ``/api/v1/access_token``).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(FAULT_KINDS)})")
        if kind == "bad_item":
            self._forced_items[platform] = self._forced_items.get(platform, 0) + count
            return
        queue = self._forced.setdefault(platform, deque())
        queue.extend(_Forced(kind, path_prefix) for _ in range(count))

    def decide(
        self, platform: str, path: str, now: float | None = None
    ) -> tuple[int, FaultKind | None]:
        """Number the request and pick its fault: forced first, then a burst, then the dice.

        With ``now`` (epoch seconds) a rate-limit burst lasts until its reset time at most.
        """
        n = self._requests.get(platform, 0) + 1
        self._requests[platform] = n
        queue = self._forced.get(platform)
        if queue:
            for forced in queue:
                if forced.path_prefix is None or path.startswith(forced.path_prefix):
                    queue.remove(forced)
                    return n, forced.kind
        if self._burst_left.get(platform, 0) > 0:
            until = self._burst_until.get(platform)
            if now is None or until is None or now < until:
                self._burst_left[platform] -= 1
                return n, "rate_limit"
            self._burst_left[platform] = 0  # the window has reset: the burst is over
        cfg = self.config
        if not any(getattr(cfg, kind) for kind in REQUEST_FAULTS):
            return n, None
        r = random.Random(f"{cfg.seed}/{platform}/{n}").random()
        edge = 0.0
        for kind in REQUEST_FAULTS:
            edge += getattr(cfg, kind)
            if r < edge:
                if kind == "rate_limit":
                    self._burst_left[platform] = cfg.rate_limit_burst - 1
                    if now is not None:
                        self._burst_until[platform] = now + cfg.rate_limit_reset_s
                return n, kind
        return n, None

    def reset_at(self, platform: str) -> float | None:
        """When the platform's current rate-limit burst resets (epoch seconds), if one ran."""
        return self._burst_until.get(platform)

    def take_forced_item(self, platform: str) -> bool:
        """True once for each forced ``bad_item`` (the page being built breaks one item)."""
        left = self._forced_items.get(platform, 0)
        if left <= 0:
            return False
        self._forced_items[platform] = left - 1
        return True

    def mark_bad(self, platform: str, external_id: str) -> None:
        """Serve this item broken from now on (a forced ``bad_item`` stays bad, like a real one)."""
        self._bad_items[(platform, external_id)] = True

    def item_is_bad(self, platform: str, external_id: str) -> bool:
        """Whether this item is one of the few that are always served broken."""
        key = (platform, external_id)
        bad = self._bad_items.get(key)
        share = self.config.bad_item
        if bad is None and share <= 0.0:
            return False
        if bad is None:
            rng = random.Random(f"{self.config.seed}/item/{platform}/{external_id}")
            bad = self._bad_items[key] = rng.random() < share
        return bad

    def breakage(self, platform: str, external_id: str, choices: int) -> int:
        """Which of a platform's ``choices`` ways to break an item (stable per item)."""
        return random.Random(f"{self.config.seed}/how/{platform}/{external_id}").randrange(choices)

    def record(self, event: FaultEvent) -> None:
        """Keep a served fault in :attr:`events`."""
        self.events.append(event)

    def last(self, platform: str, kind: FaultKind | None = None) -> FaultEvent | None:
        """The most recent fault served by ``platform`` (of ``kind``), if any."""
        for event in reversed(self.events):
            if event.platform == platform and (kind is None or event.kind == kind):
                return event
        return None
