"""Frame parser: link layers, IPv4/IPv6 and transport headers against packets built by scapy."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether, Loopback
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

from egressd.decode.frames import SUPPORTED_LINKTYPES, parse_frame, udp4_payload
from egressd.errors import DecodeError

# Explicit MACs: without them scapy spends a second resolving a neighbour per packet.
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = IP(src="10.1.2.3", dst="198.51.100.7")
V6 = IPv6(src="fd00::1", dst="2001:db8::99")


def test_ethernet_ipv4_tcp() -> None:
    pkt = ETH / V4 / TCP(sport=40000, dport=443, flags="PA") / Raw(b"x" * 100)
    h = parse_frame(1, bytes(pkt))
    assert h is not None
    assert (h.src, h.dst, h.proto, h.sport, h.dport) == ("10.1.2.3", "198.51.100.7", 6, 40000, 443)
    assert h.length == len(pkt[IP])
    assert h.tcp_flags == int(pkt[TCP].flags)
    raw = bytes(pkt)
    assert raw[h.payload_offset : h.payload_offset + h.payload_length] == b"x" * 100


def test_length_is_wire_length_not_snaplen() -> None:
    pkt = ETH / V4 / UDP(sport=5000, dport=53) / Raw(b"y" * 1000)
    cut = bytes(pkt)[:96]
    h = parse_frame(1, cut)
    assert h is not None
    assert h.length == 1028  # 20 + 8 + 1000, as the IP header says
    assert h.payload_length == 1000


@pytest.mark.parametrize(
    "tags",
    [Dot1Q(vlan=10), Dot1AD(vlan=100) / Dot1Q(vlan=20), Dot1Q(vlan=1) / Dot1Q(vlan=2)],
    ids=["802.1Q", "QinQ-88a8", "QinQ-8100"],
)
def test_vlan_tags(tags: object) -> None:
    pkt = ETH / tags / V6 / UDP(sport=1234, dport=4321) / Raw(b"z" * 10)
    h = parse_frame(1, bytes(pkt))
    assert h is not None
    assert (h.src, h.dst, h.proto, h.sport, h.dport) == ("fd00::1", "2001:db8::99", 17, 1234, 4321)
    assert h.length == 40 + 8 + 10


def test_pppoe_session() -> None:
    pkt = ETH / PPPoE(sessionid=7) / PPP(proto=0x0021) / V4 / UDP(sport=1, dport=2)
    h = parse_frame(1, bytes(pkt))
    assert h is not None and h.dst == "198.51.100.7" and h.dport == 2


def test_linux_sll_and_sll2() -> None:
    ip = bytes(V4 / TCP(sport=1, dport=22, flags="S"))
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6 + b"\0\0", 0x0800) + ip
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 4, 6, b"\x02" * 6 + b"\0\0") + ip
    for linktype, frame in ((113, sll), (276, sll2)):
        h = parse_frame(linktype, frame)
        assert h is not None, linktype
        assert (h.src, h.dport, h.tcp_flags) == ("10.1.2.3", 22, 0x02)


@pytest.mark.parametrize("linktype", [101, 228, 229, 12])
def test_raw_ip(linktype: int) -> None:
    pkt = (V4 if linktype != 229 else V6) / UDP(sport=9, dport=10)
    h = parse_frame(linktype, bytes(pkt))
    assert h is not None and (h.sport, h.dport) == (9, 10)


@pytest.mark.parametrize("family", [2, 10, 24, 28, 30])
def test_null_and_loop_both_byte_orders(family: int) -> None:
    ip = bytes((V4 if family == 2 else V6) / UDP(sport=7, dport=8))
    for linktype, header in (
        (0, struct.pack("<I", family)),
        (0, struct.pack(">I", family)),
        (108, struct.pack(">I", family)),
    ):
        h = parse_frame(linktype, header + ip)
        assert h is not None and h.dport == 8
    # scapy's own loopback layer agrees on the layout
    assert parse_frame(0, bytes(Loopback(type=2) / V4 / UDP())) is not None


def test_ipv4_fragments_only_first_has_ports() -> None:
    first = V4.copy()
    first.flags = "MF"
    later = V4.copy()
    later.frag = 100
    later.proto = 17
    h1 = parse_frame(101, bytes(first / UDP(sport=53, dport=5353) / Raw(b"a" * 64)))
    h2 = parse_frame(101, bytes(later / Raw(b"b" * 64)))
    assert h1 is not None and (h1.sport, h1.dport) == (53, 5353)
    assert h2 is not None and (h2.proto, h2.sport, h2.dport) == (17, 0, 0)
    assert h2.length == 20 + 64


def test_ipv6_extension_headers() -> None:
    pkt = (
        V6
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["2001:db8::1"])
        / IPv6ExtHdrDestOpt()
        / TCP(sport=50000, dport=80, flags="F")
        / Raw(b"q" * 5)
    )
    h = parse_frame(101, bytes(pkt))
    assert h is not None
    assert (h.proto, h.sport, h.dport, h.tcp_flags) == (6, 50000, 80, 0x01)
    assert h.length == len(bytes(pkt))
    raw = bytes(pkt)
    assert raw[h.payload_offset : h.payload_offset + h.payload_length] == b"q" * 5


def test_ipv6_fragments() -> None:
    first = V6 / IPv6ExtHdrFragment(offset=0, m=1, nh=17) / UDP(sport=1, dport=2) / Raw(b"a" * 8)
    later = V6 / IPv6ExtHdrFragment(offset=3, m=0, nh=17) / Raw(b"b" * 8)
    h1 = parse_frame(101, bytes(first))
    h2 = parse_frame(101, bytes(later))
    assert h1 is not None and (h1.proto, h1.sport, h1.dport) == (17, 1, 2)
    assert h2 is not None and (h2.proto, h2.sport, h2.dport) == (17, 0, 0)


def test_icmp_type_and_code_stand_in_for_ports() -> None:
    h4 = parse_frame(101, bytes(V4 / ICMP(type=3, code=13)))
    h6 = parse_frame(101, bytes(V6 / ICMPv6EchoRequest()))
    assert h4 is not None and (h4.proto, h4.sport, h4.dport) == (1, 3, 13)
    assert h6 is not None and (h6.proto, h6.sport, h6.dport) == (58, 128, 0)


def test_ipv4_mapped_ipv6_becomes_ipv4_text() -> None:
    h = parse_frame(101, bytes(IPv6(src="::ffff:192.0.2.1", dst="::ffff:8.8.8.8") / UDP()))
    assert h is not None and (h.src, h.dst) == ("192.0.2.1", "8.8.8.8")


def test_zero_total_length_falls_back_to_captured() -> None:
    raw = bytearray(bytes(V4 / TCP() / Raw(b"p" * 30)))
    raw[2:4] = b"\0\0"  # as a TSO-offloaded send looks when captured on the sender
    h = parse_frame(101, bytes(raw))
    assert h is not None and h.length == 20 + 20 + 30


def test_other_protocols_have_no_ports() -> None:
    h = parse_frame(101, bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=47) / Raw(b"gre!")))
    assert h is not None and (h.proto, h.sport, h.dport) == (47, 0, 0)


def test_non_ip_is_none() -> None:
    assert (
        parse_frame(
            1,
            bytes(
                Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0806)
                / Raw(b"\0" * 28)
            ),
        )
        is None
    )
    assert parse_frame(1, b"\0" * 10) is None
    assert parse_frame(9999, bytes(V4 / UDP())) is None
    assert 9999 not in SUPPORTED_LINKTYPES


@pytest.mark.parametrize(
    "frame",
    [
        bytes(V4 / TCP())[:30],  # TCP header cut
        bytes(V4)[:12],  # IP header cut
        b"\x45" + bytes(V4 / UDP())[1:4],
        b"\x43" + bytes(V4 / UDP())[1:],  # IHL 3
        b"\x65" + bytes(V4 / UDP())[1:],  # v6 nibble in v4 frame via ethertype
    ],
)
def test_malformed_ipv4_raises_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_frame(
            1, bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800)) + frame
        )


def test_ipv6_extension_beyond_payload_is_malformed() -> None:
    raw = bytearray(bytes(V6 / IPv6ExtHdrDestOpt() / UDP()))
    raw[41] = 200  # extension length far beyond the payload
    with pytest.raises(DecodeError):
        parse_frame(101, bytes(raw))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*sorted(SUPPORTED_LINKTYPES), 147]),
    st.binary(max_size=200),
)
def test_arbitrary_bytes_only_decode_error_or_none(linktype: int, data: bytes) -> None:
    try:
        h = parse_frame(linktype, data)
    except DecodeError:
        return
    if h is not None:
        assert 0 <= h.sport <= 0xFFFF and 0 <= h.dport <= 0xFFFF
        assert h.length >= 0


MUTATION_BASE = bytes(
    ETH / Dot1Q() / V6 / IPv6ExtHdrHopByHop() / TCP(sport=1, dport=2) / Raw(b"d" * 40)
)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=20, max_size=120), st.integers(0, 119))
def test_mutated_real_packets_only_decode_error_or_none(noise: bytes, where: int) -> None:
    base = bytearray(
        bytes(ETH / Dot1Q() / V6 / IPv6ExtHdrHopByHop() / TCP(sport=1, dport=2) / Raw(b"d" * 40))
    )
    base[where : where + len(noise)] = noise
    with contextlib.suppress(DecodeError):
        parse_frame(1, bytes(base))


_UDP4_FRAMES = [
    bytes(ETH / V4 / UDP(sport=40000, dport=2055) / Raw(b"n" * 60)),
    bytes(ETH / IP(src="192.0.2.1", dst="192.0.2.9", flags="MF") / UDP(dport=4739) / Raw(b"i")),
    bytes(ETH / V4 / TCP(sport=1, dport=2) / Raw(b"t" * 30)),
    bytes(ETH / Dot1Q(vlan=3) / V4 / UDP(sport=9, dport=9) / Raw(b"v" * 20)),
]


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(_UDP4_FRAMES),
    st.lists(st.tuples(st.integers(0, 59), st.integers(0, 255)), max_size=4),
    st.integers(0, 120),
)
def test_udp4_payload_answers_as_parse_frame(
    base: bytes, changes: list[tuple[int, int]], cut: int
) -> None:
    """The replay's fast read of Ethernet/IPv4/UDP frames: where it answers, parse_frame
    gives the same source, ports and payload end with the payload at 42; where parse_frame
    raises or answers otherwise (options, fragments, other protocols or links), it does
    not answer. Header bytes changed at random and frames cut short."""
    frame = bytearray(base)
    for where, value in changes:
        if where < len(frame):
            frame[where] = value
    data = bytes(frame[: max(len(frame) - cut, 0)] if cut < 60 else frame)
    fast = udp4_payload(data)
    try:
        header = parse_frame(1, data)
    except DecodeError:
        assert fast is None
        return
    if fast is None:
        return  # parse_frame's general path answers (or gives None): the caller asks it
    assert header is not None and header.proto == 17 and header.payload_offset == 42
    end = header.payload_offset + header.payload_length
    assert fast == (header.src, header.sport, header.dport, end)


def test_udp4_payload_reads_the_export_frame() -> None:
    frame = _UDP4_FRAMES[0]
    assert udp4_payload(frame) == ("10.1.2.3", 40000, 2055, 42 + 60)
    assert udp4_payload(_UDP4_FRAMES[2]) is None  # TCP
    assert udp4_payload(_UDP4_FRAMES[3]) is None  # VLAN tag: the general path
    assert udp4_payload(bytearray(frame)) is None  # not bytes: the general path
