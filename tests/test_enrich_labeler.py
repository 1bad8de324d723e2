"""Composed labeler: mmdb country with embedded fallback, region maps, ASN, cache and reload."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import iptocc
import numpy as np
import pytest
from enrich_mmdb_factory import BUILD_EPOCH, ipinfo_lite, maxmind_asn, maxmind_country, write_mmdb
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.config import GeoConfig, RegionMapConfig
from egressd.enrich import UNKNOWN_COUNTRY, DestinationLabeler, DestinationLabels
from egressd.enrich.address import format_address, parse_address
from egressd.enrich.embedded import EmbeddedCountryLabeler, numbered_answers
from egressd.enrich.labeler import CompositeLabeler, build_labeler
from egressd.errors import ConfigError

AWS = {
    "syncToken": "1709251234",
    "prefixes": [
        {"ip_prefix": "52.0.0.0/11", "region": "us-east-1", "service": "AMAZON"},
        {"ip_prefix": "8.8.8.0/24", "region": "eu-west-2", "service": "EC2"},
    ],
    "ipv6_prefixes": [
        {"ipv6_prefix": "2600:1f00::/24", "region": "us-east-1", "service": "AMAZON"}
    ],
}


def _bump(path: Path) -> None:
    """Make sure a rewritten file looks changed even on coarse-mtime filesystems."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    country = write_mmdb(
        tmp_path / "GeoLite2-Country.mmdb",
        "GeoLite2-Country",
        {
            # deliberately not what the embedded data says, to see which source answered
            "8.8.8.0/24": maxmind_country("GB", "US"),
            "2001:4860::/32": maxmind_country("DE"),
        },
    )
    asn = write_mmdb(
        tmp_path / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        {
            "8.8.8.0/24": maxmind_asn(15169, "GOOGLE"),
            "2600:1f00::/24": maxmind_asn(16509, "AMAZON-02"),
        },
    )
    aws = tmp_path / "ip-ranges.json"
    aws.write_text(json.dumps(AWS))
    csv = tmp_path / "own.csv"
    csv.write_text("52.1.0.0/16,dc/special\n")
    return {"country": country, "asn": asn, "aws": aws, "csv": csv}


def _full(files: dict[str, Path], cache_size: int = 1000) -> CompositeLabeler:
    return build_labeler(
        GeoConfig(
            country_mmdb=files["country"],
            asn_mmdb=files["asn"],
            region_maps=(
                RegionMapConfig(format="aws", path=files["aws"]),
                RegionMapConfig(format="csv", path=files["csv"]),
            ),
            cache_size=cache_size,
        )
    )


def test_embedded_only_matches_iptocc() -> None:
    labeler = build_labeler(GeoConfig())
    assert not labeler.has_regions and not labeler.has_asn
    for address in ["8.8.8.8", "1.1.1.1", "2001:4860::1", "81.2.69.160"]:
        labels = labeler.label(address)
        assert labels.country == iptocc.country_code(address)
        assert labels.source == "embedded"
        assert labels.region == "" and labels.asn == 0


def test_is_a_destination_labeler(files: dict[str, Path]) -> None:
    labeler: DestinationLabeler = _full(files)
    assert labeler.has_regions and labeler.has_asn


def test_mmdb_answers_first_and_embedded_fills_gaps(files: dict[str, Path]) -> None:
    labeler = _full(files)
    assert labeler.label("8.8.8.8").country == "GB"
    assert labeler.label("8.8.8.8").source == "mmdb:GeoLite2-Country"
    assert labeler.label("2001:4860::1").country == "DE"
    # not in the mmdb: the embedded data answers
    fallback = labeler.label("1.1.1.1")
    assert fallback.country == iptocc.country_code("1.1.1.1")
    assert fallback.source == "embedded"


def test_regions_first_map_wins_and_asn(files: dict[str, Path]) -> None:
    labeler = _full(files)
    full = labeler.label("8.8.8.8")
    assert (full.region, full.asn, full.as_org) == ("aws/eu-west-2", 15169, "GOOGLE")
    assert full.key == "GB|aws/eu-west-2|15169"
    # the csv has a longer prefix for 52.1/16, but the aws map is listed first and covers it
    assert labeler.label("52.1.2.3").region == "aws/us-east-1"
    v6 = labeler.label("2600:1f00::10")
    assert (v6.region, v6.asn, v6.as_org) == ("aws/us-east-1", 16509, "AMAZON-02")
    assert labeler.label("9.9.9.9").region == ""


def test_mapped_ipv6_is_labelled_as_ipv4(files: dict[str, Path]) -> None:
    labeler = _full(files)
    assert labeler.label("::ffff:8.8.8.8") == labeler.label("8.8.8.8")
    assert labeler.label("::ffff:1.1.1.1").country == iptocc.country_code("1.1.1.1")


def test_malformed_addresses_never_raise(files: dict[str, Path]) -> None:
    labeler = _full(files)
    for address in ["", "foo", "1.2.3", "8.8.8.8/32", "::ffff:zz", "fe80::1%eth0"]:
        labels = labeler.label(address)
        assert labels.country == UNKNOWN_COUNTRY
        assert labels.source == "none"


def test_label_many_in_order(files: dict[str, Path]) -> None:
    labeler = _full(files)
    addresses = ["8.8.8.8", "bogus", "1.1.1.1", "2600:1f00::1", "8.8.8.8"]
    assert labeler.label_many(addresses) == [labeler.label(a) for a in addresses]


def test_labels_are_interned_within_a_bound(files: dict[str, Path]) -> None:
    labeler = _full(files, cache_size=4)
    first = labeler.label("8.8.8.8")
    assert labeler.label("8.8.8.8") is first
    # same answer for another address in the block: the very same object
    assert labeler.label("8.8.8.9") is first
    for i in range(10):
        labeler.label(f"{i + 1}.{i}.9.9")
        assert len(labeler._interned) <= 4
    assert labeler.label("8.8.8.8") == first


def test_explain_names_every_source(files: dict[str, Path]) -> None:
    result = _full(files).explain("::ffff:8.8.8.8")
    assert result.normalized == "8.8.8.8"
    assert result.country_source == "mmdb:GeoLite2-Country"
    assert result.region_source == "aws:ip-ranges.json"
    assert result.asn_source == "mmdb:GeoLite2-ASN"
    assert result.special is None
    private = _full(files).explain("10.0.0.1")
    assert private.special == "private" and private.labels.country == UNKNOWN_COUNTRY
    assert not _full(files).explain("nope").valid


def test_build_info(files: dict[str, Path]) -> None:
    info = _full(files).build_info()
    assert info["mmdb:GeoLite2-Country"] == BUILD_EPOCH
    assert info["mmdb:GeoLite2-ASN"] == BUILD_EPOCH
    assert info["aws:ip-ranges.json"] == 1709251234.0
    assert info["csv:own.csv"] == pytest.approx(files["csv"].stat().st_mtime)
    assert build_labeler(GeoConfig()).build_info() == {}


def test_ipinfo_lite_as_both_country_and_asn(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "ipinfo_lite.mmdb",
        "ipinfo ipinfo_lite.mmdb",
        {"1.1.1.0/24": ipinfo_lite("AU", 13335, "Cloudflare, Inc.")},
    )
    labels = build_labeler(GeoConfig(country_mmdb=path, asn_mmdb=path)).label("1.1.1.1")
    assert (labels.country, labels.asn, labels.as_org) == ("AU", 13335, "Cloudflare, Inc.")


def test_build_reports_every_broken_file(tmp_path: Path) -> None:
    bad_mmdb = tmp_path / "bad.mmdb"
    bad_mmdb.write_bytes(b"junk" * 100)
    bad_aws = tmp_path / "ip-ranges.json"
    bad_aws.write_text("{")
    geo = GeoConfig(
        country_mmdb=bad_mmdb,
        asn_mmdb=tmp_path / "missing.mmdb",
        region_maps=(RegionMapConfig(format="aws", path=bad_aws),),
    )
    with pytest.raises(ConfigError) as info:
        build_labeler(geo)
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"geo.country_mmdb: {bad_mmdb}")
    assert problems[1].startswith(f"geo.asn_mmdb: {tmp_path / 'missing.mmdb'}")
    assert problems[2].startswith(f"geo.region_maps[0]: {bad_aws}")


# --------------------------------------------------------------------------- reload


def test_reload_picks_up_changed_files(files: dict[str, Path]) -> None:
    labeler = _full(files)
    assert labeler.reload_if_changed() is False
    assert labeler.label("8.8.8.8").country == "GB"
    write_mmdb(
        files["country"],
        "GeoLite2-Country",
        {"8.8.8.0/24": maxmind_country("FR")},
        build_epoch=BUILD_EPOCH + 86400,
    )
    _bump(files["country"])
    files["aws"].write_text(
        json.dumps({"prefixes": [{"ip_prefix": "8.8.0.0/16", "region": "sa-east-1"}]})
    )
    _bump(files["aws"])
    assert labeler.reload_if_changed() is True
    assert labeler.reload_problems == []
    labels = labeler.label("8.8.8.8")  # the cache was cleared
    assert (labels.country, labels.region) == ("FR", "aws/sa-east-1")
    assert labeler.build_info()["mmdb:GeoLite2-Country"] == BUILD_EPOCH + 86400
    assert labeler.reloads == 1


def test_reload_keeps_old_data_when_new_file_is_broken(files: dict[str, Path]) -> None:
    labeler = _full(files)
    before = labeler.label("8.8.8.8")
    files["country"].write_bytes(b"half a download")
    _bump(files["country"])
    files["aws"].write_text('{"prefixes": [')
    _bump(files["aws"])
    assert labeler.reload_if_changed() is False
    assert labeler.reload_failures == 2
    assert len(labeler.reload_problems) == 2
    assert str(files["country"]) in labeler.reload_problems[0]
    assert "keeping the previously loaded data" in labeler.reload_problems[0]
    assert "not valid JSON" in labeler.reload_problems[1]
    assert labeler.label("8.8.8.8") == before
    # the same broken version is reported once, not at every check
    assert labeler.reload_if_changed() is False
    assert labeler.reload_problems == [] and labeler.reload_failures == 2
    # fixed later: picked up
    write_mmdb(files["country"], "GeoLite2-Country", {"8.8.8.0/24": maxmind_country("IE")})
    _bump(files["country"])
    assert labeler.reload_if_changed() is True
    assert labeler.label("8.8.8.8").country == "IE"


def test_reload_keeps_data_when_file_disappears(files: dict[str, Path]) -> None:
    labeler = _full(files)
    files["csv"].unlink()
    assert labeler.reload_if_changed() is False
    assert "disappeared" in labeler.reload_problems[0]
    assert labeler.reload_if_changed() is False and labeler.reload_problems == []
    assert labeler.label("8.8.8.8").region == "aws/eu-west-2"


def test_reload_rejects_role_change(files: dict[str, Path]) -> None:
    labeler = _full(files)
    write_mmdb(files["country"], "GeoLite2-ASN", {"8.8.8.0/24": maxmind_asn(1, "x")})
    _bump(files["country"])
    assert labeler.reload_if_changed() is False
    assert "no country data" in labeler.reload_problems[0]
    assert labeler.label("8.8.8.8").country == "GB"


@pytest.mark.parametrize("full", [True, False], ids=["mmdb-regions", "embedded"])
def test_label_parsed_gives_the_same_labels_as_label(files: dict[str, Path], full: bool) -> None:
    labeler = _full(files) if full else build_labeler(GeoConfig())
    addresses = ["8.8.8.8", "1.1.1.1", "52.1.2.3", "2600:1f00::10", "2001:4860::1", "9.9.9.9"]
    parsed = [parse_address(a) for a in addresses]
    assert all(p is not None for p in parsed)
    batch = labeler.label_parsed([p for p in parsed if p is not None], addresses)
    one_by_one = [labeler.label(a) for a in addresses]
    assert batch == one_by_one
    for a, b in zip(batch, one_by_one, strict=True):
        assert a is b  # interned: the very objects the record path keys buckets by
        assert (a.as_org, a.source) == (b.as_org, b.source)


_ADDRESS_TEXTS = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda v: format_address(4, v)),
    st.integers(0, 2**128 - 1).map(lambda v: format_address(6, v)),
    # where countries start and end (and where there is none): many equal answers
    st.sampled_from(["8.8.8.8", "1.1.1.1", "0.0.0.1", "10.1.2.3", "2001:4860::1", "::1"]),
)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_ADDRESS_TEXTS, max_size=60))
def test_label_numbered_is_label_many_numbered_by_first_use(texts: list[str]) -> None:
    """Both labelers' batch answer with only the embedded data: the label objects each text
    gets from label_many, numbered in order of first use (what the engine's batch path
    expects of them), equal labels possibly under two numbers."""
    for labeler in (EmbeddedCountryLabeler(), build_labeler(GeoConfig())):
        assert labeler.embedded_only
        objects, index = labeler.label_numbered(texts)
        assert index.dtype == np.int64 and len(index) == len(texts)
        expected = labeler.label_many(texts)
        assert [objects[i] for i in index.tolist()] == expected
        assert [labels.source for labels in (objects[i] for i in index.tolist())] == [
            labels.source for labels in expected
        ]
        # first use: index 0 first, and each new number one past the largest so far
        seen = -1
        for i in index.tolist():
            assert i <= seen + 1
            seen = max(seen, i)
        assert seen + 1 == len(objects)


def test_configured_files_are_not_embedded_only(files: dict[str, Path]) -> None:
    """Any data file makes labels depend on more than the embedded data: the engine then
    keeps them in its destination cache."""
    assert not _full(files).embedded_only
    assert not build_labeler(GeoConfig(country_mmdb=files["country"])).embedded_only
    assert not build_labeler(GeoConfig(asn_mmdb=files["asn"])).embedded_only
    only_regions = GeoConfig(region_maps=(RegionMapConfig(format="csv", path=files["csv"]),))
    assert not build_labeler(only_regions).embedded_only


_ANSWERS = st.one_of(
    st.none(),
    st.sampled_from(["US", "CN", "GB", "NO", "ZZ"]),
    st.text(alphabet="AB|\0é", max_size=3),  # not country codes: the general numbering
)


@settings(max_examples=500, deadline=None)
@given(answers=st.lists(_ANSWERS, max_size=40))
def test_numbered_answers_number_by_first_appearance(answers: list[str | None]) -> None:
    """The embedded data's answers numbered as a plain loop numbers them, whatever they
    are: two-letter codes (the fast numbering), None, and strings of other lengths or with
    the characters the fast numbering leans on (which must fall back)."""
    distinct, index = numbered_answers(answers)
    expected: list[str | None] = []
    for answer in answers:
        if answer not in expected:
            expected.append(answer)
    assert distinct == expected
    assert index.dtype == np.int64
    assert index.tolist() == [expected.index(answer) for answer in answers]


def test_numbered_answers_keep_none_apart_from_two_nuls() -> None:
    assert numbered_answers([None, "\0\0", "US"])[0] == [None, "\0\0", "US"]
    assert numbered_answers(["A|", "B", "|C"])[1].tolist() == [0, 1, 2]


def test_labels_hash_as_their_destination_key() -> None:
    """Labels are dict keys beside each other and beside labels restored from a state file:
    equal labels (the same country, region and ASN, whatever organisation or source) hash
    alike, as their key text does, also after a copy or a pickle round trip."""
    plain = DestinationLabels("CN")
    cloud = DestinationLabels("US", "aws/us-east-1", 16509, "Amazon", "mmdb:asn.mmdb")
    restored = DestinationLabels.from_key(cloud.key)
    assert hash(plain) == hash("CN")
    assert hash(cloud) == hash("US|aws/us-east-1|16509") == hash(restored)
    assert cloud == restored and cloud != plain
    for labels in (plain, cloud):
        for twin in (copy.copy(labels), copy.deepcopy(labels), pickle.loads(pickle.dumps(labels))):
            assert twin == labels and hash(twin) == hash(labels)
    table = {("g", cloud): 1, ("g", plain): 2}
    assert table[("g", restored)] == 1 and table[("g", DestinationLabels("CN", as_org="x"))] == 2
    assert ("g", DestinationLabels("CN", "aws/cn-north-1")) not in table
