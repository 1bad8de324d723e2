"""Report data gathered while a replay runs: no I/O, and bounded however long the input.

Chart series keep at most :data:`MAX_POINTS` steps per (group, country): past that they are
summed into hours, then days. Day totals keep at most :data:`MAX_DAY_DESTINATIONS`
destinations per group and day; later ones add to their country's row. The engine calls
:meth:`ReportCollector.observe_interval` with every interval it closes (the buckets detection
saw); the replay hands it each alert event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from egressd.aggregate import Bucket
from egressd.detect.alerts import parse_rfc3339
from egressd.sketch import TopK

#: top sources and destinations kept per (group, day, destination)
TOP_CAPACITY = 8
#: chart steps per (group, country) before the series is summed into coarser steps
MAX_POINTS = 2000
#: distinct destinations (country, region, ASN) per group and day with a row of their own
MAX_DAY_DESTINATIONS = 2000
#: shown per row
TOP_SHOWN = 3


def day_of(event_time: float) -> str:
    return datetime.fromtimestamp(event_time, UTC).strftime("%Y-%m-%d")


@dataclass(slots=True)
class DayTotal:
    """What one group sent to one destination (country, region, ASN) on one UTC day."""

    group: str
    day: str
    country: str
    region: str
    asn: int
    as_org: str
    bytes: int = 0
    packets: int = 0
    flows: int = 0
    sources: TopK = field(default_factory=lambda: TopK(TOP_CAPACITY))
    destinations: TopK = field(default_factory=lambda: TopK(TOP_CAPACITY))

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "day": self.day,
            "country": self.country,
            "region": self.region,
            "asn": self.asn,
            "as_org": self.as_org,
            "bytes": self.bytes,
            "packets": self.packets,
            "flows": self.flows,
            "top_sources": [[a, n] for a, n in self.sources.top(TOP_SHOWN)],
            "top_destinations": [[a, n] for a, n in self.destinations.top(TOP_SHOWN)],
        }


@dataclass(slots=True)
class AlertSpan:
    """One alert from firing to resolved (``ends_at`` None while still firing at the end)."""

    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None = None

    @property
    def group(self) -> str:
        return self.labels.get("group", "")

    @property
    def destination(self) -> str:
        labels = self.labels
        parts = [labels.get("dst_country", "")]
        if labels.get("dst_region"):
            parts.append(labels["dst_region"])
        if labels.get("dst_asn"):
            parts.append(f"AS{labels['dst_asn']}")
        return " ".join(p for p in parts if p)

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": datetime.fromtimestamp(self.starts_at, UTC).isoformat(),
            "endsAt": (
                datetime.fromtimestamp(self.ends_at, UTC).isoformat()
                if self.ends_at is not None
                else None
            ),
        }


@dataclass(slots=True)
class ReportData:
    interval: float
    #: seconds summed into one chart point: the interval, or an hour or a day on long inputs
    step: float = 0.0
    #: group → country → step start → egress bytes
    series: dict[str, dict[str, dict[float, int]]] = field(default_factory=dict)
    days: dict[tuple[str, str, str], DayTotal] = field(default_factory=dict)
    alerts: list[AlertSpan] = field(default_factory=list)

    def groups(self) -> list[str]:
        return sorted(set(self.series) | {a.group for a in self.alerts})

    def totals(self, group: str | None = None) -> list[DayTotal]:
        """Day totals, by group, day, then bytes (largest first)."""
        rows = [t for t in self.days.values() if group is None or t.group == group]
        return sorted(rows, key=lambda t: (t.group, t.day, -t.bytes, t.country, t.region, t.asn))

    def top_destinations(self, group: str, n: int = 5) -> list[tuple[str, str, int]]:
        """(address, country, bytes) of the group's heaviest destination addresses over the
        whole input, summed from each day's top destinations (exact while few addresses carry
        the egress; an estimate, as the alerts' evidence is, past that)."""
        merged = TopK(64)
        country: dict[str, str] = {}
        for row in self.totals(group):
            merged.merge(row.destinations)
            for address in row.destinations.counts:
                country.setdefault(address, row.country)
        return [(address, country.get(address, ""), size) for address, size in merged.top(n)]

    def country_totals(self, group: str) -> dict[str, int]:
        return {c: sum(points.values()) for c, points in self.series.get(group, {}).items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_seconds": self.interval,
            "series_step_seconds": self.step or self.interval,
            "groups": {
                group: {
                    "egress_by_country": {
                        country: [
                            [datetime.fromtimestamp(start, UTC).isoformat(), size]
                            for start, size in sorted(points.items())
                        ]
                        for country, points in sorted(self.series.get(group, {}).items())
                    },
                    "top_destinations": [list(t) for t in self.top_destinations(group)],
                    "days": [t.to_json() for t in self.totals(group)],
                    "alerts": [a.to_json() for a in self.alerts if a.group == group],
                }
                for group in self.groups()
            },
        }


class ReportCollector:
    """Feeds :class:`ReportData` from closed intervals and alert events."""

    __slots__ = ("_first", "_open", "_per_day", "data")

    def __init__(self, interval: float) -> None:
        self.data = ReportData(interval, step=interval)
        self._open: dict[tuple[tuple[str, str], ...], AlertSpan] = {}
        self._first = math.inf
        #: destinations with a row of their own, per (group, day)
        self._per_day: dict[tuple[str, str], int] = {}

    def _coarsen(self, start: float) -> None:
        """Sum the series into hours (then days) once they would exceed MAX_POINTS steps."""
        data = self.data
        self._first = min(self._first, start)
        while (start - self._first) / data.step >= MAX_POINTS and data.step < 86400.0:
            step = 3600.0 if data.step < 3600.0 else 86400.0
            for by_country in data.series.values():
                for country, points in by_country.items():
                    merged: dict[float, int] = {}
                    for moment, size in points.items():
                        key = moment - moment % step
                        merged[key] = merged.get(key, 0) + size
                    by_country[country] = merged
            data.step = step

    def observe_interval(self, start: float, bucket: Bucket) -> None:
        series = self.data.series
        days = self.data.days
        day = day_of(start)
        self._coarsen(start)
        step = self.data.step
        point = start - start % step
        for (group, dest), accum in bucket.items():
            by_country = series.setdefault(group, {}).setdefault(dest.country, {})
            by_country[point] = by_country.get(point, 0) + accum.bytes
            key = (group, day, dest.key)
            total = days.get(key)
            if total is None:
                if self._per_day.get((group, day), 0) >= MAX_DAY_DESTINATIONS:
                    key = (group, day, dest.country)  # folded into the country's row
                    total = days.get(key)
                if total is None:
                    self._per_day[group, day] = self._per_day.get((group, day), 0) + 1
                    folded = key[2] == dest.country
                    total = days[key] = DayTotal(
                        group,
                        day,
                        dest.country,
                        "" if folded else dest.region,
                        0 if folded else dest.asn,
                        "" if folded else dest.as_org,
                    )
            total.bytes += accum.bytes
            total.packets += accum.packets
            total.flows += accum.flows
            total.sources.merge(accum.sources)
            total.destinations.merge(accum.destinations)

    def alert(self, event: dict[str, Any]) -> None:
        """One alert event (contract 2): a firing one opens a span, a resolved one ends it."""
        labels = {str(k): str(v) for k, v in event["labels"].items()}
        key = tuple(sorted(labels.items()))
        opened = self._open.pop(key, None)
        if event["status"] == "firing" or opened is None:
            # (a resolved event without its firing one comes from a restored state file)
            opened = AlertSpan(labels, dict(event["annotations"]), parse_rfc3339(event["startsAt"]))
            self.data.alerts.append(opened)
        if event["status"] == "firing":
            self._open[key] = opened
        else:
            opened.ends_at = parse_rfc3339(event["endsAt"])
