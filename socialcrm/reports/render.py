"""Turn a Report into html, md, json or csv.

- ``json``: the whole report as one object (numbers, ISO 8601 times, derived figures such as
  ``net_sentiment`` included).
- ``csv``: one flat table, UTF-8 with a header row and CRLF line ends, columns
  ``section, metric, key, bucket, current, previous, change``:
  ``section`` is ``headline`` (key ``all``), ``channel``, ``source``, ``intent``, ``tag``,
  ``term``, ``team``, ``new_customers`` (key a lifecycle stage), ``active_author``,
  ``influential_author`` or ``newcomer`` (key the customer's name; metrics ``rank``,
  ``customer_id``, ``reach``..., current period only), ``series`` (key ``all`` or a
  channel) or ``source_series`` (key a source); ``metric`` is what is counted
  (``messages``, ``positive``, ``neutral``, ``negative``, ``unscored``, ``net_sentiment``,
  ``tickets_opened``, ``top20_messages``...); ``key`` names the channel, source, topic,
  team or customer (``all`` for everything); ``bucket`` is the day
  (``YYYY-MM-DD``) or hour (``YYYY-MM-DD HH:00``) of a ``series`` or ``source_series`` row,
  empty otherwise; ``current`` and ``previous`` are the values in the two periods (for a
  series row, previous is the same bucket position in the previous period); ``change`` is
  current - previous. Shares and net sentiment are fractions (0.25, not 25%); durations are
  seconds. Every channel and every source has its series rows (messages and net sentiment).
- ``md``: readable text with tables (customer text is escaped for Markdown and HTML).
- ``html``: one self-contained page: inline CSS and inline SVG charts, no script, nothing
  fetched; readable in a browser and in e-mail clients (the tables carry every figure for
  clients that do not show SVG). Templates are autoescaped.

The per-bucket charts and tables of md and html show the ``SERIES_KEYS`` largest channels
(sources) of the period one by one and the rest summed as one ``other (N)``
(``top_series``), so that they stay readable with many sources.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from socialcrm.reports.data import Breakdown, Report, Sentiment, TeamPeriod, change

Format = Literal["html", "md", "json", "csv"]
FORMATS: tuple[Format, ...] = ("html", "md", "json", "csv")
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
#: Shown for a figure that does not exist (no data, or nothing to compare with).
NONE = "\u2013"
#: A real minus sign reads better than a hyphen in tables.
MINUS = "\u2212"
CSV_COLUMNS = ("section", "metric", "key", "bucket", "current", "previous", "change")
#: Channels (sources) drawn or tabulated one by one per bucket; the rest are summed.
SERIES_KEYS = 6


def prepare(fmt: Format, *, templates_dir: Path | None = None) -> None:
    """Load and warm up what ``render`` needs for ``fmt`` (matplotlib and the fonts for html,
    the compiled templates), so that calling this in a thread while ``build_report``'s queries
    run takes that time off the report's."""
    if fmt == "html":
        from socialcrm.reports import charts

        charts.warm_up()
    if fmt in ("html", "md"):
        _environment(templates_dir, html=fmt == "html").get_template(f"reports/report.{fmt}.j2")


def render(report: Report, fmt: Format, *, templates_dir: Path | None = None) -> str:
    """The report in one format; ``templates_dir`` may hold a ``reports/`` override."""
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "md":
        return (
            _environment(templates_dir, html=False)
            .get_template("reports/report.md.j2")
            .render(r=report, **_helpers(report))
        )
    if fmt == "html":
        from socialcrm.reports import charts  # matplotlib loads only for html

        env = _environment(templates_dir, html=True)
        svgs = {name: Markup(svg) for name, svg in charts.charts(report).items()}
        return env.get_template("reports/report.html.j2").render(
            r=report, charts=svgs, **_helpers(report)
        )
    raise ValueError(f"unknown report format {fmt!r} (one of {', '.join(FORMATS)})")


def summary(report: Report, *, templates_dir: Path | None = None) -> str:
    """A few lines of the report's headline figures, for chat answers and digests: plain
    text, customer-written words each kept to one line. Where it goes escapes it as that
    place needs (Slack's ``&<>``, a Mattermost code block, a plain-text e-mail part); a
    Markdown escape would show there as a backslash."""
    env = _environment(templates_dir, html=False)
    text = env.get_template("reports/summary.txt.j2").render(r=report, **_helpers(report))
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def top_series(rows: Sequence[Breakdown], limit: int = SERIES_KEYS) -> tuple[Breakdown, ...]:
    """The first ``limit`` breakdowns (the report lists the largest first) and the rest
    summed as one named ``other (N)``; all of them when only one would be summed."""
    if len(rows) <= limit + 1:
        return tuple(rows)
    rest = rows[limit:]

    def summed(series: Sequence[tuple[Sentiment, ...]]) -> tuple[Sentiment, ...]:
        return tuple(sum(bucket, Sentiment()) for bucket in zip(*series, strict=True))

    other = Breakdown(
        key=f"other ({len(rest)})",
        current=sum((r.current for r in rest), Sentiment()),
        previous=sum((r.previous for r in rest), Sentiment()),
        series=summed([r.series for r in rest]),
        previous_series=summed([r.previous_series for r in rest]),
    )
    return (*rows[:limit], other)


# ---------------------------------------------------------------------------------------------
# json


def as_data(value: Any) -> Any:
    """Plain JSON-able data: dataclasses with their derived figures, ISO times."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: as_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in getattr(value, "derived", ()):
            out[name] = as_data(getattr(value, name))
        return out
    if isinstance(value, dict):
        return {str(k): as_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_data(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(report: Report) -> str:
    """The whole report as indented JSON."""
    return orjson.dumps(as_data(report), option=orjson.OPT_INDENT_2).decode() + "\n"


# ---------------------------------------------------------------------------------------------
# csv


#: What makes a spreadsheet read a cell as a formula, at its start or after a line break (a
#: reader that ends rows at CR or LF starts a new cell there).
_FORMULA_START = re.compile(r"^(?=[=+\-@\t\r])|(?<=[\r\n])(?=[=+\-@\t])")


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        return _FORMULA_START.sub("'", value)  # never a formula in a spreadsheet
    if isinstance(value, float):
        return round(value, 6)
    return "" if value is None else value


def _csv_rows(report: Report) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []

    def add(section: str, metric: str, key: str, cur: Any, prev: Any, bucket: str = "") -> None:
        diff = change(cur, prev) if _number(cur) and _number(prev) else None
        rows.append((section, metric, key, bucket, cur, prev, diff))

    def sentiment(section: str, b: Breakdown) -> None:
        add(section, "messages", b.key, b.current.total, b.previous.total)
        for cls in ("positive", "neutral", "negative", "unscored"):
            add(section, cls, b.key, getattr(b.current, cls), getattr(b.previous, cls))
        add(section, "net_sentiment", b.key, b.current.net_sentiment, b.previous.net_sentiment)

    sentiment("headline", report.overall)
    add("headline", "ignored", "all", report.ignored.current, report.ignored.previous)
    c = report.customers
    add("headline", "new_customers", "all", c.new.current, c.new.previous)
    split = c.value_split
    add("headline", "top20_messages", "all", split.top.current.total, split.top.previous.total)
    add(
        "headline",
        "top20_net_sentiment",
        "all",
        split.top.current.net_sentiment,
        split.top.previous.net_sentiment,
    )
    add(
        "headline",
        "rest_net_sentiment",
        "all",
        split.rest.current.net_sentiment,
        split.rest.previous.net_sentiment,
    )
    add("headline", "rest_messages", "all", split.rest.current.total, split.rest.previous.total)
    add("headline", "top20_authors", "all", split.top.authors, split.top.previous_authors)
    add("headline", "rest_authors", "all", split.rest.authors, split.rest.previous_authors)
    previous_total = split.top.previous.total + split.rest.previous.total
    add(
        "headline",
        "top20_message_share",
        "all",
        split.top_message_share,
        split.top.previous.total / previous_total if previous_total else None,
    )
    add("headline", "ranked_customers", "all", split.customers, None)
    add("headline", "top20_customers", "all", split.top_customers, None)
    add("headline", "top20_threshold", "all", split.threshold, None)
    add(
        "headline",
        "terms_sample",
        "all",
        report.topics.terms_sample,
        report.topics.terms_previous_sample,
    )
    _service_rows(
        add, "headline", "all", report.service.total.current, report.service.total.previous
    )
    for b in report.channels:
        sentiment("channel", b)
    for b in report.sources:
        sentiment("source", b)
    for section, counts in (
        ("intent", report.topics.intents),
        ("tag", report.topics.tags),
        ("term", report.topics.terms),
    ):
        for t in counts:
            add(
                section,
                "messages" if section != "term" else "sampled_messages",
                t.key,
                t.current,
                t.previous,
            )
    for team in report.service.teams:
        _service_rows(add, "team", team.team, team.current, team.previous)
    for stage, count in c.new_by_stage.items():
        add("new_customers", "customers", stage, count, None)
    for section, people in (
        ("active_author", c.most_active),
        ("influential_author", c.most_influential),
    ):
        for rank, a in enumerate(people, 1):
            add(section, "rank", a.name, rank, None)
            add(section, "customer_id", a.name, a.customer_id, None)
            add(section, "lifetime_value", a.name, a.lifetime_value, None)
            add(section, "reach", a.name, a.reach, None)
            add(section, "messages", a.name, a.messages.total, None)
            add(section, "net_sentiment", a.name, a.messages.net_sentiment, None)
    for rank, newcomer in enumerate(c.newcomers, 1):
        add("newcomer", "rank", newcomer.name, rank, None)
        add("newcomer", "customer_id", newcomer.name, newcomer.customer_id, None)
        add("newcomer", "reach", newcomer.name, newcomer.reach, None)
    period = report.period

    def series(section: str, b: Breakdown, *, classes: bool = False) -> None:
        for i, label in enumerate(period.buckets):
            cur = b.series[i]
            prev = b.previous_series[i] if i < len(b.previous_series) else None
            add(section, "messages", b.key, cur.total, prev.total if prev else None, label)
            for cls in ("positive", "neutral", "negative", "unscored") if classes else ():
                add(
                    section,
                    cls,
                    b.key,
                    getattr(cur, cls),
                    getattr(prev, cls) if prev else None,
                    label,
                )
            add(
                section,
                "net_sentiment",
                b.key,
                cur.net_sentiment,
                prev.net_sentiment if prev else None,
                label,
            )

    series("series", report.overall, classes=True)
    for b in report.channels:
        series("series", b)
    for b in report.sources:
        series("source_series", b)
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _service_rows(add: Any, section: str, key: str, cur: TeamPeriod, prev: TeamPeriod) -> None:
    add(section, "tickets_opened", key, cur.opened, prev.opened)
    add(section, "tickets_resolved", key, cur.resolved, prev.resolved)
    add(section, "backlog", key, cur.backlog, prev.backlog)
    add(
        section,
        "first_response_median_s",
        key,
        cur.first_response.median_s,
        prev.first_response.median_s,
    )
    add(section, "first_response_p90_s", key, cur.first_response.p90_s, prev.first_response.p90_s)
    add(section, "resolution_median_s", key, cur.resolution.median_s, prev.resolution.median_s)
    add(section, "resolution_p90_s", key, cur.resolution.p90_s, prev.resolution.p90_s)
    add(
        section,
        "first_response_sla",
        key,
        cur.first_response_sla.compliance,
        prev.first_response_sla.compliance,
    )
    add(
        section,
        "resolution_sla",
        key,
        cur.resolution_sla.compliance,
        prev.resolution_sla.compliance,
    )


def to_csv(report: Report) -> str:
    """Headline figures, breakdowns, customer lists and the per-bucket series as one flat
    table."""
    out = io.StringIO()
    # Rows end in CRLF (RFC 4180), and every cell holding a CR or LF is quoted: with a bare
    # "\n" terminator the csv module leaves a lone CR unquoted, which splits the row.
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_COLUMNS)
    for row in _csv_rows(report):
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# md and html


@functools.lru_cache(maxsize=8)
def _environment(extra_dir: Path | None, *, html: bool) -> ImmutableSandboxedEnvironment:
    loaders: list[jinja2.BaseLoader] = []
    if extra_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(extra_dir)))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES_DIR)))
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=fmt_num,
        pct=fmt_pct,
        net=fmt_net,
        points=fmt_points,
        change=fmt_change,
        signed=fmt_signed,
        dur=fmt_duration,
        md=md_escape,
        one_line=one_line,
        when=fmt_when,
    )
    return env


def _helpers(report: Report) -> dict[str, Any]:
    return {
        "fmt_change": fmt_change,
        "fmt_points": fmt_points,
        "fmt_signed": fmt_signed,
        # The per-bucket tables: (what, the largest breakdowns and "other").
        "series_by": [
            ("channel", top_series(report.channels)),
            ("source", top_series(report.sources)),
        ],
    }


def fmt_num(value: Any) -> str:
    """1234567 -> '1,234,567'; None -> an en dash."""
    if value is None:
        return NONE
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def fmt_signed(value: Any) -> str:
    """A count change with its sign: '+12', '-3' (with a minus sign), '0'."""
    if value is None:
        return NONE
    return f"{int(value):+,}".replace("-", MINUS)


def fmt_pct(value: Any, digits: int = 1) -> str:
    """0.1234 -> '12.3%'."""
    if value is None:
        return NONE
    return f"{100 * value:.{digits}f}%"


def fmt_net(value: Any) -> str:
    """Net sentiment -1..+1 shown as -100..+100: 0.25 -> '+25'."""
    if value is None:
        return NONE
    return f"{100 * value:+.0f}".replace("-", MINUS)


def fmt_points(value: Any) -> str:
    """A change in net sentiment, in points of the -100..+100 scale."""
    if value is None:
        return NONE
    return f"{100 * value:+.0f} pts".replace("-", MINUS)


def fmt_change(value: Any) -> str:
    """A relative change: 0.25 -> '+25%'."""
    if value is None:
        return NONE
    return f"{100 * value:+.0f}%".replace("-", MINUS)


def fmt_duration(seconds: Any) -> str:
    """Seconds as '45s', '12m', '3h 05m' or '2d 4h'."""
    if seconds is None:
        return NONE
    s = round(float(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def fmt_when(value: datetime, tz: str = "UTC") -> str:
    """A time in the report's zone, to the minute."""
    from zoneinfo import ZoneInfo

    return value.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def one_line(value: Any) -> str:
    """Untrusted text on one line, otherwise as written."""
    return " ".join(str(value if value is not None else "").split())


def md_escape(value: Any) -> str:
    """Untrusted text for one Markdown table cell or line: one line, markup inert."""
    text = one_line(value).replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)
