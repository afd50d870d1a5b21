"""The report's charts: matplotlib figures saved as SVG markup, for inlining in the HTML.

Text stays text (``svg.fonttype = 'none'``), so the SVG is small and readable by screen
readers; matplotlib escapes it as XML. Labels never go through mathtext (``$`` is just a
dollar sign) and are cut to ``LABEL_CHARS``. Each chart gets its own hash salt, so the ids
inside two SVGs inlined in one page never collide, and the same report gives the same bytes.

The volume and net sentiment charts come in two sets, by channel and by source, drawn by the
same code: all messages, the previous period, and one line for each of the largest channels
(sources), the rest summed as "other" (``render.top_series``, which the tables use too).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Literal

import matplotlib

matplotlib.use("svg")  # before anything imports pyplot; the report never needs a screen

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from socialcrm.reports.data import Breakdown, Report, Sentiment
from socialcrm.reports.render import top_series

LABEL_CHARS = 32
By = Literal["channel", "source"]
_STYLE: dict[str, Any] = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#9ca3af",
    "axes.labelcolor": "#374151",
    "xtick.color": "#4b5563",
    "ytick.color": "#4b5563",
    "svg.hashsalt": "socialcrm",
}
_COLORS = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#6b7280", "#0ea5e9"]
_CLASS_COLORS = {
    "positive": "#16a34a",
    "neutral": "#9ca3af",
    "negative": "#dc2626",
    "unscored": "#e5e7eb",
}


def _rc(salt: str = "socialcrm") -> Any:
    """The chart style (typed Any: matplotlib types rcParams keys as one long Literal)."""
    return {**_STYLE, "svg.hashsalt": salt}


def _label(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _svg(fig: Figure, name: str) -> str:
    out = io.StringIO()
    with rc_context(_rc(f"socialcrm-{name}")):
        fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    text = out.getvalue()
    # Inline in HTML: no XML declaration or DOCTYPE, a title for screen readers.
    svg = text[text.index("<svg") :]
    return svg.replace(
        'xmlns="http://www.w3.org/2000/svg"',
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{name}"',
        1,
    )


def _figure(height: float = 2.6) -> Figure:
    with rc_context(_rc()):
        fig = Figure(figsize=(7.2, height), dpi=100, layout="constrained")
    return fig


def _ticks(labels: Sequence[str], unit: str) -> tuple[list[int], list[str]]:
    short = [lb[5:] if unit == "day" else lb[5:].replace(" ", "\n") for lb in labels]
    step = max(1, len(labels) // 10)
    idx = list(range(0, len(labels), step))
    return idx, [short[i] for i in idx]


def _lines(report: Report, by: By) -> list[tuple[str, Sequence[Sentiment]]]:
    """(label, series) of each line of a chart by channel (source): the largest ones, "other"."""
    rows: Sequence[Breakdown] = report.channels if by == "channel" else report.sources
    return [(_label(b.key), b.series) for b in top_series(rows)]


def volume_chart(report: Report, by: By = "channel") -> str:
    """Messages per bucket: the total against the previous period, and each channel (source)."""
    labels = report.period.buckets
    x = list(range(len(labels)))
    with rc_context(_rc()):
        fig = _figure()
        ax = fig.add_subplot()
        prev = [s.total for s in report.overall.previous_series][: len(x)]
        ax.plot(x, [s.total for s in report.overall.series], color="#111827", lw=2, label="all")
        ax.plot(range(len(prev)), prev, color="#111827", lw=1, ls="--", label="previous period")
        for i, (name, series) in enumerate(_lines(report, by)):
            ax.plot(
                x, [s.total for s in series], color=_COLORS[i % len(_COLORS)], lw=1.2, label=name
            )
        ticks, names = _ticks(labels, report.period.unit)
        ax.set_xticks(ticks, names)
        ax.set_ylabel("messages")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5 messages
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
        return _svg(fig, f"Messages per {report.period.unit} by {by}")


def sentiment_chart(report: Report, by: By = "channel") -> str:
    """Net sentiment per bucket, all messages and each channel (source), from -100 to +100."""
    labels = report.period.buckets
    x = list(range(len(labels)))

    def net(series: Sequence[Sentiment]) -> list[float]:
        return [float("nan") if s.net_sentiment is None else 100 * s.net_sentiment for s in series]

    with rc_context(_rc()):
        fig = _figure()
        ax = fig.add_subplot()
        ax.axhline(0, color="#9ca3af", lw=0.8)
        prev = net(report.overall.previous_series)[: len(x)]
        ax.plot(x, net(report.overall.series), color="#111827", lw=2, label="all")
        ax.plot(range(len(prev)), prev, color="#111827", lw=1, ls="--", label="previous period")
        for i, (name, series) in enumerate(_lines(report, by)):
            ax.plot(x, net(series), color=_COLORS[i % len(_COLORS)], lw=1.2, label=name)
        ticks, names = _ticks(labels, report.period.unit)
        ax.set_xticks(ticks, names)
        ax.set_ylabel("net sentiment")
        ax.set_ylim(-100, 100)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
        return _svg(fig, f"Net sentiment per {report.period.unit} by {by}")


def distribution_chart(report: Report) -> str:
    """Sentiment classes of each period as stacked horizontal bars."""
    rows = [("this period", report.overall.current), ("previous", report.overall.previous)]
    with rc_context(_rc()):
        fig = _figure(1.5)
        ax = fig.add_subplot()
        for y, (_, s) in enumerate(rows):
            left = 0.0
            total = s.total or 1
            for cls in ("positive", "neutral", "negative", "unscored"):
                share = 100 * getattr(s, cls) / total
                ax.barh(
                    y, share, left=left, color=_CLASS_COLORS[cls], label=cls if y == 0 else None
                )
                left += share
        ax.set_yticks(range(len(rows)), [name for name, _ in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of messages")
        ax.grid(False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
        return _svg(fig, "Sentiment distribution")


def warm_up() -> None:
    """Draw one small throwaway chart, so that the first real one does not pay for loading the
    fonts and the drawing machinery (run it in a thread while the report's queries run)."""
    fig = Figure(figsize=(2, 1))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], label="warm up")
    ax.legend()
    _svg(fig, "warm-up")


def charts(report: Report) -> dict[str, str]:
    """Every chart of the report by name; none when the report is empty.

    ``volume`` and ``sentiment`` are by channel (the names older templates use),
    ``source_volume`` and ``source_sentiment`` by source.
    """
    if report.empty:
        return {}
    return {
        "volume": volume_chart(report, "channel"),
        "sentiment": sentiment_chart(report, "channel"),
        "source_volume": volume_chart(report, "source"),
        "source_sentiment": sentiment_chart(report, "source"),
        "distribution": distribution_chart(report),
    }
