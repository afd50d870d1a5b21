"""Reports: how customers feel and how the service did, this period against the one before.

Two calls make a report::

    report = await build_report(store, period=timedelta(days=7), end=midnight, brand="Acme")
    text = render(report, "html")  # or "md", "json", "csv"

``build_report`` runs the SQL aggregates (see ``socialcrm.reports.data`` for what each figure
means); ``render`` formats the result (see ``socialcrm.reports.render`` for the formats and
the CSV columns). Both are what the ``socialcrm report`` command and the scheduled digest call.
"""

from socialcrm.reports.data import Report, build_report, ending_now, last_complete
from socialcrm.reports.render import FORMATS, Format, prepare, render, summary

__all__ = [
    "FORMATS",
    "Format",
    "Report",
    "build_report",
    "ending_now",
    "last_complete",
    "prepare",
    "render",
    "summary",
]
