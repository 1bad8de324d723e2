"""``egressd lookup``: per-address answers with sources, table and JSON forms, exit codes."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import iptocc
import pytest
from enrich_mmdb_factory import maxmind_asn, maxmind_country, write_mmdb

from egressd.cli import main as cli_main
from egressd.config import Config, GeoConfig, RegionMapConfig, parse_config
from egressd.errors import ConfigError
from egressd.lookup import lookup_main


def _config(tmp_path: Path) -> Config:
    country = write_mmdb(
        tmp_path / "GeoLite2-Country.mmdb",
        "GeoLite2-Country",
        {"47.100.0.0/16": maxmind_country("CN")},
    )
    asn = write_mmdb(
        tmp_path / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        {
            "47.100.0.0/16": maxmind_asn(37963, "Hangzhou Alibaba Advertising Co.,Ltd."),
            "2600:1f00::/24": maxmind_asn(16509, "AMAZON-02"),
        },
    )
    aws = tmp_path / "ip-ranges.json"
    aws.write_text(
        json.dumps({"ipv6_prefixes": [{"ipv6_prefix": "2600:1f00::/24", "region": "us-east-1"}]})
    )
    return Config(
        geo=GeoConfig(
            country_mmdb=country,
            asn_mmdb=asn,
            region_maps=(RegionMapConfig(format="aws", path=aws),),
        )
    )


def _run(config: Config | None, addresses: list[str], as_json: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = lookup_main(config, addresses, out, as_json=as_json)
    return code, out.getvalue()


def test_json_lines_ipv4_ipv6_mapped(tmp_path: Path) -> None:
    code, text = _run(
        _config(tmp_path),
        ["47.100.23.45", "2600:1f00::9", "::ffff:47.100.1.1", "10.20.0.17"],
        as_json=True,
    )
    assert code == 0
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0] == {
        "address": "47.100.23.45",
        "normalized": "47.100.23.45",
        "country": "CN",
        "country_source": "mmdb:GeoLite2-Country",
        "region": None,
        "region_source": None,
        "asn": 37963,
        "as_org": "Hangzhou Alibaba Advertising Co.,Ltd.",
        "asn_source": "mmdb:GeoLite2-ASN",
        "special": None,
        "local": False,
        "group": None,
        "egress_candidate": True,
    }
    assert rows[1]["region"] == "aws/us-east-1"
    assert rows[1]["region_source"] == "aws:ip-ranges.json"
    assert rows[1]["country"] == iptocc.country_code("2600:1f00::9")
    assert rows[1]["country_source"] == "embedded"
    assert rows[1]["asn"] == 16509
    assert rows[2]["normalized"] == "47.100.1.1" and rows[2]["country"] == "CN"
    assert rows[3]["special"] == "private" and rows[3]["egress_candidate"] is False
    assert rows[3]["country"] == "ZZ" and rows[3]["country_source"] == "none"


def test_table_and_invalid_address_exit_2(tmp_path: Path) -> None:
    code, text = _run(
        _config(tmp_path), ["47.100.23.45", "not-an-ip", "2600:1f00::9", "::ffff:47.100.1.1"]
    )
    assert code == 2
    lines = text.splitlines()
    assert lines[0].split() == [
        "ADDRESS",
        "GROUP",
        "COUNTRY",
        "REGION",
        "ASN",
        "ORGANISATION",
        "SPECIAL",
        "SOURCES",
    ]
    assert lines[1].split()[:5] == ["47.100.23.45", "-", "CN", "-", "AS37963"]
    assert "country=mmdb:GeoLite2-Country" in lines[1] and "asn=mmdb:GeoLite2-ASN" in lines[1]
    assert lines[2] == "error: 'not-an-ip' is not an IPv4 or IPv6 address"
    assert lines[3].split()[:5] == [
        "2600:1f00::9",
        "-",
        iptocc.country_code("2600:1f00::9"),
        "aws/us-east-1",
        "AS16509",
    ]
    assert "region=aws:ip-ranges.json" in lines[3]
    assert lines[4].startswith("::ffff:47.100.1.1 (47.100.1.1)")
    # columns line up: COUNTRY starts at the same offset on every row
    offset = lines[0].index("COUNTRY")
    assert lines[1][offset : offset + 2] == "CN"


def test_without_config_uses_embedded_data() -> None:
    code, text = _run(None, ["8.8.8.8", "2001:db8::1"], as_json=True)
    assert code == 0
    first, second = (json.loads(line) for line in text.splitlines())
    assert (first["country"], first["country_source"]) == (
        iptocc.country_code("8.8.8.8"),
        "embedded",
    )
    assert first["asn"] is None and first["region"] is None
    assert second["special"] == "documentation"


def test_invalid_json_line(tmp_path: Path) -> None:
    code, text = _run(None, ["1.2.3", "1.1.1.1"], as_json=True)
    assert code == 2
    first, second = (json.loads(line) for line in text.splitlines())
    assert first == {"address": "1.2.3", "error": "not an IPv4 or IPv6 address"}
    assert second["country"] == iptocc.country_code("1.1.1.1")


def test_broken_geo_data_raises_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"x" * 64)
    config = parse_config(f'[geo]\ncountry_mmdb = "{bad}"\n', "egressd.toml")
    with pytest.raises(ConfigError, match=re.escape(f"geo.country_mmdb: {bad}: not a valid")):
        _run(config, ["1.1.1.1"])


def test_cli_lookup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "egressd.toml"
    config.write_text(f'[[geo.region_maps]]\nformat = "csv"\npath = "{tmp_path / "r.csv"}"\n')
    (tmp_path / "r.csv").write_text("2001:db8::/32,lab/docs\n")
    assert cli_main(["lookup", "--config", str(config), "--json", "2001:db8::5"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["region"], row["region_source"], row["special"]) == (
        "lab/docs",
        "csv:r.csv",
        "documentation",
    )
    assert cli_main(["lookup", "8.8.8.8", "nope"]) == 2
    out = capsys.readouterr().out
    assert "error: 'nope' is not an IPv4 or IPv6 address" in out
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[geo]\ncountry_mmdb = "{config}"\n')  # a TOML file is no mmdb
    assert cli_main(["lookup", "--config", str(bad), "8.8.8.8"]) == 2
    assert "not a valid MaxMind DB" in capsys.readouterr().err


def test_local_address_shows_its_group_and_local(tmp_path: Path) -> None:
    config = parse_config(
        '[networks]\nlocal = ["10.0.0.0/8", "81.2.69.0/24"]\n'
        '[[groups]]\nname = "research"\nsources = ["10.20.0.0/16"]\n'
    )
    code, text = _run(config, ["10.20.0.17", "10.99.0.1", "81.2.69.160", "81.2.70.1"])
    assert code == 0
    rows = [line.split()[:3] for line in text.splitlines()[1:]]
    assert rows == [
        ["10.20.0.17", "research", "local"],
        ["10.99.0.1", "other", "local"],
        ["81.2.69.160", "other", "local"],  # a public range declared local is not a destination
        ["81.2.70.1", "-", iptocc.country_code("81.2.70.1")],
    ]
    code, text = _run(config, ["10.20.0.17", "81.2.70.1"], as_json=True)
    first, second = (json.loads(line) for line in text.splitlines())
    assert (first["local"], first["group"], first["egress_candidate"]) == (True, "research", False)
    assert (second["local"], second["group"], second["egress_candidate"]) == (False, None, True)
