"""Configuration of spike detection (``Config.spikes``).

Kept apart from :mod:`socialcrm.spikes` (the counts and the judgement) so that reading the
config file needs no database layer.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from socialcrm.timespec import Duration

Metric = Literal["negative", "total"]
METRICS: Final[tuple[Metric, ...]] = ("negative", "total")
DAY_S: Final = 86400


class SpikeConfig(BaseModel):
    """How spikes of (negative) mentions are told from normal traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    #: Length of one counting window; must divide a day.
    window: Duration = timedelta(minutes=15)
    #: Windows just before the checked one that form the recent baseline.
    baseline_windows: int = Field(default=16, ge=4)
    #: Previous days whose same time of day forms the seasonal baseline (0: none).
    seasonal_days: int = Field(default=7, ge=0, le=28)
    #: Days of history before the seasonal baseline is used.
    seasonal_min_days: int = Field(default=1, ge=1)
    #: Robust z-score a window must reach.
    threshold: float = Field(default=4.0, gt=0)
    #: ... and at least this many times the expected count.
    min_ratio: float = Field(default=2.0, ge=1.0)
    #: Fewest negative mentions in a window that can be a negative spike.
    min_negative: int = Field(default=10, ge=1)
    #: Fewest mentions in a window that can be a volume spike.
    min_total: int = Field(default=40, ge=1)
    #: A message is negative at or below this compound sentiment (VADER's own cut-off).
    negative_below: float = Field(default=-0.05, ge=-1.0, le=1.0)
    metrics: list[Metric] = Field(default_factory=lambda: list(METRICS), min_length=1)
    #: Sources watched; empty: every source.
    sources: list[str] = Field(default_factory=list)
    #: No second spike alert for a source this soon after one.
    cooldown: Duration = timedelta(hours=2)
    #: A spike's start is looked for this many windows back at most.
    max_run_windows: int = Field(default=24, ge=1)
    #: A window is judged once it ended this long ago (messages arrive a little late).
    settle: Duration = timedelta(minutes=2)
    #: Most negative messages quoted in the alert.
    examples: int = Field(default=3, ge=0, le=10)
    #: Words that rose most, listed in the alert.
    rising_words: int = Field(default=8, ge=0, le=30)
    #: How often the daemon should call :func:`check_spikes`.
    interval: Duration = timedelta(seconds=60)

    @field_validator("window")
    @classmethod
    def _divides_day(cls, v: timedelta) -> timedelta:
        seconds = v.total_seconds()
        if seconds < 60 or seconds != int(seconds) or DAY_S % int(seconds):
            raise ValueError("the window must be whole minutes that divide a day, like 15m")
        return v
