"""Region maps: AWS / GCP / Azure / CSV loaders, longest-prefix match, malformed files."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.config import RegionMapConfig
from egressd.enrich.regions import (
    RegionMap,
    load_aws,
    load_azure,
    load_csv,
    load_gcp,
    load_region_map,
)
from egressd.errors import ConfigError

AWS = {
    "syncToken": "1709251234",
    "createDate": "2024-03-01-00-00-34",
    "prefixes": [
        {
            "ip_prefix": "3.0.0.0/9",
            "region": "us-east-1",
            "service": "AMAZON",
            "network_border_group": "us-east-1",
        },
        # a more specific prefix inside the /9 belongs to another region
        {
            "ip_prefix": "3.5.140.0/22",
            "region": "ap-northeast-2",
            "service": "AMAZON",
            "network_border_group": "ap-northeast-2",
        },
        {
            "ip_prefix": "3.5.140.0/22",
            "region": "ap-northeast-2",
            "service": "S3",
            "network_border_group": "ap-northeast-2",
        },
        {
            "ip_prefix": "3.5.140.0/22",
            "region": "ap-northeast-2",
            "service": "EC2",
            "network_border_group": "ap-northeast-2",
        },
        {
            "ip_prefix": "13.32.0.0/15",
            "region": "GLOBAL",
            "service": "CLOUDFRONT",
            "network_border_group": "GLOBAL",
        },
        {
            "ip_prefix": "52.94.76.0/22",
            "region": "GLOBAL",
            "service": "AMAZON",
            "network_border_group": "GLOBAL",
        },
        {
            "ip_prefix": "52.94.76.0/22",
            "region": "us-west-2",
            "service": "AMAZON",
            "network_border_group": "us-west-2",
        },
    ],
    "ipv6_prefixes": [
        {
            "ipv6_prefix": "2600:1f00::/24",
            "region": "us-east-1",
            "service": "AMAZON",
            "network_border_group": "us-east-1",
        },
        {
            "ipv6_prefix": "2600:1f18::/33",
            "region": "us-east-2",
            "service": "EC2",
            "network_border_group": "us-east-2",
        },
    ],
}

GCP = {
    "syncToken": "1709251234567",
    "creationTime": "2024-03-01T00:00:34.567000",
    "prefixes": [
        {"ipv4Prefix": "34.0.0.0/15", "service": "Google Cloud", "scope": "us-central1"},
        {"ipv4Prefix": "34.1.208.0/20", "service": "Google Cloud", "scope": "africa-south1"},
        {"ipv6Prefix": "2600:1900::/28", "service": "Google Cloud", "scope": "us-central1"},
        {"ipv6Prefix": "2600:1900:4000::/44", "service": "Google Cloud", "scope": "europe-west2"},
    ],
}

AZURE = {
    "changeNumber": 300,
    "cloud": "Public",
    "values": [
        {
            "name": "AzureCloud",
            "id": "AzureCloud",
            "properties": {
                "changeNumber": 1,
                "region": "",
                "regionId": 0,
                "platform": "Azure",
                "systemService": "",
                "addressPrefixes": ["20.0.0.0/11", "20.42.64.0/24", "2603:1000::/24"],
            },
        },
        {
            "name": "AzureCloud.eastus",
            "id": "AzureCloud.eastus",
            "properties": {
                "changeNumber": 1,
                "region": "eastus",
                "regionId": 32,
                "platform": "Azure",
                "systemService": "",
                "addressPrefixes": ["20.42.0.0/17", "2603:1030:210::/47"],
            },
        },
        {
            "name": "Storage.uksouth",
            "id": "Storage.uksouth",
            "properties": {
                "region": "uksouth",
                "addressPrefixes": ["20.38.106.0/23"],
                "networkFeatures": ["API"],
            },
        },
    ],
}

CSV = """\
# partner data centres, maintained by netops
cidr,label
198.18.0.0/15 , lab/bench
203.0.113.0/24,partner/acme   # the whole partner block
203.0.113.128/25,partner/acme-eu
2001:db8::/32,partner/acme
2001:db8:1::/48,partner/acme-eu

"""


def _write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _oracle(entries: list[tuple[str, str]], address: str) -> str | None:
    """Longest-prefix match by brute force with ipaddress (independent of the loader)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    best: tuple[int, str] | None = None
    for cidr, label in entries:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == ip.version and ip in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, label)
    return best[1] if best else None


def test_aws(tmp_path: Path) -> None:
    m = load_aws(_write(tmp_path, "ip-ranges.json", AWS))
    assert m.name == "aws:ip-ranges.json"
    assert m.lookup_text("3.1.2.3") == "aws/us-east-1"
    assert m.lookup_text("3.5.141.9") == "aws/ap-northeast-2"  # longest prefix wins
    assert m.lookup_text("13.33.0.1") == "aws/GLOBAL"
    assert m.lookup_text("52.94.77.1") == "aws/us-west-2"  # a real region beats GLOBAL
    assert m.lookup_text("2600:1f00::1") == "aws/us-east-1"
    assert m.lookup_text("2600:1f18:7fff::1") == "aws/us-east-2"
    assert m.lookup_text("2600:1f18:8000::1") == "aws/us-east-1"
    assert m.lookup_text("8.8.8.8") is None
    assert m.lookup_text("::ffff:3.5.140.1") == "aws/ap-northeast-2"
    # three service entries for 3.5.140.0/22 and two for 52.94.76.0/22 collapse to one each
    assert len(m) == 6
    assert m.labels == {
        "aws/us-east-1",
        "aws/ap-northeast-2",
        "aws/GLOBAL",
        "aws/us-west-2",
        "aws/us-east-2",
    }
    assert m.built_at == 1709251234.0


def test_aws_custom_prefix(tmp_path: Path) -> None:
    cfg = RegionMapConfig(format="aws", path=_write(tmp_path, "r.json", AWS), prefix="amazon/")
    assert load_region_map(cfg).lookup_text("3.1.2.3") == "amazon/us-east-1"


def test_gcp(tmp_path: Path) -> None:
    m = load_gcp(_write(tmp_path, "cloud.json", GCP))
    assert m.lookup_text("34.0.1.1") == "gcp/us-central1"
    assert m.lookup_text("34.1.210.1") == "gcp/africa-south1"
    assert m.lookup_text("2600:1900:4000::1") == "gcp/europe-west2"
    assert m.lookup_text("2600:1900:5000::1") == "gcp/us-central1"
    assert m.lookup_text("35.0.0.1") is None
    assert m.built_at == pytest.approx(1709251234.567)


def test_azure_regional_tier_beats_narrower_global_prefix(tmp_path: Path) -> None:
    m = load_azure(_write(tmp_path, "ServiceTags_Public.json", AZURE))
    assert m.lookup_text("20.42.1.1") == "azure/eastus"
    # 20.42.64.0/24 is listed only by the region-less AzureCloud tag; the regional /17 wins
    assert m.lookup_text("20.42.64.9") == "azure/eastus"
    assert m.lookup_text("20.38.107.1") == "azure/uksouth"
    assert m.lookup_text("20.1.0.1") == "azure/global"  # Azure, but no region says which
    assert m.lookup_text("2603:1030:211::1") == "azure/eastus"
    assert m.lookup_text("2603:1000::1") == "azure/global"
    assert m.lookup_text("40.0.0.1") is None


def test_csv(tmp_path: Path) -> None:
    m = load_csv(_write(tmp_path, "regions.csv", CSV))
    assert m.lookup_text("198.19.255.255") == "lab/bench"
    assert m.lookup_text("203.0.113.5") == "partner/acme"
    assert m.lookup_text("203.0.113.200") == "partner/acme-eu"
    assert m.lookup_text("2001:db8:1::7") == "partner/acme-eu"
    assert m.lookup_text("2001:db8:2::7") == "partner/acme"
    assert m.lookup_text("::ffff:203.0.113.129") == "partner/acme-eu"
    cfg = RegionMapConfig(format="csv", path=tmp_path / "regions.csv", prefix="dc")
    assert load_region_map(cfg).lookup_text("203.0.113.5") == "dc/partner/acme"


def test_csv_without_header(tmp_path: Path) -> None:
    m = load_csv(_write(tmp_path, "r.csv", "10.0.0.0/8,corp\n0.0.0.0/0,internet\n::/0,internet6\n"))
    assert m.lookup_text("10.1.1.1") == "corp"
    assert m.lookup_text("1.1.1.1") == "internet"
    assert m.lookup_text("2001::1") == "internet6"


ENTRIES_FOR_ORACLE = [
    ("10.0.0.0/8", "a"),
    ("10.1.0.0/16", "b"),
    ("10.1.2.0/24", "c"),
    ("10.1.2.128/25", "d"),
    ("10.1.2.130/32", "e"),
    ("10.255.0.0/16", "f"),
    ("11.0.0.0/8", "g"),
    ("0.0.0.0/1", "h"),
    ("2001:db8::/32", "v6a"),
    ("2001:db8:8000::/33", "v6b"),
    ("2001:db8:8000::1/128", "v6c"),
    ("fd00::/8", "v6d"),
]


@pytest.fixture(scope="module")
def oracle_map(tmp_path_factory: pytest.TempPathFactory) -> RegionMap:
    path = tmp_path_factory.mktemp("regions") / "oracle.csv"
    path.write_text("".join(f"{c},{label}\n" for c, label in ENTRIES_FOR_ORACLE))
    return load_csv(path)


_v4_near = st.sampled_from([0x0A000000, 0x0A010200, 0x0A010282, 0x0AFF0000, 0x0B000000, 0x7FFFFFFF])
_addresses = st.one_of(
    st.builds(
        lambda base, off: str(ipaddress.IPv4Address((base + off) % 2**32)),
        _v4_near,
        st.integers(-300, 300),
    ),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv6Address(0xFFFF << 32 | n))),
    st.builds(
        lambda hi, lo: str(ipaddress.IPv6Address(hi << 96 | lo)),
        st.sampled_from([0x20010DB8, 0x20010DB9, 0xFD000000, 0xFDFFFFFF, 0xFE000000]),
        st.one_of(st.integers(0, 2**96 - 1), st.sampled_from([0, 1, 2**95, 2**95 + 1, 2**95 + 2])),
    ),
)


@settings(max_examples=300, deadline=None)
@given(_addresses)
def test_longest_prefix_matches_brute_force(oracle_map: RegionMap, address: str) -> None:
    assert oracle_map.lookup_text(address) == _oracle(ENTRIES_FOR_ORACLE, address)


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("loader", "content", "problem"),
    [
        (load_aws, "{not json", "not valid JSON"),
        (load_aws, "[]", "expected an object with 'prefixes'"),
        (load_aws, {"prefixes": "nope"}, "prefixes: expected a list"),
        (
            load_aws,
            {"prefixes": [{"ip_prefix": "3.0.0.0/33", "region": "x"}]},
            r"prefixes\[0\]\.ip_prefix: '3.0.0.0/33' is not a network",
        ),
        (
            load_aws,
            {"prefixes": [{"ip_prefix": "3.0.0.0/8"}]},
            r"prefixes\[0\]\.region: expected a string",
        ),
        (load_aws, {"prefixes": [], "ipv6_prefixes": []}, "lists no prefixes"),
        (load_gcp, {"prefixes": [{"scope": "x"}]}, "neither ipv4Prefix nor ipv6Prefix"),
        (load_gcp, {"prefixes": [{"ipv4Prefix": 5, "scope": "x"}]}, "expected a CIDR string"),
        (load_azure, {"values": [{"name": "x"}]}, r"values\[0\]\.properties: expected an object"),
        (
            load_azure,
            {"values": [{"properties": {"region": "r", "addressPrefixes": ["bogus"]}}]},
            r"addressPrefixes\[0\]: 'bogus'",
        ),
        (load_csv, "10.0.0.0/8,a\nbogus,b\n", r":2: 'bogus' is not a network"),
        (load_csv, "10.0.0.1/8,a\n", r":1: '10.0.0.1/8' has host bits set"),
        (load_csv, "10.0.0.0/8\n", r":1: expected 'cidr,label'"),
        (load_csv, "10.0.0.0/8,\n", r":1: empty label"),
        (
            load_csv,
            "10.0.0.0/8,a\n10.0.0.0/8,b\n",
            r":2: 10.0.0.0/8 is labelled 'b' here and 'a' on line 1",
        ),
        (load_csv, "# only comments\n", "lists no prefixes"),
        (load_csv, b"\xff\xfe10.0.0.0/8", "not UTF-8"),
    ],
)
def test_malformed_files_name_file_and_problem(
    tmp_path: Path, loader: object, content: object, problem: str
) -> None:
    path = tmp_path / "broken-map"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as info:
        loader(path)  # type: ignore[operator]
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert re.search(problem, message), message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothing\.json: cannot read"):
        load_region_map(RegionMapConfig(format="gcp", path=tmp_path / "nothing.json"))


def test_malformed_addresses_are_not_covered(oracle_map: RegionMap) -> None:
    for address in ["", "foo", "10.0.0", "10.0.0.0/8", "fd00::1%eth0", "10.1.2.130 "]:
        assert oracle_map.lookup_text(address) is None


_nested_prefixes = st.dictionaries(
    st.tuples(st.integers(0, 2**16 - 1), st.integers(16, 32)).map(
        lambda t: str(
            ipaddress.ip_network(
                (0x0A000000 | t[0] << 8 if t[1] <= 24 else 0x0A000000 | t[0], t[1]), strict=False
            )
        )
    ),
    st.sampled_from(["r1", "r2", "r3"]),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_nested_prefixes, st.lists(st.integers(0, 2**24 - 1), min_size=1, max_size=20))
def test_random_nested_prefixes_match_brute_force(
    tmp_path_factory: pytest.TempPathFactory, prefixes: dict[str, str], offsets: list[int]
) -> None:
    path = tmp_path_factory.mktemp("nested") / "ip-ranges.json"
    path.write_text(
        json.dumps({"prefixes": [{"ip_prefix": c, "region": r} for c, r in prefixes.items()]})
    )
    m = load_aws(path)
    entries = [(c, f"aws/{r}") for c, r in prefixes.items()]
    # probe addresses near every prefix's edges and random ones in 10.0.0.0/8
    probes = [str(ipaddress.IPv4Address(0x0A000000 | o)) for o in offsets]
    for cidr in prefixes:
        net = ipaddress.ip_network(cidr)
        for edge in (
            int(net.network_address) - 1,
            int(net.network_address),
            int(net.broadcast_address),
            int(net.broadcast_address) + 1,
        ):
            probes.append(str(ipaddress.IPv4Address(edge)))
    for address in probes:
        assert m.lookup_text(address) == _oracle(entries, address), address


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_lookup_v4_matches_lookup_one_by_one(oracle_map: RegionMap, values: list[int]) -> None:
    assert oracle_map.lookup_v4(np.array(values, dtype=np.uint64)) == [
        oracle_map.lookup(4, v) for v in values
    ]


def test_lookup_v4_keeps_the_tiers_order(tmp_path: Path) -> None:
    m = load_azure(_write(tmp_path, "ServiceTags_Public.json", AZURE))
    addresses = ["20.42.1.1", "20.42.64.9", "20.38.107.1", "20.1.0.1", "40.0.0.1"]
    values = [int(ipaddress.IPv4Address(a)) for a in addresses]
    assert m.lookup_v4(np.array(values, dtype=np.uint64)) == [m.lookup_text(a) for a in addresses]
    assert m.lookup_v4(np.array(values, dtype=np.uint64))[1] == "azure/eastus"
