"""``egressd lookup``: what egressd knows about addresses (country, region, ASN, special range).

Prints the answer of every configured data source so an on-call engineer can see why an alert
named the country it did.
"""

from __future__ import annotations

from typing import TextIO

import orjson

from egressd.classify import EgressClassifier
from egressd.config import Config
from egressd.enrich.labeler import CompositeLabeler, LookupResult, build_labeler

#: exit codes, as ``check-config``: 2 = something given was invalid
EXIT_OK = 0
EXIT_INVALID = 2

_COLUMNS = (
    "ADDRESS",
    "GROUP",
    "COUNTRY",
    "REGION",
    "ASN",
    "ORGANISATION",
    "SPECIAL",
    "SOURCES",
)


def _row(result: LookupResult, group: str | None) -> tuple[str, ...]:
    """One table row; an address inside networks.local shows its group and "local": egressd
    never labels it with a country (it is a source, or east-west traffic)."""
    labels = result.labels
    sources = [f"country={result.country_source}"]
    if result.region_source:
        sources.append(f"region={result.region_source}")
    if result.asn_source:
        sources.append(f"asn={result.asn_source}")
    shown = result.normalized
    if shown != result.address.strip():
        shown = f"{result.address.strip()} ({shown})"
    return (
        shown,
        group or "-",
        "local" if group is not None else labels.country,
        labels.region or "-",
        f"AS{labels.asn}" if labels.asn else "-",
        labels.as_org or "-",
        result.special or "-",
        " ".join(sources),
    )


def _json(result: LookupResult, group: str | None) -> dict[str, object]:
    labels = result.labels
    return {
        "address": result.address,
        "normalized": result.normalized,
        "country": labels.country,
        "country_source": result.country_source,
        "region": labels.region or None,
        "region_source": result.region_source or None,
        "asn": labels.asn or None,
        "as_org": labels.as_org or None,
        "asn_source": result.asn_source or None,
        "special": result.special,
        "local": group is not None,
        "group": group,
        "egress_candidate": result.special is None and group is None,
    }


def lookup_main(
    config: Config | None, addresses: list[str], out: TextIO, as_json: bool = False
) -> int:
    """Print what egressd knows about each address; 2 when any address is invalid, after
    printing the others. Unusable geo data files raise :class:`ConfigError` (the CLI reports
    it on stderr and exits 2)."""
    config = config if config is not None else Config()
    labeler: CompositeLabeler = build_labeler(config.geo)
    classifier = EgressClassifier(config.networks, config.groups)
    status = EXIT_OK
    rows: list[tuple[str, ...]] = []
    try:
        for address in addresses:
            result = labeler.explain(address)
            if not result.valid:
                status = EXIT_INVALID
                if as_json:
                    line = {"address": address, "error": "not an IPv4 or IPv6 address"}
                    out.write(orjson.dumps(line).decode() + "\n")
                else:
                    rows.append((address, f"error: {address!r} is not an IPv4 or IPv6 address"))
                continue
            group = classifier.source_group(result.normalized)
            if as_json:
                out.write(orjson.dumps(_json(result, group)).decode() + "\n")
            else:
                rows.append(_row(result, group))
    finally:
        labeler.close()
    if not as_json:
        _write_table(rows, out)
    return status


def _write_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    full = [r for r in rows if len(r) == len(_COLUMNS)]
    widths = [len(c) for c in _COLUMNS]
    for row in full:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        # the last column is free text: no padding after it
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths, strict=False)]
        return "  ".join([*padded, cells[-1]]).rstrip() + "\n"

    out.write(line(_COLUMNS))
    for row in rows:
        if len(row) == len(_COLUMNS):
            out.write(line(row))
        else:
            out.write(row[1] + "\n")
