"""Sans-IO parser of captured frames: link layer, IPv4/IPv6 and the transport header.

Turns one ``(linktype, frame)`` into a :class:`PacketHeader` the flow table can count, fast.
"""

from __future__ import annotations

import struct
from socket import AF_INET, AF_INET6, inet_ntop

from egressd.cache import BoundedCache
from egressd.errors import DecodeError

# Link-layer types (pcap LINKTYPE_* values) this parser understands.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_DLT = 12  # DLT_RAW as some writers put it in files instead of 101
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW_DLT,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN_TAGS = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_ETH_PPPOE_SESSION = 0x8864
_PPP_IPV4 = 0x0021
_PPP_IPV6 = 0x0057
# BSD loopback address families differ per OS (Linux 10, NetBSD/OpenBSD 24, FreeBSD 28, macOS 30).
_NULL_AF_INET6 = frozenset({10, 24, 28, 30})
# Bounds on header chains so hostile frames cannot make one packet expensive.
_MAX_VLAN_TAGS = 4
_MAX_IPV6_EXTENSIONS = 8
_IPV6_EXTENSIONS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_IPV6_AH = 51
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

_U16 = struct.Struct("!H")
_ETH_TYPE = struct.Struct("!12xH")
_IPV4_HEAD = struct.Struct("!BxHxxHxB")  # version/IHL, total length, flags/fragment, protocol
_IPV6_HEAD = struct.Struct("!BxxxHB")  # version, payload length, next header
_TCP_HEAD = struct.Struct("!HH8xBB")  # ports, data offset, flags
_UDP_HEAD = struct.Struct("!HHH")  # ports, length

Frame = bytes | bytearray | memoryview


class PacketHeader:
    """What the flow table needs from one IP packet.

    ``length`` is the IP datagram length the headers claim (IPv4 total length, IPv6
    payload length + 40), so snaplen-truncated captures still count wire bytes.
    ``payload_offset``/``payload_length`` locate the transport payload (for non-first
    fragments: the IP payload) within the frame; the length is what the headers claim
    and may run past the captured bytes.
    """

    __slots__ = (
        "dport",
        "dst",
        "length",
        "payload_length",
        "payload_offset",
        "proto",
        "sport",
        "src",
        "tcp_flags",
    )

    def __init__(
        self,
        src: str,
        dst: str,
        proto: int,
        sport: int,
        dport: int,
        length: int,
        tcp_flags: int,
        payload_offset: int,
        payload_length: int,
    ) -> None:
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.length = length
        self.tcp_flags = tcp_flags
        self.payload_offset = payload_offset
        self.payload_length = payload_length

    def __repr__(self) -> str:
        return (
            f"PacketHeader({self.src}:{self.sport} -> {self.dst}:{self.dport} proto={self.proto}"
            f" len={self.length} flags={self.tcp_flags:#x})"
        )


def parse_frame(linktype: int, frame: Frame) -> PacketHeader | None:
    """The IP/transport header of one captured frame.

    Returns None for frames that carry no IP (ARP, LLDP, unknown link types, ...);
    raises :class:`DecodeError` when the IP packet itself is malformed or cut short.
    """
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        (ethertype,) = _ETH_TYPE.unpack_from(frame)
        offset = 14
        if ethertype in _ETH_VLAN_TAGS:
            ethertype, offset = _skip_vlan_tags(frame, ethertype, offset)
        if ethertype == _ETH_PPPOE_SESSION:
            ethertype, offset = _pppoe_payload(frame, offset)
    elif linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        (ethertype,) = _U16.unpack_from(frame, 14)
        offset = 16
        if ethertype in _ETH_VLAN_TAGS:
            ethertype, offset = _skip_vlan_tags(frame, ethertype, offset)
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None
        (ethertype,) = _U16.unpack_from(frame, 0)
        offset = 20
        if ethertype in _ETH_VLAN_TAGS:
            ethertype, offset = _skip_vlan_tags(frame, ethertype, offset)
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_RAW_DLT):
        if not frame:
            return None
        version = frame[0] >> 4
        ethertype = _ETH_IPV4 if version == 4 else _ETH_IPV6 if version == 6 else 0
        offset = 0
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(frame) < 4:
            return None
        # The family is a 32-bit word in the writer's byte order (network order for LOOP);
        # every family value fits in one byte, so whichever end byte is set names it.
        family = frame[0] or frame[3]
        ethertype = _ETH_IPV4 if family == 2 else _ETH_IPV6 if family in _NULL_AF_INET6 else 0
        offset = 4
    else:
        return None
    if type(frame) is not bytes:
        # Address bytes key a memo, and slices of a bytearray or memoryview are unhashable.
        frame = bytes(frame)
    if ethertype == _ETH_IPV4:
        return _parse_ipv4(frame, offset)
    if ethertype == _ETH_IPV6:
        return _parse_ipv6(frame, offset)
    return None


#: Ethernet + IPv4 header without options + UDP ports and length, from the frame's start:
#: ethertype, version/IHL, total length, flags/fragment, protocol, then (at 34) ports, length
_UDP4_FRAME = struct.Struct("!12xHBxHxxHxB10xHHH")


def udp4_payload(frame: Frame) -> tuple[str, int, int, int] | None:
    """(source address text, source port, destination port, payload end) of an Ethernet
    frame carrying IPv4 without options, not a later fragment, and UDP (the payload starts
    at 42): exactly what :func:`parse_frame` says of such a frame, without building its
    header. None for any other frame (ask :func:`parse_frame`), also where it would raise.
    """
    if len(frame) < 42 or type(frame) is not bytes:
        return None
    ethertype, ver_ihl, total_length, frag, proto, sport, dport, udp_length = (
        _UDP4_FRAME.unpack_from(frame)
    )
    if (
        ethertype != _ETH_IPV4
        or ver_ihl != 0x45
        or proto != PROTO_UDP
        or total_length < 20
        or frag & 0x1FFF
    ):
        return None
    raw = frame[26:30]
    src = _TEXT.get(raw) or _ipv4_text(raw)
    # A zero UDP length means "see IP length" (as _transport reads it).
    payload = udp_length - 8 if udp_length >= 8 else total_length - 28
    return src, sport, dport, 42 + payload


def _skip_vlan_tags(frame: Frame, ethertype: int, offset: int) -> tuple[int, int]:
    """Ethertype and offset after 802.1Q / 802.1ad (QinQ) tags."""
    for _ in range(_MAX_VLAN_TAGS):
        if ethertype not in _ETH_VLAN_TAGS:
            break
        if len(frame) < offset + 4:
            return 0, offset
        (ethertype,) = _U16.unpack_from(frame, offset + 2)
        offset += 4
    return ethertype, offset


def _pppoe_payload(frame: Frame, offset: int) -> tuple[int, int]:
    """Ethertype-equivalent and offset of the IP packet inside a PPPoE session frame."""
    if len(frame) < offset + 8:
        return 0, offset
    (ppp_proto,) = _U16.unpack_from(frame, offset + 6)
    if ppp_proto == _PPP_IPV4:
        return _ETH_IPV4, offset + 8
    if ppp_proto == _PPP_IPV6:
        return _ETH_IPV6, offset + 8
    return 0, offset


# Address bytes → text. Formatting costs more than the rest of a packet's parsing and a
# capture repeats the same few thousand addresses, so the texts are memoised. The values
# depend only on the keys, so sharing the memo between tables and threads is safe; it is
# bounded (its older half is evicted when full).
_TEXT: BoundedCache[bytes, str] = BoundedCache(1 << 16)


def _ipv4_text(raw: bytes) -> str:
    return _TEXT.store(raw, inet_ntop(AF_INET, raw))


def _ipv6_text(raw: bytes) -> str:
    if raw[:12] == _MAPPED_PREFIX:
        return _TEXT.store(raw, inet_ntop(AF_INET, raw[12:]))
    return _TEXT.store(raw, inet_ntop(AF_INET6, raw))


def _parse_ipv4(frame: bytes, offset: int) -> PacketHeader:
    """Header of the IPv4 packet starting at ``offset``."""
    end = len(frame)
    if end < offset + 20:
        raise DecodeError("truncated_ip", "IPv4 header cut short")
    ver_ihl, total_length, frag, proto = _IPV4_HEAD.unpack_from(frame, offset)
    if ver_ihl >> 4 != 4:
        raise DecodeError("bad_ip_version", f"version {ver_ihl >> 4} in an IPv4 frame")
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < 20:
        raise DecodeError("bad_ip_header", f"IPv4 header length {ihl}")
    if end < offset + ihl:
        raise DecodeError("truncated_ip", "IPv4 options cut short")
    if total_length < ihl:
        # Zero total length is what TSO-offloaded packets look like when captured on the
        # sending host; the captured size is the best evidence left.
        if total_length != 0:
            raise DecodeError("bad_ip_length", f"IPv4 total length {total_length} < {ihl}")
        total_length = end - offset
    raw = frame[offset + 12 : offset + 16]
    src = _TEXT.get(raw) or _ipv4_text(raw)
    raw = frame[offset + 16 : offset + 20]
    dst = _TEXT.get(raw) or _ipv4_text(raw)
    transport = offset + ihl
    if frag & 0x1FFF:
        # Only the first fragment carries the transport header.
        return PacketHeader(src, dst, proto, 0, 0, total_length, 0, transport, total_length - ihl)
    return _transport(frame, src, dst, proto, total_length, transport, total_length - ihl)


def _parse_ipv6(frame: bytes, offset: int) -> PacketHeader:
    """Header of the IPv6 packet starting at ``offset``, past common extension headers."""
    end = len(frame)
    if end < offset + 40:
        raise DecodeError("truncated_ip", "IPv6 header cut short")
    version, payload_length, next_header = _IPV6_HEAD.unpack_from(frame, offset)
    if version >> 4 != 6:
        raise DecodeError("bad_ip_version", f"version {version >> 4} in an IPv6 frame")
    if payload_length == 0:
        # Jumbograms and TSO-offloaded sends say 0; count what was captured.
        payload_length = end - offset - 40
    raw = frame[offset + 8 : offset + 24]
    src = _TEXT.get(raw) or _ipv6_text(raw)
    raw = frame[offset + 24 : offset + 40]
    dst = _TEXT.get(raw) or _ipv6_text(raw)
    length = payload_length + 40
    transport = offset + 40
    remaining = payload_length
    proto = next_header
    for _ in range(_MAX_IPV6_EXTENSIONS):
        if proto in _IPV6_EXTENSIONS:
            if end < transport + 8:
                raise DecodeError("truncated_ip", "IPv6 extension header cut short")
            size = (frame[transport + 1] + 1) * 8
        elif proto == _IPV6_FRAGMENT:
            if end < transport + 8:
                raise DecodeError("truncated_ip", "IPv6 fragment header cut short")
            (frag,) = _U16.unpack_from(frame, transport + 2)
            if frag & 0xFFF8:
                # A later fragment: no transport header to read.
                return PacketHeader(
                    src, dst, frame[transport], 0, 0, length, 0, transport + 8, remaining - 8
                )
            size = 8
        elif proto == _IPV6_AH:
            if end < transport + 8:
                raise DecodeError("truncated_ip", "IPv6 AH header cut short")
            size = (frame[transport + 1] + 2) * 4
        else:
            break
        if size > remaining:
            raise DecodeError("bad_ip_header", "IPv6 extension header runs past the payload")
        proto = frame[transport]
        transport += size
        remaining -= size
    else:
        raise DecodeError("bad_ip_header", "too many IPv6 extension headers")
    return _transport(frame, src, dst, proto, length, transport, remaining)


def _transport(
    frame: bytes, src: str, dst: str, proto: int, length: int, offset: int, remaining: int
) -> PacketHeader:
    """Ports, flags and payload position of the transport header at ``offset``."""
    end = len(frame)
    if proto == PROTO_TCP:
        if end < offset + 14:
            raise DecodeError("truncated_transport", "TCP header cut short")
        sport, dport, data_offset, flags = _TCP_HEAD.unpack_from(frame, offset)
        header = (data_offset >> 4) * 4
        if header < 20:
            raise DecodeError("bad_transport_header", f"TCP data offset {header}")
        return PacketHeader(
            src,
            dst,
            proto,
            sport,
            dport,
            length,
            flags,
            offset + header,
            max(remaining - header, 0),
        )
    if proto == PROTO_UDP:
        if end < offset + 8:
            raise DecodeError("truncated_transport", "UDP header cut short")
        sport, dport, udp_length = _UDP_HEAD.unpack_from(frame, offset)
        # A zero UDP length means "see IP length" (IPv6 jumbograms, offloaded sends).
        payload = udp_length - 8 if udp_length >= 8 else remaining - 8
        return PacketHeader(src, dst, proto, sport, dport, length, 0, offset + 8, payload)
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        if end < offset + 2:
            raise DecodeError("truncated_transport", "ICMP header cut short")
        # ICMP has no ports; type and code stand in for them so replies pair up by kind.
        return PacketHeader(
            src, dst, proto, frame[offset], frame[offset + 1], length, 0, offset + 4, remaining - 4
        )
    return PacketHeader(src, dst, proto, 0, 0, length, 0, offset, remaining)
