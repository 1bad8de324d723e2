"""Recorded packet captures (pcap and pcapng) for ``egressd replay``, read fast with struct.

Yields raw frames, packets summarised into flow records, or NetFlow/IPFIX export datagrams decoded.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from itertools import islice
from typing import BinaryIO

from egressd.columns import FlowColumns
from egressd.config import CaptureSourceConfig
from egressd.decode.flowtable import FlowTable
from egressd.decode.frames import (
    LINKTYPE_ETHERNET,
    PROTO_UDP,
    SUPPORTED_LINKTYPES,
    parse_frame,
    udp4_payload,
)
from egressd.errors import DecodeError, SourceError
from egressd.model import FlowRecord
from egressd.stats import SourceStats

#: (timestamp in epoch seconds, pcap link type, frame bytes as captured)
CapturedFrame = tuple[float, int, bytes]

_CHUNK = 1 << 20
# Anything larger is a corrupt length field, not a packet (jumbo frames and GRO stay well below).
_MAX_PACKET = 1 << 18
_MAX_BLOCK = 1 << 24

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BOM_LE = b"\x4d\x3c\x2b\x1a"
_PCAPNG_BOM_BE = b"\x1a\x2b\x3c\x4d"
_BLOCK_IDB = 1
_BLOCK_PB = 2
_BLOCK_SPB = 3
_BLOCK_EPB = 6
_OPT_END = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14

# Replay uses the live capture's defaults so both summarise traffic the same way.
_CAPTURE_DEFAULTS = CaptureSourceConfig(interface="replay")


class _Truncated(Exception):
    """The capture ends (or breaks) before a complete packet; internal to this module."""


class _ChunkReader:
    """A growing window over a stream, read in big chunks so per-packet reads cost nothing."""

    __slots__ = ("buf", "pos", "stream")

    def __init__(self, stream: BinaryIO, initial: bytes) -> None:
        self.stream = stream
        self.buf = initial
        self.pos = 0

    def fill(self, need: int) -> bool:
        """Make ``need`` bytes available from ``pos``; False at a clean end of input."""
        while len(self.buf) - self.pos < need:
            more = _read(self.stream, max(_CHUNK, need))
            if not more:
                if len(self.buf) > self.pos:
                    raise _Truncated
                return False
            self.buf = self.buf[self.pos :] + more
            self.pos = 0
        return True


def _read(stream: BinaryIO, size: int) -> bytes:
    try:
        return stream.read(size)
    except EOFError:
        # A compressed stream that stops mid-way: same as a capture cut short.
        raise _Truncated from None
    except (OSError, zlib.error) as exc:
        raise SourceError(f"cannot read capture: {exc}", retriable=False) from exc


def read_frames(stream: BinaryIO, stats: SourceStats) -> Iterator[CapturedFrame]:
    """Frames of a pcap or pcapng stream, in file order.

    A capture that is cut short or corrupt ends the iteration after the last good
    packet and is counted as ``truncated``; input that is no capture at all raises
    :class:`SourceError`.
    """
    try:
        head = _read(stream, 4)
        while 0 < len(head) < 4:
            more = _read(stream, 4 - len(head))
            if not more:
                raise _Truncated
            head += more
        if not head:
            return
        if head == _PCAPNG_SHB:
            yield from _pcapng_frames(_ChunkReader(stream, head))
            return
        (magic_le,) = struct.unpack("<I", head)
        (magic_be,) = struct.unpack(">I", head)
        if magic_le in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
            yield from _pcap_frames(_ChunkReader(stream, head), "<", magic_le == _PCAP_MAGIC_NS)
        elif magic_be in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
            yield from _pcap_frames(_ChunkReader(stream, head), ">", magic_be == _PCAP_MAGIC_NS)
        else:
            raise SourceError(
                f"not a pcap or pcapng capture (starts with {head.hex()})", retriable=False
            )
    except _Truncated:
        stats.failed("truncated")


def _pcap_frames(reader: _ChunkReader, endian: str, nanoseconds: bool) -> Iterator[CapturedFrame]:
    if not reader.fill(24):
        raise _Truncated
    # The upper bits of the link-type field carry FCS information, not the type.
    linktype = struct.unpack_from(endian + "I", reader.buf, 20)[0] & 0xFFFF
    reader.pos = 24
    divisor = 1e9 if nanoseconds else 1e6
    unpack_record = struct.Struct(endian + "IIII").unpack_from
    stream = reader.stream
    buf = reader.buf
    pos = 24
    size = len(buf)
    # Hot loop: locals only; the reader is consulted only when the window runs dry.
    while True:
        if size - pos < 16:
            more = _read(stream, _CHUNK)
            if not more:
                if size > pos:
                    raise _Truncated
                return
            buf = buf[pos:] + more
            pos = 0
            size = len(buf)
            continue
        seconds, fraction, caplen, _ = unpack_record(buf, pos)
        if caplen > _MAX_PACKET:
            raise _Truncated
        end = pos + 16 + caplen
        if end > size:
            more = _read(stream, max(_CHUNK, end - size))
            if not more:
                raise _Truncated
            buf = buf[pos:] + more
            pos = 0
            size = len(buf)
            continue
        yield seconds + fraction / divisor, linktype, buf[pos + 16 : end]
        pos = end


class _Interface:
    __slots__ = ("divisor", "linktype", "offset", "snaplen")

    def __init__(self, linktype: int, snaplen: int, divisor: float, offset: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.divisor = divisor
        self.offset = offset


def _pcapng_frames(reader: _ChunkReader) -> Iterator[CapturedFrame]:
    block_head = struct.Struct("<II")
    epb = struct.Struct("<IIIII")
    pb = struct.Struct("<HHIIII")
    u32 = struct.Struct("<I")
    interfaces: list[_Interface] = []
    last_ts = 0.0
    endian = ""
    while reader.fill(12):
        buf = reader.buf
        pos = reader.pos
        if buf[pos : pos + 4] == _PCAPNG_SHB:
            # Each section header may switch byte order and starts a new interface list.
            bom = buf[pos + 8 : pos + 12]
            if bom == _PCAPNG_BOM_LE:
                endian = "<"
            elif bom == _PCAPNG_BOM_BE:
                endian = ">"
            else:
                raise _Truncated
            block_head = struct.Struct(endian + "II")
            epb = struct.Struct(endian + "IIIII")
            pb = struct.Struct(endian + "HHIIII")
            u32 = struct.Struct(endian + "I")
            interfaces = []
        elif not endian:
            raise _Truncated
        block_type, block_length = block_head.unpack_from(buf, pos)
        if block_length < 12 or block_length & 3 or block_length > _MAX_BLOCK:
            raise _Truncated
        if not reader.fill(block_length):
            raise _Truncated
        buf = reader.buf
        pos = reader.pos
        end = pos + block_length
        if u32.unpack_from(buf, end - 4)[0] != block_length:
            raise _Truncated
        body = pos + 8
        if block_type == _BLOCK_EPB:
            if block_length < 32:
                raise _Truncated
            iface, ts_high, ts_low, caplen, _ = epb.unpack_from(buf, body)
            if caplen > block_length - 32 or iface >= len(interfaces):
                raise _Truncated
            info = interfaces[iface]
            last_ts = ((ts_high << 32) | ts_low) / info.divisor + info.offset
            yield last_ts, info.linktype, buf[body + 20 : body + 20 + caplen]
        elif block_type == _BLOCK_SPB:
            if block_length < 16 or not interfaces:
                raise _Truncated
            (original,) = u32.unpack_from(buf, body)
            info = interfaces[0]
            caplen = min(original, block_length - 16)
            if info.snaplen:
                caplen = min(caplen, info.snaplen)
            # Simple packet blocks carry no time; the latest one seen is the best estimate.
            yield last_ts, info.linktype, buf[body + 4 : body + 4 + caplen]
        elif block_type == _BLOCK_IDB:
            if block_length < 20:
                raise _Truncated
            interfaces.append(_interface(buf, body, end - 4, endian))
        elif block_type == _BLOCK_PB:
            if block_length < 32:
                raise _Truncated
            iface, _, ts_high, ts_low, caplen, _ = pb.unpack_from(buf, body)
            if caplen > block_length - 32 or iface >= len(interfaces):
                raise _Truncated
            info = interfaces[iface]
            last_ts = ((ts_high << 32) | ts_low) / info.divisor + info.offset
            yield last_ts, info.linktype, buf[body + 20 : body + 20 + caplen]
        # Other blocks (name resolution, statistics, custom, ...) carry no packets.
        reader.pos = end


def _interface(buf: bytes, body: int, options_end: int, endian: str) -> _Interface:
    """An interface description block: link type, snap length and time resolution."""
    linktype, _, snaplen = struct.unpack_from(endian + "HHI", buf, body)
    divisor = 1e6
    offset = 0
    option = struct.Struct(endian + "HH")
    pos = body + 8
    while pos + 4 <= options_end:
        code, length = option.unpack_from(buf, pos)
        value = pos + 4
        if code == _OPT_END or value + length > options_end:
            break
        if code == _OPT_IF_TSRESOL and length >= 1:
            resolution = buf[value]
            power = resolution & 0x7F
            divisor = float(2**power if resolution & 0x80 else 10**power)
        elif code == _OPT_IF_TSOFFSET and length >= 8:
            (offset,) = struct.unpack_from(endian + "q", buf, value)
        pos = value + ((length + 3) & ~3)
    return _Interface(linktype, snaplen, divisor, offset)


def read_packet_capture(
    stream: BinaryIO,
    stats: SourceStats,
    *,
    idle_timeout: float = _CAPTURE_DEFAULTS.idle_timeout,
    active_timeout: float = _CAPTURE_DEFAULTS.active_timeout,
    max_flows: int = _CAPTURE_DEFAULTS.max_flows,
    sampling: int = _CAPTURE_DEFAULTS.sampling,
) -> Iterator[FlowRecord]:
    """Flow records (one per direction) of the packets in a pcap/pcapng stream.

    Flows expire by packet time as they would live; whatever is open at the end of the
    stream is flushed. Non-IP frames are dropped as ``non_ip`` (or
    ``unsupported_linktype``), malformed ones counted under their decode reason.
    """
    table = FlowTable(idle_timeout, active_timeout, max_flows, sampling)
    add = table.add
    parse = parse_frame
    supported = SUPPORTED_LINKTYPES
    packets = 0
    try:
        for ts, linktype, frame in read_frames(stream, stats):
            packets += 1
            try:
                header = parse(linktype, frame)
            except DecodeError as exc:
                stats.failed(exc.reason)
                table.stats.malformed += 1
                continue
            if header is None:
                stats.drop("non_ip" if linktype in supported else "unsupported_linktype")
                table.stats.non_ip += 1
                continue
            records = add(ts, header)
            if records:
                stats.records += len(records)
                yield from records
        records = table.flush()
        stats.records += len(records)
        yield from records
    finally:
        stats.units += packets


def _export_datagrams(stream: BinaryIO, stats: SourceStats) -> Iterator[tuple[bytes, str, float]]:
    """(UDP payload, source address, capture time) of every UDP datagram in a capture;
    other packets are dropped and counted."""
    for ts, linktype, frame in read_frames(stream, stats):
        stats.units += 1
        if linktype == LINKTYPE_ETHERNET:
            # the common export frame, read without a header object (the same answers)
            fast = udp4_payload(frame)
            if fast is not None:
                src, sport, dport, end = fast
                if sport == 0 and dport == 0:
                    stats.drop("ip_fragment")
                elif end > len(frame) or end < 42:
                    stats.drop("truncated_datagram")
                else:
                    yield frame[42:end], src, ts
                continue
        try:
            header = parse_frame(linktype, frame)
        except DecodeError as exc:
            stats.failed(exc.reason)
            continue
        if header is None or header.proto != PROTO_UDP:
            stats.drop("not_udp")
            continue
        if header.sport == 0 and header.dport == 0:
            stats.drop("ip_fragment")
            continue
        start = header.payload_offset
        end = start + header.payload_length
        if end > len(frame) or end < start:
            stats.drop("truncated_datagram")
            continue
        yield frame[start:end], header.src, ts


def read_netflow_capture(stream: BinaryIO, stats: SourceStats) -> Iterator[FlowRecord]:
    """Flow records of the NetFlow v5/v9 and IPFIX export datagrams in a pcap/pcapng stream.

    Every UDP payload goes to the decoder as one datagram from its source address (the
    decoder keeps template state per exporter); other packets are dropped and counted.
    """
    from egressd.decode.netflow import NetflowDecoder

    decoder = NetflowDecoder()
    for payload, src, ts in _export_datagrams(stream, stats):
        try:
            records = decoder.decode(payload, src, ts)
        except DecodeError as exc:
            stats.failed(exc.reason)
            continue
        stats.records += len(records)
        yield from records


def read_netflow_columns(
    stream: BinaryIO, stats: SourceStats, batch: int = 256
) -> Iterator[FlowColumns]:
    """:func:`read_netflow_capture`'s flows as column batches, in the same order: those of
    ``batch`` datagrams at a time, decoded together (``decode_columns_batch``)."""
    from egressd.decode.netflow import NetflowDecoder

    decode = NetflowDecoder().decode_columns_batch
    datagrams = _export_datagrams(stream, stats)
    while True:
        chunk = list(islice(datagrams, batch))
        if not chunk:
            return
        columns, failed = decode(chunk)
        for _index, exc in failed:
            if not isinstance(exc, DecodeError):
                raise exc
            stats.failed(exc.reason)
        if len(columns):
            stats.records += len(columns)
            yield columns
