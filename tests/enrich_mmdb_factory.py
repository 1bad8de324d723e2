"""Builds small mmdb files in each vendor layout for the enrich tests (via mmdb_writer).

Records mirror the vendors' documented shapes; the tests derive expectations from these dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

BUILD_EPOCH = 1_700_000_000


class _FixedEpochWriter(MMDBWriter):
    """mmdb_writer stamps the current time; tests want a known build date."""

    def __init__(self, build_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = super()._build_meta()
        meta["build_epoch"] = self._build_epoch
        return meta


def write_mmdb(
    path: Path,
    database_type: str,
    records: dict[str, dict[str, Any]],
    *,
    ip_version: int = 6,
    build_epoch: int = BUILD_EPOCH,
) -> Path:
    """Write ``{cidr: record}`` as an mmdb file of ``database_type``; returns ``path``."""
    writer = _FixedEpochWriter(
        build_epoch,
        ip_version=ip_version,
        database_type=database_type,
        ipv4_compatible=ip_version == 6,
        int_type="u32",
    )
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return path


def maxmind_country(iso: str | None, registered: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"continent": {"code": "EU", "names": {"en": "Europe"}}}
    if iso:
        record["country"] = {"iso_code": iso, "names": {"en": iso}, "geoname_id": 1}
    if registered:
        record["registered_country"] = {"iso_code": registered, "geoname_id": 2}
    return record


def maxmind_city(iso: str, city: str) -> dict[str, Any]:
    record = maxmind_country(iso, iso)
    record["city"] = {"names": {"en": city}, "geoname_id": 3}
    record["location"] = {"latitude": 51.5, "longitude": -0.1, "accuracy_radius": 50}
    return record


def maxmind_asn(asn: int, org: str) -> dict[str, Any]:
    return {"autonomous_system_number": asn, "autonomous_system_organization": org}


def dbip_country(iso: str) -> dict[str, Any]:
    return {"continent": {"code": "NA"}, "country": {"iso_code": iso, "names": {"en": iso}}}


def ipinfo_lite(iso: str, asn: int, org: str) -> dict[str, Any]:
    return {
        "asn": f"AS{asn}",
        "as_name": org,
        "as_domain": "example.com",
        "country_code": iso,
        "country": f"Country of {iso}",
        "continent_code": "EU",
        "continent": "Europe",
    }
