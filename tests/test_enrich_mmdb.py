"""mmdb readers: each vendor layout answers country / ASN; bad files and addresses are safe."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from enrich_mmdb_factory import (
    BUILD_EPOCH,
    dbip_country,
    ipinfo_lite,
    maxmind_asn,
    maxmind_city,
    maxmind_country,
    write_mmdb,
)

from egressd.enrich.mmdb import MmdbDatabase, MmdbLayout
from egressd.errors import ConfigError

MALFORMED = ["", "foo", "1.2.3", "1.2.3.4.5", "256.1.1.1", "::ffff:zz", "fe80::1%eth0", "1.2.3.4\0"]


def test_geolite2_country_uses_country_then_registered_country(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "c.mmdb",
        "GeoLite2-Country",
        {
            "81.2.69.0/24": maxmind_country("GB", "GB"),
            # anycast / satellite blocks carry only registered_country
            "1.0.0.0/24": maxmind_country(None, "AU"),
            "2a02:ec0::/29": maxmind_country("DE", "DE"),
        },
    )
    db = MmdbDatabase.open(path, role="country")
    assert db.layout is MmdbLayout.COUNTRY
    assert db.database_type == "GeoLite2-Country"
    assert db.name == "mmdb:GeoLite2-Country"
    assert db.build_epoch == BUILD_EPOCH
    assert db.country("81.2.69.160") == "GB"
    assert db.country("1.0.0.7") == "AU"
    assert db.country("2a02:ec0::1") == "DE"
    assert db.country("8.8.8.8") is None
    assert db.country("2001:db8::1") is None
    db.close()


def test_geolite2_city(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "city.mmdb", "GeoLite2-City", {"2.125.160.0/20": maxmind_city("GB", "Boxford")}
    )
    db = MmdbDatabase.open(path, role="country")
    assert db.layout is MmdbLayout.COUNTRY
    assert db.country("2.125.160.216") == "GB"


def test_geolite2_asn(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "asn.mmdb",
        "GeoLite2-ASN",
        {
            "1.128.0.0/11": maxmind_asn(1221, "Telstra Pty Ltd"),
            "2600:1f00::/24": maxmind_asn(16509, "AMAZON-02"),
        },
    )
    db = MmdbDatabase.open(path, role="asn")
    assert db.layout is MmdbLayout.ASN
    assert db.asn("1.128.0.1") == (1221, "Telstra Pty Ltd")
    assert db.asn("2600:1f00::5") == (16509, "AMAZON-02")
    assert db.asn("9.9.9.9") == (0, "")


def test_dbip_lite_country_and_asn(tmp_path: Path) -> None:
    country = write_mmdb(
        tmp_path / "dbip-country.mmdb", "DBIP-Country-Lite", {"5.0.0.0/16": dbip_country("FR")}
    )
    asn = write_mmdb(
        tmp_path / "dbip-asn.mmdb",
        "DBIP-ASN-Lite (compat=GeoLite2-ASN)",
        {"5.0.0.0/16": maxmind_asn(12322, "Free SAS")},
    )
    assert MmdbDatabase.open(country, role="country").country("5.0.1.2") == "FR"
    db = MmdbDatabase.open(asn, role="asn")
    assert db.layout is MmdbLayout.ASN
    assert db.asn("5.0.1.2") == (12322, "Free SAS")


def test_ipinfo_lite_answers_country_and_asn(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "ipinfo_lite.mmdb",
        "ipinfo ipinfo_lite.mmdb",
        {
            "1.1.1.0/24": ipinfo_lite("AU", 13335, "Cloudflare, Inc."),
            "2606:4700::/32": ipinfo_lite("US", 13335, "Cloudflare, Inc."),
        },
    )
    for role in ("country", "asn"):
        db = MmdbDatabase.open(path, role=role)
        assert db.layout is MmdbLayout.IPINFO
        # "country" in IPinfo lite is the country's name; the code comes from country_code
        assert db.country("1.1.1.1") == "AU"
        assert db.country("2606:4700::1111") == "US"
        assert db.asn("1.1.1.1") == (13335, "Cloudflare, Inc.")


@pytest.mark.parametrize(
    ("record", "layout"),
    [
        (maxmind_country("NL"), MmdbLayout.COUNTRY),
        (maxmind_asn(64500, "Example"), MmdbLayout.ASN),
        (ipinfo_lite("NL", 64500, "Example"), MmdbLayout.IPINFO),
    ],
)
def test_layout_detected_from_records_when_type_is_unknown(
    tmp_path: Path, record: dict[str, object], layout: MmdbLayout
) -> None:
    path = write_mmdb(tmp_path / "x.mmdb", "Custom-Build", {"8.8.8.0/24": record})
    assert MmdbDatabase.open(path).layout is layout


def test_unrecognised_database_is_config_error(tmp_path: Path) -> None:
    path = write_mmdb(tmp_path / "weird.mmdb", "Custom-Build", {"8.8.8.0/24": {"colour": "blue"}})
    with pytest.raises(ConfigError, match=r"weird\.mmdb"):
        MmdbDatabase.open(path)


def test_role_mismatch_is_config_error(tmp_path: Path) -> None:
    asn = write_mmdb(tmp_path / "asn.mmdb", "GeoLite2-ASN", {"1.0.0.0/24": maxmind_asn(1, "x")})
    country = write_mmdb(
        tmp_path / "country.mmdb", "GeoLite2-Country", {"1.0.0.0/24": maxmind_country("AU")}
    )
    with pytest.raises(ConfigError, match=r"asn\.mmdb.*no country data"):
        MmdbDatabase.open(asn, role="country")
    with pytest.raises(ConfigError, match=r"country\.mmdb.*no ASN data"):
        MmdbDatabase.open(country, role="asn")


@pytest.mark.parametrize(
    "content", [b"", b"not an mmdb at all" * 50, b"\xab\xcd\xefMaxMind.com" + b"\x00" * 10]
)
def test_invalid_file_is_config_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mmdb"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"broken\.mmdb"):
        MmdbDatabase.open(path)


def test_missing_file_and_directory_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.mmdb.*does not exist"):
        MmdbDatabase.open(tmp_path / "absent.mmdb")
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        MmdbDatabase.open(tmp_path)


def test_malformed_addresses_never_raise(tmp_path: Path) -> None:
    path = write_mmdb(tmp_path / "c.mmdb", "GeoLite2-Country", {"0.0.0.0/0": maxmind_country("GB")})
    db = MmdbDatabase.open(path)
    # The reader parses leniently ("1.2.3" is 1.2.0.3, as inet_aton does); validating text
    # is the labeler's job. Here it only matters that nothing raises.
    for address in [*MALFORMED, None, 42]:
        assert db.country(address) in (None, "GB")  # type: ignore[arg-type]
        assert db.asn(address) == (0, "")  # type: ignore[arg-type]
    assert db.country("foo") is None


def test_ipv4_only_database_answers_none_for_ipv6(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "v4.mmdb", "GeoLite2-Country", {"1.0.0.0/8": maxmind_country("AU")}, ip_version=4
    )
    db = MmdbDatabase.open(path)
    assert db.country("1.2.3.4") == "AU"
    assert db.country("2001:4860::1") is None


def test_in_place_overwrite_does_not_disturb_open_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = write_mmdb(
        tmp_path / "c.mmdb", "GeoLite2-Country", {"81.2.69.0/24": maxmind_country("GB")}
    )
    db = MmdbDatabase.open(path)
    assert list(scratch.iterdir()) == []  # the private copy is unlinked once mapped
    # truncating a file under a live mapping would SIGBUS a reader that mapped it directly
    path.write_bytes(b"")
    assert db.country("81.2.69.1") == "GB"
    write_mmdb(path, "GeoLite2-Country", {"81.2.69.0/24": maxmind_country("FR")})
    assert db.country("81.2.69.1") == "GB"
    assert MmdbDatabase.open(path).country("81.2.69.1") == "FR"
