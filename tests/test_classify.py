"""Egress classification: local sources, groups (first match wins, else "other"), destinations."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.classify import EgressClassifier, parse_address
from egressd.config import GroupConfig, NetworksConfig, parse_config

CONFIG = parse_config(
    """
[networks]
local = ["10.0.0.0/8", "fd00::/8", "192.168.0.0/16"]
[[groups]]
name = "research-gpu"
sources = ["10.20.5.0/24"]
[[groups]]
name = "research"
sources = ["10.20.0.0/16", "fd00:20::/32"]
[[groups]]
name = "office"
sources = ["10.30.0.0/16", "192.168.1.0/24"]
"""
)
CLASSIFIER = EgressClassifier(CONFIG.networks, CONFIG.groups)


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("10.20.5.9", "research-gpu"),  # first match wins
        ("10.20.6.9", "research"),
        ("fd00:20::17", "research"),
        ("FD00:20:0::1", "research"),
        ("10.30.255.255", "office"),
        ("192.168.1.4", "office"),
        ("192.168.2.4", "other"),  # local, in no group
        ("10.99.0.1", "other"),
        ("fd00:99::1", "other"),
        ("::ffff:10.20.6.9", "research"),  # IPv4-mapped IPv6 is the IPv4 address
        ("8.8.8.8", None),  # not local
        ("2001:4860:4860::8888", None),
        ("not-an-address", None),
        ("", None),
    ],
)
def test_source_group(address: str, group: str | None) -> None:
    assert CLASSIFIER.source_group(address) == group


def test_is_local() -> None:
    assert CLASSIFIER.is_local("10.1.2.3")
    assert CLASSIFIER.is_local("fd00::1")
    assert not CLASSIFIER.is_local("47.100.23.45")
    assert not CLASSIFIER.is_local("fe80::1")
    assert not CLASSIFIER.is_local("garbage")


def test_parse_address() -> None:
    assert parse_address("10.0.0.1") == (4, 0x0A000001)
    assert parse_address("::ffff:10.0.0.1") == (4, 0x0A000001)
    assert parse_address("::1") == (6, 1)
    assert parse_address("10.0.0.256") is None


def test_ipv4_mapped_networks_in_config_match_ipv4_sources() -> None:
    groups = (GroupConfig("mapped", (ipaddress.ip_network("::ffff:10.50.0.0/112"),)),)
    classifier = EgressClassifier(NetworksConfig(), groups)
    assert classifier.source_group("10.50.1.2") == "mapped"
    assert classifier.source_group("10.51.1.2") == "other"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_agrees_with_ipaddress(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    text = str(address)
    local = any(address in net for net in CONFIG.networks.local if net.version == address.version)
    assert CLASSIFIER.is_local(text) == local
    expected = None
    if local:
        expected = next(
            (
                g.name
                for g in CONFIG.groups
                if any(address in n for n in g.sources if n.version == address.version)
            ),
            "other",
        )
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return  # mapped addresses are classified as IPv4 (covered above)
    assert CLASSIFIER.source_group(text) == expected


_V4_NETS = st.builds(
    lambda value, length: ipaddress.ip_network((value, length), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_V4_NETS, max_size=4),
    st.lists(st.lists(_V4_NETS, max_size=3), max_size=4),
    st.lists(st.integers(0, 2**32 - 1), max_size=20),
)
def test_range_table_answers_like_first_match(
    local: list[ipaddress.IPv4Network],
    groups: list[list[ipaddress.IPv4Network]],
    probes: list[int],
) -> None:
    # Overlapping, nested and adjacent prefixes; probes on every prefix edge and beside it.
    configs = tuple(GroupConfig(f"g{i}", tuple(nets)) for i, nets in enumerate(groups))
    classifier = EgressClassifier(NetworksConfig(local=tuple(local)), configs)
    edges = [int(n.network_address) for n in local] + [int(n.broadcast_address) for n in local]
    for nets in groups:
        edges += [int(n.network_address) for n in nets] + [int(n.broadcast_address) for n in nets]
    for value in {*probes, *edges, *(e + 1 for e in edges), *(e - 1 for e in edges)}:
        if not 0 <= value < 2**32:
            continue
        address = ipaddress.IPv4Address(value)
        expected = None
        if any(address in net for net in local):
            expected = next(
                (c.name for c in configs if any(address in n for n in c.sources)), "other"
            )
        assert classifier.group_of(4, value) == expected
