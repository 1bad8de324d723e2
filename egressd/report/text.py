"""The replay report as a plain-text table (``egressd replay --summary``)."""

from __future__ import annotations

from datetime import UTC, datetime

from egressd.report.collect import TOP_SHOWN, ReportData
from egressd.units import format_bytes


def _when(event_time: float | None) -> str:
    if event_time is None:
        return "still firing"
    return datetime.fromtimestamp(event_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _talkers(items: list[tuple[str, int]]) -> str:
    return ", ".join(f"{address} ({format_bytes(size)})" for address, size in items)


def _evidence(annotations: dict[str, str]) -> str:
    """bytes, baseline, top sources and destinations of an alert, as far as it has them."""
    parts = []
    for name, label in (("bytes", "bytes"), ("baseline_bytes", "baseline")):
        value = annotations.get(name, "")
        if value.isdigit():
            parts.append(f"{label} {format_bytes(int(value))}")
    for name, label in (("top_sources", "top sources"), ("top_destinations", "top destinations")):
        if annotations.get(name):
            parts.append(f"{label} {annotations[name]}")
    return "; ".join(parts)


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_text(data: ReportData) -> str:
    """Per group: egress per UTC day and destination with top talkers, then its alerts."""
    out: list[str] = []
    groups = data.groups()
    if not groups:
        return "no egress and no alerts in the input\n"
    for group in groups:
        rows = data.totals(group)
        total = sum(t.bytes for t in rows)
        out.append(f"group {group}: {format_bytes(total)} egress")
        top = data.top_destinations(group)
        if top:
            named = ", ".join(f"{a} ({c}, {format_bytes(n)})" for a, c, n in top)
            out.append(f"  top destinations over the whole input: {named}")
        if rows:
            regions = any(t.region for t in rows)
            asns = any(t.asn for t in rows)
            header = ["day (UTC)", "country"]
            header += ["region"] if regions else []
            header += ["ASN"] if asns else []
            header += ["bytes", "flows", "top sources", "top destinations"]
            table = [header]
            for t in rows:
                row = [t.day, t.country]
                row += [t.region] if regions else []
                row += [f"AS{t.asn} {t.as_org}".strip() if t.asn else ""] if asns else []
                row += [
                    format_bytes(t.bytes),
                    str(t.flows),
                    _talkers(t.sources.top(TOP_SHOWN)),
                    _talkers(t.destinations.top(TOP_SHOWN)),
                ]
                table.append(row)
            first_number = header.index("bytes")
            out.extend("  " + line for line in _table(table, {first_number, first_number + 1}))
        alerts = [a for a in data.alerts if a.group == group]
        out.append(f"  alerts: {len(alerts)}")
        for alert in alerts:
            out.append(
                f"    {_when(alert.starts_at)} .. {_when(alert.ends_at)}  "
                f"{alert.labels.get('alertname', '')} {alert.destination}: "
                f"{alert.annotations.get('summary', '')}"
            )
            evidence = _evidence(alert.annotations)
            if evidence:
                out.append(f"      {evidence}")
        out.append("")
    return "\n".join(out)
