"""The replay report as one self-contained HTML page (``egressd replay --report FILE``).

Charts are drawn by plotly.js, inlined from the plotly package, and the page by a jinja2
template: nothing is fetched when the page is viewed, so it can be mailed or archived.
Both come with the ``report`` extra (``pip install 'egressd[report]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from egressd.errors import EgressdError
from egressd.report.collect import MAX_POINTS, TOP_SHOWN, AlertSpan, ReportData, day_of
from egressd.units import format_bytes, format_duration

#: countries drawn on their own per group chart; the rest are summed as "other"
MAX_SERIES = 10
#: alerts named on a group's chart; beyond this many the names would cover each other and the
#: alerts are only shaded (the list under the chart names them all). It is also how many of a
#: group's alerts show their evidence open; the rest are one line each, opened by a click.
MAX_NOTES = 12

_MISSING = (
    "egressd replay --report needs the report extra (jinja2 and plotly): "
    "pip install 'egressd[report]'"
)


def _iso(event_time: float) -> str:
    return datetime.fromtimestamp(event_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _step(data: ReportData, first: float, last: float) -> float:
    for step in (data.step or data.interval, 3600.0, 86400.0):
        if step >= (data.step or data.interval) and (last - first) / step < MAX_POINTS:
            return step
    return 7 * 86400.0


def chart_figure(data: ReportData, group: str) -> dict[str, Any]:
    """A plotly figure: egress per destination country over time, alerts shaded."""
    by_country = data.series.get(group, {})
    totals = data.country_totals(group)
    ranked = sorted(totals, key=lambda c: (-totals[c], c))
    shown, rest = ranked[:MAX_SERIES], ranked[MAX_SERIES:]
    alerts = [a for a in data.alerts if a.group == group]
    starts = [s for points in by_country.values() for s in points]
    edges = starts + [a.starts_at for a in alerts]
    first = min(edges) if edges else 0.0
    last = max(edges) if edges else 0.0
    step = _step(data, first, last)
    origin = first - first % step
    count = int((last - origin) // step) + 1
    xs = [_iso(origin + i * step) for i in range(count)]

    def column(countries: list[str]) -> list[int]:
        values = [0] * count
        for country in countries:
            for start, size in by_country[country].items():
                values[int((start - origin) // step)] += size
        return values

    # A line needs two points: a step or two alone is drawn as markers too.
    mode = "lines" if count > 2 else "lines+markers"
    named = [(country, [country]) for country in shown]
    if rest:
        named.append((f"other ({len(rest)})", rest))
    traces = [
        {
            "type": "scatter",
            "mode": mode,
            "stackgroup": "egress",
            "name": name,
            "x": xs,
            "y": column(countries),
            "hovertemplate": f"{name}: %{{y:.3s}}B<extra></extra>",
        }
        for name, countries in named
    ]
    shapes: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    end_of_chart = _iso(origin + count * step)
    for alert in alerts:
        color = "#d62728" if alert.labels.get("severity") == "page" else "#ff7f0e"
        shapes.append(
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": _iso(alert.starts_at),
                "x1": _iso(alert.ends_at) if alert.ends_at is not None else end_of_chart,
                "y0": 0,
                "y1": 1,
                "fillcolor": color,
                "opacity": 0.12,
                "line": {"width": 0},
            }
        )
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": _iso(alert.starts_at),
                "x1": _iso(alert.starts_at),
                "y0": 0,
                "y1": 1,
                "line": {"color": color, "width": 2, "dash": "dot"},
            }
        )
        if len(alerts) > MAX_NOTES:
            continue
        notes.append(
            {
                "x": _iso(alert.starts_at),
                "y": 1,
                "xref": "x",
                "yref": "paper",
                "yanchor": "bottom",
                "text": f"{alert.labels.get('alertname', 'alert')} {alert.destination}",
                "showarrow": False,
                "font": {"color": color, "size": 11},
            }
        )
    step_name = {3600.0: "hour", 86400.0: "day", 7 * 86400.0: "week"}.get(step)
    xaxis: dict[str, Any] = {"type": "date", "title": {"text": "time (UTC)"}}
    if count == 1:  # plotly would zoom a lone point to milliseconds
        xaxis["range"] = [_iso(origin - step), _iso(origin + step)]
    return {
        "data": traces,
        "layout": {
            "title": {
                "text": f"{group}: egress per destination country "
                f"(bytes per {step_name or format_duration(step)})"
                + (f"; {len(alerts)} alerts shaded" if len(alerts) > MAX_NOTES else "")
            },
            "xaxis": xaxis,
            # SI prefixes with a unit (2.5GB): plotly's default writes 2.5B for 2.5 billion.
            "yaxis": {
                "title": {"text": "bytes"},
                "rangemode": "tozero",
                "exponentformat": "SI",
                "ticksuffix": "B",
            },
            "showlegend": True,
            "shapes": shapes,
            "annotations": notes,
            "margin": {"t": 70},
            "legend": {"title": {"text": "country"}},
            "height": 420,
        },
    }


def _script_json(value: Any) -> str:
    """JSON for a <script> element: no ``<`` at all, so no label can end it early."""
    return orjson.dumps(value).decode().replace("<", "\\u003c")


#: annotations shown first, in this order: what happened, then the figures
_FIRST_ROWS = ("summary", "description", "bytes", "baseline_bytes", "window")


def _alert_rows(alert: AlertSpan) -> list[tuple[str, str]]:
    """The alert's evidence, what happened first; byte counts also in human units."""
    rows = []
    annotations = alert.annotations
    first = [name for name in _FIRST_ROWS if name in annotations]
    for name in first + sorted(set(annotations) - set(first)):
        value = annotations[name]
        if name.endswith("bytes") and value.isdigit():
            value = f"{value} ({format_bytes(int(value))})"
        rows.append((name, value))
    return rows


def require_report_libraries() -> None:
    """Raise the error that says how to install the report extra when it is missing."""
    try:
        import jinja2  # noqa: F401
        import plotly  # noqa: F401
    except ImportError:
        raise EgressdError(_MISSING) from None


def write_html(
    path: Path,
    data: ReportData,
    *,
    lines: list[str] | None = None,
    progress: TextIO | None = None,
) -> None:
    """Render the report into ``path`` (written whole, then renamed into place)."""
    bar: Any = None
    if progress is not None:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(data.groups()), desc="report", unit=" group", file=progress)
        except ImportError:
            bar = None
    try:
        page = render_html(data, lines=lines, progress=(lambda _g: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise EgressdError(f"{path}: cannot write the report: {exc.strerror or exc}") from None


def render_html(
    data: ReportData,
    *,
    title: str = "egressd replay report",
    lines: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """The whole page. ``lines`` (the replay summary) go in its header."""
    try:
        import jinja2
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise EgressdError(_MISSING) from None
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("egressd.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["bytes"] = format_bytes
    environment.filters["when"] = lambda t: "still firing" if t is None else _iso(t)
    groups = []
    for group in data.groups():
        if progress is not None:
            progress(group)
        rows = data.totals(group)
        alerts = [a for a in data.alerts if a.group == group]
        groups.append(
            {
                "name": group,
                # (day, country) rows an alert started on, highlighted in the table
                "alerted": {(day_of(a.starts_at), a.labels.get("dst_country", "")) for a in alerts},
                "countries": len(data.series.get(group, {})),
                "figure": _script_json(chart_figure(data, group)),
                "rows": rows,
                "top_destinations": data.top_destinations(group),
                "total": sum(t.bytes for t in rows),
                "regions": any(t.region for t in rows),
                "asns": any(t.asn for t in rows),
                "alerts": alerts,
            }
        )
    template = environment.get_template("report.html.j2")
    return template.render(
        title=title,
        lines=lines or [],
        groups=groups,
        generated=_iso(datetime.now(UTC).timestamp()),
        top_shown=TOP_SHOWN,
        open_alerts=MAX_NOTES,
        alert_rows=_alert_rows,
        plotly_js=get_plotlyjs(),
    )
