"""What every alert carries: its labels, and evidence lists formatted the same way."""

from __future__ import annotations

from dataclasses import dataclass

from egressd.enrich import DestinationLabels
from egressd.sketch import TopK
from egressd.units import format_bytes


@dataclass(frozen=True, slots=True)
class LabelOptions:
    """Which destination labels alerts carry (only those configured, to bound cardinality)."""

    regions: bool = False
    asn: bool = False


def alert_labels(
    alertname: str, group: str, dest: DestinationLabels, severity: str, options: LabelOptions
) -> dict[str, str]:
    labels = {"alertname": alertname, "group": group, "dst_country": dest.country}
    if options.regions and dest.region:
        labels["dst_region"] = dest.region
    if options.asn and dest.asn:
        labels["dst_asn"] = f"AS{dest.asn}"
    labels["severity"] = severity
    return labels


def top(sketch: TopK, n: int) -> str:
    """The ``n`` heaviest items, comma-separated (annotations ``top_sources`` and the like)."""
    return ",".join(item for item, _ in sketch.top(n))


def top_with_bytes(sketch: TopK, n: int) -> str:
    """The ``n`` heaviest items with their bytes, for descriptions."""
    return ", ".join(f"{item} ({format_bytes(weight)})" for item, weight in sketch.top(n))
