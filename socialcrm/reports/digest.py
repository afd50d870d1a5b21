"""Scheduled digests: the report of the period just ended, sent through the alert outbox.

A digest is an alert of kind ``digest`` (severity ``info``): its text is the report's short
summary and its e-mail body the whole HTML report. Going through the outbox gives digests
what alerts have: written first, delivered with retries, routed by ``alerts.routes``
(``{kinds: [digest], sinks: [...]}``), and sent once per period even when several daemons
share the store (the dedupe key is ``digest:<name>:<period end>``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import col

from socialcrm.alerts import raise_alert
from socialcrm.db import Store
from socialcrm.digest_config import DigestConfig
from socialcrm.models import Alert


def period_end(now: datetime, period: timedelta, tz: str) -> datetime:
    """The end of the latest whole period before ``now``: local midnight, or the hour."""
    local = now.astimezone(ZoneInfo(tz))
    if period >= timedelta(days=1):
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
    return local.replace(minute=0, second=0, microsecond=0)


def dedupe_key(name: str, end: datetime) -> str:
    """The key that makes a digest go out once per period."""
    return f"digest:{name}:{end.isoformat()}"


async def send_digest(
    store: Store,
    digest: DigestConfig,
    *,
    brand: str,
    tz: str,
    now: datetime,
    due: datetime | None = None,
    templates_dir: Path | None = None,
) -> Alert | None:
    """Build the digest's report and write it to the outbox; None when it was sent already.

    ``due``: the run to make up (``DigestConfig.missed``), whose period is sent; else the run
    due ``now``."""
    end = period_end(due or now, digest.period, tz)
    key = dedupe_key(digest.name, end)
    async with store.reader() as s:
        seen = (
            await s.execute(sa.select(col(Alert.id)).where(col(Alert.dedupe_key) == key).limit(1))
        ).first()
    if seen is not None:
        return None
    from socialcrm.reports.data import build_report
    from socialcrm.reports.render import render, summary

    report = await build_report(store, period=digest.period, end=end, brand=brand, tz=tz)
    text = summary(report, templates_dir=templates_dir)
    html = render(report, "html", templates_dir=templates_dir)
    start = report.period.start.astimezone(ZoneInfo(tz))
    title = f"{brand} report ({digest.name}): {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"
    async with store.session() as s:
        return await raise_alert(
            s,
            "digest",
            key,
            title,
            {
                "digest": digest.name,
                "start": report.period.start.isoformat(),
                "end": report.period.end.isoformat(),
                "summary": text,
                "report_html": html,
            },
            "info",
            cooldown=None,
            now=now,
        )
