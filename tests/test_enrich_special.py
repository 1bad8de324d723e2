"""Special-purpose ranges: never "foreign"; checked against ipaddress and hand-picked borders."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from egressd.enrich.address import normalize_address, parse_address
from egressd.enrich.special import is_special, special_kind

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_PROTOCOL_ASSIGNMENTS = ipaddress.ip_network("192.0.0.0/24")  # ipaddress changed it in 3.11.10+


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_ipv4_agrees_with_ipaddress(value: int) -> None:
    ip = ipaddress.IPv4Address(value)
    assume(ip not in _PROTOCOL_ASSIGNMENTS)
    # ipaddress: not global = private/reserved/loopback/link-local/shared; multicast on top
    expected = (not ip.is_global) or ip.is_multicast or ip in _SHARED
    assert is_special(str(ip)) is expected
    assert is_special(f"::ffff:{ip}") is expected


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.0", "private"),
        ("10.255.255.255", "private"),
        ("11.0.0.0", None),
        ("172.15.255.255", None),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("172.32.0.0", None),
        ("192.168.1.1", "private"),
        ("100.63.255.255", None),
        ("100.64.0.0", "cgnat"),
        ("100.127.255.255", "cgnat"),
        ("100.128.0.0", None),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.255", "documentation"),
        ("203.0.114.0", None),
        ("198.18.0.0", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("198.20.0.0", None),
        ("224.0.0.251", "multicast"),
        ("239.255.255.255", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.254", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this-network"),
        ("8.8.8.8", None),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("::2", None),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fbff:ffff::1", None),
        ("fe80::1", "link-local"),
        ("febf:ffff::1", "link-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("2001:db8:ffff:ffff::1", "documentation"),
        ("2001:db9::1", None),
        ("2001:4860:4860::8888", None),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_kinds_and_borders(address: str, kind: str | None) -> None:
    assert special_kind(address) == kind
    assert is_special(address) is (kind is not None)


@pytest.mark.parametrize(
    "text", ["", "foo", "1.2.3", "1.2.3.4.5", "10.0.0.0/8", "fe80::1%eth0", " 10.0.0.1"]
)
def test_malformed_is_not_special(text: str) -> None:
    assert parse_address(text) is None
    assert is_special(text) is False
    assert special_kind(text) is None


def test_mapped_ipv6_normalises_to_ipv4() -> None:
    assert parse_address("::ffff:192.0.2.1") == parse_address("192.0.2.1") == (4, 0xC0000201)
    assert normalize_address("::FFFF:c000:0201") == "192.0.2.1"
    assert normalize_address("2001:DB8:0:0::1") == "2001:db8::1"
    # IPv4-compatible (deprecated ::a.b.c.d) is not mapped and stays IPv6
    assert parse_address("::192.0.2.1") == (6, 0xC0000201)
